//! Registry-framed Protobuf, as Confluent's ProtobufConverter writes it: byte 0, the schema's id,
//! the message indexes (which message of the schema's file: zig-zag varints, a single 0 for the
//! first), then the message. The registry holds the schema as `.proto` text, read here by a parser
//! of its own. A message reads as the JSON converter would print the Connect record Confluent's
//! `ProtobufData.toConnectData` makes of it, so it makes the row its JSON twin makes, but for what
//! Protobuf does not carry:
//! - Connect schema names other than Decimal, Date, Time and Timestamp: Debezium's
//!   `io.debezium.time.*` values arrive as the plain numbers they are (Debezium's
//!   `time.precision.mode=connect` keeps them times). `VariableScaleDecimal` is known by its
//!   shape and given back its name.
//! - NULL in a proto3 scalar without `optional`: absent, it reads as its default (0, "", false),
//!   as Confluent reads it. The converter's `optional.for.nullables=true` (or
//!   `wrapper.for.nullables=true`) keeps NULLs; a schema without either is warned about.
//!
//! Wrappers (`google.protobuf.Int32Value`, ...) read as their value, or null when absent. Every
//! Connect field is optional, as Confluent's default settings make it; parameters other than a
//! decimal's scale and precision are left out.
//!
//! Read: proto2 and proto3 files, nested messages and enums, `map<,>`, `repeated` (packed or not),
//! `optional`, `confluent.type.Decimal` with the field's `precision` and `scale` params,
//! `connect.type` int8 and int16, `google.protobuf.Timestamp`, `google.type.Date` and `TimeOfDay`.
//! Refused with the reason: `oneof` (Debezium's envelopes have none), groups, editions, and types
//! from other schemas (the registry's references).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::OnceLock;

use super::json::{base64_into, escape_into, java_float, quote};

/// How deep messages may nest, in a schema and in a message.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
}

impl Scalar {
    fn named(name: &str) -> Option<Scalar> {
        Some(match name {
            "double" => Scalar::Double,
            "float" => Scalar::Float,
            "int32" => Scalar::Int32,
            "int64" => Scalar::Int64,
            "uint32" => Scalar::Uint32,
            "uint64" => Scalar::Uint64,
            "sint32" => Scalar::Sint32,
            "sint64" => Scalar::Sint64,
            "fixed32" => Scalar::Fixed32,
            "fixed64" => Scalar::Fixed64,
            "sfixed32" => Scalar::Sfixed32,
            "sfixed64" => Scalar::Sfixed64,
            "bool" => Scalar::Bool,
            "string" => Scalar::String,
            "bytes" => Scalar::Bytes,
            _ => return None,
        })
    }

    /// The Connect type `ProtobufData.toConnectSchema` gives it.
    fn connect(self) -> &'static str {
        match self {
            Scalar::Int32 | Scalar::Sint32 | Scalar::Sfixed32 => "int32",
            Scalar::Int64
            | Scalar::Uint32
            | Scalar::Uint64
            | Scalar::Sint64
            | Scalar::Fixed32
            | Scalar::Fixed64
            | Scalar::Sfixed64 => "int64",
            Scalar::Float => "float",
            Scalar::Double => "double",
            Scalar::Bool => "boolean",
            Scalar::String => "string",
            Scalar::Bytes => "bytes",
        }
    }

    /// What an absent field reads as.
    fn default_text(self) -> &'static str {
        match self {
            Scalar::Float | Scalar::Double => "0.0",
            Scalar::Bool => "false",
            Scalar::String | Scalar::Bytes => "\"\"",
            _ => "0",
        }
    }

    /// Whether a repeated field of it may come packed.
    fn packable(self) -> bool {
        !matches!(self, Scalar::String | Scalar::Bytes)
    }

    /// The wire type of one value, packed.
    fn wire(self) -> u8 {
        match self {
            Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64 => 1,
            Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32 => 5,
            Scalar::String | Scalar::Bytes => 2,
            _ => 0,
        }
    }
}

/// What a field holds, its type resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unresolved,
    Scalar(Scalar),
    Enum(usize),
    Message(usize),
}

/// Messages that read as one Connect value, not as a struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    None,
    Timestamp,
    Date,
    TimeOfDay,
    Decimal,
    Wrapper(Scalar),
    MapEntry,
}

#[derive(Debug)]
struct Field {
    name: String,
    number: u32,
    /// As written, until resolved into `kind`.
    type_name: String,
    kind: Kind,
    repeated: bool,
    /// proto3 `optional`: absent reads as null, not as the default.
    presence: bool,
    /// `connect.type` int8 or int16, from the field's `confluent.field_meta` params.
    narrow: Option<&'static str>,
    /// A decimal's `precision` and `scale` params.
    precision: Option<String>,
    scale: i64,
}

impl Field {
    fn new(name: &str, number: u32, type_name: &str) -> Field {
        Field {
            name: name.to_string(),
            number,
            type_name: type_name.to_string(),
            kind: Kind::Unresolved,
            repeated: false,
            presence: false,
            narrow: None,
            precision: None,
            scale: 0,
        }
    }
}

#[derive(Debug)]
struct Msg {
    name: String,
    full: String,
    fields: Vec<Field>,
    /// Declared nested messages, in order: what message indexes count.
    nested: Vec<usize>,
    special: Special,
    builtin: bool,
    /// Its Connect schema, as the JSON converter prints it, made when first asked for.
    connect: OnceLock<Result<String, String>>,
}

impl Msg {
    fn new(name: &str, full: String, special: Special, builtin: bool) -> Msg {
        Msg {
            name: name.to_string(),
            full,
            fields: Vec::new(),
            nested: Vec::new(),
            special,
            builtin,
            connect: OnceLock::new(),
        }
    }

    fn field(&self, number: u32) -> Option<usize> {
        self.fields.iter().position(|f| f.number == number)
    }
}

#[derive(Debug)]
struct EnumDef {
    name: String,
    full: String,
    values: Vec<(String, i32)>,
}

/// A `.proto` file from the registry, ready to read its messages with.
#[derive(Debug)]
pub struct ProtoSchema {
    messages: Vec<Msg>,
    enums: Vec<EnumDef>,
    /// The file's top-level messages, in order.
    top: Vec<usize>,
    proto3: bool,
}

/// The messages Confluent's converter imports for Connect's logical types and wrappers.
fn builtins() -> Vec<Msg> {
    let mut out = Vec::new();
    let mut add = |full: &str, special: Special, fields: &[(&str, &str)]| {
        let name = full.rsplit('.').next().unwrap_or(full);
        let mut m = Msg::new(name, full.to_string(), special, true);
        for (i, (name, ty)) in fields.iter().enumerate() {
            m.fields.push(Field::new(name, i as u32 + 1, ty));
        }
        out.push(m);
    };
    add(
        "google.protobuf.Timestamp",
        Special::Timestamp,
        &[("seconds", "int64"), ("nanos", "int32")],
    );
    add(
        "google.type.Date",
        Special::Date,
        &[("year", "int32"), ("month", "int32"), ("day", "int32")],
    );
    add(
        "google.type.TimeOfDay",
        Special::TimeOfDay,
        &[
            ("hours", "int32"),
            ("minutes", "int32"),
            ("seconds", "int32"),
            ("nanos", "int32"),
        ],
    );
    add(
        "confluent.type.Decimal",
        Special::Decimal,
        &[
            ("value", "bytes"),
            ("precision", "uint32"),
            ("scale", "int32"),
        ],
    );
    for (wrapper, scalar) in [
        ("Double", Scalar::Double),
        ("Float", Scalar::Float),
        ("Int64", Scalar::Int64),
        ("UInt64", Scalar::Uint64),
        ("Int32", Scalar::Int32),
        ("UInt32", Scalar::Uint32),
        ("Bool", Scalar::Bool),
        ("String", Scalar::String),
        ("Bytes", Scalar::Bytes),
    ] {
        let ty = format!("{scalar:?}").to_ascii_lowercase();
        add(
            &format!("google.protobuf.{wrapper}Value"),
            Special::Wrapper(scalar),
            &[("value", &ty)],
        );
    }
    out
}

impl ProtoSchema {
    pub fn parse(text: &str) -> Result<ProtoSchema, String> {
        let mut p = Parser {
            toks: tokens(text)?,
            at: 0,
            proto3: false,
            messages: builtins(),
            enums: Vec::new(),
            top: Vec::new(),
        };
        p.file()?;
        let mut schema = ProtoSchema {
            messages: p.messages,
            enums: p.enums,
            top: p.top,
            proto3: p.proto3,
        };
        schema.resolve()?;
        if schema.top.is_empty() {
            return Err("the schema declares no message".to_string());
        }
        Ok(schema)
    }

    /// Every field's type, found as protoc finds it: from the innermost scope out.
    fn resolve(&mut self) -> Result<(), String> {
        let mut names: HashMap<String, Kind> = HashMap::new();
        for (i, m) in self.messages.iter().enumerate() {
            names.insert(m.full.clone(), Kind::Message(i));
        }
        for (i, e) in self.enums.iter().enumerate() {
            names.insert(e.full.clone(), Kind::Enum(i));
        }
        for m in &mut self.messages {
            for f in &mut m.fields {
                f.kind = match Scalar::named(&f.type_name) {
                    Some(s) => Kind::Scalar(s),
                    None => lookup(&names, &m.full, &f.type_name).ok_or_else(|| {
                        format!(
                            "{}.{} is of type {}, which the schema does not define (types of \
                             other schemas, the registry's references, are not read)",
                            m.full, f.name, f.type_name
                        )
                    })?,
                };
            }
        }
        Ok(())
    }

    /// A warning when nothing in a proto3 schema can be NULL.
    pub fn nullability_warning(&self) -> Option<String> {
        let user = self.messages.iter().filter(|m| !m.builtin);
        let mut scalars = 0;
        for f in user.flat_map(|m| &m.fields) {
            let wrapped = matches!(f.kind, Kind::Message(m) if matches!(self.messages[m].special, Special::Wrapper(_)));
            if f.presence || wrapped {
                return None;
            }
            if matches!(f.kind, Kind::Scalar(_) | Kind::Enum(_)) && !f.repeated {
                scalars += 1;
            }
        }
        (self.proto3 && scalars > 0).then(|| {
            "no field of this proto3 schema is `optional` or a wrapper, so a NULL column reads \
             as 0, \"\" or false; set the converter's optional.for.nullables=true"
                .to_string()
        })
    }

    /// The message the indexes at the head of `datum` name, and its bytes.
    fn select<'d>(&self, datum: &'d [u8]) -> Result<(usize, &'d [u8]), String> {
        let mut w = Wire::new(datum);
        let count = unzigzag(w.varint()?);
        let path = if count == 0 {
            vec![0]
        } else if (1..=MAX_DEPTH as i64).contains(&count) {
            let mut path = Vec::with_capacity(count as usize);
            for _ in 0..count {
                path.push(unzigzag(w.varint()?));
            }
            path
        } else {
            return Err(format!("{count} message indexes"));
        };
        let missing = || format!("the message indexes {path:?} name no message of the schema");
        let at =
            |list: &[usize], i: i64| usize::try_from(i).ok().and_then(|i| list.get(i).copied());
        let mut m = at(&self.top, path[0]).ok_or_else(missing)?;
        for &i in &path[1..] {
            m = at(&self.messages[m].nested, i).ok_or_else(missing)?;
        }
        Ok((m, &datum[w.at..]))
    }

    /// The JSON converter's text of one value: `{"schema": ..., "payload": ...}`.
    pub fn to_json(&self, datum: &[u8]) -> Result<String, String> {
        let (payload, connect) = self.payload(datum)?;
        Ok(format!("{{\"schema\":{connect},\"payload\":{payload}}}"))
    }

    /// The `payload` of that text, and its Connect schema.
    pub fn payload(&self, datum: &[u8]) -> Result<(String, &str), String> {
        let (m, bytes) = self.select(datum)?;
        let connect = self.messages[m]
            .connect
            .get_or_init(|| self.struct_connect(m, false, &mut Vec::new()))
            .as_deref()
            .map_err(Clone::clone)?;
        let mut out = Out {
            schema: self,
            text: String::with_capacity(bytes.len() * 2 + 64),
            limit: 64 * bytes.len() + 64 * 1024,
        };
        out.message(m, &[bytes], 0)?;
        Ok((out.text, connect))
    }

    /// A message's Connect struct, as the JSON converter prints it.
    /// `within`: the messages being printed around it, none of which it may be.
    fn struct_connect(
        &self,
        m: usize,
        optional: bool,
        within: &mut Vec<usize>,
    ) -> Result<String, String> {
        let msg = &self.messages[m];
        if within.contains(&m) || within.len() > MAX_DEPTH {
            return Err(format!(
                "{} contains itself, which a Connect schema cannot",
                msg.full
            ));
        }
        within.push(m);
        let mut s = String::from("{\"type\":\"struct\",\"fields\":[");
        for (i, f) in msg.fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&self.field_connect(f, false, within)?);
        }
        within.pop();
        let scale_and_value = msg.fields.len() == 2
            && msg.fields[0].name == "scale"
            && msg.fields[0].kind == Kind::Scalar(Scalar::Int32)
            && msg.fields[1].name == "value"
            && msg.fields[1].kind == Kind::Scalar(Scalar::Bytes);
        let name = if msg.name == "VariableScaleDecimal" && scale_and_value {
            "io.debezium.data.VariableScaleDecimal"
        } else {
            &msg.name
        };
        let _ = write!(s, "],\"optional\":{optional},\"name\":{}}}", quote(name));
        Ok(s)
    }

    /// A field's Connect schema (`element`: of one item of a repeated field, without its name).
    fn field_connect(
        &self,
        f: &Field,
        element: bool,
        within: &mut Vec<usize>,
    ) -> Result<String, String> {
        let named = |s: String| {
            if element {
                s
            } else {
                format!("{},\"field\":{}}}", &s[..s.len() - 1], quote(&f.name))
            }
        };
        if f.repeated && !element {
            if let Kind::Message(m) = f.kind {
                let entry = &self.messages[m];
                if entry.special == Special::MapEntry {
                    let (k, v) = (&entry.fields[0], &entry.fields[1]);
                    return Ok(named(format!(
                        "{{\"type\":\"map\",\"keys\":{},\"values\":{},\"optional\":true}}",
                        self.field_connect(k, true, within)?,
                        self.field_connect(v, true, within)?
                    )));
                }
            }
            return Ok(named(format!(
                "{{\"type\":\"array\",\"items\":{},\"optional\":true}}",
                self.field_connect(f, true, within)?
            )));
        }
        let logical = |ty: &str, name: &str, parameters: String| {
            format!(
                "{{\"type\":\"{ty}\",\"optional\":true,\"name\":\"org.apache.kafka.connect.data.{name}\",\"version\":1{parameters}}}"
            )
        };
        let text = match f.kind {
            Kind::Unresolved => return Err(format!("{} has no type", f.name)),
            Kind::Scalar(s) => format!(
                "{{\"type\":\"{}\",\"optional\":true}}",
                f.narrow
                    .filter(|_| s.connect() == "int32")
                    .unwrap_or(s.connect())
            ),
            Kind::Enum(e) => format!(
                "{{\"type\":\"string\",\"optional\":true,\"name\":{}}}",
                quote(&self.enums[e].name)
            ),
            Kind::Message(m) => match self.messages[m].special {
                Special::None | Special::MapEntry => self.struct_connect(m, true, within)?,
                Special::Timestamp => logical("int64", "Timestamp", String::new()),
                Special::Date => logical("int32", "Date", String::new()),
                Special::TimeOfDay => logical("int32", "Time", String::new()),
                Special::Decimal => {
                    let mut p = format!(",\"parameters\":{{\"scale\":\"{}\"", f.scale);
                    if let Some(precision) = &f.precision {
                        let _ = write!(p, ",\"connect.decimal.precision\":{}", quote(precision));
                    }
                    p.push('}');
                    logical("bytes", "Decimal", p)
                }
                Special::Wrapper(s) => {
                    format!("{{\"type\":\"{}\",\"optional\":true}}", s.connect())
                }
            },
        };
        Ok(named(text))
    }
}

/// `name` as seen from inside the message `scope`: from the innermost scope out.
fn lookup(names: &HashMap<String, Kind>, scope: &str, name: &str) -> Option<Kind> {
    if let Some(absolute) = name.strip_prefix('.') {
        return names.get(absolute).copied();
    }
    let mut scope = scope;
    loop {
        let candidate = if scope.is_empty() {
            name.to_string()
        } else {
            format!("{scope}.{name}")
        };
        if let Some(kind) = names.get(&candidate) {
            return Some(*kind);
        }
        if scope.is_empty() {
            return None;
        }
        scope = scope.rsplit_once('.').map_or("", |(outer, _)| outer);
    }
}

fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_string()
    } else {
        format!("{scope}.{name}")
    }
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

// ---- the .proto text ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// An identifier, a keyword or a number.
    Word(String),
    Str(String),
    Sym(char),
}

fn tokens(text: &str) -> Result<Vec<Tok>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..]
                .find("*/")
                .ok_or("a comment that does not end")?;
            i += end + 4;
        } else if c.is_ascii_alphanumeric()
            || c == b'_'
            || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let number = c.is_ascii_digit() || c == b'.';
            let start = i;
            i += 1;
            while i < b.len() {
                let d = b[i];
                let exponent_sign =
                    (d == b'+' || d == b'-') && number && matches!(b[i - 1], b'e' | b'E');
                if d.is_ascii_alphanumeric() || d == b'_' || (number && d == b'.') || exponent_sign
                {
                    i += 1;
                } else {
                    break;
                }
            }
            out.push(Tok::Word(text[start..i].to_string()));
        } else if c == b'"' || c == b'\'' {
            let mut s = Vec::new();
            i += 1;
            loop {
                let d = *b.get(i).ok_or("a string that does not end")?;
                i += 1;
                match d {
                    _ if d == c => break,
                    b'\\' => {
                        let e = *b.get(i).ok_or("a string that does not end")?;
                        i += 1;
                        s.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'0'..=b'7' => {
                                let mut v = u32::from(e - b'0');
                                for _ in 0..2 {
                                    match b.get(i) {
                                        Some(o @ b'0'..=b'7') => {
                                            v = v * 8 + u32::from(o - b'0');
                                            i += 1;
                                        }
                                        _ => break,
                                    }
                                }
                                v as u8
                            }
                            b'x' | b'X' => {
                                let hex = text.get(i..i + 2).unwrap_or("");
                                i += 2;
                                u8::from_str_radix(hex, 16)
                                    .map_err(|_| "a bad \\x escape in a string")?
                            }
                            other => other,
                        });
                    }
                    b'\n' => return Err("a string that does not end on its line".to_string()),
                    _ => s.push(d),
                }
            }
            out.push(Tok::Str(String::from_utf8_lossy(&s).into_owned()));
        } else if b"{}[]()<>=;,:.-+/".contains(&c) {
            out.push(Tok::Sym(c as char));
            i += 1;
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return Err(format!("an unexpected {ch:?} in the schema"));
        }
    }
    Ok(out)
}

/// A text-format value, as an option's aggregate value holds them.
enum Text {
    Scalar(String),
    Msg(Vec<(String, Text)>),
    List(Vec<Text>),
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    proto3: bool,
    messages: Vec<Msg>,
    enums: Vec<EnumDef>,
    top: Vec<usize>,
}

fn integer(word: &str) -> Option<i64> {
    if let Some(hex) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16).ok()
    } else if word.len() > 1 && word.starts_with('0') {
        i64::from_str_radix(&word[1..], 8).ok()
    } else {
        word.parse().ok()
    }
}

impl Parser {
    fn next(&mut self) -> Result<Tok, String> {
        let tok = self
            .toks
            .get(self.at)
            .cloned()
            .ok_or("the schema ends early")?;
        self.at += 1;
        Ok(tok)
    }

    fn peek_word(&self) -> Option<&str> {
        match self.toks.get(self.at) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn eat(&mut self, c: char) -> bool {
        let here = self.toks.get(self.at) == Some(&Tok::Sym(c));
        self.at += usize::from(here);
        here
    }

    fn sym(&mut self, c: char) -> Result<(), String> {
        match self.next()? {
            Tok::Sym(s) if s == c => Ok(()),
            other => Err(format!("{c:?} expected, {} found", shown(&other))),
        }
    }

    fn word(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            other => Err(format!("a name expected, {} found", shown(&other))),
        }
    }

    /// `a.b.c`, or `.a.b.c` for a fully qualified name.
    fn dotted(&mut self) -> Result<String, String> {
        let mut name = String::new();
        if self.eat('.') {
            name.push('.');
        }
        name.push_str(&self.word()?);
        while self.eat('.') {
            name.push('.');
            name.push_str(&self.word()?);
        }
        Ok(name)
    }

    fn string(&mut self) -> Result<String, String> {
        let mut s = match self.next()? {
            Tok::Str(s) => s,
            other => return Err(format!("a string expected, {} found", shown(&other))),
        };
        while let Some(Tok::Str(more)) = self.toks.get(self.at) {
            s.push_str(more);
            self.at += 1;
        }
        Ok(s)
    }

    fn number(&mut self) -> Result<i64, String> {
        let negative = self.eat('-');
        let word = self.word()?;
        let n = integer(&word).ok_or_else(|| format!("a number expected, {word:?} found"))?;
        Ok(if negative { -n } else { n })
    }

    /// A constant: a number, a name or a string.
    fn constant(&mut self) -> Result<String, String> {
        if matches!(self.toks.get(self.at), Some(Tok::Str(_))) {
            return self.string();
        }
        let sign = if self.eat('-') {
            "-"
        } else {
            self.eat('+');
            ""
        };
        Ok(format!("{sign}{}", self.word()?))
    }

    /// Past the end of a statement this version does not need: to its `;`, or past its block.
    fn skip_statement(&mut self) -> Result<(), String> {
        let mut depth = 0usize;
        loop {
            match self.next()? {
                Tok::Sym('{' | '[' | '(') => depth += 1,
                Tok::Sym(c @ ('}' | ']' | ')')) => {
                    depth = depth.checked_sub(1).ok_or("unbalanced brackets")?;
                    if depth == 0 && c == '}' {
                        self.eat(';');
                        return Ok(());
                    }
                }
                Tok::Sym(';') if depth == 0 => return Ok(()),
                _ => {}
            }
        }
    }

    fn file(&mut self) -> Result<(), String> {
        let mut package = String::new();
        while self.at < self.toks.len() {
            if self.eat(';') {
                continue;
            }
            let word = self.word()?;
            match word.as_str() {
                "syntax" => {
                    self.sym('=')?;
                    let syntax = self.string()?;
                    self.sym(';')?;
                    self.proto3 = match syntax.as_str() {
                        "proto3" => true,
                        "proto2" => false,
                        other => return Err(format!("syntax {other:?}")),
                    };
                }
                "edition" => return Err("Protobuf editions are not read".to_string()),
                "package" => {
                    package = self.dotted()?;
                    self.sym(';')?;
                }
                "import" => {
                    if matches!(self.peek_word(), Some("public" | "weak")) {
                        self.at += 1;
                    }
                    self.string()?;
                    self.sym(';')?;
                }
                "message" => {
                    let m = self.message(&package, 0)?;
                    self.top.push(m);
                }
                "enum" => self.enumeration(&package)?,
                "option" | "service" | "extend" => self.skip_statement()?,
                other => return Err(format!("{other:?} at the top of the schema")),
            }
        }
        Ok(())
    }

    fn message(&mut self, scope: &str, depth: usize) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("messages nest deeper than {MAX_DEPTH}"));
        }
        let name = self.word()?;
        let full = join(scope, &name);
        self.sym('{')?;
        let id = self.messages.len();
        self.messages
            .push(Msg::new(&name, full.clone(), Special::None, false));
        loop {
            match self.next()? {
                Tok::Sym('}') => break,
                Tok::Sym(';') => {}
                Tok::Word(w) => match w.as_str() {
                    "message" => {
                        let nested = self.message(&full, depth + 1)?;
                        self.messages[id].nested.push(nested);
                    }
                    "enum" => self.enumeration(&full)?,
                    "oneof" => {
                        return Err(format!(
                            "{full} has a oneof, which this version does not read \
                             (Debezium's envelopes have none)"
                        ))
                    }
                    "option" | "reserved" | "extensions" | "extend" => self.skip_statement()?,
                    "map" if self.toks.get(self.at) == Some(&Tok::Sym('<')) => {
                        let field = self.map_field(&full)?;
                        self.messages[id].fields.push(field);
                    }
                    _ => {
                        self.at -= 1;
                        let field = self.field()?;
                        self.messages[id].fields.push(field);
                    }
                },
                Tok::Sym('.') => {
                    // A field whose type is fully qualified.
                    self.at -= 1;
                    let field = self.field()?;
                    self.messages[id].fields.push(field);
                }
                other => return Err(format!("{} in message {full}", shown(&other))),
            }
        }
        Ok(id)
    }

    /// `[label] type name = number [options];`
    fn field(&mut self) -> Result<Field, String> {
        let label = match self.peek_word() {
            Some(l @ ("repeated" | "optional" | "required")) => {
                let l = l.to_string();
                self.at += 1;
                Some(l)
            }
            _ => None,
        };
        let type_name = self.dotted()?;
        if type_name == "group" {
            return Err("groups are not read".to_string());
        }
        let name = self.word()?;
        let mut field = self.numbered(&name, &type_name)?;
        field.repeated = label.as_deref() == Some("repeated");
        field.presence = self.proto3 && label.as_deref() == Some("optional");
        Ok(field)
    }

    /// `= number [options];` of a field named `name`.
    fn numbered(&mut self, name: &str, type_name: &str) -> Result<Field, String> {
        self.sym('=')?;
        let number = self.number()?;
        let number = u32::try_from(number)
            .ok()
            .filter(|n| (1..=536_870_911).contains(n))
            .ok_or_else(|| format!("{name} has the field number {number}"))?;
        let mut field = Field::new(name, number, type_name);
        if self.eat('[') {
            for (key, value) in self.options()? {
                match key.as_str() {
                    "connect.type" => {
                        field.narrow = match value.as_str() {
                            "int8" => Some("int8"),
                            "int16" => Some("int16"),
                            _ => None,
                        }
                    }
                    "precision" => field.precision = Some(value),
                    "scale" => {
                        field.scale = value
                            .parse()
                            .map_err(|_| format!("{name} has the scale {value:?}"))?
                    }
                    _ => {}
                }
            }
        }
        self.sym(';')?;
        Ok(field)
    }

    /// `map<K, V> name = number [options];`, as protoc reads it: a repeated entry message.
    fn map_field(&mut self, scope: &str) -> Result<Field, String> {
        self.sym('<')?;
        let key = self.word()?;
        self.sym(',')?;
        let value = self.dotted()?;
        self.sym('>')?;
        let name = self.word()?;
        let mut entry_name: String = name
            .split('_')
            .map(|part| {
                let mut c = part.chars();
                c.next()
                    .map(|first| first.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect();
        entry_name.push_str("Entry");
        let full = join(scope, &entry_name);
        let mut entry = Msg::new(&entry_name, full.clone(), Special::MapEntry, false);
        entry.fields.push(Field::new("key", 1, &key));
        entry.fields.push(Field::new("value", 2, &value));
        self.messages.push(entry);
        let mut field = self.numbered(&name, &format!(".{full}"))?;
        field.repeated = true;
        Ok(field)
    }

    fn enumeration(&mut self, scope: &str) -> Result<(), String> {
        let name = self.word()?;
        self.sym('{')?;
        let mut values = Vec::new();
        loop {
            match self.next()? {
                Tok::Sym('}') => break,
                Tok::Sym(';') => {}
                Tok::Word(w) if w == "option" || w == "reserved" => self.skip_statement()?,
                Tok::Word(w) => {
                    self.sym('=')?;
                    let n = self.number()?;
                    if self.eat('[') {
                        self.options()?;
                    }
                    self.sym(';')?;
                    values.push((w, n as i32));
                }
                other => return Err(format!("{} in enum {name}", shown(&other))),
            }
        }
        self.enums.push(EnumDef {
            full: join(scope, &name),
            name,
            values,
        });
        Ok(())
    }

    /// A field's `[name = value, ...]`, after the `[`: the `params` of its
    /// `(confluent.field_meta)`.
    fn options(&mut self) -> Result<Vec<(String, String)>, String> {
        let mut params = Vec::new();
        loop {
            let name = if self.eat('(') {
                let n = self.dotted()?;
                self.sym(')')?;
                let mut n = format!("({})", n.trim_start_matches('.'));
                while self.eat('.') {
                    n.push('.');
                    n.push_str(&self.word()?);
                }
                n
            } else {
                self.dotted()?
            };
            self.sym('=')?;
            if self.eat('{') {
                let entries = self.aggregate(0)?;
                if name == "(confluent.field_meta)" {
                    meta_params(&entries, &mut params);
                }
            } else {
                self.constant()?;
            }
            if !self.eat(',') {
                self.sym(']')?;
                return Ok(params);
            }
        }
    }

    /// A text-format message, after its `{`.
    fn aggregate(&mut self, depth: usize) -> Result<Vec<(String, Text)>, String> {
        if depth > MAX_DEPTH {
            return Err("an option nests too deep".to_string());
        }
        let mut entries = Vec::new();
        loop {
            if self.eat('}') {
                return Ok(entries);
            }
            if self.eat(',') || self.eat(';') {
                continue;
            }
            let key = if self.eat('[') {
                let k = self.dotted()?;
                self.sym(']')?;
                k
            } else {
                self.word()?
            };
            self.eat(':');
            let value = self.text_value(depth)?;
            entries.push((key, value));
        }
    }

    fn text_value(&mut self, depth: usize) -> Result<Text, String> {
        if self.eat('{') {
            return Ok(Text::Msg(self.aggregate(depth + 1)?));
        }
        if self.eat('[') {
            let mut items = Vec::new();
            loop {
                if self.eat(']') {
                    return Ok(Text::List(items));
                }
                if !self.eat(',') {
                    items.push(self.text_value(depth + 1)?);
                }
            }
        }
        self.constant().map(Text::Scalar)
    }
}

/// The `params: [{key: ..., value: ...}]` of a `confluent.field_meta`.
fn meta_params(entries: &[(String, Text)], out: &mut Vec<(String, String)>) {
    for (key, value) in entries {
        if key != "params" {
            continue;
        }
        let items: Vec<&Text> = match value {
            Text::List(list) => list.iter().collect(),
            one => vec![one],
        };
        for item in items {
            if let Text::Msg(pair) = item {
                let get = |name: &str| {
                    pair.iter().find_map(|(k, v)| match v {
                        Text::Scalar(s) if k == name => Some(s.clone()),
                        _ => None,
                    })
                };
                if let (Some(k), Some(v)) = (get("key"), get("value")) {
                    out.push((k, v));
                }
            }
        }
    }
}

fn shown(tok: &Tok) -> String {
    match tok {
        Tok::Word(w) => format!("{w:?}"),
        Tok::Str(s) => format!("the string {s:?}"),
        Tok::Sym(c) => format!("{c:?}"),
    }
}

// ---- the wire format ----

#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    I64(u64),
    Len(&'a [u8]),
    I32(u32),
}

impl Raw<'_> {
    fn wire(&self) -> u8 {
        match self {
            Raw::Varint(_) => 0,
            Raw::I64(_) => 1,
            Raw::Len(_) => 2,
            Raw::I32(_) => 5,
        }
    }
}

struct Wire<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Wire<'a> {
    fn new(b: &'a [u8]) -> Self {
        Wire { b, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.b.len())
            .ok_or("the message ends early")?;
        let bytes = &self.b[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self.b.get(self.at).ok_or("the message ends early")?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint longer than ten bytes".to_string())
    }

    fn raw(&mut self, wire: u8) -> Result<Raw<'a>, String> {
        Ok(match wire {
            0 => Raw::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Raw::I64(u64::from_le_bytes(b.try_into().map_err(|_| "eight bytes")?))
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "a length past memory")?;
                Raw::Len(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Raw::I32(u32::from_le_bytes(b.try_into().map_err(|_| "four bytes")?))
            }
            3 | 4 => return Err("a group, which is not read".to_string()),
            w => return Err(format!("the wire type {w}")),
        })
    }
}

/// The fields of one message, as (field index, value) in the order they came, from `parts` read
/// one after the other (Protobuf merges a message written in parts).
fn fields<'a>(m: &Msg, parts: &[&'a [u8]]) -> Result<Vec<(usize, Raw<'a>)>, String> {
    let mut seen = Vec::new();
    for part in parts {
        let mut w = Wire::new(part);
        while !w.done() {
            let key = w.varint()?;
            let number = u32::try_from(key >> 3).map_err(|_| "a field number past 2^32")?;
            let raw = w.raw((key & 7) as u8)?;
            if number == 0 {
                return Err("the field number 0".to_string());
            }
            if let Some(i) = m.field(number) {
                seen.push((i, raw));
            }
        }
    }
    Ok(seen)
}

/// The JSON converter's text of a message being printed.
struct Out<'s> {
    schema: &'s ProtoSchema,
    text: String,
    limit: usize,
}

impl Out<'_> {
    fn message(&mut self, m: usize, parts: &[&[u8]], depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("messages nest deeper than {MAX_DEPTH}"));
        }
        if self.text.len() > self.limit {
            return Err("the message's text grows past any plausible size".to_string());
        }
        let schema = self.schema;
        let msg = &schema.messages[m];
        let seen = fields(msg, parts)?;
        self.text.push('{');
        for (i, f) in msg.fields.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            escape_into(&mut self.text, &f.name);
            self.text.push(':');
            self.field(f, &seen, i, depth)?;
        }
        self.text.push('}');
        Ok(())
    }

    /// The field `i` of a message, `f`, from the message's fields as they came (`seen`).
    fn field<'a>(
        &mut self,
        f: &Field,
        seen: &[(usize, Raw<'a>)],
        i: usize,
        depth: usize,
    ) -> Result<(), String> {
        let schema = self.schema;
        let mut raws = seen.iter().filter(|(j, _)| *j == i).map(|(_, r)| *r);
        if f.repeated {
            if let Kind::Message(m) = f.kind {
                if schema.messages[m].special == Special::MapEntry {
                    return self.map(f, m, raws, depth);
                }
            }
            self.text.push('[');
            let mut first = true;
            for raw in raws {
                match (f.kind, raw) {
                    (Kind::Scalar(s), Raw::Len(packed)) if s.packable() => {
                        self.packed(f, s.wire(), packed, &mut first)?;
                    }
                    (Kind::Enum(_), Raw::Len(packed)) => self.packed(f, 0, packed, &mut first)?,
                    _ => {
                        if !first {
                            self.text.push(',');
                        }
                        first = false;
                        self.one(f, &[raw], depth)?;
                    }
                }
            }
            self.text.push(']');
            return Ok(());
        }
        let raws: Vec<Raw<'a>> = match f.kind {
            // A message written in parts is their merge; of anything else, the last one counts.
            Kind::Message(_) => raws.collect(),
            _ => raws.next_back().into_iter().collect(),
        };
        if raws.is_empty() {
            let absent = match f.kind {
                _ if f.presence => "null",
                Kind::Scalar(s) => s.default_text(),
                Kind::Enum(e) => {
                    let first = schema.enums[e].values.first();
                    match first {
                        Some((name, _)) => {
                            escape_into(&mut self.text, name);
                            return Ok(());
                        }
                        None => "null",
                    }
                }
                Kind::Message(_) | Kind::Unresolved => "null",
            };
            self.text.push_str(absent);
            return Ok(());
        }
        self.one(f, &raws, depth)
    }

    /// The values of a packed repeated field.
    fn packed(
        &mut self,
        f: &Field,
        wire: u8,
        bytes: &[u8],
        first: &mut bool,
    ) -> Result<(), String> {
        let mut w = Wire::new(bytes);
        while !w.done() {
            let raw = w.raw(wire)?;
            if !*first {
                self.text.push(',');
            }
            *first = false;
            self.one(f, &[raw], 0)?;
        }
        Ok(())
    }

    /// One value of `f`'s type: a message from all of `raws`, anything else from the one there is.
    fn one(&mut self, f: &Field, raws: &[Raw<'_>], depth: usize) -> Result<(), String> {
        let schema = self.schema;
        let Some(&last) = raws.last() else {
            return Ok(());
        };
        match f.kind {
            Kind::Unresolved => Err(format!("{} has no type", f.name)),
            Kind::Scalar(s) => self.scalar(f, s, last),
            Kind::Enum(e) => {
                let Raw::Varint(v) = last else {
                    return Err(wrong(f, last, 0));
                };
                let n = v as i32;
                let e = &schema.enums[e];
                match e.values.iter().find(|(_, number)| *number == n) {
                    Some((name, _)) => escape_into(&mut self.text, name),
                    None => {
                        // As protobuf-java names a number its enum does not have.
                        let _ = write!(self.text, "\"UNKNOWN_ENUM_VALUE_{}_{n}\"", e.name);
                    }
                }
                Ok(())
            }
            Kind::Message(m) => {
                let mut parts = Vec::with_capacity(raws.len());
                for raw in raws {
                    match raw {
                        Raw::Len(b) => parts.push(*b),
                        other => return Err(wrong(f, *other, 2)),
                    }
                }
                self.special(f, m, &parts, depth)
            }
        }
    }

    /// A message's value: a struct, or the one Connect value of a logical type or a wrapper.
    fn special(
        &mut self,
        f: &Field,
        m: usize,
        parts: &[&[u8]],
        depth: usize,
    ) -> Result<(), String> {
        let msg = &self.schema.messages[m];
        if matches!(msg.special, Special::None | Special::MapEntry) {
            return self.message(m, parts, depth + 1);
        }
        let seen = fields(msg, parts)?;
        let last = |i: usize| seen.iter().rev().find(|(j, _)| *j == i).map(|(_, r)| *r);
        let int = |i: usize| match last(i) {
            Some(Raw::Varint(v)) => Ok(v as i64),
            None => Ok(0),
            Some(other) => Err(wrong(&msg.fields[i], other, 0)),
        };
        match msg.special {
            Special::Timestamp => {
                // Timestamps.toMillis: seconds in milliseconds, plus whole milliseconds of nanos.
                let nanos = i64::from(int(1)? as i32);
                let millis = int(0)?
                    .checked_mul(1000)
                    .and_then(|ms| ms.checked_add(nanos / 1_000_000))
                    .ok_or_else(|| format!("{}: a timestamp past Java's range", f.name))?;
                let _ = write!(self.text, "{millis}");
            }
            Special::Date => {
                let (y, m, d) = (int(0)? as i32, int(1)? as i32, int(2)? as i32);
                if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
                    return Err(format!("{}: the date {y}-{m}-{d}", f.name));
                }
                let _ = write!(self.text, "{}", days_from_civil(y, m, d));
            }
            Special::TimeOfDay => {
                let (h, m, s, n) = (int(0)?, int(1)?, int(2)?, int(3)? as i32);
                if !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..60).contains(&s) || n < 0
                {
                    return Err(format!("{}: the time {h}:{m}:{s}.{n}", f.name));
                }
                let _ = write!(
                    self.text,
                    "{}",
                    (h * 3600 + m * 60 + s) * 1000 + i64::from(n) / 1_000_000
                );
            }
            Special::Decimal => {
                let scale = int(2)? as i32;
                if i64::from(scale) != f.scale {
                    // Connect's Decimal.fromLogical refuses it too.
                    return Err(format!(
                        "{}: a decimal of scale {scale} where the schema says {}",
                        f.name, f.scale
                    ));
                }
                match last(0) {
                    Some(Raw::Len(b)) if !b.is_empty() => base64_into(&mut self.text, b),
                    None | Some(Raw::Len(_)) => base64_into(&mut self.text, &[0]),
                    Some(other) => return Err(wrong(&msg.fields[0], other, 2)),
                }
            }
            Special::Wrapper(s) => match last(0) {
                Some(raw) => self.scalar(&msg.fields[0], s, raw)?,
                None => self.text.push_str(s.default_text()),
            },
            Special::None | Special::MapEntry => {}
        }
        Ok(())
    }

    fn scalar(&mut self, f: &Field, s: Scalar, raw: Raw<'_>) -> Result<(), String> {
        let t = &mut self.text;
        let narrow = |v: i32| match f.narrow {
            Some("int8") => i32::from(v as i8),
            Some("int16") => i32::from(v as i16),
            _ => v,
        };
        match (s, raw) {
            (Scalar::Int32, Raw::Varint(v)) => write!(t, "{}", narrow(v as i32)),
            (Scalar::Sint32, Raw::Varint(v)) => {
                let v = v as u32;
                write!(t, "{}", narrow(((v >> 1) as i32) ^ -((v & 1) as i32)))
            }
            (Scalar::Uint32, Raw::Varint(v)) => write!(t, "{}", v as u32),
            // Connect's int64 is Java's long: a uint64 past it wraps, as there.
            (Scalar::Int64 | Scalar::Uint64, Raw::Varint(v)) => write!(t, "{}", v as i64),
            (Scalar::Sint64, Raw::Varint(v)) => write!(t, "{}", unzigzag(v)),
            (Scalar::Bool, Raw::Varint(v)) => write!(t, "{}", v != 0),
            (Scalar::Fixed32, Raw::I32(v)) => write!(t, "{v}"),
            (Scalar::Sfixed32, Raw::I32(v)) => write!(t, "{}", narrow(v as i32)),
            (Scalar::Fixed64 | Scalar::Sfixed64, Raw::I64(v)) => write!(t, "{}", v as i64),
            (Scalar::Float, Raw::I32(v)) => {
                let v = f32::from_bits(v);
                java_float(t, f64::from(v), format!("{v:e}"));
                Ok(())
            }
            (Scalar::Double, Raw::I64(v)) => {
                let v = f64::from_bits(v);
                java_float(t, v, format!("{v:e}"));
                Ok(())
            }
            (Scalar::String, Raw::Len(b)) => {
                let s =
                    std::str::from_utf8(b).map_err(|e| format!("{}: not UTF-8: {e}", f.name))?;
                escape_into(t, s);
                Ok(())
            }
            (Scalar::Bytes, Raw::Len(b)) => {
                base64_into(t, b);
                Ok(())
            }
            (s, raw) => return Err(wrong(f, raw, s.wire())),
        }
        .map_err(|e| e.to_string())
    }

    /// A map field: an object when its keys are strings, else `[[key, value], ...]`, as the JSON
    /// converter prints Connect maps.
    fn map<'a>(
        &mut self,
        f: &Field,
        entry: usize,
        raws: impl Iterator<Item = Raw<'a>>,
        depth: usize,
    ) -> Result<(), String> {
        let schema = self.schema;
        let e = &schema.messages[entry];
        let (k, v) = (&e.fields[0], &e.fields[1]);
        let string_keys = k.kind == Kind::Scalar(Scalar::String);
        self.text.push(if string_keys { '{' } else { '[' });
        for (i, raw) in raws.enumerate() {
            let Raw::Len(bytes) = raw else {
                return Err(wrong(f, raw, 2));
            };
            if i > 0 {
                self.text.push(',');
            }
            let seen = fields(e, &[bytes])?;
            if !string_keys {
                self.text.push('[');
            }
            self.field(k, &seen, 0, depth + 1)?;
            self.text.push(if string_keys { ':' } else { ',' });
            self.field(v, &seen, 1, depth + 1)?;
            if !string_keys {
                self.text.push(']');
            }
        }
        self.text.push(if string_keys { '}' } else { ']' });
        Ok(())
    }
}

fn wrong(f: &Field, raw: Raw<'_>, expected: u8) -> String {
    format!(
        "{}: the wire type {} where its type is written with {expected}",
        f.name,
        raw.wire()
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i32, m: i32, d: i32) -> i64 {
    let y = i64::from(if m <= 2 { y - 1 } else { y });
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_from_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }

    #[test]
    fn types_resolve_from_the_innermost_scope_and_options_give_connect_params() {
        let s = ProtoSchema::parse(
            r#"syntax = "proto3";
            package a.b;
            import "confluent/meta.proto";
            import "confluent/type/decimal.proto";
            /* a block comment */
            message Envelope {
              Value before = 1; // a line comment
              .a.b.Envelope.Value after = 2;
              message Value {
                int32 small = 1 [(confluent.field_meta) = { params: [ { key: "connect.type", value: "int16" } ] }];
                confluent.type.Decimal price = 2 [(confluent.field_meta) = {
                  params: [ { key: "precision", value: "10" }, { key: "scale", value: "2" } ]
                }];
                optional string note = 3;
                Kind kind = 4;
                map<string, int64> counts = 5;
                repeated sint32 deltas = 6 [packed = true];
              }
              enum Kind { NONE = 0; SOME = 1; }
            }"#,
        )
        .unwrap();
        let connect: serde_json::Value =
            serde_json::from_str(&s.struct_connect(s.top[0], false, &mut Vec::new()).unwrap())
                .unwrap();
        let value = &connect["fields"][0];
        assert_eq!(value["name"], "Value");
        assert_eq!(value["fields"][0]["type"], "int16");
        assert_eq!(
            value["fields"][1]["name"],
            "org.apache.kafka.connect.data.Decimal"
        );
        assert_eq!(value["fields"][1]["parameters"]["scale"], "2");
        assert_eq!(
            value["fields"][1]["parameters"]["connect.decimal.precision"],
            "10"
        );
        assert_eq!(value["fields"][4]["type"], "map");
        assert_eq!(value["fields"][5]["items"]["type"], "int32");
        assert_eq!(connect["fields"][1]["name"], "Value");
        assert!(s.nullability_warning().is_none(), "`note` is optional");
    }

    #[test]
    fn a_message_that_contains_itself_is_refused_not_expanded_forever() {
        let s = ProtoSchema::parse(
            "syntax = \"proto3\"; message T { T a = 1; T b = 2; T c = 3; int32 n = 4; }",
        )
        .unwrap();
        let e = s.to_json(&[0]).unwrap_err();
        assert!(e.contains("contains itself"), "{e}");
    }

    #[test]
    fn what_it_does_not_read_is_named() {
        for (text, says) in [
            (
                "syntax = \"proto3\"; message M { oneof o { int32 a = 1; } }",
                "oneof",
            ),
            (
                "syntax = \"proto3\"; message M { other.Type t = 1; }",
                "other.Type",
            ),
            ("edition = \"2023\";", "editions"),
            (
                "syntax = \"proto3\"; message M { int32 a = 0; }",
                "field number 0",
            ),
            ("syntax = \"proto3\";", "no message"),
            (
                "syntax = \"proto3\"; message M { int32 a = 1 }",
                "';' expected",
            ),
        ] {
            let e = ProtoSchema::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
