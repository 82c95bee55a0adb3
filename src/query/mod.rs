//! Reading the trail: a record's history, a table as of a moment, a source transaction, the
//! transactions of a context field, a page of changes, the tables. Each answer comes from one SQL
//! function of `schema/0006_context_history.sql` or `0007_read_api.sql`, with the user's input as
//! parameters (never as query text), so the CLI, the read API and any SQL client get the same
//! answer.

pub mod cli;

use postgres::Client;
use serde_json::{json, Value};

/// A question the trail could not answer, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub message: String,
    pub kind: ErrorKind,
}

/// Whose the fault is: the question's (HTTP 400), the database's availability (503), or ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    Unavailable,
    Internal,
}

impl QueryError {
    pub fn invalid(message: impl Into<String>) -> QueryError {
        QueryError {
            message: message.into(),
            kind: ErrorKind::Invalid,
        }
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<postgres::Error> for QueryError {
    fn from(e: postgres::Error) -> Self {
        let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
        if code == "42883" || code == "42P01" {
            return QueryError {
                message: format!(
                    "{}: is this database migrated? (cdc-audit migrate)",
                    e.as_db_error().map_or("", |db| db.message())
                ),
                kind: ErrorKind::Unavailable,
            };
        }
        let kind = match code.get(..2) {
            // Data exceptions: what the question said (an unknown table, a bad key or time).
            Some("22") => ErrorKind::Invalid,
            // Connections, resources, operator intervention (a statement timeout).
            Some("08" | "53" | "57") | None => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        };
        let message = match e.as_db_error() {
            Some(db) => match db.hint() {
                Some(hint) => format!("{} ({hint})", db.message()),
                None => db.message().to_string(),
            },
            None => crate::sink::with_causes(&e),
        };
        QueryError { message, kind }
    }
}

/// Most changes one history answer holds.
pub const MAX_LIMIT: i64 = 100_000;

/// A key as the user gave it: a JSON object, or one key column's bare JSON value.
pub fn parse_key(text: &str) -> Result<Value, QueryError> {
    serde_json::from_str::<Value>(text.trim())
        .ok()
        .filter(|v| !v.is_null() && !v.is_array())
        .ok_or_else(|| {
            QueryError::invalid(format!(
                "KEY {text:?} is not JSON of a key: give the key as a JSON object, such as \
                 '{{\"id\": 1004}}', or one key column's value, such as 1004 or '\"A-17\"'"
            ))
        })
}

/// Reads `text` as a time, as PostgreSQL reads a timestamptz (ISO 8601 and its relatives; no
/// zone means UTC); the error names `what`.
pub fn parse_time(client: &mut Client, what: &str, text: &str) -> Result<String, QueryError> {
    let parsed = client.query_one("SELECT to_jsonb($1::text::timestamptz) #>> '{}'", &[&text]);
    parsed
        .map(|row| row.get(0))
        .map_err(|e| match QueryError::from(e) {
            e if e.kind == ErrorKind::Invalid => QueryError::invalid(format!(
                "{what} {text:?} is not a time: give one such as 2026-11-29T12:00:00Z, \
             '2026-11-29 12:00:00+01' or 2026-11-29"
            )),
            other => other,
        })
}

/// Answers in UTC, whatever the server's or role's time zone.
pub fn prepare(client: &mut Client) -> Result<(), QueryError> {
    client.batch_execute("SET TIME ZONE 'UTC'")?;
    Ok(())
}

/// Rows of a query that selects one jsonb, as JSON values.
fn json_rows(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<Value>, QueryError> {
    client
        .query(sql, params)?
        .iter()
        .map(|row| from_json(&row.get::<_, String>(0)))
        .collect()
}

/// A record's changes, the last `limit` of them, in source order.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub table: String,
    pub key: Value,
    /// All the record's changes, of which `changes` are the last.
    pub total: i64,
    pub changes: Vec<Value>,
}

pub fn history(
    client: &mut Client,
    table: &str,
    key: &Value,
    limit: i64,
) -> Result<History, QueryError> {
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(QueryError::invalid(format!(
            "limit {limit} is out of range: 1 to {MAX_LIMIT}"
        )));
    }
    let resolved = resolve(client, table)?;
    let key_text = key.to_string();
    let rows = client.query(
        "SELECT row::text, total FROM ( \
             SELECT to_jsonb(h) - 'ordinality' AS row, h.ordinality AS n, \
                    count(*) OVER () AS total \
               FROM audit_history($1, $2::text::jsonb) WITH ORDINALITY AS h \
              ORDER BY h.ordinality DESC LIMIT $3) last ORDER BY n",
        &[&resolved, &key_text, &limit],
    )?;
    let total = rows.first().map_or(0, |r| r.get(1));
    let changes = rows
        .iter()
        .map(|r| from_json(&r.get::<_, String>(0)))
        .collect::<Result<_, _>>()?;
    // The key as stored: a single column's bare value named with its column.
    let key = client.query_one(
        "SELECT audit_key(r.source_database, r.source_schema, r.source_table, $2::text::jsonb)::text \
           FROM audit_resolve_table($1) r",
        &[&resolved, &key_text],
    )?;
    Ok(History {
        table: resolved,
        key: from_json(&key.get::<_, String>(0))?,
        total,
        changes,
    })
}

impl History {
    /// The answer as the CLI's `--format json` and the API give it.
    pub fn to_json(&self) -> Value {
        json!({"table": self.table, "key": self.key, "total": self.total, "changes": self.changes})
    }
}

fn from_json(text: &str) -> Result<Value, QueryError> {
    serde_json::from_str(text).map_err(|e| QueryError {
        message: format!("PostgreSQL sent JSON this cannot read: {e}"),
        kind: ErrorKind::Internal,
    })
}

/// The one table a name means (qualified, or an unambiguous suffix).
pub fn resolve(client: &mut Client, table: &str) -> Result<String, QueryError> {
    let row = client.query_one("SELECT qualified FROM audit_resolve_table($1)", &[&table])?;
    Ok(row.get(0))
}

/// A table as the trail says it was at a moment.
#[derive(Debug, Clone, PartialEq)]
pub struct AsOf {
    pub table: String,
    pub at: String,
    /// From when the reconstruction is reliable, and on what it rests: `truncate`, `snapshot`
    /// or `none`.
    pub reliable_from: Option<String>,
    pub basis: String,
    /// Holes Kafka left in the table's topics (`audit_gaps`).
    pub gaps: i64,
    pub rows: Vec<Value>,
}

impl AsOf {
    pub fn to_json(&self) -> Value {
        json!({
            "table": self.table, "at": self.at, "reliable_from": self.reliable_from,
            "basis": self.basis, "gaps": self.gaps, "rows": self.rows
        })
    }
}

pub fn as_of(
    client: &mut Client,
    table: &str,
    at: &str,
    key: Option<&Value>,
) -> Result<AsOf, QueryError> {
    let at = parse_time(client, "--at", at)?;
    let resolved = resolve(client, table)?;
    let basis = client.query_one(
        "SELECT to_jsonb(b.reliable_from) #>> '{}', b.basis, b.gaps \
           FROM audit_as_of_basis($1, $2::text::timestamptz) b",
        &[&resolved, &at],
    )?;
    let key_text = key.map(Value::to_string);
    let rows = json_rows(
        client,
        "SELECT to_jsonb(r)::text FROM audit_as_of($1, $2::text::timestamptz, $3::text::jsonb) r",
        &[&resolved, &at, &key_text],
    )?;
    Ok(AsOf {
        table: resolved,
        at,
        reliable_from: basis.get(0),
        basis: basis.get(1),
        gaps: basis.get(2),
        rows,
    })
}

/// Everything one source transaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub id: String,
    pub changes: Vec<Value>,
}

impl Transaction {
    pub fn to_json(&self) -> Value {
        json!({"transaction": self.id, "changes": self.changes})
    }
}

pub fn transaction(client: &mut Client, id: &str) -> Result<Transaction, QueryError> {
    let changes = json_rows(
        client,
        "SELECT to_jsonb(t)::text FROM audit_transaction($1) t",
        &[&id],
    )?;
    Ok(Transaction {
        id: id.to_string(),
        changes,
    })
}

/// The transactions whose context has `field` = `value`.
pub fn transactions_by_context(
    client: &mut Client,
    field: &str,
    value: &str,
) -> Result<Vec<Value>, QueryError> {
    json_rows(
        client,
        "SELECT to_jsonb(t)::text FROM audit_transactions_by_context($1, $2) t",
        &[&field, &value],
    )
}

/// What a search of the changes asks; `None` is any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Search {
    pub table: Option<String>,
    pub key: Option<Value>,
    pub actor: Option<String>,
    pub operation: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub transaction: Option<String>,
    /// The cursor: only changes older than (with an id below) this one.
    pub before: Option<i64>,
    pub limit: i64,
}

/// Most changes one page of a search holds.
pub const MAX_PAGE: i64 = 1000;

/// A page of changes, newest first, and the cursor of the next page when there may be one.
pub fn changes(client: &mut Client, search: &Search) -> Result<Value, QueryError> {
    if !(1..=MAX_PAGE).contains(&search.limit) {
        return Err(QueryError::invalid(format!(
            "limit {} is out of range: 1 to {MAX_PAGE}",
            search.limit
        )));
    }
    let from = search
        .from
        .as_deref()
        .map(|t| parse_time(client, "from", t))
        .transpose()?;
    let to = search
        .to
        .as_deref()
        .map(|t| parse_time(client, "to", t))
        .transpose()?;
    let key = search.key.as_ref().map(Value::to_string);
    let limit = search.limit as i32;
    let rows = json_rows(
        client,
        "SELECT to_jsonb(c)::text FROM audit_changes($1, $2::text::jsonb, $3, $4, \
             $5::text::timestamptz, $6::text::timestamptz, $7, $8, $9) c",
        &[
            &search.table,
            &key,
            &search.actor,
            &search.operation,
            &from,
            &to,
            &search.transaction,
            &search.before,
            &limit,
        ],
    )?;
    let next = (rows.len() as i64 == search.limit)
        .then(|| rows.last().and_then(|r| r.get("id")).cloned())
        .flatten();
    Ok(json!({"changes": rows, "next_cursor": next}))
}

/// Each table the trail holds, with its number of row changes and the first and last of them.
pub fn table_summary(client: &mut Client) -> Result<Vec<Value>, QueryError> {
    json_rows(
        client,
        "SELECT to_jsonb(t)::text FROM audit_table_summary() t",
        &[],
    )
}

/// The tables the trail holds row changes of, by qualified name.
pub fn tables(client: &mut Client) -> Result<Vec<String>, QueryError> {
    let rows = client.query("SELECT qualified FROM audit_tables() ORDER BY 1", &[])?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_a_json_object_or_one_bare_value() {
        assert_eq!(
            parse_key(r#"{"id": 1004}"#),
            Ok(serde_json::json!({"id": 1004}))
        );
        assert_eq!(parse_key("1004"), Ok(serde_json::json!(1004)));
        assert_eq!(parse_key(r#""A-17""#), Ok(serde_json::json!("A-17")));
        for bad in [r#"{"id": 10"#, "A-17", "", "null", "[1, 2]"] {
            let e = parse_key(bad).unwrap_err();
            assert!(e.message.contains("is not JSON of a key"), "{bad}: {e}");
            assert_eq!(e.kind, ErrorKind::Invalid);
        }
    }
}
