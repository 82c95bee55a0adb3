//! Registry-framed Avro, as Confluent's Avro converter writes it (byte 0, the schema's id in four
//! big-endian bytes, then the Avro binary datum), turned into the text Debezium's JSON converter
//! sends for the same Connect record: `{"schema": <Connect schema>, "payload": <value>}`. The
//! transform reads that text as it reads any JSON message, so one change makes the same audit row
//! whichever converter wrote it; the reader also says where it wrote the payload's members
//! (`json::Span`), so that the transform takes them from there instead of scanning the text.
//!
//! The Connect schema is rebuilt from the `connect.*` properties the converter writes, as
//! Confluent's `AvroData.toConnectSchema` rebuilds it, minus what that converter adds of its own:
//! the registry's subject version as the schema version, and `io.confluent.connect.avro.*`
//! parameters made of Avro docs. Values are printed as `JsonConverter` prints them: bytes and
//! decimals in base64, floats as Java prints them, maps with other than string keys as pairs.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use base64::Engine;
use serde_json::{Map, Value};

use super::json::{base64_into, escape_into, java_float, Span};

/// Confluent's wire format: this byte, then a 4-byte schema id.
const MAGIC: u8 = 0;
/// The schema id of a registry-framed value or key, and the datum after it; `None` for anything
/// else (JSON text never starts with this byte).
pub fn framed(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [MAGIC, a, b, c, d, rest @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => None,
    }
}

/// Confluent's newer framing by schema GUID (magic byte 1, 16 bytes), not read yet.
pub fn guid_framed(bytes: &[u8]) -> bool {
    bytes.len() > 17 && bytes[0] == 1
}

/// An Avro schema ready to decode datums into the JSON converter's text.
#[derive(Debug)]
pub struct AvroSchema {
    root: Node,
    /// The Connect schema, as the JSON converter prints it.
    connect: String,
}

/// How a datum is read, named types resolved.
#[derive(Debug, Clone)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    /// The symbols, as JSON string literals.
    Enum(Vec<String>),
    Array(Box<Node>),
    Map(Box<Node>),
    /// AvroData's array of key/value records for a Connect map whose keys are not strings: the
    /// JSON converter prints `[[key, value], ...]`.
    Pairs(Box<Node>, Box<Node>),
    Record(Vec<Field>),
    /// A union of `null` and one type: a Connect optional value.
    Optional {
        null_index: i64,
        node: Box<Node>,
    },
    /// Any other union: a struct with one member per branch, the chosen one set.
    Union(Vec<Field>),
}

/// A record's field, or a union's branch as the JSON converter's struct member.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    /// `"name":`, as JSON text.
    key: String,
    node: Node,
}

impl Field {
    fn new(name: &str, node: Node) -> Field {
        Field {
            key: format!("{}:", quote(name)),
            name: name.to_string(),
            node,
        }
    }
}

/// A Connect schema, as the JSON converter prints it.
#[derive(Debug, Clone)]
struct Connect {
    ty: &'static str,
    /// `"fields"`, `"items"` or `"keys"` and `"values"`, as JSON text after a comma.
    inner: String,
    optional: bool,
    name: Option<String>,
    version: Option<i64>,
    doc: Option<String>,
    parameters: Vec<(String, String)>,
    /// JSON text.
    default: Option<String>,
}

impl Connect {
    fn new(ty: &'static str) -> Self {
        Connect {
            ty,
            inner: String::new(),
            optional: false,
            name: None,
            version: None,
            doc: None,
            parameters: Vec::new(),
            default: None,
        }
    }

    fn parameter(&mut self, key: &str, value: String) {
        match self.parameters.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.parameters.push((key.to_string(), value)),
        }
    }

    /// `JsonConverter.asJsonSchema`'s text, with the struct member's name if it is one.
    fn text(&self, field: Option<&str>) -> String {
        let mut s = format!("{{\"type\":\"{}\"{}", self.ty, self.inner);
        let _ = write!(s, ",\"optional\":{}", self.optional);
        if let Some(name) = &self.name {
            let _ = write!(s, ",\"name\":{}", quote(name));
        }
        if let Some(version) = self.version {
            let _ = write!(s, ",\"version\":{version}");
        }
        if let Some(doc) = &self.doc {
            let _ = write!(s, ",\"doc\":{}", quote(doc));
        }
        if !self.parameters.is_empty() {
            s.push_str(",\"parameters\":{");
            for (i, (k, v)) in self.parameters.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{}:{}", quote(k), quote(v));
            }
            s.push('}');
        }
        if let Some(default) = &self.default {
            let _ = write!(s, ",\"default\":{default}");
        }
        if let Some(field) = field {
            let _ = write!(s, ",\"field\":{}", quote(field));
        }
        s.push('}');
        s
    }
}

fn quote(s: &str) -> String {
    super::json::quote(s)
}

#[derive(Debug, Clone)]
struct Type {
    node: Node,
    connect: Connect,
}

impl AvroSchema {
    /// Reads an Avro schema (its JSON text, as the registry returns it).
    pub fn parse(text: &str) -> Result<AvroSchema, String> {
        let json: Value =
            serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
        let mut parser = Parser::default();
        let t = parser.parse(&json, "")?;
        let connect = t.connect.text(None);
        Ok(AvroSchema {
            root: t.node,
            connect,
        })
    }

    /// The Connect schema, as the JSON converter prints it.
    pub fn connect(&self) -> &str {
        &self.connect
    }

    /// The JSON converter's text of one datum: `{"schema": ..., "payload": ...}`.
    pub fn to_json(&self, datum: &[u8]) -> Result<String, String> {
        let mut out = String::with_capacity(self.connect.len() + datum.len() * 3 + 32);
        out.push_str("{\"schema\":");
        out.push_str(&self.connect);
        out.push_str(",\"payload\":");
        self.read(datum, &mut out, |r, out| r.value(&self.root, out))?;
        out.push('}');
        Ok(out)
    }

    /// The `payload` of that text alone, and where its members and theirs are in it (when it
    /// is a record), so that the text need not be read again to find them.
    pub fn payload(&self, datum: &[u8]) -> Result<(String, Vec<Span<'_>>), String> {
        // Text runs to three or four times the datum (field names, base64, digits).
        let mut out = String::with_capacity(datum.len() * 4 + 64);
        let mut spans = None;
        self.read(datum, &mut out, |r, out| {
            spans = r.split(&self.root, out, 2)?;
            Ok(())
        })?;
        Ok((out, spans.unwrap_or_default()))
    }

    /// Appends the datum as JSON, written by `write`; all of it must be read.
    fn read(
        &self,
        datum: &[u8],
        out: &mut String,
        write: impl FnOnce(&mut Reader<'_>, &mut String) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut reader = Reader {
            bytes: datum,
            at: 0,
            limit: out.len() + 64 * datum.len() + 64 * 1024,
        };
        write(&mut reader, out)?;
        if reader.at != datum.len() {
            return Err(format!(
                "{} bytes left after the datum: the data does not match its schema",
                datum.len() - reader.at
            ));
        }
        Ok(())
    }
}

impl AvroSchema {
    /// The Avro datum of a value as the JSON converter prints it (`payload`): what
    /// [`AvroSchema::to_json`] reads back. The demo's producer writes Avro with it.
    pub fn encode(&self, payload: &Value) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        encode(&self.root, payload, &mut out)?;
        Ok(out)
    }
}

fn zigzag(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn encode(node: &Node, v: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let wrong = || format!("{v} does not fit {node:?}");
    let bytes = |v: &Value| {
        v.as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(wrong)
    };
    match node {
        Node::Null if v.is_null() => {}
        Node::Boolean => out.push(u8::from(v.as_bool().ok_or_else(wrong)?)),
        Node::Int | Node::Long => zigzag(out, v.as_i64().ok_or_else(wrong)?),
        Node::Float => out.extend((v.as_f64().ok_or_else(wrong)? as f32).to_le_bytes()),
        Node::Double => out.extend(v.as_f64().ok_or_else(wrong)?.to_le_bytes()),
        Node::Bytes => {
            let b = bytes(v)?;
            zigzag(out, b.len() as i64);
            out.extend(b);
        }
        Node::Fixed(n) => {
            let b = bytes(v)?;
            if b.len() != *n {
                return Err(wrong());
            }
            out.extend(b);
        }
        Node::String => {
            let s = v.as_str().ok_or_else(wrong)?;
            zigzag(out, s.len() as i64);
            out.extend(s.as_bytes());
        }
        Node::Enum(symbols) => {
            let s = quote(v.as_str().ok_or_else(wrong)?);
            let i = symbols.iter().position(|x| *x == s).ok_or_else(wrong)?;
            zigzag(out, i as i64);
        }
        Node::Array(items) => {
            let a = v.as_array().ok_or_else(wrong)?;
            if !a.is_empty() {
                zigzag(out, a.len() as i64);
                for item in a {
                    encode(items, item, out)?;
                }
            }
            out.push(0);
        }
        Node::Pairs(key, value) => {
            let a = v.as_array().ok_or_else(wrong)?;
            if !a.is_empty() {
                zigzag(out, a.len() as i64);
                for pair in a {
                    encode(key, pair.get(0).ok_or_else(wrong)?, out)?;
                    encode(value, pair.get(1).ok_or_else(wrong)?, out)?;
                }
            }
            out.push(0);
        }
        Node::Map(values) => {
            let m = v.as_object().ok_or_else(wrong)?;
            if !m.is_empty() {
                zigzag(out, m.len() as i64);
                for (k, item) in m {
                    encode(&Node::String, &Value::String(k.clone()), out)?;
                    encode(values, item, out)?;
                }
            }
            out.push(0);
        }
        Node::Record(fields) => {
            for f in fields {
                encode(&f.node, v.get(&f.name).unwrap_or(&Value::Null), out)?;
            }
        }
        Node::Optional { null_index, node } => {
            if v.is_null() {
                zigzag(out, *null_index);
            } else {
                zigzag(out, 1 - *null_index);
                encode(node, v, out)?;
            }
        }
        Node::Union(branches) => {
            let (i, f) = branches
                .iter()
                .enumerate()
                .find(|(_, f)| v.get(&f.name).is_some_and(|b| !b.is_null()))
                .ok_or_else(wrong)?;
            zigzag(out, i as i64);
            encode(&f.node, &v[&f.name], out)?;
        }
        Node::Null => return Err(wrong()),
    }
    Ok(())
}

/// Named types by full name; the ones being defined, to refuse a recursive schema.
#[derive(Default)]
struct Parser {
    named: HashMap<String, Type>,
    defining: HashSet<String>,
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Connect names AvroData gives unnamed structs, and drops when reading back.
const CONNECT_DEFAULT: &str = "io.confluent.connect.avro.ConnectDefault";

impl Parser {
    fn parse(&mut self, json: &Value, namespace: &str) -> Result<Type, String> {
        match json {
            Value::String(name) if PRIMITIVES.contains(&name.as_str()) => {
                primitive(name, &Map::new())
            }
            Value::String(name) => self.reference(name, namespace),
            Value::Array(branches) => self.union(branches, namespace),
            Value::Object(o) => match o.get("type") {
                Some(Value::String(ty)) => match ty.as_str() {
                    "record" | "error" => self.record(o, namespace),
                    "enum" => self.enumeration(o, namespace),
                    "fixed" => self.fixed(o, namespace),
                    "array" => {
                        let items = self.parse(
                            o.get("items").ok_or("an array without \"items\"")?,
                            namespace,
                        )?;
                        Ok(self.array(items, o))
                    }
                    "map" => {
                        let values = self.parse(
                            o.get("values").ok_or("a map without \"values\"")?,
                            namespace,
                        )?;
                        let mut connect = Connect::new("map");
                        connect.inner = format!(
                            ",\"keys\":{{\"type\":\"string\",\"optional\":false}},\"values\":{}",
                            values.connect.text(None)
                        );
                        meta(&mut connect, o);
                        Ok(Type {
                            node: Node::Map(Box::new(values.node)),
                            connect,
                        })
                    }
                    p if PRIMITIVES.contains(&p) => primitive(p, o),
                    _ => {
                        let mut t = self.reference(ty, namespace)?;
                        meta(&mut t.connect, o);
                        Ok(t)
                    }
                },
                Some(nested) => self.parse(nested, namespace),
                None => Err("a schema object without \"type\"".to_string()),
            },
            other => Err(format!("{other} is not an Avro schema")),
        }
    }

    fn full_name(o: &Map<String, Value>, namespace: &str) -> Result<(String, String), String> {
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a named type without a \"name\"")?;
        let full = if name.contains('.') {
            name.to_string()
        } else {
            let ns = o
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace);
            if ns.is_empty() {
                name.to_string()
            } else {
                format!("{ns}.{name}")
            }
        };
        let ns = full.rsplit_once('.').map_or("", |(ns, _)| ns).to_string();
        Ok((full, ns))
    }

    fn reference(&self, name: &str, namespace: &str) -> Result<Type, String> {
        let qualified = format!("{namespace}.{name}");
        let candidates = [qualified.as_str(), name];
        for c in candidates.iter().filter(|c| !c.starts_with('.')) {
            if self.defining.contains(*c) {
                return Err(format!(
                    "the type {c} contains itself: recursive schemas have no Connect form"
                ));
            }
            if let Some(t) = self.named.get(*c) {
                return Ok(t.clone());
            }
        }
        Err(format!("unknown type {name:?}"))
    }

    fn define(&mut self, full: String, t: &Type) {
        self.defining.remove(&full);
        self.named.insert(full, t.clone());
    }

    fn record(&mut self, o: &Map<String, Value>, namespace: &str) -> Result<Type, String> {
        let (full, ns) = Self::full_name(o, namespace)?;
        self.defining.insert(full.clone());
        let fields = o
            .get("fields")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the record {full} has no \"fields\" array"))?;
        let mut nodes = Vec::with_capacity(fields.len());
        let mut texts = Vec::with_capacity(fields.len());
        for f in fields {
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a field of {full} without a \"name\""))?;
            let ty = f
                .get("type")
                .ok_or_else(|| format!("the field {full}.{name} has no \"type\""))?;
            let mut t = self.parse(ty, &ns)?;
            // Parameters a reused named type has differently here (AvroData puts them on the field).
            if let Some(Value::Object(params)) = f.get("connect.parameters") {
                for (k, v) in params {
                    if let Some(v) = v.as_str() {
                        t.connect.parameter(k, v.to_string());
                    }
                }
            }
            nodes.push(Field::new(name, t.node));
            texts.push(t.connect.text(Some(name)));
        }
        let mut connect = Connect::new("struct");
        connect.inner = format!(",\"fields\":[{}]", texts.join(","));
        connect.name = Some(full.clone());
        meta(&mut connect, o);
        let t = Type {
            node: Node::Record(nodes),
            connect,
        };
        self.define(full, &t);
        Ok(t)
    }

    fn enumeration(&mut self, o: &Map<String, Value>, namespace: &str) -> Result<Type, String> {
        let (full, _) = Self::full_name(o, namespace)?;
        let symbols: Vec<&str> = o
            .get("symbols")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the enum {full} has no \"symbols\""))?
            .iter()
            .map(|s| {
                s.as_str()
                    .ok_or_else(|| format!("a symbol of {full} is not a string"))
            })
            .collect::<Result<_, _>>()?;
        let mut connect = Connect::new("string");
        connect.name = Some(full.clone());
        connect.parameter("io.confluent.connect.avro.Enum", full.clone());
        for s in &symbols {
            connect.parameter(
                &format!("io.confluent.connect.avro.Enum.{s}"),
                s.to_string(),
            );
        }
        meta(&mut connect, o);
        let t = Type {
            node: Node::Enum(symbols.iter().map(|s| quote(s)).collect()),
            connect,
        };
        self.define(full, &t);
        Ok(t)
    }

    fn fixed(&mut self, o: &Map<String, Value>, namespace: &str) -> Result<Type, String> {
        let (full, _) = Self::full_name(o, namespace)?;
        let size = o
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("the fixed type {full} has no \"size\""))?;
        let mut connect = Connect::new("bytes");
        if !decimal(&mut connect, o) {
            connect.name = Some(full.clone());
        }
        connect.parameter("connect.fixed.size", size.to_string());
        meta(&mut connect, o);
        let t = Type {
            node: Node::Fixed(size as usize),
            connect,
        };
        self.define(full, &t);
        Ok(t)
    }

    fn array(&mut self, items: Type, o: &Map<String, Value>) -> Type {
        let pairs = match (&items.node, items.connect.name.as_deref()) {
            (Node::Record(fields), name)
                if fields.len() == 2
                    && fields[0].name == "key"
                    && fields[1].name == "value"
                    && (name == Some("io.confluent.connect.avro.MapEntry")
                        || o.get("connect.internal.type").and_then(Value::as_str)
                            == Some("MapEntry")) =>
            {
                Some((fields[0].node.clone(), fields[1].node.clone()))
            }
            _ => None,
        };
        match pairs {
            Some((key, value)) => {
                // The entry record's members are the map's key and value schemas.
                let inner = &items.connect.inner;
                let members = inner
                    .strip_prefix(",\"fields\":[")
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or_default();
                let (k, v) = split_pair(members);
                let mut connect = Connect::new("map");
                connect.inner = format!(",\"keys\":{k},\"values\":{v}");
                meta(&mut connect, o);
                Type {
                    node: Node::Pairs(Box::new(key), Box::new(value)),
                    connect,
                }
            }
            None => {
                let mut connect = Connect::new("array");
                connect.inner = format!(",\"items\":{}", items.connect.text(None));
                meta(&mut connect, o);
                Type {
                    node: Node::Array(Box::new(items.node)),
                    connect,
                }
            }
        }
    }

    fn union(&mut self, branches: &[Value], namespace: &str) -> Result<Type, String> {
        let types: Vec<Type> = branches
            .iter()
            .map(|b| self.parse(b, namespace))
            .collect::<Result<_, _>>()?;
        let nulls: Vec<usize> = (0..types.len())
            .filter(|i| matches!(types[*i].node, Node::Null))
            .collect();
        match (types.len(), nulls.as_slice()) {
            (1, _) => Ok(types.into_iter().next().ok_or("an empty union")?),
            (2, [null]) => {
                let mut t = types[1 - null].clone();
                t.connect.optional = true;
                t.node = Node::Optional {
                    null_index: *null as i64,
                    node: Box::new(t.node),
                };
                Ok(t)
            }
            (0, _) => Err("an empty union".to_string()),
            _ => {
                let mut nodes = Vec::new();
                let mut texts = Vec::new();
                for (b, t) in branches.iter().zip(types) {
                    let member = match b {
                        Value::String(s) => s.rsplit('.').next().unwrap_or(s).to_string(),
                        Value::Object(o) => match o.get("name").and_then(Value::as_str) {
                            Some(n) => n.rsplit('.').next().unwrap_or(n).to_string(),
                            None => o
                                .get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                        },
                        _ => String::new(),
                    };
                    let mut c = t.connect.clone();
                    c.optional = true;
                    texts.push(c.text(Some(&member)));
                    nodes.push(Field::new(&member, t.node));
                }
                let mut connect = Connect::new("struct");
                connect.inner = format!(",\"fields\":[{}]", texts.join(","));
                connect.name = Some("io.confluent.connect.avro.Union".to_string());
                Ok(Type {
                    node: Node::Union(nodes),
                    connect,
                })
            }
        }
    }
}

/// Splits `{...},{...}` (two schema objects) at the comma between them.
fn split_pair(members: &str) -> (&str, &str) {
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in members.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '{' | '[' if !in_string => depth += 1,
            '}' | ']' if !in_string => depth -= 1,
            ',' if !in_string && depth == 0 => return (&members[..i], &members[i + 1..]),
            _ => {}
        }
    }
    (members, "null")
}

fn primitive(name: &str, o: &Map<String, Value>) -> Result<Type, String> {
    let logical = o.get("logicalType").and_then(Value::as_str);
    let (node, mut connect) = match name {
        "null" => (Node::Null, Connect::new("null")),
        "boolean" => (Node::Boolean, Connect::new("boolean")),
        "int" => {
            let ty = match (o.get("connect.type").and_then(Value::as_str), logical) {
                (Some("int8"), _) => "int8",
                (Some("int16"), _) => "int16",
                _ => "int32",
            };
            let mut c = Connect::new(ty);
            match logical {
                Some("date") => logical_name(&mut c, "org.apache.kafka.connect.data.Date"),
                Some("time-millis") => logical_name(&mut c, "org.apache.kafka.connect.data.Time"),
                _ => {}
            }
            (Node::Int, c)
        }
        "long" => {
            let mut c = Connect::new("int64");
            if logical == Some("timestamp-millis") {
                logical_name(&mut c, "org.apache.kafka.connect.data.Timestamp");
            }
            (Node::Long, c)
        }
        "float" => (Node::Float, Connect::new("float")),
        "double" => (Node::Double, Connect::new("double")),
        "bytes" => {
            let mut c = Connect::new("bytes");
            decimal(&mut c, o);
            (Node::Bytes, c)
        }
        "string" => (Node::String, Connect::new("string")),
        other => return Err(format!("{other} is not a primitive type")),
    };
    meta(&mut connect, o);
    Ok(Type { node, connect })
}

fn logical_name(c: &mut Connect, name: &str) {
    c.name = Some(name.to_string());
    c.version = Some(1);
}

/// Avro's `decimal` logical type as Connect's `Decimal`: the scale as a parameter, and the
/// precision unless it is AvroData's default. False if `o` is not a decimal.
fn decimal(c: &mut Connect, o: &Map<String, Value>) -> bool {
    if o.get("logicalType").and_then(Value::as_str) != Some("decimal") {
        return false;
    }
    logical_name(c, "org.apache.kafka.connect.data.Decimal");
    let scale = o.get("scale").and_then(Value::as_i64).unwrap_or(0);
    c.parameter("scale", scale.to_string());
    if let Some(precision) = o.get("precision").and_then(Value::as_i64) {
        if precision != 64 {
            c.parameter("connect.decimal.precision", precision.to_string());
        }
    }
    true
}

/// The `connect.*` properties of a type: what Connect knew of it before the Avro converter.
fn meta(c: &mut Connect, o: &Map<String, Value>) {
    if let Some(doc) = o.get("connect.doc").and_then(Value::as_str) {
        c.doc = Some(doc.to_string());
    }
    if let Some(version) = o.get("connect.version").and_then(Value::as_i64) {
        c.version = Some(version);
    }
    if let Some(Value::Object(params)) = o.get("connect.parameters") {
        for (k, v) in params {
            if let Some(v) = v.as_str() {
                c.parameter(k, v.to_string());
            }
        }
    }
    if let Some(default) = o.get("connect.default") {
        c.default = Some(match (c.ty, default) {
            // AvroData writes a bytes default as a string of ISO-8859-1 characters.
            ("bytes", Value::String(s)) => {
                let bytes: Vec<u8> = s.chars().map(|ch| ch as u32 as u8).collect();
                quote(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            _ => default.to_string(),
        });
    }
    if let Some(name) = o.get("connect.name").and_then(Value::as_str) {
        c.name = Some(name.to_string());
    }
    if c.name
        .as_deref()
        .is_some_and(|n| n.starts_with(CONNECT_DEFAULT))
    {
        c.name = None;
    }
}

/// A datum being read.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// How long the text may grow: an array of nulls costs no bytes at all.
    limit: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("the datum ends early, at byte {}", self.bytes.len()))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// A zig-zag varint of at most ten bytes.
    fn long(&mut self) -> Result<i64, String> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(format!(
            "a varint longer than ten bytes at byte {}",
            self.at
        ))
    }

    fn int(&mut self) -> Result<i32, String> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("{v} does not fit an Avro int"))
    }

    fn length(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| format!("a negative length {n}"))
    }

    /// [`Reader::value`], and where a record's fields are written, `levels` deep (a present
    /// optional record counts as the record).
    fn split<'s>(
        &mut self,
        node: &'s Node,
        out: &mut String,
        levels: u8,
    ) -> Result<Option<Vec<Span<'s>>>, String> {
        match node {
            Node::Record(fields) if levels > 0 => {
                let mut spans = Vec::with_capacity(fields.len());
                out.push('{');
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&f.key);
                    let start = out.len();
                    let inner = self.split(&f.node, out, levels - 1)?;
                    spans.push(Span {
                        name: &f.name,
                        range: start..out.len(),
                        inner,
                    });
                }
                out.push('}');
                Ok(Some(spans))
            }
            Node::Optional { null_index, node } if levels > 0 => {
                if self.present(*null_index)? {
                    self.split(node, out, levels)
                } else {
                    out.push_str("null");
                    Ok(None)
                }
            }
            _ => self.value(node, out).map(|()| None),
        }
    }

    /// Whether an optional value is there: its union's branch.
    fn present(&mut self, null_index: i64) -> Result<bool, String> {
        match self.long()? {
            i if i == null_index => Ok(false),
            i if i == 1 - null_index => Ok(true),
            i => Err(format!("union index {i} of 2 branches")),
        }
    }

    fn value(&mut self, node: &Node, out: &mut String) -> Result<(), String> {
        if out.len() > self.limit {
            return Err("the datum's text grows past any plausible size".to_string());
        }
        match node {
            Node::Null => out.push_str("null"),
            Node::Boolean => match self.take(1)?[0] {
                0 => out.push_str("false"),
                1 => out.push_str("true"),
                b => return Err(format!("{b} is not a boolean")),
            },
            Node::Int => {
                let _ = write!(out, "{}", self.int()?);
            }
            Node::Long => {
                let _ = write!(out, "{}", self.long()?);
            }
            Node::Float => {
                let b = self.take(4)?;
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                java_float(out, f64::from(v), format!("{v:e}"));
            }
            Node::Double => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let v = f64::from_le_bytes(a);
                java_float(out, v, format!("{v:e}"));
            }
            Node::Bytes => {
                let n = self.length()?;
                base64_into(out, self.take(n)?);
            }
            Node::Fixed(n) => base64_into(out, self.take(*n)?),
            Node::String => {
                let n = self.length()?;
                let s = std::str::from_utf8(self.take(n)?)
                    .map_err(|e| format!("a string that is not UTF-8: {e}"))?;
                escape_into(out, s);
            }
            Node::Enum(symbols) => {
                let i = self.int()?;
                let s = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or_else(|| format!("enum index {i} of {} symbols", symbols.len()))?;
                out.push_str(s);
            }
            Node::Array(items) => {
                out.push('[');
                self.blocks(out, |r, out| r.value(items, out))?;
                out.push(']');
            }
            Node::Pairs(key, value) => {
                out.push('[');
                self.blocks(out, |r, out| {
                    out.push('[');
                    r.value(key, out)?;
                    out.push(',');
                    r.value(value, out)?;
                    out.push(']');
                    Ok(())
                })?;
                out.push(']');
            }
            Node::Map(values) => {
                out.push('{');
                self.blocks(out, |r, out| {
                    r.value(&Node::String, out)?;
                    out.push(':');
                    r.value(values, out)
                })?;
                out.push('}');
            }
            Node::Record(fields) => {
                out.push('{');
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&f.key);
                    self.value(&f.node, out)?;
                }
                out.push('}');
            }
            Node::Optional { null_index, node } => {
                if self.present(*null_index)? {
                    self.value(node, out)?;
                } else {
                    out.push_str("null");
                }
            }
            Node::Union(branches) => {
                let chosen = self.long()?;
                if !usize::try_from(chosen).is_ok_and(|c| c < branches.len()) {
                    return Err(format!(
                        "union index {chosen} of {} branches",
                        branches.len()
                    ));
                }
                out.push('{');
                for (i, f) in branches.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&f.key);
                    if i as i64 == chosen {
                        self.value(&f.node, out)?;
                    } else {
                        out.push_str("null");
                    }
                }
                out.push('}');
            }
        }
        Ok(())
    }

    /// Array and map blocks: a count (negative: its absolute value, then the block's size in
    /// bytes), items, until a count of zero. Items are separated by commas.
    fn blocks(
        &mut self,
        out: &mut String,
        mut item: impl FnMut(&mut Self, &mut String) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut first = true;
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                count = count.checked_neg().ok_or("a block count out of range")?;
                self.long()?;
            }
            for _ in 0..count {
                if out.len() > self.limit {
                    return Err("the datum's text grows past any plausible size".to_string());
                }
                if !first {
                    out.push(',');
                }
                first = false;
                item(self, out)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(v: f64) -> String {
        let mut s = String::new();
        java_float(&mut s, v, format!("{v:e}"));
        s
    }

    #[test]
    fn floats_print_as_java_prints_them() {
        // Java's Double.toString of each value.
        for (v, java) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (123456.789, "123456.789"),
            (1e7, "1.0E7"),
            (12345678.9, "1.23456789E7"),
            (0.001, "0.001"),
            (0.0001, "1.0E-4"),
            (1e-7, "1.0E-7"),
            (1.5e300, "1.5E300"),
            (0.0, "0.0"),
            (100.0, "100.0"),
        ] {
            assert_eq!(float(v), java, "{v}");
        }
        let mut s = String::new();
        let f = 1.1f32;
        java_float(&mut s, f64::from(f), format!("{f:e}"));
        assert_eq!(s, "1.1", "Float.toString(1.1f)");
    }

    #[test]
    fn framing_is_byte_zero_and_a_big_endian_id() {
        assert_eq!(framed(&[0, 0, 0, 1, 2, 9]), Some((258, &[9u8][..])));
        assert_eq!(framed(b"{\"a\":1}"), None);
        assert_eq!(framed(&[0, 0, 0]), None);
    }
}
