//! Test harness: a uniquely named PostgreSQL database per test, an in-process Kafka mock cluster
//! per test, the service in-process or as a child process, and the exactly-once check.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cdc_audit::config::{Config, Topics};
use cdc_audit::demo::{self, Generator, Record};
use cdc_audit::events::Stats;
use cdc_audit::types::{Control, Exit};
use rdkafka::mocking::MockCluster;
use serde_json::Value;

pub const PARTITIONS: i32 = 4;

/// A fresh database, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub server: String,
    /// Only the owner drops the database.
    pub owned: bool,
}

impl TestDb {
    pub fn new(test: &str) -> TestDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let server = demo::server_url();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "cdc_audit_t_{}_{}_{}_{nanos}",
            test.chars()
                .filter(char::is_ascii_alphanumeric)
                .take(20)
                .collect::<String>(),
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        )
        .to_lowercase();
        let mut admin =
            postgres::Client::connect(&server, postgres::NoTls).expect("PostgreSQL is reachable");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = demo::with_dbname(&server, &name);
        TestDb {
            name,
            url,
            server,
            owned: true,
        }
    }

    /// The same database reached through another URL; this handle does not drop it.
    pub fn alias(&self, url: String) -> TestDb {
        TestDb {
            name: self.name.clone(),
            url,
            server: self.server.clone(),
            owned: false,
        }
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }

    pub fn migrate(&self) {
        cdc_audit::migrate::migrate(&mut self.client()).unwrap();
    }

    /// The schema as it was before migration `version`: the migrations before it, recorded as
    /// applied, as an installation of that time has them.
    pub fn migrate_before(&self, version: i32) {
        let mut client = self.client();
        client
            .batch_execute(
                "CREATE TABLE cdc_audit_migrations (version integer PRIMARY KEY, \
                 name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .unwrap();
        for (v, name, sql) in cdc_audit::migrate::MIGRATIONS
            .iter()
            .filter(|m| m.0 < version)
        {
            client.batch_execute(sql).unwrap();
            client
                .execute(
                    "INSERT INTO cdc_audit_migrations (version, name) VALUES ($1, $2)",
                    &[v, name],
                )
                .unwrap();
        }
    }

    /// Sum of the stored positions of a group: the number of messages committed when
    /// every partition's offsets start at 0, as they do on a fresh mock cluster.
    pub fn committed(&self, group: &str) -> i64 {
        let mut c = self.client();
        let exists: bool = c
            .query_one("SELECT to_regclass('audit_positions') IS NOT NULL", &[])
            .unwrap()
            .get(0);
        if !exists {
            return 0;
        }
        c.query_one(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM audit_positions WHERE consumer_group = $1",
            &[&group],
        )
        .unwrap()
        .get(0)
    }

    pub fn count(&self, table: &str) -> i64 {
        self.client()
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap()
            .get(0)
    }

    /// Rows of `audit_rejections` with this reason.
    pub fn rejections(&self, reason: &str) -> i64 {
        self.client()
            .query_one(
                "SELECT count(*) FROM audit_rejections WHERE reason = $1",
                &[&reason],
            )
            .unwrap()
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Ok(mut admin) = postgres::Client::connect(&self.server, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A mock Kafka cluster with the generator's topics.
/// A Kafka-protocol broker the tests produce to and the service reads from.
pub trait Broker {
    fn bootstrap(&self) -> &str;
    /// The topics the generated traffic goes to.
    fn topics(&self) -> &[String];
}

impl Broker for Kafka {
    fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
    fn topics(&self) -> &[String] {
        &self.topics
    }
}

pub struct Kafka {
    pub cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub bootstrap: String,
    pub topics: Vec<String>,
}

impl Kafka {
    pub fn new(prefix: &str) -> Kafka {
        Kafka::with_partitions(prefix, PARTITIONS)
    }

    /// The generator's topics with `partitions` partitions each (Debezium's default is one).
    pub fn with_partitions(prefix: &str, partitions: i32) -> Kafka {
        let cluster = MockCluster::new(1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let topics = Generator::new(prefix, 1).topics();
        for t in &topics {
            cluster.create_topic(t, partitions, 1).unwrap();
        }
        Kafka {
            cluster,
            bootstrap,
            topics,
        }
    }

    pub fn produce(&self, records: &[Record]) {
        demo::produce(&self.bootstrap, records).unwrap();
    }
}

/// What was produced: every record, for the exactly-once check.
#[derive(Default)]
pub struct Produced {
    pub records: Vec<Record>,
}

impl Produced {
    pub fn changes(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.value.as_deref().is_some_and(|v| v.contains("\"op\"")))
            .count()
    }
    pub fn total(&self) -> usize {
        self.records.len()
    }
}

/// `n` change events (plus the tombstones after deletes) from a seeded generator.
pub fn generate(prefix: &str, seed: u64, n: usize) -> Vec<Record> {
    let mut g = Generator::new(prefix, seed);
    let mut out = Vec::new();
    while g.changes < n {
        out.extend(g.next_records());
    }
    out
}

/// Produces `records` in `chunks` pieces spread over `over`, from a background thread.
pub fn produce_over(
    kafka: &impl Broker,
    records: Vec<Record>,
    chunks: usize,
    over: Duration,
) -> JoinHandle<()> {
    let bootstrap = kafka.bootstrap().to_string();
    thread::spawn(move || {
        let size = records.len().div_ceil(chunks.max(1));
        for chunk in records.chunks(size.max(1)) {
            demo::produce(&bootstrap, chunk).unwrap();
            thread::sleep(over / chunks as u32);
        }
    })
}

pub fn config(kafka: &impl Broker, db: &TestDb, group: &str) -> Config {
    Config {
        bootstrap_servers: kafka.bootstrap().to_string(),
        topics: Topics::List(kafka.topics().to_vec()),
        group_id: group.to_string(),
        database_url: db.url.clone(),
        database_ca_file: None,
        batch_size: 200,
        batch_bytes: 1 << 20,
        batch_linger: Duration::from_millis(50),
        batch_idle_linger: Duration::from_millis(20),
        writers: 2,
        pool_size: 4,
        channel_capacity: 2,
        shutdown_timeout: Duration::from_secs(30),
        rebalance_timeout: Duration::from_secs(10),
        migrate: true,
        http_addr: None,
        ready_max_lag: None,
        stall_timeout: Duration::from_secs(120),
        log_format: cdc_audit::config::LogFormat::Text,
        api: None,
        digest: None,
        partitions_ahead: 3,
        retention: None,
        registry: None,
        bulk_threshold: 1000,
        bulk_watch: Vec::new(),
        rules: Default::default(),
        kafka: fast_group_settings()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Group timings short enough that a dead member is noticed in seconds.
pub fn fast_group_settings() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        ("max.poll.interval.ms", "6000"),
    ])
}

/// The service running on a thread of the test process.
pub struct InProcess {
    pub control: Arc<Control>,
    pub stats: Arc<Stats>,
    handle: JoinHandle<Result<Exit, String>>,
}

impl InProcess {
    pub fn start(config: Config) -> InProcess {
        // The service's log goes to the test's captured output: shown when the test fails.
        let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .is_test(true)
            .try_init();
        let control = Arc::new(Control::default());
        let stats = Arc::new(Stats::new());
        let (c, s) = (control.clone(), stats.clone());
        let handle = thread::spawn(move || cdc_audit::service::run(config, c, s));
        InProcess {
            control,
            stats,
            handle,
        }
    }

    pub fn stop(self) -> Exit {
        self.control.stop();
        self.handle.join().unwrap().unwrap()
    }
}

/// The service as a child process of the real binary.
pub struct Service {
    pub child: Child,
    pub log: PathBuf,
}

impl Service {
    pub fn spawn(kafka: &impl Broker, db: &TestDb, group: &str, extra: &[(&str, &str)]) -> Service {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "{}-{}-{}.log",
            db.name,
            group,
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-audit"));
        cmd.arg("run")
            .env_clear()
            .envs(crate::util::coverage_env())
            .env("RUST_LOG", "info")
            .env("CDC_AUDIT_BOOTSTRAP_SERVERS", kafka.bootstrap())
            .env("CDC_AUDIT_TOPICS", kafka.topics().join(","))
            .env("CDC_AUDIT_GROUP_ID", group)
            .env("CDC_AUDIT_DATABASE_URL", &db.url)
            .env("CDC_AUDIT_BATCH_SIZE", "100")
            .env("CDC_AUDIT_BATCH_LINGER_MS", "50")
            // Several instances share this machine: each listens on a port of its own.
            .env("CDC_AUDIT_HTTP_ADDR", "127.0.0.1:0");
        for (k, v) in fast_group_settings() {
            cmd.env(
                format!("CDC_AUDIT_KAFKA_{}", k.to_uppercase().replace('.', "_")),
                v,
            );
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Service { child, log }
    }

    pub fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.log_text());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "service did not exit within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command that must succeed; returns its standard output, or fails with its errors.
pub fn run_ok(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{command:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Polls `done` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the group commits more than it had, or has committed all `total` messages:
/// a wait for progress alone would hang once the stream is drained.
pub fn wait_progress(db: &TestDb, group: &str, total: i64, what: &str) {
    let before = db.committed(group);
    wait_until(Duration::from_secs(180), what, || {
        let now = db.committed(group);
        now > before || now == total
    });
}

/// Prints a test's figures after its exactly-once check passed, for docs/reliability.md:
/// `cargo test --test it -- faults:: exactly_once:: --test-threads=1 --nocapture | grep FIGURES`.
pub fn figures(test: &str, db: &TestDb, disruptions: &str, started: std::time::Instant) {
    let rows = db.count("audit_logging");
    let rejections = db.count("audit_rejections");
    let messages = db
        .client()
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM audit_positions",
            &[],
        )
        .map_or(0, |r| r.get::<_, i64>(0));
    println!(
        "FIGURES {test}: {messages} messages, {rows} audit rows, {rejections} rejections, {disruptions}, 0 duplicates, 0 lost, {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// Asserts that every produced change event is in `audit_logging` exactly once, with its
/// contents, and that each partition's rows were inserted in offset order.
pub fn assert_exactly_once(db: &TestDb, produced: &[Record]) {
    check_exactly_once(db, produced, true);
}

/// As [`assert_exactly_once`], for rows written out of offset order on purpose (a replay).
pub fn assert_each_once(db: &TestDb, produced: &[Record]) {
    check_exactly_once(db, produced, false);
}

fn check_exactly_once(db: &TestDb, produced: &[Record], in_offset_order: bool) {
    let mut expected: HashMap<String, Value> = HashMap::new();
    for r in produced {
        // Generated change events carry a unique LSN; tombstones and poison have none.
        let Some(v) = r
            .value
            .as_deref()
            .and_then(|v| serde_json::from_str::<Value>(v).ok())
        else {
            continue;
        };
        let Some(lsn) = v["payload"]["source"].get("lsn").map(Value::to_string) else {
            continue;
        };
        assert!(
            expected.insert(lsn, v).is_none(),
            "generator LSNs are unique"
        );
    }
    let mut c = db.client();
    let rows = c
        .query(
            "SELECT lsn, operation_type, old_data::text, new_data::text, primary_key::text, source_table, \
             kafka_topic, kafka_partition, kafka_offset, transaction_id, changed_columns \
             FROM audit_logging ORDER BY kafka_topic, kafka_partition, chain_seq",
            &[],
        )
        .unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut last_offset: HashMap<(String, i32), i64> = HashMap::new();
    for row in &rows {
        let lsn: String = row.get(0);
        *seen.entry(lsn.clone()).or_default() += 1;
        let event = expected
            .get(&lsn)
            .unwrap_or_else(|| panic!("row with unknown lsn {lsn}"));
        let p = &event["payload"];
        let op = match p["op"].as_str().unwrap() {
            "c" => "INSERT",
            "u" => "UPDATE",
            _ => "DELETE",
        };
        assert_eq!(row.get::<_, String>(1), op);
        let json = |i: usize| {
            row.get::<_, Option<String>>(i)
                .map(|s| serde_json::from_str::<Value>(&s).unwrap())
        };
        assert_eq!(
            json(2).unwrap_or(Value::Null),
            p["before"],
            "old_data of {lsn}"
        );
        assert_eq!(
            json(3).unwrap_or(Value::Null),
            p["after"],
            "new_data of {lsn}"
        );
        let id = p["after"]["id"]
            .as_i64()
            .or(p["before"]["id"].as_i64())
            .unwrap();
        assert_eq!(json(4), Some(serde_json::json!({ "id": id })));
        assert_eq!(
            row.get::<_, String>(5),
            p["source"]["table"].as_str().unwrap()
        );
        assert_eq!(
            row.get::<_, Option<String>>(9).as_deref(),
            p["transaction"]["id"].as_str()
        );
        if op == "UPDATE" {
            let mut changed: Vec<String> = row.get(10);
            changed.sort();
            let (b, a) = (
                p["before"].as_object().unwrap(),
                p["after"].as_object().unwrap(),
            );
            let want: Vec<String> = a
                .iter()
                .filter(|(k, v)| b.get(*k) != Some(v))
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!(changed, want, "changed_columns of {lsn}");
        }
        let key = (row.get::<_, String>(6), row.get::<_, i32>(7));
        let offset: i64 = row.get(8);
        if let Some(prev) = last_offset
            .insert(key.clone(), offset)
            .filter(|_| in_offset_order)
        {
            assert!(
                offset > prev,
                "{key:?}: offset {offset} chained after {prev}"
            );
        }
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "{} events written more than once: {duplicates:?}",
        duplicates.len()
    );
    let missing = expected.keys().filter(|k| !seen.contains_key(*k)).count();
    assert_eq!(missing, 0, "{missing} of {} events missing", expected.len());
    assert_eq!(rows.len(), expected.len());
    // The unique constraint on Kafka coordinates is a safety net; the fence must never need it.
    let caught: i64 = c
        .query_one("SELECT count(*) FROM audit_rejections WHERE error LIKE '%audit_logging_kafka_coordinates%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(caught, 0, "duplicates reached the unique constraint");
    assert_chains_intact(db);
}

/// Every hash chain of the trail verifies, from the stored rows alone.
pub fn assert_chains_intact(db: &TestDb) -> cdc_audit::integrity::Report {
    let report = cdc_audit::integrity::verify(|| Ok(db.client()), &Default::default()).unwrap();
    assert!(report.intact(), "the trail's hash chains:\n{report}");
    report
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Deterministic choices from a seed (xorshift), for generated test data and fault schedules.
pub struct Dice(pub u64);

impl Dice {
    /// A number below `n`.
    pub fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A fresh directory for a test's files.
pub fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cdc-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the openssl command line.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An Ed25519 private key in PEM, made the way the operations guide says; its path.
pub fn ed25519_key(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        path.to_str().unwrap(),
    ]);
    path
}

/// What a child process keeps of this one's environment when it is otherwise cleared: where
/// `cargo llvm-cov` wants its coverage profile written, so the binary's runs count.
pub fn coverage_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k == "LLVM_PROFILE_FILE")
        .collect()
}
