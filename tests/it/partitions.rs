//! audit_logging partitioned by month of ingestion (migration 0009): a trail written before is
//! kept whole, chains and grants included; the append-only triggers hold on every partition;
//! months are made ahead, by a role that does not own the table; no row is ever refused for
//! want of a partition.

use std::time::Instant;

use crate::chain::write_trail;
use crate::util::{assert_chains_intact, TestDb};

#[test]
fn an_existing_trail_becomes_partitioned_with_its_rows_chains_and_grants() {
    let db = TestDb::new("partitions");
    db.migrate_before(9);
    write_trail(&db);
    let mut c = db.client();
    let rows = || -> i64 {
        db.client()
            .query_one("SELECT count(*) FROM audit_logging", &[])
            .unwrap()
            .get(0)
    };
    let before = rows();
    let links = assert_chains_intact(&db).links();
    // Roles are cluster-wide: a name of this test's own.
    let reader = format!("reader_{}", db.name);
    let service = format!("service_{}", db.name);
    c.batch_execute(&format!(
        "CREATE ROLE {reader}; GRANT SELECT ON audit_logging, audit_trail TO {reader}; \
         CREATE ROLE {service}; GRANT SELECT, INSERT ON audit_logging TO {service}"
    ))
    .unwrap();

    let started = Instant::now();
    let applied = cdc_audit::migrate::migrate(&mut c).unwrap();
    eprintln!(
        "migrations 0009 and 0010 on {before} rows: {:?}",
        started.elapsed()
    );
    assert_eq!(
        applied,
        [
            "0009_partitions.sql",
            "0010_archives.sql",
            "0011_suspect_gaps.sql"
        ]
    );

    let kind: i8 = c
        .query_one(
            "SELECT relkind::\"char\" FROM pg_class WHERE oid = 'audit_logging'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(kind as u8, b'p', "audit_logging is partitioned");
    assert_eq!(rows(), before);
    let report = assert_chains_intact(&db);
    assert_eq!(report.links(), links);
    for (role, table, privilege) in [
        (&reader, "audit_logging", "SELECT"),
        (&reader, "audit_trail", "SELECT"),
        (&service, "audit_logging", "INSERT"),
    ] {
        let granted: bool = c
            .query_one(
                "SELECT has_table_privilege($1, $2, $3)",
                &[role, &table, &privilege],
            )
            .unwrap()
            .get(0);
        assert!(granted, "{role} keeps {privilege} on {table}");
    }
    // The questions still find the record through the partitioned table.
    let history: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_history('customers', \
             (SELECT primary_key FROM audit_logging WHERE source_table = 'customers' LIMIT 1))",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(history >= 1);

    // Append-only on the table and on each partition by name.
    for sql in [
        "UPDATE audit_logging SET change_user = 'x'",
        "DELETE FROM audit_logging_initial",
        "TRUNCATE audit_logging",
        "TRUNCATE audit_logging_initial",
        "TRUNCATE audit_logging_default",
    ] {
        let refused = db.client().batch_execute(sql).unwrap_err();
        let text = format!("{refused:?}");
        assert!(
            text.contains("audit_logging is append-only"),
            "{sql}: {text}"
        );
    }

    // Next months are made ahead by a role that does not own the table; rows of a month with
    // its partition go there, rows of no month's to the default partition.
    c.batch_execute(&format!(
        "GRANT EXECUTE ON FUNCTION audit_ensure_partitions(integer) TO {service}; \
         SET ROLE {service}; SELECT audit_ensure_partitions(5); RESET ROLE"
    ))
    .unwrap();
    let mut month = |months: i32| -> String {
        c.query_one(
            "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => $1), 'YYYY_MM')",
            &[&months],
        )
        .unwrap()
        .get(0)
    };
    let (next, far) = (month(5), month(200));
    c.batch_execute(
        "INSERT INTO audit_logging (operation_type, kafka_topic, kafka_partition, kafka_offset, ingested_at) \
         VALUES ('INSERT', 'other', 0, 1, (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '5 months 1 day') AT TIME ZONE 'UTC'), \
                ('INSERT', 'other', 0, 2, now() + interval '200 months')",
    )
    .unwrap();
    let placed: Vec<(String, i64)> = c
        .query(
            "SELECT tableoid::regclass::text, kafka_offset FROM audit_logging WHERE kafka_topic = 'other' ORDER BY 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        placed,
        [
            (format!("audit_logging_{next}"), 1),
            ("audit_logging_default".into(), 2)
        ],
        "the far month is {far}"
    );
    let bad = c
        .query_one("SELECT audit_ensure_partitions(-1)", &[])
        .unwrap_err();
    assert!(format!("{bad:?}").contains("months_ahead must be 0 to 120"));
    c.batch_execute(&format!(
        "DROP OWNED BY {reader}, {service}; DROP ROLE {reader}, {service}"
    ))
    .unwrap();
}

#[test]
fn a_fresh_trail_has_this_month_and_the_next_ones_made() {
    let db = TestDb::new("partitions_fresh");
    db.migrate();
    let partitions: Vec<String> = db
        .client()
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'audit_logging'::regclass ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(partitions.len(), 5, "{partitions:?}");
    assert!(partitions.contains(&"audit_logging_initial".to_string()));
    assert!(partitions.contains(&"audit_logging_default".to_string()));
}
