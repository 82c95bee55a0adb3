//! The writer against PostgreSQL's ceiling, without Kafka: the same transformed rows written
//! (a) by plain binary COPY on N connections, the ceiling, and (b) by the service's writer path,
//! one fenced transaction per partition batch (position lock, COPY, position update), on N
//! connections. Prints rows/s and the ratio; asserts nothing.
//!
//!     cargo bench --bench copy_ceiling [-- EVENTS]

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use cdc_audit::demo::{self, Generator};
use cdc_audit::pipeline::{Batch, Message, Tp, Transformed};
use cdc_audit::sink::{copy_rows, write_batch, AUDIT};
use cdc_audit::transform::rules::Rules;
use cdc_audit::transform::{transform, Outcome};

const BATCH: usize = 2000;

/// One partition's batches, transformed.
fn partition_batches(partition: i32, events: usize) -> Vec<Transformed> {
    let topic: Arc<str> = Arc::from("bench.inventory.customers");
    let mut generator = Generator::new("bench", 1 + partition as u64);
    let mut messages = Vec::with_capacity(events);
    while messages.len() < events {
        for r in generator
            .next_records()
            .into_iter()
            .filter(|r| r.value.is_some())
        {
            messages.push(Message {
                topic: topic.clone(),
                partition,
                offset: messages.len() as i64,
                timestamp_ms: Some(0),
                key: r.key.map(String::into_bytes),
                payload: r.value.map(String::into_bytes),
                headers: Vec::new(),
            });
        }
    }
    messages.truncate(events);
    let rules = Rules::default();
    let mut out = Vec::new();
    for (i, chunk) in messages.chunks(BATCH).enumerate() {
        let messages = chunk.to_vec();
        let outcomes: Vec<Outcome> = messages.iter().map(|m| transform(m, &rules)).collect();
        let start = (i * BATCH) as i64;
        let end = start + messages.len() as i64;
        let tp = Tp {
            topic: topic.clone(),
            partition,
        };
        let batch = Batch {
            id: i as u64,
            tp,
            epoch: 0,
            start: Some(start),
            end,
            messages,
            created: Instant::now(),
        };
        out.push(Transformed { batch, outcomes });
    }
    out
}

fn fresh_database(admin: &mut postgres::Client, server: &str, name: &str) -> String {
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

/// Runs one thread per partition's batches, each on its own connection; returns rows/s.
fn run(url: &str, parts: Vec<Vec<Transformed>>, fenced: bool) -> f64 {
    let rows: usize = parts.iter().flatten().map(|t| t.outcomes.len()).sum();
    let started = Instant::now();
    let handles: Vec<_> = parts
        .into_iter()
        .map(|batches| {
            let url = url.to_string();
            thread::spawn(move || {
                let mut client = cdc_audit::sink::connect(&url, None).unwrap();
                for t in &batches {
                    if fenced {
                        write_batch(&mut client, "bench", t, false).unwrap();
                    } else {
                        let mut tx = client.transaction().unwrap();
                        let bytes = t.outcomes.iter().filter_map(|o| match o {
                            Outcome::Row(row) => Some(row.bytes.as_slice()),
                            _ => None,
                        });
                        copy_rows(&mut tx, AUDIT, bytes).unwrap();
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

fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let server = demo::server_url();
    let mut admin = cdc_audit::sink::connect(&server, None).expect("PostgreSQL");
    let name = format!("cdc_audit_bench_copy_{}", std::process::id());
    println!(
        "{events} change events per run, batches of {BATCH}, PostgreSQL at {}",
        cdc_audit::config::mask_url(&server)
    );
    for connections in [1, 2] {
        let per = events / connections;
        let batches = |_: ()| {
            (0..connections as i32)
                .map(|p| partition_batches(p, per))
                .collect::<Vec<_>>()
        };
        let url = fresh_database(&mut admin, &server, &name);
        let ceiling = run(&url, batches(()), false);
        let url = fresh_database(&mut admin, &server, &name);
        let writer = run(&url, batches(()), true);
        println!(
            "{connections} connection(s): COPY ceiling {ceiling:>8.0} rows/s, writer path {writer:>8.0} rows/s, ratio {:.2}",
            writer / ceiling
        );
    }
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}
