//! Avro and JSON Schema through a schema registry. Debezium's events as Confluent's AvroConverter
//! and JsonSchemaConverter write them make the same audit rows as the JSON converter's, byte for
//! byte; messages captured from real Debezium installations read as apache-avro (the Apache
//! project's Rust implementation) reads them; the registry's answers and outages are told apart,
//! end to end.
//!
//! The Avro bytes of the parity tests come from apache-avro, not from the service's own writer:
//! the service reads them with a reader of its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use apache_avro::types::Value as Avro;
use base64::Engine;
use cdc_audit::config::rules::Rules;
use cdc_audit::config::RegistrySettings;
use cdc_audit::demo::avro::avro_schema;
use cdc_audit::demo::in_avro;
use cdc_audit::registry::serve::LocalRegistry;
use cdc_audit::registry::{Answer, Registry};
use cdc_audit::transform::avro::{framed, AvroSchema};
use cdc_audit::transform::json::Members;
use cdc_audit::transform::schemas::{compile, SchemaCache, Schemas};
use cdc_audit::transform::{describe, describe_with, transform, transform_with};
use cdc_audit::types::{Bytes, Message, Outcome};
use serde_json::{json, Value};

use crate::fixtures::{fixtures, message};
use crate::properties::message as msg;
use crate::proxy::Proxy;
use crate::util::{
    assert_exactly_once, config, generate, wait_until, Broker, InProcess, Kafka, TestDb,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/avro")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn frame(id: u32, datum: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(id.to_be_bytes());
    out.extend(datum);
    out
}

fn schemas(entries: &[(u32, &str)]) -> Schemas {
    entries
        .iter()
        .map(|(id, text)| (*id, compile(*id, "AVRO", text)))
        .collect()
}

/// The named types of an Avro schema (JSON) by full name.
fn names(s: &Value, namespace: &str, out: &mut HashMap<String, Value>) {
    match s {
        Value::Array(branches) => branches.iter().for_each(|b| names(b, namespace, out)),
        Value::Object(o) => {
            let mut ns = namespace.to_string();
            if let Some(name) = o.get("name").and_then(Value::as_str) {
                let full = match (
                    name.contains('.'),
                    o.get("namespace").and_then(Value::as_str),
                ) {
                    (true, _) => name.to_string(),
                    (false, Some(n)) if !n.is_empty() => format!("{n}.{name}"),
                    (false, _) if !namespace.is_empty() => format!("{namespace}.{name}"),
                    _ => name.to_string(),
                };
                ns = full.rsplit_once('.').map_or("", |(n, _)| n).to_string();
                out.insert(full, s.clone());
            }
            for key in ["type", "items", "values"] {
                if let Some(t) = o.get(key) {
                    names(t, &ns, out);
                }
            }
            for f in o
                .get("fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                names(&f["type"], &ns, out);
            }
        }
        _ => {}
    }
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// A JSON-converter value as apache-avro's value of the Avro schema `s`: the test's side of the
/// writing, whose bytes apache-avro makes.
fn to_apache(s: &Value, v: &Value, named: &HashMap<String, Value>, ns: &str) -> Avro {
    match s {
        Value::String(t) => match t.as_str() {
            "null" => Avro::Null,
            "boolean" => Avro::Boolean(v.as_bool().unwrap()),
            "int" => Avro::Int(v.as_i64().unwrap() as i32),
            "long" => Avro::Long(v.as_i64().unwrap()),
            "float" => Avro::Float(v.as_f64().unwrap() as f32),
            "double" => Avro::Double(v.as_f64().unwrap()),
            "bytes" => Avro::Bytes(b64(v)),
            "string" => Avro::String(v.as_str().unwrap().to_string()),
            name => {
                let def = named
                    .get(&format!("{ns}.{name}"))
                    .or_else(|| named.get(name))
                    .unwrap_or_else(|| panic!("no type {name}"));
                to_apache(def, v, named, ns)
            }
        },
        Value::Array(branches) => {
            let i = branches
                .iter()
                .position(|b| (b == "null") == v.is_null())
                .unwrap();
            Avro::Union(i as u32, Box::new(to_apache(&branches[i], v, named, ns)))
        }
        Value::Object(o) => {
            let logical = o.get("logicalType").and_then(Value::as_str);
            match (o["type"].as_str(), logical) {
                (Some("record"), _) => {
                    let name = o["name"].as_str().unwrap();
                    let inner = match (name.rsplit_once('.'), o.get("namespace")) {
                        (Some((n, _)), _) => n.to_string(),
                        (None, Some(Value::String(n))) => n.clone(),
                        (None, _) => ns.to_string(),
                    };
                    Avro::Record(
                        o["fields"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|f| {
                                let name = f["name"].as_str().unwrap();
                                let value = v.get(name).unwrap_or(&Value::Null);
                                (
                                    name.to_string(),
                                    to_apache(&f["type"], value, named, &inner),
                                )
                            })
                            .collect(),
                    )
                }
                (Some("array"), _) => Avro::Array(
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|i| to_apache(&o["items"], i, named, ns))
                        .collect(),
                ),
                (Some("map"), _) => Avro::Map(
                    v.as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, i)| (k.clone(), to_apache(&o["values"], i, named, ns)))
                        .collect(),
                ),
                (Some("bytes"), Some("decimal")) => Avro::Decimal(b64(v).into()),
                (Some("int"), Some("date")) => Avro::Date(v.as_i64().unwrap() as i32),
                (Some("int"), Some("time-millis")) => Avro::TimeMillis(v.as_i64().unwrap() as i32),
                (Some("long"), Some("timestamp-millis")) => {
                    Avro::TimestampMillis(v.as_i64().unwrap())
                }
                (Some(t), _) => to_apache(&json!(t), v, named, ns),
                (None, _) => to_apache(&o["type"], v, named, ns),
            }
        }
        _ => panic!("{s} is not an Avro schema"),
    }
}

/// Connect names as Debezium's `schema.name.adjustment.mode=avro` makes them, which the Avro
/// converter needs (`mysql-server-1.inventory.customers.Value` is no Avro name): a character
/// Avro refuses becomes `_`, a leading digit gets one before it. Debezium adjusts them before any
/// converter, and the trail stores no schema name, so the rows are the same.
fn avro_names(c: &mut Value) {
    if let Some(Value::String(name)) = c.get_mut("name") {
        let mut adjusted: String = name
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || ch == '_' || ch == '.' {
                    ch
                } else {
                    '_'
                }
            })
            .collect();
        if adjusted.starts_with(|ch: char| ch.is_ascii_digit()) {
            adjusted.insert(0, '_');
        }
        *name = adjusted;
    }
    for key in ["items", "keys", "values"] {
        if let Some(inner) = c.get_mut(key) {
            avro_names(inner);
        }
    }
    if let Some(Value::Array(fields)) = c.get_mut("fields") {
        fields.iter_mut().for_each(avro_names);
    }
}

/// The Avro bytes, by apache-avro, of a JSON-converter text (`{"schema", "payload"}`): the
/// Avro schema the AvroConverter registers for its Connect schema, and the datum.
fn by_apache_avro(v: &Value) -> (String, Vec<u8>) {
    let mut connect = v["schema"].clone();
    avro_names(&mut connect);
    let schema = avro_schema(&connect);
    let text = schema.to_string();
    let parsed = apache_avro::Schema::parse_str(&text)
        .unwrap_or_else(|e| panic!("apache-avro refuses {text}: {e}"));
    let mut named = HashMap::new();
    names(&schema, "", &mut named);
    let value = to_apache(&schema, &v["payload"], &named, "");
    let datum = apache_avro::to_avro_datum(&parsed, value)
        .unwrap_or_else(|e| panic!("apache-avro cannot write {}: {e}", v["payload"]));
    (text, datum)
}

/// An apache-avro value as the JSON converter prints it (bytes in base64).
fn json_of(v: &Avro) -> Value {
    match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => json!(b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => json!(i),
        Avro::Long(i) | Avro::TimestampMillis(i) => json!(i),
        Avro::Float(f) => json!(f),
        Avro::Double(f) => json!(f),
        Avro::Bytes(b) | Avro::Fixed(_, b) => {
            json!(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Avro::String(s) | Avro::Enum(_, s) => json!(s),
        Avro::Union(_, inner) => json_of(inner),
        Avro::Array(items) => Value::Array(items.iter().map(json_of).collect()),
        Avro::Map(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), json_of(v))).collect()),
        Avro::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), json_of(v)))
                .collect(),
        ),
        other => panic!("no JSON form for {other:?}"),
    }
}

/// Whether `v` is a value the JSON converter could have printed for the Connect schema `c`:
/// some fixtures are documentation examples whose schema is a sketch (`"INT32"`, an empty
/// schema) or whose payload strays from it, which no converter writes.
fn fits(c: &Value, v: &Value) -> Result<(), String> {
    let optional = c["optional"] == true || c.get("default").is_some_and(|d| !d.is_null());
    if v.is_null() {
        return if optional {
            Ok(())
        } else {
            Err(format!("null for a required {c}"))
        };
    }
    let ok = match c["type"].as_str() {
        Some("int8" | "int16" | "int32" | "int64") => v.is_i64(),
        Some("float" | "double") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("string") => v.is_string(),
        Some("bytes") => v
            .as_str()
            .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok()),
        Some("array") => match v.as_array() {
            Some(items) => return items.iter().try_for_each(|i| fits(&c["items"], i)),
            None => false,
        },
        Some("map") => match v.as_object() {
            Some(m) => return m.values().try_for_each(|i| fits(&c["values"], i)),
            None => false,
        },
        Some("struct") => {
            let (Some(fields), Some(o)) = (c["fields"].as_array(), v.as_object()) else {
                return Err(format!("{v} is not a struct of {c}"));
            };
            if let Some(extra) = o.keys().find(|k| !fields.iter().any(|f| f["field"] == **k)) {
                return Err(format!("{extra:?} is not in the schema"));
            }
            return fields.iter().try_for_each(|f| {
                fits(
                    f,
                    o.get(f["field"].as_str().unwrap_or(""))
                        .unwrap_or(&Value::Null),
                )
            });
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{v} does not fit {c}"))
    }
}

/// The fixtures with a schema envelope that no converter could have written (their schema or
/// payload are sketches), and why: left out of the parity tests, by name, so a new one is seen.
const NOT_CONVERTER_OUTPUT: &[&str] = &[
    // The schema has a required `ts_us` the documented payload lacks.
    "mongodb/create_envelope",
    // An empty schema (`"schema": { }`) before a full payload.
    "mysql/schema_change",
    // The payload's source has a `sequence` its schema does not list.
    "postgresql/create_envelope",
];

/// `v` as the JSON converter prints it for `c`: every member of a struct, a missing one as its
/// default or null (documentation examples leave some out).
fn complete(c: &Value, v: &Value) -> Value {
    match (c["type"].as_str(), v) {
        (Some("struct"), Value::Object(o)) => Value::Object(
            c["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let name = f["field"].as_str().unwrap_or("").to_string();
                    let value = match o.get(&name) {
                        Some(v) if !v.is_null() => complete(f, v),
                        _ => f.get("default").cloned().unwrap_or(Value::Null),
                    };
                    (name, value)
                })
                .collect(),
        ),
        (Some("array"), Value::Array(items)) => {
            Value::Array(items.iter().map(|i| complete(&c["items"], i)).collect())
        }
        _ => v.clone(),
    }
}

/// A fixture as the JSON converter sends it with its schema, and the value's and key's envelopes.
pub(crate) struct Case {
    pub name: String,
    pub json: Message,
    pub value: Value,
    pub key: Option<Value>,
}

/// The fixtures the parity tests compare: each one with a schema envelope whose payload fits it,
/// and each one whose schema was elided in the documentation, given the schema of a fixture of
/// the same connector that it fits (the same table). A key that does not fit its schema stays
/// JSON: a message may mix them.
pub(crate) fn parity_cases() -> Vec<Case> {
    let enveloped = |b: &[u8]| {
        let v: Value = serde_json::from_slice(b).ok()?;
        (v.get("schema").is_some_and(Value::is_object) && v.get("payload").is_some()).then_some(v)
    };
    let all = fixtures();
    let connector = |name: &str| name.split('/').next().unwrap_or("").to_string();
    let schemas: Vec<(String, Value)> = all
        .iter()
        .filter_map(|f| {
            Some((
                connector(&f.name),
                enveloped(f.value.as_deref()?)?["schema"].clone(),
            ))
        })
        .filter(|(_, s)| s.get("type").is_some())
        .collect();
    let mut cases = Vec::new();
    let mut left_out = Vec::new();
    for f in all {
        let Some(text) = f.value.as_deref() else {
            continue;
        };
        let mut json = message(&f, 0);
        let value = match enveloped(text) {
            Some(value) => {
                if let Err(why) = fits(&value["schema"], &value["payload"]) {
                    left_out.push((f.name.clone(), why));
                    continue;
                }
                value
            }
            None => {
                // Elided: `{"payload": ...}` or a bare change event, with the schema of a
                // fixture it fits.
                #[derive(serde::Deserialize)]
                struct Elided<'a> {
                    #[serde(borrow)]
                    payload: &'a serde_json::value::RawValue,
                }
                let raw = match serde_json::from_slice::<Elided<'_>>(text) {
                    Ok(e) => e.payload.get().to_string(),
                    Err(_) => String::from_utf8_lossy(text).to_string(),
                };
                let Ok(payload) = serde_json::from_str::<Value>(&raw) else {
                    continue;
                };
                if payload.get("op").is_none() {
                    continue;
                }
                let Some((_, schema)) = schemas
                    .iter()
                    .find(|(c, s)| *c == connector(&f.name) && fits(s, &payload).is_ok())
                else {
                    continue;
                };
                json.payload = Some(
                    format!("{{\"schema\":{schema},\"payload\":{raw}}}")
                        .into_bytes()
                        .into(),
                );
                json!({"schema": schema, "payload": payload})
            }
        };
        let mut value = value;
        let completed = complete(&value["schema"], &value["payload"]);
        if completed != value["payload"] {
            value["payload"] = completed;
            json.payload = Some(value.to_string().into_bytes().into());
        }
        let key = f
            .key
            .as_deref()
            .and_then(enveloped)
            .filter(|k| fits(&k["schema"], &k["payload"]).is_ok());
        cases.push(Case {
            name: f.name.clone(),
            json,
            value,
            key,
        });
    }
    let names: Vec<&str> = left_out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, NOT_CONVERTER_OUTPUT, "left out: {left_out:#?}");
    let ops: std::collections::BTreeSet<String> = cases
        .iter()
        .filter_map(|c| c.value["payload"]["op"].as_str().map(String::from))
        .collect();
    assert!(
        cases.len() >= 12,
        "only {} fixtures to compare",
        cases.len()
    );
    assert!(
        ["c", "u", "d", "r"].iter().all(|op| ops.contains(*op)),
        "operations compared: {ops:?}"
    );
    cases
}

/// The registry-framed message, read with the `registered` schemas of `schema_type`, reads as
/// its JSON twin, and makes the same row, byte for byte.
pub(crate) fn assert_same_rows(
    name: &str,
    framed: &Message,
    json: &Message,
    schema_type: &str,
    registered: &[(u32, String)],
) {
    let read_with: &Schemas = &registered
        .iter()
        .map(|(id, text)| (*id, compile(*id, schema_type, text)))
        .collect();
    let rules = Rules::default();
    assert_eq!(
        describe_with(framed, &rules, read_with),
        describe(json, &rules),
        "{name}: the registry-framed message reads otherwise"
    );
    assert_eq!(
        encoded(&transform_with(framed, &rules, read_with)),
        encoded(&transform(json, &rules)),
        "{name}: the rows differ"
    );
}

fn encoded(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Row(r) | Outcome::Transaction(r) => format!("{:?}", r.bytes),
        other => format!("{other:?}"),
    }
}

#[test]
fn every_fixture_written_by_the_avro_converter_makes_the_json_converters_row() {
    let mut split = 0;
    for Case {
        name,
        json: json_msg,
        value,
        key,
    } in parity_cases()
    {
        let (value_schema, datum) = by_apache_avro(&value);
        split += assert_members_where_the_reader_says(&name, &value_schema, &datum);
        let mut registered = vec![(1, value_schema)];
        let mut avro_msg = json_msg.clone();
        avro_msg.payload = Some(frame(1, datum).into());
        if let Some(key) = &key {
            let (key_schema, datum) = by_apache_avro(key);
            registered.push((2, key_schema));
            avro_msg.key = Some(frame(2, datum).into());
        }
        assert_same_rows(&name, &avro_msg, &json_msg, "AVRO", &registered);
    }
    assert!(split > 20, "the reader split {split} objects");
}

/// The members the Avro reader says it wrote, and where, are those a JSON parser reads from its
/// text, and so are the members of the objects among them it split too: how many it split.
fn assert_members_where_the_reader_says(name: &str, schema: &str, datum: &[u8]) -> usize {
    let schema = AvroSchema::parse(schema).unwrap();
    let (text, spans) = schema.payload(datum).unwrap();
    let pairs = |m: &Members<'_>| -> Vec<(String, String)> {
        m.0.iter()
            .map(|(k, v)| (k.to_string(), v.get().to_string()))
            .collect()
    };
    let written = Members::written(&text, &spans);
    let parsed: Members<'_> = serde_json::from_str(&text).unwrap();
    assert_eq!(pairs(&written), pairs(&parsed), "{name}");
    let mut split = 0;
    for span in &spans {
        let Some(inner) = &span.inner else { continue };
        let value = &text[span.range.clone()];
        let parsed: Members<'_> = serde_json::from_str(value).unwrap();
        let inner: Vec<(String, String)> = inner
            .iter()
            .map(|s| (s.name.to_string(), text[s.range.clone()].to_string()))
            .collect();
        assert_eq!(inner, pairs(&parsed), "{name}: {}", span.name);
        assert_eq!(
            written.object(span.name).as_deref().map(pairs),
            Some(pairs(&parsed))
        );
        split += 1;
    }
    split
}

#[test]
fn a_captured_debezium_avro_message_reads_as_apache_avro_reads_it() {
    let schema = String::from_utf8(fixture("mysql_customers-value.avsc")).unwrap();
    let bytes = fixture("mysql_customers_read.bin");
    let (id, datum) = framed(&bytes).unwrap();
    assert_eq!(id, 6);
    let ours: Value =
        serde_json::from_str(&AvroSchema::parse(&schema).unwrap().to_json(datum).unwrap()).unwrap();
    let parsed = apache_avro::Schema::parse_str(&schema).unwrap();
    let theirs = apache_avro::from_avro_datum(&parsed, &mut &datum[..], None).unwrap();
    assert_eq!(ours["payload"], json_of(&theirs));
    // The Connect schema is Debezium's: its envelope name and version, the source struct's name.
    assert_eq!(
        ours["schema"]["name"],
        "dbserver1.inventory.customers.Envelope"
    );
    assert_eq!(ours["schema"]["version"], 1);
    assert_eq!(
        ours["schema"]["fields"][2]["name"],
        "io.debezium.connector.mysql.Source"
    );

    let row = describe_with(
        &msg(None, Some(bytes)),
        &Rules::default(),
        &schemas(&[(6, &schema)]),
    );
    let row = &row["audit_logging"];
    assert_eq!(row["operation_type"], "READ");
    assert_eq!(row["source_table"], "customers");
    assert_eq!(
        row["new_data"],
        json!({"id": 1001, "first_name": "Sally", "last_name": "Thomas", "email": "sally.thomas@acme.com"})
    );
    assert_eq!(row["connector"], "mysql");
}

/// Avro's JSON encoding (unions wrapped in `{"type": value}`) as the JSON converter's value.
fn unwrap_unions(v: &Value) -> Value {
    match v {
        Value::Object(o) if o.len() == 1 => {
            let (k, inner) = o.iter().next().unwrap();
            if [
                "int", "long", "string", "boolean", "double", "float", "bytes",
            ]
            .contains(&k.as_str())
                || k.contains('.')
            {
                unwrap_unions(inner)
            } else {
                Value::Object(
                    o.iter()
                        .map(|(k, v)| (k.clone(), unwrap_unions(v)))
                        .collect(),
                )
            }
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), unwrap_unions(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn a_debezium_1_postgresql_stream_in_avro_reads_as_reads_updates_deletes_and_a_tombstone() {
    let text = String::from_utf8(fixture("postgresql_orders.avro-json")).unwrap();
    let mut lines = text.lines();
    let (key_schema, value_schema) = lines.next().unwrap().split_once('^').unwrap();
    let read_with = schemas(&[(1, key_schema), (2, value_schema)]);
    let encode = |schema_text: &str, datum: &Value| {
        let schema: Value = serde_json::from_str(schema_text).unwrap();
        let mut named = HashMap::new();
        names(&schema, "", &mut named);
        let parsed = apache_avro::Schema::parse_str(schema_text).unwrap();
        apache_avro::to_avro_datum(
            &parsed,
            to_apache(&schema, &unwrap_unions(datum), &named, ""),
        )
        .unwrap()
    };
    let mut got = Vec::new();
    for line in lines {
        let (key, value) = line.split_once('^').unwrap();
        let key = frame(1, encode(key_schema, &serde_json::from_str(key).unwrap()));
        let value = (!value.trim().is_empty()).then(|| {
            frame(
                2,
                encode(value_schema, &serde_json::from_str(value).unwrap()),
            )
        });
        let d = describe_with(&msg(Some(key), value), &Rules::default(), &read_with);
        got.push(match &d["audit_logging"] {
            Value::Null => d.clone(),
            r => json!([
                r["operation_type"],
                r["primary_key"],
                r["new_data"]["order_id"],
                r["is_snapshot"]
            ]),
        });
    }
    assert_eq!(
        got,
        vec![
            json!(["READ", {"order_id": 1}, 1, true]),
            json!(["READ", {"order_id": 2}, 2, true]),
            json!(["READ", {"order_id": 3}, 3, true]),
            json!(["UPDATE", {"order_id": 1}, 1, false]),
            json!(["DELETE", {"order_id": 1}, null, false]),
            json!({"skipped": "tombstone"}),
        ]
    );
    // The Connect schema is Debezium 1.9's: AvroData's stand-in name for the unnamed
    // transaction struct is not kept, the semantic types and int16 are.
    let value = AvroSchema::parse(value_schema).unwrap();
    let connect: Value = serde_json::from_str(value.connect()).unwrap();
    let field = |name: &str| {
        connect["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == name)
            .unwrap()
            .clone()
    };
    assert!(field("transaction").get("name").is_none(), "{connect}");
    let after = field("after");
    let column = |name: &str| {
        after["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        column("price")["name"],
        "io.debezium.data.VariableScaleDecimal"
    );
    assert_eq!(column("order_status")["type"], "int16");
    assert_eq!(column("order_id")["default"], 0);
}

#[test]
fn bytes_that_do_not_decode_and_unknown_ids_are_told_apart() {
    let schema = String::from_utf8(fixture("mysql_customers-value.avsc")).unwrap();
    let bytes = fixture("mysql_customers_read.bin");
    let rules = Rules::default();
    let known = schemas(&[(6, &schema)]);
    let reason =
        |m: &Message, s: &Schemas| describe_with(m, &rules, s)["rejected"]["reason"].clone();
    // Cut short, or with a byte too many: the datum does not match its schema.
    assert_eq!(
        reason(&msg(None, Some(bytes[..100].to_vec())), &known),
        "undecodable"
    );
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(reason(&msg(None, Some(longer)), &known), "undecodable");
    // An id the registry does not know, and no registry at all.
    assert_eq!(
        reason(&msg(None, Some(bytes.clone())), &Schemas::default()),
        "schema_not_found"
    );
    let no_registry = describe(&msg(None, Some(bytes)), &rules);
    assert!(
        no_registry["rejected"]["error"]
            .as_str()
            .unwrap()
            .contains("CDC_AUDIT_SCHEMA_REGISTRY_URL"),
        "{no_registry}"
    );
    // Confluent's newer framing by GUID is named, not read as JSON.
    let guid = [vec![1u8], vec![7; 16], b"{}".to_vec()].concat();
    assert_eq!(reason(&msg(None, Some(guid)), &known), "undecodable");
}

fn settings(url: String) -> RegistrySettings {
    RegistrySettings {
        url,
        basic_auth: Some("user:secret".into()),
        ca_file: None,
        client_cert: None,
        timeout: Duration::from_secs(2),
        cache: 10,
    }
}

#[test]
fn the_registry_client_tells_a_missing_schema_from_an_outage() {
    let registry = LocalRegistry::start(([127, 0, 0, 1], 0).into()).unwrap();
    let id = registry.register("t-value", "\"string\"");
    let client = Registry::new(&settings(registry.url())).unwrap();
    assert_eq!(
        client.schema(id).unwrap(),
        Answer::Schema {
            schema_type: "AVRO".into(),
            text: "\"string\"".into()
        }
    );
    assert!(
        matches!(client.schema(id + 1).unwrap(), Answer::NotFound(m) if m.contains("not found"))
    );
    // A 404 that is not the registry's own (a wrong path): an outage, not a missing schema.
    let wrong = Registry::new(&settings(format!("{}/nothing/here", registry.url()))).unwrap();
    assert!(wrong.schema(id).is_err());
    let url = registry.url();
    drop(registry);
    assert!(
        Registry::new(&settings(url)).unwrap().schema(id).is_err(),
        "refused connection"
    );
}

/// `openssl req` arguments for a new P-256 key, unencrypted.
const NEW_EC_KEY: [&str; 6] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
];

/// A key and a certificate for `cn`, signed by the test CA in `dir`.
fn signed(dir: &std::path::Path, name: &str, cn: &str, san: &str) {
    let at = |file: String| dir.join(file).to_string_lossy().into_owned();
    let (key, csr, ext, pem) = (
        at(format!("{name}.key")),
        at(format!("{name}.csr")),
        at(format!("{name}.ext")),
        at(format!("{name}.pem")),
    );
    let subject = format!("/CN={cn}");
    let args = [
        &["req"][..],
        &NEW_EC_KEY,
        &[&key, "-out", &csr, "-subj", &subject],
    ];
    crate::util::openssl(&args.concat());
    std::fs::write(&ext, format!("subjectAltName={san}\n")).unwrap();
    let (ca, ca_key) = (at("ca.pem".into()), at("ca.key".into()));
    crate::util::openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &pem,
        "-extfile",
        &ext,
    ]);
}

#[test]
fn the_registry_client_speaks_tls_with_the_ca_and_client_certificate_it_is_given() {
    // The server is OpenSSL's own (`s_server -WWW` serves the files under its directory), with a
    // CA of the test's making, and it asks for a client certificate signed by that CA.
    let dir = crate::util::tempdir("registry-tls");
    let (ca_key, ca) = (dir.join("ca.key"), dir.join("ca.pem"));
    let (ca_key, ca) = (ca_key.to_string_lossy(), ca.to_string_lossy());
    let args = [
        &["req", "-x509"][..],
        &NEW_EC_KEY,
        &[
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            "/CN=cdc-audit-test-ca",
        ],
    ];
    crate::util::openssl(&args.concat());
    signed(&dir, "server", "localhost", "DNS:localhost");
    signed(&dir, "client", "cdc-audit", "DNS:cdc-audit");
    std::fs::create_dir_all(dir.join("schemas/ids")).unwrap();
    std::fs::write(
        dir.join("schemas/ids/1"),
        r#"{"schema": "\"string\"", "schemaType": "AVRO"}"#,
    )
    .unwrap();
    let port = crate::util::free_port();
    let mut server = std::process::Command::new("openssl")
        .args([
            "s_server", "-WWW", "-quiet", "-Verify", "1", "-CAfile", "ca.pem",
        ])
        .args(["-cert", "server.pem", "-key", "server.key"])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    wait_until(Duration::from_secs(20), "openssl s_server listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("https://localhost:{port}");
    let with = |ca: bool, client: bool| RegistrySettings {
        ca_file: ca.then(|| dir.join("ca.pem")),
        client_cert: client.then(|| (dir.join("client.pem"), dir.join("client.key"))),
        ..settings(url.clone())
    };
    let answer = Registry::new(&with(true, true)).unwrap().schema(1);
    let not_trusted = Registry::new(&with(false, true)).unwrap().schema(1);
    let no_client_cert = Registry::new(&with(true, false)).unwrap().schema(1);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        answer.unwrap(),
        Answer::Schema {
            schema_type: "AVRO".into(),
            text: "\"string\"".into()
        }
    );
    // A server the CA file does not vouch for, and a server that wants a client certificate:
    // outages that say TLS, never a schema read from the wrong peer.
    let not_trusted = not_trusted.unwrap_err().0;
    assert!(not_trusted.contains("TLS"), "{not_trusted}");
    assert!(no_client_cert.is_err());
    // A key that is not the certificate's is refused when the client is made, naming the file.
    let mismatched = RegistrySettings {
        client_cert: Some((dir.join("client.pem"), dir.join("server.key"))),
        ..with(true, false)
    };
    let e = Registry::new(&mismatched).err().expect("refused");
    assert!(e.contains("server.key") && e.contains("mismatch"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn avro_through_a_registry_outage_is_written_once_as_its_json_twin_and_replays_once_registered() {
    let kafka = Kafka::new("avro");
    let db = TestDb::new("avro_registry");
    let registry = LocalRegistry::start(([127, 0, 0, 1], 0).into()).unwrap();
    let proxy = Proxy::start(registry.url().trim_start_matches("http://").to_string());
    let records = generate("avro", 7, 1_500);
    let mut framed_records = in_avro(&registry, &records).unwrap();
    // A message whose schema is registered only later: the next id, a schema that differs in
    // nothing but its doc, so the same bytes read under it.
    let first: Value = serde_json::from_str(records[0].value.as_deref().unwrap()).unwrap();
    let mut later = avro_schema(&first["schema"]);
    later["connect.doc"] = json!("registered after the message was sent");
    let later_id = registry.schemas() as u32 + 1;
    let late_datum = AvroSchema::parse(&later.to_string())
        .unwrap()
        .encode(&first["payload"])
        .unwrap();
    let late = frame(later_id, late_datum);
    framed_records.push((records[0].topic.clone(), None, Some(late)));

    proxy.cut();
    cdc_audit::demo::produce_bytes(
        kafka.bootstrap(),
        framed_records
            .iter()
            .map(|(t, k, v)| (t.as_str(), k.as_deref(), v.as_deref())),
    )
    .unwrap();
    let mut cfg = config(&kafka, &db, "g");
    cfg.registry = Some(settings(format!("http://127.0.0.1:{}", proxy.port)));
    let service = InProcess::start(cfg);
    wait_until(
        Duration::from_secs(30),
        "the registry's outage to be noticed",
        || {
            service
                .stats
                .health
                .registry_down
                .load(std::sync::atomic::Ordering::Acquire)
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(db.count("audit_logging"), 0, "written without schemas");
    assert_eq!(
        db.count("audit_rejections"),
        0,
        "an outage rejected messages"
    );
    let failed = service
        .stats
        .registry_requests
        .with_label_values(&["failed"])
        .get();
    assert!(failed >= 1, "no failed request counted");

    proxy.restore();
    let total = framed_records.len() as i64;
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == total
    });
    assert!(!service
        .stats
        .health
        .registry_down
        .load(std::sync::atomic::Ordering::Acquire));
    service.stop();
    assert_exactly_once(&db, &records);
    let rejected: Vec<(String, Vec<u8>)> = db
        .client()
        .query("SELECT reason, kafka_value FROM audit_rejections", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, "schema_not_found");
    assert_eq!(
        framed(&rejected[0].1).map(|(id, _)| id),
        Some(later_id),
        "raw bytes kept"
    );

    // Once the schema exists, the replay writes it.
    assert_eq!(
        registry.register("avro-later", &later.to_string()),
        later_id
    );
    let mut cache = SchemaCache::new(Some(Registry::new(&settings(registry.url())).unwrap()), 10);
    let done = cdc_audit::rejections::replay(
        &mut db.client(),
        &Default::default(),
        &Rules::default(),
        &mut cache,
        false,
    )
    .unwrap();
    assert_eq!((done.written, done.still_rejected), (1, 0), "{done:?}");
    assert_eq!(db.count("audit_rejections"), 0);
}

/// The JSON Schema Confluent's JsonSchemaConverter registers for a Connect schema
/// (`JsonSchemaData.fromConnectSchema`): Connect's name as `title`, its type, version and
/// parameters as `connect.*` keywords, an optional schema as a union with `null`, each struct
/// member's place as `connect.index`.
fn json_schema(c: &Value, index: Option<usize>) -> Value {
    let ty = c["type"].as_str().unwrap();
    let mut o = serde_json::Map::new();
    let mut set = |k: &str, v: Value| {
        o.insert(k.to_string(), v);
    };
    match ty {
        "int8" | "int16" | "int32" | "int64" => {
            set("type", json!("integer"));
            set("connect.type", json!(ty));
        }
        "float" | "double" => {
            set("type", json!("number"));
            set(
                "connect.type",
                json!(if ty == "float" { "float32" } else { "float64" }),
            );
        }
        "bytes" => {
            set("type", json!("string"));
            set("connect.type", json!("bytes"));
        }
        "array" => {
            set("type", json!("array"));
            set("items", json_schema(&c["items"], None));
        }
        "map" => {
            set("type", json!("object"));
            set("connect.type", json!("map"));
            set("additionalProperties", json_schema(&c["values"], None));
        }
        "struct" => {
            set("type", json!("object"));
            // In reverse, as a hash map may give them: the reader must go by `connect.index`.
            let properties: serde_json::Map<String, Value> = c["fields"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .rev()
                .map(|(i, f)| {
                    (
                        f["field"].as_str().unwrap().to_string(),
                        json_schema(f, Some(i)),
                    )
                })
                .collect();
            set("properties", Value::Object(properties));
        }
        other => set("type", json!(other)),
    }
    for (connect, keyword) in [
        ("name", "title"),
        ("version", "connect.version"),
        ("doc", "description"),
        ("parameters", "connect.parameters"),
        ("default", "default"),
    ] {
        if let Some(v) = c.get(connect).filter(|v| !v.is_null()) {
            set(keyword, v.clone());
        }
    }
    let mut schema = Value::Object(o);
    if c["optional"] == true {
        schema = json!({"oneOf": [{"type": "null"}, schema]});
    }
    if let Some(i) = index {
        schema["connect.index"] = json!(i);
    }
    schema
}

#[test]
fn every_fixture_written_by_the_json_schema_converter_makes_the_json_converters_row() {
    /// The payload's text as sent: the JSON Schema converter's value is that text.
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }
    let raw = |b: &Option<Bytes>| {
        let b = b.as_deref().unwrap();
        let e: Envelope<'_> = serde_json::from_slice(b).unwrap();
        e.payload.get().as_bytes().to_vec()
    };
    for Case {
        name,
        json: json_msg,
        value,
        key,
    } in parity_cases()
    {
        let mut registered = vec![(1, json_schema(&value["schema"], None).to_string())];
        let mut framed_msg = json_msg.clone();
        framed_msg.payload = Some(frame(1, raw(&json_msg.payload)).into());
        if let Some(key) = &key {
            registered.push((2, json_schema(&key["schema"], None).to_string()));
            framed_msg.key = Some(frame(2, raw(&json_msg.key)).into());
        }
        assert_same_rows(&name, &framed_msg, &json_msg, "JSON", &registered);
    }
}

#[test]
fn a_captured_debezium_json_schema_message_reads_in_connects_field_order() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jsonschema");
    let schema =
        std::fs::read_to_string(dir.join("postgresql_favourite_table-value.json")).unwrap();
    let value = std::fs::read(dir.join("postgresql_favourite_table_create.json")).unwrap();
    let read_with: Schemas = [(6, compile(6, "JSON", &schema))].into_iter().collect();
    let d = describe_with(
        &msg(None, Some(frame(6, value))),
        &Rules::default(),
        &read_with,
    );
    let row = &d["audit_logging"];
    assert_eq!(row["operation_type"], "INSERT", "{d}");
    assert_eq!(row["source_table"], "timmyb32r_favourite_table");
    assert_eq!(row["new_data"], json!({"id": 1, "val": "blablabla"}));
    assert_eq!(row["lsn"], "33976960");
    // The properties came as op, before, after, ...: Connect's order is connect.index.
    let Ok(registered) = read_with.get(6) else {
        panic!("compiled")
    };
    let connect: Value = serde_json::from_str(
        registered
            .to_json(b"null")
            .unwrap()
            .strip_suffix('}')
            .unwrap()
            .strip_prefix("{\"schema\":")
            .unwrap()
            .strip_suffix(",\"payload\":null")
            .unwrap(),
    )
    .unwrap();
    let order: Vec<&str> = connect["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["before", "after", "source", "op", "ts_ms", "transaction"]
    );
    assert_eq!(connect["version"], 1);
}

#[test]
fn a_debezium_1_mysql_value_schema_gives_back_its_connect_schema() {
    // Flink's test copy of what Debezium 1.x MySQL registered: the unnamed transaction struct
    // (AvroData's ConnectDefault) has no name again, the snapshot enum keeps its parameters.
    let text = String::from_utf8(fixture("mysql_person-value.avsc")).unwrap();
    let connect: Value = serde_json::from_str(AvroSchema::parse(&text).unwrap().connect()).unwrap();
    let field = |s: &Value, name: &str| {
        s["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == name)
            .cloned()
            .unwrap()
    };
    assert!(
        connect["name"].as_str().unwrap().ends_with(".Envelope"),
        "{connect}"
    );
    let transaction = field(&connect, "transaction");
    assert!(transaction.get("name").is_none(), "{transaction}");
    assert_eq!(transaction["optional"], true);
    let snapshot = field(&field(&connect, "source"), "snapshot");
    assert_eq!(snapshot["name"], "io.debezium.data.Enum");
    assert_eq!(snapshot["parameters"]["allowed"], "true,last,false");
}
