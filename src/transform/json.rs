//! Reading and writing JSON without a `Value` tree: objects as ordered lists of raw members
//! (duplicate keys allowed, the last wins, as JSON parsers do), scalars read from raw text.

use std::borrow::Cow;
use std::fmt::{self, Write};
use std::ops::Range;

use base64::Engine;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::pgcopy::jsonb::special_at;

/// An object key, borrowed unless it had escapes.
pub struct Key<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON value's text as it stands in its document. Only a parser makes one, so it is always
/// valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    pub fn get(self) -> &'a str {
        self.0
    }
}

impl<'a> From<&'a RawValue> for Raw<'a> {
    fn from(value: &'a RawValue) -> Self {
        Raw(value.get())
    }
}

/// The members of a JSON object in document order, values left as raw text; and the objects
/// among them that were split as the object was read (by member index), so that
/// [`Members::object`] does not read them again.
#[derive(Clone, Debug, Default)]
pub struct Members<'a>(pub Vec<(Cow<'a, str>, Raw<'a>)>, Vec<(usize, Members<'a>)>);

/// Where a writer of JSON text put an object's members: `name`'s value is `text[range]`, and
/// `inner` the members of that value where it is an object the writer split too.
pub struct Span<'s> {
    pub name: &'s str,
    pub range: Range<usize>,
    pub inner: Option<Vec<Span<'s>>>,
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    out.push((key, map.next_value::<&'de RawValue>()?.into()));
                }
                Ok(Members(out, Vec::new()))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Members<'a> {
    /// Parses an object; `None` for anything else (serde would read a struct from an array).
    pub fn parse(json: &'a str) -> Option<Members<'a>> {
        if !is_object(json.as_bytes()) {
            return None;
        }
        Members::scan(json).or_else(|| serde_json::from_str(json).ok())
    }

    /// The object `json` holds, whitespace around it allowed, read by [`Scan`]; `None` where
    /// that does not read it (not an object, not JSON, or what it leaves to serde_json).
    pub fn scan(json: &'a str) -> Option<Members<'a>> {
        Members::scan_whole(json).map(|(members, _)| members)
    }

    /// [`Members::scan`], with the object's own text (the whitespace around it left out).
    pub fn scan_whole(json: &'a str) -> Option<(Members<'a>, Raw<'a>)> {
        let start = json.len() - skip_ws(json).len();
        let (members, end) = Members::scan_prefix(json)?;
        skip_ws(&json[end..])
            .is_empty()
            .then(|| (members, Raw(&json[start..end])))
    }

    /// The object at the start of `json` (after whitespace), and where it ends.
    pub fn scan_prefix(json: &'a str) -> Option<(Members<'a>, usize)> {
        Members::scan_split(json, false)
    }

    /// [`Members::parse`] of an event, which also splits the objects among its members (the
    /// source, the images, the transaction), each read once.
    pub fn parse_event(json: &'a str) -> Option<Members<'a>> {
        if !is_object(json.as_bytes()) {
            return None;
        }
        Members::scan_event(json).or_else(|| serde_json::from_str(json).ok())
    }

    /// [`Members::scan`] of an event, splitting the objects among its members.
    pub fn scan_event(json: &'a str) -> Option<Members<'a>> {
        let (members, end) = Members::scan_split(json, true)?;
        skip_ws(&json[end..]).is_empty().then_some(members)
    }

    /// [`Members::scan_prefix`], splitting the objects among the members too if `split`.
    pub fn scan_split(json: &'a str, split: bool) -> Option<(Members<'a>, usize)> {
        let mut scan = Scan {
            text: json,
            at: 0,
            depth: 0,
        };
        scan.ws();
        let members = scan.object(split)?;
        Some((members, scan.at))
    }

    /// The members a writer of `text` says it wrote where ([`Span`]). The writer vouches that
    /// each span is a JSON value: only the service's own writers (the Avro reader) make spans.
    pub fn written(text: &'a str, spans: &[Span<'a>]) -> Members<'a> {
        let mut inner = Vec::new();
        let members = spans
            .iter()
            .enumerate()
            .map(|(i, span)| {
                if let Some(spans) = &span.inner {
                    let split = spans
                        .iter()
                        .map(|s| (Cow::Borrowed(s.name), Raw(&text[s.range.clone()])))
                        .collect();
                    inner.push((i, Members(split, Vec::new())));
                }
                (Cow::Borrowed(span.name), Raw(&text[span.range.clone()]))
            })
            .collect();
        Members(members, inner)
    }

    /// The member's raw value; the last one when a key is repeated. JSON `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<Raw<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
            .and_then(present)
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// The member's value as an object (the last one when a key is repeated): lent if it was
    /// split when this object was read, else read now.
    pub fn object(&self, key: &str) -> Option<Cow<'_, Members<'a>>> {
        let (i, value) = self.last(key)?;
        match self.1.iter().find(|(j, _)| *j == i) {
            Some((_, split)) => Some(Cow::Borrowed(split)),
            None => Members::parse(value.get()).map(Cow::Owned),
        }
    }

    /// The index and value of the member `key` (the last one when a key is repeated), unless
    /// it is absent or `null`.
    fn last(&self, key: &str) -> Option<(usize, Raw<'a>)> {
        let i = self.0.iter().rposition(|(k, _)| k == key)?;
        Some((i, present(self.0[i].1)?))
    }

    /// [`Members::object`], taken: what this object's reading split is handed over (and read
    /// again by a later `object` of the same key).
    pub fn take_object(&mut self, key: &str) -> Option<Members<'a>> {
        let (i, value) = self.last(key)?;
        match self.1.iter().position(|(j, _)| *j == i) {
            Some(at) => Some(self.1.swap_remove(at).1),
            None => Members::parse(value.get()),
        }
    }

    /// Each member's key and its value's text.
    pub fn spans(&self) -> impl Iterator<Item = (&str, &'a str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.get()))
    }

    pub fn text(&self, key: &str) -> Option<Cow<'a, str>> {
        scalar_text(self.get(key))
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        integer(self.get(key))
    }
}

/// A validating reader of JSON text that splits an object into its members without building
/// anything else: several times faster than serde_json's `RawValue` for the same split, which
/// was a third of a small event's transform. It reads what RFC 8259 allows, to a depth of 128;
/// a key with escapes is unescaped by serde_json. Where it returns `None` (anything it does not
/// read, valid or not) callers ask serde_json, so it only ever saves time: a test holds it to
/// serde_json's members on every fixture and on random and broken texts.
struct Scan<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

/// serde_json's recursion limit.
const SCAN_DEPTH: usize = 128;

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// An object's members, the reader at its `{`; if `split`, the objects among them split
    /// too.
    fn object(&mut self, split: bool) -> Option<Members<'a>> {
        self.eat(b'{')?;
        // An event's source has about fifteen members: room for them without growing.
        let mut members = Vec::with_capacity(16);
        let mut inner = Vec::new();
        self.items(b'}', |scan| {
            let (quoted, escaped) = scan.key()?;
            let key = if escaped {
                Cow::Owned(serde_json::from_str::<String>(quoted).ok()?)
            } else {
                Cow::Borrowed(&quoted[1..quoted.len() - 1])
            };
            let start = scan.at;
            if split && scan.peek() == Some(b'{') {
                scan.depth += 1;
                if scan.depth > SCAN_DEPTH {
                    return None;
                }
                inner.push((members.len(), scan.object(false)?));
                scan.depth -= 1;
            } else {
                scan.value()?;
            }
            members.push((key, Raw(&scan.text[start..scan.at])));
            Some(())
        })?;
        Some(Members(members, inner))
    }

    /// The items of an object or an array, the reader just past its `{` or `[`: `item` reads
    /// each one, then comes a `,` or the `close` that ends them.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            self.ws();
            item(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b if b == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A member's `"key":`: the key's text with its quotes, and whether it has escapes; the
    /// reader is left at the value.
    fn key(&mut self) -> Option<(&'a str, bool)> {
        let start = self.at;
        let escaped = self.string()?;
        let quoted = &self.text[start..self.at];
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some((quoted, escaped))
    }

    /// Any value, skipped.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => self.nested(),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object or an array, skipped.
    fn nested(&mut self) -> Option<()> {
        self.depth += 1;
        if self.depth > SCAN_DEPTH {
            return None;
        }
        if self.eat(b'{').is_some() {
            self.items(b'}', |scan| {
                scan.key()?;
                scan.value()
            })?;
        } else {
            self.eat(b'[')?;
            self.items(b']', Self::value)?;
        }
        self.depth -= 1;
        Some(())
    }

    /// A string, skipped: whether it has escapes.
    fn string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let bytes = self.text.as_bytes();
        let mut escaped = false;
        loop {
            self.at += special_at(bytes.get(self.at..)?)?;
            match bytes[self.at] {
                b'"' => {
                    self.at += 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match *bytes.get(self.at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
                        b'u' => {
                            let hex = bytes.get(self.at + 2..self.at + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 6;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.text[self.at..]
            .starts_with(word)
            .then(|| self.at += word.len())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.peek().filter(u8::is_ascii_digit)?;
            self.digits();
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }
}

/// `text` without the whitespace JSON allows between tokens (space, tab, line feed, carriage
/// return; not the other Unicode spaces `str::trim_start` takes).
pub fn skip_ws(text: &str) -> &str {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
}

pub fn is_object(json: &[u8]) -> bool {
    json.trim_ascii_start().first() == Some(&b'{')
}

pub fn is_null(raw: Raw<'_>) -> bool {
    raw.get() == "null"
}

pub fn present(raw: Raw<'_>) -> Option<Raw<'_>> {
    (!is_null(raw)).then_some(raw)
}

/// A scalar as text: strings unquoted, numbers and booleans as written; not objects or arrays.
pub fn scalar_text(raw: Option<Raw<'_>>) -> Option<Cow<'_, str>> {
    let text = raw?.get();
    match text.as_bytes().first()? {
        // A raw value is valid JSON: without a backslash, a string is its text between the quotes.
        b'"' if !text.contains('\\') => text.get(1..text.len() - 1).map(Cow::Borrowed),
        b'"' => serde_json::from_str::<Cow<'_, str>>(text).ok(),
        b'{' | b'[' | b'n' => None,
        _ => Some(Cow::Borrowed(text)),
    }
}

/// An integer sent as a number, a string of digits, or a float.
pub fn integer(raw: Option<Raw<'_>>) -> Option<i64> {
    let text = scalar_text(raw)?;
    text.trim().parse::<i64>().ok().or_else(|| {
        let f = text.trim().parse::<f64>().ok().filter(|f| f.is_finite())?;
        (f.abs() < 9.2e18).then_some(f as i64)
    })
}

/// A JSON string literal for `s`.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Builds an object's text member by member.
pub struct ObjectWriter {
    out: String,
    first: bool,
}

impl ObjectWriter {
    pub fn with_capacity(n: usize) -> Self {
        let mut out = String::with_capacity(n);
        out.push('{');
        ObjectWriter { out, first: true }
    }

    /// Adds a member whose value is already JSON text.
    pub fn member(&mut self, key: &str, json: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push_str(&quote(key));
        self.out.push(':');
        self.out.push_str(json);
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// PostgreSQL's jsonb refuses `\u0000`; it is kept as the visible text `\u0000` instead.
pub fn jsonb_safe(json: &str) -> Cow<'_, str> {
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

/// Bytes as the JSON converter prints them: a base64 string.
pub fn base64_into(out: &mut String, bytes: &[u8]) {
    out.push('"');
    base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
    out.push('"');
}

/// A JSON string literal of `s`, escaped as serde_json escapes.
pub fn escape_into(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&quote(s));
    }
}

/// A float as Java's `Double.toString` and `Float.toString` print it, which is what the JSON
/// converter sends: the shortest digits that read back as the same value (`sci`, Rust's `{:e}`),
/// in plain notation from 10^-3 up to 10^7 and as `d.dddE±n` outside, always with a fraction
/// digit. Non-finite values, which JSON cannot hold, are sent as strings.
pub fn java_float(out: &mut String, v: f64, sci: String) {
    if !v.is_finite() {
        let _ = write!(
            out,
            "\"{}\"",
            if v.is_nan() {
                "NaN"
            } else if v > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
        );
        return;
    }
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    out.push_str(sign);
    if v == 0.0 {
        out.push_str("0.0");
    } else if (-3..7).contains(&exponent) {
        if exponent < 0 {
            out.push_str("0.");
            for _ in 0..(-exponent - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let whole = exponent as usize + 1;
            if digits.len() > whole {
                out.push_str(&digits[..whole]);
                out.push('.');
                out.push_str(&digits[whole..]);
            } else {
                out.push_str(&digits);
                for _ in digits.len()..whole {
                    out.push('0');
                }
                out.push_str(".0");
            }
        }
    } else {
        out.push_str(&digits[..1]);
        out.push('.');
        out.push_str(if digits.len() > 1 { &digits[1..] } else { "0" });
        let _ = write!(out, "E{exponent}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_keep_the_last_value_as_json_parsers_do() {
        let m =
            Members::parse(r#"{"name":"3.7.0","ts_ms":1,"name":"dbserver1","ts_ms":3}"#).unwrap();
        assert_eq!(m.text("name").as_deref(), Some("dbserver1"));
        assert_eq!(m.int("ts_ms"), Some(3));
    }

    #[test]
    fn arrays_are_not_objects() {
        assert!(Members::parse("[1,2]").is_none());
        assert!(Members::parse(" {\"a\":1}").is_some());
    }

    #[test]
    fn numbers_sent_as_strings_are_read() {
        let m = Members::parse(r#"{"a":"1559033904863","b":1.5e3,"c":null,"d":"x"}"#).unwrap();
        assert_eq!(m.int("a"), Some(1_559_033_904_863));
        assert_eq!(m.int("b"), Some(1500));
        assert_eq!(m.get("c").map(Raw::get), None);
        assert_eq!(m.int("d"), None);
    }

    #[test]
    fn nul_escapes_are_made_safe_for_jsonb_without_touching_escaped_backslashes() {
        assert_eq!(jsonb_safe(r#"{"a":"x\u0000y"}"#), r#"{"a":"x\\u0000y"}"#);
        assert_eq!(jsonb_safe(r#"{"a":"x\\u0000y"}"#), r#"{"a":"x\\u0000y"}"#);
        assert_eq!(jsonb_safe(r#"{"a":"é\"\u0000"}"#), r#"{"a":"é\"\\u0000"}"#);
    }

    #[test]
    fn escaped_keys_are_unescaped() {
        let m = Members::parse(r#"{"a\"b":1}"#).unwrap();
        assert_eq!(m.0[0].0, "a\"b");
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    /// xorshift: random enough for texts, and the same on every run.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.roll(items.len())]
        }
    }

    const WS: &[&str] = &["", "", "", " ", "\n\t ", "\r\n"];
    const NUMBERS: &[&str] = &[
        "0",
        "-0",
        "7",
        "-12",
        "1.5",
        "1.5e10",
        "-12.0E-3",
        "2E+2",
        "0.000",
        "1e400",
        "123456789012345678901234567890",
    ];
    const CHARS: &[&str] = &[
        "a",
        "Z",
        "é",
        "😀",
        " ",
        "\\\"",
        "\\\\",
        "\\/",
        "\\n",
        "\\t",
        "\\u00e9",
        "\\u0000",
        "\\ud83d\\ude00",
        "\\ud800",
        "\\udc00x",
        "__debezium_unavailable_value",
    ];
    const KEYS: &[&str] = &[
        "id",
        "before",
        "after",
        "op",
        "a\\\"b",
        "caf\\u00e9",
        "",
        "id",
    ];

    fn value(d: &mut Dice, depth: usize, out: &mut String) {
        match d.roll(if depth > 4 { 5 } else { 7 }) {
            0 => out.push_str(d.pick(&["null", "true", "false"])),
            1 | 2 => out.push_str(d.pick(NUMBERS)),
            3 | 4 => {
                out.push('"');
                for _ in 0..d.roll(6) {
                    out.push_str(d.pick(CHARS));
                }
                out.push('"');
            }
            5 => object(d, depth + 1, out),
            _ => {
                out.push('[');
                for i in 0..d.roll(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(d.pick(WS));
                    value(d, depth + 1, out);
                }
                out.push(']');
            }
        }
    }

    fn object(d: &mut Dice, depth: usize, out: &mut String) {
        out.push('{');
        for i in 0..d.roll(6) {
            if i > 0 {
                out.push(',');
            }
            out.push_str(d.pick(WS));
            out.push('"');
            out.push_str(d.pick(KEYS));
            out.push('"');
            out.push_str(d.pick(WS));
            out.push(':');
            out.push_str(d.pick(WS));
            value(d, depth, out);
            out.push_str(d.pick(WS));
        }
        out.push('}');
    }

    /// The text with one character replaced, inserted or taken out, or cut short.
    fn broken(d: &mut Dice, text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let at = d.roll(chars.len().max(1));
        let other = d
            .pick(&[
                "{", "}", "[", "]", ",", ":", "\"", "\\", " ", "0", "-", ".", "e", "x", "\u{1}",
                "é",
            ])
            .chars()
            .next()
            .unwrap_or(' ');
        let mut out: Vec<char> = chars.clone();
        match d.roll(4) {
            0 => out[at] = other,
            1 => out.insert(at, other),
            2 => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
        out.into_iter().collect()
    }

    fn pairs<'a>(m: &Members<'a>) -> Vec<(String, &'a str)> {
        m.0.iter().map(|(k, v)| (k.to_string(), v.get())).collect()
    }

    /// The oracle is serde_json: what the scanner reads, serde_json reads the same, member by
    /// member; every object the generator makes is read by the scanner (so the fast path is
    /// taken), and a broken text is never read into something serde_json would refuse.
    #[test]
    fn the_scanner_reads_objects_as_serde_json_does_and_nothing_it_refuses() {
        let mut d = Dice(0x9e37_79b9_7f4a_7c15);
        let (mut read, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut text = String::new();
            text.push_str(d.pick(WS));
            object(&mut d, 0, &mut text);
            text.push_str(d.pick(WS));
            let serde: Members<'_> = serde_json::from_str(&text).unwrap();
            let scanned = Members::scan(&text).unwrap_or_else(|| panic!("not scanned: {text}"));
            assert_eq!(pairs(&scanned), pairs(&serde), "{text}");
            let (event, _) = Members::scan_split(&text, true).unwrap();
            assert_eq!(pairs(&event), pairs(&serde), "{text}");
            for (key, _) in &serde.0 {
                let inner = serde.get(key).filter(|v| v.get().starts_with('{'));
                let inner = inner.map(|v| serde_json::from_str::<Members<'_>>(v.get()).unwrap());
                assert_eq!(
                    event.object(key).as_deref().map(pairs),
                    inner.as_ref().map(pairs),
                    "{key} in {text}"
                );
            }
            for _ in 0..3 {
                let broken = broken(&mut d, &text);
                let serde = serde_json::from_str::<Members<'_>>(&broken).ok();
                match Members::scan(&broken) {
                    Some(scanned) => {
                        let serde = serde.unwrap_or_else(|| panic!("serde refuses {broken}"));
                        assert_eq!(pairs(&scanned), pairs(&serde), "{broken}");
                        read += 1;
                    }
                    None => refused += 1,
                }
            }
        }
        assert!(
            read > 1000 && refused > 10_000,
            "{read} read, {refused} refused"
        );
    }

    #[test]
    fn the_scanner_leaves_to_serde_json_what_nests_deeper_than_its_limit() {
        for depth in [1, 100, 126, 127, 128, 129, 130, 200] {
            let text = format!("{{\"a\":{}1{}}}", "[".repeat(depth), "]".repeat(depth));
            let serde = serde_json::from_str::<Members<'_>>(&text).ok();
            match Members::scan(&text) {
                Some(scanned) => assert_eq!(
                    Some(pairs(&scanned)),
                    serde.as_ref().map(pairs),
                    "depth {depth}"
                ),
                None => assert!(depth > 100, "depth {depth} left to serde_json"),
            }
            // The same depth in objects, which an event's reading splits.
            let text = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            let serde = serde_json::from_str::<Members<'_>>(&text).ok();
            match Members::scan_split(&text, true) {
                Some((scanned, _)) => assert_eq!(
                    Some(pairs(&scanned)),
                    serde.as_ref().map(pairs),
                    "depth {depth}"
                ),
                None => assert!(depth > 100, "depth {depth} left to serde_json"),
            }
        }
    }
}
