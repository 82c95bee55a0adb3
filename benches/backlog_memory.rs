//! Peak memory with a large backlog while PostgreSQL cannot take writes, then while draining.
//! The service runs as its own process (the real binary) against librdkafka's mock cluster and
//! the local PostgreSQL; its resident memory is sampled from /proc. Prints figures; asserts nothing.
//!
//!     [CDC_AUDIT_...=...] cargo bench --bench backlog_memory [-- EVENTS]
//!
//! The mock broker delivers under 1 MB/s per partition, so the drain rate printed here is the
//! mock's, not the service's.

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cdc_audit::demo::{self, Generator};
use rdkafka::mocking::MockCluster;

fn committed(client: &mut postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM audit_positions",
            &[],
        )
        .map_or(0, |r| r.get(0))
}

fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60_000);
    let server = demo::server_url();
    let mut admin = cdc_audit::sink::connect(&server, None).expect("PostgreSQL");
    let dbname = format!("cdc_audit_bench_memory_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {dbname}"))
        .unwrap();
    let url = demo::with_dbname(&server, &dbname);
    let mut client = cdc_audit::sink::connect(&url, None).unwrap();
    cdc_audit::migrate::migrate(&mut client).unwrap();

    let cluster = MockCluster::new(1).unwrap();
    let mut generator = Generator::new("memory", 7);
    for topic in generator.topics() {
        // The mock broker keeps about 4 MB per partition: enough partitions to keep the backlog.
        cluster.create_topic(&topic, 16, 1).unwrap();
    }
    let mut records = Vec::new();
    while generator.changes < events {
        records.extend(generator.next_records());
    }
    let bytes: usize = records
        .iter()
        .map(|r| r.value.as_ref().map_or(0, String::len))
        .sum();
    println!(
        "backlog: {} messages, {:.0} MB, in Kafka before the service starts",
        records.len(),
        bytes as f64 / 1e6
    );
    demo::produce(&cluster.bootstrap_servers(), &records).unwrap();

    // The database takes no writes: the audit table is locked.
    let mut blocker = cdc_audit::sink::connect(&url, None).unwrap();
    let mut lock = blocker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE audit_logging IN ACCESS EXCLUSIVE MODE")
        .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
        .arg("run")
        .env_clear()
        // Settings to try, e.g. CDC_AUDIT_CHANNEL_CAPACITY=4 cargo bench --bench backlog_memory
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("CDC_AUDIT_")))
        .env("CDC_AUDIT_BOOTSTRAP_SERVERS", cluster.bootstrap_servers())
        .env("CDC_AUDIT_TOPICS", generator.topics().join(","))
        .env("CDC_AUDIT_DATABASE_URL", &url)
        .env("CDC_AUDIT_HTTP_ADDR", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(std::env::temp_dir().join("cdc-audit-backlog-memory.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let pid = child.id();
    let sample = |until: &mut dyn FnMut() -> bool, limit: Duration| {
        let (start, mut peak) = (Instant::now(), 0);
        while !until() && start.elapsed() < limit {
            peak = peak.max(common::rss_kib(pid).unwrap_or(0));
            thread::sleep(Duration::from_millis(100));
        }
        (peak, start.elapsed())
    };
    let (blocked_peak, _) = sample(&mut || false, Duration::from_secs(30));
    println!(
        "peak resident memory, 30 s with the database blocked: {:.1} MB",
        blocked_peak as f64 / 1024.0
    );
    println!("committed while blocked: {}", committed(&mut client));
    lock.rollback().unwrap();
    let total = records.len() as i64;
    let (drain_peak, took) = sample(
        &mut || committed(&mut client) >= total,
        Duration::from_secs(900),
    );
    println!(
        "peak resident memory while draining: {:.1} MB; drained {} in {:.1} s (rate limited by the mock broker)",
        drain_peak as f64 / 1024.0,
        committed(&mut client),
        took.as_secs_f64()
    );
    let rows: i64 = client
        .query_one("SELECT count(*) FROM audit_logging", &[])
        .map_or(-1, |r| r.get(0));
    println!(
        "audit rows: {rows} of {} change events ({} lost)",
        generator.changes,
        generator.changes as i64 - rows
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    drop(client);
    drop(blocker);
    let _ = admin.batch_execute(&format!("DROP DATABASE {dbname} WITH (FORCE)"));
}
