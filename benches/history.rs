//! The audit questions on a big trail: a trail of EVENTS generated changes (with context
//! messages for four transactions in five, as the demo makes them) is written by binary COPY,
//! then one record's history, a table as of a moment, a transaction and a context search are
//! asked many times. Prints latencies; asserts nothing.
//!
//!     cargo bench --bench history [-- EVENTS [QUESTIONS]]
//!
//! `CDC_AUDIT_BENCH_KEEP=1` keeps the database afterwards, to look at the plans.

mod common;

use std::time::{Duration, Instant};

use cdc_audit::demo::{self, Generator};
use cdc_audit::query;
use serde_json::json;

/// p50, p99 and max of `times`, in milliseconds.
fn figures(mut times: Vec<Duration>) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} asked)",
        at(0.5),
        at(0.99),
        at(1.0),
        times.len()
    )
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

fn main() {
    let numbers: Vec<usize> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    let events = numbers.first().copied().unwrap_or(1_000_000);
    let questions = numbers.get(1).copied().unwrap_or(500);
    let server = demo::server_url();
    let mut admin = cdc_audit::sink::connect(&server, None).expect("PostgreSQL");
    let name = format!("cdc_audit_bench_history_{}", std::process::id());
    let url = common::fresh_database(&mut admin, &server, &name);

    let mut generator = Generator::new("bench", 3).without_schemas().with_context();
    let streams = common::generated_streams(&mut generator, events);
    let (rate, took) = timed(|| common::write_streams(&url, streams, false));
    let mut client = cdc_audit::sink::connect(&url, None).expect("the bench database");
    client
        .batch_execute("VACUUM ANALYZE audit_logging")
        .expect("vacuum");
    let (rows, size): (i64, String) = {
        let r = client
            .query_one(
                "SELECT count(*), pg_size_pretty(pg_total_relation_size('audit_logging')) FROM audit_logging",
                &[],
            )
            .expect("count");
        (r.get(0), r.get(1))
    };
    println!(
        "{rows} audit rows ({} change events, {} context messages; {size} with indexes), written by COPY in {:.1} s ({rate:.0} rows/s)",
        generator.changes, generator.messages, took.as_secs_f64()
    );
    let indexes: String = client
        .query_one(
            "SELECT string_agg(indexrelname || ' ' || pg_size_pretty(pg_relation_size(indexrelid)), ', ' \
             ORDER BY indexrelname) FROM pg_stat_user_indexes WHERE relname = 'audit_logging'",
            &[],
        )
        .expect("index sizes")
        .get(0);
    println!("indexes: {indexes}");
    query::prepare(&mut client).expect("UTC");

    // Keys spread over every table's ids; a few are of records deleted long ago.
    let tables = ["customers", "orders", "products"];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let top_ids = (events / 3 / 2).max(10) as u64;
    let mut history = Vec::new();
    let mut changes = 0;
    for _ in 0..questions {
        let table = tables[next(3) as usize];
        let id = 1001 + next(top_ids);
        let (h, t) =
            timed(|| query::history(&mut client, table, &json!(id), 100).expect("history"));
        changes += h.changes.len();
        history.push(t);
    }
    println!(
        "one record's history: {} ({:.1} changes a record on average)",
        figures(history),
        changes as f64 / questions as f64
    );

    let middle: String = client
        .query_one(
            "SELECT to_jsonb(percentile_disc(0.5) WITHIN GROUP (ORDER BY change_timestamp)) #>> '{}' FROM audit_logging",
            &[],
        )
        .expect("a moment")
        .get(0);
    let mut one_row = Vec::new();
    for _ in 0..questions {
        let id = 1001 + next(top_ids);
        let (_, t) = timed(|| {
            query::as_of(&mut client, "customers", &middle, Some(&json!(id))).expect("as of")
        });
        one_row.push(t);
    }
    println!("one record as of a moment: {}", figures(one_row));

    let mut whole = Vec::new();
    let mut table_rows = 0;
    for _ in 0..5 {
        let (a, t) =
            timed(|| query::as_of(&mut client, "customers", &middle, None).expect("as of"));
        table_rows = a.rows.len();
        whole.push(t);
    }
    println!(
        "the whole customers table as of the middle of the trail ({table_rows} rows): {}",
        figures(whole)
    );

    let mut transactions = Vec::new();
    let mut by_context = Vec::new();
    for _ in 0..questions {
        let tx = 501 + next((events / 2) as u64);
        let (_, t) =
            timed(|| query::transaction(&mut client, &tx.to_string()).expect("transaction"));
        transactions.push(t);
        let (_, t) = timed(|| {
            query::transactions_by_context(&mut client, "request_id", &format!("r-{tx}"))
                .expect("context")
        });
        by_context.push(t);
    }
    println!(
        "one transaction with its context: {}",
        figures(transactions)
    );
    println!("transactions by a context field: {}", figures(by_context));
    let (_, t) = timed(|| query::tables(&mut client).expect("tables"));
    println!("the list of tables: {:.2} ms", t.as_secs_f64() * 1e3);

    drop(client);
    if std::env::var_os("CDC_AUDIT_BENCH_KEEP").is_some() {
        println!("kept database {name}, to look at the plans");
    } else {
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
}
