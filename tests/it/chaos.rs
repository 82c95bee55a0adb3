//! The chaos run: three instances of the real binary in one group write into a private
//! PostgreSQL, through a proxy, from tansu (a Kafka broker in its own process, on SQLite), while
//! events keep coming; faults strike at random: SIGKILL and restart, SIGTERM and restart, an
//! instance frozen past its session (a zombie, which must be fenced when it wakes), a database
//! crash, the database's connections cut or stalled, the broker killed and restarted. At the end
//! every change is there exactly once, in offset order per partition, with no hole recorded: this
//! broker loses nothing it acknowledged.
//!
//! CI runs it for 45 s. `CDC_AUDIT_CHAOS_SECONDS=3600` runs it longer, `CDC_AUDIT_CHAOS_SEED=N`
//! replays a schedule (the seed is printed first):
//! `CDC_AUDIT_CHAOS_SECONDS=600 cargo test --test it chaos -- --nocapture`.

use std::collections::BTreeMap;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cdc_audit::demo::Record;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use crate::crash::PrivatePostgres;
use crate::proxy::{self, Proxy};
use crate::tansu::{Storage, Tansu};
use crate::util::{assert_exactly_once, generate, Broker, Dice, Service, PARTITIONS};

#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Term,
    Zombie,
    DatabaseCrash,
    ConnectionsCut,
    ConnectionsStalled,
    BrokerKill,
}

const FAULTS: [Fault; 7] = [
    Fault::Kill,
    Fault::Term,
    Fault::Zombie,
    Fault::DatabaseCrash,
    Fault::ConnectionsCut,
    Fault::ConnectionsStalled,
    Fault::BrokerKill,
];

fn signal(name: &str, service: &Service) {
    let ok = std::process::Command::new("kill")
        .args([name, &service.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {name}");
}

/// The peak resident memory of a running instance, in kB (`VmHWM`).
fn peak_kb(service: &Service) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", service.child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Produces `records` in `chunks` pieces spread over `over`, idempotently: a send the broker
/// took but did not acknowledge before it was killed is retried without a second copy, and a
/// send waits out the broker's restarts.
fn produce_through_faults(
    bootstrap: String,
    records: Vec<Record>,
    chunks: usize,
    over: Duration,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "600000")
            .create()
            .unwrap();
        let size = records.len().div_ceil(chunks.max(1));
        for chunk in records.chunks(size.max(1)) {
            for r in chunk {
                let mut record: BaseRecord<'_, str, str> = BaseRecord::to(&r.topic);
                if let Some(key) = &r.key {
                    record = record.key(key);
                }
                if let Some(value) = &r.value {
                    record = record.payload(value);
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            record = back;
                            producer.poll(Duration::from_millis(100));
                        }
                    }
                }
            }
            producer.poll(Duration::ZERO);
            thread::sleep(over / chunks as u32);
        }
        producer.flush(Duration::from_secs(600)).unwrap();
    })
}

/// SIGTERM, and the instance drains and leaves the group; its peak resident memory, in kB.
fn stop(service: Service) -> u64 {
    let peak = peak_kb(&service);
    service.sigterm();
    let (code, log) = service.wait(Duration::from_secs(90));
    assert!(
        code == Some(0) || code == Some(2),
        "SIGTERM exit {code:?}:\n{log}"
    );
    peak
}

/// What a stuck drain looks like: each partition's stored position against the broker's end,
/// and the end of each instance's log.
fn stuck(db: &crate::util::TestDb, broker: &Tansu, instances: &[Service]) -> String {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let stored: BTreeMap<(String, i32), i64> = db
        .client()
        .query(
            "SELECT topic, partition, next_offset FROM audit_positions WHERE consumer_group = 'g'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
    let mut out = String::new();
    for topic in broker.topics() {
        for partition in 0..PARTITIONS {
            let ends = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5));
            let next = stored.get(&(topic.clone(), partition));
            out += &format!("{topic}/{partition}: stored {next:?}, broker (low, high) {ends:?}\n");
        }
    }
    for service in instances {
        let log = service.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        out += &format!("--- instance {} ---\n", service.child.id());
        for line in tail.into_iter().rev() {
            out += line;
            out.push('\n');
        }
    }
    out
}

#[test]
fn chaos_of_random_faults_loses_duplicates_and_reorders_nothing() {
    let seconds: u64 = std::env::var("CDC_AUDIT_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let seed: u64 = std::env::var("CDC_AUDIT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("chaos: seed {seed}, {seconds} s (CDC_AUDIT_CHAOS_SEED={seed} replays the schedule)");
    let mut dice = Dice(seed);

    let pg = PrivatePostgres::start();
    let db = pg.db();
    // Migrated once here: an instance restarted while the database is down still starts.
    db.migrate();
    let proxy = Proxy::start(proxy::target(&db.url));
    let via_proxy = db.alias(proxy.url(&db.url));
    let broker = Tansu::start("chaos", Storage::Sqlite, PARTITIONS);
    // About 60 events a second over the run, as a steady source would send them.
    let records = generate("chaos", seed, (seconds as usize * 60).max(1_000));
    let total = records.len() as i64;
    let producer = produce_through_faults(
        broker.bootstrap().to_string(),
        records.clone(),
        (seconds as usize * 2).max(10),
        Duration::from_secs(seconds),
    );
    // `CDC_AUDIT_CHAOS_LOG=info` keeps the instances' own account, for a run that fails.
    let log = std::env::var("CDC_AUDIT_CHAOS_LOG").unwrap_or_else(|_| "warn".into());
    let spawn = || {
        Service::spawn(
            &broker,
            &via_proxy,
            "g",
            &[("RUST_LOG", &log), ("CDC_AUDIT_MIGRATE", "false")],
        )
    };
    let mut instances: Vec<Service> = (0..3).map(|_| spawn()).collect();
    let mut peaks: Vec<u64> = Vec::new();

    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        thread::sleep(Duration::from_millis(1_500 + dice.roll(3_000)));
        let which = dice.roll(instances.len() as u64) as usize;
        let pid = instances[which].child.id();
        let pause = Duration::from_millis(500 + dice.roll(2_500));
        let fault = match FAULTS[dice.roll(FAULTS.len() as u64) as usize] {
            Fault::Kill => {
                let victim = instances.swap_remove(which);
                peaks.push(peak_kb(&victim));
                victim.sigkill();
                instances.push(spawn());
                "SIGKILL and restart"
            }
            Fault::Term => {
                peaks.push(stop(instances.swap_remove(which)));
                instances.push(spawn());
                "SIGTERM and restart"
            }
            Fault::Zombie => {
                // Frozen past its 6 s session: the group moves on without it, then it wakes
                // holding batches of partitions that are no longer its own.
                signal("-STOP", &instances[which]);
                thread::sleep(Duration::from_secs(8));
                signal("-CONT", &instances[which]);
                "zombie (SIGSTOP past the session, SIGCONT)"
            }
            Fault::DatabaseCrash => {
                pg.crash();
                thread::sleep(pause);
                pg.ctl_start();
                "database crash (immediate stop, recovery)"
            }
            Fault::ConnectionsCut => {
                proxy.cut();
                thread::sleep(pause);
                proxy.restore();
                "database connections cut and refused"
            }
            Fault::ConnectionsStalled => {
                proxy.stall();
                thread::sleep(pause);
                proxy.restore();
                "database connections stalled"
            }
            Fault::BrokerKill => {
                broker.kill();
                thread::sleep(pause);
                broker.up();
                "broker SIGKILL and restart"
            }
        };
        eprintln!(
            "chaos: {:>6.1} s {fault} (instance {pid} if it is one's)",
            started.elapsed().as_secs_f64()
        );
        *faults.entry(fault).or_default() += 1;
    }
    producer.join().unwrap();
    // tansu 0.6's coordinator expires a SIGKILLed member after its session but starts no new
    // generation, so the partitions the leader gave it stay with nobody (Kafka would rebalance).
    // A member that leaves starts one: past the session of the last member killed, one instance
    // is restarted, as a rolling restart would. Without this the drain can wait forever on
    // partitions no instance holds (seed 1796002825807246617).
    thread::sleep(Duration::from_secs(8));
    peaks.push(stop(instances.swap_remove(0)));
    instances.push(spawn());
    let deadline = Instant::now() + Duration::from_secs(300);
    while db.committed("g") != total {
        if Instant::now() > deadline {
            panic!(
                "{} of {total} messages committed 300 s after the chaos (seed {seed});\n{}",
                db.committed("g"),
                stuck(&db, &broker, &instances)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    for service in instances {
        peaks.push(stop(service));
    }
    let gaps = db.count("audit_gaps");
    eprintln!(
        "chaos: seed {seed}, {} faults in {seconds} s ({:.0} s to drain after): {faults:?}; \
         {total} messages; peak resident memory of an instance {:.1} MB (of {} instances); \
         {gaps} holes recorded",
        faults.values().sum::<usize>(),
        started.elapsed().as_secs_f64() - seconds as f64,
        peaks.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        peaks.len()
    );
    assert_exactly_once(&db, &records);
    assert_eq!(gaps, 0, "holes recorded, yet the broker lost nothing");
}
