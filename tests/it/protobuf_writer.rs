//! Debezium's events as Confluent's ProtobufConverter writes them: the `.proto` text of a Connect
//! schema as `ProtobufData.fromConnectSchema` makes it (with `optional.for.nullables=true`), and
//! the bytes of a value, by protox and prost-reflect (a protobuf compiler and a dynamic message
//! in Rust), not by the service's own reader. The Protobuf tests use it, and the transform bench,
//! which includes this file and uses a part of it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use base64::Engine;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value as Proto};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use serde_json::Value;

/// The files Confluent's converter imports, as Confluent and Google publish them.
pub const IMPORTS: &[(&str, &str)] = &[
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
pub fn compiled(text: &str) -> DescriptorPool {
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

pub const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
pub const DATE: &str = "org.apache.kafka.connect.data.Date";
pub const TIME: &str = "org.apache.kafka.connect.data.Time";
pub const TIMESTAMP: &str = "org.apache.kafka.connect.data.Timestamp";

pub fn unqualified(name: &str) -> &str {
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

pub fn is_logical(c: &Value) -> bool {
    matches!(c["name"].as_str(), Some(DECIMAL | DATE | TIME | TIMESTAMP))
}

/// The registered text for the Connect schema `c`, and its root message's full name.
pub fn proto_file(c: &Value) -> (String, String) {
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
pub fn package_of(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("package "))
        .map_or("", |p| p.trim_end_matches(';'))
}

pub fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

/// Year, month and day of days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub fn civil(days: i64) -> (i32, u32, u32) {
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

pub fn message_of(desc: &MessageDescriptor, fields: &[(&str, Proto)]) -> Proto {
    let mut m = DynamicMessage::new(desc.clone());
    for (name, v) in fields {
        m.set_field_by_name(name, v.clone());
    }
    Proto::Message(m)
}

/// A Connect value as the converter's message field value.
pub fn to_proto(c: &Value, v: &Value, field: &prost_reflect::FieldDescriptor) -> Proto {
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

pub fn struct_to_proto(c: &Value, v: &Value, desc: &MessageDescriptor) -> DynamicMessage {
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
pub fn by_prost(v: &Value) -> (String, Vec<u8>) {
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
