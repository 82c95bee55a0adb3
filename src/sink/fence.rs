//! One batch's transaction, fenced by its partition's stored position: lock and check the
//! position, COPY the rows (splitting under savepoints to isolate a refused row), store the
//! rejections and the holes Kafka left, move the position, commit. Everything else that reads or
//! writes `audit_positions` is here too.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use postgres::types::{ToSql, Type};
use postgres::Transaction;

use super::connect::Pool;
use super::error::{ErrorClass, SinkError};
use crate::pgcopy;
use crate::transform::{AUDIT_COLUMNS, TRANSACTION_COLUMNS};
use crate::types::{
    Batch, Gap, GapCause, Message, Outcome, RejectKind, Rejection, Skip, Tp, Transformed,
};

/// How a batch's transaction ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Committed up to `next`: `rows` new audit rows, `transactions` transaction events, the
    /// kinds of the new rejections and skips, `skipped` messages that were already written, and
    /// the offsets Kafka did not deliver (recorded in `audit_gaps`).
    Committed {
        next: i64,
        missing: Vec<Gap>,
        rows: usize,
        transactions: usize,
        rejected: Vec<RejectKind>,
        skips: Vec<Skip>,
        skipped: usize,
    },
    /// The stored position is behind the batch's start: the batch does not connect.
    Behind { stored: i64 },
}

/// A COPY target: the table and its column list.
pub type Target = (&'static str, &'static str);
pub const AUDIT: Target = ("audit_logging", AUDIT_COLUMNS);
pub const TRANSACTIONS: Target = ("audit_transactions", TRANSACTION_COLUMNS);

/// Encoded rows for one target, with the message each came from.
type Rows<'a> = Vec<(&'a Message, &'a [u8])>;

/// Writes one batch in one transaction, fenced by the stored position of its partition.
/// With `isolate`, rows PostgreSQL refuses are found by splitting and stored as rejections.
pub fn write_batch(
    client: &mut postgres::Client,
    group: &str,
    t: &Transformed,
    isolate: bool,
) -> Result<Written, SinkError> {
    let batch = &t.batch;
    let topic: &str = &batch.tp.topic;
    let partition = batch.tp.partition;
    let first = batch.messages.first().map_or(batch.end, |m| m.offset);
    let from = batch.start.unwrap_or(first);

    // Typed statements go out with their parameters in one round trip; untyped ones are
    // prepared first, a second round trip each on every batch.
    let mut tx = client.transaction()?;
    let key = || position_key(&group, &topic, &partition);
    let lock = "SELECT next_offset FROM audit_positions \
                WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR UPDATE";
    let stored: i64 = match tx.query_typed_opt(lock, &key())? {
        Some(row) => row.get(0),
        None => {
            tx.execute_typed(
                "INSERT INTO audit_positions (consumer_group, topic, partition, next_offset) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[key(), vec![(&from, Type::INT8)]].concat(),
            )?;
            // Either our row, or one a concurrent owner committed first: lock whichever it is.
            tx.query_typed_one(lock, &key())?.get(0)
        }
    };
    if stored >= batch.end {
        // Everything here is already written (a redelivery, or an owner that lost the partition).
        return Ok(Written::Committed {
            next: stored,
            missing: Vec::new(),
            rows: 0,
            transactions: 0,
            rejected: Vec::new(),
            skips: Vec::new(),
            skipped: batch.messages.len(),
        });
    }
    if stored < from {
        return Ok(Written::Behind { stored });
    }

    // Only messages at or past the stored position are new.
    let skipped = batch.messages.iter().filter(|m| m.offset < stored).count();
    let (mut rows, mut transactions): (Rows<'_>, Rows<'_>) = (Vec::new(), Vec::new());
    let mut rejections: Vec<(&Message, Rejection)> = Vec::new();
    let mut skips = Vec::new();
    for (msg, outcome) in batch.messages.iter().zip(&t.outcomes).skip(skipped) {
        match outcome {
            Outcome::Row(row) => rows.push((msg, &row.bytes)),
            Outcome::Transaction(bytes) => transactions.push((msg, bytes)),
            Outcome::Rejected(r) => rejections.push((msg, r.clone())),
            Outcome::Skipped(skip) => skips.push(*skip),
        }
    }
    for (target, list) in [(AUDIT, &mut rows), (TRANSACTIONS, &mut transactions)] {
        if !isolate {
            copy_rows(&mut tx, target, list.iter().map(|(_, b)| *b))?;
            continue;
        }
        let refused = copy_isolating(&mut tx, target, list)?;
        for &(i, ref error) in refused.iter().rev() {
            let (msg, _) = list.remove(i);
            let kind = RejectKind::DatabaseRefused;
            rejections.push((
                msg,
                Rejection {
                    kind,
                    error: error.clone(),
                },
            ));
        }
    }
    rejections.sort_by_key(|(m, _)| m.offset);
    for (msg, rejection) in &rejections {
        insert_rejection(&mut tx, msg, rejection)?;
    }
    let missing = gaps(missing_offsets(stored, batch), batch.log_start);
    for gap in &missing {
        let cause = gap.cause.map(GapCause::as_str);
        tx.execute_typed(
            "INSERT INTO audit_gaps (consumer_group, kafka_topic, kafka_partition, first_offset, \
             end_offset, cause) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                key(),
                vec![
                    (&gap.offsets.start, Type::INT8),
                    (&gap.offsets.end, Type::INT8),
                    (&cause, Type::TEXT),
                ],
            ]
            .concat(),
        )?;
    }
    tx.execute_typed(
        "UPDATE audit_positions SET next_offset = $4, updated_at = now() \
         WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        &[key(), vec![(&batch.end, Type::INT8)]].concat(),
    )?;
    tx.commit()?;
    Ok(Written::Committed {
        next: batch.end,
        missing,
        rows: rows.len(),
        transactions: transactions.len(),
        rejected: rejections.iter().map(|(_, r)| r.kind).collect(),
        skips,
        skipped,
    })
}

/// The runs of offsets from `from` to the batch's last message that Kafka did not deliver:
/// retention or compaction removed them, or they were an aborted transaction's. A single missing
/// offset is the commit marker of a transaction, which consumers never see, and is not counted.
fn missing_offsets(from: i64, batch: &Batch) -> Vec<Range<i64>> {
    let mut next = from;
    let mut missing = Vec::new();
    for m in batch.messages.iter().filter(|m| m.offset >= from) {
        if m.offset > next + 1 {
            missing.push(next..m.offset);
        }
        next = m.offset + 1;
    }
    missing
}

/// The missing runs, each split at the partition's first offset when it is known: what lies
/// below it retention removed.
fn gaps(missing: Vec<Range<i64>>, log_start: Option<i64>) -> Vec<Gap> {
    missing
        .into_iter()
        .flat_map(|r| match log_start {
            None => vec![(r, None)],
            Some(first) => {
                let split = first.clamp(r.start, r.end);
                vec![
                    (r.start..split, Some(GapCause::Retention)),
                    (split..r.end, Some(GapCause::NotDelivered)),
                ]
            }
        })
        .filter(|(offsets, _)| !offsets.is_empty())
        .map(|(offsets, cause)| Gap { offsets, cause })
        .collect()
}

/// The stored positions of these partitions' topics for `group`: where each partition's next
/// batch starts.
pub fn stored_positions(pool: &Pool, group: &str, tps: &[Tp]) -> Result<HashMap<Tp, i64>, String> {
    let mut conn = pool.get().map_err(|e| e.to_string())?;
    let topics: Vec<&str> = tps.iter().map(|tp| &*tp.topic).collect();
    let rows = conn
        .query(
            "SELECT topic, partition, next_offset FROM audit_positions \
             WHERE consumer_group = $1 AND topic = ANY($2)",
            &[&group, &topics],
        )
        .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| {
            let tp = Tp {
                topic: Arc::from(r.get::<_, &str>(0)),
                partition: r.get(1),
            };
            (tp, r.get(2))
        })
        .collect())
}

/// The parameters naming a row of `audit_positions`, typed.
fn position_key<'a>(
    group: &'a &str,
    topic: &'a &str,
    partition: &'a i32,
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    vec![
        (group, Type::TEXT),
        (topic, Type::TEXT),
        (partition, Type::INT4),
    ]
}

/// How much COPY data goes to PostgreSQL in one message.
const COPY_CHUNK: usize = 64 * 1024;

pub fn copy_rows<'a>(
    tx: &mut Transaction<'_>,
    (table, columns): Target,
    rows: impl Iterator<Item = &'a [u8]>,
) -> Result<(), SinkError> {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut writer = tx.copy_in(&format!(
        "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
    ))?;
    // The writer sends a CopyData message whenever it holds more than 4 KiB, each a trip through
    // the connection and a TLS record: rows go to it in chunks of COPY_CHUNK instead.
    let sent: std::io::Result<()> = (|| {
        let mut chunk = Vec::with_capacity(COPY_CHUNK);
        chunk.extend_from_slice(pgcopy::HEADER);
        for row in rows {
            if chunk.len() + row.len() > COPY_CHUNK && !chunk.is_empty() {
                writer.write_all(&chunk)?;
                chunk.clear();
            }
            chunk.extend_from_slice(row);
        }
        chunk.extend_from_slice(pgcopy::TRAILER);
        writer.write_all(&chunk)
    })();
    match sent {
        Ok(()) => writer.finish().map(|_| ()).map_err(SinkError::Db),
        // Dropping the writer without finish() aborts the COPY; the transaction is rolled back.
        Err(e) => Err(SinkError::from_io(e)),
    }
}

/// Copies rows under savepoints, halving on data errors, and returns the rows refused
/// (index into `rows`, ascending, and the error text).
fn copy_isolating(
    tx: &mut Transaction<'_>,
    target: Target,
    rows: &[(&Message, &[u8])],
) -> Result<Vec<(usize, String)>, SinkError> {
    let mut refused = Vec::new();
    let mut stack = vec![(0usize, rows.len())];
    while let Some((lo, hi)) = stack.pop() {
        if lo >= hi {
            continue;
        }
        let mut sp = tx.savepoint("isolate")?;
        match copy_rows(&mut sp, target, rows[lo..hi].iter().map(|(_, b)| *b)) {
            Ok(()) => sp.commit()?,
            Err(e) if e.class() == ErrorClass::Data => {
                sp.rollback()?;
                if hi - lo == 1 {
                    refused.push((lo, e.to_string()));
                } else {
                    let mid = lo + (hi - lo) / 2;
                    stack.push((mid, hi));
                    stack.push((lo, mid));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

fn insert_rejection(
    tx: &mut Transaction<'_>,
    msg: &Message,
    r: &Rejection,
) -> Result<(), postgres::Error> {
    let timestamp = msg
        .timestamp_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let headers = headers_json(&msg.headers);
    tx.execute(
        "INSERT INTO audit_rejections (kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, \
         kafka_key, kafka_value, kafka_headers, reason, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9)",
        &[
            &&*msg.topic,
            &msg.partition,
            &msg.offset,
            &timestamp,
            &msg.key,
            &msg.payload,
            &headers,
            &r.kind.as_str(),
            &r.error.replace('\0', "\u{FFFD}"),
        ],
    )?;
    Ok(())
}

/// Headers as a JSON array of `[name, value]`; a value that is not UTF-8 is written as `\x` hex.
fn headers_json(headers: &[(String, Option<Vec<u8>>)]) -> Option<String> {
    if headers.is_empty() {
        return None;
    }
    let items: Vec<serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            let value = v.as_ref().map(|bytes| match std::str::from_utf8(bytes) {
                Ok(s) => s.replace('\0', "\u{FFFD}"),
                Err(_) => format!(
                    "\\x{}",
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            });
            serde_json::json!([k.replace('\0', "\u{FFFD}"), value])
        })
        .collect();
    Some(serde_json::Value::Array(items).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_split_at_the_partitions_first_offset() {
        let gap = |offsets: Range<i64>, cause| Gap { offsets, cause };
        let (r, n) = (Some(GapCause::Retention), Some(GapCause::NotDelivered));
        let missing = vec![2..5, 7..9, 12..20];
        assert_eq!(
            gaps(missing.clone(), None),
            [gap(2..5, None), gap(7..9, None), gap(12..20, None)]
        );
        assert_eq!(
            gaps(missing.clone(), Some(8)),
            [gap(2..5, r), gap(7..8, r), gap(8..9, n), gap(12..20, n)]
        );
        assert_eq!(
            gaps(missing.clone(), Some(2)),
            [gap(2..5, n), gap(7..9, n), gap(12..20, n)]
        );
        assert_eq!(
            gaps(missing, Some(20)),
            [gap(2..5, r), gap(7..9, r), gap(12..20, r)]
        );
    }

    #[test]
    fn header_values_that_are_not_utf8_are_hex() {
        let h = headers_json(&[("a".into(), Some(vec![0xff, 0x01])), ("b".into(), None)]).unwrap();
        assert_eq!(h, r#"[["a","\\xff01"],["b",null]]"#);
    }
}
