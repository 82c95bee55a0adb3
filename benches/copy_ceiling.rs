//! The writer against PostgreSQL's ceiling, without Kafka: the same transformed rows written
//! (a) by plain binary COPY on N connections, the ceiling, and (b) by the service's writer path,
//! one fenced transaction per partition batch (position lock, COPY, position update), on N
//! connections. Prints rows/s and the ratio; asserts nothing.
//!
//!     cargo bench --bench copy_ceiling [-- EVENTS [BATCH]]

mod common;

use cdc_audit::demo::{self, Generator};
use cdc_audit::types::Transformed;

/// One partition's batches of `batch` events, transformed.
fn partition_batches(partition: i32, events: usize, batch: usize) -> Vec<Transformed> {
    let mut generator = Generator::new("bench", 1 + partition as u64);
    let mut records = Vec::with_capacity(events);
    while records.len() < events {
        records.extend(
            generator
                .next_records()
                .into_iter()
                .filter(|r| r.value.is_some()),
        );
    }
    records.truncate(events);
    let records: Vec<_> = records.iter().collect();
    common::transformed_batches("bench.inventory.customers", partition, &records, batch)
}

fn main() {
    let numbers: Vec<usize> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    let events = numbers.first().copied().unwrap_or(100_000);
    // The service's default batch size; small batches show the per-transaction cost.
    let batch = numbers.get(1).copied().unwrap_or(2000);
    let server = demo::server_url();
    let mut admin = cdc_audit::sink::connect(&server, None).expect("PostgreSQL");
    let name = format!("cdc_audit_bench_copy_{}", std::process::id());
    println!(
        "{events} change events per run, batches of {batch}, PostgreSQL at {}",
        cdc_audit::config::mask_url(&server)
    );
    for connections in [1, 2] {
        let streams = || {
            (0..connections as i32)
                .map(|p| partition_batches(p, events / connections, batch))
                .collect::<Vec<_>>()
        };
        let url = common::fresh_database(&mut admin, &server, &name);
        let ceiling = common::write_streams(&url, streams(), false);
        let url = common::fresh_database(&mut admin, &server, &name);
        let writer = common::write_streams(&url, streams(), true);
        println!(
            "{connections} connection(s): COPY ceiling {ceiling:>8.0} rows/s, writer path {writer:>8.0} rows/s, ratio {:.2}",
            writer / ceiling
        );
    }
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}
