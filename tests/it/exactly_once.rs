//! Exactly once under crashes, restarts, rebalances, redelivery and shutdown: each test ends by
//! checking every produced event against the audit table.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cdc_audit::demo::Record;
use cdc_audit::sink::{write_batch, Written};
use cdc_audit::transform::transform;
use cdc_audit::types::{Batch, Gap, GapCause, Message, Tp, Transformed};

use crate::proxy::{self, Proxy};
use crate::util::{
    assert_exactly_once, config, generate, produce_over, wait_progress, wait_until, InProcess,
    Kafka, Service, TestDb,
};

fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64
            % max_ms,
    )
}

#[test]
fn sigkill_and_restart_repeatedly_loses_and_duplicates_nothing() {
    let started = std::time::Instant::now();
    let db = TestDb::new("sigkill");
    let kafka = Kafka::new("sigkill");
    let records = generate("sigkill", 21, 5_000);
    let total = records.len() as i64;
    let producer = produce_over(&kafka, records.clone(), 80, Duration::from_secs(40));
    let mut mid_stream_kills = 0;
    for _ in 0..4 {
        let service = Service::spawn(&kafka, &db, "g", &[]);
        // Kill it once it is committing, at a random moment mid-stream.
        wait_progress(&db, "g", total, "progress after restart");
        thread::sleep(jitter(800));
        if db.committed("g") < total {
            mid_stream_kills += 1;
        }
        service.sigkill();
    }
    producer.join().unwrap();
    assert!(
        mid_stream_kills >= 2,
        "only {mid_stream_kills} kills landed mid-stream"
    );
    let service = Service::spawn(&kafka, &db, "g", &[]);
    wait_until(Duration::from_secs(180), "every message committed", || {
        db.committed("g") == total
    });
    service.sigterm();
    let (code, log) = service.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_exactly_once(&db, &records);
    crate::util::figures(
        "sigkill_restarts",
        &db,
        &format!("4 SIGKILLs ({mid_stream_kills} mid-stream)"),
        started,
    );
}

#[test]
fn instances_leaving_and_dying_during_a_rebalance_keep_exactly_once() {
    let started = std::time::Instant::now();
    let db = TestDb::new("rebalance");
    let kafka = Kafka::new("rebalance");
    let records = generate("rebalance", 33, 5_000);
    let total = records.len() as i64;
    let producer = produce_over(&kafka, records.clone(), 40, Duration::from_secs(25));
    let a = Service::spawn(&kafka, &db, "g", &[]);
    let b = Service::spawn(&kafka, &db, "g", &[]);
    let assigned = |s: &Service| s.log_text().matches("partitions assigned").count();
    wait_until(Duration::from_secs(180), "both instances assigned", || {
        assigned(&a) >= 1 && assigned(&b) >= 1
    });
    wait_progress(&db, "g", total, "progress with two instances");

    // B leaves politely: it drains, commits and leaves the group.
    b.sigterm();
    let (code, log) = b.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("shut down cleanly"), "{log}");

    // C joins, takes partitions, and dies mid-stream without a word.
    let c = Service::spawn(&kafka, &db, "g", &[]);
    wait_until(Duration::from_secs(180), "C assigned", || assigned(&c) >= 1);
    wait_progress(&db, "g", total, "progress with C");
    thread::sleep(jitter(500));
    c.sigkill();

    producer.join().unwrap();
    wait_until(Duration::from_secs(180), "A finishes everything", || {
        db.committed("g") == total
    });
    assert!(
        assigned(&a) >= 3,
        "A was reassigned as B left and C came and went:\n{}",
        a.log_text()
    );
    a.sigterm();
    let (code, log) = a.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_exactly_once(&db, &records);
    crate::util::figures(
        "rebalance",
        &db,
        "2 instances, 1 left (SIGTERM), 1 joined and was SIGKILLed",
        started,
    );
}

/// librdkafka keeps a partition's pause through a rebalance: one paused, revoked and assigned
/// again stays paused unless the service resumes it. Here A has paused (its writes are blocked)
/// when B joins the group; once writes flow again, A must read its new share to the end.
#[test]
fn partitions_assigned_again_while_paused_are_read_once_there_is_room() {
    let db = TestDb::new("pause_rebalance");
    db.migrate();
    let kafka = Kafka::new("pauserebal");
    let records = generate("pauserebal", 41, 3_000);
    kafka.produce(&records);
    let total = records.len() as i64;
    let mut blocker = db.client();
    let mut lock = blocker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE audit_logging IN EXCLUSIVE MODE")
        .unwrap();
    let settings = [
        ("CDC_AUDIT_BATCH_SIZE", "50"),
        ("CDC_AUDIT_CHANNEL_CAPACITY", "1"),
        ("CDC_AUDIT_REBALANCE_TIMEOUT_MS", "500"),
        ("RUST_LOG", "info,cdc_audit::source=debug"),
    ];
    let a = Service::spawn(&kafka, &db, "g", &settings);
    wait_until(Duration::from_secs(60), "A paused", || {
        a.log_text().contains("consumption paused")
    });
    let b = Service::spawn(&kafka, &db, "g", &settings);
    let assigned = |s: &Service| s.log_text().matches("partitions assigned").count();
    wait_until(Duration::from_secs(180), "A assigned again", || {
        assigned(&b) >= 1 && assigned(&a) >= 2
    });
    lock.commit().unwrap();
    wait_until(Duration::from_secs(180), "everything written", || {
        db.committed("g") == total
    });
    for s in [a, b] {
        s.sigterm();
        let (code, log) = s.wait(Duration::from_secs(60));
        assert_eq!(code, Some(0), "{log}");
    }
    assert_exactly_once(&db, &records);
}

#[test]
fn sigterm_commits_what_was_read_and_exits_zero() {
    let test_started = std::time::Instant::now();
    let db = TestDb::new("sigterm");
    let kafka = Kafka::new("sigterm");
    let records = generate("sigterm", 4, 600);
    kafka.produce(&records);
    // Batches never fill and never expire by themselves: what is read stays in memory.
    let service = Service::spawn(
        &kafka,
        &db,
        "g",
        &[
            ("CDC_AUDIT_BATCH_SIZE", "100000"),
            ("CDC_AUDIT_BATCH_LINGER_MS", "60000"),
            ("CDC_AUDIT_BATCH_IDLE_LINGER_MS", "60000"),
        ],
    );
    wait_until(Duration::from_secs(90), "assignment", || {
        service.log_text().contains("partitions assigned")
    });
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        db.committed("g"),
        0,
        "nothing is written before the linger expires"
    );
    let started = Instant::now();
    service.sigterm();
    let (code, log) = service.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "within the shutdown deadline"
    );
    let drained: i64 = log
        .lines()
        .find_map(|l| l.split("draining: ").nth(1))
        .and_then(|rest| rest.split(" messages").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drain line in:\n{log}"));
    assert!(drained > 0, "{log}");
    assert_eq!(
        db.committed("g"),
        drained,
        "everything read was committed before exit"
    );
    assert!(log.contains("shut down cleanly"), "{log}");

    // What was not read yet is read by the next run; the whole is exactly once.
    // (The first run may have read everything: the second must still be up before its SIGTERM.)
    let service = Service::spawn(&kafka, &db, "g", &[]);
    wait_until(Duration::from_secs(120), "the rest", || {
        db.committed("g") == records.len() as i64
            && service.log_text().contains("partitions assigned")
    });
    service.sigterm();
    let (code, log) = service.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_exactly_once(&db, &records);
    crate::util::figures(
        "sigterm_drain",
        &db,
        "1 SIGTERM with batches in memory, 1 restart",
        test_started,
    );
}

/// A batch of partition 0 of topic `t` with the given offsets, transformed as the pipeline would.
fn batch(records: &[Record], start: Option<i64>, offsets: std::ops::Range<i64>) -> Transformed {
    let topic: Arc<str> = Arc::from("t");
    let messages: Vec<Message> = offsets
        .clone()
        .map(|o| Message {
            topic: topic.clone(),
            partition: 0,
            offset: o,
            timestamp_ms: Some(1_700_000_000_000),
            key: records[o as usize]
                .key
                .clone()
                .map(|s| s.into_bytes().into()),
            payload: records[o as usize]
                .value
                .clone()
                .map(|s| s.into_bytes().into()),
            headers: Vec::new(),
        })
        .collect();
    let rules = cdc_audit::config::rules::Rules::default();
    let outcomes = messages.iter().map(|m| transform(m, &rules)).collect();
    let batch = Batch {
        id: 0,
        tp: Tp {
            topic,
            partition: 0,
        },
        epoch: 0,
        start,
        end: offsets.end,
        holes: Vec::new(),
        bytes: messages.iter().map(Message::size).sum(),
        messages,
        created: Instant::now(),
    };
    Transformed::new(batch, outcomes)
}

fn rows(w: Written) -> (i64, usize, usize) {
    match w {
        Written::Committed {
            next,
            rows,
            skipped,
            ..
        } => (next, rows, skipped),
        Written::Behind { stored } => panic!("does not connect to the stored {stored}"),
    }
}

#[test]
fn redelivered_and_stale_batches_are_fenced_by_the_stored_position() {
    let db = TestDb::new("fence");
    db.migrate();
    // Change events only (no tombstones), so every offset is one row.
    let records: Vec<Record> = generate("fence", 8, 400)
        .into_iter()
        .filter(|r| r.value.is_some())
        .collect();
    let mut c = db.client();
    let mut write = |t: &Transformed| write_batch(&mut c, "g", t, false).unwrap();

    assert_eq!(rows(write(&batch(&records, Some(0), 0..10))), (10, 10, 0));
    // The same batch again (a redelivery after a crash between commit and Kafka commit).
    assert_eq!(rows(write(&batch(&records, Some(0), 0..10))), (10, 0, 10));
    // Overlapping: only the new part is written.
    assert_eq!(rows(write(&batch(&records, Some(5), 5..15))), (15, 5, 5));
    // A batch that does not connect to the stored position is refused: a gap would be a loss.
    assert_eq!(
        write(&batch(&records, Some(20), 20..25)),
        Written::Behind { stored: 15 }
    );
    // Started from Kafka's committed offset (start unknown): fenced against the first offset.
    assert_eq!(rows(write(&batch(&records, None, 15..20))), (20, 5, 0));
    assert_eq!(
        write(&batch(&records, None, 22..25)),
        Written::Behind { stored: 20 }
    );
    // A stale owner's batch from long ago writes nothing.
    assert_eq!(rows(write(&batch(&records, None, 3..8))), (20, 0, 5));
    assert_eq!(db.count("audit_logging"), 20);

    // Two owners racing with the same batch: the position lock lets exactly one write it.
    let url = db.url.clone();
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let (url, t) = (url.clone(), batch(&records, Some(20), 20..60));
            thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                rows(write_batch(&mut c, "g", &t, false).unwrap())
            })
        })
        .collect();
    let mut results: Vec<_> = racers.into_iter().map(|h| h.join().unwrap()).collect();
    results.sort();
    assert_eq!(results, [(60, 0, 40), (60, 40, 0)]);
    assert_exactly_once(&db, &records[..60]);
    let stored: i64 = db
        .client()
        .query_one("SELECT next_offset FROM audit_positions", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, 60);
}

/// `t` without the messages at `gone`: offsets Kafka did not deliver.
fn without(mut t: Transformed, gone: &[i64]) -> Transformed {
    let keep: Vec<bool> = t
        .batch
        .messages
        .iter()
        .map(|m| !gone.contains(&m.offset))
        .collect();
    let (mut a, mut b) = (keep.iter(), keep.iter());
    t.batch.messages.retain(|_| *a.next().unwrap());
    t.outcomes.retain(|_| *b.next().unwrap());
    t
}

fn gaps(db: &TestDb) -> Vec<(i64, i64)> {
    db.client()
        .query(
            "SELECT first_offset, end_offset FROM audit_gaps ORDER BY first_offset",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn offsets_missing_from_kafka_are_recorded_once_with_the_batch_that_reads_past_them() {
    let db = TestDb::new("gaps");
    db.migrate();
    let records: Vec<Record> = generate("gaps", 9, 100)
        .into_iter()
        .filter(|r| r.value.is_some())
        .collect();
    let mut c = db.client();
    let mut write = |t: &Transformed| write_batch(&mut c, "g", t, false).unwrap();
    let missing = |w: Written| match w {
        Written::Committed { next, missing, .. } => {
            let missing: Vec<(i64, i64)> = missing
                .iter()
                .map(|g| (g.offsets.start, g.offsets.end))
                .collect();
            (next, missing)
        }
        Written::Behind { stored } => panic!("does not connect to the stored {stored}"),
    };

    // 3..7 deleted by retention, 9 a transaction's commit marker (one offset: not a gap), 12..14
    // an aborted transaction.
    let t = without(batch(&records, Some(0), 0..20), &[3, 4, 5, 6, 9, 12, 13]);
    assert_eq!(missing(write(&t)), (20, vec![(3, 7), (12, 14)]));
    assert_eq!(db.count("audit_logging"), 13);
    // Redelivered, it records nothing again.
    assert_eq!(missing(write(&t)), (20, vec![]));
    // A hole at the start of a batch: the partition's log starts past the stored position.
    let t = without(batch(&records, Some(20), 20..30), &[20, 21, 22, 23, 24]);
    assert_eq!(missing(write(&t)), (30, vec![(20, 25)]));
    // A batch that overlaps the stored position records only what lies past it.
    let t = without(batch(&records, Some(25), 25..40), &[26, 27, 35, 36]);
    assert_eq!(missing(write(&t)), (40, vec![(35, 37)]));
    assert_eq!(gaps(&db), [(3, 7), (12, 14), (20, 25), (35, 37)]);

    // The holes the source saw come checked (it asks the broker where the log starts, and
    // fetches the rest again): below the log start, retention; at or past it, not delivered (an
    // aborted transaction, or compaction), or suspect (nothing there, yet no reason why).
    let mut t = without(
        batch(&records, Some(40), 40..60),
        &[40, 41, 42, 43, 50, 51, 52],
    );
    let hole = |offsets, cause| Gap {
        offsets,
        cause: Some(cause),
    };
    t.batch.holes = vec![
        hole(40..42, GapCause::Retention),
        hole(42..44, GapCause::NotDelivered),
        hole(50..53, GapCause::Suspect),
    ];
    assert_eq!(missing(write(&t)), (60, vec![(40, 42), (42, 44), (50, 53)]));
    let causes: Vec<(i64, Option<String>)> = db
        .client()
        .query(
            "SELECT first_offset, cause FROM audit_gaps ORDER BY first_offset",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let cause = |c: &str| Some(c.to_string());
    assert_eq!(
        causes,
        [
            (3, None),
            (12, None),
            (20, None),
            (35, None),
            (40, cause("retention")),
            (42, cause("not_delivered")),
            (50, cause("suspect")),
        ]
    );

    // Like the trail, the record of gaps is append-only.
    let err = db
        .client()
        .execute("DELETE FROM audit_gaps", &[])
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("audit_gaps is append-only"),
        "{err:?}"
    );
}

/// Sets the group's committed offsets in Kafka to 0 for every partition, as a group member
/// (the mock cluster accepts commits from members only).
fn reset_kafka_offsets(kafka: &Kafka, group: &str) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    for (k, v) in crate::util::fast_group_settings() {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).unwrap();
    let partitions = kafka.topics.len() * crate::util::PARTITIONS as usize;
    wait_until(
        Duration::from_secs(60),
        "the reset consumer's assignment",
        || {
            consumer.poll(Duration::from_millis(100));
            consumer.assignment().unwrap().count() == partitions
        },
    );
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in &kafka.topics {
        for p in 0..crate::util::PARTITIONS {
            tpl.add_partition_offset(t, p, rdkafka::Offset::Offset(0))
                .unwrap();
        }
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
    let committed = consumer.committed(Duration::from_secs(10)).unwrap();
    assert!(committed
        .elements()
        .iter()
        .all(|e| e.offset() == rdkafka::Offset::Offset(0)));
}

#[test]
fn offsets_read_again_through_kafka_are_not_written_twice() {
    let started = std::time::Instant::now();
    let db = TestDb::new("redelivery");
    let kafka = Kafka::new("redelivery");
    let mut first = generate("redelivery", 13, 1_300);
    let more = first.split_off(1_000);
    kafka.produce(&first);
    let service = InProcess::start(config(&kafka, &db, "g"));
    wait_until(Duration::from_secs(120), "first run", || {
        db.committed("g") == first.len() as i64
    });
    service.stop();

    // Kafka now says "start from 0", and PostgreSQL cannot be asked when the partitions are
    // assigned: the consumer falls back to Kafka's offsets and reads everything again.
    reset_kafka_offsets(&kafka, "g");
    let proxy = Proxy::start(proxy::target(&db.url));
    let mut cfg = config(&kafka, &db, "g");
    cfg.database_url = proxy.url(&db.url);
    cfg.migrate = false;
    proxy.cut();
    let service = InProcess::start(cfg);
    wait_until(Duration::from_secs(60), "the backlog re-read", || {
        service.stats.messages_consumed.get() >= first.len() as u64
    });
    proxy.restore();
    kafka.produce(&more);
    let total = (first.len() + more.len()) as i64;
    wait_until(Duration::from_secs(120), "the new events", || {
        db.committed("g") == total
    });
    assert_eq!(
        service.stats.duplicates_skipped.get(),
        first.len() as u64,
        "every re-read offset was fenced"
    );
    service.stop();
    let re_read = first.len();
    assert_exactly_once(&db, &[first, more].concat());
    crate::util::figures(
        "redelivery",
        &db,
        &format!("{re_read} offsets re-read and fenced, database away at assignment"),
        started,
    );
}
