//! Helpers shared by the benchmarks: fresh databases, the COPY ceiling, process figures.
#![allow(dead_code)] // each benchmark uses its own subset

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cdc_audit::chain::{suffix, Suffix};
use cdc_audit::config::rules::Rules;
use cdc_audit::demo::{self, Record};
use cdc_audit::sink::{copy_rows, write_batch, AUDIT};
use cdc_audit::source::holes::block_on;
use cdc_audit::transform::{transform_together, Schemas, SHARING};
use cdc_audit::types::Outcome;
use cdc_audit::types::{Batch, Message, Tp, Transformed};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// (Re)creates database `name` on the server and migrates it; returns its URL.
pub fn fresh_database(admin: &mut postgres::Client, server: &str, name: &str) -> String {
    for statement in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin.batch_execute(&statement).unwrap();
    }
    let url = demo::with_dbname(server, name);
    cdc_audit::migrate::migrate(&mut cdc_audit::sink::connect(&url, None).unwrap()).unwrap();
    url
}

/// Records of one stream, as Kafka messages of `partition` with offsets from 0.
pub fn messages(topic: &str, partition: i32, records: &[&Record]) -> Vec<Message> {
    let topic: Arc<str> = Arc::from(topic);
    records
        .iter()
        .enumerate()
        .map(|(offset, r)| Message {
            topic: topic.clone(),
            partition,
            offset: offset as i64,
            timestamp_ms: Some(0),
            key: r.key.clone().map(|s| s.into_bytes().into()),
            payload: r.value.clone().map(|s| s.into_bytes().into()),
            headers: Vec::new(),
        })
        .collect()
}

/// Records of one stream, as Kafka messages of `partition` with offsets from 0, transformed in
/// batches of `batch` as the service would.
pub fn transformed_batches(
    topic: &str,
    partition: i32,
    records: &[&Record],
    batch: usize,
) -> Vec<Transformed> {
    let messages = messages(topic, partition, records);
    let rules = Rules::default();
    messages
        .chunks(batch)
        .enumerate()
        .map(|(i, chunk)| {
            let outcomes = chunk
                .chunks(SHARING)
                .flat_map(|c| transform_together(c, &rules, &Schemas::default()))
                .collect();
            let start = (i * batch) as i64;
            Transformed::new(
                Batch {
                    id: i as u64,
                    tp: Tp {
                        topic: chunk[0].topic.clone(),
                        partition,
                    },
                    epoch: 0,
                    start: Some(start),
                    end: start + chunk.len() as i64,
                    holes: Vec::new(),
                    messages: chunk.to_vec(),
                    bytes: chunk.iter().map(Message::size).sum(),
                    created: Instant::now(),
                },
                outcomes,
            )
        })
        .collect()
}

/// The records of `generator` until it has made `events` changes, by topic (tombstones left
/// out), each topic transformed in batches of 2000 as partition 0.
pub fn generated_streams(generator: &mut demo::Generator, events: usize) -> Vec<Vec<Transformed>> {
    let mut by_topic: std::collections::BTreeMap<String, Vec<Record>> = Default::default();
    while generator.changes < events {
        for r in generator.next_records() {
            if r.value.is_some() {
                by_topic.entry(r.topic.clone()).or_default().push(r);
            }
        }
    }
    by_topic
        .iter()
        .map(|(topic, records)| {
            let records: Vec<&Record> = records.iter().collect();
            transformed_batches(topic, 0, &records, 2000)
        })
        .collect()
}

/// Writes each stream's batches on its own connection, one transaction per batch: plain binary
/// COPY (the ceiling) or the service's fenced write. Returns audit rows per second.
pub fn write_streams(url: &str, streams: Vec<Vec<Transformed>>, fenced: bool) -> f64 {
    let rows: usize = streams
        .iter()
        .flatten()
        .flat_map(|t| &t.outcomes)
        .filter(|o| matches!(o, Outcome::Row(_)))
        .count();
    let started = Instant::now();
    let handles: Vec<_> = streams
        .into_iter()
        .map(|batches| {
            let url = url.to_string();
            thread::spawn(move || {
                let mut client = cdc_audit::sink::connect(&url, None).unwrap();
                // Writing as the service's writers do.
                cdc_audit::sink::write_through(&mut client);
                for t in &batches {
                    if fenced {
                        write_batch(&mut client, "bench", t, false).unwrap();
                    } else {
                        // The same columns the service writes, the chain's included.
                        let mut tx = client.transaction().unwrap();
                        let rows: Vec<(&[u8], Suffix)> = t
                            .outcomes
                            .iter()
                            .filter_map(|o| match o {
                                Outcome::Row(row) => Some(row),
                                _ => None,
                            })
                            .enumerate()
                            .map(|(i, row)| (&row.bytes[..], suffix(0, i as i64, &row.content)))
                            .collect();
                        copy_rows(&mut tx, AUDIT, rows.iter().map(|(b, s)| (*b, &s[..]))).unwrap();
                        tx.commit().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of a process now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of a process over its life so far (the kernel's high-water mark), KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// User plus system CPU time of a process, all its threads, in seconds (clock ticks of 1/100 s,
/// Linux's USER_HZ).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// [`cpu_seconds`] of each of a process's live threads, summed by name without its trailing
/// digits and dashes (`writer-0` and `writer-1` are `writer`): what each stage spent.
pub fn cpu_seconds_by_thread(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name
            .trim_end()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        if let Some(seconds) = stat_cpu_seconds(&path.join("stat").to_string_lossy()) {
            *by_name.entry(name.to_string()).or_insert(0.0) += seconds;
        }
    }
    by_name
}

/// [`cpu_seconds`] of the calling thread alone.
pub fn thread_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds("/proc/thread-self/stat")
}

fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 of the line; `rest` starts at field 3.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU") {
        return Some(path.into());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// Starts tansu with `storage` on a free port, its log in the temporary directory as `log`;
/// returns it and its bootstrap address once it listens.
pub fn start_tansu(binary: &PathBuf, storage: &str, log: &str) -> (Child, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(binary)
        .args(["broker", "--storage-engine", storage])
        // A relative sqlite:// path lands in the temporary directory, not in the checkout.
        .current_dir(std::env::temp_dir())
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join(log)).unwrap())
        .spawn()
        .unwrap();
    let address = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while TcpStream::connect(&address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tansu did not listen on {address}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    (child, address)
}

/// Creates `topics` with `partitions` each and the topic `settings` given.
pub fn create_topics(
    bootstrap: &str,
    topics: &[String],
    partitions: i32,
    settings: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let new = NewTopic::new(t, partitions, TopicReplication::Fixed(1));
            settings.iter().fold(new, |n, (k, v)| n.set(k, v))
        })
        .collect();
    for result in block_on(admin.create_topics(&new, &AdminOptions::new())).unwrap() {
        if let Err((topic, e)) = result {
            panic!("create topic {topic}: {e}");
        }
    }
}
