//! End to end through a real Kafka broker in its own process (tansu), against PostgreSQL's own
//! ceiling measured in the same run. Prints figures, writes a short report, and checks every
//! change was written exactly once; asserts nothing about time.
//!
//!     cargo bench --bench end_to_end [-- --events N --partitions P --one-topic --schemas --writers W]
//!
//! 1. ceiling: binary COPY of the same rows (transformed in-process) into the same table, one
//!    transaction per batch, on as many connections as the service has writers; measured again
//!    after the drain, and the higher of the two is the ceiling;
//! 2. backlog: the events are produced first, then one instance drains them: events/s, MB/s, peak
//!    resident memory, CPU time per event, and the ratio to the ceiling;
//! 3. latency: with the instance caught up, events are produced at half the drain rate and each
//!    row's produce time (its Kafka timestamp) is set against the moment its partition's position
//!    in `audit_positions` passed it (polled every 10 ms); each second, what PostgreSQL was
//!    doing (checkpoints, autovacuum), what the service's writers committed, and what the
//!    machine wrote to its disk;
//! 4. two instances in a new consumer group drain everything again into a fresh database.
//!
//! Needs the `tansu` binary: `$TANSU`, on `PATH`, or in `~/.cargo/bin`
//! (`cargo install tansu --features dynostore`; BENCHMARKS.md says how to build it with
//! `benches/tansu-fetch.patch`, which makes its fetch behave like Kafka's).
//!
//! The service instances get the bench's own settings, then any `CDC_AUDIT_*` of the bench's
//! environment but `CDC_AUDIT_BENCH_LOG` (their `RUST_LOG`), which win:
//! `CDC_AUDIT_KAFKA_QUEUED_MAX_MESSAGES_KBYTES=8192 cargo bench ...`. `CDC_AUDIT_BIN` names
//! another build of the service to run instead of this one's (a before, to interleave with
//! the after on one bench build).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cdc_audit::config::rules::Rules;
use cdc_audit::demo::{self, Generator, Record};
use cdc_audit::transform::{transform_together, Schemas, SHARING};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

/// The service's default batch size: the ceiling writes batches of the same size.
const BATCH: usize = 2000;

/// tansu answers a fetch only after `fetch.wait.max.ms` (librdkafka's default is 500 ms) even when
/// it has data; this is the consumers' setting here, the plain one's and the service's alike.
const TANSU_FETCH_WAIT_MS: &str = "10";

#[derive(Parser)]
struct Args {
    /// Change events in the backlog.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Partitions of each of the backlog's three topics.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Partitions of each of the latency phase's three topics.
    #[arg(long, default_value_t = 4)]
    latency_partitions: i32,
    /// Events with the JSON converter's schema envelope (about 2.5 KB; without, about 600 bytes).
    #[arg(long)]
    schemas: bool,
    /// The service's CDC_AUDIT_BATCH_LINGER_MS.
    #[arg(long, default_value_t = 100)]
    linger_ms: u64,
    /// The service's CDC_AUDIT_BATCH_IDLE_LINGER_MS; as long as --linger-ms, batches wait for the
    /// linger even when their writer is idle (the behaviour before it existed).
    #[arg(long, default_value_t = 20)]
    idle_linger_ms: u64,
    /// The service's CDC_AUDIT_CHANNEL_CAPACITY, if not its default.
    #[arg(long)]
    channel_capacity: Option<usize>,
    /// The service's CDC_AUDIT_BATCH_SIZE, if not its default.
    #[arg(long)]
    batch_size: Option<usize>,
    /// The service's CDC_AUDIT_BATCH_BYTES, if not its default.
    #[arg(long)]
    batch_bytes: Option<usize>,
    /// The service's writers, and the ceiling's connections.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// While one instance drains the backlog, its read API is asked in a loop (a record's
    /// history, a page of changes, a record as of now, the tables), to show what it costs them.
    #[arg(long)]
    api_load: bool,
    /// The latency phase's rate, as a share of the measured drain rate.
    #[arg(long, default_value_t = 0.5)]
    latency_share: f64,
    /// Seconds of paced traffic in the latency phase.
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Messages per record batch in the backlog. By default, batches of up to 16 KB, as Debezium's
    /// producer (Kafka Connect's defaults) makes them from a backlog; one message a batch if the
    /// broker has tansu 0.6's offset bug (see `fetches_inside_a_batch`). More than one with that
    /// bug: a seek into a batch skips the rest of it, and the exactly-once check says so.
    #[arg(long)]
    producer_batch: Option<usize>,
    /// tansu's storage engine: in memory, or e.g. `sqlite://tansu.db` (in the temporary
    /// directory) for a tansu built with
    /// `--features libsql`, which stores records one by one and fetches from any offset.
    #[arg(long, default_value = "memory://tansu/")]
    storage: String,
    /// Both consumers' `max.partition.fetch.bytes`, in KiB (librdkafka's default: 1024).
    #[arg(long, default_value_t = 1024)]
    fetch_kb: usize,
    /// Leave out the two-instance phase.
    #[arg(long)]
    one_instance: bool,
    /// Last, Quix Streams' PostgreSQLSink drains the same backlog on the same broker with the
    /// same `fetch.wait.max.ms` (`benches/quix_sink.py`; needs
    /// `pip install 'quixstreams[postgresql]'`).
    #[arg(long)]
    quix: bool,
    /// Every table's events on its generator's first topic: with `--partitions 1`, one hot
    /// partition (the other topics stay empty).
    #[arg(long)]
    one_topic: bool,
    /// Keep the databases and the broker's data for a look afterwards.
    #[arg(long)]
    keep: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A child process killed when dropped, so a failed run leaves nothing behind; for the service,
/// also its metrics address.
struct Process {
    child: Child,
    metrics: Option<String>,
}

/// The service's /metrics at `addr`.
fn scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of a series without labels (`name`, e.g. a counter or a histogram's `_sum`) in a
/// /metrics body.
fn series(body: &str, name: &str) -> Option<f64> {
    let key = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&key))?
        .trim()
        .parse()
        .ok()
}

impl Process {
    fn scrape(&self) -> Option<String> {
        scrape(self.metrics.as_ref()?)
    }

    /// A counter without labels on the service's /metrics.
    fn counter(&self, name: &str) -> Option<f64> {
        series(&self.scrape()?, name)
    }

    /// Sum and count of a histogram on the service's /metrics.
    fn histogram(&self, name: &str) -> Option<(f64, f64)> {
        let body = self.scrape()?;
        let value = |suffix: &str| series(&body, &format!("{name}_{suffix}"));
        Some((value("sum")?, value("count")?))
    }

    /// A histogram's cumulative buckets on the service's /metrics: (upper bound, count).
    fn buckets(&self, name: &str) -> Option<Vec<(f64, f64)>> {
        let body = self.scrape()?;
        let prefix = format!("{name}_bucket{{le=\"");
        let buckets: Vec<(f64, f64)> = body
            .lines()
            .filter_map(|l| {
                let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        (!buckets.is_empty()).then_some(buckets)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGTERM, then wait.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The q-quantile of what a histogram observed between two scrapes, as Prometheus'
/// `histogram_quantile` estimates it: linear within the bucket that holds it.
fn histogram_quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .zip(before)
        .map(|(&(le, a), &(_, b))| (le, a - b))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let share = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    None
}

fn log_file(name: &str) -> std::fs::File {
    std::fs::File::create(std::env::temp_dir().join(name)).unwrap()
}

/// Starts tansu with `storage` on a free port; returns it and its bootstrap address.
fn start_broker(binary: &PathBuf, storage: &str) -> (Process, String) {
    let (child, address) = common::start_tansu(binary, storage, "cdc-audit-bench-tansu.log");
    let broker = Process {
        child,
        metrics: None,
    };
    (broker, address)
}

/// Per partition, one past the highest offset the broker acknowledged: the position a group
/// reaches once it has written everything (tansu's ListOffsets answers lower than this); and, if
/// `times` is set, when each message was acknowledged.
///
/// The delivery callback runs on the paced producer's thread between sends, so it neither
/// allocates per message nor grows a map: a growing map rehashes everything at once (at 0.9 and
/// 1.8 million acknowledgements), the sends stop meanwhile, and the stall showed up as latency.
struct Acked {
    ends: Mutex<HashMap<String, HashMap<i32, i64>>>,
    times: Option<Mutex<AckLog>>,
}

/// Acknowledgements in the order they came: the topic (an index into `topics`), partition,
/// offset, and when (unix ms).
#[derive(Default)]
struct AckLog {
    topics: Vec<String>,
    acks: Vec<(usize, i32, i64, i64)>,
}

/// When each message was acknowledged, unix ms, by topic, partition and offset.
type AckTimes = HashMap<(String, i32, i64), i64>;

impl AckLog {
    fn into_times(self) -> AckTimes {
        let topics = self.topics;
        self.acks
            .into_iter()
            .map(|(t, p, o, at)| ((topics[t].clone(), p, o), at))
            .collect()
    }
}

impl ClientContext for Acked {}

impl ProducerContext for Acked {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let mut ends = self.ends.lock().unwrap();
                if !ends.contains_key(m.topic()) {
                    ends.insert(m.topic().to_string(), HashMap::new());
                }
                if let Some(partitions) = ends.get_mut(m.topic()) {
                    let end = partitions.entry(m.partition()).or_default();
                    *end = (*end).max(m.offset() + 1);
                }
                if let Some(times) = &self.times {
                    let mut log = times.lock().unwrap();
                    let topic = match log.topics.iter().position(|t| t == m.topic()) {
                        Some(i) => i,
                        None => {
                            log.topics.push(m.topic().to_string());
                            log.topics.len() - 1
                        }
                    };
                    log.acks.push((topic, m.partition(), m.offset(), now_ms()));
                }
            }
            Err((e, _)) => panic!("delivery failed: {e}"),
        }
    }
}

impl Acked {
    fn total(&self) -> i64 {
        self.ends
            .lock()
            .unwrap()
            .values()
            .flat_map(|p| p.values())
            .sum()
    }
}

/// Kafka Connect's producer default `batch.size`: Debezium's record batches hold up to 16 KB.
const CONNECT_BATCH_BYTES: usize = 16_384;

/// A producer of record batches of up to `messages` messages and `bytes` bytes; with `times`
/// (the number of messages it will send), keep each acknowledgement's time.
fn producer(
    bootstrap: &str,
    messages: usize,
    bytes: usize,
    times: Option<usize>,
) -> BaseProducer<Acked> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.num.messages", messages.to_string())
        .set("batch.size", bytes.to_string())
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", "120000")
        .create_with_context(Acked {
            ends: Mutex::default(),
            times: times.map(|n| {
                Mutex::new(AckLog {
                    topics: Vec::new(),
                    acks: Vec::with_capacity(n),
                })
            }),
        })
        .unwrap()
}

/// Whether a fetch from an offset inside a record batch returns that batch, as Kafka's does. tansu
/// 0.6's in-memory storage returns only the batches after it, so the seek of a rebalance or a
/// resume after a pause skips the rest of a batch (the service records the hole in audit_gaps).
fn fetches_inside_a_batch(bootstrap: &str) -> bool {
    let topic = "cdc-audit-bench-probe";
    common::create_topics(bootstrap, &[topic.to_string()], 1, &[]);
    let probe = producer(bootstrap, 10, 1_000_000, None);
    for key in ["a", "b"] {
        probe
            .send(BaseRecord::<str, str>::to(topic).key(key).payload(key))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    probe.flush(Duration::from_secs(30)).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "cdc-audit-bench-probe")
        .set("fetch.wait.max.ms", TANSU_FETCH_WAIT_MS)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(1))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            return m.offset() == 1;
        }
    }
    false
}

/// How fast the broker alone delivers the backlog: a plain consumer reading every partition from
/// the start, touching each payload, writing nothing.
fn broker_rate(bootstrap: &str, topics: &[String], args: &Args, messages: i64) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "cdc-audit-bench-plain")
        .set("fetch.wait.max.ms", TANSU_FETCH_WAIT_MS)
        .set(
            "max.partition.fetch.bytes",
            (args.fetch_kb * 1024).to_string(),
        )
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        for p in 0..args.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let (started, mut seen, mut bytes) = (Instant::now(), 0, 0);
    while seen < messages && started.elapsed() < Duration::from_secs(3600) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            seen += 1;
            bytes += m.payload().map_or(0, <[u8]>::len);
        }
    }
    std::hint::black_box(bytes);
    seen as f64 / started.elapsed().as_secs_f64()
}

/// CPU seconds of one thread transforming every message of the backlog, as many together as
/// the service's stage does and their outcomes dropped at once: the transform's share of the
/// floor.
fn transform_alone(backlog: &[Record]) -> f64 {
    let records: Vec<&Record> = backlog.iter().collect();
    let messages = common::messages("bench.transform", 0, &records);
    let rules = Rules::default();
    let started = common::thread_cpu_seconds().unwrap_or(0.0);
    for chunk in messages.chunks(SHARING) {
        drop(std::hint::black_box(transform_together(
            chunk,
            &rules,
            &Schemas::default(),
        )));
    }
    common::thread_cpu_seconds().unwrap_or(0.0) - started
}

fn committed(client: &mut postgres::Client, group: &str) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM audit_positions WHERE consumer_group = $1",
            &[&group],
        )
        .map_or(0, |r| r.get(0))
}

/// The read API's token in the `--api-load` phase.
const API_TOKEN: &str = "bench-token-0123456789";

#[allow(clippy::too_many_arguments)]
fn service(
    bootstrap: &str,
    topics: &[String],
    url: &str,
    group: &str,
    args: &Args,
    n: usize,
    api: Option<&str>,
) -> Process {
    let http = format!("127.0.0.1:{}", common::free_port());
    // `CDC_AUDIT_BIN` runs another build of the service (a before, interleaved with the after).
    let binary =
        std::env::var_os("CDC_AUDIT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_cdc-audit").into());
    let mut command = Command::new(binary);
    command
        .arg("run")
        .env_clear()
        .env("CDC_AUDIT_BOOTSTRAP_SERVERS", bootstrap)
        .env("CDC_AUDIT_TOPICS", topics.join(","))
        .env("CDC_AUDIT_DATABASE_URL", url)
        .env("CDC_AUDIT_GROUP_ID", group)
        .env("CDC_AUDIT_WRITERS", args.writers.to_string())
        .env("CDC_AUDIT_HTTP_ADDR", &http)
        // tansu completes a group join only after the poll interval: keep it short.
        .env("CDC_AUDIT_KAFKA_MAX_POLL_INTERVAL_MS", "6000")
        .env("CDC_AUDIT_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env("CDC_AUDIT_KAFKA_FETCH_WAIT_MAX_MS", TANSU_FETCH_WAIT_MS)
        .env(
            "CDC_AUDIT_KAFKA_MAX_PARTITION_FETCH_BYTES",
            (args.fetch_kb * 1024).to_string(),
        )
        .env("CDC_AUDIT_BATCH_LINGER_MS", args.linger_ms.to_string())
        .env(
            "CDC_AUDIT_BATCH_IDLE_LINGER_MS",
            args.idle_linger_ms.to_string(),
        )
        .env(
            "RUST_LOG",
            std::env::var("CDC_AUDIT_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(log_file(&format!("cdc-audit-bench-{group}-{n}.log")));
    if let Some(capacity) = args.channel_capacity {
        command.env("CDC_AUDIT_CHANNEL_CAPACITY", capacity.to_string());
    }
    if let Some(size) = args.batch_size {
        command.env("CDC_AUDIT_BATCH_SIZE", size.to_string());
    }
    if let Some(bytes) = args.batch_bytes {
        command.env("CDC_AUDIT_BATCH_BYTES", bytes.to_string());
    }
    if let Some(api) = api {
        command
            .env("CDC_AUDIT_API_ADDR", api)
            .env("CDC_AUDIT_API_TOKEN", API_TOKEN);
    }
    // The service's own settings, glibc's (GLIBC_TUNABLES: the allocator's thresholds) and
    // rayon's (RAYON_NUM_THREADS: the transform's threads).
    command.envs(std::env::vars().filter(|(k, _)| {
        (k.starts_with("CDC_AUDIT_") && k != "CDC_AUDIT_BENCH_LOG" && k != "CDC_AUDIT_BIN")
            || k == "GLIBC_TUNABLES"
            || k == "RAYON_NUM_THREADS"
    }));
    Process {
        child: command.spawn().unwrap(),
        metrics: Some(http),
    }
}

/// Flushes PostgreSQL's dirty buffers, so a measured phase does not pay for the one before.
fn checkpoint(admin: &mut postgres::Client) {
    if let Err(e) = admin.batch_execute("CHECKPOINT") {
        eprintln!("CHECKPOINT: {e} (needs superuser or pg_checkpoint); measuring without");
    }
}

/// Busy and total CPU ticks of the whole machine, from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Figures of one drain: instances started on a backlog, until their group reached `target`.
struct Drain {
    events: usize,
    startup: f64,
    steady: f64,
    peak_rss_mb: Vec<f64>,
    cpu_s: Vec<f64>,
    /// The first instance's CPU seconds by thread name, at the end of the drain.
    threads: BTreeMap<String, f64>,
    machine_busy: f64,
    /// Committed batches, their mean size in messages and mean write time in ms.
    batches: f64,
    batch_messages: f64,
    write_ms: f64,
    /// Batches written while their partition's previous batch committed (`None` before the
    /// service counted them).
    behind: Option<f64>,
    /// Writers across the instances.
    writers: usize,
    /// Seconds the writers waited from the first commit to the last, by what for: a batch,
    /// their partition's previous batch, the lock on its position (`None` before the service
    /// counted them); and the batches written behind the previous one and rolled back.
    waits: Option<([f64; 3], f64)>,
}

impl Drain {
    fn rate(&self) -> f64 {
        self.events as f64 / self.steady
    }

    fn batches_line(&self) -> String {
        format!(
            "{:.0} batches of {:.0} messages on average{}, {:.1} ms each to write and commit; \
             writers busy {:.0}% of the drain",
            self.batches,
            self.batch_messages,
            self.behind.map_or(String::new(), |b| format!(
                " ({b:.0} written behind their partition's previous one)"
            )),
            self.write_ms,
            self.batches * self.write_ms / 1000.0 / (self.writers as f64 * self.steady) * 100.0,
        ) + &self.waits.map_or(String::new(), |(waits, undone)| {
            let share = |w: f64| w / (self.writers as f64 * self.steady) * 100.0;
            format!(
                "; writers waiting {:.0}% for a batch, {:.0}% for their partition's previous \
                 one, {:.0}% on its position's lock; {undone:.0} written behind and rolled back",
                share(waits[0]),
                share(waits[1]),
                share(waits[2]),
            )
        })
    }
}

/// Waits until the group's positions reach `target`, sampling every 100 ms.
fn drain(
    client: &mut postgres::Client,
    group: &str,
    target: i64,
    events: usize,
    instances: &[&Process],
    writers_each: usize,
) -> Drain {
    let started = Instant::now();
    let ticks = machine_ticks();
    let mut first = None;
    let waits = || -> Option<([f64; 3], f64)> {
        let mut sum = ([0.0; 3], 0.0);
        for p in instances {
            for (i, on) in ["batch", "previous", "position"].into_iter().enumerate() {
                let name = format!("cdc_audit_writer_wait_seconds_total{{on=\"{on}\"}}");
                sum.0[i] += p.counter(&name)?;
            }
            sum.1 += p.counter("cdc_audit_batches_behind_undone_total")?;
        }
        Some(sum)
    };
    let mut waits_before = None;
    loop {
        let done = committed(client, group);
        if done > 0 && first.is_none() {
            first = Some(Instant::now());
            waits_before = waits();
        }
        if done >= target {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "drain stalled at {done} of {target}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let ended = Instant::now();
    let after = machine_ticks();
    let waits = waits_before.zip(waits()).map(|(b, a)| {
        let waited = [0, 1, 2].map(|i| a.0[i] - b.0[i]);
        (waited, a.1 - b.1)
    });
    let first = first.unwrap_or(started);
    let sum = |name: &str| {
        instances
            .iter()
            .filter_map(|p| p.histogram(name))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let (messages, batches) = sum("cdc_audit_batch_messages");
    let (write_s, writes) = sum("cdc_audit_batch_write_seconds");
    let behind = instances
        .iter()
        .map(|p| p.counter("cdc_audit_batches_behind_total"))
        .sum();
    Drain {
        behind,
        waits,
        writers: writers_each * instances.len(),
        batches,
        batch_messages: messages / batches.max(1.0),
        write_ms: write_s / writes.max(1.0) * 1000.0,
        events,
        startup: (first - started).as_secs_f64(),
        steady: (ended - first).as_secs_f64(),
        peak_rss_mb: instances
            .iter()
            .map(|p| common::peak_rss_kib(p.pid()).unwrap_or(0) as f64 / 1024.0)
            .collect(),
        cpu_s: instances
            .iter()
            .map(|p| common::cpu_seconds(p.pid()).unwrap_or(0.0))
            .collect(),
        threads: instances
            .first()
            .map(|p| common::cpu_seconds_by_thread(p.pid()))
            .unwrap_or_default(),
        machine_busy: (after.0 - ticks.0) as f64 / (after.1 - ticks.1).max(1) as f64,
    }
}

/// Quix Streams' PostgreSQLSink draining the backlog into database `name` at `url`: its rate
/// from its first row to the last change's, its CPU and memory, against cdc-audit's `rate`.
fn quix(
    bootstrap: &str,
    topics: &[String],
    url: &str,
    name: &str,
    changes: usize,
    rate: f64,
) -> String {
    let config: postgres::Config = url.parse().expect("the database URL");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/quix_sink.py");
    let mut command = Command::new("python3");
    command.args([
        script,
        "--bootstrap",
        bootstrap,
        "--topics",
        &topics.join(","),
    ]);
    command.args([
        "--group",
        "bench-quix",
        "--host",
        &host,
        "--port",
        &port.to_string(),
    ]);
    command.args([
        "--dbname",
        name,
        "--user",
        config.get_user().unwrap_or("postgres"),
    ]);
    command.args(["--fetch-wait-ms", TANSU_FETCH_WAIT_MS]);
    if let Some(password) = config.get_password() {
        command.args(["--password", &String::from_utf8_lossy(password)]);
    }
    let log = std::env::temp_dir().join("quix_sink.log");
    let child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the Quix log"))
        .spawn()
        .expect("python3");
    let mut quix = Process {
        child,
        metrics: None,
    };
    let mut client = cdc_audit::sink::connect(url, None).expect("the Quix database");
    let mut count = || {
        client
            .query_one("SELECT count(*) FROM quix_audit", &[])
            .map_or(0, |r| r.get::<_, i64>(0) as usize)
    };
    let started = Instant::now();
    let mut first = None;
    loop {
        let n = count();
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= changes {
            break;
        }
        if let Ok(Some(status)) = quix.child.try_wait() {
            return format!(
                "\n## Quix Streams' PostgreSQLSink\n\nstopped ({status}) after {n} of {changes} \
                 rows; its log: {}",
                log.display()
            );
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return format!(
                "\n## Quix Streams' PostgreSQLSink\n\nstalled at {n} of {changes} rows"
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    let steady = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let pid = quix.pid();
    let (cpu, peak) = (
        common::cpu_seconds(pid).unwrap_or(0.0),
        common::peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
    );
    let quix_rate = changes as f64 / steady.max(1e-9);
    format!(
        "\n## Quix Streams' PostgreSQLSink on the same broker\n\n\
         {quix_rate:.0} events/s (from its first row; {:.1} s before it), at least once, a flat row \
         of text columns without indexes; peak resident memory {peak:.0} MB; CPU {:.1} µs per \
         event (start included)\ncdc-audit drained {:.2} times as fast",
        first.map_or(0.0, |f| (f - started).as_secs_f64()),
        cpu / changes as f64 * 1e6,
        rate / quix_rate,
    )
}

/// Every generated change once: as many rows as changes, each source LSN of each generator
/// (topic prefix) once, no rejections. The report's line, and whether it held.
fn exactly_once(client: &mut postgres::Client, changes: usize) -> (String, bool) {
    match check_exactly_once(client, changes) {
        Ok(fine) => (format!("exactly once: {fine}"), true),
        Err(e) => (format!("exactly once: NO: {e}"), false),
    }
}

fn check_exactly_once(client: &mut postgres::Client, changes: usize) -> Result<String, String> {
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT (split_part(kafka_topic, '.', 1), lsn)), \
                    (SELECT count(*) FROM audit_rejections), \
                    (SELECT coalesce(sum(end_offset - first_offset), 0)::bigint FROM audit_gaps) \
             FROM audit_logging",
            &[],
        )
        .map_err(|e| e.to_string())?;
    let (rows, lsns, rejected, missing): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if rows == changes as i64 && lsns == rows && rejected == 0 {
        Ok(format!("{rows} rows for {changes} changes, each once"))
    } else {
        // Offsets tansu skipped (see `fetches_inside_a_batch`) are recorded by
        // the service in audit_gaps: say so, the run still fails.
        Err(format!(
            "{rows} rows, {lsns} distinct LSNs, {rejected} rejections for {changes} changes; \
             {missing} offsets the broker did not deliver, recorded in audit_gaps"
        ))
    }
}

/// Per partition, when its committed position was seen to move, as (next_offset, unix ms).
type Timeline = HashMap<(String, i32), Vec<(i64, i64)>>;

fn watch_positions(
    url: String,
    group: String,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Timeline> {
    thread::spawn(move || {
        let mut client = cdc_audit::sink::connect(&url, None).unwrap();
        let statement = client
            .prepare("SELECT topic, partition, next_offset FROM audit_positions WHERE consumer_group = $1")
            .unwrap();
        let mut timeline = Timeline::new();
        while !stop.load(Ordering::Relaxed) {
            let rows = client.query(&statement, &[&group]).unwrap();
            let seen = now_ms();
            for r in rows {
                let samples = timeline.entry((r.get(0), r.get(1))).or_default();
                let next: i64 = r.get(2);
                if samples.last().is_none_or(|&(last, _)| last < next) {
                    samples.push((next, seen));
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        timeline
    })
}

/// The service's writers each second while `stop` is unset, from its /metrics: [Unix ms, rows
/// committed, batches committed, seconds its writers spent in batches' transactions] since it
/// started.
fn watch_writers(
    metrics: Option<String>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<[f64; 6]>> {
    thread::spawn(move || {
        let mut samples = Vec::new();
        let Some(addr) = metrics else {
            return samples;
        };
        while !stop.load(Ordering::Relaxed) {
            let sample = scrape(&addr).and_then(|body| {
                let (dirty, written) = kernel_writes().unwrap_or((f64::NAN, f64::NAN));
                Some([
                    now_ms() as f64,
                    series(&body, "cdc_audit_rows_written_total")?,
                    series(&body, "cdc_audit_batch_write_seconds_count")?,
                    series(&body, "cdc_audit_batch_write_seconds_sum")?,
                    dirty,
                    written,
                ])
            });
            samples.extend(sample);
            thread::sleep(Duration::from_secs(1));
        }
        samples
    })
}

/// The machine's dirty pages waiting to be written (Dirty and Writeback of `/proc/meminfo`),
/// and what it has written to its disks since it booted (`pgpgout` of `/proc/vmstat`), in MB.
fn kernel_writes() -> Option<(f64, f64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |name: &str| -> Option<f64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let dirty = kb("Dirty:")? + kb("Writeback:")?;
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    let written: f64 = vmstat
        .lines()
        .find_map(|l| l.strip_prefix("pgpgout "))?
        .trim()
        .parse()
        .ok()?;
    Some((dirty / 1024.0, written / 1024.0))
}

/// What PostgreSQL did besides taking rows while `stop` was unset, as spans of Unix
/// milliseconds, polled every 20 ms.
#[derive(Default)]
struct PgWork {
    /// A checkpoint's start shows as a count of `pg_stat_bgwriter` going up (it reports while
    /// the checkpoint writes), its end as `pg_control_checkpoint()` naming a newer one; one still
    /// running at the stop ends then.
    checkpoints: Vec<(i64, i64)>,
    /// An autovacuum worker in `pg_stat_activity`.
    autovacuum: Vec<(i64, i64)>,
}

impl PgWork {
    /// What of it ran between `from` and `to`: `c` a checkpoint, `v` an autovacuum.
    fn marks(&self, from: i64, to: i64) -> String {
        let ran = |spans: &[(i64, i64)]| spans.iter().any(|&(a, b)| a <= to && b >= from);
        let mut marks = String::new();
        if ran(&self.checkpoints) {
            marks.push('c');
        }
        if ran(&self.autovacuum) {
            marks.push('v');
        }
        marks
    }
}

fn watch_postgres(admin_url: String, stop: Arc<AtomicBool>) -> thread::JoinHandle<PgWork> {
    thread::spawn(move || {
        let mut work = PgWork::default();
        let Ok(mut client) = cdc_audit::sink::connect(&admin_url, None) else {
            return work;
        };
        let mut read = || {
            client
                .query_one(
                    "SELECT (SELECT checkpoints_req + checkpoints_timed FROM pg_stat_bgwriter), \
                            (SELECT (extract(epoch FROM checkpoint_time) * 1000)::bigint \
                             FROM pg_control_checkpoint()), \
                            (SELECT count(*) FROM pg_stat_activity \
                             WHERE backend_type = 'autovacuum worker')",
                    &[],
                )
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)))
                .ok()
        };
        let Some((mut count, mut last, _)) = read() else {
            eprintln!("pg_control_checkpoint() not readable: checkpoints are not timed");
            return work;
        };
        let (mut checkpoint, mut vacuum) = (None, None);
        while !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(20));
            let Some((c, l, workers)) = read() else {
                continue;
            };
            let seen = now_ms();
            if l > last {
                // One not seen running (it began and ended between two polls) started at its
                // own time, which pg_control keeps to the second.
                work.checkpoints
                    .push((checkpoint.take().unwrap_or(l), seen));
            } else if c > count {
                checkpoint.get_or_insert(seen);
            }
            (count, last) = (c, l);
            match (workers > 0, vacuum) {
                (true, None) => vacuum = Some(seen),
                (false, Some(from)) => {
                    work.autovacuum.push((from, seen));
                    vacuum = None;
                }
                _ => {}
            }
        }
        let now = now_ms();
        work.checkpoints.extend(checkpoint.map(|from| (from, now)));
        work.autovacuum.extend(vacuum.map(|from| (from, now)));
        work
    })
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = Args::parse();
    let Some(tansu) = common::tansu_binary() else {
        eprintln!(
            "end_to_end needs the tansu broker: cargo install tansu --features dynostore (or set TANSU)"
        );
        std::process::exit(2);
    };
    let mut report = String::new();
    let mut say = |line: String| {
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
    };
    let generator = |prefix: &str, seed: u64| {
        let generator = Generator::new(prefix, seed);
        if args.schemas {
            generator
        } else {
            generator.without_schemas()
        }
    };

    // The backlog's topics, and the latency phase's own (see `producer`).
    let mut backlog_generator = generator("bench", 11);
    let mut live_generator = generator("live", 12);
    let backlog_topics = backlog_generator.topics();
    let all_topics: Vec<String> = backlog_topics
        .iter()
        .cloned()
        .chain(live_generator.topics())
        .collect();
    let mut backlog = Vec::new();
    let one_topic = |mut records: Vec<Record>, topics: &[String]| {
        if args.one_topic {
            for r in &mut records {
                r.topic.clone_from(&topics[0]);
            }
        }
        records
    };
    while backlog_generator.changes < args.events {
        backlog.extend(one_topic(backlog_generator.next_records(), &backlog_topics));
    }
    let backlog_changes = backlog_generator.changes;
    let bytes: usize = backlog
        .iter()
        .map(|r| r.value.as_ref().map_or(0, String::len) + r.key.as_ref().map_or(0, String::len))
        .sum();
    say(format!(
        "# cdc-audit end to end, {}\n\n{} change events ({} messages with tombstones, {:.0} MB, {:.0} bytes each) \
         in {} topics of {} partitions{}; {} writers; {} cores",
        if args.schemas { "events with the schema envelope" } else { "events without schemas" },
        backlog_changes,
        backlog.len(),
        bytes as f64 / 1e6,
        bytes as f64 / backlog.len() as f64,
        backlog_topics.len(),
        args.partitions,
        if args.one_topic { ", every event on the first" } else { "" },
        args.writers,
        thread::available_parallelism().map_or(0, |n| n.get()),
    ));

    let server = demo::server_url();
    let mut admin = cdc_audit::sink::connect(&server, None).expect("PostgreSQL");
    let db = |phase: &str| format!("cdc_audit_bench_e2e_{phase}_{}", std::process::id());

    // 1. The ceiling: the same rows by binary COPY, no Kafka, as many connections as writers.
    // PostgreSQL's rate swings by half from one run to the next here (checkpoints, WAL), so it
    // is measured again after the drain and the higher of the two is the ceiling: the ratio
    // errs low, not high. Each measured phase starts after a checkpoint.
    // Also the bench's own CPU for the COPY, per change: with the transform's and the plain
    // consumer's below, what the service's three stages cost each on its own (the floor).
    let per_change = |seconds: f64| seconds / backlog_changes as f64 * 1e6;
    let measure_ceiling = |admin: &mut postgres::Client| {
        checkpoint(admin);
        let url = common::fresh_database(admin, &server, &db("ceiling"));
        let streams: Vec<_> = (0..args.writers)
            .map(|w| {
                let records: Vec<&Record> = backlog.iter().skip(w).step_by(args.writers).collect();
                common::transformed_batches(&format!("stream{w}"), 0, &records, BATCH)
            })
            .collect();
        let cpu = || common::cpu_seconds(std::process::id()).unwrap_or(0.0);
        let started = cpu();
        let rate = common::write_streams(&url, streams, false);
        let copy_cpu = per_change(cpu() - started);
        let _ = admin.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db("ceiling")));
        (rate, copy_cpu)
    };
    let (ceiling_before, copy_before) = measure_ceiling(&mut admin);
    let transform_cpu = per_change(transform_alone(&backlog));
    say(format!(
        "\nceiling: binary COPY of the same rows, {} connections: {ceiling_before:.0} rows/s",
        args.writers
    ));

    // 2. The backlog, produced before the service starts, in batches as Debezium makes them,
    // unless the broker cannot fetch from inside a batch: then one message a batch. tansu's
    // ListOffsets end is also the last batch's base offset + 1, hence positions are counted from
    // delivery reports.
    let (broker, bootstrap) = start_broker(&tansu, &args.storage);
    let whole_batches = fetches_inside_a_batch(&bootstrap);
    let (batch_messages, batch_bytes, batching) = match args.producer_batch {
        Some(n) => (n, 1_000_000, format!("up to {n} messages a record batch")),
        None if whole_batches => (
            10_000,
            CONNECT_BATCH_BYTES,
            "record batches of up to 16 KB, as Kafka Connect's producer makes them".into(),
        ),
        None => (
            1,
            1_000_000,
            "one message a record batch: this tansu skips the rest of a batch fetched from inside it"
                .into(),
        ),
    };
    common::create_topics(&bootstrap, &backlog_topics, args.partitions, &[]);
    common::create_topics(
        &bootstrap,
        &live_generator.topics(),
        args.latency_partitions,
        &[],
    );
    let producing = Instant::now();
    let backlog_producer = producer(&bootstrap, batch_messages, batch_bytes, None);
    for r in &backlog {
        demo::send(&backlog_producer, r).unwrap();
    }
    backlog_producer.flush(Duration::from_secs(3600)).unwrap();
    let produce_s = producing.elapsed().as_secs_f64();
    let backlog_end = backlog_producer.context().total();
    say(format!(
        "produced to tansu in {produce_s:.1} s ({:.0} messages/s), {batching}",
        backlog.len() as f64 / produce_s
    ));
    let consumer_cpu = common::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let plain = broker_rate(&bootstrap, &backlog_topics, &args, backlog_end);
    let consumer_cpu = (common::cpu_seconds(std::process::id()).unwrap_or(0.0) - consumer_cpu)
        / backlog_changes as f64
        * 1e6;
    say(format!(
        "tansu to a plain consumer, no database: {plain:.0} messages/s, {consumer_cpu:.1} µs CPU \
         per change"
    ));

    let url_one = common::fresh_database(&mut admin, &server, &db("one"));
    let mut client = cdc_audit::sink::connect(&url_one, None).unwrap();
    checkpoint(&mut admin);
    let broker_cpu = common::cpu_seconds(broker.pid()).unwrap_or(0.0);
    let api = args
        .api_load
        .then(|| format!("127.0.0.1:{}", common::free_port()));
    let one = service(
        &bootstrap,
        &all_topics,
        &url_one,
        "bench-one",
        &args,
        1,
        api.as_deref(),
    );
    let loader = api.clone().map(ApiLoad::start);
    let d = drain(
        &mut client,
        "bench-one",
        backlog_end,
        backlog_changes,
        &[&one],
        args.writers,
    );
    let broker_cpu = common::cpu_seconds(broker.pid()).unwrap_or(0.0) - broker_cpu;
    let api_report = loader.map(ApiLoad::stop);
    let (ceiling_after, copy_after) = measure_ceiling(&mut admin);
    drop(backlog);
    let ceiling = ceiling_before.max(ceiling_after);
    let floor = (consumer_cpu, transform_cpu, copy_before.min(copy_after));
    let floor_sum = floor.0 + floor.1 + floor.2;
    let service_cpu = d.cpu_s[0] / d.events as f64 * 1e6;
    // Beside the stages alone: the poll thread and librdkafka's against the plain consumer, the
    // transform's (the stage and rayon) against one thread's, the writers' against the COPY.
    let mut threads: Vec<(&String, &f64)> = d.threads.iter().collect();
    threads.sort_by(|a, b| b.1.total_cmp(a.1));
    let by_thread = threads
        .iter()
        .map(|(name, s)| format!("{name} {:.2} µs", *s / d.events as f64 * 1e6))
        .collect::<Vec<_>>()
        .join(", ");
    say(format!(
        "\n## One instance draining the backlog\n\n\
         ceiling measured again, the instance idle: {ceiling_after:.0} rows/s; the higher, \
         {ceiling:.0}, is the ceiling\n\
         {:.0} events/s, {:.1} MB/s, ratio to the ceiling {:.2} \
         (from the first commit; the group join took {:.1} s before it)\n\
         peak resident memory {:.0} MB; CPU {service_cpu:.1} µs per event ({:.1} s in all); \
         tansu CPU {:.1} s; machine busy {:.0}%\n{}\n\
         the stages alone, CPU per change: consuming {:.1} µs (the plain consumer), the \
         transform {:.1} µs (one thread), COPY {:.1} µs (the ceiling's client): {floor_sum:.1} µs \
         in all; the service spent {:.1} µs more\n\
         the service's CPU per change by thread (all its life): {}",
        d.rate(),
        bytes as f64 / d.steady / 1e6,
        d.rate() / ceiling,
        d.startup,
        d.peak_rss_mb[0],
        d.cpu_s[0],
        broker_cpu,
        d.machine_busy * 100.0,
        d.batches_line(),
        floor.0,
        floor.1,
        floor.2,
        service_cpu - floor_sum,
        by_thread,
    ));
    if let Some(report) = api_report {
        say(report);
    }

    // 3. Latency at a share of the drain rate (half by default), the instance caught up, on the
    // live topics with ordinary producer batching (no seek happens while the service keeps up).
    let rate = d.rate() * args.latency_share;
    let mut paced = Vec::new();
    while live_generator.changes < (rate * args.latency_seconds as f64) as usize {
        let topics = live_generator.topics();
        paced.extend(one_topic(live_generator.next_records(), &topics));
    }
    let live_producer = producer(&bootstrap, 10_000, CONNECT_BATCH_BYTES, Some(paced.len()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_positions(url_one.clone(), "bench-one".into(), stop.clone());
    let postgres_watcher = watch_postgres(server.clone(), stop.clone());
    let writers_watcher = watch_writers(one.metrics.clone(), stop.clone());
    let held_metric = "cdc_audit_batch_held_seconds";
    let held_before = one.buckets(held_metric);
    let write_metric = "cdc_audit_batch_write_seconds";
    let write_before = one.buckets(write_metric);
    // pg_stat_bgwriter has them up to PostgreSQL 16 (pg_stat_checkpointer from 17).
    let checkpoints = |admin: &mut postgres::Client| {
        admin
            .query_one(
                "SELECT checkpoints_req, checkpoints_timed FROM pg_stat_bgwriter",
                &[],
            )
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
            .ok()
    };
    let checkpoints_before = checkpoints(&mut admin);
    let phase_start = now_ms();
    let cpu_before = [one.pid(), broker.pid(), std::process::id()].map(common::cpu_seconds);
    let ticks = machine_ticks();
    // On stderr, for whoever profiles the phase (the report goes to stdout).
    eprintln!(
        "latency phase: sending {} events at {rate:.0} events/s",
        live_generator.changes
    );
    let started = Instant::now();
    // Paced by message; a tombstone counts as a message but not as a change event.
    let message_rate = rate * paced.len() as f64 / live_generator.changes as f64;
    // Sent in bursts of a millisecond's worth, not a sleep per message (25 µs apart at
    // 40 000/s, shorter than a sleep's own granularity).
    for (i, r) in paced.iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / message_rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            if wait >= Duration::from_millis(1) {
                thread::sleep(wait);
            }
        }
        demo::send(&live_producer, r).unwrap();
    }
    let send_s = started.elapsed().as_secs_f64();
    live_producer.flush(Duration::from_secs(60)).unwrap();
    let all_end = backlog_end + live_producer.context().total();
    let waiting = Instant::now();
    while committed(&mut client, "bench-one") < all_end
        && waiting.elapsed() < Duration::from_secs(120)
    {
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let phase_s = started.elapsed().as_secs_f64();
    let checkpoints_after = checkpoints(&mut admin);
    let cpu_after = [one.pid(), broker.pid(), std::process::id()].map(common::cpu_seconds);
    let ticks_after = machine_ticks();
    // Cores busy over the phase: the service, tansu, this bench (the paced producer) and the
    // whole machine (which adds PostgreSQL).
    let cores = |i: usize| match (cpu_before[i], cpu_after[i]) {
        (Some(b), Some(a)) => format!("{:.2}", (a - b) / phase_s),
        _ => "n/a".into(),
    };
    let machine_cores = (ticks_after.0 - ticks.0) as f64 / (ticks_after.1 - ticks.1).max(1) as f64
        * thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let timeline = watcher.join().unwrap();
    let pg_work = postgres_watcher.join().unwrap_or_default();
    // Each second, what the writers committed, in batches of how many rows, and how much of
    // their time they spent in a batch's transaction (a batch counted in the second it
    // commits). They take whatever is ready, so they are busy most of the time at any rate and
    // their batches grow with the load; busy writers committing less than is sent while their
    // batches grow is the database slowing down. Beside them, what the machine wrote to disk
    // that second and the dirty pages the kernel held at its end: a checkpoint's closing fsyncs
    // show as one second that writes all of them at once.
    let writers_by_second: Vec<String> = writers_watcher
        .join()
        .unwrap_or_default()
        .windows(2)
        .map(|w| {
            let [rows, batches, busy, _, written] = [1, 2, 3, 4, 5].map(|i| w[1][i] - w[0][i]);
            let seconds = (w[1][0] - w[0][0]).max(1.0) / 1e3;
            format!(
                "{:.0}/{:.0}/{:.0}%/{:.0}:{:.0}{}",
                rows / seconds / 1e3,
                rows / batches.max(1.0),
                busy / seconds / args.writers as f64 * 100.0,
                written / seconds,
                w[1][4],
                pg_work.marks(w[0][0] as i64, w[1][0] as i64)
            )
        })
        .collect();
    // Per row: from the send (its Kafka timestamp) and from the broker's acknowledgement (when
    // the broker had stored it) to the commit that covered it.
    let acked = live_producer
        .context()
        .times
        .as_ref()
        .map(|t| std::mem::take(&mut *t.lock().unwrap()).into_times())
        .unwrap_or_default();
    let (mut from_send, mut from_ack, mut ack): (Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
    // Produce to commit, and send to acknowledgement, by the second of the phase the change was
    // sent in.
    let mut by_second: BTreeMap<i64, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
    for r in client
        .query(
            "SELECT kafka_topic, kafka_partition, kafka_offset, \
                    (extract(epoch FROM kafka_timestamp) * 1000)::bigint \
             FROM audit_logging WHERE kafka_timestamp >= to_timestamp($1::bigint / 1000.0)",
            &[&phase_start],
        )
        .unwrap()
    {
        let (topic, partition, offset, sent): (String, i32, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let Some(samples) = timeline.get(&(topic.clone(), partition)) else {
            continue;
        };
        let at = samples.partition_point(|&(next, _)| next <= offset);
        let Some(&(_, seen)) = samples.get(at) else {
            continue;
        };
        from_send.push(seen - sent);
        let second = by_second.entry((sent - phase_start) / 1000).or_default();
        second.0.push(seen - sent);
        if let Some(acked) = acked.get(&(topic, partition, offset)) {
            from_ack.push(seen - acked);
            ack.push(acked - sent);
            second.1.push(acked - sent);
        }
    }
    for v in [&mut from_send, &mut from_ack, &mut ack] {
        v.sort_unstable();
    }
    let held_after = one.buckets(held_metric);
    let write_after = one.buckets(write_metric);
    let quantile = |q, before: &Option<Vec<(f64, f64)>>, after: &Option<Vec<(f64, f64)>>| {
        before
            .as_deref()
            .zip(after.as_deref())
            .and_then(|(b, a)| histogram_quantile(q, b, a))
            .map_or("n/a".to_string(), |s| format!("{:.0} ms", s * 1e3))
    };
    let held_quantile = |q| quantile(q, &held_before, &held_after);
    let write_quantile = |q| quantile(q, &write_before, &write_after);
    // BTreeMap: in the order of the phase's seconds, so a queue that grows shows as a rising run.
    // And the changes sent in a second in which PostgreSQL was neither checkpointing (its
    // writes, the fsyncs that end it, which stall commits, and the full-page images after it
    // starts) nor vacuuming: a whole second, as a checkpoint's fsyncs leave a queue that takes
    // a while to drain.
    let mut undisturbed = Vec::new();
    let by_second: Vec<String> = by_second
        .into_iter()
        .map(|(second, (mut total, mut ack))| {
            total.sort_unstable();
            ack.sort_unstable();
            let from = phase_start + second * 1000;
            let marks = pg_work.marks(from, from + 999);
            if marks.is_empty() {
                undisturbed.extend_from_slice(&total);
            }
            format!(
                "{}/{}{marks}",
                percentile(&total, 0.99),
                percentile(&ack, 0.99)
            )
        })
        .collect();
    undisturbed.sort_unstable();
    let checkpoint_spans: Vec<String> = pg_work
        .checkpoints
        .iter()
        .map(|&(a, b)| {
            format!(
                "{:.1} to {:.1} s",
                (a - phase_start) as f64 / 1e3,
                (b - phase_start) as f64 / 1e3
            )
        })
        .collect();
    let figures = |v: &[i64]| {
        format!(
            "p50 {} ms, p99 {} ms, max {} ms",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(0)
        )
    };
    say(format!(
        "\n## Latency at {:.2} of the drain rate\n\n\
         {} events at {rate:.0} events/s (sent in {send_s:.1} s) to 3 topics of {} partitions; \
         commits seen by polling audit_positions every 10 ms\n\
         produce to commit: {}\n\
         of which the broker, send to acknowledgement: {}\n\
         and the service, acknowledgement to commit: {}\n\
         held in the service, a batch's first message read to its commit ({held_metric}, per batch, \
         estimated from its buckets): p50 {}, p99 {}\n\
         of which writing and committing it ({write_metric}): p50 {}, p99 {}\n\
         p99 of each second of the phase, produce to commit / of which the broker, in ms (c: \
         PostgreSQL checkpointing, v: an autovacuum running): {}\n\
         each second of the phase, thousands of rows committed / rows a batch / the writers' time \
         in a batch's transaction / the machine's MB written to disk:dirty MB at its end ({:.1} \
         thousand events sent a second): {}\n\
         PostgreSQL checkpoints in the phase: {}; running {}; autovacuum running {:.1} s; \
         produce to commit of the {} changes sent in seconds with neither: {}\n\
         cores busy over the phase: the service {}, tansu {}, the producer {}, the machine {machine_cores:.2}",
        args.latency_share,
        from_send.len(),
        args.latency_partitions,
        figures(&from_send),
        figures(&ack),
        figures(&from_ack),
        held_quantile(0.5),
        held_quantile(0.99),
        write_quantile(0.5),
        write_quantile(0.99),
        by_second.join(" "),
        rate / 1e3,
        writers_by_second.join(" "),
        match (checkpoints_before, checkpoints_after) {
            (Some(b), Some(a)) => format!(
                "{} for WAL volume (max_wal_size), {} timed",
                a.0 - b.0,
                a.1 - b.1
            ),
            _ => "n/a".into(),
        },
        if checkpoint_spans.is_empty() {
            "never".to_string()
        } else {
            checkpoint_spans.join(", ")
        },
        pg_work
            .autovacuum
            .iter()
            .map(|&(a, b)| (b - a) as f64 / 1e3)
            .fold(0.0, |all, s| all + s),
        undisturbed.len(),
        figures(&undisturbed),
        cores(0),
        cores(1),
        cores(2),
    ));
    let (line, held) = exactly_once(&mut client, backlog_changes + live_generator.changes);
    say(line);
    one.stop();
    let mut failed = !held;

    // 4. Two instances, one group, a fresh database: the backlog again.
    if !args.one_instance {
        let url_two = common::fresh_database(&mut admin, &server, &db("two"));
        let mut client_two = cdc_audit::sink::connect(&url_two, None).unwrap();
        let a = service(
            &bootstrap,
            &backlog_topics,
            &url_two,
            "bench-two",
            &args,
            1,
            None,
        );
        let b = service(
            &bootstrap,
            &backlog_topics,
            &url_two,
            "bench-two",
            &args,
            2,
            None,
        );
        let d2 = drain(
            &mut client_two,
            "bench-two",
            backlog_end,
            backlog_changes,
            &[&a, &b],
            args.writers,
        );
        let cpu: f64 = d2.cpu_s.iter().sum();
        say(format!(
            "\n## Two instances in one group draining the backlog\n\n\
             {:.0} events/s, ratio to the ceiling {:.2} (join took {:.1} s); \
             peak resident memory {:.0} and {:.0} MB; CPU {:.1} µs per event; machine busy {:.0}%\n{}",
            d2.rate(),
            d2.rate() / ceiling,
            d2.startup,
            d2.peak_rss_mb[0],
            d2.peak_rss_mb[1],
            cpu / d2.events as f64 * 1e6,
            d2.machine_busy * 100.0,
            d2.batches_line(),
        ));
        let (line, held) = exactly_once(&mut client_two, backlog_changes);
        say(line);
        failed |= !held;
        a.stop();
        b.stop();
        drop(client_two);
        if !args.keep {
            let _ = admin.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db("two")));
        }
    }
    // 5. Quix Streams' PostgreSQLSink on the same backlog, last: its writes disturb no phase.
    if args.quix {
        let name = db("quix");
        let url = common::fresh_database(&mut admin, &server, &name);
        say(quix(
            &bootstrap,
            &backlog_topics,
            &url,
            &name,
            backlog_changes,
            d.rate(),
        ));
        if !args.keep {
            let _ = admin.batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"));
        }
    }
    drop(client);
    if !args.keep {
        let _ = admin.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db("one")));
    }
    drop(broker);

    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("end_to_end-report.md");
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(report.as_bytes()));
    match written {
        Ok(()) => println!("\nreport: {}", path.display()),
        Err(e) => eprintln!("report {}: {e}", path.display()),
    }
    if failed {
        std::process::exit(1);
    }
}

/// The read API asked in a loop, one request after the other, while the service drains.
struct ApiLoad {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<String>,
}

impl ApiLoad {
    fn start(addr: String) -> ApiLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut times: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
            let (mut failed, mut seed) = (0, 0x9e37_79b9_u64);
            let mut refused = BTreeMap::new();
            while !flag.load(Ordering::Acquire) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let id = 1001 + seed % 50_000;
                let (kind, path) = match seed % 4 {
                    0 => (
                        "history",
                        format!("/api/v1/history?table=customers&key={id}"),
                    ),
                    1 => ("changes", "/api/v1/changes?limit=50".to_string()),
                    2 => (
                        "as-of",
                        format!("/api/v1/as-of?table=orders&at=2100-01-01&key={id}"),
                    ),
                    _ => ("tables", "/api/v1/tables".to_string()),
                };
                let started = Instant::now();
                match api_get(&addr, &path) {
                    Some(200) => times.entry(kind).or_default().push(started.elapsed()),
                    Some(status) => *refused.entry(status).or_insert(0) += 1,
                    // Not listening yet, while the service starts.
                    None => {
                        failed += 1;
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            let answers: Vec<String> = times
                .iter_mut()
                .map(|(kind, times)| {
                    times.sort();
                    let at = |q: f64| {
                        times
                            .get(((times.len().max(1) - 1) as f64 * q) as usize)
                            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
                    };
                    format!(
                        "{kind} {} (p50 {:.1} ms, p99 {:.1} ms)",
                        times.len(),
                        at(0.5),
                        at(0.99)
                    )
                })
                .collect();
            format!(
                "read API asked in a loop meanwhile, one request after the other: {}; \
                 other statuses {refused:?}, {failed} connections refused while it started",
                answers.join(", ")
            )
        });
        ApiLoad { stop, handle }
    }

    fn stop(self) -> String {
        self.stop.store(true, Ordering::Release);
        self.handle
            .join()
            .unwrap_or_else(|_| "the API loader panicked".into())
    }
}

/// GET `path` from the API at `addr` with the bench's token; the status, if it answered.
fn api_get(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: bench\r\nAuthorization: Bearer {API_TOKEN}\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
