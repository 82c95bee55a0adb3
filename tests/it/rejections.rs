//! `cdc-audit rejections`: rows PostgreSQL refused are replayed exactly once after the database
//! is fixed; rejections can be listed, shown and purged.

use std::process::{Command, Output};
use std::time::Duration;

use cdc_audit::demo::Record;

use crate::util::{assert_each_once, config, generate, wait_until, InProcess, Kafka, TestDb};

fn rejections(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
        .arg("rejections")
        .args(args)
        .env_clear()
        .envs(crate::util::coverage_env())
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn refused_rows_are_replayed_exactly_once_after_the_database_is_fixed() {
    let db = TestDb::new("replay");
    let kafka = Kafka::new("replay");
    db.migrate();
    // A constraint the DBA got wrong: every row of `orders` is refused.
    db.client()
        .batch_execute(
            "ALTER TABLE audit_logging ADD CONSTRAINT no_orders CHECK (source_table <> 'orders')",
        )
        .unwrap();
    let mut records = generate("replay", 17, 600);
    records.push(Record {
        topic: kafka.topics[0].clone(),
        key: None,
        value: Some("not json".into()),
    });
    kafka.produce(&records);
    let service = InProcess::start(config(&kafka, &db, "g"));
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    service.stop();
    let orders = records
        .iter()
        .filter(|r| {
            r.value
                .as_deref()
                .is_some_and(|v| v.contains("\"table\":\"orders\""))
        })
        .count();
    assert!(orders > 50);
    assert_eq!(db.rejections("database_refused") as usize, orders);

    let listed = stdout(&rejections(
        &db,
        &["list", "--reason", "database_refused", "--limit", "1000"],
    ));
    assert!(
        listed.contains(&format!("{orders} shown")) && listed.contains("violates check constraint"),
        "{listed}"
    );
    let id: i64 = db
        .client()
        .query_one(
            "SELECT min(id) FROM audit_rejections WHERE reason = 'database_refused'",
            &[],
        )
        .unwrap()
        .get(0);
    let shown = stdout(&rejections(&db, &["show", &id.to_string()]));
    assert!(
        shown.contains("\"table\":\"orders\"") && shown.contains("reason:      database_refused"),
        "{shown}"
    );

    // Still refused: nothing changes.
    assert!(stdout(&rejections(
        &db,
        &["replay", "--reason", "database_refused"]
    ))
    .contains(&format!("0 written, 0 skipped, {orders} still rejected")));
    db.client()
        .batch_execute("ALTER TABLE audit_logging DROP CONSTRAINT no_orders")
        .unwrap();
    assert!(stdout(&rejections(
        &db,
        &["replay", "--reason", "database_refused", "--dry-run"]
    ))
    .contains(&format!("dry run: {orders} written")));
    assert_eq!(db.count("audit_rejections") as usize, orders + 1);
    assert!(stdout(&rejections(
        &db,
        &["replay", "--reason", "database_refused"]
    ))
    .contains(&format!("{orders} written")));
    assert!(
        stdout(&rejections(&db, &["replay"])).contains("0 written, 0 skipped, 1 still rejected"),
        "the not-JSON message stays"
    );
    assert_each_once(&db, &records);

    // Purging needs --yes, and deletes what is selected.
    let refused = rejections(&db, &["purge", "--reason", "not_json"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stdout(&rejections(
        &db,
        &["purge", "--reason", "not_json", "--yes"]
    ))
    .contains("1 rejections deleted"));
    assert_eq!(db.count("audit_rejections"), 0);
}

#[test]
fn the_service_runs_with_least_privilege_and_the_trail_is_append_only() {
    let db = TestDb::new("roles");
    let kafka = Kafka::new("roles");
    db.migrate();
    // roles.sql names one role; roles are cluster-wide, so this test uses a name of its own.
    let role = format!("svc_{}", db.name);
    let sql =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/roles.sql")).unwrap();
    let reader = format!("reader_{}", db.name);
    db.client()
        .batch_execute(
            &sql.replace("cdc_audit_service", &role)
                .replace("cdc_audit_reader", &reader),
        )
        .unwrap();
    let as_service = {
        let mut c: postgres::Config = db.url.parse().unwrap();
        c.user(&role);
        let mut url = format!("host=127.0.0.1 user={role} dbname={}", db.name);
        if let Some(postgres::config::Host::Tcp(h)) = c.get_hosts().first() {
            url = format!(
                "host={h} port={} user={role} dbname={}",
                c.get_ports().first().copied().unwrap_or(5432),
                db.name
            );
        }
        url
    };
    let records = generate("roles", 5, 300);
    kafka.produce(&records);
    let mut cfg = config(&kafka, &db, "g");
    cfg.database_url = as_service.clone();
    cfg.migrate = false;
    let service = InProcess::start(cfg);
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    service.stop();
    crate::util::assert_exactly_once(&db, &records);

    let mut svc = postgres::Client::connect(&as_service, postgres::NoTls).unwrap();
    let err = svc
        .batch_execute("UPDATE audit_logging SET change_user = 'x'")
        .unwrap_err();
    assert!(format!("{err:?}").contains("permission denied"), "{err:?}");
    // Even the owner is refused by the trigger.
    let mut owner = db.client();
    for statement in [
        "UPDATE audit_logging SET change_user = 'x'",
        "DELETE FROM audit_logging",
        "TRUNCATE audit_logging",
    ] {
        let err = owner.batch_execute(statement).unwrap_err();
        assert!(
            format!("{err:?}").contains("append-only"),
            "{statement}: {err:?}"
        );
    }
    drop(svc);
    for r in [role, reader] {
        db.client()
            .batch_execute(&format!("DROP OWNED BY {r}; DROP ROLE {r}"))
            .unwrap();
    }
}
