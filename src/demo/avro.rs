//! The demo's traffic in Avro, as Confluent's AvroConverter writes Debezium's events: each
//! record's Connect schema (the JSON converter's `schema`) becomes the Avro schema
//! `AvroData.fromConnectSchema` makes of it, registered under `<topic>-value` or `<topic>-key`,
//! and its payload the datum, framed with the schema's id.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::registry::serve::LocalRegistry;
use crate::transform::avro::AvroSchema;

/// Writes JSON-converter texts as registry-framed Avro, registering their schemas.
pub struct AvroWriter<'a> {
    registry: &'a LocalRegistry,
    /// By subject and Connect schema text: the id and the schema.
    known: HashMap<(String, String), (u32, Arc<AvroSchema>)>,
}

impl<'a> AvroWriter<'a> {
    pub fn new(registry: &'a LocalRegistry) -> Self {
        AvroWriter {
            registry,
            known: HashMap::new(),
        }
    }

    /// `{"schema": ..., "payload": ...}` as the Avro converter frames it for `subject`.
    pub fn frame(&mut self, subject: &str, json_text: &str) -> Result<Vec<u8>, String> {
        let v: Value = serde_json::from_str(json_text).map_err(|e| e.to_string())?;
        let connect = v
            .get("schema")
            .ok_or("no \"schema\": not the JSON converter's")?;
        let key = (subject.to_string(), connect.to_string());
        let (id, schema) = match self.known.get(&key) {
            Some(known) => known.clone(),
            None => {
                let avro = avro_schema(connect).to_string();
                let id = self.registry.register(subject, &avro);
                let schema = Arc::new(AvroSchema::parse(&avro)?);
                self.known.insert(key, (id, schema.clone()));
                (id, schema)
            }
        };
        let mut out = vec![0];
        out.extend(id.to_be_bytes());
        out.extend(schema.encode(v.get("payload").unwrap_or(&Value::Null))?);
        Ok(out)
    }
}

/// The Avro schema Confluent's AvroConverter registers for a Connect schema printed by the JSON
/// converter (`AvroData.fromConnectSchema`, with `connect.meta.data` on, its default): Connect's
/// names, versions, docs, parameters and defaults as `connect.*` properties, an optional type as
/// a union with `null`, a named struct written once and named after that.
pub fn avro_schema(connect: &Value) -> Value {
    ToAvro::default().optional(connect)
}

#[derive(Default)]
struct ToAvro {
    defined: HashSet<String>,
    unnamed: usize,
}

const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";

impl ToAvro {
    /// The type, a union with `null` when the schema is optional (`null` second when it has a
    /// default, as AvroData does).
    fn optional(&mut self, s: &Value) -> Value {
        let base = self.base(s);
        if s.get("optional").and_then(Value::as_bool) != Some(true) {
            return base;
        }
        match s.get("default") {
            Some(d) if !d.is_null() => json!([base, "null"]),
            _ => json!(["null", base]),
        }
    }

    fn base(&mut self, s: &Value) -> Value {
        let ty = s.get("type").and_then(Value::as_str).unwrap_or("string");
        let name = s.get("name").and_then(Value::as_str);
        let params = s.get("parameters").and_then(Value::as_object);
        let param = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str);
        let mut o = Map::new();
        let mut connect_type = None;
        match (ty, name) {
            (_, Some(DECIMAL)) => {
                o.insert("type".into(), json!("bytes"));
                let scale: i64 = param("scale").and_then(|v| v.parse().ok()).unwrap_or(0);
                let precision: i64 = param("connect.decimal.precision")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(64);
                o.insert("scale".into(), json!(scale));
                o.insert("precision".into(), json!(precision));
                o.insert("logicalType".into(), json!("decimal"));
            }
            (_, Some("org.apache.kafka.connect.data.Date")) => {
                o.insert("type".into(), json!("int"));
                o.insert("logicalType".into(), json!("date"));
            }
            (_, Some("org.apache.kafka.connect.data.Time")) => {
                o.insert("type".into(), json!("int"));
                o.insert("logicalType".into(), json!("time-millis"));
            }
            (_, Some("org.apache.kafka.connect.data.Timestamp")) => {
                o.insert("type".into(), json!("long"));
                o.insert("logicalType".into(), json!("timestamp-millis"));
            }
            ("int8" | "int16", _) => {
                o.insert("type".into(), json!("int"));
                connect_type = Some(ty);
            }
            ("array", _) => {
                let items = self.optional(s.get("items").unwrap_or(&Value::Null));
                o.insert("type".into(), json!("array"));
                o.insert("items".into(), items);
            }
            ("map", _) => {
                let keys = s.get("keys").unwrap_or(&Value::Null);
                let values = self.optional(s.get("values").unwrap_or(&Value::Null));
                let string_keys = keys.get("type").and_then(Value::as_str) == Some("string")
                    && keys.get("optional").and_then(Value::as_bool) != Some(true);
                if string_keys {
                    o.insert("type".into(), json!("map"));
                    o.insert("values".into(), values);
                } else {
                    let entry = "io.confluent.connect.avro.MapEntry";
                    let items = if self.defined.insert(entry.to_string()) {
                        json!({"type": "record", "name": "MapEntry",
                               "namespace": "io.confluent.connect.avro",
                               "fields": [{"name": "key", "type": self.optional(keys)},
                                          {"name": "value", "type": values}]})
                    } else {
                        json!(entry)
                    };
                    o.insert("type".into(), json!("array"));
                    o.insert("items".into(), items);
                }
            }
            ("struct", _) => {
                let full = match name {
                    Some(n) => n.to_string(),
                    None => {
                        self.unnamed += 1;
                        match self.unnamed {
                            1 => "io.confluent.connect.avro.ConnectDefault".to_string(),
                            n => format!("io.confluent.connect.avro.ConnectDefault{n}"),
                        }
                    }
                };
                if !self.defined.insert(full.clone()) {
                    return json!(full); // written once, named after that
                }
                let (namespace, short) = full.rsplit_once('.').unwrap_or(("", &full));
                o.insert("type".into(), json!("record"));
                o.insert("name".into(), json!(short));
                if !namespace.is_empty() {
                    o.insert("namespace".into(), json!(namespace));
                }
                let fields: Vec<Value> = s
                    .get("fields")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|f| {
                        let mut field = Map::new();
                        field.insert("name".into(), f.get("field").cloned().unwrap_or_default());
                        field.insert("type".into(), self.optional(f));
                        match f.get("default") {
                            Some(d) if !d.is_null() => {
                                field.insert("default".into(), avro_default(f, d));
                            }
                            _ if f.get("optional").and_then(Value::as_bool) == Some(true) => {
                                field.insert("default".into(), Value::Null);
                            }
                            _ => {}
                        }
                        Value::Object(field)
                    })
                    .collect();
                o.insert("fields".into(), Value::Array(fields));
            }
            ("int32", _) => {
                o.insert("type".into(), json!("int"));
            }
            ("int64", _) => {
                o.insert("type".into(), json!("long"));
            }
            (other, _) => {
                o.insert("type".into(), json!(other));
            }
        }
        if let Some(doc) = s.get("doc") {
            o.insert("connect.doc".into(), doc.clone());
        }
        let logical = matches!(name, Some(n) if n.starts_with("org.apache.kafka.connect.data."));
        match s.get("version") {
            Some(v) => {
                o.insert("connect.version".into(), v.clone());
            }
            None if logical => {
                o.insert("connect.version".into(), json!(1));
            }
            None => {}
        }
        if let Some(p) = params.filter(|p| !p.is_empty()) {
            o.insert("connect.parameters".into(), Value::Object(p.clone()));
        }
        if let Some(d) = s.get("default").filter(|d| !d.is_null()) {
            o.insert("connect.default".into(), avro_default(s, d));
        }
        if let Some(n) = name {
            o.insert("connect.name".into(), json!(n));
        }
        if let Some(t) = connect_type {
            o.insert("connect.type".into(), json!(t));
        }
        if o.len() == 1 {
            return o.remove("type").unwrap_or(Value::Null); // a bare primitive: "int"
        }
        Value::Object(o)
    }
}

/// A default value in Avro's JSON form: bytes (and decimals) as a string of ISO-8859-1
/// characters, the rest as the JSON converter printed it.
fn avro_default(s: &Value, d: &Value) -> Value {
    use base64::Engine;
    let bytes = s.get("type").and_then(Value::as_str) == Some("bytes");
    match d.as_str().filter(|_| bytes) {
        Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(raw) => Value::String(raw.iter().map(|b| char::from(*b)).collect()),
            Err(_) => d.clone(),
        },
        None => d.clone(),
    }
}
