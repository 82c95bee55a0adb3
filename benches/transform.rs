//! Transform throughput: generated Debezium events through `transform`, on one core and on
//! rayon, for small events (JSON converter without schemas, about 600 bytes) and large ones (with
//! the schema envelope, about 2.5 KB). Prints figures; asserts nothing.
//!
//!     cargo bench --bench transform [-- EVENTS]

use std::sync::Arc;
use std::time::Instant;

use cdc_audit::config::rules::Rules;
use cdc_audit::demo::Generator;
use cdc_audit::transform::transform;
use cdc_audit::types::Message;
use cdc_audit::types::Outcome;
use rayon::prelude::*;

fn messages(n: usize, mut generator: Generator) -> Vec<Message> {
    let topic: Arc<str> = Arc::from("bench.inventory.customers");
    let mut messages = Vec::with_capacity(n);
    while messages.len() < n {
        for r in generator.next_records() {
            if let Some(value) = r.value {
                messages.push(Message {
                    topic: topic.clone(),
                    partition: 0,
                    offset: messages.len() as i64,
                    timestamp_ms: Some(0),
                    key: r.key.map(String::into_bytes),
                    payload: Some(value.into_bytes()),
                    headers: Vec::new(),
                });
            }
        }
    }
    messages
}

fn run(label: &str, messages: &[Message]) {
    let n = messages.len();
    let bytes: usize = messages
        .iter()
        .map(|m| m.payload.as_ref().map_or(0, Vec::len))
        .sum();
    println!(
        "{label}: {n} events, {:.0} bytes each on average",
        bytes as f64 / n as f64
    );
    let report = |label: &str, secs: f64, outcomes: &[Outcome]| {
        let rows = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Row(_)))
            .count();
        println!(
            "  {label:<20} {:>10.0} events/s {:>8.1} MB/s  ({rows} rows in {secs:.2} s)",
            n as f64 / secs,
            bytes as f64 / secs / 1e6
        );
    };
    let rules = Rules::default();
    let started = Instant::now();
    let outcomes: Vec<Outcome> = messages.iter().map(|m| transform(m, &rules)).collect();
    report("one core", started.elapsed().as_secs_f64(), &outcomes);
    drop(outcomes);

    let started = Instant::now();
    let outcomes: Vec<Outcome> = messages.par_iter().map(|m| transform(m, &rules)).collect();
    report(
        &format!("rayon ({} threads)", rayon::current_num_threads()),
        started.elapsed().as_secs_f64(),
        &outcomes,
    );
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    run(
        "small (no schema)",
        &messages(n, Generator::new("bench", 1).without_schemas()),
    );
    run(
        "large (schema envelope)",
        &messages(n, Generator::new("bench", 1)),
    );
}
