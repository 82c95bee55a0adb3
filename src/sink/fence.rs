//! One batch's transaction, fenced by its partition's stored position: lock and check the
//! position, link the new rows into the partition's hash chain, COPY them (splitting under
//! savepoints to isolate a refused row), store the rejections and the holes Kafka left, move the
//! position and the chain's head, commit. Everything else that reads or writes
//! `audit_positions` is here too.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::types::{ToSql, Type};
use postgres::Transaction;

use super::connect::Pool;
use super::error::{ErrorClass, SinkError};
use crate::chain::{self, Hash, Kind, Suffix, CHAIN_FIELDS};
use crate::pgcopy::{self, Tuple};
use crate::transform::{AUDIT_COLUMNS, TRANSACTION_COLUMNS};
use crate::types::{
    Batch, Gap, GapCause, Message, Outcome, RejectKind, Rejection, Relay, Skip, Tp, Transformed,
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

/// A COPY target: the table, its own columns, and the column that says when a row was written;
/// the chain's `chain_seq` and `chain_hash` follow.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub table: &'static str,
    pub columns: &'static str,
    pub time: &'static str,
}

pub const AUDIT: Target = Target {
    table: "audit_logging",
    columns: AUDIT_COLUMNS,
    time: "ingested_at",
};
pub const TRANSACTIONS: Target = Target {
    table: "audit_transactions",
    columns: TRANSACTION_COLUMNS,
    time: "ingested_at",
};
pub const REJECTIONS: Target = Target {
    table: "audit_rejections",
    columns:
        "kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, kafka_key, kafka_value, \
              kafka_headers, reason, error",
    time: "rejected_at",
};
pub const GAPS: Target = Target {
    table: "audit_gaps",
    columns: "consumer_group, kafka_topic, kafka_partition, first_offset, end_offset, cause",
    time: "detected_at",
};

/// Encoded rows for one target, with the message each came from and its chain fields.
type Rows<'a> = Vec<(&'a Message, &'a [u8], Suffix)>;

/// A partition's chain where a transaction found it: the last link, and the time the
/// transaction writes its rows at (PostgreSQL's `now()`, in its microseconds since 2000).
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub seq: i64,
    pub link: Hash,
    pub time: i64,
}

impl Head {
    /// Appends an entry with this content: the chain fields of its row.
    pub fn append(&mut self, content: &Hash) -> Suffix {
        self.seq += 1;
        self.link = chain::link(&self.link, self.seq, &chain::entry(content, self.time));
        chain::suffix(self.time, self.seq, &self.link)
    }
}

/// The transaction's time, `now()`, in PostgreSQL's microseconds since 2000 (as binary COPY
/// sends a timestamptz).
macro_rules! now_sql {
    () => {
        "(extract(epoch FROM now()) * 1000000)::int8 - 946684800000000"
    };
}

/// The transaction's time: what its chained rows say they were written at.
pub fn now_micros(tx: &mut Transaction<'_>) -> Result<i64, postgres::Error> {
    Ok(tx
        .query_typed_one(concat!("SELECT ", now_sql!()), &[])?
        .get(0))
}

/// The statement that locks a partition's position and chain head, with the transaction's time.
const LOCK: &str = concat!(
    "SELECT next_offset, chain_seq, chain_head, ",
    now_sql!(),
    " FROM audit_positions WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR UPDATE"
);

/// Locks the partition's row of `audit_positions`, creating it at `from` if there is none:
/// the stored position and the chain's head.
pub fn lock_position(
    tx: &mut Transaction<'_>,
    group: &str,
    tp: (&str, i32),
    from: i64,
) -> Result<(i64, Head), postgres::Error> {
    let (topic, partition) = tp;
    let key = || position_key(&group, &topic, &partition);
    let row = match tx.query_typed_opt(LOCK, &key())? {
        Some(row) => row,
        None => {
            tx.execute_typed(
                "INSERT INTO audit_positions (consumer_group, topic, partition, next_offset) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[key(), vec![(&from, Type::INT8)]].concat(),
            )?;
            // Either our row, or one a concurrent owner committed first: lock whichever it is.
            tx.query_typed_one(LOCK, &key())?
        }
    };
    let link = row
        .get::<_, Option<&[u8]>>(2)
        .and_then(|h| Hash::try_from(h).ok())
        .unwrap_or_else(|| chain::genesis(group, topic, partition));
    let head = Head {
        seq: row.get(1),
        link,
        time: row.get(3),
    };
    Ok((row.get(0), head))
}

/// Moves the partition's position and chain head.
pub fn store_position(
    tx: &mut Transaction<'_>,
    group: &str,
    tp: (&str, i32),
    next: i64,
    head: &Head,
) -> Result<(), postgres::Error> {
    let (topic, partition) = tp;
    let link = &head.link[..];
    tx.execute_typed(
        "UPDATE audit_positions SET next_offset = $4, chain_seq = $5, chain_head = $6, \
         updated_at = now() WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        &[
            position_key(&group, &topic, &partition),
            vec![
                (&next, Type::INT8),
                (&head.seq, Type::INT8),
                (&link, Type::BYTEA),
            ],
        ]
        .concat(),
    )?;
    Ok(())
}

/// Writes one batch in one transaction, fenced by the stored position of its partition, and
/// extends the partition's hash chain with every row written, in offset order.
/// With `isolate`, rows PostgreSQL refuses are found by splitting and stored as rejections.
pub fn write_batch(
    client: &mut postgres::Client,
    group: &str,
    t: &Transformed,
    isolate: bool,
) -> Result<Written, SinkError> {
    let batch = &t.batch;
    let tp = (&*batch.tp.topic, batch.tp.partition);
    let first = batch.messages.first().map_or(batch.end, |m| m.offset);
    let from = batch.start.unwrap_or(first);

    let mut tx = client.transaction()?;
    let (stored, head) = lock_position(&mut tx, group, tp, from)?;
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
    let missing = gaps(missing_offsets(stored, batch), &batch.holes);
    let mut linked = link_batch(t, skipped, &missing, &HashMap::new(), group, head);
    if isolate {
        // Rows PostgreSQL refuses are found under savepoints; then the chain is made again
        // with their rejections in their place, and written whole.
        // Named apart from copy_isolating's: ROLLBACK TO goes to the latest of a name, and a
        // savepoint rolled back to stays.
        let mut sp = tx.savepoint("links")?;
        let mut refused: HashMap<i64, String> = HashMap::new();
        for (target, list) in [(AUDIT, &linked.rows), (TRANSACTIONS, &linked.transactions)] {
            for (i, error) in copy_isolating(&mut sp, target, list)? {
                refused.insert(list[i].0.offset, error);
            }
        }
        if refused.is_empty() {
            sp.commit()?;
            hand_off(t, &linked.head);
        } else {
            sp.rollback()?;
            linked = link_batch(t, skipped, &missing, &refused, group, head);
            hand_off(t, &linked.head);
            copy_linked(&mut tx, &linked)?;
        }
    } else {
        hand_off(t, &linked.head);
        copy_linked(&mut tx, &linked)?;
    }
    copy_rest(&mut tx, &linked)?;
    store_position(&mut tx, group, tp, batch.end, &linked.head)?;
    tx.commit()?;
    Ok(committed(batch.end, missing, linked, skipped))
}

/// Writes one batch whose partition's previous batch is still being written, while it commits:
/// its rows linked after `expected`, the head that one says it leaves, and COPYed, before the
/// partition's position is locked. `previous_done` waits, between the two, until the writer of
/// the previous batch is done with it (a previous batch itself written behind another locks the
/// position only after its COPY, and this one's lock must not come first), and says whether it
/// kept the link `expected` came from: if not, this batch is rolled back without locking. It
/// commits only if the stored position is then the batch's start and the head is `expected`;
/// `None` when they are not (the previous batch was not written, or not as it said), and
/// nothing was written.
pub fn write_after(
    client: &mut postgres::Client,
    group: &str,
    t: &Transformed,
    expected: (i64, Hash),
    previous_done: impl FnOnce() -> bool,
) -> Result<Behind, SinkError> {
    let batch = &t.batch;
    let Some(start) = batch.start else {
        return Ok(Behind {
            written: None,
            locking: Duration::ZERO,
        });
    };
    let tp = (&*batch.tp.topic, batch.tp.partition);
    let mut tx = client.transaction()?;
    let head = Head {
        seq: expected.0,
        link: expected.1,
        time: now_micros(&mut tx)?,
    };
    let skipped = batch.messages.iter().filter(|m| m.offset < start).count();
    let missing = gaps(missing_offsets(start, batch), &batch.holes);
    let linked = link_batch(t, skipped, &missing, &HashMap::new(), group, head);
    hand_off(t, &linked.head);
    copy_linked(&mut tx, &linked)?;
    copy_rest(&mut tx, &linked)?;
    if !previous_done() {
        log::debug!(
            "batch {} {}[{}] written behind the previous one, rolled back: that one gave up the \
             link at chain entry {}",
            batch.id,
            tp.0,
            tp.1,
            expected.0
        );
        // Dropping the transaction rolls it back.
        return Ok(Behind {
            written: None,
            locking: Duration::ZERO,
        });
    }
    let locked = Instant::now();
    let (stored, found) = lock_position(&mut tx, group, tp, start)?;
    let locking = locked.elapsed();
    if stored != start || (found.seq, found.link) != expected {
        log::debug!(
            "batch {} {}[{}] written behind the previous one, rolled back: the position is {stored} \
             at chain entry {}, not {start} at {}{}",
            batch.id,
            tp.0,
            tp.1,
            found.seq,
            expected.0,
            if found.seq == expected.0 { " (another link)" } else { "" }
        );
        // Dropping the transaction rolls it back.
        return Ok(Behind {
            written: None,
            locking,
        });
    }
    store_position(&mut tx, group, tp, batch.end, &linked.head)?;
    tx.commit()?;
    Ok(Behind {
        written: Some(committed(batch.end, missing, linked, skipped)),
        locking,
    })
}

/// What became of a batch written behind its partition's previous one ([`write_after`]).
pub struct Behind {
    /// How the batch was written; `None` if it was not, and nothing was.
    pub written: Option<Written>,
    /// How long locking the partition's position took: the wait for the previous batch's
    /// commit.
    pub locking: Duration,
}

/// Tells the writer of the partition's next batch where this one leaves the chain.
fn hand_off(t: &Transformed, head: &Head) {
    t.handoff.set(Relay::Linked {
        seq: head.seq,
        link: head.link,
    });
}

/// COPYs a batch's rejections and holes.
fn copy_rest(tx: &mut Transaction<'_>, linked: &Linked<'_>) -> Result<(), SinkError> {
    let rejections = linked.rejection_rows.iter();
    copy_rows(
        tx,
        REJECTIONS,
        rejections.map(|(b, s)| (b.as_slice(), &s[..])),
    )?;
    let gaps = linked.gap_rows.iter();
    copy_rows(tx, GAPS, gaps.map(|(b, s)| (b.as_slice(), &s[..])))
}

fn committed(next: i64, missing: Vec<Gap>, linked: Linked<'_>, skipped: usize) -> Written {
    Written::Committed {
        next,
        missing,
        rows: linked.rows.len(),
        transactions: linked.transactions.len(),
        rejected: linked.rejected,
        skips: linked.skips,
        skipped,
    }
}

/// COPYs a batch's audit rows and transaction events.
fn copy_linked(tx: &mut Transaction<'_>, linked: &Linked<'_>) -> Result<(), SinkError> {
    copy_rows(tx, AUDIT, linked.rows.iter().map(|(_, b, s)| (*b, &s[..])))?;
    let events = linked.transactions.iter();
    copy_rows(tx, TRANSACTIONS, events.map(|(_, b, s)| (*b, &s[..])))
}

/// A batch's new rows in chain order, each with its chain fields.
struct Linked<'a> {
    rows: Rows<'a>,
    transactions: Rows<'a>,
    rejection_rows: Vec<(Vec<u8>, Suffix)>,
    gap_rows: Vec<(Vec<u8>, Suffix)>,
    rejected: Vec<RejectKind>,
    skips: Vec<Skip>,
    head: Head,
}

/// Links a batch's new rows (from message `skipped` on) into the chain after `head`, in offset
/// order: each gap before the message that follows it, a refused row as its rejection.
fn link_batch<'a>(
    t: &'a Transformed,
    skipped: usize,
    missing: &[Gap],
    refused: &HashMap<i64, String>,
    group: &str,
    mut head: Head,
) -> Linked<'a> {
    let mut linked = Linked {
        rows: Vec::new(),
        transactions: Vec::new(),
        rejection_rows: Vec::new(),
        gap_rows: Vec::new(),
        rejected: Vec::new(),
        skips: Vec::new(),
        head,
    };
    let mut gaps = missing.iter().peekable();
    let tp = &t.batch.tp;
    for (msg, outcome) in t.batch.messages.iter().zip(&t.outcomes).skip(skipped) {
        while let Some(gap) = gaps.next_if(|g| g.offsets.start < msg.offset) {
            let bytes = encode_gap(group, tp, gap);
            let suffix = head.append(&chain::content(Kind::Gap, &bytes[2..]));
            linked.gap_rows.push((bytes, suffix));
        }
        let rejection = match (outcome, refused.get(&msg.offset)) {
            (Outcome::Row(_) | Outcome::Transaction(_), Some(error)) => Some(Rejection {
                kind: RejectKind::DatabaseRefused,
                error: error.clone(),
            }),
            (Outcome::Rejected(r), _) => Some(r.clone()),
            _ => None,
        };
        if let Some(r) = rejection {
            let bytes = encode_rejection(msg, &r);
            let suffix = head.append(&chain::content(Kind::Rejection, &bytes[2..]));
            linked.rejection_rows.push((bytes, suffix));
            linked.rejected.push(r.kind);
            continue;
        }
        match outcome {
            Outcome::Row(row) => {
                let suffix = head.append(&row.content);
                linked.rows.push((msg, &row.bytes, suffix));
            }
            Outcome::Transaction(row) => {
                let suffix = head.append(&row.content);
                linked.transactions.push((msg, &row.bytes, suffix));
            }
            Outcome::Skipped(skip) => linked.skips.push(*skip),
            Outcome::Rejected(_) => {}
        }
    }
    linked.head = head;
    linked
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

/// The missing runs, each cut where the source's checked holes begin and end: a piece inside
/// one takes its cause, a piece outside every one (the source did not see it) has none.
fn gaps(missing: Vec<Range<i64>>, checked: &[Gap]) -> Vec<Gap> {
    let mut gaps = Vec::new();
    for r in missing {
        let mut at = r.start;
        for hole in checked {
            if hole.offsets.end <= at || hole.offsets.start >= r.end {
                continue;
            }
            let start = hole.offsets.start.max(at);
            if start > at {
                gaps.push(Gap {
                    offsets: at..start,
                    cause: None,
                });
            }
            at = hole.offsets.end.min(r.end);
            gaps.push(Gap {
                offsets: start..at,
                cause: hole.cause,
            });
        }
        if at < r.end {
            gaps.push(Gap {
                offsets: at..r.end,
                cause: None,
            });
        }
    }
    gaps
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

/// COPYs rows into `target`, each followed by its chain fields.
pub fn copy_rows<'a>(
    tx: &mut Transaction<'_>,
    target: Target,
    rows: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<(), SinkError> {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let Target {
        table,
        columns,
        time,
    } = target;
    let mut writer = tx.copy_in(&format!(
        "COPY {table} ({columns}, {time}, chain_seq, chain_hash) FROM STDIN (FORMAT binary)"
    ))?;
    // The writer sends a CopyData message whenever it holds more than 4 KiB, each a trip through
    // the connection and a TLS record: rows go to it in chunks of COPY_CHUNK instead.
    let sent: std::io::Result<()> = (|| {
        let mut chunk = Vec::with_capacity(COPY_CHUNK);
        chunk.extend_from_slice(pgcopy::HEADER);
        for (row, suffix) in rows {
            if chunk.len() + row.len() + suffix.len() > COPY_CHUNK && !chunk.is_empty() {
                writer.write_all(&chunk)?;
                chunk.clear();
            }
            chunk.extend_from_slice(row);
            chunk.extend_from_slice(suffix);
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
    rows: &[(&Message, &[u8], Suffix)],
) -> Result<Vec<(usize, String)>, SinkError> {
    let mut refused = Vec::new();
    let mut stack = vec![(0usize, rows.len())];
    while let Some((lo, hi)) = stack.pop() {
        if lo >= hi {
            continue;
        }
        let mut sp = tx.savepoint("isolate")?;
        match copy_rows(
            &mut sp,
            target,
            rows[lo..hi].iter().map(|(_, b, s)| (*b, &s[..])),
        ) {
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

/// A rejection's row of `REJECTIONS`, without its chain fields.
fn encode_rejection(msg: &Message, r: &Rejection) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        128 + msg.payload.as_deref().map_or(0, <[u8]>::len)
            + msg.key.as_deref().map_or(0, <[u8]>::len),
    );
    let mut t = Tuple::begin(&mut buf, 9 + CHAIN_FIELDS);
    t.text(Some(&msg.topic));
    t.int4(msg.partition);
    t.int8(msg.offset);
    t.timestamptz(msg.timestamp_ms.map(|ms| ms.saturating_mul(1_000)));
    t.bytea(msg.key.as_deref());
    t.bytea(msg.payload.as_deref());
    t.jsonb(headers_json(&msg.headers).as_deref());
    t.text(Some(r.kind.as_str()));
    t.text(Some(&r.error));
    buf
}

/// A hole's row of `GAPS`, without its chain fields.
fn encode_gap(group: &str, tp: &Tp, gap: &Gap) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96);
    let mut t = Tuple::begin(&mut buf, 6 + CHAIN_FIELDS);
    t.text(Some(group));
    t.text(Some(&tp.topic));
    t.int4(tp.partition);
    t.int8(gap.offsets.start);
    t.int8(gap.offsets.end);
    t.text(gap.cause.map(GapCause::as_str));
    buf
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
    fn a_gap_takes_the_cause_of_the_checked_hole_it_lies_in() {
        let gap = |offsets: Range<i64>, cause| Gap { offsets, cause };
        let (r, n, s) = (
            Some(GapCause::Retention),
            Some(GapCause::NotDelivered),
            Some(GapCause::Suspect),
        );
        let missing = vec![2..5, 7..9, 12..20];
        assert_eq!(
            gaps(missing.clone(), &[]),
            [gap(2..5, None), gap(7..9, None), gap(12..20, None)]
        );
        // The source split its first hole at the log start and checked the rest.
        let checked = [gap(2..4, r), gap(4..5, n), gap(7..9, s), gap(12..16, n)];
        assert_eq!(
            gaps(missing.clone(), &checked),
            [
                gap(2..4, r),
                gap(4..5, n),
                gap(7..9, s),
                gap(12..16, n),
                gap(16..20, None)
            ]
        );
        // The stored position lies inside a checked hole: only what lies past it is missing.
        assert_eq!(
            gaps(vec![3..5, 8..9, 14..20], &checked),
            [
                gap(3..4, r),
                gap(4..5, n),
                gap(8..9, s),
                gap(14..16, n),
                gap(16..20, None)
            ]
        );
        // A hole the writer sees around a checked one.
        assert_eq!(
            gaps(std::iter::once(0..10).collect(), &[gap(4..6, s)]),
            [gap(0..4, None), gap(4..6, s), gap(6..10, None)]
        );
    }

    #[test]
    fn header_values_that_are_not_utf8_are_hex() {
        let h = headers_json(&[("a".into(), Some(vec![0xff, 0x01])), ("b".into(), None)]).unwrap();
        assert_eq!(h, r#"[["a","\\xff01"],["b",null]]"#);
    }
}
