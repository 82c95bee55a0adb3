//! Every Debezium fixture: golden tests pin what each becomes, and an end-to-end test sends them
//! all through Kafka into PostgreSQL and reads the rows back.
//!
//! Fixtures: `../shared/fixtures/debezium/` (cut from Debezium's docs and tests) and
//! `tests/fixtures/debezium/` (SQL Server and Oracle, written after the documented formats).
//! Expected results: `tests/golden/<connector>/<fixture>.json`, reviewed by hand. To write a
//! missing one, run with `CDC_AUDIT_BLESS=1`, then read it before committing it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cdc_audit::config::rules::Rules;
use cdc_audit::demo::{self, Generator, Record};
use cdc_audit::transform::{describe, transform, transform_together, Schemas};
use cdc_audit::types::{Message, Outcome};
use serde_json::Value;

use crate::util::{config, wait_until, InProcess, Kafka, TestDb};

pub struct Fixture {
    /// `<connector>/<name>`
    pub name: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> Vec<Fixture> {
    let shared = manifest().join("../shared/fixtures/debezium");
    assert!(
        shared.is_dir(),
        "the shared fixtures are missing at {}",
        shared.display()
    );
    let mut out = Vec::new();
    for root in [shared, manifest().join("tests/fixtures/debezium")] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for file in files {
                let name = file.file_name().unwrap().to_string_lossy().to_string();
                let stem = match (name.strip_suffix(".tombstone"), name.strip_suffix(".json")) {
                    (Some(stem), _) => stem.to_string(),
                    (None, Some(stem)) if !stem.ends_with(".key") => stem.to_string(),
                    _ => continue,
                };
                let key_file = dir.join(format!("{stem}.key.json"));
                let value = (!name.ends_with(".tombstone")).then(|| std::fs::read(&file).unwrap());
                out.push(Fixture {
                    name: format!("{}/{stem}", dir.file_name().unwrap().to_string_lossy()),
                    key: key_file.exists().then(|| std::fs::read(&key_file).unwrap()),
                    value,
                });
            }
        }
    }
    out
}

pub fn message(f: &Fixture, offset: i64) -> Message {
    Message {
        topic: Arc::from("fixtures"),
        partition: 0,
        offset,
        timestamp_ms: None,
        key: f.key.clone().map(Into::into),
        payload: f.value.clone().map(Into::into),
        headers: Vec::new(),
    }
}

fn golden_path(name: &str) -> PathBuf {
    manifest().join("tests/golden").join(format!("{name}.json"))
}

#[test]
fn every_fixture_produces_its_reviewed_audit_row() {
    let bless = std::env::var_os("CDC_AUDIT_BLESS").is_some();
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 60,
        "found only {} fixtures",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for f in &fixtures {
        let got = describe(&message(f, 0), &Rules::default());
        assert!(
            got.get("rejected").is_none(),
            "{} was rejected: {got}",
            f.name
        );
        // Read again, its schema (if it has one) is remembered and not scanned: the same row.
        assert_eq!(
            describe(&message(f, 0), &Rules::default()),
            got,
            "{} read a second time",
            f.name
        );
        let path = golden_path(&f.name);
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == text => {}
            Ok(_) if bless => write(&path, &text),
            Err(_) if bless => write(&path, &text),
            Ok(expected) => failures.push(format!(
                "{}: differs from {}\n--- expected\n{expected}--- got\n{text}",
                f.name,
                path.display()
            )),
            Err(_) => failures.push(format!(
                "{}: no golden file {} (CDC_AUDIT_BLESS=1 writes it; review it)",
                f.name,
                path.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The service's stage transforms a batch's messages together, their rows in one buffer: every
/// fixture, and generated events between them (changes, tombstones, context messages, poison),
/// becomes in that buffer what it becomes alone, each row right after the one before.
#[test]
fn messages_transformed_together_become_what_each_becomes_alone() {
    let mut generated = Generator::new("together", 7).with_context();
    let mut records = Vec::new();
    while records.len() < 200 {
        records.extend(generated.next_records());
    }
    records.extend(demo::poison("together.inventory.customers", 3));
    let mut msgs: Vec<Message> = fixtures()
        .iter()
        .enumerate()
        .map(|(i, f)| message(f, i as i64))
        .collect();
    for r in &records {
        msgs.push(Message {
            topic: Arc::from(r.topic.as_str()),
            offset: msgs.len() as i64,
            key: r.key.clone().map(|s| s.into_bytes().into()),
            payload: r.value.clone().map(|s| s.into_bytes().into()),
            ..message(&fixtures()[0], 0)
        });
    }
    let rules = Rules::default();
    let together = transform_together(&msgs, &rules, &Schemas::default());
    assert_eq!(together.len(), msgs.len());
    let (mut rows, mut adjacent, mut kinds) = (0, 0, HashSet::new());
    let mut last_end = None;
    for (m, got) in msgs.iter().zip(&together) {
        let alone = transform(m, &rules);
        kinds.insert(std::mem::discriminant(&alone));
        match (got, &alone) {
            (Outcome::Row(a), Outcome::Row(b))
            | (Outcome::Transaction(a), Outcome::Transaction(b)) => {
                assert_eq!(&a.bytes[..], &b.bytes[..], "offset {}", m.offset);
                assert_eq!(a.content, b.content, "offset {}", m.offset);
                assert_eq!(a.source_time_us, b.source_time_us);
                assert_eq!(a.notice, b.notice);
                adjacent += usize::from(last_end == Some(a.bytes.as_ptr()));
                // A notice's names follow its row: the next row starts after them.
                let names = a
                    .notice
                    .as_ref()
                    .map(|n| n.transaction.as_ref().unwrap_or(&n.table));
                last_end = Some(names.unwrap_or(&a.bytes).as_ptr_range().end);
                rows += 1;
            }
            (Outcome::Skipped(a), Outcome::Skipped(b)) => assert_eq!(a, b),
            (Outcome::Rejected(a), Outcome::Rejected(b)) => {
                assert_eq!((a.kind, &a.error), (b.kind, &b.error))
            }
            (got, alone) => panic!("offset {}: {got:?}, alone {alone:?}", m.offset),
        }
    }
    assert_eq!(kinds.len(), 4, "rows, transactions, skips and rejections");
    assert!(rows > 200, "{rows} rows");
    assert_eq!(
        adjacent,
        rows - 1,
        "rows (and their notices' names) one after the other in one buffer"
    );
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The audit row as PostgreSQL stores it, in the golden files' shape.
fn stored_row(c: &mut postgres::Client, offset: i64) -> Option<Value> {
    let sql = "SELECT json_build_object(
        'source_database', source_database, 'source_schema', source_schema, 'source_table', source_table,
        'operation_type', operation_type,
        'change_timestamp', to_char(change_timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
        'captured_at', to_char(captured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
        'old_data', old_data, 'new_data', new_data, 'primary_key', primary_key,
        'changed_columns', changed_columns, 'unavailable_columns', coalesce(unavailable_columns, '{}'),
        'change_user', change_user, 'transaction_id', transaction_id, 'transaction_order', transaction_order,
        'transaction_collection_order', transaction_collection_order, 'lsn', lsn, 'connector', connector,
        'is_snapshot', is_snapshot, 'source_metadata', source_metadata, 'change_detail', change_detail)::text
        FROM audit_logging WHERE kafka_topic = 'fixtures' AND kafka_offset = $1";
    let row = c.query_opt(sql, &[&offset]).unwrap()?;
    Some(serde_json::from_str(&row.get::<_, String>(0)).unwrap())
}

#[test]
fn every_fixture_goes_through_kafka_into_postgresql() {
    let db = TestDb::new("fixtures");
    let kafka = Kafka::new("fixtures");
    kafka.cluster.create_topic("fixtures", 1, 1).unwrap();
    let fixtures = fixtures();
    let records: Vec<Record> = fixtures
        .iter()
        .map(|f| Record {
            topic: "fixtures".into(),
            key: f
                .key
                .as_ref()
                .map(|k| String::from_utf8(k.clone()).unwrap()),
            value: f
                .value
                .as_ref()
                .map(|v| String::from_utf8(v.clone()).unwrap()),
        })
        .collect();
    kafka.produce(&records);
    let mut cfg = config(&kafka, &db, "g");
    cfg.topics = cdc_audit::config::Topics::List(vec!["fixtures".into()]);
    let service = InProcess::start(cfg);
    wait_until(Duration::from_secs(120), "every fixture committed", || {
        db.committed("g") == fixtures.len() as i64
    });
    service.stop();
    assert_eq!(db.count("audit_rejections"), 0);

    let mut c = db.client();
    let (mut rows, mut transactions, mut skipped) = (0, 0, 0);
    for (offset, f) in fixtures.iter().enumerate() {
        let expected = describe(&message(f, offset as i64), &Rules::default());
        if let Some(want) = expected.get("audit_logging") {
            let got =
                stored_row(&mut c, offset as i64).unwrap_or_else(|| panic!("{}: no row", f.name));
            for (column, want) in want.as_object().unwrap() {
                let have = &got[column.as_str()];
                let equal = match (column.as_str(), want) {
                    // jsonb keeps numbers exactly but may print them differently.
                    (_, Value::Object(_) | Value::Array(_)) => json_eq(want, have),
                    _ => want == have,
                };
                assert!(
                    equal,
                    "{} column {column}: expected {want}, stored {have}",
                    f.name
                );
            }
            rows += 1;
        } else if let Some(want) = expected.get("audit_transactions") {
            let got: String = c
                .query_one(
                    "SELECT transaction_id || ' ' || status FROM audit_transactions WHERE kafka_topic = 'fixtures' AND kafka_offset = $1",
                    &[&(offset as i64)],
                )
                .unwrap()
                .get(0);
            assert_eq!(
                got,
                format!(
                    "{} {}",
                    want["transaction_id"].as_str().unwrap(),
                    want["status"].as_str().unwrap()
                )
            );
            transactions += 1;
        } else {
            skipped += 1;
        }
    }
    assert_eq!(db.count("audit_logging"), rows);
    // PostgreSQL's transaction 571:53195832 announced 2 events; the fixtures hold one of them.
    let summary = c
        .query_one(
            "SELECT expected_events, recorded_events, complete FROM audit_transaction_summary WHERE transaction_id = '571:53195832'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            summary.get::<_, Option<i64>>(0),
            summary.get::<_, i64>(1),
            summary.get::<_, bool>(2)
        ),
        (Some(2), 1, false)
    );
    assert_eq!(db.count("audit_transactions"), transactions);
    assert!(
        rows > 50 && transactions >= 6 && skipped >= 3,
        "{rows} rows, {transactions} transaction events, {skipped} skipped"
    );
}

/// JSON equality where numbers compare by value (jsonb prints `1.0e3` as `1000`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}
