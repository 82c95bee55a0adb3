//! `cdc-audit erase`: one data subject's personal values replaced by a marker in every audit row
//! of their record (before and after images, key, change detail, context), in one transaction
//! that records each changed row as an amendment of its chain: who erased it, when and why, the
//! entry the link was made with and the entry of what stands there now. The chain still
//! verifies, and `verify` counts those links as erased.
//!
//! Column rules (`CDC_AUDIT_COLUMN_RULES`) that drop, hash or redact at ingest stay the first
//! choice; this is for what was stored before a rule existed, or for a person's request.

use postgres::Client;
use serde_json::Value;

use crate::chain::Kind;
use crate::query;
use crate::sink::{self, Action, Amendment, ById, AUDIT};

/// What an erased value becomes.
pub const MARKER: &str = "[erased]";

/// What an erasure did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Erased {
    /// The record's rows that held a value to erase and now hold the marker.
    pub rows: usize,
    /// The record's rows found.
    pub found: usize,
}

/// Erases `key`'s values (only `columns`, when given) from every row of `table`'s record.
pub fn erase(
    client: &mut Client,
    table: &str,
    key: &str,
    columns: Option<&[String]>,
    reason: &str,
) -> Result<Erased, String> {
    if reason.trim().is_empty() {
        return Err("--reason is empty: say why (a request's reference, a ticket)".into());
    }
    if columns.is_some_and(|c| c.is_empty() || c.iter().any(|c| c.trim().is_empty())) {
        return Err("--columns names no column: give column names, comma-separated".into());
    }
    let key = query::parse_key(key).map_err(|e| e.to_string())?;
    let key_text = key.to_string();
    let mut tx = client.transaction().map_err(|e| sink::with_causes(&e))?;
    let db = |e: postgres::Error| query::QueryError::from(e).to_string();
    let ids: Vec<i64> = tx
        .query(
            "SELECT a.id FROM audit_resolve_table($1) r CROSS JOIN LATERAL audit_record_changes(\
             r.source_database, r.source_schema, r.source_table, \
             audit_key(r.source_database, r.source_schema, r.source_table, $2::text::jsonb)) a \
             ORDER BY a.id",
            &[&table, &key_text],
        )
        .map_err(db)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if ids.is_empty() {
        return Err(format!(
            "the trail holds no changes of {table} with key {key_text}"
        ));
    }
    tx.batch_execute("SET LOCAL cdc_audit.erasing = 'on'")
        .map_err(db)?;
    let before =
        sink::stored_by_id(&mut tx, (AUDIT, Kind::Row), &ids, false).map_err(|e| e.to_string())?;
    let rows = tx
        .query(
            "SELECT id, old_data::text, new_data::text, primary_key::text, change_detail::text, \
             context::text FROM audit_logging WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .map_err(db)?;
    let mut changed = Vec::new();
    for row in &rows {
        let id: i64 = row.get(0);
        let mut values: Vec<Option<Value>> = (1..=5)
            .map(|i| {
                row.get::<_, Option<String>>(i)
                    .and_then(|t| serde_json::from_str(&t).ok())
            })
            .collect();
        let mut any = false;
        for v in values.iter_mut().flatten() {
            any |= redact(v, columns);
        }
        if !any {
            continue;
        }
        let text: Vec<Option<String>> = values
            .iter()
            .map(|v| v.as_ref().map(Value::to_string))
            .collect();
        tx.execute(
            "UPDATE audit_logging SET old_data = $2::text::jsonb, new_data = $3::text::jsonb, \
             primary_key = $4::text::jsonb, change_detail = $5::text::jsonb, \
             context = $6::text::jsonb WHERE id = $1",
            &[&id, &text[0], &text[1], &text[2], &text[3], &text[4]],
        )
        .map_err(db)?;
        changed.push(id);
    }
    if !changed.is_empty() {
        let mut planned = Vec::with_capacity(changed.len());
        let after = sink::stored_by_id(&mut tx, (AUDIT, Kind::Row), &changed, false)
            .map_err(|e| e.to_string())?;
        for ById {
            id,
            topic,
            partition,
            stored: now,
        } in after
        {
            let was = before
                .iter()
                .find(|b| b.id == id)
                .map(|b| b.stored.entry)
                .ok_or("a row changed while it was being erased")?;
            let group = sink::chain_group(&mut tx, &topic, partition, now.seq.unwrap_or(0))?;
            planned.push((group, topic, partition, now.seq, id, was, now.entry));
        }
        let amendments: Vec<Amendment<'_>> = planned
            .iter()
            .map(|(group, topic, partition, seq, id, was, now)| Amendment {
                group,
                topic,
                partition: *partition,
                target_seq: *seq,
                target_id: seq.is_none().then_some(*id),
                action: Action::Erased,
                was: *was,
                now: Some(*now),
                reason: Some(reason),
            })
            .collect();
        sink::amend(&mut tx, &amendments).map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(db)?;
    Ok(Erased {
        rows: changed.len(),
        found: ids.len(),
    })
}

/// Replaces the values of `columns` (all, when `None`) with the marker, at any depth; `true`
/// if anything changed.
pub fn redact(value: &mut Value, columns: Option<&[String]>) -> bool {
    match value {
        Value::Object(map) => {
            let mut any = false;
            for (k, v) in map.iter_mut() {
                let named = columns.is_none_or(|c| c.iter().any(|c| c == k));
                any |= match v {
                    Value::Object(_) | Value::Array(_) if !named || columns.is_none() => {
                        redact(v, columns)
                    }
                    Value::Null => false,
                    Value::String(s) if named && s == MARKER => false,
                    _ if named => {
                        *v = Value::String(MARKER.into());
                        true
                    }
                    _ => false,
                };
            }
            any
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, v| redact(v, columns) | any),
        Value::Null => false,
        Value::String(s) if s == MARKER => false,
        other if columns.is_none() => {
            *other = Value::String(MARKER.into());
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_columns_are_redacted_at_any_depth_and_the_rest_kept() {
        let mut v =
            json!({"id": 7, "email": "a@b", "address": {"email": "c@d", "city": "X"}, "n": null});
        let columns = vec!["email".to_string()];
        assert!(redact(&mut v, Some(&columns)));
        assert_eq!(
            v,
            json!({"id": 7, "email": MARKER, "address": {"email": MARKER, "city": "X"}, "n": null})
        );
        assert!(
            !redact(&mut v, Some(&columns)),
            "erasing twice changes nothing"
        );
    }

    #[test]
    fn without_columns_every_value_is_redacted() {
        let mut v = json!({"id": 7, "tags": ["a", 1], "n": null, "o": {"x": true}});
        assert!(redact(&mut v, None));
        assert_eq!(
            v,
            json!({"id": MARKER, "tags": [MARKER, MARKER], "n": null, "o": {"x": MARKER}})
        );
    }
}
