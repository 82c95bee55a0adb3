//! Protobuf through a schema registry. Debezium's events as Confluent's ProtobufConverter writes
//! them make the rows their JSON twins make, once the twin's schema has lost what Protobuf does not
//! carry (Connect names other than Decimal, Date, Time and Timestamp); a message captured from a
//! real Debezium installation reads as it was sent; what the reader does not read is a rejection
//! that says why.
//!
//! The `.proto` text follows Confluent's `ProtobufData.fromConnectSchema` (with
//! `optional.for.nullables=true`), and the bytes come from protox and prost-reflect (a protobuf
//! compiler and a dynamic message in Rust), not from the service's own reader.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use base64::Engine;
use cdc_audit::config::rules::Rules;
use cdc_audit::transform::schemas::{compile, Schemas};
use cdc_audit::transform::{describe_with, transform_with};
use cdc_audit::types::{Outcome, RejectKind};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value as Proto};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::{json, Value};

use crate::avro::{assert_same_rows, frame, parity_cases, Case};
use crate::properties::message as msg;

/// The files Confluent's converter imports, as Confluent and Google publish them.
const IMPORTS: &[(&str, &str)] = &[
    (
        "confluent/meta.proto",
        "syntax = \"proto3\";\npackage confluent;\nimport \"google/protobuf/descriptor.proto\";\n\
         message Meta { string doc = 1; map<string, string> params = 2; repeated string tags = 3; }\n\
         extend google.protobuf.FieldOptions { Meta field_meta = 1088; }\n",
    ),
    (
        "confluent/type/decimal.proto",
        "syntax = \"proto3\";\npackage confluent.type;\n\
         message Decimal { bytes value = 1; uint32 precision = 2; int32 scale = 3; }\n",
    ),
    (
        "google/type/date.proto",
        "syntax = \"proto3\";\npackage google.type;\n\
         message Date { int32 year = 1; int32 month = 2; int32 day = 3; }\n",
    ),
    (
        "google/type/timeofday.proto",
        "syntax = \"proto3\";\npackage google.type;\n\
         message TimeOfDay { int32 hours = 1; int32 minutes = 2; int32 seconds = 3; int32 nanos = 4; }\n",
    ),
];

struct Sources(HashMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(source) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// The schema's text compiled by protox.
fn compiled(text: &str) -> DescriptorPool {
    let mut files: HashMap<String, String> = IMPORTS
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    files.insert("schema.proto".to_string(), text.to_string());
    let mut chain = ChainFileResolver::new();
    chain.add(Sources(files));
    chain.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(chain);
    compiler
        .open_file("schema.proto")
        .unwrap_or_else(|e| panic!("protox refuses\n{text}\n{e:?}"));
    compiler.descriptor_pool()
}

const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
const DATE: &str = "org.apache.kafka.connect.data.Date";
const TIME: &str = "org.apache.kafka.connect.data.Time";
const TIMESTAMP: &str = "org.apache.kafka.connect.data.Timestamp";

fn unqualified(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The `.proto` text Confluent's converter registers for a Connect schema.
struct ProtoWriter {
    imports: HashSet<&'static str>,
    unnamed: usize,
}

impl ProtoWriter {
    fn struct_name(&mut self, c: &Value) -> String {
        match c["name"].as_str() {
            Some(n) => unqualified(n).to_string(),
            None => {
                self.unnamed += 1;
                format!("ConnectDefault{}", self.unnamed)
            }
        }
    }

    /// `message <name> { ... }` of a Connect struct, its structs nested in it, indented.
    fn message(&mut self, name: &str, c: &Value, indent: &str) -> String {
        let mut fields = String::new();
        let mut nested = String::new();
        let mut defined: HashSet<String> = HashSet::new();
        for (i, f) in c["fields"].as_array().unwrap().iter().enumerate() {
            let field = f["field"].as_str().unwrap();
            let (repeated, element) = match f["type"].as_str() {
                Some("array") => (true, &f["items"]),
                _ => (false, f),
            };
            let mut params: Vec<(&str, String)> = Vec::new();
            let ty = match (element["type"].as_str().unwrap(), element["name"].as_str()) {
                (_, Some(DECIMAL)) => {
                    self.imports.insert("confluent/type/decimal.proto");
                    let p = &element["parameters"];
                    if let Some(precision) = p["connect.decimal.precision"].as_str() {
                        params.push(("precision", precision.to_string()));
                    }
                    params.push(("scale", p["scale"].as_str().unwrap_or("0").to_string()));
                    "confluent.type.Decimal".to_string()
                }
                (_, Some(DATE)) => self.import("google/type/date.proto", "google.type.Date"),
                (_, Some(TIME)) => {
                    self.import("google/type/timeofday.proto", "google.type.TimeOfDay")
                }
                (_, Some(TIMESTAMP)) => self.import(
                    "google/protobuf/timestamp.proto",
                    "google.protobuf.Timestamp",
                ),
                (t @ ("int8" | "int16"), _) => {
                    params.push(("connect.type", t.to_string()));
                    "int32".to_string()
                }
                ("int32", _) => "int32".to_string(),
                ("int64", _) => "int64".to_string(),
                ("float", _) => "float".to_string(),
                ("double", _) => "double".to_string(),
                ("boolean", _) => "bool".to_string(),
                ("string", _) => "string".to_string(),
                ("bytes", _) => "bytes".to_string(),
                ("struct", _) => {
                    let mut type_name = self.struct_name(element);
                    if type_name == field {
                        type_name.push_str("Message");
                    }
                    // Defined once in the message that first uses it; a struct named as its
                    // parent is the parent.
                    if type_name != name && defined.insert(type_name.clone()) {
                        nested.push_str(&self.message(&type_name, element, &format!("{indent}  ")));
                    }
                    type_name
                }
                other => panic!("{field}: no fixture has a {other:?}"),
            };
            let label = match (
                repeated,
                element["optional"] == true,
                element["type"].as_str(),
            ) {
                (true, _, _) => "repeated ",
                (false, true, Some(t)) if t != "struct" && !is_logical(element) => "optional ",
                _ => "",
            };
            let mut line = format!("{indent}  {label}{ty} {field} = {}", i + 1);
            if !params.is_empty() {
                self.imports.insert("confluent/meta.proto");
                let items: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("{{ key: \"{k}\", value: \"{v}\" }}"))
                    .collect();
                line.push_str(&format!(
                    " [(confluent.field_meta) = {{ params: [ {} ] }}]",
                    items.join(", ")
                ));
            }
            fields.push_str(&line);
            fields.push_str(";\n");
        }
        format!("{indent}message {name} {{\n{fields}{nested}{indent}}}\n")
    }

    fn import(&mut self, file: &'static str, ty: &str) -> String {
        self.imports.insert(file);
        ty.to_string()
    }
}

fn is_logical(c: &Value) -> bool {
    matches!(c["name"].as_str(), Some(DECIMAL | DATE | TIME | TIMESTAMP))
}

/// The registered text for the Connect schema `c`, and its root message's full name.
fn proto_file(c: &Value) -> (String, String) {
    let mut w = ProtoWriter {
        imports: HashSet::new(),
        unnamed: 0,
    };
    let full = match c["name"].as_str() {
        Some(n) => n.to_string(),
        None => "ConnectDefault1".to_string(),
    };
    if c["name"].is_null() {
        w.unnamed = 1;
    }
    let (package, name) = full.rsplit_once('.').unwrap_or(("", &full));
    let body = w.message(name, c, "");
    let mut imports: Vec<&str> = w.imports.into_iter().collect();
    imports.sort();
    let mut text = String::from("syntax = \"proto3\";\n");
    if !package.is_empty() {
        // Topic prefixes may hold what a package may not (`mysql-server-1`): as Debezium's
        // `schema.name.adjustment.mode=avro` has them.
        let package: String = package
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        text.push_str(&format!("package {package};\n"));
    }
    text.push('\n');
    for i in imports {
        text.push_str(&format!("import \"{i}\";\n"));
    }
    text.push('\n');
    text.push_str(&body);
    let full = format!("{}.{name}", package_of(&text));
    (text, full.trim_start_matches('.').to_string())
}

/// The package a `.proto` text declares.
fn package_of(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("package "))
        .map_or("", |p| p.trim_end_matches(';'))
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// Year, month and day of days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u32, d as u32)
}

fn message_of(desc: &MessageDescriptor, fields: &[(&str, Proto)]) -> Proto {
    let mut m = DynamicMessage::new(desc.clone());
    for (name, v) in fields {
        m.set_field_by_name(name, v.clone());
    }
    Proto::Message(m)
}

/// A Connect value as the converter's message field value.
fn to_proto(c: &Value, v: &Value, field: &prost_reflect::FieldDescriptor) -> Proto {
    let sub = || match field.kind() {
        prost_reflect::Kind::Message(m) => m,
        other => panic!("{}: {other:?} is not a message", field.name()),
    };
    match (c["type"].as_str().unwrap(), c["name"].as_str()) {
        (_, Some(DECIMAL)) => {
            let scale: i32 = c["parameters"]["scale"].as_str().unwrap().parse().unwrap();
            message_of(
                &sub(),
                &[
                    ("value", Proto::Bytes(b64(v).into())),
                    ("scale", Proto::I32(scale)),
                ],
            )
        }
        (_, Some(DATE)) => {
            let (y, m, d) = civil(v.as_i64().unwrap());
            message_of(
                &sub(),
                &[
                    ("year", Proto::I32(y)),
                    ("month", Proto::I32(m as i32)),
                    ("day", Proto::I32(d as i32)),
                ],
            )
        }
        (_, Some(TIME)) => {
            let ms = v.as_i64().unwrap();
            message_of(
                &sub(),
                &[
                    ("hours", Proto::I32((ms / 3_600_000) as i32)),
                    ("minutes", Proto::I32((ms / 60_000 % 60) as i32)),
                    ("seconds", Proto::I32((ms / 1000 % 60) as i32)),
                    ("nanos", Proto::I32((ms % 1000 * 1_000_000) as i32)),
                ],
            )
        }
        (_, Some(TIMESTAMP)) => {
            let ms = v.as_i64().unwrap();
            message_of(
                &sub(),
                &[
                    ("seconds", Proto::I64(ms.div_euclid(1000))),
                    (
                        "nanos",
                        Proto::I32((ms.rem_euclid(1000) * 1_000_000) as i32),
                    ),
                ],
            )
        }
        ("int8" | "int16" | "int32", _) => Proto::I32(v.as_i64().unwrap() as i32),
        ("int64", _) => Proto::I64(v.as_i64().unwrap()),
        ("float", _) => Proto::F32(v.as_f64().unwrap() as f32),
        ("double", _) => Proto::F64(v.as_f64().unwrap()),
        ("boolean", _) => Proto::Bool(v.as_bool().unwrap()),
        ("string", _) => Proto::String(v.as_str().unwrap().to_string()),
        ("bytes", _) => Proto::Bytes(b64(v).into()),
        ("struct", _) => Proto::Message(struct_to_proto(c, v, &sub())),
        ("array", _) => Proto::List(
            v.as_array()
                .unwrap()
                .iter()
                .map(|item| to_proto(&c["items"], item, field))
                .collect(),
        ),
        (other, _) => panic!("no fixture has a {other}"),
    }
}

fn struct_to_proto(c: &Value, v: &Value, desc: &MessageDescriptor) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    for f in c["fields"].as_array().unwrap() {
        let name = f["field"].as_str().unwrap();
        let value = &v[name];
        if value.is_null() {
            continue; // ProtobufData leaves a null unset
        }
        let field = desc
            .get_field_by_name(name)
            .unwrap_or_else(|| panic!("{} has no field {name}", desc.full_name()));
        m.set_field(&field, to_proto(f, value, &field));
    }
    m
}

/// The registered text and the message (indexes and bytes) of a JSON-converter text, written by
/// protox and prost-reflect.
fn by_prost(v: &Value) -> (String, Vec<u8>) {
    let (text, full) = proto_file(&v["schema"]);
    let pool = compiled(&text);
    let desc = pool
        .get_message_by_name(&full)
        .unwrap_or_else(|| panic!("no {full} in\n{text}"));
    let m = struct_to_proto(&v["schema"], &v["payload"], &desc);
    let mut bytes = vec![0]; // the message indexes: the file's first message
    bytes.extend(m.encode_to_vec());
    (text, bytes)
}

/// The Connect schema a reader of the Protobuf converter's output sees: the names Protobuf does
/// not carry gone (but for VariableScaleDecimal's, which the reader gives back by its shape).
fn as_protobuf_keeps(c: &Value) -> Value {
    let mut c = c.clone();
    if let Some(o) = c.as_object_mut() {
        let keep = matches!(
            o.get("name").and_then(Value::as_str),
            Some(DECIMAL | DATE | TIME | TIMESTAMP | "io.debezium.data.VariableScaleDecimal")
        ) || o.get("type") == Some(&json!("struct"));
        if !keep {
            o.remove("name");
            o.remove("parameters");
        }
        for key in ["items", "keys", "values"] {
            if let Some(inner) = o.get(key) {
                let inner = as_protobuf_keeps(inner);
                o.insert(key.to_string(), inner);
            }
        }
        if let Some(Value::Array(fields)) = o.get("fields") {
            let fields = fields.iter().map(as_protobuf_keeps).collect();
            o.insert("fields".to_string(), Value::Array(fields));
        }
    }
    c
}

#[test]
fn every_fixture_written_by_the_protobuf_converter_makes_its_json_twins_row() {
    for Case {
        name,
        json: json_msg,
        value,
        key,
    } in parity_cases()
    {
        let (value_schema, bytes) = by_prost(&value);
        let mut registered = vec![(1, value_schema)];
        let mut framed_msg = json_msg.clone();
        framed_msg.payload = Some(frame(1, bytes));
        let mut twin = json_msg.clone();
        twin.payload = Some(
            json!({"schema": as_protobuf_keeps(&value["schema"]), "payload": value["payload"]})
                .to_string()
                .into_bytes(),
        );
        if let Some(key) = &key {
            let (key_schema, bytes) = by_prost(key);
            registered.push((2, key_schema));
            framed_msg.key = Some(frame(2, bytes));
        }
        assert_same_rows(&name, &framed_msg, &twin, "PROTOBUF", &registered);
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/protobuf")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_captured_debezium_protobuf_message_reads_as_it_was_sent() {
    let schema = String::from_utf8(fixture("postgresql_favourite_table-value.proto")).unwrap();
    let datum = fixture("postgresql_favourite_table_create.bin");
    // The capture is the value as the topic held it: framing, message indexes, message.
    assert_eq!(&datum[..5], &[0, 0, 0, 0, 6]);
    let read_with: Schemas = [(6, compile(6, "PROTOBUF", &schema))].into_iter().collect();
    let Ok(registered) = read_with.get(6) else {
        panic!("the captured schema compiles")
    };
    let text: Value = serde_json::from_str(&registered.to_json(&datum[5..]).unwrap()).unwrap();
    assert_eq!(text["payload"], json!({"id": 1, "val": "blablabla"}));
    assert_eq!(text["schema"]["name"], "Value");
    assert_eq!(text["schema"]["fields"][0]["type"], "int32");
    assert_eq!(text["schema"]["fields"][1]["type"], "string");
    // ExtractNewRecordState's flat record has no operation: an audit trail cannot take it,
    // and says so instead of guessing.
    let outcome = transform_with(&msg(None, Some(datum)), &Rules::default(), &read_with);
    let Outcome::Rejected(r) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(r.kind, RejectKind::NotAChangeEvent, "{}", r.error);
}

#[test]
fn nulls_defaults_and_nested_messages_read_as_confluents_converter_reads_them() {
    let text = r#"syntax = "proto3";
package s.t;
import "google/protobuf/wrappers.proto";
message Envelope {
  Value before = 1;
  Value after = 2;
  string op = 3;
  message Value {
    int64 id = 1;
    string plain = 2;
    optional string nullable = 3;
    google.protobuf.StringValue wrapped = 4;
    repeated int32 scores = 5;
    map<string, int32> counts = 6;
    Level level = 7;
    enum Level { LOW = 0; HIGH = 1; }
  }
}
"#;
    let pool = compiled(text);
    let env = pool.get_message_by_name("s.t.Envelope").unwrap();
    let value = pool.get_message_by_name("s.t.Envelope.Value").unwrap();
    let mut after = DynamicMessage::new(value.clone());
    after.set_field_by_name("id", Proto::I64(-7));
    after.set_field_by_name("scores", Proto::List(vec![Proto::I32(3), Proto::I32(-1)]));
    after.set_field_by_name("level", Proto::EnumNumber(1));
    let mut e = DynamicMessage::new(env);
    e.set_field_by_name("after", Proto::Message(after));
    e.set_field_by_name("op", Proto::String("c".into()));
    let mut datum = vec![0];
    datum.extend(e.encode_to_vec());
    let Ok(schema) = compile(9, "PROTOBUF", text) else {
        panic!("compiles")
    };
    let read: Value = serde_json::from_str(&schema.to_json(&datum).unwrap()).unwrap();
    // A message absent is null; a plain scalar absent is its default; `optional` and wrappers
    // keep their null; a packed repeated field and an enum by name.
    assert_eq!(read["payload"]["before"], Value::Null);
    assert_eq!(
        read["payload"]["after"],
        json!({"id": -7, "plain": "", "nullable": null, "wrapped": null,
               "scores": [3, -1], "counts": {}, "level": "HIGH"})
    );
    assert_eq!(read["payload"]["op"], "c");
}

#[test]
fn what_the_reader_does_not_read_is_a_rejection_that_says_why() {
    let rules = Rules::default();
    let reason = |schema_text: &str, datum: &[u8]| {
        let schemas: Schemas = [(3, compile(3, "PROTOBUF", schema_text))]
            .into_iter()
            .collect();
        let d = describe_with(&msg(None, Some(frame(3, datum.to_vec()))), &rules, &schemas);
        assert_eq!(d["rejected"]["reason"], "undecodable", "{d}");
        d["rejected"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let simple = "syntax = \"proto3\"; message M { string s = 1; }";
    // A message index past the file's messages.
    assert!(reason(simple, &[2, 4]).contains("message indexes"));
    // A string field holding a number.
    assert!(reason(simple, &[0, 0x08, 1]).contains("wire type"));
    // A message cut short.
    assert!(reason(simple, &[0, 0x0a, 5, b'a']).contains("ends early"));
    // A oneof, and a type of another schema.
    assert!(reason(
        "syntax = \"proto3\"; message M { oneof o { int32 a = 1; } }",
        &[0]
    )
    .contains("oneof"));
    assert!(reason(
        "syntax = \"proto3\"; import \"other.proto\"; message M { other.T t = 1; }",
        &[0]
    )
    .contains("references"));
}

#[test]
fn connects_logical_types_and_maps_come_back_as_the_json_converter_prints_them() {
    // A Connect record with each logical type Confluent's converter writes as a message of its
    // own, before and after the epoch, written by prost-reflect and read back.
    let field = |name: &str, schema: Value| {
        let mut s = schema;
        s["field"] = json!(name);
        s["optional"] = json!(true);
        s
    };
    let logical = |ty: &str, name: &str| json!({"type": ty, "name": name, "version": 1});
    let schema = json!({"type": "struct", "name": "s.t.Value", "optional": false, "fields": [
        field("at", logical("int64", TIMESTAMP)),
        field("early", logical("int64", TIMESTAMP)),
        field("day", logical("int32", DATE)),
        field("old_day", logical("int32", DATE)),
        field("time", logical("int32", TIME)),
        field("price", json!({"type": "bytes", "name": DECIMAL, "version": 1,
                              "parameters": {"scale": "2", "connect.decimal.precision": "10"}})),
        field("tiny", json!({"type": "int8"})),
        field("ratio", json!({"type": "float"})),
        field("tags", json!({"type": "array", "items": {"type": "string", "optional": true}})),
    ]});
    let payload = json!({
        "at": 1_700_000_000_123i64,
        "early": -1500,
        "day": 19_782,
        "old_day": -1,
        "time": 45_296_789,
        "price": "AwnD", // 199_107 unscaled: 1991.07
        "tiny": -5,
        "ratio": 0.25,
        "tags": ["a", "b"],
    });
    let (text, bytes) = by_prost(&json!({"schema": schema, "payload": payload}));
    let Ok(registered) = compile(5, "PROTOBUF", &text) else {
        panic!("compiles: {text}")
    };
    let read: Value = serde_json::from_str(&registered.to_json(&bytes).unwrap()).unwrap();
    assert_eq!(read["payload"], payload, "{text}");
    let names: Vec<&str> = read["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, [TIMESTAMP, TIMESTAMP, DATE, DATE, TIME, DECIMAL]);
    assert_eq!(read["schema"]["fields"][5]["parameters"]["scale"], "2");
    assert_eq!(read["schema"]["fields"][6]["type"], "int8");

    // A decimal whose scale is not its field's is refused, as Connect's Decimal refuses it.
    let text = "syntax = \"proto3\";\nimport \"confluent/meta.proto\";\nimport \"confluent/type/decimal.proto\";\n\
        message M { confluent.type.Decimal d = 1 [(confluent.field_meta) = { params: [ { key: \"scale\", value: \"2\" } ] }]; }\n";
    let pool = compiled(text);
    let m = pool.get_message_by_name("M").unwrap();
    let d = m.get_field_by_name("d").unwrap();
    let mut msg = DynamicMessage::new(m.clone());
    let prost_reflect::Kind::Message(decimal) = d.kind() else {
        panic!("a message")
    };
    msg.set_field(
        &d,
        message_of(
            &decimal,
            &[
                ("value", Proto::Bytes(vec![1].into())),
                ("scale", Proto::I32(3)),
            ],
        ),
    );
    let mut datum = vec![0];
    datum.extend(msg.encode_to_vec());
    let Ok(schema) = compile(6, "PROTOBUF", text) else {
        panic!("compiles")
    };
    let e = schema.to_json(&datum).unwrap_err();
    assert!(e.contains("scale 3") && e.contains("says 2"), "{e}");

    // Maps: string keys as an object, others as pairs.
    let text = "syntax = \"proto3\";\nmessage M { map<string, int64> by_name = 1; map<int32, string> by_id = 2; }\n";
    let pool = compiled(text);
    let m = pool.get_message_by_name("M").unwrap();
    let mut msg = DynamicMessage::new(m);
    msg.set_field_by_name(
        "by_name",
        Proto::Map(
            [(prost_reflect::MapKey::String("x".into()), Proto::I64(7))]
                .into_iter()
                .collect(),
        ),
    );
    msg.set_field_by_name(
        "by_id",
        Proto::Map(
            [(prost_reflect::MapKey::I32(3), Proto::String("three".into()))]
                .into_iter()
                .collect(),
        ),
    );
    let mut datum = vec![0];
    datum.extend(msg.encode_to_vec());
    let Ok(schema) = compile(7, "PROTOBUF", text) else {
        panic!("compiles")
    };
    let read: Value = serde_json::from_str(&schema.to_json(&datum).unwrap()).unwrap();
    assert_eq!(
        read["payload"],
        json!({"by_name": {"x": 7}, "by_id": [[3, "three"]]})
    );
    assert_eq!(read["schema"]["fields"][0]["type"], "map");
}
