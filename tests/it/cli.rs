//! The binary's settings and `migrate`, run as a user runs them.

use std::process::{Command, Output};

use crate::util::{run_ok, TestDb};

/// The binary with exactly these arguments and environment.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-audit"));
    cmd.args(args).env_clear().envs(crate::util::coverage_env());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn cdc_audit(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().unwrap()
}

const VALID: &[(&str, &str)] = &[
    ("CDC_AUDIT_BOOTSTRAP_SERVERS", "localhost:9092"),
    ("CDC_AUDIT_TOPICS", "dbserver1.inventory.customers"),
    (
        "CDC_AUDIT_DATABASE_URL",
        "postgres://audit:s3cret@localhost/audit",
    ),
];

/// Runs `check-config` with VALID plus `changes` (an empty value removes the setting) and
/// asserts that it fails with a message containing every one of `expect`.
fn refused(changes: &[(&str, &str)], expect: &[&str]) {
    let mut env: Vec<(&str, &str)> = VALID
        .iter()
        .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
        .copied()
        .collect();
    env.extend(changes.iter().filter(|(_, v)| !v.is_empty()));
    let out = cdc_audit(&["check-config"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check-config should fail; stderr: {stderr}"
    );
    for e in expect {
        assert!(stderr.contains(e), "stderr should mention {e:?}: {stderr}");
    }
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
}

#[test]
fn valid_settings_are_printed_with_the_password_masked() {
    let env = [
        VALID,
        &[
            ("CDC_AUDIT_KAFKA_SASL_PASSWORD", "kafkapw"),
            ("CDC_AUDIT_KAFKA_MAX_POLL_INTERVAL_MS", "6000"),
        ],
    ]
    .concat();
    let stdout = run_ok(&mut command(&["check-config"], &env));
    assert!(
        stdout.contains("CDC_AUDIT_DATABASE_URL=postgres://audit:****@localhost/audit"),
        "{stdout}"
    );
    assert!(
        stdout.contains("CDC_AUDIT_KAFKA_MAX_POLL_INTERVAL_MS=6000"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("s3cret") && !stdout.contains("kafkapw"),
        "{stdout}"
    );
}

#[test]
fn missing_bootstrap_servers_is_named() {
    refused(
        &[("CDC_AUDIT_BOOTSTRAP_SERVERS", "")],
        &["CDC_AUDIT_BOOTSTRAP_SERVERS is not set"],
    );
}

#[test]
fn malformed_bootstrap_servers_are_refused() {
    refused(
        &[("CDC_AUDIT_BOOTSTRAP_SERVERS", "kafka")],
        &["CDC_AUDIT_BOOTSTRAP_SERVERS=\"kafka\"", "host:port"],
    );
}

#[test]
fn missing_topics_names_both_ways_to_set_them() {
    refused(
        &[("CDC_AUDIT_TOPICS", "")],
        &["CDC_AUDIT_TOPICS", "CDC_AUDIT_TOPIC_REGEX"],
    );
}

#[test]
fn topics_and_topic_regex_together_conflict() {
    refused(
        &[("CDC_AUDIT_TOPIC_REGEX", "^db\\..*")],
        &["CDC_AUDIT_TOPICS and CDC_AUDIT_TOPIC_REGEX are both set"],
    );
}

#[test]
fn invalid_topic_name_is_refused() {
    refused(
        &[("CDC_AUDIT_TOPICS", "a,b c")],
        &["CDC_AUDIT_TOPICS=\"a,b c\"", "\"b c\""],
    );
}

#[test]
fn missing_database_url_mentions_the_fallback() {
    refused(
        &[("CDC_AUDIT_DATABASE_URL", "")],
        &["CDC_AUDIT_DATABASE_URL is not set", "DATABASE_URL"],
    );
}

#[test]
fn unparsable_database_url_is_refused_without_its_password() {
    refused(
        &[(
            "CDC_AUDIT_DATABASE_URL",
            "postgres://audit:s3cret@localhost:notaport/db",
        )],
        &["CDC_AUDIT_DATABASE_URL="],
    );
}

#[test]
fn number_out_of_range_states_the_range() {
    refused(
        &[("CDC_AUDIT_BATCH_SIZE", "0")],
        &["CDC_AUDIT_BATCH_SIZE=\"0\"", "from 1 to 100000"],
    );
    refused(
        &[("CDC_AUDIT_WRITERS", "many")],
        &["CDC_AUDIT_WRITERS=\"many\"", "from 1 to 64"],
    );
}

#[test]
fn pool_smaller_than_writers_is_refused() {
    refused(
        &[("CDC_AUDIT_WRITERS", "4"), ("CDC_AUDIT_POOL_SIZE", "3")],
        &[
            "CDC_AUDIT_POOL_SIZE=\"3\"",
            "at least CDC_AUDIT_WRITERS + 1 = 5",
        ],
    );
}

#[test]
fn misspelt_setting_is_refused() {
    refused(
        &[("CDC_AUDIT_BATCH_SIZ", "10")],
        &["CDC_AUDIT_BATCH_SIZ is not a setting"],
    );
}

#[test]
fn the_reading_commands_refuse_a_misspelt_setting_too() {
    for args in [&["tables"][..], &["serve"], &["history", "customers", "1"]] {
        let out = cdc_audit(
            args,
            &[("CDC_AUDIT_DATABSE_URL", "postgres://x@localhost/db")],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("CDC_AUDIT_DATABSE_URL is not a setting"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn bad_boolean_is_refused() {
    refused(
        &[("CDC_AUDIT_MIGRATE", "maybe")],
        &["CDC_AUDIT_MIGRATE=\"maybe\"", "true or false"],
    );
}

#[test]
fn bad_context_settings_are_refused() {
    refused(
        &[("CDC_AUDIT_CONTEXT_PREFIXES", "audit, app context")],
        &[
            "CDC_AUDIT_CONTEXT_PREFIXES=\"audit, app context\"",
            "without spaces",
        ],
    );
    refused(
        &[("CDC_AUDIT_ACTOR_FIELD", "user,id")],
        &["CDC_AUDIT_ACTOR_FIELD=\"user,id\"", "one field name"],
    );
    let env = [VALID, &[("CDC_AUDIT_CONTEXT_PREFIXES", "audit,app_ctx")]].concat();
    let out = String::from_utf8_lossy(&cdc_audit(&["check-config"], &env).stdout).into_owned();
    assert!(
        out.contains("CDC_AUDIT_CONTEXT_PREFIXES=audit,app_ctx")
            && out.contains("CDC_AUDIT_ACTOR_FIELD=user"),
        "{out}"
    );
}

#[test]
fn the_read_api_settings_are_checked_and_its_token_never_printed() {
    let token = "api-secret-token-42";
    let env = [
        VALID,
        &[
            ("CDC_AUDIT_API_ADDR", "127.0.0.1:9188"),
            ("CDC_AUDIT_API_TOKEN", token),
        ],
    ]
    .concat();
    let out = cdc_audit(&["check-config"], &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("CDC_AUDIT_API_ADDR=127.0.0.1:9188")
            && stdout.contains("CDC_AUDIT_API_TOKEN=****")
            && !stdout.contains(token),
        "{stdout}"
    );
    refused(
        &[("CDC_AUDIT_API_ADDR", "127.0.0.1:9188")],
        &["CDC_AUDIT_API_TOKEN", "at least 16 characters"],
    );
    refused(
        &[
            ("CDC_AUDIT_API_ADDR", "127.0.0.1:9188"),
            ("CDC_AUDIT_API_TOKEN", "short"),
        ],
        &["CDC_AUDIT_API_TOKEN", "at least 16 characters"],
    );
    refused(
        &[
            ("CDC_AUDIT_API_ADDR", "localhost"),
            ("CDC_AUDIT_API_TOKEN", token),
        ],
        &["CDC_AUDIT_API_ADDR=\"localhost\"", "ip:port"],
    );
    refused(
        &[
            ("CDC_AUDIT_API_ADDR", "0.0.0.0:9187"),
            ("CDC_AUDIT_API_TOKEN", token),
        ],
        &["a listener of its own"],
    );
    refused(
        &[
            ("CDC_AUDIT_API_ADDR", "127.0.0.1:9188"),
            ("CDC_AUDIT_API_TOKEN", token),
            ("CDC_AUDIT_API_STATEMENT_TIMEOUT_MS", "5"),
        ],
        &["CDC_AUDIT_API_STATEMENT_TIMEOUT_MS=\"5\"", "100 to 600000"],
    );
}

#[test]
fn auto_commit_cannot_be_turned_on() {
    refused(
        &[("CDC_AUDIT_KAFKA_ENABLE_AUTO_COMMIT", "true")],
        &["CDC_AUDIT_KAFKA_ENABLE_AUTO_COMMIT", "enable.auto.commit"],
    );
}

#[test]
fn unknown_librdkafka_property_is_refused_by_librdkafka() {
    refused(
        &[("CDC_AUDIT_KAFKA_FETCH_MAX_BYTEZ", "1")],
        &["fetch.max.bytez"],
    );
}

#[test]
fn config_file_is_read_and_bad_lines_are_named() {
    let dir = std::env::temp_dir().join(format!("cdc-audit-it-{}.env", std::process::id()));
    std::fs::write(&dir, "CDC_AUDIT_BATCH_SIZE=77\n").unwrap();
    let path = dir.to_str().unwrap();
    let out = cdc_audit(&["--config", path, "check-config"], VALID);
    assert!(String::from_utf8_lossy(&out.stdout).contains("CDC_AUDIT_BATCH_SIZE=77"));
    std::fs::write(&dir, "CDC_AUDIT_BATCH_SIZE 77\n").unwrap();
    let out = cdc_audit(&["--config", path, "check-config"], VALID);
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("line 1: expected KEY=VALUE"), "{stderr}");
}

/// It needs the database's settings only, not Kafka's: a deployment migrates before the
/// service starts.
#[test]
fn migrate_applies_once_and_is_idempotent() {
    let db = TestDb::new("migrate");
    let env = [("DATABASE_URL", db.url.as_str())];
    let first = run_ok(&mut command(&["migrate"], &env));
    let all = cdc_audit::migrate::MIGRATIONS.len();
    assert!(
        first.starts_with(&format!("{all} migrations applied")),
        "{first}"
    );
    let second = cdc_audit(&["migrate"], &env);
    assert!(String::from_utf8_lossy(&second.stdout).starts_with("0 migrations applied"));
    assert_eq!(
        db.count("cdc_audit_migrations"),
        cdc_audit::migrate::MIGRATIONS.len() as i64
    );
    assert_eq!(db.count("audit_logging"), 0);
}

/// A migration PostgreSQL refuses is reported with PostgreSQL's own words, not just "db error".
#[test]
fn a_failed_migration_says_what_postgresql_said() {
    let db = TestDb::new("migfail");
    // A table of that name, not made by the migrations: 0001 cannot create it. (An
    // audit_logging of its own is refused before any migration runs: see the switch test.)
    db.client()
        .batch_execute("CREATE TABLE audit_rejections (id int)")
        .unwrap();
    let env = [
        ("CDC_AUDIT_BOOTSTRAP_SERVERS", "localhost:9092"),
        ("CDC_AUDIT_TOPICS", "t"),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let out = cdc_audit(&["migrate"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("migration failed")
            && stderr.contains("\"audit_rejections\" already exists"),
        "{stderr}"
    );
}

/// A trail created before 0004 (identifiers in the database's collation) is upgraded in place:
/// the identifier columns compare byte by byte, the rows stay, and the view recreated around the
/// change keeps what was granted on it.
#[test]
fn the_identifier_collation_upgrade_keeps_rows_and_the_views_grants() {
    let db = TestDb::new("collation");
    let mut client = db.client();
    let after = &cdc_audit::migrate::MIGRATIONS[3..];
    db.migrate_before(4);
    // Roles are cluster-wide: a name of this test's own.
    let role = format!("reader_{}", db.name);
    client
        .batch_execute(&format!(
            "INSERT INTO audit_logging (operation_type, source_table, transaction_id, kafka_topic, \
                 kafka_partition, kafka_offset) VALUES ('INSERT', 'customers', '571', 't', 0, 0); \
             INSERT INTO audit_transactions (transaction_id, status, event_count, kafka_topic, \
                 kafka_partition, kafka_offset) VALUES ('571', 'END', 1, 't.transaction', 0, 0); \
             CREATE ROLE {role}; \
             GRANT SELECT ON audit_transaction_summary TO {role} WITH GRANT OPTION"
        ))
        .unwrap();

    let applied = cdc_audit::migrate::migrate(&mut client).unwrap();

    let names: Vec<&str> = after.iter().map(|(_, name, _)| *name).collect();
    assert_eq!(applied, names);
    let collations: Vec<(String, String)> = client
        .query(
            "SELECT attrelid::regclass::text || '.' || attname, attcollation::regcollation::text \
             FROM pg_attribute WHERE attname IN ('source_database', 'source_schema', \
                 'source_table', 'transaction_id', 'kafka_topic', 'consumer_group', 'topic') \
             AND attrelid IN ('audit_logging'::regclass, 'audit_transactions'::regclass, \
                 'audit_rejections'::regclass, 'audit_positions'::regclass, \
                 'audit_gaps'::regclass) ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(collations.len(), 12, "{collations:?}");
    for (column, collation) in &collations {
        assert_eq!(collation, "\"C\"", "{column}");
    }
    let (recorded, complete): (i64, bool) = client
        .query_one(
            "SELECT recorded_events, complete FROM audit_transaction_summary \
             WHERE transaction_id = '571'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((recorded, complete), (1, true));
    let grant: bool = client
        .query_one(
            "SELECT has_table_privilege($1, 'audit_transaction_summary', 'SELECT WITH GRANT OPTION')",
            &[&role],
        )
        .unwrap()
        .get(0);
    assert!(grant, "the grant on the view survives the upgrade");
    client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .unwrap();
}

#[test]
fn inspect_shows_the_row_a_message_becomes_under_the_column_rules() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/debezium/postgresql");
    let value = fixtures.join("update_schema_elided.json");
    let env = [("CDC_AUDIT_COLUMN_RULES", "*.email=redact")];
    let out = run_ok(&mut command(&["inspect", value.to_str().unwrap()], &env));
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &shown["audit_logging"];
    assert_eq!(row["operation_type"], "UPDATE");
    assert_eq!(row["new_data"]["email"], "[redacted]");
    assert_eq!(row["new_data"]["first_name"], "Anne Marie");
    let bad = cdc_audit(
        &["inspect", value.to_str().unwrap()],
        &[("CDC_AUDIT_COLUMN_RULES", "*.email=hash")],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("CDC_AUDIT_HASH_KEY"));
}

#[test]
fn digest_settings_are_checked_before_startup() {
    refused(
        &[("CDC_AUDIT_DIGEST_DIR", "/tmp")],
        &["CDC_AUDIT_DIGEST_DIR", "CDC_AUDIT_SIGNING_KEY_FILE"],
    );
    refused(
        &[
            ("CDC_AUDIT_SIGNING_KEY_FILE", "/etc/hostname"),
            ("CDC_AUDIT_DIGEST_DIR", "/no/such/dir"),
        ],
        &[
            "CDC_AUDIT_DIGEST_DIR=\"/no/such/dir\"",
            "an existing directory",
        ],
    );
    refused(
        &[
            ("CDC_AUDIT_SIGNING_KEY_FILE", "/etc/hostname"),
            ("CDC_AUDIT_DIGEST_INTERVAL_S", "5"),
        ],
        &["CDC_AUDIT_DIGEST_INTERVAL_S=\"5\"", "10 to 604800"],
    );
}

#[test]
fn retention_settings_are_checked_before_startup() {
    refused(
        &[("CDC_AUDIT_RETENTION", "400")],
        &["CDC_AUDIT_RETENTION=\"400\"", "days, 1d to 36500d, or off"],
    );
    refused(
        &[("CDC_AUDIT_RETENTION", "400d")],
        &["CDC_AUDIT_ARCHIVE_DIR", "an existing directory"],
    );
    refused(
        &[
            ("CDC_AUDIT_RETENTION", "400d"),
            ("CDC_AUDIT_ARCHIVE_DIR", "/no/such/dir"),
        ],
        &["CDC_AUDIT_ARCHIVE_DIR=\"/no/such/dir\""],
    );
    refused(
        &[("CDC_AUDIT_ARCHIVE_DIR", "/tmp")],
        &["CDC_AUDIT_ARCHIVE_DIR", "unless CDC_AUDIT_RETENTION"],
    );
}

#[test]
fn registry_settings_are_checked_and_its_password_never_printed() {
    refused(
        &[("CDC_AUDIT_SCHEMA_REGISTRY_URL", "registry:8081")],
        &["CDC_AUDIT_SCHEMA_REGISTRY_URL", "http://"],
    );
    refused(
        &[("CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH", "user:s3cret")],
        &[
            "CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH",
            "CDC_AUDIT_SCHEMA_REGISTRY_URL",
        ],
    );
    refused(
        &[
            (
                "CDC_AUDIT_SCHEMA_REGISTRY_URL",
                "https://user:s3cret@registry:8081",
            ),
            ("CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH", "other:s3cret"),
        ],
        &["set one of them"],
    );
    refused(
        &[
            ("CDC_AUDIT_SCHEMA_REGISTRY_URL", "http://registry:8081"),
            ("CDC_AUDIT_SCHEMA_REGISTRY_TIMEOUT_MS", "5"),
        ],
        &["CDC_AUDIT_SCHEMA_REGISTRY_TIMEOUT_MS", "100 to 120000"],
    );
    let env = [
        VALID,
        &[(
            "CDC_AUDIT_SCHEMA_REGISTRY_URL",
            "https://user:s3cret@registry:8081/apis/ccompat/v7/",
        )],
    ]
    .concat();
    let out = run_ok(&mut command(&["check-config"], &env));
    assert!(
        out.contains("CDC_AUDIT_SCHEMA_REGISTRY_URL=https://registry:8081/apis/ccompat/v7"),
        "{out}"
    );
    assert!(
        out.contains("CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH=****"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "the password leaked: {out}");
}

#[test]
fn inspect_reads_a_registry_framed_file_with_the_registrys_schema() {
    let avro = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/avro");
    let registry =
        cdc_audit::registry::serve::LocalRegistry::start(([127, 0, 0, 1], 0).into()).unwrap();
    let schema = std::fs::read_to_string(avro.join("mysql_customers-value.avsc")).unwrap();
    // The captured message names schema id 6.
    for i in 1..6 {
        registry.register(
            "filler",
            &format!("{{\"type\": \"fixed\", \"name\": \"f{i}\", \"size\": {i}}}"),
        );
    }
    assert_eq!(
        registry.register("dbserver1.inventory.customers-value", &schema),
        6
    );
    let value = avro.join("mysql_customers_read.bin");
    let url = registry.url();
    let out = run_ok(&mut command(
        &["inspect", value.to_str().unwrap()],
        &[("CDC_AUDIT_SCHEMA_REGISTRY_URL", &url)],
    ));
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        shown["audit_logging"]["new_data"]["first_name"], "Sally",
        "{out}"
    );
    // Without the registry, the message says what is missing.
    let out = run_ok(&mut command(&["inspect", value.to_str().unwrap()], &[]));
    assert!(
        out.contains("schema_not_found") && out.contains("CDC_AUDIT_SCHEMA_REGISTRY_URL"),
        "{out}"
    );
}

/// Every message of the broker's topics: (topic, partition, offset) and whether it is a change.
fn every_message(kafka: &crate::util::Kafka) -> Vec<(String, i32, i64, bool)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut left = 0;
    for t in &kafka.topics {
        for p in 0..crate::util::PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
            let (_, high) = consumer
                .fetch_watermarks(t, p, std::time::Duration::from_secs(10))
                .unwrap();
            left += high;
        }
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while left > 0 {
        let Some(m) = consumer.poll(std::time::Duration::from_secs(10)) else {
            panic!("{left} messages not read back");
        };
        let m = m.unwrap();
        let change = m
            .payload()
            .is_some_and(|v| String::from_utf8_lossy(v).contains("\"op\""));
        out.push((m.topic().to_string(), m.partition(), m.offset(), change));
        left -= 1;
    }
    out
}

/// The switch from the Python consumer: its trail and its `kafka_offsets` (one row per message it
/// processed, after the message's audit row) for the first part of each partition; cdc-audit
/// refuses to migrate over its `audit_logging`, takes its positions once the tables are moved
/// aside, and goes on from there: every change is in one of the two trails, once.
#[test]
fn the_old_consumers_positions_are_imported_and_the_switch_loses_and_repeats_nothing() {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use crate::util::{generate, wait_until, Kafka, Service};

    let db = TestDb::new("switch");
    let kafka = Kafka::new("switch");
    let records = generate("switch", 11, 3000);
    kafka.produce(&records);
    let messages = every_message(&kafka);
    assert_eq!(messages.len(), records.len());
    // The old consumer's tables, as it left them: the first 60% of each partition processed.
    let mut c = db.client();
    c.batch_execute(
        "CREATE TABLE audit_logging (id bigserial PRIMARY KEY, source_table text, \
             operation_type text, new_data jsonb, kafka_topic text, kafka_partition integer, \
             kafka_offset bigint, created_at timestamptz DEFAULT now());
         CREATE TABLE kafka_offsets (topic text, partition integer, \"offset\" bigint, \
             timestamp timestamptz DEFAULT now());",
    )
    .unwrap();
    let mut ends = std::collections::HashMap::new();
    for (t, p, o, _) in &messages {
        let end: &mut i64 = ends.entry((t.clone(), *p)).or_default();
        *end = (*end).max(o + 1);
    }
    let cut = |t: &str, p: i32| ends[&(t.to_string(), p)] * 6 / 10;
    let mut old = 0;
    for (t, p, o, change) in &messages {
        if *o >= cut(t, *p) {
            continue;
        }
        if *change {
            c.execute(
                "INSERT INTO audit_logging (source_table, operation_type, kafka_topic, \
                 kafka_partition, kafka_offset) VALUES ('t', 'INSERT', $1, $2, $3)",
                &[t, p, o],
            )
            .unwrap();
            old += 1;
        }
        c.execute(
            "INSERT INTO kafka_offsets (topic, partition, \"offset\") VALUES ($1, $2, $3)",
            &[t, p, o],
        )
        .unwrap();
    }
    assert!(old > 1000, "{old} old rows");

    let env = [
        ("CDC_AUDIT_BOOTSTRAP_SERVERS", kafka.bootstrap.as_str()),
        ("CDC_AUDIT_TOPICS", &kafka.topics.join(",")),
        ("CDC_AUDIT_DATABASE_URL", db.url.as_str()),
        ("CDC_AUDIT_GROUP_ID", "switch"),
    ];
    // Its audit_logging is not ours: nothing is touched until it is moved aside.
    let refused = cdc_audit(&["migrate"], &env);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("audit_logging") && stderr.contains("legacy"),
        "{stderr}"
    );
    assert_eq!(db.count("audit_logging"), old);
    c.batch_execute(
        "CREATE SCHEMA legacy; ALTER TABLE audit_logging SET SCHEMA legacy; \
         ALTER TABLE kafka_offsets SET SCHEMA legacy;",
    )
    .unwrap();
    // A bad table name, or a table without the columns, is named and changes nothing.
    for (table, says) in [
        ("kafka_offsets; DROP TABLE x", "a table name"),
        ("legacy.nothing", "topic, partition and offset"),
    ] {
        let out = cdc_audit(&["migrate", "--import-positions-from", table], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{table}: {stderr}");
        assert!(stderr.contains(says), "{table}: {stderr}");
    }
    assert_eq!(db.committed("switch"), 0);
    // Read as PostgreSQL reads an unquoted name: folded to lower case.
    let out = run_ok(&mut command(
        &["migrate", "--import-positions-from", "Legacy.KAFKA_Offsets"],
        &env,
    ));
    let partitions = kafka.topics.len() * crate::util::PARTITIONS as usize;
    assert!(
        out.contains(&format!("imported {partitions} positions")),
        "{out}"
    );

    let service = Service::spawn(&kafka, &db, "switch", &[]);
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("switch") == messages.len() as i64
    });
    drop(service);
    // Each change is in one trail or the other, once: the old one's up to the cut, ours after.
    let expected: BTreeSet<(String, i32, i64)> = messages
        .iter()
        .filter(|m| m.3)
        .map(|(t, p, o, _)| (t.clone(), *p, *o))
        .collect();
    let mut rows = |table: &str| -> Vec<(String, i32, i64)> {
        c.query(
            &format!("SELECT kafka_topic, kafka_partition, kafka_offset FROM {table}"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    let mut both = rows("legacy.audit_logging");
    let ours = rows("public.audit_logging");
    assert!(
        ours.iter().all(|(t, p, o)| *o >= cut(t, *p)),
        "nothing before the cut again"
    );
    both.extend(ours);
    let seen: BTreeSet<_> = both.iter().cloned().collect();
    assert_eq!(seen.len(), both.len(), "a change in both trails, or twice");
    assert_eq!(seen, expected, "a change in neither trail");
    // Importing again, now that the service has gone on, would move positions back: refused.
    let again = cdc_audit(
        &["migrate", "--import-positions-from", "legacy.kafka_offsets"],
        &env,
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing imported"), "{stderr}");
    assert_eq!(db.committed("switch"), messages.len() as i64);
}
