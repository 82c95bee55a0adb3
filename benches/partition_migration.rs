//! How long migration 0009 (audit_logging partitioned by month) takes on an existing trail: EVENTS
//! changes are written through the fenced transaction under migrations 0001 to 0008, then 0009 is
//! applied. The table is locked meanwhile (writers wait). Prints the time; asserts nothing.
//!
//!     cargo bench --bench partition_migration [-- EVENTS]

mod common;

use std::time::Instant;

use cdc_audit::demo::{self, Generator};
use cdc_audit::migrate::{self, MIGRATIONS};

fn main() {
    let events = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(1_000_000);
    let server = demo::server_url();
    let mut admin = cdc_audit::sink::connect(&server, None).expect("PostgreSQL");
    let name = format!("cdc_audit_bench_partitions_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("a database");
    let url = demo::with_dbname(&server, &name);
    let mut client = cdc_audit::sink::connect(&url, None).expect("the bench database");
    client
        .batch_execute(
            "CREATE TABLE cdc_audit_migrations (version integer PRIMARY KEY, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .expect("the migrations table");
    for (version, migration, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v < 9) {
        client.batch_execute(sql).expect("a migration");
        client
            .execute(
                "INSERT INTO cdc_audit_migrations (version, name) VALUES ($1, $2)",
                &[version, migration],
            )
            .expect("recorded");
    }
    let mut generator = Generator::new("bench", 7).without_schemas();
    let streams = common::generated_streams(&mut generator, events);
    let rate = common::write_streams(&url, streams, true);
    client
        .batch_execute("VACUUM ANALYZE audit_logging")
        .expect("vacuum");
    let (rows, size): (i64, String) = client
        .query_one(
            "SELECT count(*), pg_size_pretty(pg_total_relation_size('audit_logging')) FROM audit_logging",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .expect("count");
    println!("{rows} rows ({size} with indexes) written at {rate:.0} rows/s under 0001 to 0008");
    let started = Instant::now();
    let applied = migrate::migrate(&mut client).expect("0009");
    println!(
        "{applied:?} took {:.2} s on {rows} rows",
        started.elapsed().as_secs_f64()
    );
    drop(client);
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}
