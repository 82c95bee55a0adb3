//! The pipeline in-process: contents, rejections, rows PostgreSQL refuses, backpressure.

use std::time::Duration;

use cdc_audit::demo::{poison, Record};
use cdc_audit::types::Exit;
use prometheus::core::Metric;

use crate::util::{
    assert_exactly_once, config, generate, wait_until, InProcess, Kafka, TestDb, PARTITIONS,
};

#[test]
fn events_across_tables_and_partitions_become_exactly_one_row_each() {
    let db = TestDb::new("e2e");
    let kafka = Kafka::new("e2e");
    let records = generate("e2e", 11, 2_000);
    kafka.produce(&records);
    let service = InProcess::start(config(&kafka, &db, "g"));
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    assert_eq!(service.stop(), Exit::Drained);
    assert_exactly_once(&db, &records);
    assert_eq!(db.count("audit_rejections"), 0);
    // Rows carry their source and Kafka coordinates.
    let mut c = db.client();
    let row = c
        .query_one(
            "SELECT count(DISTINCT kafka_topic), count(DISTINCT (kafka_topic, kafka_partition)), \
             bool_and(source_database = 'inventory' AND source_schema = 'public' AND connector = 'postgresql'), \
             bool_and(change_timestamp IS NOT NULL AND captured_at IS NOT NULL AND ingested_at IS NOT NULL) \
             FROM audit_logging",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3);
    assert_eq!(row.get::<_, i64>(1), 12);
    assert!(row.get::<_, bool>(2));
    assert!(row.get::<_, bool>(3));
}

#[test]
fn malformed_messages_are_stored_as_rejections_and_the_pipeline_moves_on() {
    let db = TestDb::new("poison");
    let kafka = Kafka::new("poison");
    let mut records = generate("poison", 5, 300);
    let bad = poison(&kafka.topics[1], 4);
    records.splice(100..100, bad.clone());
    records.push(Record {
        topic: kafka.topics[2].clone(),
        key: Some("not json".into()),
        value: Some("{\"op\":\"c\",\"after\":{}}".into()),
    });
    kafka.produce(&records);
    let service = InProcess::start(config(&kafka, &db, "g"));
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    service.stop();
    assert_exactly_once(&db, &records);
    let mut c = db.client();
    let rejections = c
        .query("SELECT reason, kafka_value, kafka_key, kafka_topic FROM audit_rejections ORDER BY reason", &[])
        .unwrap();
    let reasons: Vec<String> = rejections.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        reasons,
        [
            "invalid_key",
            "not_a_change_event",
            "not_a_change_event",
            "not_json",
            "unknown_operation"
        ]
    );
    // The raw bytes are kept, so nothing is lost.
    for r in &rejections {
        let value: Vec<u8> = r.get(1);
        assert!(records
            .iter()
            .any(|p| p.value.as_deref().map(str::as_bytes) == Some(&value[..])));
    }
}

/// Makes the first customer change at or after `from` valid JSON that jsonb refuses (a lone
/// UTF-16 surrogate escape): its index, and its value now.
fn refuse_one(records: &mut [Record], from: usize) -> (usize, String) {
    let i = from
        + records[from..]
            .iter()
            .position(|r| {
                r.value
                    .as_deref()
                    .is_some_and(|v| v.contains("\"first_name\":\""))
            })
            .unwrap();
    let refused = records[i].value.as_ref().unwrap().replacen(
        "\"first_name\":\"",
        "\"first_name\":\"\\ud800",
        1,
    );
    records[i].value = Some(refused.clone());
    (i, refused)
}

#[test]
fn a_row_postgresql_refuses_is_isolated_and_rejected_and_the_rest_committed() {
    let db = TestDb::new("refused");
    let kafka = Kafka::new("refused");
    let mut records = generate("refused", 9, 400);
    let (i, refused) = refuse_one(&mut records, 0);
    kafka.produce(&records);
    let service = InProcess::start(config(&kafka, &db, "g"));
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    service.stop();
    let mut c = db.client();
    let r = c
        .query_one(
            "SELECT reason, kafka_value, error FROM audit_rejections",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "database_refused");
    assert_eq!(r.get::<_, Vec<u8>>(1), refused.as_bytes());
    assert!(
        r.get::<_, String>(2).contains("SQLSTATE"),
        "{}",
        r.get::<_, String>(2)
    );
    let mut expected = records.clone();
    expected.remove(i);
    assert_exactly_once(&db, &expected);
}

/// One partition a table, as Debezium lays topics out, keeps both writers busy: a partition's
/// next batch is linked and COPYed while the one before it commits, and committed right behind
/// it. A batch whose predecessor was not written as it said (a refused row made that one split
/// and link again) is written on its own after it. Every event is still written once, along its
/// partition's chain in offset order, and the chains verify.
#[test]
fn a_hot_partitions_next_batch_is_written_while_the_one_before_commits() {
    let db = TestDb::new("behind");
    let kafka = Kafka::with_partitions("behind", 1);
    let mut records = generate("behind", 13, 3_000);
    let (i, _) = refuse_one(&mut records, 1_500);
    kafka.produce(&records);
    let mut cfg = config(&kafka, &db, "g");
    cfg.writers = 2;
    cfg.batch_size = 40;
    let service = InProcess::start(cfg);
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    let (behind, batches) = (
        service.stats.batches_behind.get(),
        service.stats.batches_committed.get(),
    );
    assert_eq!(service.stop(), Exit::Drained);
    assert!(
        behind > 0 && behind < batches,
        "{behind} of {batches} batches were written behind the one before"
    );
    assert_eq!(db.count("audit_rejections"), 1);
    let mut expected = records.clone();
    expected.remove(i);
    assert_exactly_once(&db, &expected);
}

/// A batch written behind its partition's previous one, which is itself written behind the
/// one before, locks the partition's position only once that one is done: its lock coming
/// first would find the position short of its start and roll it back, and the next batch,
/// linked after the link it gave up, with it. With no row refused, none is rolled back.
#[test]
fn batches_written_behind_one_another_are_not_rolled_back() {
    let db = TestDb::new("behindchain");
    let kafka = Kafka::with_partitions("behindchain", 1);
    // One table: its partition's batches follow one another, each behind the one before
    // (about 1 200 messages, 3 MB: librdkafka's mock broker keeps 5 MB of a partition).
    let mut records = generate("behindchain", 17, 3_000);
    let first = records[0].topic.clone();
    records.retain(|r| r.topic == first);
    kafka.produce(&records);
    let mut cfg = config(&kafka, &db, "g");
    cfg.writers = 2;
    cfg.batch_size = 10;
    let service = InProcess::start(cfg);
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    let stats = &service.stats;
    let (behind, undone, batches) = (
        stats.batches_behind.get(),
        stats.batches_behind_undone.get(),
        stats.batches_committed.get(),
    );
    assert_eq!(service.stop(), Exit::Drained);
    assert!(
        behind > 0,
        "{behind} of {batches} batches were written behind the one before"
    );
    assert_eq!(undone, 0, "of {behind} batches written behind, rolled back");
    assert_exactly_once(&db, &records);
}

#[test]
fn a_full_pipeline_pauses_consumption_and_resumes_without_loss() {
    pauses_and_resumes("backpressure", |cfg| {
        cfg.batch_size = 20;
        cfg.channel_capacity = 1;
    });
}

/// The same with budgets that only bytes can spend: batches of about 4 KiB, and a count no
/// backlog here reaches.
#[test]
fn a_pipeline_full_of_bytes_pauses_consumption_and_resumes_without_loss() {
    pauses_and_resumes("bytepressure", |cfg| {
        cfg.batch_size = 100_000;
        cfg.batch_bytes = 4096;
        cfg.channel_capacity = 1;
    });
}

fn pauses_and_resumes(name: &str, settings: impl FnOnce(&mut cdc_audit::config::Config)) {
    let db = TestDb::new(name);
    let kafka = Kafka::new(name);
    db.migrate();
    let records = generate(name, 3, 1_500);
    kafka.produce(&records);
    let mut cfg = config(&kafka, &db, "g");
    settings(&mut cfg);
    let (service, mut blocker) = start_blocked(&db, cfg);
    let consumed_while_blocked = service.stats.messages_consumed.get();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        service.stats.messages_consumed.get() < records.len() as u64,
        "a blocked pipeline must not read the whole backlog ({consumed_while_blocked} read)"
    );
    assert_eq!(db.committed("g"), 0);
    blocker.batch_execute("ROLLBACK").unwrap();
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    assert_eq!(service.stats.paused.get(), 0, "consumption resumed");
    service.stop();
    assert_exactly_once(&db, &records);
}

/// Starts the service with the audit table locked, so that its writers block, its channels fill
/// and its poll thread pauses; returns once it has paused, with the connection holding the lock
/// (`ROLLBACK` on it lets the writers go).
fn start_blocked(db: &TestDb, cfg: cdc_audit::config::Config) -> (InProcess, postgres::Client) {
    let mut blocker = db.client();
    blocker
        .batch_execute("BEGIN; LOCK TABLE audit_logging IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let service = InProcess::start(cfg);
    wait_until(Duration::from_secs(60), "consumption paused", || {
        service.stats.paused.get() == 1
    });
    (service, blocker)
}

/// A database, a broker whose topics have one partition each, and the generated changes of one
/// table (the first one's), as Debezium puts a table on a topic of one partition.
fn one_table(name: &str, seed: u64, changes: usize) -> (TestDb, Kafka, Vec<Record>) {
    let db = TestDb::new(name);
    db.migrate();
    let kafka = Kafka::with_partitions(name, 1);
    let mut records = generate(name, seed, changes);
    let topic = records[0].topic.clone();
    records.retain(|r| r.topic == topic);
    (db, kafka, records)
}

/// One hot partition behind (Debezium's layout for a busy table) writes batches of up to three
/// full ones, so that each transaction, fence and hand-over is paid for more rows: with the table
/// locked, the backlog of one topic of one partition waits in the poll thread, and once the
/// writers have the table again some batch holds more than twice the batch size. Without the
/// growth no batch can hold more than the batch size.
#[test]
fn a_lone_partition_behind_grows_its_batches_to_three_full_ones() {
    let (db, kafka, records) = one_table("lone", 17, 1_500);
    let topic = &records[0].topic;
    assert!(records.len() > 300, "{} messages on {topic}", records.len());
    kafka.produce(&records);
    let mut cfg = config(&kafka, &db, "g");
    cfg.batch_size = 40;
    cfg.channel_capacity = 1;
    // Only fullness hands a batch on while the writers are blocked.
    cfg.batch_linger = Duration::from_secs(60);
    let (service, mut blocker) = start_blocked(&db, cfg);
    blocker.batch_execute("ROLLBACK").unwrap();
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    let sizes = service.stats.batch_size.metric();
    let sizes = sizes.get_histogram();
    let up_to_100 = sizes
        .get_bucket()
        .iter()
        .find(|b| b.upper_bound() == 100.0)
        .map(|b| b.cumulative_count())
        .unwrap();
    assert!(
        sizes.get_sample_count() > up_to_100,
        "no batch of more than 100 messages among {} (batch size 40)",
        sizes.get_sample_count()
    );
    service.stop();
    assert_exactly_once(&db, &records);
}

/// While a partition's batch is being written, its next one grows past the linger until that
/// one is done, and is then written whole: handed on at the linger it would only queue behind
/// the first, smaller. With the table locked, the partition's first batch waits for the lock
/// and ten more rounds of messages arrive two lingers apart; once the lock goes, they are
/// written in one batch (two if one is handed on just as a round arrives), not one a round.
#[test]
fn a_partitions_next_batch_grows_past_the_linger_while_the_one_before_is_written() {
    let (db, kafka, records) = one_table("grows", 29, 300);
    let topic = &records[0].topic;
    let rounds: Vec<&[Record]> = records.chunks(records.len().div_ceil(11)).collect();
    assert_eq!(rounds.len(), 11, "{} messages on {topic}", records.len());
    let mut cfg = config(&kafka, &db, "g");
    cfg.batch_linger = Duration::from_millis(50);
    cfg.batch_idle_linger = Duration::from_millis(20);
    let mut blocker = db.client();
    blocker
        .batch_execute("BEGIN; LOCK TABLE audit_logging IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let service = InProcess::start(cfg);
    let consumed = |n: usize| {
        wait_until(Duration::from_secs(60), "the round read", || {
            service.stats.messages_consumed.get() >= n as u64
        })
    };
    // The first round is read (after the group join) and goes to an idle writer, which waits
    // for the lock.
    kafka.produce(rounds[0]);
    consumed(rounds[0].len());
    std::thread::sleep(Duration::from_millis(100));
    let mut sent = rounds[0].len();
    for round in &rounds[1..] {
        kafka.produce(round);
        sent += round.len();
        consumed(sent);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(db.committed("g"), 0, "the writers waited for the lock");
    blocker.batch_execute("ROLLBACK").unwrap();
    wait_until(Duration::from_secs(60), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    let batches = service.stats.batches_committed.get();
    assert!(
        (2..=3).contains(&batches),
        "{batches} batches for a blocked one and ten rounds after it, each two lingers apart"
    );
    service.stop();
    assert_exactly_once(&db, &records);
}

/// With a free writer a partly filled batch is written after the idle linger, not the linger:
/// changes arriving at a low rate are not held back for a minute. (With the linger alone, nothing
/// would be committed for 60 s.)
#[test]
fn a_partly_filled_batch_goes_to_an_idle_writer_before_the_linger() {
    let db = TestDb::new("idle");
    // Migrated first: the rounds count rows from the start.
    db.migrate();
    let kafka = Kafka::new("idle");
    let mut cfg = config(&kafka, &db, "g");
    cfg.batch_size = 100_000;
    cfg.batch_linger = Duration::from_secs(60);
    cfg.batch_idle_linger = Duration::from_millis(20);
    let service = InProcess::start(cfg);
    // Three rounds at a trickle, each waited for: every round is committed on its own.
    for round in 0..3u64 {
        let records = generate("idle", 30 + round, 5);
        kafka.produce(&records);
        let before = db.count("audit_logging");
        let changes = records.iter().filter(|r| r.value.is_some()).count() as i64;
        wait_until(Duration::from_secs(30), "the round committed", || {
            db.count("audit_logging") == before + changes
        });
    }
    let batches = service.stats.batches_committed.get();
    assert!(batches >= 3);
    // Each batch was held from its first message's read: at least the idle linger, far less
    // than the linger.
    let held = &service.stats.held_seconds;
    assert_eq!(held.get_sample_count(), batches);
    let mean = held.get_sample_sum() / batches as f64;
    assert!((0.02..10.0).contains(&mean), "held {mean:.3} s a batch");
    service.stop();
}

/// A batch is full at `CDC_AUDIT_BATCH_BYTES` whatever its message count: with a count and a
/// linger that would hold every message for a minute, the backlog is still written in batches of
/// about 4 KiB, and only each partition's last, partly filled batch waits (for the shutdown,
/// which hands it on).
#[test]
fn a_batch_is_full_at_its_byte_limit() {
    let db = TestDb::new("batchbytes");
    let kafka = Kafka::new("batchbytes");
    let records = generate("batchbytes", 7, 400);
    kafka.produce(&records);
    let mut cfg = config(&kafka, &db, "g");
    cfg.batch_size = 100_000;
    cfg.batch_bytes = 4096;
    cfg.batch_linger = Duration::from_secs(60);
    cfg.batch_idle_linger = Duration::from_secs(60);
    let service = InProcess::start(cfg);
    let half = records.len() as i64 / 2;
    wait_until(
        Duration::from_secs(30),
        "half the backlog committed",
        || db.committed("g") >= half,
    );
    // About 90 KiB a partition: a count- or time-bound batch would be one per partition.
    let batches = service.stats.batches_committed.get();
    let partitions = (kafka.topics.len() as i32 * PARTITIONS) as u64;
    assert!(
        batches >= 3 * partitions,
        "{batches} batches committed for {partitions} partitions"
    );
    // The shutdown hands on what was read, the partly filled batches included.
    wait_until(Duration::from_secs(30), "the backlog read", || {
        service.stats.messages_consumed.get() == records.len() as u64
    });
    assert_eq!(service.stop(), Exit::Drained);
    assert_exactly_once(&db, &records);
}
