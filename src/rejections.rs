//! `cdc-audit rejections`: look at stored rejections, replay them through the current transform
//! and settings (after a fix or a configuration change), or purge them. A replayed rejection's
//! row is written and the rejection deleted in one transaction; the unique Kafka coordinates of
//! the audit table make a second write of the same offset impossible.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Subcommand;
use postgres::Client;

use crate::config::{self, rules::Rules};
use crate::sink::{self, copy_rows, SinkError, AUDIT, TRANSACTIONS};
use crate::transform::transform;
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
    /// not_json, not_a_change_event, unknown_operation, invalid_field, invalid_key, database_refused
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
            let done = replay(&mut client, &select.selection(), &rules, *dry_run)?;
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
    dry_run: bool,
) -> Result<Replayed, String> {
    let rows = query(
        client,
        "id, kafka_topic, kafka_partition, kafka_offset, (extract(epoch FROM kafka_timestamp) * 1000)::bigint, kafka_key, kafka_value",
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
            key: r.get(5),
            payload: r.get(6),
            headers: Vec::new(),
        };
        let outcome = transform(&msg, rules);
        let target = match &outcome {
            Outcome::Row(row) => Some((AUDIT, row.bytes.as_slice())),
            Outcome::Transaction(bytes) => Some((TRANSACTIONS, bytes.as_slice())),
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
            if let Some((table, bytes)) = target {
                copy_rows(&mut tx, table, std::iter::once(bytes))?;
            }
            tx.execute("DELETE FROM audit_rejections WHERE id = $1", &[&id])?;
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

/// Deletes the selected rejections; refuses an empty selection (use `--all`).
pub fn purge(client: &mut Client, sel: &Selection, all: bool) -> Result<u64, String> {
    if sel.is_empty() && !all {
        return Err("purge needs --id, --reason, --topic, --before or --all".into());
    }
    let sql = format!("DELETE FROM audit_rejections WHERE {}", sel.clause());
    client
        .execute(&sql, &[&sel.ids, &sel.reason, &sel.topic, &sel.before])
        .map_err(|e| e.to_string())
}
