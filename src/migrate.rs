//! Applies the SQL files of `schema/` in order, once each, recorded in `cdc_audit_migrations`.
//! An advisory lock lets several instances start at once. Also the way in from the consumer
//! cdc-audit replaces: its positions, imported into `audit_positions`.

use std::collections::BTreeMap;

use crate::config::group_id_from_settings;
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
    checked(&mut conn)
}

/// Applies the migrations on `client`, unless the trail there is not cdc-audit's.
fn checked(client: &mut postgres::Client) -> Result<Vec<&'static str>, String> {
    refuse_a_foreign_trail(client)?;
    migrate(client).map_err(|e| format!("migration failed: {}", with_causes(&e)))
}

/// An `audit_logging` that cdc-audit's migrations did not make (the consumer it replaces kept
/// its trail under that name): moved aside by hand, never touched.
fn refuse_a_foreign_trail(client: &mut postgres::Client) -> Result<(), String> {
    let foreign: bool = client
        .query_one(
            "SELECT to_regclass('audit_logging') IS NOT NULL \
                    AND to_regclass('cdc_audit_migrations') IS NULL",
            &[],
        )
        .map_err(|e| {
            format!(
                "cannot look at the database to migrate: {}",
                with_causes(&e)
            )
        })?
        .get(0);
    if foreign {
        return Err(
            "the database has a table audit_logging that cdc-audit's migrations did not \
             make (the consumer cdc-audit replaces?); nothing was changed. Move it aside and \
             migrate again, e.g. CREATE SCHEMA legacy; ALTER TABLE audit_logging SET SCHEMA \
             legacy; ALTER TABLE kafka_offsets SET SCHEMA legacy; then cdc-audit migrate \
             --import-positions-from legacy.kafka_offsets (docs/operations.md, Migrating)"
                .to_string(),
        );
    }
    Ok(())
}

/// `cdc-audit migrate`: applies what is not yet applied and says how many; with `import_from`,
/// then imports the positions kept in that table. It needs only the database's settings (and
/// the group's, to import), not Kafka's: a deployment can migrate before the service starts.
pub fn command(
    raw: &BTreeMap<String, String>,
    import_from: Option<&str>,
) -> Result<String, String> {
    let mut client = sink::connect_with_settings(raw)?;
    let applied = checked(&mut client)?;
    let mut out = format!(
        "{} migrations applied ({} known)",
        applied.len(),
        MIGRATIONS.len()
    );
    if let Some(table) = import_from {
        out.push('\n');
        out.push_str(&import_positions(
            &mut client,
            table,
            group_id_from_settings(raw),
        )?);
    }
    Ok(out)
}

/// `table` (`name` or `schema.name`) quoted, or why it is not a table name.
fn quoted_table(table: &str) -> Result<String, String> {
    let parts: Vec<&str> = table.split('.').collect();
    let plain = |p: &&str| {
        p.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if parts.len() > 2 || !parts.iter().all(plain) {
        return Err(format!(
            "--import-positions-from {table:?}: a table name (letters, digits and _, as \
             name or schema.name) is expected"
        ));
    }
    // As PostgreSQL reads an unquoted name: folded to lower case.
    Ok(parts
        .iter()
        .map(|p| format!("\"{}\"", p.to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join("."))
}

/// Takes the positions of the consumer cdc-audit replaces from `table` (its columns `topic`,
/// `partition` and `offset`, one row per message it processed, written after the message's audit
/// row) into `audit_positions` for `group`: each partition goes on one past its last processed
/// offset, so the switch loses and repeats nothing. In one transaction; refused, with nothing
/// changed, where `group` already has another position for a partition.
pub fn import_positions(
    client: &mut postgres::Client,
    table: &str,
    group: &str,
) -> Result<String, String> {
    let name = quoted_table(table)?;
    let db = |e: postgres::Error| with_causes(&e);
    let mut tx = client.transaction().map_err(db)?;
    // A running instance moves positions in its writing transactions: not while this looks.
    tx.batch_execute("LOCK TABLE audit_positions IN SHARE ROW EXCLUSIVE MODE")
        .map_err(db)?;
    let last = tx
        .query(
            &format!(
                "SELECT topic::text, partition::integer, max(\"offset\")::bigint FROM {name} \
                 WHERE topic IS NOT NULL AND partition IS NOT NULL AND \"offset\" IS NOT NULL \
                 GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            &[],
        )
        .map_err(|e| {
            format!(
                "--import-positions-from {table}: {} (the table needs the columns topic, \
                 partition and offset)",
                with_causes(&e)
            )
        })?;
    if last.is_empty() {
        return Err(format!("{table} holds no positions: nothing imported"));
    }
    let (mut imported, mut there, mut conflicts) = (Vec::new(), 0, Vec::new());
    for row in &last {
        let (topic, partition, offset): (String, i32, i64) = (row.get(0), row.get(1), row.get(2));
        let next = offset.saturating_add(1).max(0);
        let stored: Option<i64> = tx
            .query_opt(
                "SELECT next_offset FROM audit_positions \
                 WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
                &[&group, &topic, &partition],
            )
            .map_err(db)?
            .map(|r| r.get(0));
        match stored {
            Some(n) if n == next => there += 1,
            Some(n) => conflicts.push(format!(
                "{topic}[{partition}] is at {n}, {table} says {next}"
            )),
            None => {
                tx.execute(
                    "INSERT INTO audit_positions (consumer_group, topic, partition, next_offset) \
                     VALUES ($1, $2, $3, $4)",
                    &[&group, &topic, &partition, &next],
                )
                .map_err(db)?;
                imported.push(format!("{topic}[{partition}] from offset {next}"));
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(format!(
            "group {group} already has other positions in audit_positions: {}; nothing imported",
            conflicts.join(", ")
        ));
    }
    tx.commit().map_err(db)?;
    let mut out = format!(
        "imported {} positions from {table} for group {group} ({there} already there)",
        imported.len()
    );
    for line in imported {
        out.push_str("\n  ");
        out.push_str(&line);
    }
    Ok(out)
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
