//! Debezium change event -> audit row, as a pure function: no I/O, no shared state, run on rayon.
//! Each message is parsed once into borrowed `RawValue`s; before/after/source images go into the
//! COPY buffer as the text Debezium sent, never through a `serde_json::Value` tree.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::pgcopy::Tuple;
use crate::pipeline::Message;

/// Columns of `audit_logging` filled by COPY, in the order [`transform`] encodes them.
pub const AUDIT_COLUMNS: &str = "source_database, source_schema, source_table, operation_type, \
    change_timestamp, captured_at, old_data, new_data, primary_key, changed_columns, change_user, \
    transaction_id, lsn, connector, is_snapshot, source_metadata, kafka_topic, kafka_partition, \
    kafka_offset, kafka_timestamp";
const AUDIT_FIELDS: i16 = 20;

/// What became of one message.
#[derive(Debug)]
pub enum Outcome {
    /// One audit row, encoded as a binary COPY tuple.
    Row(Vec<u8>),
    /// Nothing to audit (a tombstone); its offset still counts as consumed.
    Skipped,
    Rejected(Rejection),
}

/// Why a message could not become an audit row; stored with its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub error: String,
}

/// The fixed set of rejection reasons (a bounded metric label and a column value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// Not UTF-8 JSON at all.
    NotJson,
    /// JSON, but not a change event this version understands.
    NotAChangeEvent,
    /// A change event with an operation code outside Debezium's set.
    UnknownOperation,
    /// A field of the right name but the wrong type or value.
    InvalidField,
    /// The message key is present but not JSON.
    InvalidKey,
    /// PostgreSQL refused the row (found by splitting the batch).
    DatabaseRefused,
}

impl RejectKind {
    pub const ALL: [RejectKind; 6] = [
        RejectKind::NotJson,
        RejectKind::NotAChangeEvent,
        RejectKind::UnknownOperation,
        RejectKind::InvalidField,
        RejectKind::InvalidKey,
        RejectKind::DatabaseRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::NotJson => "not_json",
            RejectKind::NotAChangeEvent => "not_a_change_event",
            RejectKind::UnknownOperation => "unknown_operation",
            RejectKind::InvalidField => "invalid_field",
            RejectKind::InvalidKey => "invalid_key",
            RejectKind::DatabaseRefused => "database_refused",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn reject(kind: RejectKind, error: impl Into<String>) -> Outcome {
    Outcome::Rejected(Rejection {
        kind,
        error: error.into(),
    })
}

/// A JSON value kept as its text; `null` stays `Some("null")` so presence can be told from absence.
fn keep_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The fields of a Debezium value that matter here, at the top level or inside `payload`.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow, default, deserialize_with = "keep_null")]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "keep_null")]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default)]
    transaction: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts_ms: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts_us: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts_ns: Option<&'a RawValue>,
}

/// Debezium's `source` block across connectors; numbers may arrive as strings.
#[derive(Deserialize, Default)]
struct Source<'a> {
    #[serde(borrow, default)]
    db: Option<&'a RawValue>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    table: Option<&'a RawValue>,
    #[serde(borrow, default)]
    collection: Option<&'a RawValue>,
    #[serde(borrow, default)]
    connector: Option<&'a RawValue>,
    #[serde(borrow, default)]
    snapshot: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts_ms: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts_us: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts_ns: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts_sec: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "txId")]
    tx_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    gtid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    lsn: Option<&'a RawValue>,
    #[serde(borrow, default)]
    file: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pos: Option<&'a RawValue>,
    #[serde(borrow, default)]
    commit_lsn: Option<&'a RawValue>,
    #[serde(borrow, default)]
    change_lsn: Option<&'a RawValue>,
    #[serde(borrow, default)]
    scn: Option<&'a RawValue>,
    #[serde(borrow, default)]
    commit_scn: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ord: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Transaction<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// serde reads a struct from a JSON array too (by position); events and their parts are objects.
fn is_object(json: &[u8]) -> bool {
    json.trim_ascii_start().first() == Some(&b'{')
}

fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| !is_null(r))
}

/// A scalar as text: strings unquoted, numbers and booleans as written.
fn scalar_text(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
    let raw = present(raw)?;
    let text = raw.get();
    if text.starts_with('"') {
        serde_json::from_str::<Cow<'_, str>>(text).ok()
    } else if text.starts_with(['{', '[']) {
        None
    } else {
        Some(Cow::Borrowed(text))
    }
}

/// An integer sent as a number or as a string of digits.
fn integer(raw: Option<&RawValue>) -> Option<i64> {
    let text = scalar_text(raw)?;
    text.parse::<i64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| f as i64)
    })
}

/// The most precise of the `ts_ns`/`ts_us`/`ts_ms`/`ts_sec` fields, in Unix microseconds.
fn micros(
    ns: Option<&RawValue>,
    us: Option<&RawValue>,
    ms: Option<&RawValue>,
    sec: Option<&RawValue>,
) -> Option<i64> {
    integer(ns)
        .map(|v| v / 1_000)
        .or_else(|| integer(us))
        .or_else(|| integer(ms).map(|v| v.saturating_mul(1_000)))
        .or_else(|| integer(sec).map(|v| v.saturating_mul(1_000_000)))
}

/// PostgreSQL's jsonb refuses `\u0000`; it is kept as the visible text `\u0000` instead.
fn jsonb_safe(json: &str) -> Cow<'_, str> {
    if !json.contains("\\u0000") {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    let mut rest = json;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let escape = &rest[i..];
        if let Some(after) = escape.strip_prefix("\\u0000") {
            out.push_str("\\\\u0000");
            rest = after;
        } else {
            // Copy the backslash and the character it escapes, so `\\u0000` stays as it was.
            let len = escape[1..].chars().next().map_or(1, |c| 1 + c.len_utf8());
            out.push_str(&escape[..len]);
            rest = &escape[len..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// The members of a JSON object in document order, values left as raw text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

const UNAVAILABLE: &str = "\"__debezium_unavailable_value\"";

/// Columns whose value differs between two row images; `None` when either image is not an object.
fn changed_columns(before: &RawValue, after: &RawValue) -> Option<Vec<String>> {
    let before: Members<'_> = serde_json::from_str(before.get()).ok()?;
    let after: Members<'_> = serde_json::from_str(after.get()).ok()?;
    fn find<'m>(m: &'m Members<'_>, k: &str) -> Option<&'m str> {
        m.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.get())
    }
    let mut changed = Vec::new();
    for (name, value) in &after.0 {
        if value.get() == UNAVAILABLE {
            continue;
        }
        if find(&before, name) != Some(value.get()) {
            changed.push(name.to_string());
        }
    }
    for (name, _) in &before.0 {
        if find(&after, name).is_none() {
            changed.push(name.to_string());
        }
    }
    Some(changed)
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

fn snapshot_flag(raw: Option<&RawValue>) -> Option<bool> {
    let text = scalar_text(raw)?;
    Some(!matches!(text.as_ref(), "false" | "FALSE" | ""))
}

/// The source position: LSN (PostgreSQL), binlog file:pos (MySQL), commit LSN (SQL Server),
/// SCN (Oracle), `ord` (MongoDB).
fn position(s: &Source<'_>) -> Option<String> {
    if let Some(lsn) = scalar_text(s.lsn) {
        return Some(lsn.into_owned());
    }
    if let (Some(file), Some(pos)) = (scalar_text(s.file), scalar_text(s.pos)) {
        return Some(format!("{file}:{pos}"));
    }
    [s.commit_lsn, s.change_lsn, s.commit_scn, s.scn, s.ord]
        .into_iter()
        .find_map(scalar_text)
        .map(Cow::into_owned)
}

/// The primary key from the message key, unwrapping the JSON converter's envelope.
fn primary_key(key: Option<&[u8]>) -> Result<Option<Cow<'_, str>>, Outcome> {
    let Some(key) = key else { return Ok(None) };
    let raw: &RawValue = serde_json::from_slice(key).map_err(|e| {
        reject(
            RejectKind::InvalidKey,
            format!("message key is not JSON: {e}"),
        )
    })?;
    let raw = match serde_json::from_str::<Event<'_>>(raw.get()) {
        Ok(Event {
            schema: Some(_),
            payload: Some(payload),
            ..
        }) if is_object(raw.get().as_bytes()) => payload,
        _ => raw,
    };
    Ok(present(Some(raw)).map(|r| jsonb_safe(r.get())))
}

/// Turns one Kafka message into an audit row, a skip, or a rejection with its reason.
pub fn transform(msg: &Message) -> Outcome {
    let Some(value) = msg.payload.as_deref() else {
        return Outcome::Skipped;
    };
    if !is_object(value) {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(value) {
            Ok(_) => reject(
                RejectKind::NotAChangeEvent,
                "value is JSON but not an object",
            ),
            Err(e) => reject(RejectKind::NotJson, format!("value is not JSON: {e}")),
        };
    }
    let top: Event<'_> = match serde_json::from_slice(value) {
        Ok(e) => e,
        Err(e) if e.is_data() => return reject(RejectKind::NotAChangeEvent, format!("value: {e}")),
        Err(e) => return reject(RejectKind::NotJson, format!("value is not JSON: {e}")),
    };
    let event = match top.payload {
        Some(payload) if top.op.is_none() && top.after.is_none() && top.before.is_none() => {
            if is_null(payload) {
                // The JSON converter's rendering of a tombstone: {"schema":null,"payload":null}.
                return Outcome::Skipped;
            }
            match serde_json::from_str::<Event<'_>>(payload.get()) {
                Ok(e) if is_object(payload.get().as_bytes()) => e,
                Ok(_) => {
                    return reject(RejectKind::NotAChangeEvent, "\"payload\" is not an object")
                }
                Err(e) => return reject(RejectKind::NotAChangeEvent, format!("payload: {e}")),
            }
        }
        _ => top,
    };
    let Some(op_raw) = present(event.op) else {
        return reject(
            RejectKind::NotAChangeEvent,
            "no \"op\" field: not a Debezium change event",
        );
    };
    let Some(op) = scalar_text(Some(op_raw)).filter(|_| op_raw.get().starts_with('"')) else {
        return reject(
            RejectKind::InvalidField,
            format!("\"op\" must be a string, found {}", op_raw.get()),
        );
    };
    let Some(operation) = operation(&op) else {
        return reject(
            RejectKind::UnknownOperation,
            format!("unknown operation {:?}", op.as_ref()),
        );
    };
    let source: Source<'_> = match present(event.source) {
        Some(raw) if !is_object(raw.get().as_bytes()) => {
            return reject(
                RejectKind::InvalidField,
                format!("\"source\" must be an object, found {}", raw.get()),
            )
        }
        Some(raw) => match serde_json::from_str(raw.get()) {
            Ok(s) => s,
            Err(e) => return reject(RejectKind::InvalidField, format!("\"source\": {e}")),
        },
        None => Source::default(),
    };
    let key = match primary_key(msg.key.as_deref()) {
        Ok(k) => k,
        Err(rejected) => return rejected,
    };
    let before = present(event.before);
    let after = present(event.after).or(if op == "m" {
        present(event.message)
    } else {
        None
    });
    let changed = match (op.as_ref(), before, after) {
        ("u", Some(b), Some(a)) => changed_columns(b, a),
        _ => None,
    };
    let transaction_id = present(event.transaction)
        .filter(|t| is_object(t.get().as_bytes()))
        .and_then(|t| serde_json::from_str::<Transaction<'_>>(t.get()).ok())
        .and_then(|t| scalar_text(t.id).map(Cow::into_owned))
        .or_else(|| scalar_text(source.tx_id).map(Cow::into_owned))
        .or_else(|| scalar_text(source.gtid).map(Cow::into_owned));
    let table = scalar_text(source.table).or_else(|| scalar_text(source.collection));

    let mut buf = Vec::with_capacity(256 + value.len() / 2);
    let mut t = Tuple::begin(&mut buf, AUDIT_FIELDS);
    t.text(scalar_text(source.db).as_deref());
    t.text(scalar_text(source.schema).as_deref());
    t.text(Some(table.as_deref().unwrap_or(&msg.topic)));
    t.text(Some(operation));
    t.timestamptz(micros(
        source.ts_ns,
        source.ts_us,
        source.ts_ms,
        source.ts_sec,
    ));
    t.timestamptz(micros(event.ts_ns, event.ts_us, event.ts_ms, None));
    t.jsonb(before.map(|r| jsonb_safe(r.get())).as_deref());
    t.jsonb(after.map(|r| jsonb_safe(r.get())).as_deref());
    t.jsonb(key.as_deref());
    t.text_array(changed.as_deref());
    t.text(None); // change_user: taken from a configured column (not yet configurable)
    t.text(transaction_id.as_deref());
    t.text(position(&source).as_deref());
    t.text(scalar_text(source.connector).as_deref());
    t.bool(Some(snapshot_flag(source.snapshot).unwrap_or(op == "r")));
    t.jsonb(
        present(event.source)
            .map(|r| jsonb_safe(r.get()))
            .as_deref(),
    );
    t.text(Some(&msg.topic));
    t.int4(msg.partition);
    t.int8(msg.offset);
    t.timestamptz(msg.timestamp_ms.map(|ms| ms.saturating_mul(1_000)));
    Outcome::Row(buf)
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
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
        }
    }

    fn rejected(value: &[u8]) -> RejectKind {
        match transform(&msg(None, Some(value))) {
            Outcome::Rejected(r) => r.kind,
            other => panic!(
                "expected a rejection for {:?}, got {other:?}",
                String::from_utf8_lossy(value)
            ),
        }
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
        let nested = format!(
            "{{\"op\":\"c\",\"after\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        // Deep but valid JSON inside an image is data: PostgreSQL judges it (and the writer
        // isolates and rejects the row if it refuses it).
        assert!(matches!(
            transform(&msg(None, Some(nested.as_bytes()))),
            Outcome::Row(_)
        ));
        match transform(&msg(Some("not json"), Some(b"{\"op\":\"c\",\"after\":{}}"))) {
            Outcome::Rejected(r) => assert_eq!(r.kind, RejectKind::InvalidKey),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tombstones_are_skipped() {
        assert!(matches!(
            transform(&msg(Some("{\"id\":1}"), None)),
            Outcome::Skipped
        ));
        assert!(matches!(
            transform(&msg(None, Some(b"{\"schema\":null,\"payload\":null}"))),
            Outcome::Skipped
        ));
    }

    #[test]
    fn changed_columns_ignore_unavailable_values_and_keep_order() {
        let b = serde_json::from_str::<&RawValue>(r#"{"id":1,"b":"x","c":"big","a":2}"#).unwrap();
        let a = serde_json::from_str::<&RawValue>(
            r#"{"id":1,"b":"y","c":"__debezium_unavailable_value","a":3}"#,
        )
        .unwrap();
        assert_eq!(
            changed_columns(b, a),
            Some(vec!["b".to_string(), "a".to_string()])
        );
    }

    #[test]
    fn nul_escapes_are_made_safe_for_jsonb_without_touching_escaped_backslashes() {
        assert_eq!(jsonb_safe(r#"{"a":"x\u0000y"}"#), r#"{"a":"x\\u0000y"}"#);
        assert_eq!(jsonb_safe(r#"{"a":"x\\u0000y"}"#), r#"{"a":"x\\u0000y"}"#);
        assert_eq!(jsonb_safe(r#"{"a":"é\"\u0000"}"#), r#"{"a":"é\"\\u0000"}"#);
    }

    #[test]
    fn numbers_sent_as_strings_are_read() {
        let raw = serde_json::from_str::<&RawValue>("\"1559033904863\"").unwrap();
        assert_eq!(integer(Some(raw)), Some(1_559_033_904_863));
    }
}
