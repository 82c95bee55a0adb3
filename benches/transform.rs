//! Transform throughput: generated Debezium events through `transform`, on one core and on
//! rayon, for small events (JSON converter without schemas, about 600 bytes), large ones (with
//! the schema envelope, about 2.5 KB), and the same events as the Avro and the Protobuf
//! converters write them (registry-framed; schemas already fetched; Protobuf's bytes written by
//! protox and prost-reflect, as the tests write them); then the Avro datums to text alone, and
//! the writers' count of suspicious changes alone. Prints figures; asserts nothing.
//!
//!     cargo bench --bench transform [-- EVENTS] [small|large|avro|protobuf]
//!
//! A name runs that part alone, its one-core pass five times (for a profiler, and to see the
//! noise). Each part is run once untimed first, so that the timed runs do not pay for the
//! heap's first growth.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cdc_audit::config::rules::Rules;
use cdc_audit::demo::avro::AvroWriter;
use cdc_audit::demo::Generator;
use cdc_audit::events::Stats;
use cdc_audit::registry::serve::LocalRegistry;
use cdc_audit::suspicious::Suspicious;
use cdc_audit::transform::avro::framed;
use cdc_audit::transform::schemas::{compile, Schemas};
use cdc_audit::transform::{transform_together, SHARING};
use cdc_audit::types::{Bytes, Message, Outcome};
use prost::Message as _;
use prost_reflect::MessageDescriptor;
use rayon::prelude::*;

#[path = "../tests/it/protobuf_writer.rs"]
mod protobuf_writer;

fn messages(n: usize, mut generator: Generator) -> Vec<Message> {
    let topic: Arc<str> = Arc::from("bench.inventory.customers");
    let mut messages = Vec::with_capacity(n);
    while messages.len() < n {
        for r in generator.next_records() {
            if let Some(value) = r.value {
                messages.push(Message {
                    topic: topic.clone(),
                    partition: 0,
                    offset: messages.len() as i64,
                    timestamp_ms: Some(0),
                    key: r.key.map(|s| s.into_bytes().into()),
                    payload: Some(value.into_bytes().into()),
                    headers: Vec::new(),
                });
            }
        }
    }
    messages
}

/// The messages as the Avro converter writes them, and the schemas to read them with.
fn in_avro(messages: &[Message]) -> (Vec<Message>, Schemas) {
    let registry = LocalRegistry::start(([127, 0, 0, 1], 0).into()).expect("registry");
    let mut writer = AvroWriter::new(&registry);
    let mut frame = |bytes: &Option<Bytes>, subject: &str| {
        bytes.as_ref().map(|b| {
            let text = std::str::from_utf8(b).expect("generated JSON");
            Bytes::from(writer.frame(subject, text).expect("an Avro datum"))
        })
    };
    let avro = messages
        .iter()
        .map(|m| Message {
            key: frame(&m.key, "bench-key"),
            payload: frame(&m.payload, "bench-value"),
            ..m.clone()
        })
        .collect();
    let schemas = (1..=registry.schemas() as u32)
        .map(|id| {
            let text = registry.schema(id).expect("registered");
            (id, compile(id, "AVRO", &text))
        })
        .collect();
    (avro, schemas)
}

/// The messages as Confluent's Protobuf converter writes them, and the schemas to read them with.
fn in_protobuf(messages: &[Message]) -> (Vec<Message>, Schemas) {
    let mut written: HashMap<String, (u32, String, MessageDescriptor)> = HashMap::new();
    let mut frame = |bytes: &Option<Bytes>| {
        bytes.as_ref().map(|b| {
            let v: serde_json::Value = serde_json::from_slice(b).expect("generated JSON");
            let next = written.len() as u32 + 1;
            let (id, _, desc) = written.entry(v["schema"].to_string()).or_insert_with(|| {
                let (text, full) = protobuf_writer::proto_file(&v["schema"]);
                let pool = protobuf_writer::compiled(&text);
                let desc = pool
                    .get_message_by_name(&full)
                    .expect("the compiled message");
                (next, text, desc)
            });
            let m = protobuf_writer::struct_to_proto(&v["schema"], &v["payload"], desc);
            // Magic byte, schema id, message indexes ([0]: the file's first message), message.
            let mut out = vec![0];
            out.extend(id.to_be_bytes());
            out.push(0);
            out.extend(m.encode_to_vec());
            Bytes::from(out)
        })
    };
    let framed = messages
        .iter()
        .map(|m| Message {
            key: frame(&m.key),
            payload: frame(&m.payload),
            ..m.clone()
        })
        .collect();
    let schemas = written
        .values()
        .map(|(id, text, _)| (*id, compile(*id, "PROTOBUF", text)))
        .collect();
    (framed, schemas)
}

fn run(label: &str, messages: &[Message], schemas: &Schemas, passes: usize) {
    let n = messages.len();
    let bytes: usize = messages
        .iter()
        .map(|m| m.payload.as_deref().map_or(0, <[u8]>::len))
        .sum();
    println!(
        "{label}: {n} events, {:.0} bytes each on average",
        bytes as f64 / n as f64
    );
    let report = |label: &str, secs: f64, outcomes: &[Outcome]| {
        let rows = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Row(_)))
            .count();
        println!(
            "  {label:<20} {:>10.0} events/s {:>8.1} MB/s  ({rows} rows in {secs:.2} s)",
            n as f64 / secs,
            bytes as f64 / secs / 1e6
        );
    };
    let rules = Rules::default();
    // As the service's stage does: so many messages together, their rows in one buffer.
    let together = |chunk| transform_together(chunk, &rules, schemas);
    let joined = |parts: Vec<Vec<Outcome>>| {
        let mut outcomes = Vec::with_capacity(n);
        parts.into_iter().for_each(|part| outcomes.extend(part));
        outcomes
    };
    drop(joined(messages.chunks(SHARING).map(together).collect()));
    for _ in 0..passes {
        let started = Instant::now();
        let outcomes = joined(messages.chunks(SHARING).map(together).collect());
        report("one core", started.elapsed().as_secs_f64(), &outcomes);
    }

    let started = Instant::now();
    let outcomes = joined(messages.par_chunks(SHARING).map(together).collect());
    report(
        &format!("rayon ({} threads)", rayon::current_num_threads()),
        started.elapsed().as_secs_f64(),
        &outcomes,
    );
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let only = std::env::args()
        .skip(1)
        .find(|a| ["small", "large", "avro", "protobuf"].contains(&a.as_str()));
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let passes = if only.is_some() { 5 } else { 1 };
    let none = Schemas::default();
    if part("small") {
        let small = messages(n, Generator::new("bench", 1).without_schemas());
        run("small (no schema)", &small, &none, passes);
        counting_alone(&small);
    }
    let enveloped = messages(n, Generator::new("bench", 1));
    if part("large") {
        run("large (schema envelope)", &enveloped, &none, passes);
    }
    if part("protobuf") {
        let (protobuf, schemas) = in_protobuf(&enveloped);
        run(
            "the same in Protobuf (registry-framed)",
            &protobuf,
            &schemas,
            passes,
        );
    }
    if part("avro") {
        let (avro, schemas) = in_avro(&enveloped);
        drop(enveloped);
        run(
            "the same in Avro (registry-framed)",
            &avro,
            &schemas,
            passes,
        );
        datums_alone(&avro, &schemas);
    }
}

/// The writers' count of suspicious changes alone (`Suspicious::committed`, batches of 2000, the
/// default threshold), over the small events' rows: updates and deletes carry their
/// transaction and table.
fn counting_alone(messages: &[Message]) {
    let rules = Rules::default();
    let outcomes: Vec<Outcome> = messages
        .chunks(SHARING)
        .flat_map(|chunk| transform_together(chunk, &rules, &Schemas::default()))
        .collect();
    let suspicious = Suspicious::new(1000, Vec::new(), Arc::new(Stats::new()));
    let passes = 5;
    let started = Instant::now();
    for _ in 0..passes {
        for batch in outcomes.chunks(2000) {
            suspicious.committed("bench.inventory.customers", batch.iter());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  {:<20} {:>10.0} events/s  ({:.0} ns an event)",
        "counting suspicious",
        (passes * outcomes.len()) as f64 / secs,
        secs * 1e9 / (passes * outcomes.len()) as f64
    );
}

/// The registry-framed part alone: each value's datum read into its payload's JSON text, each
/// key's into its whole JSON converter text, as the transform does before it reads them as JSON.
fn datums_alone(messages: &[Message], schemas: &Schemas) {
    let started = Instant::now();
    let mut chars = 0;
    for m in messages {
        if let Some((id, datum)) = m.payload.as_deref().and_then(framed) {
            if let Ok(s) = schemas.get(id) {
                chars += s.payload(datum).map_or(0, |p| p.text.len());
            }
        }
        if let Some((id, datum)) = m.key.as_deref().and_then(framed) {
            if let Ok(s) = schemas.get(id) {
                chars += s.to_json(datum).map_or(0, |text| text.len());
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "  {:<20} {:>10.0} events/s  ({:.0} characters of text each)",
        "datums to text alone",
        messages.len() as f64 / secs,
        chars as f64 / messages.len() as f64
    );
}
