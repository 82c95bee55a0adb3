//! `cdc-audit rejections`: look at stored rejections, replay them through the current transform
//! and settings (after a fix or a configuration change), or purge them. A replayed rejection's
//! row is written and the rejection deleted in one transaction; the unique Kafka coordinates of
//! the audit table make a second write of the same offset impossible.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Subcommand;
use postgres::{Client, Transaction};

use crate::chain::{self, Kind};
use crate::config::{self, rules::Rules};
use crate::sink::{
    self, copy_rows, Action, Amendment, ById, SinkError, AUDIT, REJECTIONS, TRANSACTIONS,
};
use crate::transform::schemas::{ids, SchemaCache};
use crate::transform::transform_with;
use crate::types::{Message, Outcome};

#[derive(Subcommand)]
pub enum Command {
    /// List stored rejections, oldest first.
    List {
        #[command(flatten)]
        select: Select,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one rejection whole: coordinates, reason, error, key, headers and value.
    Show { id: i64 },
    /// Run rejections through the current transform and settings (after a fix or a settings
    /// change) and write, exactly once, what now becomes an audit row.
    Replay {
        #[command(flatten)]
        select: Select,
        /// Say what would happen, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete rejections (needs --yes).
    Purge {
        #[command(flatten)]
        select: Select,
        /// Every rejection.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        yes: bool,
    },
}

/// Which rejections: all given filters apply.
#[derive(clap::Args)]
pub struct Select {
    /// Rejection id (repeatable).
    #[arg(long = "id")]
    ids: Vec<i64>,
    /// not_json, not_a_change_event, unknown_operation, invalid_field, invalid_key, database_refused,
    /// schema_not_found, undecodable
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    topic: Option<String>,
    /// Rejected before this time, e.g. 2026-01-31 or "2026-01-31 12:00+00".
    #[arg(long)]
    before: Option<String>,
}

impl Select {
    fn selection(&self) -> Selection {
        Selection {
            ids: self.ids.clone(),
            reason: self.reason.clone(),
            topic: self.topic.clone(),
            before: self.before.clone(),
        }
    }
}

/// Runs one `cdc-audit rejections` command against the database the settings name.
pub fn command(raw: &BTreeMap<String, String>, command: &Command) -> Result<ExitCode, String> {
    let mut client = sink::connect_with_settings(raw)?;
    match command {
        Command::List { select, limit } => {
            print!("{}", list(&mut client, &select.selection(), *limit)?)
        }
        Command::Show { id } => print!("{}", show(&mut client, *id)?),
        Command::Replay { select, dry_run } => {
            let rules = config::rules_from_settings(raw).map_err(|e| e.to_string())?;
            let mut schemas = crate::transform::inspect::schema_cache(raw)?;
            let done = replay(
                &mut client,
                &select.selection(),
                &rules,
                &mut schemas,
                *dry_run,
            )?;
            println!(
                "{}{} written, {} skipped, {} still rejected",
                if *dry_run { "dry run: " } else { "" },
                done.written,
                done.skipped,
                done.still_rejected
            );
        }
        Command::Purge { select, all, yes } => {
            if !yes {
                return Err("purge deletes rejections for good: add --yes".into());
            }
            println!(
                "{} rejections deleted",
                purge(&mut client, &select.selection(), *all)?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Which rejections a command applies to.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    pub ids: Vec<i64>,
    pub reason: Option<String>,
    pub topic: Option<String>,
    /// Only those rejected before this time (anything PostgreSQL reads as a timestamptz).
    pub before: Option<String>,
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.reason.is_none()
            && self.topic.is_none()
            && self.before.is_none()
    }

    /// A WHERE clause with its parameters ($1..$4; unused ones are NULL).
    fn clause(&self) -> &'static str {
        "(cardinality($1::bigint[]) = 0 OR id = ANY($1)) AND ($2::text IS NULL OR reason = $2) \
         AND ($3::text IS NULL OR kafka_topic = $3) AND ($4::text IS NULL OR rejected_at < $4::timestamptz)"
    }
}

fn query(
    client: &mut Client,
    columns: &str,
    sel: &Selection,
    tail: &str,
) -> Result<Vec<postgres::Row>, String> {
    let sql = format!(
        "SELECT {columns} FROM audit_rejections WHERE {} {tail}",
        sel.clause()
    );
    client
        .query(&sql, &[&sel.ids, &sel.reason, &sel.topic, &sel.before])
        .map_err(|e| e.to_string())
}

pub fn list(client: &mut Client, sel: &Selection, limit: i64) -> Result<String, String> {
    let rows = query(
        client,
        "id, to_char(rejected_at, 'YYYY-MM-DD HH24:MI:SS'), kafka_topic || '[' || kafka_partition || ']@' || kafka_offset, reason, error",
        sel,
        &format!("ORDER BY id LIMIT {}", limit.max(1)),
    )?;
    let mut out = format!(
        "{:>8}  {:<19}  {:<40}  {:<18}  error\n",
        "id", "rejected at", "kafka", "reason"
    );
    for r in &rows {
        let error: String = r.get(4);
        let short: String = error.chars().take(80).collect();
        let _ = writeln!(
            out,
            "{:>8}  {:<19}  {:<40}  {:<18}  {short}",
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3)
        );
    }
    let _ = writeln!(out, "{} shown", rows.len());
    Ok(out)
}

fn bytes_text(bytes: Option<Vec<u8>>) -> String {
    match bytes {
        None => "(null)".into(),
        Some(b) => match String::from_utf8(b) {
            Ok(s) => s,
            Err(e) => crate::transform::decode::hex(e.as_bytes()),
        },
    }
}

pub fn show(client: &mut Client, id: i64) -> Result<String, String> {
    let sel = Selection {
        ids: vec![id],
        ..Selection::default()
    };
    let rows = query(
        client,
        "id, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp::text, rejected_at::text, reason, error, kafka_key, kafka_value, kafka_headers::text",
        &sel,
        "",
    )?;
    let r = rows
        .first()
        .ok_or_else(|| format!("no rejection with id {id}"))?;
    Ok(format!(
        "id:          {}\nkafka:       {}[{}]@{}\ntimestamp:   {}\nrejected at: {}\nreason:      {}\nerror:       {}\nkey:         {}\nheaders:     {}\nvalue:\n{}\n",
        r.get::<_, i64>(0),
        r.get::<_, String>(1),
        r.get::<_, i32>(2),
        r.get::<_, i64>(3),
        r.get::<_, Option<String>>(4).unwrap_or_default(),
        r.get::<_, String>(5),
        r.get::<_, String>(6),
        r.get::<_, String>(7),
        bytes_text(r.get(8)),
        r.get::<_, Option<String>>(10).unwrap_or_default(),
        bytes_text(r.get(9)),
    ))
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Written as audit or transaction rows; the rejections are gone.
    pub written: usize,
    /// Now skipped (a tombstone, a heartbeat, a table no longer audited); the rejections are gone.
    pub skipped: usize,
    /// Still rejected, by the transform or by PostgreSQL; the rejections stay.
    pub still_rejected: usize,
}

pub fn replay(
    client: &mut Client,
    sel: &Selection,
    rules: &Rules,
    schemas: &mut SchemaCache,
    dry_run: bool,
) -> Result<Replayed, String> {
    let rows = query(
        client,
        "id, kafka_topic, kafka_partition, kafka_offset, (extract(epoch FROM kafka_timestamp) * 1000)::bigint, kafka_key, kafka_value, chain_seq",
        sel,
        "ORDER BY kafka_topic, kafka_partition, kafka_offset",
    )?;
    let mut done = Replayed::default();
    for r in rows {
        let id: i64 = r.get(0);
        let msg = Message {
            topic: r.get::<_, String>(1).into(),
            partition: r.get(2),
            offset: r.get(3),
            timestamp_ms: r.get(4),
            key: r.get::<_, Option<Vec<u8>>>(5).map(Into::into),
            payload: r.get::<_, Option<Vec<u8>>>(6).map(Into::into),
            headers: Vec::new(),
        };
        let seq: Option<i64> = r.get(7);
        let read_with = schemas.lookup(&ids([&msg]), None).map_err(|e| {
            format!(
                "the schema registry does not answer ({}); replayed so far: {done:?}",
                e.0
            )
        })?;
        let outcome = transform_with(&msg, rules, &read_with);
        let target = match &outcome {
            Outcome::Row(row) => Some((AUDIT, row)),
            Outcome::Transaction(row) => Some((TRANSACTIONS, row)),
            Outcome::Skipped(_) => None,
            Outcome::Rejected(rejection) => {
                log::info!(
                    "rejection {id} is still rejected: {}: {}",
                    rejection.kind,
                    rejection.error
                );
                done.still_rejected += 1;
                continue;
            }
        };
        if dry_run {
            if target.is_some() {
                done.written += 1
            } else {
                done.skipped += 1
            }
            continue;
        }
        let result: Result<(), SinkError> = (|| {
            let mut tx = client.transaction()?;
            let time = sink::now_micros(&mut tx)?;
            // The row takes the rejection's link; an amendment says what stands there now.
            let link = match seq {
                Some(seq) => {
                    let found = chained(&mut tx, &[id])?.into_iter().next();
                    Some((seq, found.ok_or_else(|| gone(id))?))
                }
                None => None,
            };
            if let Some((target, row)) = target {
                let suffix = match &link {
                    Some((seq, (_, row))) => {
                        let hash = row.stored.link.as_deref().and_then(|l| l.try_into().ok());
                        chain::suffix(time, *seq, &hash.unwrap_or_default()).to_vec()
                    }
                    None => chain::unlinked_suffix(time).to_vec(),
                };
                copy_rows(
                    &mut tx,
                    target,
                    std::iter::once((&row.bytes[..], &suffix[..])),
                )?;
            }
            // Replayed or purged meanwhile by someone else: write nothing.
            if tx.execute("DELETE FROM audit_rejections WHERE id = $1", &[&id])? != 1 {
                return Err(gone(id));
            }
            if let Some((seq, (group, rejection))) = link {
                sink::amend(
                    &mut tx,
                    &[Amendment {
                        group: &group,
                        topic: &msg.topic,
                        partition: msg.partition,
                        target_seq: Some(seq),
                        target_id: None,
                        action: Action::Replayed,
                        was: rejection.stored.entry,
                        now: target.map(|(_, row)| chain::entry(&row.content, time)),
                        reason: None,
                    }],
                )?;
            }
            tx.commit()?;
            Ok(())
        })();
        match (result, target) {
            (Ok(()), Some(_)) => done.written += 1,
            (Ok(()), None) => done.skipped += 1,
            (Err(e), _) => {
                log::info!("rejection {id} is still refused by PostgreSQL: {e}");
                done.still_rejected += 1;
            }
        }
    }
    Ok(done)
}

fn gone(id: i64) -> SinkError {
    SinkError::Io(std::io::Error::other(format!(
        "rejection {id} was replayed or purged meanwhile"
    )))
}

/// The chained rejections among `ids`, as stored, with the consumer group of their chain.
fn chained(tx: &mut Transaction<'_>, ids: &[i64]) -> Result<Vec<(String, ById)>, SinkError> {
    let rows = sink::stored_by_id(tx, (REJECTIONS, Kind::Rejection), ids, true)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let seq = row.stored.seq.unwrap_or_default();
        let group = sink::chain_group(tx, &row.topic, row.partition, seq)
            .map_err(|e| SinkError::Io(std::io::Error::other(e)))?;
        out.push((group, row));
    }
    Ok(out)
}

/// Deletes the selected rejections; refuses an empty selection (use `--all`). The chain keeps
/// each one's link: an amendment records that it was purged.
pub fn purge(client: &mut Client, sel: &Selection, all: bool) -> Result<u64, String> {
    if sel.is_empty() && !all {
        return Err("purge needs --id, --reason, --topic, --before or --all".into());
    }
    let ids: Vec<i64> = query(client, "id", sel, "ORDER BY id")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let result: Result<u64, SinkError> = (|| {
        let mut tx = client.transaction()?;
        let mut deleted = 0;
        for ids in ids.chunks(1000) {
            let stored = chained(&mut tx, ids)?;
            let amendments: Vec<Amendment<'_>> = stored
                .iter()
                .map(|(group, r)| Amendment {
                    group,
                    topic: &r.topic,
                    partition: r.partition,
                    target_seq: r.stored.seq,
                    target_id: None,
                    action: Action::Purged,
                    was: r.stored.entry,
                    now: None,
                    reason: None,
                })
                .collect();
            sink::amend(&mut tx, &amendments)?;
            deleted += tx.execute("DELETE FROM audit_rejections WHERE id = ANY($1)", &[&ids])?;
        }
        tx.commit()?;
        Ok(deleted)
    })();
    result.map_err(|e| e.to_string())
}
