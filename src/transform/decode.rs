//! Values decoded by the JSON converter's schema: Connect `Decimal` and Debezium's
//! `VariableScaleDecimal` to exact decimals, Debezium and Connect dates, times and timestamps to
//! ISO-8601, `io.debezium.data.Json` strings to JSON, plain `bytes` to `\x` hex. Without a schema
//! (or with one this cannot read), values are stored as sent.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::thread::LocalKey;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::json::{integer, quote, scalar_text, Members, Raw};

/// How a field's value is turned into what is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logical {
    /// Base64 two's-complement big-endian unscaled value; scale from the schema.
    Decimal { scale: i32 },
    /// `{"scale": n, "value": base64}`.
    VariableScaleDecimal,
    /// Days since 1970-01-01.
    Date,
    /// Time of day in milli-, micro- or nanoseconds.
    Time { digits: u32 },
    /// Since the epoch in milli-, micro- or nanoseconds; `zulu` for Connect's UTC instant.
    Timestamp { digits: u32, zulu: bool },
    /// A string holding JSON.
    Json,
    /// Base64 bytes without a logical name.
    Bytes,
}

/// The fields of one struct (a row image or a key) that need decoding.
#[derive(Debug, Default)]
pub struct StructSchema {
    fields: Vec<(String, Logical)>,
}

impl StructSchema {
    pub fn get(&self, field: &str) -> Option<Logical> {
        self.fields
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, l)| *l)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

#[derive(Deserialize)]
struct Field<'a> {
    #[serde(borrow, default)]
    field: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
    #[serde(borrow, default)]
    fields: Option<Vec<Field<'a>>>,
}

/// A cheap look at the schema text before parsing it: most schemas need no decoding at all.
fn may_need_decoding(schema: &str) -> bool {
    [
        "Decimal",
        "io.debezium.time.",
        "connect.data.Date",
        "connect.data.Time",
        "io.debezium.data.Json",
        "\"bytes\"",
    ]
    .iter()
    .any(|needle| schema.contains(needle))
}

fn logical(f: &Field<'_>) -> Option<Logical> {
    let name = f.name.as_deref().unwrap_or("");
    Some(match name {
        "org.apache.kafka.connect.data.Decimal" => {
            let scale = f
                .parameters
                .and_then(|p| Members::parse(p.get()))
                .and_then(|p| p.int("scale"))
                .unwrap_or(0);
            Logical::Decimal {
                scale: scale as i32,
            }
        }
        "io.debezium.data.VariableScaleDecimal" => Logical::VariableScaleDecimal,
        "io.debezium.time.Date" | "org.apache.kafka.connect.data.Date" => Logical::Date,
        "io.debezium.time.Time" | "org.apache.kafka.connect.data.Time" => {
            Logical::Time { digits: 3 }
        }
        "io.debezium.time.MicroTime" => Logical::Time { digits: 6 },
        "io.debezium.time.NanoTime" => Logical::Time { digits: 9 },
        "io.debezium.time.Timestamp" => Logical::Timestamp {
            digits: 3,
            zulu: false,
        },
        "org.apache.kafka.connect.data.Timestamp" => Logical::Timestamp {
            digits: 3,
            zulu: true,
        },
        "io.debezium.time.MicroTimestamp" => Logical::Timestamp {
            digits: 6,
            zulu: false,
        },
        "io.debezium.time.NanoTimestamp" => Logical::Timestamp {
            digits: 9,
            zulu: false,
        },
        "io.debezium.data.Json" => Logical::Json,
        "" if f.ty.as_deref() == Some("bytes") => Logical::Bytes,
        _ => return None,
    })
}

fn struct_schema(fields: &[Field<'_>]) -> StructSchema {
    StructSchema {
        fields: fields
            .iter()
            .filter_map(|f| Some((f.field.as_deref()?.to_string(), logical(f)?)))
            .collect(),
    }
}

/// The decodable fields of a value schema's `before` and `after` structs.
pub fn value_schemas(schema: &str) -> Option<Rc<(StructSchema, StructSchema)>> {
    memo(&VALUE_SCHEMAS, schema, |schema| {
        let top: Field<'_> = serde_json::from_str(schema).ok()?;
        let fields = top.fields?;
        let image = |name: &str| {
            fields
                .iter()
                .find(|f| f.field.as_deref() == Some(name))
                .and_then(|f| f.fields.as_deref())
                .map(struct_schema)
                .unwrap_or_default()
        };
        let (before, after) = (image("before"), image("after"));
        (!before.is_empty() || !after.is_empty()).then_some((before, after))
    })
}

/// The decodable fields of a key schema (a struct of the key columns).
pub fn key_schema(schema: &str) -> Option<Rc<StructSchema>> {
    memo(&KEY_SCHEMAS, schema, |schema| {
        let top: Field<'_> = serde_json::from_str(schema).ok()?;
        let s = struct_schema(top.fields.as_deref()?);
        (!s.is_empty()).then_some(s)
    })
}

/// The length of the value schema this thread has read (and remembers) that `text` starts
/// with, byte for byte. Only objects: one is complete where its text ends, so `text` holds that
/// very schema and then whatever follows it.
pub fn remembered_value_schema(text: &str) -> Option<usize> {
    VALUE_SCHEMAS.with_borrow(|entries| {
        entries
            .iter()
            .rev()
            .find(|(k, _)| k.starts_with('{') && text.starts_with(&**k))
            .map(|(k, _)| k.len())
    })
}

type Memo<T> = RefCell<VecDeque<(Box<str>, Option<Rc<T>>)>>;

thread_local! {
    static VALUE_SCHEMAS: Memo<(StructSchema, StructSchema)> = const { RefCell::new(VecDeque::new()) };
    static KEY_SCHEMAS: Memo<StructSchema> = const { RefCell::new(VecDeque::new()) };
}

/// Schemas remembered per thread, and the longest one remembered.
const MEMO_ENTRIES: usize = 16;
const MEMO_MAX_LEN: usize = 64 * 1024;

/// `read(schema)`, remembered by the schema's text. The JSON converter repeats a table's schema in
/// every message; reading it each time was a third of a large event's transform. The result is
/// the same as reading it again: the transform stays a pure function of the message.
fn memo<T>(
    cache: &'static LocalKey<Memo<T>>,
    schema: &str,
    read: impl FnOnce(&str) -> Option<T>,
) -> Option<Rc<T>> {
    let read = |schema| {
        if may_need_decoding(schema) {
            read(schema).map(Rc::new)
        } else {
            None
        }
    };
    if schema.len() > MEMO_MAX_LEN {
        return read(schema);
    }
    cache.with_borrow_mut(|entries| {
        if let Some((_, found)) = entries.iter().rev().find(|(k, _)| **k == *schema) {
            return found.clone();
        }
        let found = read(schema);
        if entries.len() == MEMO_ENTRIES {
            entries.pop_front();
        }
        entries.push_back((schema.into(), found.clone()));
        found
    })
}

/// The stored JSON text for a value, or `None` to keep it as sent.
pub fn decode(raw: Raw<'_>, logical: Logical) -> Option<String> {
    match logical {
        Logical::Decimal { scale } => {
            let bytes = base64(&scalar_text(Some(raw))?)?;
            Some(decimal(&bytes, scale))
        }
        Logical::VariableScaleDecimal => {
            let m = Members::parse(raw.get())?;
            let scale = m.int("scale")?;
            let bytes = base64(&m.text("value")?)?;
            Some(decimal(&bytes, i32::try_from(scale).ok()?))
        }
        Logical::Date => Some(quote(&date(integer(Some(raw))?)?)),
        Logical::Time { digits } => {
            let v = integer(Some(raw))?;
            let per_sec = 10i64.pow(digits);
            let (secs, frac) = (v.div_euclid(per_sec), v.rem_euclid(per_sec));
            Some(quote(&format!(
                "{:02}:{:02}:{:02}.{frac:0width$}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60,
                width = digits as usize
            )))
        }
        Logical::Timestamp { digits, zulu } => {
            let v = integer(Some(raw))?;
            let per_sec = 10i64.pow(digits);
            let (secs, frac) = (v.div_euclid(per_sec), v.rem_euclid(per_sec));
            Some(quote(&timestamp(secs, frac, digits, zulu)?))
        }
        Logical::Json => {
            let text = scalar_text(Some(raw)).filter(|_| raw.get().starts_with('"'))?;
            serde_json::from_str::<&RawValue>(&text).ok()?;
            Some(text.trim().to_string())
        }
        Logical::Bytes => {
            let bytes = base64(&scalar_text(Some(raw)).filter(|_| raw.get().starts_with('"'))?)?;
            Some(quote(&hex(&bytes)))
        }
    }
}

pub fn base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A two's-complement big-endian integer with `scale` decimal places, as a JSON number.
pub fn decimal(bytes: &[u8], scale: i32) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude: Vec<u8> = bytes.to_vec();
    if negative {
        // Negate: invert and add one.
        for b in magnitude.iter_mut() {
            *b = !*b;
        }
        for b in magnitude.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    // Base 256 to base 10 by repeated division.
    let mut digits = Vec::new();
    let mut n: Vec<u8> = magnitude.into_iter().skip_while(|b| *b == 0).collect();
    while !n.is_empty() {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
        n = n.into_iter().skip_while(|b| *b == 0).collect();
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    let mut text = String::from_utf8(digits).unwrap_or_default();
    if scale > 0 {
        let scale = scale as usize;
        if text.len() <= scale {
            text = format!("{}{text}", "0".repeat(scale + 1 - text.len()));
        }
        text.insert(text.len() - scale, '.');
    } else if scale < 0 && text != "0" {
        text.push_str(&"0".repeat(scale.unsigned_abs() as usize));
    }
    if negative && text.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        text.insert(0, '-');
    }
    text
}

/// The civil date of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub fn date(days: i64) -> Option<String> {
    if days.abs() > 3_000_000 {
        return None;
    }
    let (y, m, d) = civil(days);
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

/// `YYYY-MM-DDTHH:MM:SS.fff…` from seconds and a fraction with `digits` digits.
pub fn timestamp(secs: i64, frac: i64, digits: u32, zulu: bool) -> Option<String> {
    let date = date(secs.div_euclid(86_400))?;
    let s = secs.rem_euclid(86_400);
    Some(format!(
        "{date}T{:02}:{:02}:{:02}.{frac:0width$}{}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        if zulu { "Z" } else { "" },
        width = digits as usize
    ))
}

/// A Unix-microseconds instant as ISO-8601 UTC.
pub fn iso_micros(us: i64) -> String {
    timestamp(us.div_euclid(1_000_000), us.rem_euclid(1_000_000), 6, true)
        .unwrap_or_else(|| us.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Raw<'_> {
        serde_json::from_str::<&RawValue>(s).unwrap().into()
    }

    #[test]
    fn decimals_are_exact() {
        // 1234.56 with scale 2: unscaled 123456 = 0x01E240.
        assert_eq!(
            decode(raw("\"AeJA\""), Logical::Decimal { scale: 2 }).unwrap(),
            "1234.56"
        );
        // -1 with scale 3: 0xFF.
        assert_eq!(decimal(&[0xff], 3), "-0.001");
        assert_eq!(decimal(&[0x00], 2), "0.00");
        assert_eq!(decimal(&[0x05], -2), "500");
        // 2^72 does not fit in any machine integer.
        assert_eq!(
            decimal(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0),
            "4722366482869645213696"
        );
        let vsd = raw(r#"{"scale":1,"value":"AeJA"}"#);
        assert_eq!(
            decode(vsd, Logical::VariableScaleDecimal).unwrap(),
            "12345.6"
        );
    }

    #[test]
    fn times_become_iso_8601() {
        assert_eq!(
            decode(raw("19000"), Logical::Date).unwrap(),
            "\"2022-01-08\""
        );
        assert_eq!(decode(raw("-1"), Logical::Date).unwrap(), "\"1969-12-31\"");
        assert_eq!(
            decode(raw("3723004"), Logical::Time { digits: 3 }).unwrap(),
            "\"01:02:03.004\""
        );
        let ts = decode(
            raw("1529507596945104"),
            Logical::Timestamp {
                digits: 6,
                zulu: false,
            },
        );
        assert_eq!(ts.unwrap(), "\"2018-06-20T15:13:16.945104\"");
        let ts = decode(
            raw("1529507596945"),
            Logical::Timestamp {
                digits: 3,
                zulu: true,
            },
        );
        assert_eq!(ts.unwrap(), "\"2018-06-20T15:13:16.945Z\"");
        assert_eq!(iso_micros(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn json_strings_and_bytes() {
        assert_eq!(
            decode(raw(r#""{\"a\": 1}""#), Logical::Json).unwrap(),
            r#"{"a": 1}"#
        );
        assert_eq!(decode(raw(r#""not json""#), Logical::Json), None);
        assert_eq!(
            decode(raw(r#""AAH/""#), Logical::Bytes).unwrap(),
            r#""\\x0001ff""#
        );
    }

    #[test]
    fn schemas_without_logical_types_are_not_parsed() {
        assert!(value_schemas(r#"{"type":"struct","fields":[{"field":"after","type":"struct","fields":[{"field":"id","type":"int32"}]}]}"#).is_none());
        let s = value_schemas(
            r#"{"fields":[{"field":"after","type":"struct","fields":[{"field":"d","type":"int32","name":"io.debezium.time.Date"}]}]}"#,
        )
        .unwrap();
        assert_eq!(s.1.get("d"), Some(Logical::Date));
    }

    /// Remembered schemas are found by their whole text: two of one length, each read back
    /// right, also after more schemas than the memo holds have pushed them out.
    #[test]
    fn remembered_schemas_are_told_apart_by_their_text() {
        let schema = |field: &str, name: &str| {
            format!(
                r#"{{"fields":[{{"field":"after","type":"struct","fields":[{{"field":"{field}","type":"int64","name":"{name}"}}]}}]}}"#
            )
        };
        let date = schema("a", "io.debezium.time.Date");
        let time = schema("a", "io.debezium.time.Time");
        assert_eq!(date.len(), time.len());
        for round in 0..3 {
            for (text, want) in [(&date, Logical::Date), (&time, Logical::Time { digits: 3 })] {
                let s = value_schemas(text).unwrap();
                assert_eq!(s.1.get("a"), Some(want), "round {round}");
            }
            for i in 0..MEMO_ENTRIES {
                let other = schema(&format!("f{i}"), "io.debezium.time.Date");
                assert_eq!(value_schemas(&other).unwrap().1.get("a"), None);
            }
        }
    }
}
