//! Reading and writing JSON without a `Value` tree: objects as ordered lists of raw members
//! (duplicate keys allowed, the last wins, as JSON parsers do), scalars read from raw text.

use std::borrow::Cow;
use std::fmt::{self, Write};

use base64::Engine;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

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

/// The members of a JSON object in document order, values left as raw text.
pub struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

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
                    out.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(out))
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
        serde_json::from_str(json).ok()
    }

    /// The member's raw value; the last one when a key is repeated. JSON `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
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

    /// The member's value as an object.
    pub fn object(&self, key: &str) -> Option<Members<'a>> {
        self.get(key).and_then(|v| Members::parse(v.get()))
    }

    pub fn text(&self, key: &str) -> Option<Cow<'a, str>> {
        scalar_text(self.get(key))
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        integer(self.get(key))
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

pub fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

pub fn present(raw: &RawValue) -> Option<&RawValue> {
    (!is_null(raw)).then_some(raw)
}

/// A scalar as text: strings unquoted, numbers and booleans as written; not objects or arrays.
pub fn scalar_text(raw: Option<&RawValue>) -> Option<Cow<'_, str>> {
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
pub fn integer(raw: Option<&RawValue>) -> Option<i64> {
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
        assert_eq!(m.get("c").map(RawValue::get), None);
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
