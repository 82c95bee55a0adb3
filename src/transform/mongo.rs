//! MongoDB Extended JSON: the MongoDB connector sends documents as strings of Extended JSON.
//! They are stored as JSON objects with the type wrappers resolved where that loses nothing
//! (`$oid`, `$numberInt`, `$numberLong`, finite `$numberDouble`, `$date`, `$symbol`); wrappers
//! that would lose information (`$binary`, `$numberDecimal`, `$timestamp`, regular expressions,
//! non-finite doubles, ...) are kept as they were sent.

use serde_json::{Map, Number, Value};

use super::decode;

/// Resolves a string of Extended JSON; `None` if it is not JSON.
pub fn resolve_text(ext: &str) -> Option<String> {
    let value: Value = serde_json::from_str(ext).ok()?;
    Some(resolve(value).to_string())
}

pub fn resolve(value: Value) -> Value {
    match value {
        Value::Object(map) => match wrapper(&map) {
            Some(resolved) => resolved,
            None => Value::Object(map.into_iter().map(|(k, v)| (k, resolve(v))).collect()),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(resolve).collect()),
        other => other,
    }
}

/// The plain JSON value of a one-member type wrapper, when the conversion is lossless.
fn wrapper(map: &Map<String, Value>) -> Option<Value> {
    if map.len() != 1 {
        return None;
    }
    let (key, inner) = map.iter().next()?;
    match (key.as_str(), inner) {
        ("$oid", Value::String(s)) | ("$symbol", Value::String(s)) => {
            Some(Value::String(s.clone()))
        }
        ("$numberInt", Value::String(s)) | ("$numberLong", Value::String(s)) => {
            s.parse::<i64>().ok().map(|n| Value::Number(n.into()))
        }
        ("$numberDouble", Value::String(s)) => s
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number),
        ("$date", inner) => {
            let ms = match inner {
                Value::Number(n) => n.as_i64()?,
                Value::Object(m) => m.get("$numberLong")?.as_str()?.parse().ok()?,
                // Relaxed form: already an ISO-8601 string.
                Value::String(s) => return Some(Value::String(s.clone())),
                _ => return None,
            };
            let iso = decode::timestamp(ms.div_euclid(1000), ms.rem_euclid(1000), 3, true)?;
            Some(Value::String(iso))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossless_wrappers_are_resolved_and_the_rest_kept() {
        let ext = r#"{"_id": {"$oid": "5d1b4cd5e9ab6f1a0c9b2c7e"}, "n": {"$numberLong": "1004"},
            "when": {"$date": {"$numberLong": "1561026400000"}}, "d": {"$numberDouble": "NaN"},
            "bin": {"$binary": {"base64": "AQI=", "subType": "00"}}, "dec": {"$numberDecimal": "1.10"},
            "list": [{"$numberInt": "7"}]}"#;
        let v: Value = serde_json::from_str(&resolve_text(ext).unwrap()).unwrap();
        assert_eq!(v["_id"], "5d1b4cd5e9ab6f1a0c9b2c7e");
        assert_eq!(v["n"], 1004);
        assert_eq!(v["when"], "2019-06-20T10:26:40.000Z");
        assert_eq!(v["d"]["$numberDouble"], "NaN");
        assert_eq!(v["bin"]["$binary"]["base64"], "AQI=");
        assert_eq!(v["dec"]["$numberDecimal"], "1.10");
        assert_eq!(v["list"][0], 7);
    }
}
