//! `cdc-audit history`, `as-of`, `transaction` and `tables`: the answers of [`super`] as a
//! readable timeline, or as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use clap::ValueEnum;
use serde_json::Value;

use crate::sink;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    /// db.schema.table (db.table for MySQL and MongoDB), or an unambiguous suffix: customers
    pub table: String,
    /// The key as JSON, '{"id": 1004}', or a single key column's value: 1004, '"A-17"'
    pub key: String,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The last N changes (1 to 100000).
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

#[derive(clap::Args, Debug)]
pub struct AsOfArgs {
    /// db.schema.table, or an unambiguous suffix
    pub table: String,
    /// The moment: 2026-11-29T12:00:00Z, '2026-11-29 12:00+01', 2026-11-29 (no zone: UTC)
    #[arg(long)]
    pub at: String,
    /// Only this record: its key as JSON, or a single key column's value
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct TransactionArgs {
    /// The source transaction's id, as in the trail's transaction_id (a PostgreSQL txId also
    /// finds the "txId:lsn" ids of its transaction block)
    #[arg(required_unless_present = "context")]
    pub id: Option<String>,
    /// Instead, list the transactions whose context has FIELD=VALUE, e.g. request_id=r-17
    #[arg(long, value_name = "FIELD=VALUE", conflicts_with = "id")]
    pub context: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// A connection for reading, its answers in UTC.
fn reader(raw: &BTreeMap<String, String>) -> Result<postgres::Client, String> {
    let mut client = sink::connect_with_settings(raw)?;
    super::prepare(&mut client).map_err(|e| e.to_string())?;
    Ok(client)
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// JSON's text of a value, strings quoted: how a column's value reads in a diff.
fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "(absent)".into(), Value::to_string)
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or("")
}

/// `cdc-audit history`.
pub fn history(raw: &BTreeMap<String, String>, args: &HistoryArgs) -> Result<String, String> {
    let key = super::parse_key(&args.key).map_err(|e| e.to_string())?;
    let mut client = reader(raw)?;
    let h = super::history(&mut client, &args.table, &key, args.limit).map_err(|e| e.message)?;
    if args.format == Format::Json {
        return Ok(pretty(&h.to_json()));
    }
    let mut out = format!("{} {}: ", h.table, h.key);
    match (h.total, h.changes.len() as i64) {
        (0, _) => {
            out.push_str("no changes in the trail");
            return Ok(out);
        }
        (total, shown) if shown < total => {
            let _ = write!(out, "the last {shown} of {total} changes, oldest first");
        }
        (total, _) => {
            let _ = write!(out, "{total} changes, oldest first");
        }
    }
    for change in &h.changes {
        out.push_str("\n\n");
        out.push_str(&timeline_entry(change));
    }
    Ok(out)
}

/// One change of a timeline: when, what, who, in which transaction, and what it changed.
fn timeline_entry(c: &Value) -> String {
    let mut out = format!(
        "{}  {}",
        c.get("change_timestamp")
            .and_then(Value::as_str)
            .unwrap_or("(no source time)"),
        text(c, "operation_type")
    );
    if let Some(actor) = c.get("actor").and_then(Value::as_str) {
        let _ = write!(out, "  by {actor}");
    }
    if let Some(tx) = c.get("transaction_id").and_then(Value::as_str) {
        let _ = write!(out, "  tx {tx}");
    }
    if let Some(context) = c.get("context").filter(|v| !v.is_null()) {
        let _ = write!(out, "\n    context {context}");
    }
    out.push_str(&changes_text(c));
    out
}

/// The lines under a change: each changed column of an update, the image of an insert, read or
/// delete, and the columns Debezium did not send.
fn changes_text(c: &Value) -> String {
    let mut out = String::new();
    match text(c, "operation_type") {
        "UPDATE" => match c.get("changes").and_then(Value::as_object) {
            Some(changes) if !changes.is_empty() => {
                for (column, diff) in changes {
                    let _ = write!(
                        out,
                        "\n    {column}: {} -> {}",
                        shown(diff.get("old")),
                        shown(diff.get("new"))
                    );
                }
            }
            Some(_) => out.push_str("\n    (no column changed value)"),
            None => out.push_str("\n    (the columns it changed are not known)"),
        },
        "DELETE" => {
            let _ = write!(out, "\n    was {}", shown(c.get("old_data")));
        }
        _ => {
            let _ = write!(out, "\n    row {}", shown(c.get("new_data")));
        }
    }
    for column in c
        .get("unavailable_columns")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let _ = write!(out, "\n    {column}: unchanged, not sent");
    }
    out
}

/// `cdc-audit as-of`.
pub fn as_of(raw: &BTreeMap<String, String>, args: &AsOfArgs) -> Result<String, String> {
    let key = args
        .key
        .as_deref()
        .map(super::parse_key)
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut client = reader(raw)?;
    let a =
        super::as_of(&mut client, &args.table, &args.at, key.as_ref()).map_err(|e| e.message)?;
    if args.format == Format::Json {
        return Ok(pretty(&a.to_json()));
    }
    let mut out = format!("{} as of {}: {} rows", a.table, a.at, a.rows.len());
    out.push('\n');
    out.push_str(&basis_text(
        a.reliable_from.as_deref(),
        &a.basis,
        a.gaps,
        &a.at,
    ));
    for row in &a.rows {
        let _ = write!(
            out,
            "\n{}  {}  ({} {})",
            shown(row.get("primary_key")),
            shown(row.get("row_data")),
            text(row, "operation_type"),
            text(row, "changed_at"),
        );
    }
    Ok(out)
}

/// What the reconstruction rests on, in words.
fn basis_text(reliable_from: Option<&str>, basis: &str, gaps: i64, at: &str) -> String {
    let mut out = match (basis, reliable_from) {
        ("truncate", Some(from)) => {
            format!("complete: the table was truncated at {from} and every change since is here")
        }
        ("snapshot", Some(from)) => format!(
            "complete from {from}, when the trail's snapshot of the table was read; every change since is here"
        ),
        _ => format!(
            "not known to be complete: the trail holds no snapshot or truncate of this table before {at}, \
             so rows that did not change since the trail began are missing"
        ),
    };
    if gaps > 0 {
        let _ = write!(
            out,
            "\nwarning: Kafka left {gaps} holes in this table's topic (audit_gaps): changes in them are missing"
        );
    }
    out
}

/// `cdc-audit transaction`.
pub fn transaction(
    raw: &BTreeMap<String, String>,
    args: &TransactionArgs,
) -> Result<String, String> {
    let filter = match args.context.as_deref() {
        Some(pair) => match pair.split_once('=') {
            Some((field, value)) if !field.trim().is_empty() => {
                Some((field.trim().to_string(), value.to_string()))
            }
            _ => {
                return Err(format!(
                    "--context {pair:?} is not FIELD=VALUE: give one such as request_id=r-17"
                ))
            }
        },
        None => None,
    };
    let mut client = reader(raw)?;
    if let Some((field, value)) = filter {
        let found =
            super::transactions_by_context(&mut client, &field, &value).map_err(|e| e.message)?;
        if args.format == Format::Json {
            return Ok(pretty(&Value::Array(found)));
        }
        let mut out = format!("{} transactions with {field}={value}", found.len());
        for t in &found {
            let _ = write!(
                out,
                "\n{}  {}  tx {}  by {}  {}",
                text(t, "change_timestamp"),
                text(t, "source_database"),
                text(t, "transaction_id"),
                t.get("actor").and_then(Value::as_str).unwrap_or("-"),
                shown(t.get("context")),
            );
        }
        return Ok(out);
    }
    let id = args.id.as_deref().unwrap_or_default();
    let t = super::transaction(&mut client, id).map_err(|e| e.message)?;
    if args.format == Format::Json {
        return Ok(pretty(&t.to_json()));
    }
    let Some(first) = t.changes.first() else {
        return Err(format!(
            "no changes of transaction {id:?} in the trail (ids are as in audit_logging.transaction_id)"
        ));
    };
    let mut out = format!("transaction {id}: {} changes", t.changes.len());
    match (
        first.get("complete").and_then(Value::as_bool),
        first.get("expected_events").and_then(Value::as_i64),
        first.get("recorded_events").and_then(Value::as_i64),
    ) {
        (Some(true), Some(expected), _) => {
            let _ = write!(out, ", complete ({expected} of {expected} events)");
        }
        (Some(false), Some(expected), Some(recorded)) => {
            let _ = write!(
                out,
                ", INCOMPLETE: {recorded} of {expected} events recorded"
            );
        }
        _ => out.push_str(", completeness not known (no transaction metadata for it)"),
    }
    let mut contexts: Vec<&Value> = t
        .changes
        .iter()
        .filter_map(|c| c.get("context").filter(|v| !v.is_null()))
        .collect();
    contexts.dedup();
    for context in contexts {
        let _ = write!(out, "\ncontext {context}");
    }
    for c in &t.changes {
        let _ = write!(
            out,
            "\n\n{}  {} {} {}",
            text(c, "change_timestamp"),
            text(c, "operation_type"),
            text(c, "source_table"),
            shown(c.get("primary_key")),
        );
        if let Some(actor) = c.get("actor").and_then(Value::as_str) {
            let _ = write!(out, "  by {actor}");
        }
        out.push_str(&changes_text(c));
    }
    Ok(out)
}

/// `cdc-audit tables`.
pub fn tables(raw: &BTreeMap<String, String>) -> Result<String, String> {
    let mut client = reader(raw)?;
    let tables = super::tables(&mut client).map_err(|e| e.message)?;
    if tables.is_empty() {
        return Ok("the trail holds no row changes yet".into());
    }
    Ok(tables.join("\n"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_update_shows_each_changed_column_and_what_was_not_sent() {
        let change = json!({
            "change_timestamp": "2026-11-29T10:00:00+00:00", "operation_type": "UPDATE",
            "actor": "alice", "transaction_id": "556", "context": {"user": "alice"},
            "changes": {"email": {"old": "a@x", "new": "b@x"}},
            "unavailable_columns": ["bio"]
        });
        assert_eq!(
            timeline_entry(&change),
            "2026-11-29T10:00:00+00:00  UPDATE  by alice  tx 556\n    context {\"user\":\"alice\"}\
             \n    email: \"a@x\" -> \"b@x\"\n    bio: unchanged, not sent"
        );
    }
}
