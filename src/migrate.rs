//! Applies the SQL files of `schema/` in order, once each, recorded in `cdc_audit_migrations`.
//! An advisory lock lets several instances start at once.

use crate::config::Config;
use crate::sink::{self, with_causes, Pool};

/// The migrations compiled into the binary: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_audit_log.sql",
        include_str!("../schema/0001_audit_log.sql"),
    ),
    (
        2,
        "0002_append_only.sql",
        include_str!("../schema/0002_append_only.sql"),
    ),
    (
        3,
        "0003_audit_gaps.sql",
        include_str!("../schema/0003_audit_gaps.sql"),
    ),
    (
        4,
        "0004_identifier_collation.sql",
        include_str!("../schema/0004_identifier_collation.sql"),
    ),
    (
        5,
        "0005_gap_cause.sql",
        include_str!("../schema/0005_gap_cause.sql"),
    ),
    (
        6,
        "0006_context_history.sql",
        include_str!("../schema/0006_context_history.sql"),
    ),
    (
        7,
        "0007_read_api.sql",
        include_str!("../schema/0007_read_api.sql"),
    ),
    (
        8,
        "0008_hash_chain.sql",
        include_str!("../schema/0008_hash_chain.sql"),
    ),
    (
        9,
        "0009_partitions.sql",
        include_str!("../schema/0009_partitions.sql"),
    ),
    (
        10,
        "0010_archives.sql",
        include_str!("../schema/0010_archives.sql"),
    ),
    (
        11,
        "0011_suspect_gaps.sql",
        include_str!("../schema/0011_suspect_gaps.sql"),
    ),
];

/// Arbitrary but fixed key of the advisory lock that serialises migrations.
const LOCK_KEY: i64 = 0x6364_6361_7564_6974; // "cdcaudit"

/// Applies the migrations not yet applied; returns the names of those it applied.
pub fn migrate(client: &mut postgres::Client) -> Result<Vec<&'static str>, postgres::Error> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])?;
    let result = apply(client);
    let unlock = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]);
    let applied = result?;
    unlock?;
    Ok(applied)
}

/// Applies the migrations on a connection of `pool`; an error says what PostgreSQL said.
pub fn with_pool(pool: &Pool) -> Result<Vec<&'static str>, String> {
    let mut conn = pool
        .get()
        .map_err(|e| format!("cannot connect to the database to migrate: {e}"))?;
    migrate(&mut conn).map_err(|e| format!("migration failed: {}", with_causes(&e)))
}

/// `cdc-audit migrate`: applies what is not yet applied and says how many.
pub fn command(config: &Config) -> Result<String, String> {
    let pool = sink::pool(&config.database_url, 1, config.database_ca_file.as_deref())?;
    let applied = with_pool(&pool)?;
    Ok(format!(
        "{} migrations applied ({} known)",
        applied.len(),
        MIGRATIONS.len()
    ))
}

fn apply(client: &mut postgres::Client) -> Result<Vec<&'static str>, postgres::Error> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS cdc_audit_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let done = client
            .query_opt(
                "SELECT 1 FROM cdc_audit_migrations WHERE version = $1",
                &[version],
            )?
            .is_some();
        if done {
            continue;
        }
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO cdc_audit_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )?;
        tx.commit()?;
        log::info!("applied migration {name}");
        applied.push(*name);
    }
    Ok(applied)
}
