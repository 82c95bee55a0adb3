//! The schemas a batch's registry-framed messages name, from the registry, kept by id in a
//! bounded cache. An id the registry does not know makes its messages rejections
//! (`schema_not_found`, replayable once it is registered); a registry that does not answer makes
//! the batch wait, retried with backoff, readiness red, and nothing rejected.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::avro::{framed, AvroSchema};
use super::json::Span;
use super::jsonschema::JsonSchema;
use super::protobuf::ProtoSchema;
use crate::events::Stats;
use crate::registry::{Answer, Outage, Registry};
use crate::types::{Message, RejectKind};

/// Why a schema id's messages are rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RejectKind,
    pub reason: String,
}

/// A registry's schema, ready to read its messages with.
#[derive(Debug)]
pub enum Registered {
    Avro(AvroSchema),
    Json(JsonSchema),
    Protobuf(ProtoSchema),
}

impl Registered {
    /// The JSON converter's text of a message's bytes after the framing.
    pub fn to_json(&self, datum: &[u8]) -> Result<String, String> {
        match self {
            Registered::Avro(s) => s.to_json(datum),
            Registered::Json(s) => s.to_json(datum),
            Registered::Protobuf(s) => s.to_json(datum),
        }
    }

    /// The `payload` of that text alone, with its Connect schema as the JSON converter prints
    /// it.
    pub fn payload(&self, datum: &[u8]) -> Result<Payload<'_>, String> {
        let (text, connect, spans) = match self {
            Registered::Avro(s) => {
                let (text, spans) = s.payload(datum)?;
                (text, s.connect(), spans)
            }
            Registered::Json(s) => std::str::from_utf8(datum)
                .map(|text| (text.to_string(), s.connect(), Vec::new()))
                .map_err(|e| format!("not UTF-8: {e}"))?,
            Registered::Protobuf(s) => {
                let (text, connect) = s.payload(datum)?;
                (text, connect, Vec::new())
            }
        };
        Ok(Payload {
            text,
            connect,
            spans,
        })
    }
}

/// A framed value or key as the JSON converter's `payload`: its text, its Connect schema, and
/// where the reader wrote its members (empty where it does not say; then the text is read).
pub struct Payload<'s> {
    pub text: String,
    pub connect: &'s str,
    pub spans: Vec<Span<'s>>,
}

type Compiled = Result<Arc<Registered>, Refusal>;

/// The schemas of the ids some messages are framed with: what the transform reads them with.
#[derive(Debug, Default, Clone)]
pub struct Schemas(HashMap<u32, Compiled>);

impl Schemas {
    pub fn get(&self, id: u32) -> Result<&Registered, Refusal> {
        match self.0.get(&id) {
            Some(Ok(schema)) => Ok(schema.as_ref()),
            Some(Err(refusal)) => Err(refusal.clone()),
            None => Err(Refusal {
                kind: RejectKind::SchemaNotFound,
                reason: format!(
                    "registry-framed with schema id {id}, but no schema registry is configured \
                     (CDC_AUDIT_SCHEMA_REGISTRY_URL)"
                ),
            }),
        }
    }
}

impl FromIterator<(u32, Compiled)> for Schemas {
    fn from_iter<I: IntoIterator<Item = (u32, Compiled)>>(iter: I) -> Self {
        Schemas(iter.into_iter().collect())
    }
}

/// The schema ids `messages` are framed with, value and key.
pub fn ids<'a>(messages: impl IntoIterator<Item = &'a Message>) -> HashSet<u32> {
    let mut ids = HashSet::new();
    for m in messages {
        for bytes in [&m.payload, &m.key].into_iter().flatten() {
            if let Some((id, _)) = framed(bytes) {
                ids.insert(id);
            }
        }
    }
    ids
}

/// A registry and the schemas it gave, compiled, by id: at most `capacity`, the oldest leaving
/// first. A registry's id names one schema for good, so nothing is asked twice while it is kept;
/// an unknown id is asked again for each batch that names it.
pub struct SchemaCache {
    registry: Option<Registry>,
    kept: HashMap<u32, Compiled>,
    order: VecDeque<u32>,
    capacity: usize,
}

impl SchemaCache {
    pub fn new(registry: Option<Registry>, capacity: usize) -> SchemaCache {
        SchemaCache {
            registry,
            kept: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The schemas of `ids`. While the registry does not answer, waits and asks again, until
    /// `give_up` says the caller no longer needs them: the last outage then.
    pub fn resolve(
        &mut self,
        ids: &HashSet<u32>,
        stats: &Stats,
        give_up: impl Fn() -> bool,
    ) -> Result<Schemas, Outage> {
        let mut wait = Duration::from_millis(250);
        loop {
            match self.lookup(ids, Some(stats)) {
                Ok(schemas) => {
                    stats.health.registry_down.store(false, Ordering::Release);
                    return Ok(schemas);
                }
                Err(Outage(why)) => {
                    stats.health.registry_down.store(true, Ordering::Release);
                    log::warn!(
                        "schema registry: {why}; registry-framed messages wait, asking again in {wait:?}"
                    );
                    let until = Instant::now() + wait;
                    while Instant::now() < until {
                        if give_up() {
                            return Err(Outage(why));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// The schemas of `ids`, asking the registry once for each one not kept.
    pub fn lookup(&mut self, ids: &HashSet<u32>, stats: Option<&Stats>) -> Result<Schemas, Outage> {
        let count = |result: &str| {
            if let Some(stats) = stats {
                stats.registry_requests.with_label_values(&[result]).inc();
            }
        };
        let mut schemas = HashMap::with_capacity(ids.len());
        let Some(registry) = &self.registry else {
            return Ok(Schemas(schemas)); // every framed message says no registry is configured
        };
        for &id in ids {
            if let Some(kept) = self.kept.get(&id) {
                schemas.insert(id, kept.clone());
                continue;
            }
            let answer = registry.schema(id).inspect_err(|_| count("failed"))?;
            let found = match answer {
                Answer::Schema { schema_type, text } => {
                    count("found");
                    let compiled = compile(id, &schema_type, &text);
                    if self.order.len() == self.capacity {
                        if let Some(oldest) = self.order.pop_front() {
                            self.kept.remove(&oldest);
                        }
                    }
                    self.order.push_back(id);
                    self.kept.insert(id, compiled.clone());
                    compiled
                }
                Answer::NotFound(message) => {
                    count("not_found");
                    Err(Refusal {
                        kind: RejectKind::SchemaNotFound,
                        reason: format!(
                            "the schema registry does not know schema id {id}: {message}"
                        ),
                    })
                }
            };
            schemas.insert(id, found);
        }
        Ok(Schemas(schemas))
    }
}

/// A registry's schema made ready to read messages with, or why its messages are rejected.
pub fn compile(id: u32, schema_type: &str, text: &str) -> Compiled {
    let refused = |e: String| Refusal {
        kind: RejectKind::Undecodable,
        reason: format!("schema id {id} is not a {schema_type} schema this version reads: {e}"),
    };
    let read = match schema_type.to_ascii_uppercase().as_str() {
        "AVRO" => AvroSchema::parse(text).map(Registered::Avro),
        "JSON" => JsonSchema::parse(text).map(Registered::Json),
        "PROTOBUF" => ProtoSchema::parse(text).map(|s| {
            if let Some(warning) = s.nullability_warning() {
                log::warn!("schema id {id}: {warning}");
            }
            Registered::Protobuf(s)
        }),
        _ => {
            return Err(Refusal {
                kind: RejectKind::Undecodable,
                reason: format!(
                    "schema id {id} is a {schema_type} schema; this version reads Avro, JSON \
                     Schema and Protobuf from the registry"
                ),
            })
        }
    };
    read.map(Arc::new).map_err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_id_without_a_registry_names_the_setting() {
        let refusal = Schemas::default().get(7).unwrap_err();
        assert_eq!(refusal.kind, RejectKind::SchemaNotFound);
        assert!(
            refusal.reason.contains("CDC_AUDIT_SCHEMA_REGISTRY_URL"),
            "{}",
            refusal.reason
        );
    }

    #[test]
    fn unknown_types_and_broken_schemas_are_refused_as_undecodable() {
        assert_eq!(
            compile(1, "XML", "<schema/>").unwrap_err().kind,
            RejectKind::Undecodable
        );
        assert_eq!(
            compile(4, "PROTOBUF", "syntax = \"proto3\";")
                .unwrap_err()
                .kind,
            RejectKind::Undecodable
        );
        assert_eq!(
            compile(2, "AVRO", "{\"type\": \"record\"}")
                .unwrap_err()
                .kind,
            RejectKind::Undecodable
        );
        assert!(compile(3, "AVRO", "\"string\"").is_ok());
    }
}
