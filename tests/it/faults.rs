//! The fault suite: the database cut, refused and stalled mid-stream; the broker down and up;
//! injected request errors; three instances joining and leaving; a poison corpus. Each test
//! ends by checking every produced event against the audit table.

use std::thread;
use std::time::Duration;

use cdc_audit::demo::Record;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::proxy::{self, Proxy};
use crate::util::{
    assert_exactly_once, config, generate, produce_over, wait_progress, wait_until, InProcess,
    Kafka, Service, TestDb,
};

#[test]
fn postgresql_cut_refused_and_stalled_mid_stream_loses_and_duplicates_nothing() {
    let started = std::time::Instant::now();
    let db = TestDb::new("pgfaults");
    let kafka = Kafka::new("pgfaults");
    db.migrate();
    let records = generate("pgfaults", 41, 4_000);
    let total = records.len() as i64;
    let producer = produce_over(&kafka, records.clone(), 30, Duration::from_secs(15));
    let proxy = Proxy::start(proxy::target(&db.url));
    let mut cfg = config(&kafka, &db, "g");
    cfg.database_url = proxy.url(&db.url);
    cfg.batch_size = 50;
    let service = InProcess::start(cfg);
    for outage in 0..4 {
        wait_progress(&db, "g", total, "progress");
        if outage % 2 == 0 {
            proxy.cut(); // open connections closed, new ones refused
        } else {
            proxy.stall(); // connections hang mid-transaction
        }
        thread::sleep(Duration::from_secs(3));
        proxy.restore();
    }
    producer.join().unwrap();
    wait_until(Duration::from_secs(180), "every message committed", || {
        db.committed("g") == total
    });
    assert!(
        service.stats.write_retries.get() > 0,
        "the outages were felt"
    );
    service.stop();
    assert_exactly_once(&db, &records);
    crate::util::figures(
        "postgresql_outages",
        &db,
        "4 database outages of 3 s (2 cut and refused, 2 stalled)",
        started,
    );
}

#[test]
fn broker_down_and_up_and_injected_request_errors_are_survived() {
    let started = std::time::Instant::now();
    let db = TestDb::new("brokerfaults");
    let kafka = Kafka::new("brokerfaults");
    let records = generate("brokerfaults", 42, 3_000);
    let total = records.len() as i64;
    let (first, rest) = records.split_at(records.len() / 3);
    kafka.produce(first);
    let service = InProcess::start(config(&kafka, &db, "g"));
    wait_until(Duration::from_secs(90), "progress", || {
        db.committed("g") > 0
    });

    kafka.cluster.broker_down(1).unwrap();
    thread::sleep(Duration::from_secs(3));
    kafka.cluster.broker_up(1).unwrap();
    // Fetches and offset commits fail for a while with retriable errors.
    kafka.cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 5],
    );
    kafka.cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 3],
    );
    kafka.produce(rest);
    wait_until(Duration::from_secs(180), "every message committed", || {
        db.committed("g") == total
    });
    service.stop();
    assert_exactly_once(&db, &records);
    crate::util::figures(
        "broker_faults",
        &db,
        "broker down 3 s, 5 Fetch and 3 OffsetCommit errors injected",
        started,
    );
}

#[test]
fn three_instances_joining_and_leaving_keep_exactly_once() {
    let started = std::time::Instant::now();
    let db = TestDb::new("three");
    let kafka = Kafka::new("three");
    let records = generate("three", 43, 6_000);
    let total = records.len() as i64;
    let producer = produce_over(&kafka, records.clone(), 60, Duration::from_secs(30));
    let assigned = |s: &Service| s.log_text().matches("partitions assigned").count();
    let progress = |db: &TestDb| wait_progress(db, "g", total, "progress");
    let a = Service::spawn(&kafka, &db, "g", &[]);
    progress(&db);
    let b = Service::spawn(&kafka, &db, "g", &[]);
    let c = Service::spawn(&kafka, &db, "g", &[]);
    wait_until(Duration::from_secs(180), "all three assigned", || {
        assigned(&b) >= 1 && assigned(&c) >= 1
    });
    progress(&db);
    b.sigkill();
    progress(&db);
    c.sigterm();
    assert_eq!(c.wait(Duration::from_secs(60)).0, Some(0));
    let d = Service::spawn(&kafka, &db, "g", &[]);
    wait_until(Duration::from_secs(180), "D assigned", || assigned(&d) >= 1);
    progress(&db);
    producer.join().unwrap();
    wait_until(Duration::from_secs(180), "every message committed", || {
        db.committed("g") == total
    });
    for s in [a, d] {
        s.sigterm();
        assert_eq!(s.wait(Duration::from_secs(60)).0, Some(0));
    }
    assert_exactly_once(&db, &records);
    crate::util::figures(
        "three_instances",
        &db,
        "3 instances: 1 SIGKILLed, 1 left, 1 joined",
        started,
    );
}

#[test]
fn a_poison_corpus_is_rejected_with_reasons_and_the_pipeline_keeps_going() {
    let started = std::time::Instant::now();
    let db = TestDb::new("corpus");
    let kafka = Kafka::new("corpus");
    let topic = kafka.topics[0].clone();
    let record = |key: Option<&str>, value: &str| Record {
        topic: topic.clone(),
        key: key.map(str::to_string),
        value: Some(value.to_string()),
    };
    let poison: Vec<(Record, Option<&str>)> = vec![
        (
            record(None, r#"{"payload": {"op": "c", "after": {"id": 1"#),
            Some("not_json"),
        ),
        (record(None, "[1, 2, 3]"), Some("not_a_change_event")),
        (
            record(None, r#""just a string""#),
            Some("not_a_change_event"),
        ),
        (
            record(None, r#"{"payload": {"op": "x", "after": {"id": 1}}}"#),
            Some("unknown_operation"),
        ),
        (
            record(
                None,
                r#"{"payload": {"op": "c", "source": {"table": "t"}}}"#,
            ),
            Some("invalid_field"),
        ),
        (
            record(None, r#"{"before": null, "after": {"id": 1}}"#),
            Some("not_a_change_event"),
        ),
        (
            record(Some("not json"), r#"{"op": "c", "after": {"id": 2}}"#),
            Some("invalid_key"),
        ),
        // PostgreSQL refuses these; the batch is split and only they are rejected.
        (
            record(None, r#"{"op": "c", "after": {"n": 1e999999}}"#),
            Some("database_refused"),
        ),
        (
            record(
                None,
                &format!(
                    r#"{{"op": "c", "after": {{"deep": {}{}}}}}"#,
                    "[".repeat(200_000),
                    "]".repeat(200_000)
                ),
            ),
            Some("database_refused"),
        ),
        // Stored: NUL escaped with the original kept, an out-of-range timestamp as unknown.
        (
            record(
                None,
                r#"{"op": "c", "after": {"id": 3, "s": "a\u0000b"}, "source": {"table": "t", "ts_ms": 1e30}}"#,
            ),
            None,
        ),
    ];
    let mut records = generate("corpus", 44, 400);
    let mut all: Vec<Record> = Vec::new();
    for (i, r) in records.drain(..).enumerate() {
        all.push(r);
        if i % 30 == 0 {
            if let Some((p, _)) = poison.get(i / 30) {
                all.push(p.clone());
            }
        }
    }
    kafka.produce(&all);
    produce_bytes(
        &kafka,
        &topic,
        b"{\"op\": \"c\", \"after\": {\"s\": \"\xff\xfe\"}}",
    );
    let total = all.len() as i64 + 1;
    let mut cfg = config(&kafka, &db, "g");
    // librdkafka's mock broker does not return an oversized first message (KIP-74) as Kafka does.
    cfg.kafka
        .insert("max.partition.fetch.bytes".into(), "16777216".into());
    let service = InProcess::start(cfg);
    wait_until(Duration::from_secs(240), "every message committed", || {
        db.committed("g") == total
    });
    service.stop();

    let mut c = db.client();
    let mut reasons: Vec<String> = c
        .query("SELECT reason FROM audit_rejections ORDER BY reason", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected: Vec<String> = poison
        .iter()
        .filter_map(|(_, r)| r.map(str::to_string))
        .collect();
    expected.push("not_json".into()); // invalid UTF-8
    expected.sort();
    reasons.sort();
    assert_eq!(reasons, expected);
    let raw_kept: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_rejections WHERE kafka_value IS NOT NULL AND error <> ''",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(raw_kept as usize, expected.len());
    let stored = c
        .query_one(
            "SELECT (SELECT new_data->>'s' FROM audit_logging WHERE new_data->>'id' = '3'),
                    (SELECT change_detail->'original_images'->>'after' FROM audit_logging WHERE new_data->>'id' = '3'),
                    (SELECT change_timestamp IS NULL FROM audit_logging WHERE new_data->>'id' = '3')",
            &[],
        )
        .unwrap();
    assert_eq!(stored.get::<_, String>(0), "a\\u0000b");
    assert!(stored.get::<_, String>(1).contains(r#""a\u0000b""#));
    assert!(stored.get::<_, bool>(2));
    let generated: Vec<Record> = all
        .into_iter()
        .filter(|r| r.value.as_deref().is_some_and(|v| v.contains("\"lsn\"")))
        .collect();
    let extra = 1; // the NUL row
    assert_eq!(db.count("audit_logging") as usize, generated.len() + extra);
    crate::util::figures(
        "poison_corpus",
        &db,
        "11 poison messages among the events",
        started,
    );
}

fn produce_bytes(kafka: &Kafka, topic: &str, value: &[u8]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .create()
        .unwrap();
    producer
        .send(BaseRecord::<(), [u8]>::to(topic).payload(value))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A 10 MB change event is parsed, encoded and written whole. (Through Kafka it needs
/// `CDC_AUDIT_KAFKA_MAX_PARTITION_FETCH_BYTES` on older brokers; librdkafka's mock broker does
/// not deliver messages that large at all, so this test starts after the consumer.)
#[test]
fn a_10_mb_change_event_is_stored_whole() {
    use cdc_audit::config::rules::Rules;
    use cdc_audit::sink::{write_batch, Written};
    use cdc_audit::transform::transform;
    use cdc_audit::types::{Batch, Message, Tp, Transformed};
    use std::sync::Arc;
    let db = TestDb::new("big");
    db.migrate();
    let note = "x".repeat(10 << 20);
    let value = format!(
        r#"{{"op": "c", "after": {{"id": 4, "note": "{note}"}}, "source": {{"table": "big"}}}}"#
    );
    let topic: Arc<str> = Arc::from("big");
    let msg = Message {
        topic: topic.clone(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: None,
        payload: Some(value.into_bytes().into()),
        headers: Vec::new(),
    };
    let outcomes = vec![transform(&msg, &Rules::default())];
    let batch = Batch {
        id: 1,
        tp: Tp {
            topic,
            partition: 0,
        },
        epoch: 0,
        start: Some(0),
        end: 1,
        holes: Vec::new(),
        bytes: msg.size(),
        messages: vec![msg],
        created: std::time::Instant::now(),
    };
    let written = write_batch(
        &mut db.client(),
        "g",
        &Transformed::new(batch, outcomes),
        false,
    )
    .unwrap();
    assert!(
        matches!(written, Written::Committed { rows: 1, .. }),
        "{written:?}"
    );
    let len: i32 = db
        .client()
        .query_one("SELECT length(new_data->>'note') FROM audit_logging", &[])
        .unwrap()
        .get(0);
    assert_eq!(len as usize, note.len());
}

/// Retention deletes offsets the service has not read (it was stopped): the hole is recorded in
/// `audit_gaps` and counted, once, and everything after it is audited. The mock broker keeps at
/// most 5 MB a partition, dropping its oldest record batches beyond that.
#[test]
fn offsets_deleted_by_retention_before_they_were_read_are_recorded_as_a_gap() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let db = TestDb::new("retention");
    let kafka = Kafka::new("retention");
    kafka.cluster.create_topic("retained", 1, 1).unwrap();
    let mut cfg = config(&kafka, &db, "g");
    cfg.topics = cdc_audit::config::Topics::List(vec!["retained".into()]);
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    // Each flush makes a record batch of its own, which retention drops as a whole.
    let send = |id: usize, note: &str| {
        let value = format!(
            r#"{{"op": "c", "after": {{"id": {id}, "note": "{note}"}}, "source": {{"table": "retained"}}}}"#
        );
        producer
            .send(BaseRecord::<(), str>::to("retained").payload(&value))
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    };

    send(0, "small");
    send(1, "small");
    let service = InProcess::start(cfg.clone());
    wait_until(Duration::from_secs(60), "the first two", || {
        db.committed("g") == 2
    });
    service.stop();

    // Eleven events of 600 KB: the first three are gone by the time the service is back.
    let big = "x".repeat(600 << 10);
    for id in 2..13 {
        send(id, &big);
    }
    let watcher: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .create()
        .unwrap();
    let (low, high) = watcher
        .fetch_watermarks("retained", 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!((low, high), (5, 13), "retention dropped offsets 2, 3 and 4");

    let service = InProcess::start(cfg);
    wait_until(Duration::from_secs(120), "the rest", || {
        db.committed("g") == 13
    });
    let missing = service.stats.offsets_missing.get();
    let not_delivered = service.stats.offsets_not_delivered.get();
    service.stop();
    assert_eq!((missing, not_delivered), (3, 0));
    // The source asked the broker where the log starts (5): all of the hole is retention's.
    let gaps: Vec<(String, i32, i64, i64, Option<String>)> = db
        .client()
        .query(
            "SELECT kafka_topic, kafka_partition, first_offset, end_offset, cause FROM audit_gaps",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        gaps,
        [(
            "retained".to_string(),
            0,
            2,
            5,
            Some("retention".to_string())
        )]
    );
    let offsets: Vec<i64> = db
        .client()
        .query("SELECT kafka_offset FROM audit_logging ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(offsets, [0, 1, 5, 6, 7, 8, 9, 10, 11, 12]);
}
