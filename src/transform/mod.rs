//! Debezium message -> audit row, as a pure function: no I/O, no shared state, run on rayon.
//! Each message is parsed once into borrowed raw members; row images go into the COPY buffer as
//! the text Debezium sent unless the schema, MongoDB's Extended JSON, the TOAST placeholder or a
//! column rule asks for a change.

pub mod avro;
pub mod context;
pub mod decode;
pub mod inspect;
pub mod json;
pub mod jsonschema;
pub mod mongo;
pub mod protobuf;
pub mod schemas;
pub mod stage;

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::chain::{self, Kind, CHAIN_FIELDS};
use crate::config::rules::{Action, Rules, TableRules};
use crate::pgcopy::Tuple;
use crate::types::{Bytes, Message, Notice, NoticeKind, Outcome, RejectKind, Rejection, Row, Skip};
use decode::StructSchema;
use json::{
    integer, is_object, jsonb_safe, present, scalar_text, skip_ws, Members, ObjectWriter, Raw, Span,
};
use schemas::Payload;
pub use schemas::Schemas;

/// Columns of `audit_logging` filled by COPY, in the order [`AuditRecord::encode`] writes them.
pub const AUDIT_COLUMNS: &str = "source_database, source_schema, source_table, operation_type, \
    change_timestamp, captured_at, old_data, new_data, primary_key, changed_columns, \
    unavailable_columns, change_user, transaction_id, transaction_order, transaction_collection_order, \
    lsn, connector, is_snapshot, source_metadata, change_detail, kafka_topic, kafka_partition, \
    kafka_offset, kafka_timestamp, context, actor";
const AUDIT_FIELDS: i16 = 26;

/// Columns of `audit_transactions` filled by COPY.
pub const TRANSACTION_COLUMNS: &str = "transaction_id, status, event_count, data_collections, \
    event_time, kafka_topic, kafka_partition, kafka_offset";
const TRANSACTION_FIELDS: i16 = 8;

/// The placeholder Debezium sends for an unchanged TOASTed (or otherwise unavailable) column.
const UNAVAILABLE: &str = "__debezium_unavailable_value";

fn reject(kind: RejectKind, error: impl Into<String>) -> Rejection {
    Rejection {
        kind,
        error: error.into(),
    }
}

/// One audit row before encoding. Images are JSON text.
#[derive(Debug, Default)]
pub struct AuditRecord<'a> {
    pub source_database: Option<Cow<'a, str>>,
    pub source_schema: Option<Cow<'a, str>>,
    pub source_table: Option<Cow<'a, str>>,
    pub operation: &'static str,
    /// Source commit time, Unix microseconds.
    pub change_timestamp: Option<i64>,
    /// Debezium capture time, Unix microseconds.
    pub captured_at: Option<i64>,
    pub old_data: Option<Cow<'a, str>>,
    pub new_data: Option<Cow<'a, str>>,
    pub primary_key: Option<Cow<'a, str>>,
    /// `None` when unknown (no before image).
    pub changed_columns: Option<Vec<Cow<'a, str>>>,
    pub unavailable_columns: Vec<String>,
    pub change_user: Option<String>,
    pub transaction_id: Option<Cow<'a, str>>,
    pub transaction_order: Option<i64>,
    pub transaction_collection_order: Option<i64>,
    pub lsn: Option<Cow<'a, str>>,
    pub connector: Option<Cow<'a, str>>,
    pub is_snapshot: bool,
    pub source_metadata: Option<&'a str>,
    /// Operation details that are not row images: MongoDB's update description, patch and
    /// filter; a schema change's DDL and table changes.
    pub change_detail: Option<String>,
    /// The application's context this event carries (a context message, a statement comment),
    /// and who it names.
    pub context: Option<String>,
    pub actor: Option<String>,
    /// The source named no table, and `source_table` is the topic's name: the table rules and
    /// the detector of suspicious changes, which go by the source's names, leave it out.
    pub table_is_topic: bool,
    /// The members of the images and of the source as the event's reading split them, where
    /// those are stored as sent: encoding writes them without reading them again.
    pub old_members: Option<Members<'a>>,
    pub new_members: Option<Members<'a>>,
    pub source_members: Option<Members<'a>>,
}

/// A BEGIN or END event of the transaction metadata topic.
#[derive(Debug)]
pub struct TransactionRecord<'a> {
    pub id: Cow<'a, str>,
    pub status: Cow<'a, str>,
    pub event_count: Option<i64>,
    pub data_collections: Option<&'a str>,
    pub event_time: Option<i64>,
}

/// What a message means, before encoding.
#[derive(Debug)]
pub enum Interpreted<'a> {
    Change(Box<AuditRecord<'a>>),
    Transaction(TransactionRecord<'a>),
    Skip(Skip),
}

/// Turns one Kafka message into an audit row, a transaction row, a skip, or a rejection. A
/// registry-framed message is rejected: there are no schemas to read it with.
pub fn transform(msg: &Message, rules: &Rules) -> Outcome {
    transform_with(msg, rules, &Schemas::default())
}

/// [`transform`], reading registry-framed messages with `schemas`: as the JSON converter would
/// have sent them, so they make the same rows.
pub fn transform_with(msg: &Message, rules: &Rules, schemas: &Schemas) -> Outcome {
    let mut buf = Vec::new();
    let outcome = draft(msg, rules, schemas, &mut buf);
    let buf = Arc::new(buf);
    outcome.with_bytes(|range| Bytes::shared(&buf, range))
}

/// How many messages the stage transforms together ([`transform_together`]): a rayon task's
/// share of a batch, few enough that a batch still splits evenly over the threads.
pub const SHARING: usize = 64;

/// [`transform_with`] of each of `msgs`, their rows encoded into one buffer they share
/// ([`Bytes`]).
pub fn transform_together(msgs: &[Message], rules: &Rules, schemas: &Schemas) -> Vec<Outcome> {
    // A row is about its message's size: its fixed fields and `jsonb`'s spaces more, the
    // envelope less. Room for a quarter more, so that the buffer is seldom copied as it grows;
    // more than an eighth left over is given back.
    let room = msgs.iter().map(|m| m.size() + m.size() / 4 + 256).sum();
    let mut buf = Vec::with_capacity(room);
    let drafts: Vec<_> = msgs
        .iter()
        .map(|m| draft(m, rules, schemas, &mut buf))
        .collect();
    if buf.capacity() - buf.len() > buf.len() / 8 {
        buf.shrink_to_fit();
    }
    let buf = Arc::new(buf);
    drafts
        .into_iter()
        .map(|d| d.with_bytes(|range| Bytes::shared(&buf, range)))
        .collect()
}

/// What `msg` becomes, its row (if any) encoded at the end of `buf`: the outcome holds where.
fn draft(
    msg: &Message,
    rules: &Rules,
    schemas: &Schemas,
    buf: &mut Vec<u8>,
) -> Outcome<Range<usize>> {
    as_json(msg, schemas, |msg, apart| {
        match interpret_with(msg, apart, rules) {
            Ok(Interpreted::Change(record)) => {
                let start = buf.len();
                record.encode(msg, buf);
                let mut row = chained(Kind::Row, buf, start, record.change_timestamp);
                row.notice = notice(&record, buf);
                Outcome::Row(row)
            }
            Ok(Interpreted::Transaction(t)) => {
                let start = buf.len();
                t.encode(msg, buf);
                Outcome::Transaction(chained(Kind::Transaction, buf, start, None))
            }
            Ok(Interpreted::Skip(skip)) => Outcome::Skipped(skip),
            Err(rejection) => Outcome::Rejected(rejection),
        }
    })
    .unwrap_or_else(Outcome::Rejected)
}

/// What reading a registry-framed message kept apart from the text the JSON converter would
/// have sent: the Connect schemas of the value and of the key (`None` where that is not
/// framed), and where the value's members are in its text (empty: read them from the text).
#[derive(Default)]
struct Apart<'s> {
    value_schema: Option<&'s str>,
    spans: Vec<Span<'s>>,
    key_schema: Option<&'s str>,
}

/// `read` of the message as the JSON converter would have sent it ([`from_registry`]), with
/// what its framed parts' reading kept apart.
fn as_json<R>(
    msg: &Message,
    schemas: &Schemas,
    read: impl FnOnce(&Message, &Apart<'_>) -> R,
) -> Result<R, Rejection> {
    Ok(match from_registry(msg, schemas)? {
        Some((json, apart)) => read(&json, &apart),
        None => read(msg, &Apart::default()),
    })
}

/// A message whose value or key (or both) is registry-framed, as the JSON converter would have
/// sent it but for the envelopes: the framed parts are their payloads, their Connect schemas
/// apart, so no schema's text is copied or scanned. `None` when neither is framed (or it is a
/// tombstone, whatever its key).
fn from_registry<'s>(
    msg: &Message,
    schemas: &'s Schemas,
) -> Result<Option<(Message, Apart<'s>)>, Rejection> {
    let Some(payload) = &msg.payload else {
        return Ok(None);
    };
    let value = decode_framed(payload, "value", schemas)?;
    let key = match &msg.key {
        Some(k) => decode_framed(k, "key", schemas)?,
        None => None,
    };
    if value.is_none() && key.is_none() {
        return Ok(None);
    }
    let (payload, value_schema, spans) = match value {
        Some(v) => (Some(v.text.into_bytes().into()), Some(v.connect), v.spans),
        None => (msg.payload.clone(), None, Vec::new()),
    };
    let apart = Apart {
        value_schema,
        spans,
        key_schema: key.as_ref().map(|k| k.connect),
    };
    Ok(Some((
        Message {
            topic: msg.topic.clone(),
            partition: msg.partition,
            offset: msg.offset,
            timestamp_ms: msg.timestamp_ms,
            key: key
                .map(|k| k.text.into_bytes().into())
                .or_else(|| msg.key.clone()),
            payload,
            headers: msg.headers.clone(),
        },
        apart,
    )))
}

/// Registry-framed `bytes` (the value or the key: `what`) read with the schema they name;
/// `None` if they are not framed.
fn decode_framed<'s>(
    bytes: &[u8],
    what: &str,
    schemas: &'s Schemas,
) -> Result<Option<Payload<'s>>, Rejection> {
    if avro::guid_framed(bytes) {
        return Err(reject(
            RejectKind::Undecodable,
            format!("the {what} is framed by a schema GUID (magic byte 1), which this version does not read"),
        ));
    }
    let Some((id, datum)) = avro::framed(bytes) else {
        return Ok(None);
    };
    let schema = schemas
        .get(id)
        .map_err(|r| reject(r.kind, format!("the {what}: {}", r.reason)))?;
    let payload = schema.payload(datum).map_err(|e| {
        reject(
            RejectKind::Undecodable,
            format!("the {what} does not decode under schema id {id}: {e}"),
        )
    })?;
    Ok(Some(payload))
}

/// [`interpret`], with what the reading of the message's framed parts kept apart: a framed
/// value is then the envelope's payload alone.
fn interpret_with<'a>(
    msg: &'a Message,
    apart: &Apart<'a>,
    rules: &Rules,
) -> Result<Interpreted<'a>, Rejection> {
    let Some(schema) = apart.value_schema else {
        return read_json(msg, apart.key_schema, rules);
    };
    let text = match value_text(msg)? {
        Ok(text) => text,
        Err(skip) => return Ok(Interpreted::Skip(skip)),
    };
    if text == "null" {
        // How the converter renders a tombstone: {"schema": ..., "payload": null}.
        return Ok(Interpreted::Skip(Skip::Tombstone));
    }
    let event = if apart.spans.is_empty() {
        Members::parse_event(text)
    } else {
        Some(Members::written(text, &apart.spans))
    };
    let mut event =
        event.ok_or_else(|| reject(RejectKind::NotAChangeEvent, "\"payload\" is not an object"))?;
    event_of(msg, Some(schema), apart.key_schema, &mut event, rules)
}

/// The tuple encoded in `buf` from `start` on, with its content hash: its fields, after the
/// field count.
fn chained(kind: Kind, buf: &[u8], start: usize, source_time_us: Option<i64>) -> Row<Range<usize>> {
    Row {
        notice: None,
        content: chain::content(kind, buf.get(start + 2..).unwrap_or_default()),
        bytes: start..buf.len(),
        source_time_us,
    }
}

/// What the detector of suspicious changes counts of a change: updates, deletes and truncates,
/// and schema changes that drop a table or a column. Its names go at the end of `buf`, after
/// the row: the notice holds where.
fn notice(record: &AuditRecord<'_>, buf: &mut Vec<u8>) -> Option<Notice<Range<usize>>> {
    let kind = match record.operation {
        "UPDATE" => NoticeKind::Update,
        "DELETE" => NoticeKind::Delete,
        "TRUNCATE" => NoticeKind::Truncate,
        "DDL" => dropped(record.change_detail.as_deref()?)?,
        _ => return None,
    };
    let table = (!record.table_is_topic)
        .then_some(record.source_table.as_deref())
        .flatten();
    let start = buf.len();
    for (i, part) in name_parts([
        record.source_database.as_deref(),
        record.source_schema.as_deref(),
        table,
    ])
    .enumerate()
    {
        if i > 0 {
            buf.push(b'.');
        }
        buf.extend_from_slice(part.as_bytes());
    }
    let table = start..buf.len();
    let transaction = record.transaction_id.as_deref().map(|t| {
        buf.extend_from_slice(t.as_bytes());
        table.end..buf.len()
    });
    Some(Notice {
        kind,
        table,
        transaction,
    })
}

/// What a schema change's detail (`{"ddl": ..., "tableChanges": [...]}`) drops, if anything.
fn dropped(detail: &str) -> Option<NoticeKind> {
    let detail: serde_json::Value = serde_json::from_str(detail).ok()?;
    let changes = detail.get("tableChanges").and_then(|c| c.as_array());
    if changes
        .into_iter()
        .flatten()
        .any(|c| c.get("type").and_then(|t| t.as_str()) == Some("DROP"))
    {
        return Some(NoticeKind::DropTable);
    }
    let ddl = detail.get("ddl").and_then(|d| d.as_str())?;
    let words: Vec<String> = ddl
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .collect();
    let at = |i: usize| words.get(i).map(String::as_str);
    if at(0) == Some("DROP") && at(1) == Some("TABLE") {
        return Some(NoticeKind::DropTable);
    }
    // ALTER TABLE t DROP [COLUMN] c, but not DROP CONSTRAINT, INDEX, KEY, DEFAULT, ...
    let not_a_column = [
        "CONSTRAINT",
        "INDEX",
        "KEY",
        "PRIMARY",
        "FOREIGN",
        "PARTITION",
        "CHECK",
        "DEFAULT",
        "NOT",
        "EXPRESSION",
        "IDENTITY",
        "SUPPLEMENTAL",
        "UNIQUE",
        "PERIOD",
    ];
    let alter = at(0) == Some("ALTER") && at(1) == Some("TABLE");
    let drops_a_column = words.iter().enumerate().any(|(i, w)| {
        w == "DROP"
            && match at(i + 1) {
                Some("COLUMN") => true,
                Some(next) => alter && !not_a_column.contains(&next),
                None => false,
            }
    });
    drops_a_column.then_some(NoticeKind::DropColumn)
}

/// The value's text, or why there is nothing to read (a tombstone, a heartbeat topic).
fn value_text(msg: &Message) -> Result<Result<&str, Skip>, Rejection> {
    let Some(value) = msg.payload.as_deref() else {
        return Ok(Err(Skip::Tombstone));
    };
    if msg.topic.starts_with("__debezium-heartbeat") {
        return Ok(Err(Skip::Heartbeat));
    }
    std::str::from_utf8(value)
        .map(Ok)
        .map_err(|e| reject(RejectKind::NotJson, format!("value is not UTF-8: {e}")))
}

/// Reads a message as Debezium wrote it.
pub fn interpret<'a>(msg: &'a Message, rules: &Rules) -> Result<Interpreted<'a>, Rejection> {
    read_json(msg, None, rules)
}

/// [`interpret`], the key's Connect schema apart if it was framed (`key_schema`).
fn read_json<'a>(
    msg: &'a Message,
    key_schema: Option<&'a str>,
    rules: &Rules,
) -> Result<Interpreted<'a>, Rejection> {
    let text = match value_text(msg)? {
        Ok(text) => text,
        Err(skip) => return Ok(Interpreted::Skip(skip)),
    };
    let value = text.as_bytes();
    if let Some((schema, mut event)) = known_envelope(text) {
        return event_of(msg, Some(schema), key_schema, &mut event, rules);
    }
    if !is_object(value) {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => reject(
                RejectKind::NotAChangeEvent,
                "value is JSON but not an object",
            ),
            Err(e) => reject(RejectKind::NotJson, format!("value is not JSON: {e}")),
        });
    }
    let top = match Members::scan_event(text) {
        Some(top) => top,
        None => serde_json::from_str::<Members<'a>>(text).map_err(|e| {
            let kind = if e.is_data() {
                RejectKind::NotAChangeEvent
            } else {
                RejectKind::NotJson
            };
            reject(kind, format!("value is not JSON: {e}"))
        })?,
    };
    // The JSON converter's envelope: {"schema": ..., "payload": ...}.
    let (schema, mut event) =
        if top.has("payload") && !top.has("op") && !top.has("after") && !top.has("before") {
            match top.get("payload") {
                // How the converter renders a tombstone: {"schema": null, "payload": null}.
                None => return Ok(Interpreted::Skip(Skip::Tombstone)),
                Some(p) => {
                    let event = Members::parse_event(p.get()).ok_or_else(|| {
                        reject(RejectKind::NotAChangeEvent, "\"payload\" is not an object")
                    })?;
                    (top.get("schema").map(Raw::get), event)
                }
            }
        } else {
            (None, top)
        };
    event_of(msg, schema, key_schema, &mut event, rules)
}

/// The JSON converter's envelope `{"schema": S, "payload": {...}}` where S is, byte for byte, a
/// value schema this thread has read before: S's text and the payload's members, without
/// scanning S again (it is most of a message's bytes, and the same in every message of a table).
/// `None` for any other shape (another member, another order, a repeated key, a schema not read
/// yet, a payload that is not an object), which the general path reads: both give the same
/// result for the same message.
fn known_envelope(text: &str) -> Option<(&str, Members<'_>)> {
    let rest = after_key(skip_ws(text).strip_prefix('{')?, "schema")?;
    let schema = &rest[..decode::remembered_value_schema(rest)?];
    let rest = after_key(skip_ws(&rest[schema.len()..]).strip_prefix(',')?, "payload")?;
    if !rest.starts_with('{') {
        return None;
    }
    let (payload, read) = match Members::scan_split(rest, true) {
        Some(found) => found,
        None => {
            let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Members<'_>>();
            (values.next()?.ok()?, values.byte_offset())
        }
    };
    let end = skip_ws(&rest[read..]).strip_prefix('}')?;
    skip_ws(end).is_empty().then_some((schema, payload))
}

/// What follows `"key":` at the start of `text`, whitespace skipped; `None` if it is not there.
fn after_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = skip_ws(text)
        .strip_prefix('"')?
        .strip_prefix(key)?
        .strip_prefix('"')?;
    Some(skip_ws(skip_ws(rest).strip_prefix(':')?))
}

/// Reads an event, the envelope taken off: a change, a transaction boundary, a schema change or
/// a heartbeat.
fn event_of<'a>(
    msg: &'a Message,
    schema: Option<&'a str>,
    key_schema: Option<&'a str>,
    event: &mut Members<'a>,
    rules: &Rules,
) -> Result<Interpreted<'a>, Rejection> {
    if let Some(op) = event.get("op") {
        return change(msg, [schema, key_schema], event, op, rules);
    }
    if event.has("status") && event.has("id") {
        return transaction(event);
    }
    if event.has("ddl") || event.has("tableChanges") {
        return schema_change(event, rules);
    }
    if event.0.len() == 1 && event.has("ts_ms") {
        return Ok(Interpreted::Skip(Skip::Heartbeat));
    }
    Err(reject(
        RejectKind::NotAChangeEvent,
        "no \"op\": not a Debezium change, transaction or schema-change event",
    ))
}

fn operation(op: &str) -> Option<&'static str> {
    Some(match op {
        "c" => "INSERT",
        "u" => "UPDATE",
        "d" => "DELETE",
        "r" => "READ",
        "t" => "TRUNCATE",
        "m" => "MESSAGE",
        _ => return None,
    })
}

/// Where a change happened: `db.schema.table`, empty parts left out (MySQL and MongoDB have
/// no schema).
fn qualified(parts: [Option<&str>; 3]) -> String {
    name_parts(parts).collect::<Vec<_>>().join(".")
}

/// The parts of a qualified name: the empty and absent ones left out.
fn name_parts(parts: [Option<&str>; 3]) -> impl Iterator<Item = &str> {
    parts.into_iter().flatten().filter(|p| !p.is_empty())
}

/// The source block, or an empty one; an error if it is there but not an object.
fn source_of<'a>(event: &mut Members<'a>) -> Result<(Members<'a>, Option<&'a str>), Rejection> {
    match event.get("source") {
        None => Ok((Members::default(), None)),
        Some(raw) => event
            .take_object("source")
            .map(|m| (m, Some(raw.get())))
            .ok_or_else(|| {
                reject(
                    RejectKind::InvalidField,
                    format!("\"source\" must be an object, found {}", raw.get()),
                )
            }),
    }
}

/// Unix microseconds from the most precise of the timestamp fields. Zero means unknown (MySQL
/// snapshot events carry `ts_ms: 0`). Values sent in a larger unit than their name says
/// (Debezium's docs show nanoseconds in `ts_us` and `ts_ms`) are scaled back into a plausible range.
fn micros(m: &Members<'_>) -> Option<i64> {
    const CANDIDATES: [(&str, i32); 5] = [
        ("ts_ns", -3),
        ("ts_us", 0),
        ("ts_usec", 0),
        ("ts_ms", 3),
        ("ts_sec", 6),
    ];
    // One pass over the members (the last of equal keys wins, as `get` has it), then the
    // finest unit that is there and not zero.
    let mut found = [None; CANDIDATES.len()];
    for (key, raw) in &m.0 {
        if key.starts_with("ts_") {
            if let Some(i) = CANDIDATES.iter().position(|(k, _)| k == key) {
                found[i] = Some(*raw);
            }
        }
    }
    let (value, exp) = found.iter().zip(CANDIDATES).find_map(|(raw, (_, e))| {
        integer(raw.and_then(present))
            .filter(|v| *v != 0)
            .map(|v| (v, e))
    })?;
    let mut us = i128::from(value);
    if exp < 0 {
        us /= 1000;
    } else {
        us *= 10i128.pow(exp as u32);
    }
    // Later than the year 3000 in microseconds: it was sent in a smaller unit.
    while us.abs() > 32_503_680_000_000_000 {
        us /= 1000;
    }
    i64::try_from(us).ok()
}

fn snapshot_flag(source: &Members<'_>) -> bool {
    source
        .text("snapshot")
        .is_some_and(|s| !matches!(s.as_ref(), "false" | "FALSE" | ""))
}

/// The source position: LSN (PostgreSQL), binlog file:pos (MySQL), commit LSN (SQL Server),
/// SCN (Oracle), `ord` (MongoDB).
fn position<'a>(s: &Members<'a>) -> Option<Cow<'a, str>> {
    if let Some(lsn) = s.text("lsn") {
        return Some(lsn);
    }
    if let (Some(file), Some(pos)) = (s.text("file"), s.text("pos")) {
        return Some(Cow::Owned(format!("{file}:{pos}")));
    }
    ["commit_lsn", "change_lsn", "commit_scn", "scn", "ord"]
        .iter()
        .find_map(|k| s.text(k))
}

/// An image rewritten member by member (decoding, placeholder removal, column rules), if
/// something asks for it; `None`: it is stored as it came.
fn rewritten(
    image: &Image<'_>,
    schema: Option<&StructSchema>,
    rules: &TableRules<'_>,
    unavailable: &mut Vec<String>,
) -> Option<String> {
    let has_placeholder = image.text.contains(UNAVAILABLE);
    if schema.is_none_or(StructSchema::is_empty) && rules.is_empty() && !has_placeholder {
        return None;
    }
    image.with_members(|members| {
        let mut out = ObjectWriter::with_capacity(image.text.len() + 16);
        for (name, value) in &members.0 {
            if has_placeholder && scalar_text(Some(*value)).as_deref() == Some(UNAVAILABLE) {
                if !unavailable.iter().any(|u| u == name) {
                    unavailable.push(name.to_string());
                }
                continue;
            }
            let decoded = schema
                .and_then(|s| s.get(name))
                .and_then(|l| decode::decode(*value, l));
            let json = decoded.as_deref().unwrap_or(value.get());
            match rules.action(name) {
                None => out.member(name, json),
                Some(action) => {
                    if let Some(masked) = rules.apply(action, json) {
                        out.member(name, &masked);
                    }
                }
            }
        }
        out.finish()
    })
}

/// The text an image is stored as, and its members where it is stored as it came
/// ([`rewritten`] otherwise).
fn stored<'a>(
    image: Image<'a>,
    schema: Option<&StructSchema>,
    rules: &TableRules<'_>,
    unavailable: &mut Vec<String>,
) -> (Cow<'a, str>, Option<Members<'a>>) {
    match rewritten(&image, schema, rules, unavailable) {
        Some(written) => (Cow::Owned(written), None),
        None => (image.text, image.members),
    }
}

/// An image as sent, or (MongoDB) a string of Extended JSON resolved into an object.
fn image_text(raw: Raw<'_>) -> Cow<'_, str> {
    if raw.get().starts_with('"') {
        if let Some(resolved) = scalar_text(Some(raw)).and_then(|s| mongo::resolve_text(&s)) {
            return Cow::Owned(resolved);
        }
    }
    Cow::Borrowed(raw.get())
}

/// An image: its text as sent, or (MongoDB) a string of Extended JSON resolved into an object;
/// and its members, where its text is as sent.
struct Image<'a> {
    text: Cow<'a, str>,
    members: Option<Members<'a>>,
}

impl Image<'_> {
    /// `read` of the image's members; `None` if it is not an object.
    fn with_members<R>(&self, read: impl FnOnce(&Members<'_>) -> R) -> Option<R> {
        match &self.members {
            Some(m) => Some(read(m)),
            None => Members::parse(&self.text).map(|m| read(&m)),
        }
    }
}

/// The event's image under `key`, if it has one, taken from the event.
fn image<'a>(event: &mut Members<'a>, key: &str) -> Option<Image<'a>> {
    let text = image_text(event.get(key)?);
    let members = match text {
        Cow::Borrowed(_) => event.take_object(key),
        Cow::Owned(_) => None,
    };
    Some(Image { text, members })
}

/// Columns whose value differs between two images; `None` when either is not an object. The
/// names are lent by the message where the event's reading split both images.
fn changed_columns<'a>(before: &Image<'a>, after: &Image<'a>) -> Option<Vec<Cow<'a, str>>> {
    if let (Some(b), Some(a)) = (&before.members, &after.members) {
        return Some(changed_between(b, a));
    }
    let owned = |names: Vec<Cow<'_, str>>| {
        let owned = names.into_iter().map(|n| Cow::Owned(n.into_owned()));
        owned.collect()
    };
    before.with_members(|b| after.with_members(|a| owned(changed_between(b, a))))?
}

fn changed_between<'m>(before: &Members<'m>, after: &Members<'m>) -> Vec<Cow<'m, str>> {
    fn find<'m>(m: &Members<'m>, k: &str) -> Option<&'m str> {
        m.0.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.get())
    }
    let mut changed: Vec<Cow<'m, str>> = Vec::new();
    for (name, value) in &after.0 {
        if scalar_text(Some(*value)).as_deref() == Some(UNAVAILABLE)
            || changed.iter().any(|c| c == name)
        {
            continue;
        }
        if find(before, name) != Some(value.get()) {
            changed.push(name.clone());
        }
    }
    for (name, _) in &before.0 {
        if find(after, name).is_none() && !changed.iter().any(|c| c == name) {
            changed.push(name.clone());
        }
    }
    changed
}

/// MongoDB: the fields an update touched, from `updateDescription` or the oplog `patch`.
fn mongo_changed(event: &Members<'_>) -> Option<Vec<String>> {
    let mut changed = Vec::new();
    if let Some(desc) = event.object("updateDescription") {
        if let Some(updated) = desc.get("updatedFields") {
            let text = image_text(updated);
            changed.extend(Members::parse(&text)?.0.iter().map(|(k, _)| k.to_string()));
        }
        if let Some(removed) = desc.get("removedFields") {
            let names: Vec<String> = serde_json::from_str(removed.get()).ok()?;
            changed.extend(names);
        }
        return Some(changed);
    }
    let patch = image_text(event.get("patch")?);
    for (op, fields) in Members::parse(&patch)?.0 {
        if op.starts_with('$') {
            changed.extend(
                Members::parse(fields.get())?
                    .0
                    .iter()
                    .map(|(k, _)| k.to_string()),
            );
        }
    }
    Some(changed)
}

/// MongoDB's operation details, with their Extended JSON strings resolved.
fn mongo_detail(event: &Members<'_>) -> Option<String> {
    let mut out = ObjectWriter::with_capacity(256);
    let mut any = false;
    if let Some(desc) = event.object("updateDescription") {
        let mut d = ObjectWriter::with_capacity(128);
        for (k, v) in &desc.0 {
            d.member(k, &image_text(*v));
        }
        out.member("updateDescription", &d.finish());
        any = true;
    }
    for key in ["patch", "filter"] {
        if let Some(v) = event.get(key) {
            out.member(key, &image_text(v));
            any = true;
        }
    }
    any.then(|| out.finish())
}

/// The primary key from the message key, unwrapping the converter's envelope (or the key is
/// the payload alone, its Connect schema `key_schema`, when it was registry-framed); MongoDB's
/// `id` (the document `_id` as Extended JSON) is resolved.
fn primary_key<'a>(
    key: Option<&'a [u8]>,
    key_schema: Option<&'a str>,
    mongo: bool,
    rules: &TableRules<'_>,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(key) = key else { return Ok(None) };
    // An object, as keys almost always are, is read once by the validating scanner; anything
    // else by serde_json, which also says what is wrong.
    let scanned = match key_schema {
        None => std::str::from_utf8(key).ok().and_then(Members::scan_whole),
        Some(_) => None,
    };
    let (top, raw) = match scanned {
        Some((members, raw)) => (Some(members), raw),
        None => {
            let raw: &RawValue = serde_json::from_slice(key).map_err(|e| {
                reject(
                    RejectKind::InvalidKey,
                    format!("message key is not JSON: {e}"),
                )
            })?;
            let top = key_schema
                .is_none()
                .then(|| Members::parse(raw.get()))
                .flatten();
            (top, Raw::from(raw))
        }
    };
    let (schema, raw) = match &top {
        Some(m) if m.has("schema") && m.has("payload") => match m.get("payload") {
            Some(p) => (m.get("schema").map(Raw::get), p),
            None => return Ok(None),
        },
        _ => (key_schema, raw),
    };
    let Some(raw) = json::present(raw) else {
        return Ok(None);
    };
    let mut text = Cow::Borrowed(raw.get());
    if mongo {
        if let Some(mut m) = Members::parse(raw.get()) {
            if let Some(id) = m.get("id").filter(|v| v.get().starts_with('"')) {
                let resolved = scalar_text(Some(id)).and_then(|s| mongo::resolve_text(&s));
                if let Some(resolved) = resolved {
                    let mut out = ObjectWriter::with_capacity(resolved.len() + 8);
                    m.0.retain(|(k, _)| k != "id");
                    out.member("id", &resolved);
                    for (k, v) in &m.0 {
                        out.member(k, v.get());
                    }
                    text = Cow::Owned(out.finish());
                }
            }
        }
    }
    let key_schema = schema.and_then(decode::key_schema);
    let image = Image {
        text,
        members: None,
    };
    let written = rewritten(&image, key_schema.as_deref(), rules, &mut Vec::new());
    Ok(Some(written.map_or(image.text, Cow::Owned)))
}

/// A change event; `schemas`: the value's Connect schema, and the key's if it was framed.
fn change<'a>(
    msg: &'a Message,
    [schema, key_schema]: [Option<&'a str>; 2],
    event: &mut Members<'a>,
    op_raw: Raw<'a>,
    rules: &Rules,
) -> Result<Interpreted<'a>, Rejection> {
    let op = scalar_text(Some(op_raw))
        .filter(|_| op_raw.get().starts_with('"'))
        .ok_or_else(|| {
            reject(
                RejectKind::InvalidField,
                format!("\"op\" must be a string, found {}", op_raw.get()),
            )
        })?;
    let operation = operation(&op).ok_or_else(|| {
        reject(
            RejectKind::UnknownOperation,
            format!("unknown operation {:?}", op.as_ref()),
        )
    })?;
    let (source, source_raw) = source_of(event)?;
    let connector = source.text("connector");
    // PostgreSQL logical messages carry empty schema and table names: absent, not "".
    let named = |key: &str| source.text(key).filter(|v| !v.is_empty());
    let (db, schema_name) = (named("db"), named("schema"));
    let table = named("table").or_else(|| named("collection"));
    // Made only for rules that look at it: most deployments have none.
    let name = match rules.by_table() {
        true => qualified([db.as_deref(), schema_name.as_deref(), table.as_deref()]),
        false => String::new(),
    };
    if !name.is_empty() && !rules.audits(&name) {
        return Ok(Interpreted::Skip(Skip::Filtered));
    }
    let table_rules = rules.for_table(&name);

    let after_key = match event.get("after") {
        None if op == "m" => "message",
        _ => "after",
    };
    let mongo = connector.as_deref() == Some("mongodb")
        || event
            .get("before")
            .or(event.get(after_key))
            .is_some_and(|r| r.get().starts_with('"'));
    let before = image(event, "before");
    let after = image(event, after_key);
    // A create, read or relational update says what the row became; MongoDB's oplog updates
    // send a patch instead, and deletes may have no image at all (no pre-images).
    if after.is_none() && (matches!(op.as_ref(), "c" | "r") || (op == "u" && !mongo)) {
        return Err(reject(
            RejectKind::InvalidField,
            format!("operation {:?} without an \"after\" image", op.as_ref()),
        ));
    }

    let mut changed = match (&before, &after) {
        (Some(b), Some(a)) if op == "u" => changed_columns(b, a),
        (None, _) if op == "u" && mongo => {
            mongo_changed(event).map(|names| names.into_iter().map(Cow::Owned).collect())
        }
        _ => None,
    };
    if let Some(changed) = changed.as_mut() {
        changed.retain(|c| table_rules.action(c) != Some(Action::Drop));
    }
    let change_user = rules.change_user_column.as_deref().and_then(|column| {
        [&after, &before]
            .into_iter()
            .flatten()
            .find_map(|image| image.with_members(|m| m.text(column).map(Cow::into_owned))?)
            .filter(|u| u != UNAVAILABLE)
    });

    let schemas = schema.and_then(decode::value_schemas);
    let (before_schema, after_schema) = match schemas.as_deref() {
        Some((b, a)) => (Some(b), Some(a)),
        None => (None, None),
    };
    let mut unavailable = Vec::new();
    let (old_data, old_members) = before
        .map(|b| stored(b, before_schema, &table_rules, &mut unavailable))
        .unzip();
    let (new_data, new_members) = after
        .map(|a| stored(a, after_schema, &table_rules, &mut unavailable))
        .unzip();
    let primary_key = primary_key(msg.key.as_deref(), key_schema, mongo, &table_rules)?;
    let mut change_detail = if mongo { mongo_detail(event) } else { None };
    // Only a logical message (PostgreSQL) or a row event's statement (MySQL) carries context.
    let found = if op == "m" {
        event.object("message").map_or(context::Found::None, |m| {
            context::from_message(&m, &source, rules)
        })
    } else {
        source
            .text("query")
            .map_or(context::Found::None, |q| context::from_query(&q, rules))
    };
    let (context, actor) = match found {
        context::Found::None => (None, None),
        context::Found::Context(c) => (Some(c.json), c.actor),
        context::Found::Invalid(reason) => {
            add_detail(&mut change_detail, "context_error", &json::quote(&reason));
            (None, None)
        }
    };
    let (old_data, new_data) = escape_nul(&mut change_detail, old_data, new_data);
    // Members are of the text as sent: not of one escaped here.
    let as_sent = |data: &Option<Cow<'_, str>>| matches!(data, Some(Cow::Borrowed(_)));
    let old_members = old_members.flatten().filter(|_| as_sent(&old_data));
    let new_members = new_members.flatten().filter(|_| as_sent(&new_data));

    let transaction = event.object("transaction");
    let transaction_id = transaction
        .as_ref()
        .and_then(|t| t.text("id"))
        .or_else(|| source.text("txId"))
        .or_else(|| source.text("gtid"));

    Ok(Interpreted::Change(Box::new(AuditRecord {
        source_database: db,
        source_schema: schema_name,
        table_is_topic: table.is_none(),
        source_table: table.or_else(|| Some(Cow::Borrowed(&msg.topic))),
        operation,
        change_timestamp: micros(&source),
        captured_at: micros(event),
        old_data,
        new_data,
        primary_key,
        changed_columns: changed,
        unavailable_columns: unavailable,
        change_user,
        transaction_id,
        transaction_order: transaction.as_ref().and_then(|t| t.int("total_order")),
        transaction_collection_order: transaction
            .as_ref()
            .and_then(|t| t.int("data_collection_order")),
        lsn: position(&source),
        connector,
        is_snapshot: snapshot_flag(&source) || op == "r",
        source_metadata: source_raw,
        change_detail,
        context,
        actor,
        old_members,
        new_members,
        source_members: source_raw.map(|_| source),
    })))
}

/// jsonb cannot hold `\u0000`: images store it as the text `\u0000`, and the exact original
/// images go into `change_detail.original_images` as JSON strings, so nothing is lost. Images
/// leave here ready for jsonb.
fn escape_nul<'a>(
    detail: &mut Option<String>,
    before: Option<Cow<'a, str>>,
    after: Option<Cow<'a, str>>,
) -> (Option<Cow<'a, str>>, Option<Cow<'a, str>>) {
    let mut originals = ObjectWriter::with_capacity(64);
    let mut any = false;
    let mut escape = |name: &str, image: Option<Cow<'a, str>>| {
        let image = image?;
        match jsonb_safe(&image) {
            Cow::Borrowed(_) => Some(image),
            Cow::Owned(escaped) => {
                originals.member(name, &json::quote(&image));
                any = true;
                Some(Cow::Owned(escaped))
            }
        }
    };
    let (before, after) = (escape("before", before), escape("after", after));
    if any {
        add_detail(detail, "original_images", &originals.finish());
    }
    (before, after)
}

/// Adds a member (its value as JSON text) to `change_detail`, an object made here.
fn add_detail(detail: &mut Option<String>, name: &str, value: &str) {
    *detail = Some(match detail.take() {
        Some(d) if d.len() > 2 => format!("{},\"{name}\":{value}}}", &d[..d.len() - 1]),
        _ => format!("{{\"{name}\":{value}}}"),
    });
}

fn transaction<'a>(event: &Members<'a>) -> Result<Interpreted<'a>, Rejection> {
    let id = event.text("id").ok_or_else(|| {
        reject(
            RejectKind::InvalidField,
            "transaction event without an \"id\"",
        )
    })?;
    let status = event.text("status").ok_or_else(|| {
        reject(
            RejectKind::InvalidField,
            "transaction event without a \"status\"",
        )
    })?;
    Ok(Interpreted::Transaction(TransactionRecord {
        id,
        status,
        event_count: event.int("event_count"),
        data_collections: event.get("data_collections").map(Raw::get),
        event_time: micros(event),
    }))
}

/// A schema-change (DDL) event: kept as its own audit record, operation `DDL`.
fn schema_change<'a>(event: &mut Members<'a>, rules: &Rules) -> Result<Interpreted<'a>, Rejection> {
    let (source, source_raw) = source_of(event)?;
    let db = event
        .text("databaseName")
        .filter(|d| !d.is_empty())
        .or_else(|| source.text("db"));
    let schema_name = event
        .text("schemaName")
        .filter(|s| !s.is_empty())
        .or_else(|| source.text("schema"));
    // The first changed table's id, e.g. "inventory"."customers": its last part.
    let table = source.text("table").filter(|t| !t.is_empty()).or_else(|| {
        let changes: Vec<&RawValue> =
            serde_json::from_str(event.get("tableChanges")?.get()).ok()?;
        let id = Members::parse(changes.first()?.get())?.text("id")?;
        let last = id.rsplit('.').next()?.trim_matches('"').to_string();
        Some(Cow::Owned(last))
    });
    let name = qualified([db.as_deref(), schema_name.as_deref(), table.as_deref()]);
    if table.is_some() && !rules.audits(&name) {
        return Ok(Interpreted::Skip(Skip::Filtered));
    }
    let mut detail = ObjectWriter::with_capacity(512);
    for key in ["ddl", "databaseName", "schemaName", "tableChanges"] {
        if let Some(v) = event.get(key) {
            detail.member(key, v.get());
        }
    }
    Ok(Interpreted::Change(Box::new(AuditRecord {
        source_database: db,
        source_schema: schema_name,
        source_table: table,
        operation: "DDL",
        change_timestamp: micros(&source).or_else(|| micros(event)),
        captured_at: micros(event),
        lsn: position(&source),
        connector: source.text("connector"),
        is_snapshot: snapshot_flag(&source),
        source_metadata: source_raw,
        change_detail: Some(detail.finish()),
        ..AuditRecord::default()
    })))
}

impl AuditRecord<'_> {
    /// The tuple, at the end of `buf`.
    pub fn encode(&self, msg: &Message, buf: &mut Vec<u8>) {
        buf.reserve(self.encoded_len(msg));
        let mut t = Tuple::begin(buf, AUDIT_FIELDS + CHAIN_FIELDS);
        let jsonb = |t: &mut Tuple<'_>, v: Option<&str>| t.jsonb(v.map(jsonb_safe).as_deref());
        t.text(self.source_database.as_deref());
        t.text(self.source_schema.as_deref());
        t.text(self.source_table.as_deref());
        t.text(Some(self.operation));
        t.timestamptz(self.change_timestamp);
        t.timestamptz(self.captured_at);
        // Images are escaped for jsonb where they are made (see `escape_nul`).
        jsonb_as_read(&mut t, self.old_data.as_deref(), self.old_members.as_ref());
        jsonb_as_read(&mut t, self.new_data.as_deref(), self.new_members.as_ref());
        jsonb(&mut t, self.primary_key.as_deref());
        t.text_array(self.changed_columns.as_deref());
        t.text_array(
            Some(&self.unavailable_columns)
                .filter(|u| !u.is_empty())
                .map(Vec::as_slice),
        );
        t.text(self.change_user.as_deref());
        t.text(self.transaction_id.as_deref());
        t.int8_opt(self.transaction_order);
        t.int8_opt(self.transaction_collection_order);
        t.text(self.lsn.as_deref());
        t.text(self.connector.as_deref());
        t.bool(Some(self.is_snapshot));
        match self.source_metadata.map(jsonb_safe) {
            Some(Cow::Borrowed(source)) => {
                jsonb_as_read(&mut t, Some(source), self.source_members.as_ref())
            }
            escaped => t.jsonb(escaped.as_deref()),
        }
        jsonb(&mut t, self.change_detail.as_deref());
        t.text(Some(&msg.topic));
        t.int4(msg.partition);
        t.int8(msg.offset);
        t.timestamptz(msg.timestamp_ms.map(|ms| ms.saturating_mul(1_000)));
        jsonb(&mut t, self.context.as_deref());
        t.text(self.actor.as_deref());
    }

    /// Room for the encoded tuple, so that encoding it does not grow the buffer: the field
    /// count and lengths, the fixed-size values, the texts, and the JSON with room for the
    /// space `jsonb`'s printed form adds after each `:` and `,`.
    fn encoded_len(&self, msg: &Message) -> usize {
        let len = |v: Option<&str>| v.map_or(0, str::len);
        let json = [
            self.old_data.as_deref(),
            self.new_data.as_deref(),
            self.primary_key.as_deref(),
            self.source_metadata,
            self.change_detail.as_deref(),
            self.context.as_deref(),
        ]
        .into_iter()
        .map(len)
        .sum::<usize>();
        let text = [
            self.source_database.as_deref(),
            self.source_schema.as_deref(),
            self.source_table.as_deref(),
            self.change_user.as_deref(),
            self.transaction_id.as_deref(),
            self.lsn.as_deref(),
            self.connector.as_deref(),
            self.actor.as_deref(),
            Some(&*msg.topic),
        ]
        .into_iter()
        .map(len)
        .sum::<usize>();
        let arrays = self.changed_columns.as_deref().map_or(0, array_len)
            + array_len(&self.unavailable_columns);
        let fixed = 2 + 4 * AUDIT_FIELDS as usize + 128;
        fixed + text + arrays + json + json / 3
    }
}

/// The bytes a `text[]` of `names` takes past its header: a length and the text each.
fn array_len<S: AsRef<str>>(names: &[S]) -> usize {
    names.iter().map(|n| 4 + n.as_ref().len()).sum()
}

/// A `jsonb` field of `json`, written from its `members` where the event's reading split them.
fn jsonb_as_read(t: &mut Tuple<'_>, json: Option<&str>, members: Option<&Members<'_>>) {
    match (json, members) {
        (Some(json), Some(members)) => t.jsonb_split(json, members.spans()),
        _ => t.jsonb(json),
    }
}

impl TransactionRecord<'_> {
    /// The tuple, at the end of `buf`.
    pub fn encode(&self, msg: &Message, buf: &mut Vec<u8>) {
        buf.reserve(128 + self.data_collections.map_or(0, str::len));
        let mut t = Tuple::begin(buf, TRANSACTION_FIELDS + CHAIN_FIELDS);
        t.text(Some(&self.id));
        t.text(Some(&self.status));
        t.int8_opt(self.event_count);
        t.jsonb(self.data_collections.map(jsonb_safe).as_deref());
        t.timestamptz(self.event_time);
        t.text(Some(&msg.topic));
        t.int4(msg.partition);
        t.int8(msg.offset);
    }
}

/// A readable rendering of what a message becomes: the golden tests pin it, and it is what
/// a person wants to see when asking "what would cdc-audit store for this?".
pub fn describe(msg: &Message, rules: &Rules) -> serde_json::Value {
    describe_with(msg, rules, &Schemas::default())
}

/// [`describe`], reading registry-framed messages with `schemas`.
pub fn describe_with(msg: &Message, rules: &Rules, schemas: &Schemas) -> serde_json::Value {
    as_json(msg, schemas, |msg, apart| {
        describe_read(interpret_with(msg, apart, rules))
    })
    .unwrap_or_else(
        |r| serde_json::json!({ "rejected": { "reason": r.kind.as_str(), "error": r.error } }),
    )
}

fn describe_read(read: Result<Interpreted<'_>, Rejection>) -> serde_json::Value {
    use serde_json::{json, Value};
    let parse = |s: Option<&str>| {
        s.map_or(Value::Null, |s| {
            serde_json::from_str(&jsonb_safe(s)).unwrap_or(Value::String(s.to_string()))
        })
    };
    let time = |us: Option<i64>| us.map_or(Value::Null, |us| Value::String(decode::iso_micros(us)));
    match read {
        Ok(Interpreted::Change(r)) => json!({
            "audit_logging": {
                "source_database": r.source_database, "source_schema": r.source_schema,
                "source_table": r.source_table, "operation_type": r.operation,
                "change_timestamp": time(r.change_timestamp), "captured_at": time(r.captured_at),
                "old_data": parse(r.old_data.as_deref()), "new_data": parse(r.new_data.as_deref()),
                "primary_key": parse(r.primary_key.as_deref()), "changed_columns": r.changed_columns,
                "unavailable_columns": r.unavailable_columns, "change_user": r.change_user,
                "transaction_id": r.transaction_id, "transaction_order": r.transaction_order,
                "transaction_collection_order": r.transaction_collection_order, "lsn": r.lsn,
                "connector": r.connector, "is_snapshot": r.is_snapshot,
                "source_metadata": parse(r.source_metadata), "change_detail": parse(r.change_detail.as_deref()),
                "context": parse(r.context.as_deref()), "actor": r.actor,
            }
        }),
        Ok(Interpreted::Transaction(t)) => json!({
            "audit_transactions": {
                "transaction_id": t.id, "status": t.status, "event_count": t.event_count,
                "data_collections": parse(t.data_collections), "event_time": time(t.event_time),
            }
        }),
        Ok(Interpreted::Skip(skip)) => json!({ "skipped": format!("{skip:?}").to_lowercase() }),
        Err(r) => json!({ "rejected": { "reason": r.kind.as_str(), "error": r.error } }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn msg(key: Option<&str>, value: Option<&[u8]>) -> Message {
        Message {
            topic: Arc::from("db.public.t"),
            partition: 0,
            offset: 1,
            timestamp_ms: None,
            key: key.map(|k| k.as_bytes().to_vec().into()),
            payload: value.map(|v| v.to_vec().into()),
            headers: Vec::new(),
        }
    }

    fn rejected(value: &[u8]) -> RejectKind {
        match transform(&msg(None, Some(value)), &Rules::default()) {
            Outcome::Rejected(r) => r.kind,
            other => panic!(
                "expected a rejection for {:?}, got {other:?}",
                String::from_utf8_lossy(value)
            ),
        }
    }

    fn record(value: &str, rules: &Rules) -> AuditRecord<'static> {
        let m: &'static Message =
            Box::leak(Box::new(msg(Some(r#"{"id":1}"#), Some(value.as_bytes()))));
        match interpret(m, rules) {
            Ok(Interpreted::Change(r)) => *r,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn an_envelope_whose_schema_was_read_before_is_read_without_it_and_nothing_else_is() {
        // A schema of its own: the memo is per thread, and other tests run on other threads.
        let schema = r#"{"type":"struct","name":"known_envelope.Envelope","fields":[{"field":"after","type":"struct","fields":[{"field":"d","type":"int32","name":"io.debezium.time.Date"}]}]}"#;
        let envelope = |payload: &str| format!(r#"{{"schema":{schema},"payload":{payload}}}"#);
        let payload = r#"{"op":"c","after":{"d":1}}"#;
        assert!(known_envelope(&envelope(payload)).is_none(), "not read yet");

        // Read once, by the general path, which remembers the schema.
        let first = record(&envelope(payload), &Rules::default());
        assert_eq!(first.new_data.as_deref(), Some(r#"{"d":"1970-01-02"}"#));

        let spaced = format!(" \n{{ \"schema\" :\t{schema} ,\r\"payload\": {payload} }}\n");
        for text in [envelope(payload), spaced] {
            let (s, event) = known_envelope(&text).expect("the schema is remembered");
            assert_eq!(s, schema);
            let keys: Vec<&str> = event.0.iter().map(|(k, _)| k.as_ref()).collect();
            assert_eq!(keys, ["op", "after"]);
        }
        let again = record(&envelope(payload), &Rules::default());
        assert_eq!(again.new_data, first.new_data);

        // Anything else takes the general path.
        let other = schema.replace("known_envelope", "other");
        for text in [
            format!(r#"{{"schema":{other},"payload":{payload}}}"#),
            format!(r#"{{"schema":{schema},"payload":{payload},"extra":1}}"#),
            format!(r#"{{"schema":{schema},"payload":{payload},"payload":{payload}}}"#),
            format!(r#"{{"schema":{schema},"schema":{schema},"payload":{payload}}}"#),
            format!(r#"{{"payload":{payload},"schema":{schema}}}"#),
            envelope("null"),
            envelope("[1]"),
            envelope(r#"{"op":"c""#),
            format!("{{\"schema\":{schema}\u{a0},\"payload\":{payload}}}"),
            format!("{}x", envelope(payload)),
        ] {
            assert!(known_envelope(&text).is_none(), "{text}");
        }
        // Where the general path takes a repeated key's last value, so does the result.
        let twice = format!(
            r#"{{"schema":{schema},"payload":{{"op":"c","after":{{"d":1}}}},"payload":{{"op":"c","after":{{"d":2}}}}}}"#
        );
        let last = record(&twice, &Rules::default());
        assert_eq!(last.new_data.as_deref(), Some(r#"{"d":"1970-01-03"}"#));
    }

    #[test]
    fn poison_is_rejected_with_its_reason() {
        assert_eq!(rejected(b"{\"op\":\"c\""), RejectKind::NotJson);
        assert_eq!(rejected(b"\xff\xfe"), RejectKind::NotJson);
        assert_eq!(rejected(b"[1,2]"), RejectKind::NotAChangeEvent);
        assert_eq!(
            rejected(b"[null, null, \"c\"]"),
            RejectKind::NotAChangeEvent,
            "not read by position"
        );
        assert_eq!(
            rejected(b"{\"payload\":[null,null,\"c\"]}"),
            RejectKind::NotAChangeEvent
        );
        assert_eq!(
            rejected(b"{\"op\":\"c\",\"source\":[1]}"),
            RejectKind::InvalidField
        );
        assert_eq!(rejected(b"\"text\""), RejectKind::NotAChangeEvent);
        assert_eq!(rejected(b"{\"after\":{}}"), RejectKind::NotAChangeEvent);
        assert_eq!(
            rejected(b"{\"op\":\"x\",\"after\":{}}"),
            RejectKind::UnknownOperation
        );
        assert_eq!(
            rejected(b"{\"op\":1,\"after\":{}}"),
            RejectKind::InvalidField
        );
        match transform(
            &msg(Some("not json"), Some(b"{\"op\":\"c\",\"after\":{}}")),
            &Rules::default(),
        ) {
            Outcome::Rejected(r) => assert_eq!(r.kind, RejectKind::InvalidKey),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rejected(b"{\"op\":\"c\"}"),
            RejectKind::InvalidField,
            "a create without its row"
        );
        assert_eq!(
            rejected(b"{\"op\":\"u\",\"before\":{}}"),
            RejectKind::InvalidField
        );
    }

    #[test]
    fn tombstones_and_heartbeats_are_skipped() {
        let rules = Rules::default();
        assert!(matches!(
            transform(&msg(Some("{\"id\":1}"), None), &rules),
            Outcome::Skipped(Skip::Tombstone)
        ));
        let displayed = msg(None, Some(b"{\"schema\":null,\"payload\":null}"));
        assert!(matches!(
            transform(&displayed, &rules),
            Outcome::Skipped(Skip::Tombstone)
        ));
        let mut hb = msg(
            Some("{\"serverName\":\"db\"}"),
            Some(b"{\"ts_ms\":1700000000000}"),
        );
        assert!(matches!(
            transform(&hb, &rules),
            Outcome::Skipped(Skip::Heartbeat)
        ));
        hb.topic = Arc::from("__debezium-heartbeat.db");
        hb.payload = Some(b"{\"schema\":{},\"payload\":{\"ts_ms\":1}}".to_vec().into());
        assert!(matches!(
            transform(&hb, &rules),
            Outcome::Skipped(Skip::Heartbeat)
        ));
    }

    #[test]
    fn changed_columns_ignore_unavailable_values_and_keep_order() {
        let b = r#"{"id":1,"b":"x","c":"big","a":2}"#;
        let a = r#"{"id":1,"b":"y","c":"__debezium_unavailable_value","a":3}"#;
        let image = |text| Image {
            text: Cow::Borrowed(text),
            members: None,
        };
        assert_eq!(
            changed_columns(&image(b), &image(a)),
            Some(vec![Cow::from("b"), Cow::from("a")])
        );
    }

    #[test]
    fn unavailable_values_are_not_stored_as_data() {
        let r = record(
            r#"{"op":"u","before":null,"after":{"id":1,"bio":"__debezium_unavailable_value"},"source":{"table":"t"}}"#,
            &Rules::default(),
        );
        assert_eq!(r.new_data.as_deref(), Some(r#"{"id":1}"#));
        assert_eq!(r.unavailable_columns, ["bio"]);
        assert_eq!(r.changed_columns, None, "unknown without a before image");
    }

    #[test]
    fn column_rules_apply_to_both_images_and_the_key() {
        let rules = Rules {
            columns: Rules::parse_column_rules("*.email=hash,*.ssn=redact,*.id=redact,*.pw=drop")
                .unwrap(),
            hash_key: Some(b"secret".to_vec()),
            ..Rules::default()
        };
        let r = record(
            r#"{"op":"u","before":{"id":1,"email":"a@x","ssn":"1","pw":"p"},"after":{"id":1,"email":"b@x","ssn":"1","pw":"q"},"source":{"db":"d","table":"t"}}"#,
            &rules,
        );
        let (old, new) = (r.old_data.unwrap(), r.new_data.unwrap());
        assert!(
            !old.contains("a@x") && !new.contains("b@x") && !new.contains("\"pw\""),
            "{old} {new}"
        );
        assert!(new.contains(r#""ssn":"[redacted]""#));
        assert_eq!(r.primary_key.as_deref(), Some(r#"{"id":"[redacted]"}"#));
        assert_eq!(
            r.changed_columns,
            Some(vec![Cow::from("email")]),
            "dropped columns are not reported"
        );
    }

    #[test]
    fn excluded_tables_are_skipped() {
        let rules = Rules {
            exclude: vec![crate::config::rules::Glob::new("d.*")],
            ..Rules::default()
        };
        let m = msg(
            None,
            Some(br#"{"op":"c","after":{"id":1},"source":{"db":"d","table":"t"}}"#),
        );
        assert!(matches!(
            transform(&m, &rules),
            Outcome::Skipped(Skip::Filtered)
        ));
    }

    #[test]
    fn change_user_comes_from_the_configured_column() {
        let rules = Rules {
            change_user_column: Some("updated_by".into()),
            ..Rules::default()
        };
        let r = record(
            r#"{"op":"d","before":{"id":1,"updated_by":"alice"},"source":{"table":"t"}}"#,
            &rules,
        );
        assert_eq!(r.change_user.as_deref(), Some("alice"));
    }

    #[test]
    fn the_finest_time_unit_there_wins_and_the_last_of_equal_keys() {
        let cases = [
            (
                r#"{"ts_ms":1700000000000,"ts_ns":1700000000000001000}"#,
                Some(1_700_000_000_000_001),
            ),
            (
                r#"{"ts_ms":1700000000000,"ts_us":0,"ts_sec":5}"#,
                Some(1_700_000_000_000_000),
            ),
            (
                r#"{"ts_ms":1,"ts_ms":1700000000000}"#,
                Some(1_700_000_000_000_000),
            ),
            (
                r#"{"ts_us":5,"ts_us":null,"ts_ms":1700000000000}"#,
                Some(1_700_000_000_000_000),
            ),
            (r#"{"ts":5,"ts_msx":7}"#, None),
        ];
        for (json, expected) in cases {
            assert_eq!(micros(&Members::parse(json).unwrap()), expected, "{json}");
        }
    }

    #[test]
    fn zero_timestamps_are_unknown() {
        let m = Members::parse(r#"{"ts_ms":0}"#).unwrap();
        assert_eq!(micros(&m), None);
    }

    #[test]
    fn oversized_timestamp_units_are_scaled_back() {
        let m = Members::parse(r#"{"ts_us":1638985247805000000}"#).unwrap();
        assert_eq!(micros(&m), Some(1_638_985_247_805_000));
        let m = Members::parse(r#"{"ts_sec":1558965508000}"#).unwrap();
        assert_eq!(micros(&m), Some(1_558_965_508_000_000));
    }

    #[test]
    fn deep_but_valid_images_are_left_to_postgresql() {
        let nested = format!(
            "{{\"op\":\"c\",\"after\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(matches!(
            transform(&msg(None, Some(nested.as_bytes())), &Rules::default()),
            Outcome::Row(_)
        ));
    }

    #[test]
    fn a_notice_names_the_source_table_and_transaction_beside_its_row() {
        let event = |op: &str, after: &str, source: &str, tx: &str| {
            format!(r#"{{"op":"{op}","before":{{"id":1}},"after":{after},"source":{source}{tx}}}"#)
        };
        let deleted = |source: &str, tx: &str| event("d", "null", source, tx);
        let with_tx = r#","transaction":{"id":"571:53195832","total_order":1}"#;
        let cases = [
            // Each of db, schema and table, as the source names them.
            (
                deleted(
                    r#"{"db":"inv","schema":"public","table":"orders"}"#,
                    with_tx,
                ),
                Some((
                    NoticeKind::Delete,
                    "inv.public.orders",
                    Some("571:53195832"),
                )),
            ),
            // MySQL: no schema; no transaction metadata.
            (
                deleted(r#"{"db":"inv","table":"orders"}"#, ""),
                Some((NoticeKind::Delete, "inv.orders", None)),
            ),
            // No table in the source: the row stores the topic, the notice does not name it.
            (
                deleted(r#"{"db":"inv","schema":""}"#, ""),
                Some((NoticeKind::Delete, "inv", None)),
            ),
            (
                event(
                    "t",
                    "null",
                    r#"{"db":"inv","schema":"public","table":"orders"}"#,
                    "",
                ),
                Some((NoticeKind::Truncate, "inv.public.orders", None)),
            ),
            // A snapshot read is not a notice.
            (
                event(
                    "r",
                    r#"{"id":1}"#,
                    r#"{"db":"inv","table":"orders"}"#,
                    with_tx,
                ),
                None,
            ),
        ];
        let msgs: Vec<Message> = cases
            .iter()
            .map(|(value, _)| msg(Some(r#"{"id":1}"#), Some(value.as_bytes())))
            .collect();
        let outcomes = transform_together(&msgs, &Rules::default(), &Schemas::default());
        for ((value, expected), outcome) in cases.iter().zip(&outcomes) {
            let Outcome::Row(row) = outcome else {
                panic!("{value}: expected a row, got {outcome:?}");
            };
            let notice = row.notice.as_ref().map(|n| {
                let text = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap_or_default();
                (n.kind, text(&n.table), n.transaction.as_ref().map(text))
            });
            let expected = expected.map(|(k, t, x)| (k, t.to_string(), x.map(str::to_string)));
            assert_eq!(notice, expected, "{value}");
            // Beside the row, not in it: the row ends where its tuple does.
            let mut end = 2;
            for _ in 0..AUDIT_FIELDS {
                let len = i32::from_be_bytes(row.bytes[end..end + 4].try_into().unwrap());
                end += 4 + usize::try_from(len).unwrap_or(0);
            }
            assert_eq!(end, row.bytes.len(), "{value}");
        }
    }

    #[test]
    fn schema_changes_that_drop_a_table_or_a_column_are_told_from_others() {
        let detail = |ddl: &str, change: &str| {
            serde_json::json!({"ddl": ddl, "tableChanges": [{"type": change}]}).to_string()
        };
        for (ddl, change, expected) in [
            ("DROP TABLE customers", "DROP", Some(NoticeKind::DropTable)),
            (
                "drop   table if exists t",
                "ALTER",
                Some(NoticeKind::DropTable),
            ),
            (
                "ALTER TABLE t DROP COLUMN email",
                "ALTER",
                Some(NoticeKind::DropColumn),
            ),
            (
                "ALTER TABLE `t` DROP `email`, ADD x int",
                "ALTER",
                Some(NoticeKind::DropColumn),
            ),
            ("ALTER TABLE t DROP CONSTRAINT t_pk", "ALTER", None),
            ("ALTER TABLE t DROP INDEX i", "ALTER", None),
            ("ALTER TABLE t ALTER COLUMN c DROP DEFAULT", "ALTER", None),
            ("ALTER TABLE t ALTER COLUMN c DROP NOT NULL", "ALTER", None),
            ("CREATE TABLE t (id int)", "CREATE", None),
        ] {
            assert_eq!(dropped(&detail(ddl, change)), expected, "{ddl}");
        }
    }
}
