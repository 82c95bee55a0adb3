//! Registry-framed JSON, as Confluent's JSON Schema converter writes it: byte 0, the schema's id,
//! then the value's JSON itself, whose schema is a JSON Schema with Connect's keywords
//! (`connect.index`, `connect.type`, `connect.version`, `connect.parameters`; the name in
//! `title`, the doc in `description`). Those give back the Connect schema, as Confluent's
//! `JsonSchemaData.toConnectSchema` does (without the registry's subject version), so the
//! message reads as the JSON converter's envelope: the same row as the JSON converter's.
//!
//! Not read: maps whose keys are not strings (written as `[{"key", "value"}]`, where the JSON
//! converter prints `[[key, value]]`) and unions other than with `null`; Debezium's envelopes
//! have neither.

use std::fmt::Write;

use serde_json::{Map, Value};

/// A JSON Schema ready to read values with.
#[derive(Debug)]
pub struct JsonSchema {
    /// The Connect schema, as the JSON converter prints it.
    connect: String,
}

impl JsonSchema {
    pub fn parse(text: &str) -> Result<JsonSchema, String> {
        let json: Value =
            serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
        Ok(JsonSchema {
            connect: connect(&json, false, None)?,
        })
    }

    /// The Connect schema, as the JSON converter prints it.
    pub fn connect(&self) -> &str {
        &self.connect
    }

    /// The JSON converter's text of one value: `{"schema": ..., "payload": <the value>}`.
    pub fn to_json(&self, value: &[u8]) -> Result<String, String> {
        let value = std::str::from_utf8(value).map_err(|e| format!("not UTF-8: {e}"))?;
        Ok(format!(
            "{{\"schema\":{},\"payload\":{value}}}",
            self.connect
        ))
    }
}

fn quote(s: &str) -> String {
    super::json::quote(s)
}

/// The Connect schema of `s`, as the JSON converter prints it.
fn connect(s: &Value, optional: bool, field: Option<&str>) -> Result<String, String> {
    let o = s
        .as_object()
        .ok_or_else(|| format!("{s} is not a schema this version reads"))?;
    if let Some(branches) = o.get("oneOf").or_else(|| o.get("anyOf")) {
        let branches = branches.as_array().map(Vec::as_slice).unwrap_or_default();
        let is_null = |b: &Value| b.get("type").and_then(Value::as_str) == Some("null");
        return match branches {
            [a, b] if is_null(a) => connect(b, true, field),
            [a, b] if is_null(b) => connect(a, true, field),
            _ => Err("a union other than with null: not in Debezium's schemas".to_string()),
        };
    }
    let ty = o.get("type").and_then(Value::as_str).unwrap_or("object");
    let connect_type = o.get("connect.type").and_then(Value::as_str);
    let mut inner = String::new();
    let kind = match (ty, connect_type) {
        ("integer", Some(t @ ("int8" | "int16" | "int32" | "int64"))) => t,
        ("integer", _) => "int64",
        (_, Some("bytes")) => "bytes",
        ("number", Some("float32")) => "float",
        ("number", _) => "double",
        ("boolean", _) => "boolean",
        ("string", _) => "string",
        ("array", Some("map")) => {
            return Err("a map with keys that are not strings: not in Debezium's schemas".into())
        }
        ("array", _) => {
            let items = o.get("items").ok_or("an array without \"items\"")?;
            inner = format!(",\"items\":{}", connect(items, false, None)?);
            "array"
        }
        ("object", Some("map")) => {
            let values = o
                .get("additionalProperties")
                .ok_or("a map without \"additionalProperties\"")?;
            inner = format!(
                ",\"keys\":{{\"type\":\"string\",\"optional\":false}},\"values\":{}",
                connect(values, false, None)?
            );
            "map"
        }
        ("object", _) => {
            let empty = Map::new();
            let properties = o
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            // Properties come in any order; Connect's order is `connect.index`.
            let mut fields: Vec<(i64, &String, &Value)> = properties
                .iter()
                .enumerate()
                .map(|(i, (name, p))| {
                    let index = p.get("connect.index").and_then(Value::as_i64);
                    (index.unwrap_or(properties.len() as i64 + i as i64), name, p)
                })
                .collect();
            fields.sort_by_key(|(index, _, _)| *index);
            let texts = fields
                .iter()
                .map(|(_, name, p)| connect(p, false, Some(name)))
                .collect::<Result<Vec<_>, _>>()?;
            inner = format!(",\"fields\":[{}]", texts.join(","));
            "struct"
        }
        (other, _) => return Err(format!("the JSON Schema type {other:?}")),
    };
    let mut out = format!("{{\"type\":\"{kind}\"{inner},\"optional\":{optional}");
    if let Some(name) = o.get("title").and_then(Value::as_str) {
        let _ = write!(out, ",\"name\":{}", quote(name));
    }
    if let Some(version) = o.get("connect.version").and_then(Value::as_i64) {
        let _ = write!(out, ",\"version\":{version}");
    }
    if let Some(doc) = o.get("description").and_then(Value::as_str) {
        let _ = write!(out, ",\"doc\":{}", quote(doc));
    }
    if let Some(Value::Object(params)) = o.get("connect.parameters") {
        let _ = write!(out, ",\"parameters\":{}", Value::Object(params.clone()));
    }
    if let Some(default) = o.get("default") {
        let _ = write!(out, ",\"default\":{default}");
    }
    if let Some(field) = field {
        let _ = write!(out, ",\"field\":{}", quote(field));
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_connect_index_and_a_union_with_null_is_optional() {
        let schema = r#"{"type":"object","title":"s.t.Value","properties":{
            "b":{"connect.index":1,"oneOf":[{"type":"null"},{"type":"string","connect.type":"bytes","title":"org.apache.kafka.connect.data.Decimal","connect.version":1,"connect.parameters":{"scale":"2"}}]},
            "a":{"type":"integer","connect.index":0,"connect.type":"int16"}}}"#;
        let s = JsonSchema::parse(schema).unwrap();
        let text = s.to_json(br#"{"a":1,"b":"AQ=="}"#).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let fields = &v["schema"]["fields"];
        assert_eq!(fields[0]["field"], "a");
        assert_eq!(fields[0]["type"], "int16");
        assert_eq!(fields[1]["field"], "b");
        assert_eq!(fields[1]["optional"], true);
        assert_eq!(fields[1]["name"], "org.apache.kafka.connect.data.Decimal");
        assert_eq!(fields[1]["parameters"]["scale"], "2");
        assert_eq!(v["schema"]["name"], "s.t.Value");
        assert_eq!(v["payload"]["b"], "AQ==");
    }
}
