//! tansu, a Kafka-compatible broker in a process of its own: one the tests can SIGKILL and start
//! again on its own storage, and whose stock fetch skips records (the holes the service must not
//! take for aborted transactions).
//!
//! `cargo install tansu --version 0.6.0 --features dynostore,libsql` (about 10 minutes; `.ci/run`
//! does it when tansu is missing). `$TANSU` names another binary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cdc_audit::demo::{Generator, Record};
use cdc_audit::source::holes::{block_on, Holes};
use cdc_audit::types::{GapCause, Tp};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use crate::util::{
    assert_chains_intact, config, free_port, tempdir, wait_until, Broker, InProcess, Kafka, TestDb,
};

/// Where the broker keeps its log.
pub enum Storage {
    /// SQLite in the broker's folder: it survives a SIGKILL.
    Sqlite,
    /// In memory (tansu's object store), whose fetch skips the rest of a record batch that a
    /// fetch starts inside.
    Memory,
}

pub struct Tansu {
    binary: PathBuf,
    dir: PathBuf,
    storage: &'static str,
    port: u16,
    pub bootstrap: String,
    pub topics: Vec<String>,
    child: Mutex<Option<Child>>,
    starts: AtomicUsize,
}

impl Broker for Tansu {
    fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
    fn topics(&self) -> &[String] {
        &self.topics
    }
}

fn binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("TANSU")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "tansu is not installed: `cargo install tansu --version 0.6.0 --features \
             dynostore,libsql` (or `bash .ci/run`), or set TANSU"
            )
        })
}

impl Tansu {
    /// A broker with the generated traffic's topics (`partitions` each), under `prefix`.
    pub fn start(prefix: &str, storage: Storage, partitions: i32) -> Tansu {
        let topics = Generator::new(prefix, 1).topics();
        let mut tansu = Tansu {
            binary: binary(),
            dir: tempdir(&format!("tansu-{prefix}")),
            storage: match storage {
                Storage::Sqlite => "sqlite://tansu.db",
                Storage::Memory => "memory://tansu/",
            },
            port: free_port(),
            bootstrap: String::new(),
            topics,
            child: Mutex::new(None),
            starts: AtomicUsize::new(0),
        };
        tansu.bootstrap = format!("127.0.0.1:{}", tansu.port);
        tansu.up();
        let topics = tansu.topics.clone();
        tansu.create_topics(&topics, partitions, &[]);
        tansu
    }

    /// Starts the broker on its port and storage; returns once it listens.
    pub fn up(&self) {
        let mut slot = self.child.lock().unwrap();
        assert!(slot.is_none(), "tansu is already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let log = std::fs::File::create(self.dir.join(format!("tansu-{n}.log")))
            .expect("tansu's log file");
        let child = Command::new(&self.binary)
            .args(["broker", "--storage-engine", self.storage])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.binary.display()));
        *slot = Some(child);
        drop(slot);
        wait_until(Duration::from_secs(30), "tansu listening", || {
            std::net::TcpStream::connect(&self.bootstrap).is_ok()
        });
    }

    /// SIGKILL: no shutdown, whatever it held in memory is gone.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn create_topics(&self, topics: &[String], partitions: i32, settings: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| {
                settings.iter().fold(
                    NewTopic::new(t, partitions, TopicReplication::Fixed(1)),
                    |n, (k, v)| n.set(k, v),
                )
            })
            .collect();
        for result in block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap() {
            if let Err((topic, e)) = result {
                panic!("create topic {topic}: {e}");
            }
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Produces `records` to partition 0 of their topics in as few record batches as librdkafka
/// makes in `linger`: as Kafka Connect's producer sends a burst of changes.
fn produce_batched(bootstrap: &str, records: &[Record]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "200")
        .create()
        .unwrap();
    for r in records {
        let mut record: BaseRecord<'_, str, str> = BaseRecord::to(&r.topic).partition(0);
        if let Some(key) = &r.key {
            record = record.key(key);
        }
        if let Some(value) = &r.value {
            record = record.payload(value);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Changes of one topic only, none of them tombstones.
fn changes_of(prefix: &str, n: usize) -> Vec<Record> {
    let mut g = Generator::new(prefix, 3);
    let topic = g.topics()[0].clone();
    let mut out = Vec::new();
    while out.len() < n {
        let records = g.next_records().into_iter();
        out.extend(records.filter(|r| r.value.is_some() && r.topic == topic));
    }
    out
}

/// Stock tansu's fetch, started inside a record batch, skips the rest of that batch: a consumer
/// that resumes in the middle of one (after a crash, say) never sees those records. The service
/// fetches the hole again, finds nothing there either, and since the topic is not compacted and
/// no transaction explains it, records it as suspect, counts it and says so at error level. The
/// same start on Kafka's own behaviour (librdkafka's mock cluster) delivers every record.
#[test]
fn records_a_broker_skipped_are_recorded_as_suspect_not_as_aborted() {
    let changes = changes_of("skip", 200);
    let topic = changes[0].topic.clone();
    let (first, second) = changes.split_at(60);
    let (first, second) = (first.to_vec(), second[..10].to_vec());

    // `first` is in the broker already.
    let run = |bootstrap: String, topics: Vec<String>| {
        let db = TestDb::new("holes");
        db.migrate();
        // The group had written offsets 0..20 and stopped: it resumes inside the first batch.
        db.client()
            .execute(
                "INSERT INTO audit_positions (consumer_group, topic, partition, next_offset) \
                 VALUES ('g', $1, 0, 20)",
                &[&topic],
            )
            .unwrap();
        produce_batched(&bootstrap, &second);
        let end = (first.len() + second.len()) as i64;
        let broker = Address { bootstrap, topics };
        let mut config = config(&broker, &db, "g");
        config.topics = cdc_audit::config::Topics::List(vec![topic.clone()]);
        let service = InProcess::start(config);
        wait_until(Duration::from_secs(60), "the second batch written", || {
            db.committed("g") >= end
        });
        let suspect = service.stats.offsets_suspect.get();
        let fetched_again = service.stats.offsets_fetched_again.get();
        service.stop();
        let gaps: Vec<(i64, i64, Option<String>)> = db
            .client()
            .query(
                "SELECT first_offset, end_offset, cause FROM audit_gaps ORDER BY first_offset",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_chains_intact(&db);
        (db.count("audit_logging"), gaps, suspect, fetched_again)
    };

    // Stock tansu, in memory: the first batch holds offsets 0..60.
    let tansu = Tansu::start("skip", Storage::Memory, 1);
    produce_batched(&tansu.bootstrap, &first);
    let (rows, gaps, suspect, fetched_again) = run(tansu.bootstrap.clone(), tansu.topics.clone());
    assert_eq!(rows, 10, "only the second batch was delivered");
    assert_eq!(gaps, [(20, 60, Some("suspect".to_string()))]);
    assert_eq!((suspect, fetched_again), (40, 0));

    // librdkafka's mock cluster delivers from inside a batch, as Kafka does.
    let kafka = Kafka::new("skip");
    produce_batched(&kafka.bootstrap, &first);
    let (rows, gaps, suspect, _) = run(kafka.bootstrap.clone(), kafka.topics.clone());
    assert_eq!((rows, gaps, suspect), (50, vec![], 0));
}

struct Address {
    bootstrap: String,
    topics: Vec<String>,
}

impl Broker for Address {
    fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
    fn topics(&self) -> &[String] {
        &self.topics
    }
}

/// A consumer of `bootstrap` for the hole checks' watermarks.
fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "holes-test")
        .create()
        .unwrap()
}

fn holes(bootstrap: &str) -> Holes {
    let mut settings = ClientConfig::new();
    settings
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "holes-test");
    let mut admin = ClientConfig::new();
    admin.set("bootstrap.servers", bootstrap);
    Holes::new(settings, admin)
}

/// A hole whose records the broker does have is no hole: the second fetch brings every one of
/// them, in order, and nothing is recorded. Checked against the mock cluster, which delivers from
/// any offset.
#[test]
fn a_hole_whose_records_a_second_fetch_finds_is_filled_with_them() {
    let kafka = Kafka::new("refetch");
    let changes = changes_of("refetch", 80);
    produce_batched(&kafka.bootstrap, &changes);
    let tp = Tp {
        topic: Arc::from(changes[0].topic.as_str()),
        partition: 0,
    };
    let mut topics = HashMap::new();
    let checked =
        holes(&kafka.bootstrap).check(&consumer(&kafka.bootstrap), &tp, 12..40, &mut topics);
    let offsets: Vec<i64> = checked.found.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (12..40).collect::<Vec<_>>());
    assert!(checked.holes.is_empty(), "{:?}", checked.holes);
    let payloads: Vec<&[u8]> = checked
        .found
        .iter()
        .filter_map(|m| m.payload.as_deref())
        .collect();
    let sent: Vec<&[u8]> = changes[12..40]
        .iter()
        .filter_map(|r| r.value.as_deref())
        .map(str::as_bytes)
        .collect();
    assert_eq!(payloads, sent);
}

/// A compacted topic has holes by design: they are `not_delivered`, without a second fetch. On a
/// topic that is not compacted, the same hole that stock tansu skips is suspect.
#[test]
fn a_compacted_topics_holes_are_not_delivered_and_anothers_are_suspect() {
    let tansu = Tansu::start("compact", Storage::Memory, 1);
    let changes = changes_of("compact", 80);
    let compacted = vec!["compacted".to_string()];
    tansu.create_topics(&compacted, 1, &[("cleanup.policy", "compact")]);
    let retopic = |topic: &str| -> Vec<Record> {
        changes
            .iter()
            .map(|r| Record {
                topic: topic.to_string(),
                ..r.clone()
            })
            .collect()
    };
    produce_batched(&tansu.bootstrap, &retopic("compacted"));
    produce_batched(&tansu.bootstrap, &changes);

    let mut holes = holes(&tansu.bootstrap);
    let main = consumer(&tansu.bootstrap);
    let mut topics = HashMap::new();
    let check = |holes: &mut Holes, topic: &str, topics: &mut HashMap<String, Arc<str>>| {
        let tp = Tp {
            topic: Arc::from(topic),
            partition: 0,
        };
        let checked = holes.check(&main, &tp, 10..30, topics);
        let gaps: Vec<_> = checked
            .holes
            .iter()
            .map(|g| (g.offsets.clone(), g.cause))
            .collect();
        (checked.found.len(), gaps)
    };
    let (found, gaps) = check(&mut holes, "compacted", &mut topics);
    assert_eq!(
        (found, gaps),
        (0, vec![(10..30, Some(GapCause::NotDelivered))])
    );
    let (found, gaps) = check(&mut holes, &changes[0].topic, &mut topics);
    assert_eq!((found, gaps), (0, vec![(10..30, Some(GapCause::Suspect))]));
}
