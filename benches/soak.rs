//! The soak: steady traffic for an hour at half the drain rate, one instance of the service, and
//! whether what it holds stays flat. The broker is tansu on SQLite (a process of its own, storage on
//! disk: an hour of traffic does not fit in memory), the database the shared server.
//!
//! `--broker mock` uses librdkafka's mock cluster instead, whose memory stays bounded.
//!
//! 1. The drain rate of this setup: a backlog of `--drain-events` is produced, the instance started,
//!    and the time from its start to the last commit taken.
//! 2. The soak: events at `--share` of that rate for `--seconds`, generated as they are sent. Every
//!    `--every` seconds the instance's resident memory, open file descriptors and threads, its
//!    database connections, and its lag (messages acknowledged by the broker, not yet committed)
//!    are sampled into `target/soak.csv`.
//! 3. The end: the instance drains, and every change is checked to be in the trail exactly once.
//!
//! `cargo bench --bench soak -- --seconds 3600`, then
//! `python3 benches/soak_chart.py target/soak.csv docs/soak.png` draws the samples.

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cdc_audit::demo::{Generator, Record};
use clap::Parser;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;

#[derive(Parser)]
struct Args {
    /// Seconds of paced traffic.
    #[arg(long, default_value_t = 3600)]
    seconds: u64,
    /// The soak's rate as a share of the measured drain rate.
    #[arg(long, default_value_t = 0.5)]
    share: f64,
    /// Change events in the backlog that measures the drain rate.
    #[arg(long, default_value_t = 100_000)]
    drain_events: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// Partitions of each of the three topics.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// The broker: `tansu` (on SQLite, a process of its own) or `mock` (librdkafka's mock cluster
    /// in this process, which keeps only the last 4 MB or so of each partition: memory stays
    /// bounded for an hour, and an instance more than seconds behind loses changes, which the
    /// end's check reports).
    #[arg(long, default_value = "tansu", value_parser = ["tansu", "mock"])]
    broker: String,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Sends records, paced, counting what the broker acknowledged.
struct Sender {
    producer: BaseProducer,
}

impl Sender {
    fn new(bootstrap: &str) -> Sender {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .set("queue.buffering.max.kbytes", "262144")
            .set("message.timeout.ms", "300000")
            .create()
            .unwrap();
        Sender { producer }
    }

    fn send(&self, r: &Record) {
        let mut record: BaseRecord<'_, str, str> = BaseRecord::to(&r.topic);
        if let Some(key) = &r.key {
            record = record.key(key);
        }
        if let Some(value) = &r.value {
            record = record.payload(value);
        }
        while let Err((_, back)) = self.producer.send(record) {
            record = back;
            self.producer.poll(Duration::from_millis(10));
        }
    }

    fn flush(&self) {
        self.producer.flush(Duration::from_secs(300)).unwrap();
    }
}

fn committed(client: &mut postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM audit_positions",
            &[],
        )
        .unwrap()
        .get(0)
}

fn wait_committed(client: &mut postgres::Client, messages: i64, limit: Duration) {
    let started = Instant::now();
    while committed(client) < messages {
        assert!(
            started.elapsed() < limit,
            "{} of {messages} committed after {limit:?}",
            committed(client)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn service(bootstrap: &str, topics: &[String], url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
        .arg("run")
        .env_clear()
        .env("CDC_AUDIT_BOOTSTRAP_SERVERS", bootstrap)
        .env("CDC_AUDIT_TOPICS", topics.join(","))
        .env("CDC_AUDIT_DATABASE_URL", url)
        .env("CDC_AUDIT_GROUP_ID", "soak")
        .env("CDC_AUDIT_HTTP_ADDR", "127.0.0.1:0")
        // tansu completes a group join only after the poll interval: keep it short.
        .env("CDC_AUDIT_KAFKA_MAX_POLL_INTERVAL_MS", "6000")
        .env("CDC_AUDIT_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join("cdc-audit-soak.log")).unwrap())
        .spawn()
        .unwrap()
}

/// What one sample holds (its time is in the CSV only).
struct Sample {
    rss: f64,
    fds: usize,
    threads: usize,
    connections: i64,
    lag: i64,
}

/// Open file descriptors and threads of a process.
fn fds_and_threads(pid: u32) -> (usize, usize) {
    let count = |dir: String| std::fs::read_dir(dir).map_or(0, |d| d.count());
    (
        count(format!("/proc/{pid}/fd")),
        count(format!("/proc/{pid}/task")),
    )
}

fn main() {
    let args = Args::parse();
    let mut generator = Generator::new("soak", 21).without_schemas();
    let topics = generator.topics();
    let storage = format!("sqlite://cdc-audit-soak-{}.db", std::process::id());
    let (mut tansu, mock, bootstrap) = if args.broker == "mock" {
        let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
        for t in &topics {
            cluster.create_topic(t, args.partitions, 1).unwrap();
        }
        let bootstrap = cluster.bootstrap_servers();
        (None, Some(cluster), bootstrap)
    } else {
        let Some(binary) = common::tansu_binary() else {
            eprintln!("soak needs the tansu broker (with --features libsql), or TANSU");
            std::process::exit(2);
        };
        let (child, bootstrap) = common::start_tansu(&binary, &storage, "cdc-audit-soak-tansu.log");
        // Ten minutes of retention (tansu on SQLite deletes by `retention.ms` only where
        // `cleanup.policy` says delete); in the run of 2026-11-29 its file grew regardless.
        let retention = [("cleanup.policy", "delete"), ("retention.ms", "600000")];
        common::create_topics(&bootstrap, &topics, args.partitions, &retention);
        (Some(child), None, bootstrap)
    };
    let server = cdc_audit::demo::server_url();
    let mut admin = cdc_audit::sink::connect(&server, None).expect("PostgreSQL");
    let name = format!("cdc_audit_soak_{}", std::process::id());
    let url = common::fresh_database(&mut admin, &server, &name);
    let mut client = cdc_audit::sink::connect(&url, None).unwrap();
    let sender = Sender::new(&bootstrap);

    // 1. The drain rate.
    let mut messages = 0i64;
    let mut bytes = 0usize;
    while generator.changes < args.drain_events {
        for r in generator.next_records() {
            bytes += r.value.as_ref().map_or(0, String::len);
            sender.send(&r);
            messages += 1;
        }
    }
    sender.flush();
    let started = Instant::now();
    let mut instance = service(&bootstrap, &topics, &url);
    let pid = instance.id();
    wait_committed(&mut client, messages, Duration::from_secs(1800));
    let drain = generator.changes as f64 / started.elapsed().as_secs_f64();
    let rate = drain * args.share;
    println!(
        "drain: {} change events ({messages} messages, {:.0} bytes each) in {:.1} s from the \
         instance's start: {drain:.0} events/s; the soak sends {rate:.0} events/s for {} s",
        generator.changes,
        bytes as f64 / messages as f64,
        started.elapsed().as_secs_f64(),
        args.seconds
    );

    // 2. The soak: a paced sender, and samples.
    let sent = Arc::new(AtomicU64::new(messages as u64));
    let done = Arc::new(AtomicBool::new(false));
    let changes_before = generator.changes;
    let pacer = {
        let (sent, done) = (sent.clone(), done.clone());
        let seconds = args.seconds;
        thread::spawn(move || {
            let started = Instant::now();
            let mut changes = 0usize;
            while started.elapsed() < Duration::from_secs(seconds) {
                let due = (started.elapsed().as_secs_f64() * rate) as usize;
                if changes >= due {
                    sender.producer.poll(Duration::from_millis(1));
                    continue;
                }
                let before = generator.changes;
                for r in generator.next_records() {
                    sender.send(&r);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                changes += generator.changes - before;
            }
            sender.flush();
            done.store(true, Ordering::Release);
            generator.changes
        })
    };
    let csv_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak.csv");
    let mut csv = std::fs::File::create(&csv_path).unwrap();
    writeln!(
        csv,
        "seconds,rss_mb,fds,threads,db_connections,lag_messages"
    )
    .unwrap();
    let soak_started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    while !done.load(Ordering::Acquire) {
        thread::sleep(Duration::from_secs(args.every));
        let rss = common::rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
        let (fds, threads) = fds_and_threads(pid);
        let connections: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        let lag = sent.load(Ordering::Relaxed) as i64 - committed(&mut client);
        let t = soak_started.elapsed().as_secs_f64();
        writeln!(csv, "{t:.0},{rss:.1},{fds},{threads},{connections},{lag}").unwrap();
        samples.push(Sample {
            rss,
            fds,
            threads,
            connections,
            lag,
        });
    }
    let changes = pacer.join().unwrap();

    // 3. The end: everything once.
    let total = sent.load(Ordering::Relaxed) as i64;
    wait_committed(&mut client, total, Duration::from_secs(600));
    let (rows, distinct): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT (kafka_topic, kafka_partition, kafka_offset)) \
                 FROM audit_logging",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let peak = common::peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = instance.wait();
    if let Some(mut child) = tansu.take() {
        let _ = child.kill();
        let _ = child.wait();
        let path = std::env::temp_dir().join(storage.trim_start_matches("sqlite://"));
        let _ = std::fs::remove_file(path);
    }
    drop(mock);

    let span = |f: &dyn Fn(&Sample) -> f64| {
        let values: Vec<f64> = samples.iter().map(f).collect();
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        // The first and last tenth of the run, averaged: a leak shows as a rise between them.
        let tenth = (values.len() / 10).max(1);
        let first = values[..tenth].iter().sum::<f64>() / tenth as f64;
        let last = values[values.len() - tenth..].iter().sum::<f64>() / tenth as f64;
        format!("{min:.0} to {max:.0} (first tenth {first:.1}, last tenth {last:.1})")
    };
    if samples.is_empty() {
        println!("no samples: --seconds shorter than --every");
    } else {
        println!(
            "soak: {} s, {} change events sent at {rate:.0}/s ({total} messages with the drain's), \
             {} samples every {} s\n\
             resident memory MB: {}; peak over the run {peak:.1} MB\n\
             file descriptors: {}\nthreads: {}\ndatabase connections: {}\nlag, messages: {}",
            args.seconds,
            changes - changes_before,
            samples.len(),
            args.every,
            span(&|s| s.rss),
            span(&|s| s.fds as f64),
            span(&|s| s.threads as f64),
            span(&|s| s.connections as f64),
            span(&|s| s.lag as f64),
        );
    }
    println!(
        "exactly once: {rows} audit rows for {changes} change events, {distinct} distinct coordinates: {}",
        if rows == changes as i64 && distinct == rows {
            "yes"
        } else {
            "NO"
        }
    );
    println!("samples in {}", csv_path.display());
    drop(client);
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}
