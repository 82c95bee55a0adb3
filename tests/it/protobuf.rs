//! Protobuf through a schema registry. Debezium's events as Confluent's ProtobufConverter writes
//! them make the rows their JSON twins make, once the twin's schema has lost what Protobuf does not
//! carry (Connect names other than Decimal, Date, Time and Timestamp); a message captured from a
//! real Debezium installation reads as it was sent; what the reader does not read is a rejection
//! that says why.
//!
//! The `.proto` text follows Confluent's `ProtobufData.fromConnectSchema` (with
//! `optional.for.nullables=true`), and the bytes come from protox and prost-reflect (a protobuf
//! compiler and a dynamic message in Rust), not from the service's own reader: see
//! `protobuf_writer.rs`, which the transform bench shares.

use std::path::PathBuf;

use cdc_audit::config::rules::Rules;
use cdc_audit::transform::schemas::{compile, Schemas};
use cdc_audit::transform::{describe_with, transform_with};
use cdc_audit::types::{Outcome, RejectKind};
use prost::Message as _;
use prost_reflect::{DynamicMessage, Value as Proto};
use serde_json::{json, Value};

use crate::avro::{assert_same_rows, frame, parity_cases, Case};
use crate::properties::message as msg;
use crate::protobuf_writer::{by_prost, compiled, message_of, DATE, DECIMAL, TIME, TIMESTAMP};

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
        framed_msg.payload = Some(frame(1, bytes).into());
        let mut twin = json_msg.clone();
        twin.payload = Some(
            json!({"schema": as_protobuf_keeps(&value["schema"]), "payload": value["payload"]})
                .to_string()
                .into_bytes()
                .into(),
        );
        if let Some(key) = &key {
            let (key_schema, bytes) = by_prost(key);
            registered.push((2, key_schema));
            framed_msg.key = Some(frame(2, bytes).into());
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
