//! `cdc-audit verify` on a big trail: EVENTS generated changes on 3 topics are written through
//! the writers' own fenced transaction (so every row is a link), then every chain is
//! recomputed from the stored rows; then the month is archived (retention) and its archive
//! verified on its own. Prints rows and links per second; asserts nothing but that the chains
//! are intact.
//!
//!     cargo bench --bench verify [-- EVENTS]

mod common;

use std::time::Instant;

use cdc_audit::demo::{self, Generator};
use cdc_audit::integrity::{self, Scope};

fn main() {
    let events = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(1_000_000);
    let server = demo::server_url();
    let mut admin = cdc_audit::sink::connect(&server, None).expect("PostgreSQL");
    let name = format!("cdc_audit_bench_verify_{}", std::process::id());
    let url = common::fresh_database(&mut admin, &server, &name);

    let mut generator = Generator::new("bench", 5).without_schemas();
    let streams = common::generated_streams(&mut generator, events);
    let started = Instant::now();
    let rate = common::write_streams(&url, streams, true);
    println!(
        "{} changes written through the fenced transaction in {:.1} s ({rate:.0} rows/s)",
        generator.changes,
        started.elapsed().as_secs_f64()
    );
    let connect = || cdc_audit::sink::connect(&url, None);
    connect()
        .and_then(|mut c| {
            c.batch_execute("VACUUM ANALYZE audit_logging")
                .map_err(|e| e.to_string())
        })
        .expect("vacuum");
    for run in 1..=3 {
        let started = Instant::now();
        let report = integrity::verify(connect, &Scope::default()).expect("verify");
        let took = started.elapsed().as_secs_f64();
        assert!(report.intact(), "{report}");
        println!(
            "verify, run {run}: {} links in {} chains in {took:.2} s: {:.0} links/s",
            report.links(),
            report.chains.len(),
            report.links() as f64 / took
        );
    }
    // The month archived (retention), then its archive verified on its own.
    let dir = std::env::temp_dir().join(format!("cdc-audit-bench-archive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the archive");
    let mut client = connect().expect("the bench database");
    let before: String = client
        .query_one(
            "SELECT ((date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') \
             AT TIME ZONE 'UTC')::text",
            &[],
        )
        .expect("next month")
        .get(0);
    let started = Instant::now();
    let archived =
        integrity::archive::archive_expired(&mut client, &before, &dir).expect("archive");
    let took = started.elapsed().as_secs_f64();
    for a in &archived {
        let size = std::fs::metadata(&a.file).map_or(0, |m| m.len());
        println!(
            "archive of {}: {} rows in {took:.2} s ({:.0} rows/s), {:.1} MB",
            a.partition,
            a.rows,
            a.rows as f64 / took,
            size as f64 / 1e6
        );
        let started = Instant::now();
        let report = integrity::archive::verify_archive(&a.file).expect("verify --archive");
        let took = started.elapsed().as_secs_f64();
        assert!(report.intact(), "{report}");
        println!(
            "verify --archive: {} links in {took:.2} s: {:.0} links/s",
            report.links,
            report.links as f64 / took
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(client);
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}
