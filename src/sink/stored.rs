//! Chained rows read back as PostgreSQL stores them (binary `COPY ... TO`), and amendments to a
//! chain: what rejection replays and purges, erasure and verification share.

use std::io::Read;

use postgres::types::Type;
use postgres::Transaction;

use super::error::SinkError;
use super::fence::{copy_rows, lock_position, store_position, Target};
use crate::chain::{self, Hash, Kind, CHAIN_FIELDS};
use crate::pgcopy::Tuple;

pub const AMENDMENTS: Target = Target {
    table: "audit_amendments",
    columns: "consumer_group, kafka_topic, kafka_partition, target_seq, target_id, action, \
              was_entry, now_entry, actor, reason",
    time: "amended_at",
};

/// A chained row as stored: its link fields, and its entry recomputed from its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: Option<i64>,
    pub link: Option<Vec<u8>>,
    /// When it was written, PostgreSQL microseconds since 2000 (NULL only if someone made it so).
    pub time: Option<i64>,
    /// `chain::entry` of its content and time.
    pub entry: Hash,
    /// Extra columns selected after the chain's (`extra` of `copy_out`), as binary fields.
    pub extra: Vec<Option<Vec<u8>>>,
}

impl Stored {
    /// Extra column `i` as an int8.
    pub fn int8(&self, i: usize) -> Option<i64> {
        let bytes = self.extra.get(i)?.as_deref()?;
        bytes.try_into().ok().map(i64::from_be_bytes)
    }

    /// Extra column `i` as an int4.
    pub fn int4(&self, i: usize) -> Option<i32> {
        let bytes = self.extra.get(i)?.as_deref()?;
        bytes.try_into().ok().map(i32::from_be_bytes)
    }

    /// Extra column `i` as text.
    pub fn text(&self, i: usize) -> String {
        let bytes = self.extra.get(i).and_then(|b| b.as_deref());
        String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned()
    }
}

/// A row of a table with Kafka coordinates, picked by its id.
pub struct ById {
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub stored: Stored,
}

/// The rows `ids` of `target` as stored (only those with a link, if `linked`), by id.
pub fn stored_by_id(
    tx: &mut Transaction<'_>,
    (target, kind): (Target, Kind),
    ids: &[i64],
    linked: bool,
) -> Result<Vec<ById>, SinkError> {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    let only = if linked {
        "AND chain_seq IS NOT NULL"
    } else {
        ""
    };
    // COPY takes no parameters: the ids are numbers the caller read itself.
    let sql = copy_out(
        target,
        "id, kafka_topic, kafka_partition",
        &format!("WHERE id IN ({}) {only} ORDER BY id", list.join(", ")),
    );
    let mut out = Vec::with_capacity(ids.len());
    let mut tuples = Tuples::new(tx.copy_out(&sql)?);
    while let Some((_, fields)) = tuples.next_tuple().map_err(SinkError::from_io)? {
        if let Some(stored) = stored(kind, fields, 3) {
            out.push(ById {
                id: stored.int8(0).unwrap_or_default(),
                topic: stored.text(1),
                partition: stored.int4(2).unwrap_or_default(),
                stored,
            });
        }
    }
    Ok(out)
}

/// The statement that reads `target`'s rows for `Stored`: `extra` columns first (each read as
/// one field), then the chain's, then the table's own.
pub fn copy_out(target: Target, extra: &str, rest: &str) -> String {
    let Target {
        table,
        columns,
        time,
    } = target;
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{extra}, ")
    };
    format!(
        "COPY (SELECT {extra}chain_seq, chain_hash, {time}, {columns} FROM {table} {rest}) \
         TO STDOUT (FORMAT binary)"
    )
}

/// Reads the tuples of a binary COPY stream one by one.
pub struct Tuples<R> {
    reader: R,
    started: bool,
    buf: Vec<u8>,
}

impl<R: Read> Tuples<R> {
    pub fn new(reader: R) -> Self {
        Tuples {
            reader,
            started: false,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The next tuple's fields (after its field count), or `None` at the end.
    pub fn next_tuple(&mut self) -> std::io::Result<Option<(i16, &[u8])>> {
        if !self.started {
            let mut header = [0u8; 19];
            self.reader.read_exact(&mut header)?;
            let ext = u32::from_be_bytes([header[15], header[16], header[17], header[18]]);
            std::io::copy(
                &mut (&mut self.reader).take(u64::from(ext)),
                &mut std::io::sink(),
            )?;
            self.started = true;
        }
        let mut count = [0u8; 2];
        self.reader.read_exact(&mut count)?;
        let count = i16::from_be_bytes(count);
        if count < 0 {
            return Ok(None);
        }
        self.buf.clear();
        for _ in 0..count {
            let mut len = [0u8; 4];
            self.reader.read_exact(&mut len)?;
            self.buf.extend_from_slice(&len);
            let len = i32::from_be_bytes(len);
            if len > 0 {
                let at = self.buf.len();
                self.buf.resize(at + len as usize, 0);
                self.reader.read_exact(&mut self.buf[at..])?;
            }
        }
        Ok(Some((count, &self.buf)))
    }
}

/// Splits one field off the front of binary COPY fields.
pub fn field(fields: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let len = i32::from_be_bytes(fields.get(..4)?.try_into().ok()?);
    let rest = &fields[4..];
    if len < 0 {
        return Some((None, rest));
    }
    let len = len as usize;
    Some((Some(rest.get(..len)?), &rest[len..]))
}

/// Reads a tuple of `copy_out(.., extra, ..)` with `extras` extra columns.
pub fn stored(kind: Kind, fields: &[u8], extras: usize) -> Option<Stored> {
    let mut rest = fields;
    let mut extra = Vec::with_capacity(extras);
    for _ in 0..extras {
        let (f, r) = field(rest)?;
        extra.push(f.map(<[u8]>::to_vec));
        rest = r;
    }
    let (seq, r) = field(rest)?;
    let (link, r) = field(r)?;
    let (time, own) = field(r)?;
    let int8 = |f: Option<&[u8]>| f.and_then(|b| b.try_into().ok()).map(i64::from_be_bytes);
    let time = int8(time);
    Some(Stored {
        seq: int8(seq),
        link: link.map(<[u8]>::to_vec),
        time,
        entry: chain::entry(&chain::content(kind, own), time.unwrap_or(i64::MIN)),
        extra,
    })
}

/// What an amendment did to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Replayed,
    Purged,
    Erased,
    /// Links up to `target_seq` were archived and their rows dropped (retention): `was` is the
    /// link at `target_seq`, where the chain in the database now starts.
    Archived,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replayed => "replayed",
            Action::Purged => "purged",
            Action::Erased => "erased",
            Action::Archived => "archived",
        }
    }
}

/// One amendment: link `target_seq` of a chain (`None`: a row from before the chain, `target_id`
/// of its table), made with `was`, now holds a row whose entry is `now` (or nothing).
pub struct Amendment<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub target_seq: Option<i64>,
    pub target_id: Option<i64>,
    pub action: Action,
    pub was: Hash,
    pub now: Option<Hash>,
    pub reason: Option<&'a str>,
}

/// Appends amendments to their chain in `tx`, as the database user of the session; returns
/// the time they were written (PostgreSQL microseconds since 2000).
pub fn amend(tx: &mut Transaction<'_>, amendments: &[Amendment<'_>]) -> Result<i64, SinkError> {
    let actor: String = tx.query_one("SELECT session_user::text", &[])?.get(0);
    let mut time = 0;
    for a in amendments {
        let tp = (a.topic, a.partition);
        let (next, mut head) = lock_position(tx, a.group, tp, 0)?;
        time = head.time;
        let mut buf = Vec::with_capacity(256);
        let mut t = Tuple::begin(&mut buf, 10 + CHAIN_FIELDS);
        t.text(Some(a.group));
        t.text(Some(a.topic));
        t.int4(a.partition);
        t.int8_opt(a.target_seq);
        t.int8_opt(a.target_id);
        t.text(Some(a.action.as_str()));
        t.bytea(Some(&a.was));
        t.bytea(a.now.as_ref().map(|h| &h[..]));
        t.text(Some(&actor));
        t.text(a.reason);
        let suffix = head.append(&chain::content(Kind::Amendment, &buf[2..]));
        copy_rows(
            tx,
            AMENDMENTS,
            std::iter::once((buf.as_slice(), &suffix[..])),
        )?;
        store_position(tx, a.group, tp, next, &head)?;
    }
    Ok(time)
}

/// The consumer group whose chain holds link `seq` of a partition: the one whose chain has
/// reached it. An error if more than one has.
pub fn chain_group(
    tx: &mut Transaction<'_>,
    topic: &str,
    partition: i32,
    seq: i64,
) -> Result<String, String> {
    let rows = tx
        .query_typed(
            "SELECT consumer_group FROM audit_positions \
             WHERE topic = $1 AND partition = $2 AND chain_seq >= $3",
            &[
                (&topic, Type::TEXT),
                (&partition, Type::INT4),
                (&seq, Type::INT8),
            ],
        )
        .map_err(|e| e.to_string())?;
    match rows.as_slice() {
        [one] => Ok(one.get(0)),
        [] => Err(format!("no chain of {topic}/{partition} has link {seq}")),
        _ => Err(format!(
            "more than one consumer group has a chain of {topic}/{partition}: amend by hand"
        )),
    }
}
