//! `cdc-audit demo`: the real pipeline over generated Debezium traffic on librdkafka's in-process
//! mock cluster, into a database it creates (and drops unless `--keep`). The generator is also
//! what the integration tests produce.

pub mod avro;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::config::{Config, Topics};
use crate::events::Stats;
use crate::registry::serve::LocalRegistry;
use crate::types::{Control, RejectKind};
use avro::AvroWriter;

/// The PostgreSQL server the demo and the tests use when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Change events to generate (creates, updates, deletes; deletes add a tombstone).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Malformed messages mixed in, to show how rejections are stored.
    #[arg(long, default_value_t = 3)]
    pub poison: usize,
    /// Keep the demo database afterwards (it is dropped by default).
    #[arg(long)]
    pub keep: bool,
    /// Afterwards, keep the database and serve the explorer page and the read API on it (on
    /// 127.0.0.1:9188, else a free port) until Ctrl-C; prints the URL and a fresh token.
    #[arg(long)]
    pub explore: bool,
    /// Writer threads.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// How the events are serialized: `json` (Debezium's JSON converter, with schemas) or `avro`
    /// (Confluent's Avro converter, schemas in a registry the demo runs in process).
    #[arg(long, default_value = "json", value_parser = ["json", "avro"])]
    pub format: String,
}

/// One Kafka record to produce.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub key: Option<String>,
    pub value: Option<String>,
}

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, &'static str)],
    /// Live rows with their ids, picked at random: a Vec, as a map's nth would be quadratic.
    rows: Vec<(i64, serde_json::Value)>,
    next_id: i64,
}

/// Deterministic generator of Debezium PostgreSQL-connector events with the JSON converter's
/// schema envelope, for a few `inventory` tables.
pub struct Generator {
    prefix: String,
    tables: Vec<Table>,
    seed: u64,
    lsn: i64,
    tx_id: i64,
    /// The LSN where the current transaction began: its block id is "txId:lsn", as Debezium's.
    tx_lsn: i64,
    tx_left: u32,
    /// The JSON converter's schema envelope on keys and values (`schemas.enable=true`).
    schemas: bool,
    /// Most transactions begin with a context message, as an application sets it.
    context: bool,
    pub changes: usize,
    pub tombstones: usize,
    /// Context messages (`op: "m"`, prefix `audit`) on `<prefix>.message`.
    pub messages: usize,
}

const FIRST: &[&str] = &[
    "Sally", "George", "Edward", "Anne", "Kenji", "Amara", "Luis", "Ingrid",
];
const LAST: &[&str] = &[
    "Thomas",
    "Bailey",
    "Walker",
    "Kretchmar",
    "Sato",
    "Okafor",
    "García",
    "Berg",
];
const PRODUCTS: &[&str] = &[
    "scooter",
    "car battery",
    "hammer",
    "rocks",
    "jacket",
    "spare tire",
];
const USERS: &[&str] = &["app", "batch_job", "alice", "bob"];
/// The application's users, as its context messages name them.
const APP_USERS: &[&str] = &["alice", "bob", "carol", "dmitri", "eve.ops"];

impl Generator {
    pub fn new(prefix: &str, seed: u64) -> Self {
        let table = |name, columns| Table {
            name,
            columns,
            rows: Vec::new(),
            next_id: 1001,
        };
        Generator {
            prefix: prefix.to_string(),
            tables: vec![
                table(
                    "customers",
                    &[
                        ("id", "int32"),
                        ("first_name", "string"),
                        ("last_name", "string"),
                        ("email", "string"),
                        ("updated_by", "string"),
                    ],
                ),
                table(
                    "orders",
                    &[
                        ("id", "int32"),
                        ("customer_id", "int32"),
                        ("product", "string"),
                        ("quantity", "int32"),
                        ("updated_by", "string"),
                    ],
                ),
                table(
                    "products",
                    &[
                        ("id", "int32"),
                        ("name", "string"),
                        ("description", "string"),
                        ("weight", "double"),
                        ("updated_by", "string"),
                    ],
                ),
            ],
            seed: seed | 1,
            lsn: 33_000_000,
            tx_id: 500,
            tx_lsn: 0,
            tx_left: 0,
            schemas: true,
            context: false,
            changes: 0,
            tombstones: 0,
            messages: 0,
        }
    }

    /// Four transactions in five begin with a context message naming the application's user and
    /// the request (`pg_logical_emit_message(true, 'audit', ...)`), on `<prefix>.message`.
    pub fn with_context(mut self) -> Self {
        self.context = true;
        self
    }

    /// Events as the JSON converter sends them with `schemas.enable=false`: the bare payload,
    /// about a quarter of the size.
    pub fn without_schemas(mut self) -> Self {
        self.schemas = false;
        self
    }

    pub fn topics(&self) -> Vec<String> {
        let tables = self.tables.iter();
        let mut topics: Vec<String> = tables
            .map(|t| format!("{}.inventory.{}", self.prefix, t.name))
            .collect();
        if self.context {
            topics.push(format!("{}.message", self.prefix));
        }
        topics
    }

    /// The context message that opens the current transaction, as Debezium's PostgreSQL
    /// connector publishes a transactional logical decoding message.
    fn context_message(&mut self, now_ms: i64) -> Record {
        let user = APP_USERS[self.rand(APP_USERS.len())];
        let context = json!({"user": user, "request_id": format!("r-{}", self.tx_id)});
        let content = base64::engine::general_purpose::STANDARD.encode(context.to_string());
        let value = json!({
            "op": "m", "ts_ms": now_ms,
            "source": {"version": "2.7.3.Final", "connector": "postgresql", "name": self.prefix, "ts_ms": now_ms - 40,
                       "snapshot": "false", "db": "inventory", "schema": "", "table": "",
                       "txId": self.tx_id, "lsn": self.lsn, "xmin": null},
            "message": {"prefix": "audit", "content": content}
        });
        self.messages += 1;
        Record {
            topic: format!("{}.message", self.prefix),
            key: Some(json!({"prefix": "audit"}).to_string()),
            value: Some(value.to_string()),
        }
    }

    fn rand(&mut self, n: usize) -> usize {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed % n as u64) as usize
    }

    fn row(&mut self, table: usize, id: i64) -> serde_json::Value {
        let user = USERS[self.rand(USERS.len())];
        match self.tables[table].name {
            "customers" => {
                let (f, l) = (FIRST[self.rand(FIRST.len())], LAST[self.rand(LAST.len())]);
                json!({"id": id, "first_name": f, "last_name": l,
                       "email": format!("{}.{}{}@example.com", f.to_lowercase(), l.to_lowercase(), id), "updated_by": user})
            }
            "orders" => json!({"id": id, "customer_id": 1001 + self.rand(50) as i64,
                               "product": PRODUCTS[self.rand(PRODUCTS.len())], "quantity": 1 + self.rand(9), "updated_by": user}),
            _ => json!({"id": id, "name": PRODUCTS[self.rand(PRODUCTS.len())],
                        "description": "12V car battery, 1 year warranty", "weight": 0.5 + self.rand(200) as f64 / 10.0, "updated_by": user}),
        }
    }

    fn schema(&self, table: &Table) -> serde_json::Value {
        let fields: Vec<_> = table
            .columns
            .iter()
            .map(|(name, ty)| json!({"type": ty, "optional": *name != "id", "field": name}))
            .collect();
        let value_name = format!("{}.inventory.{}.Value", self.prefix, table.name);
        json!({"type": "struct", "optional": false, "name": format!("{}.inventory.{}.Envelope", self.prefix, table.name), "version": 2,
            "fields": [
                {"type": "struct", "fields": fields, "optional": true, "name": value_name, "field": "before"},
                {"type": "struct", "fields": fields, "optional": true, "name": value_name, "field": "after"},
                {"type": "struct", "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source", "fields": [
                    {"type": "string", "optional": false, "field": "version"},
                    {"type": "string", "optional": false, "field": "connector"},
                    {"type": "string", "optional": false, "field": "name"},
                    {"type": "int64", "optional": false, "field": "ts_ms"},
                    {"type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1, "parameters": {"allowed": "true,last,false,incremental"}, "default": "false", "field": "snapshot"},
                    {"type": "string", "optional": false, "field": "db"},
                    {"type": "string", "optional": true, "field": "sequence"},
                    {"type": "string", "optional": false, "field": "schema"},
                    {"type": "string", "optional": false, "field": "table"},
                    {"type": "int64", "optional": true, "field": "txId"},
                    {"type": "int64", "optional": true, "field": "lsn"},
                    {"type": "int64", "optional": true, "field": "xmin"}]},
                {"type": "string", "optional": false, "field": "op"},
                {"type": "int64", "optional": true, "field": "ts_ms"},
                {"type": "struct", "optional": true, "name": "event.block", "version": 1, "field": "transaction", "fields": [
                    {"type": "string", "optional": false, "field": "id"},
                    {"type": "int64", "optional": false, "field": "total_order"},
                    {"type": "int64", "optional": false, "field": "data_collection_order"}]}]})
    }

    /// The next change event, and after a delete the tombstone that follows it.
    pub fn next_records(&mut self) -> Vec<Record> {
        let t = self.rand(self.tables.len());
        let live = self.tables[t].rows.len();
        let op = match self.rand(100) {
            _ if live < 5 => "c",
            n if n < 45 => "c",
            n if n < 85 => "u",
            _ => "d",
        };
        let (id, before, after) = match op {
            "c" => {
                let id = self.tables[t].next_id;
                self.tables[t].next_id += 1;
                let row = self.row(t, id);
                self.tables[t].rows.push((id, row.clone()));
                (id, None, Some(row))
            }
            _ => {
                let nth = self.rand(live);
                let (id, before) = match self.tables[t].rows.get(nth) {
                    Some((id, row)) => (*id, row.clone()),
                    None => return Vec::new(),
                };
                if op == "u" {
                    let mut after = self.row(t, id);
                    // An update changes some columns and keeps others.
                    if let (Some(a), Some(b)) = (after.as_object_mut(), before.as_object()) {
                        for (k, v) in b {
                            if k != "updated_by" && self.rand(2) == 0 {
                                a.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    self.tables[t].rows[nth].1 = after.clone();
                    (id, Some(before), Some(after))
                } else {
                    self.tables[t].rows.swap_remove(nth);
                    (id, Some(before), None)
                }
            }
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut out = Vec::new();
        if self.tx_left == 0 {
            self.tx_id += 1;
            self.tx_lsn = self.lsn;
            self.tx_left = 1 + self.rand(3) as u32;
            if self.context && self.rand(5) > 0 {
                self.lsn += 100;
                out.push(self.context_message(now_ms));
            }
        }
        self.tx_left -= 1;
        self.lsn += 200 + self.rand(400) as i64;
        let table = &self.tables[t];
        let payload = json!({
            "before": before, "after": after,
            "source": {"version": "2.7.3.Final", "connector": "postgresql", "name": self.prefix, "ts_ms": now_ms - 40,
                       "snapshot": "false", "db": "inventory", "sequence": format!("[\"{}\",\"{}\"]", self.lsn - 200, self.lsn),
                       "schema": "public", "table": table.name, "txId": self.tx_id, "lsn": self.lsn, "xmin": null},
            "op": op, "ts_ms": now_ms,
            "transaction": {"id": format!("{}:{}", self.tx_id, self.tx_lsn), "total_order": 1, "data_collection_order": 1}
        });
        let topic = format!("{}.inventory.{}", self.prefix, table.name);
        let key_payload = json!({"id": id});
        let (key, value) = if self.schemas {
            let key_schema = json!({"type": "struct", "optional": false, "name": format!("{}.inventory.{}.Key", self.prefix, table.name),
                                    "fields": [{"type": "int32", "optional": false, "field": "id"}]});
            // In the JSON converter's order, schema first (json! would sort the keys).
            let envelope = |schema: Value, payload: &Value| {
                format!(r#"{{"schema":{schema},"payload":{payload}}}"#)
            };
            (
                envelope(key_schema, &key_payload),
                envelope(self.schema(table), &payload),
            )
        } else {
            (key_payload.to_string(), payload.to_string())
        };
        self.changes += 1;
        out.push(Record {
            topic: topic.clone(),
            key: Some(key.clone()),
            value: Some(value),
        });
        if op == "d" {
            self.tombstones += 1;
            out.push(Record {
                topic,
                key: Some(key),
                value: None,
            });
        }
        out
    }
}

/// Malformed messages of several kinds, for the demo and the tests.
pub fn poison(topic: &str, n: usize) -> Vec<Record> {
    let kinds = [
        "{\"payload\": {\"op\": \"c\", \"after\": {\"id\": 1}",
        "[\"not\", \"an\", \"event\"]",
        "{\"payload\": {\"op\": \"z\", \"after\": {\"id\": 2}}}",
        "{\"payload\": {\"before\": null, \"after\": {\"id\": 3}}}",
    ];
    (0..n)
        .map(|i| Record {
            topic: topic.to_string(),
            key: Some(format!("{{\"id\":{i}}}")),
            value: Some(kinds[i % kinds.len()].to_string()),
        })
        .collect()
}

/// Hands one record to the producer, waiting while its queue is full; serves delivery reports.
pub fn send<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    r: &Record,
) -> Result<(), String> {
    send_bytes(
        producer,
        &r.topic,
        r.key.as_deref().map(str::as_bytes),
        r.value.as_deref().map(str::as_bytes),
    )
}

/// [`send`] for a record of any bytes.
pub fn send_bytes<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(), String> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(format!("produce to {topic}: {e}")),
        }
    }
    producer.poll(Duration::ZERO);
    Ok(())
}

/// Produces records and waits until all are acknowledged.
pub fn produce(bootstrap: &str, records: &[Record]) -> Result<(), String> {
    produce_bytes(
        bootstrap,
        records.iter().map(|r| {
            (
                r.topic.as_str(),
                r.key.as_deref().map(str::as_bytes),
                r.value.as_deref().map(str::as_bytes),
            )
        }),
    )
}

/// [`produce`] for records of any bytes: topic, key, value.
pub fn produce_bytes<'a>(
    bootstrap: &str,
    records: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>, Option<&'a [u8]>)>,
) -> Result<(), String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    for (topic, key, value) in records {
        send_bytes(&producer, topic, key, value)?;
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| format!("flush: {e}"))
}

/// A connection string for another database on the same server, in URL or key=value form.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, query) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path.split_once('?').map(|(_, q)| q)),
            None => match rest.split_once('?') {
                Some((authority, q)) => (authority, Some(q)),
                None => (rest, None),
            },
        };
        return match query {
            Some(q) => format!("{scheme}://{authority}/{dbname}?{q}"),
            None => format!("{scheme}://{authority}/{dbname}"),
        };
    }
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|kv| !kv.starts_with("dbname="))
        .collect();
    format!("{} dbname={dbname}", kept.join(" "))
}

/// The server to use: `CDC_AUDIT_DATABASE_URL`, else `DATABASE_URL`, else the local default.
pub fn server_url() -> String {
    std::env::var("CDC_AUDIT_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string())
}

fn connect(url: &str) -> Result<postgres::Client, String> {
    crate::sink::connect(url, None)
}

pub fn run(args: &DemoArgs) -> Result<(), String> {
    let server = server_url();
    let mut admin = connect(&server)?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dbname = format!("cdc_audit_demo_{stamp}_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {dbname}"))
        .map_err(|e| format!("create database {dbname}: {e}"))?;
    println!("demo database: {dbname} (fresh; nothing else is touched)");
    let url = with_dbname(&server, &dbname);
    let result = demo(args, &url);
    let result = match result {
        Ok(()) if args.explore => explore(&url),
        other => other,
    };
    if args.keep || args.explore {
        println!("kept database {dbname}; drop it with: DROP DATABASE {dbname};");
    } else if let Err(e) = admin.batch_execute(&format!("DROP DATABASE {dbname} WITH (FORCE)")) {
        eprintln!("could not drop {dbname}: {e}");
    }
    result
}

/// Serves the explorer on the demo's database until SIGINT or SIGTERM.
fn explore(url: &str) -> Result<(), String> {
    use std::io::Read;
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("a token needs /dev/urandom: {e}"))?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let settings = |addr: &str| crate::config::ApiSettings {
        addr: addr
            .parse()
            .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        token: token.clone(),
        database_url: url.to_string(),
        database_ca_file: None,
        statement_timeout: Duration::from_secs(10),
        signing_key_file: None,
    };
    let api = crate::api::spawn(&settings("127.0.0.1:9188"))
        .or_else(|_| crate::api::spawn(&settings("127.0.0.1:0")))?;
    let control = Control::default();
    crate::service::install_signal_handlers(&control)?;
    println!("\nexplorer: http://{}/#token={token}", api.addr);
    println!(
        "read API: http://{}/api/v1/ (Authorization: Bearer {token})",
        api.addr
    );
    println!("Ctrl-C stops it");
    while !control.shutting_down() {
        thread::sleep(Duration::from_millis(100));
    }
    api.stop();
    Ok(())
}

fn demo(args: &DemoArgs, url: &str) -> Result<(), String> {
    let cluster = MockCluster::new(1).map_err(|e| format!("mock cluster: {e}"))?;
    let bootstrap = cluster.bootstrap_servers();
    let mut generator = Generator::new("demo", 42).with_context();
    for topic in generator.topics() {
        cluster
            .create_topic(&topic, args.partitions, 1)
            .map_err(|e| format!("create topic {topic}: {e}"))?;
    }
    let mut records = Vec::with_capacity(args.events + args.events / 5);
    while generator.changes < args.events {
        records.extend(generator.next_records());
    }
    let topics = generator.topics();
    records.extend(poison(&topics[0], args.poison));
    let total = records.len();
    println!(
        "in-process Kafka (librdkafka mock cluster) at {bootstrap}; {} topics x {} partitions",
        topics.len(),
        args.partitions
    );
    println!(
        "producing {} change events + {} context messages + {} tombstones + {} malformed messages ...",
        generator.changes, generator.messages, generator.tombstones, args.poison
    );
    let registry = if args.format == "avro" {
        let registry = LocalRegistry::start(([127, 0, 0, 1], 0).into())?;
        let mut framed = in_avro(&registry, &records)?;
        // And one framed with a schema id the registry does not know (999999): a rejection.
        framed.push((
            topics[0].clone(),
            None,
            Some(vec![0, 0, 0x0f, 0x42, 0x3f, 2, 4]),
        ));
        println!(
            "  in Avro, as Confluent's AvroConverter writes it; schemas in a registry at {} \
             (and one message naming a schema id the registry does not know)",
            registry.url()
        );
        produce_bytes(
            &bootstrap,
            framed
                .iter()
                .map(|(t, k, v)| (t.as_str(), k.as_deref(), v.as_deref())),
        )?;
        Some(registry)
    } else {
        produce(&bootstrap, &records)?;
        None
    };
    let total = total + usize::from(registry.is_some());

    let config = Config {
        bootstrap_servers: bootstrap.clone(),
        topics: Topics::List(topics.clone()),
        group_id: "cdc-audit-demo".into(),
        database_url: url.to_string(),
        database_ca_file: None,
        batch_size: 2000,
        batch_bytes: 1 << 20,
        batch_linger: Duration::from_millis(100),
        batch_idle_linger: Duration::from_millis(20),
        writers: args.writers.max(1),
        pool_size: args.writers.max(1) as u32 + 2,
        channel_capacity: 8,
        shutdown_timeout: Duration::from_secs(30),
        rebalance_timeout: Duration::from_secs(10),
        migrate: true,
        kafka: BTreeMap::new(),
        http_addr: None,
        ready_max_lag: None,
        stall_timeout: Duration::from_secs(120),
        log_format: crate::config::LogFormat::Text,
        api: None,
        digest: None,
        partitions_ahead: 3,
        retention: None,
        registry: registry.as_ref().map(|r| crate::config::RegistrySettings {
            url: r.url(),
            basic_auth: None,
            ca_file: None,
            client_cert: None,
            timeout: Duration::from_secs(5),
            cache: 1000,
        }),
        bulk_threshold: 1000,
        bulk_watch: Vec::new(),
        rules: crate::config::rules::Rules {
            change_user_column: Some("updated_by".into()),
            ..Default::default()
        },
    };
    let control = Arc::new(Control::default());
    let stats = Arc::new(Stats::new());
    let started = Instant::now();
    let service = {
        let (control, stats) = (control.clone(), stats.clone());
        thread::Builder::new()
            .name("demo-service".into())
            .spawn(move || crate::service::run(config, control, stats))
            .map_err(|e| e.to_string())?
    };

    println!(
        "running the pipeline: poll -> transform (rayon) -> {} writers (binary COPY) ...",
        args.writers
    );
    let mut probe = None;
    let mut last_print = Instant::now();
    let done = loop {
        thread::sleep(Duration::from_millis(200));
        if service.is_finished() {
            break false;
        }
        if probe.is_none() {
            probe = connect(url).ok();
        }
        let committed: i64 = probe
            .as_mut()
            .and_then(|c| {
                c.query_one(
                    "SELECT coalesce(sum(next_offset), 0)::bigint FROM audit_positions",
                    &[],
                )
                .ok()
            })
            .map_or(0, |r| r.get(0));
        if last_print.elapsed() >= Duration::from_secs(1) || committed as usize >= total {
            last_print = Instant::now();
            println!(
                "  {:>7}/{total} messages committed   {:>7} audit rows   {} rejections",
                committed,
                stats.rows_written.get(),
                rejection_count(&stats)
            );
        }
        if committed as usize >= total {
            break true;
        }
        if started.elapsed() > Duration::from_secs(600) {
            break false;
        }
    };
    let elapsed = started.elapsed();
    control.stop();
    let exit = service
        .join()
        .map_err(|_| "the service thread panicked".to_string())??;
    if !done {
        return Err(format!(
            "the demo did not finish (service ended with {exit:?})"
        ));
    }
    let mut client = connect(url)?;
    summary(
        &mut client,
        &stats,
        generator.changes + generator.messages,
        total,
        elapsed,
    )
}

/// The records as the Avro converter sends them: every JSON-converter envelope framed Avro (its
/// schema registered under `<topic>-value` or `<topic>-key`), the rest (context messages without
/// a schema, malformed ones) as they are.
pub fn in_avro(registry: &LocalRegistry, records: &[Record]) -> Result<Vec<Framed>, String> {
    let mut writer = AvroWriter::new(registry);
    let mut frame = |topic: &str, text: &Option<String>, suffix: &str| match text {
        Some(t) if t.starts_with("{\"schema\":{") => {
            writer.frame(&format!("{topic}-{suffix}"), t).map(Some)
        }
        other => Ok(other.clone().map(String::into_bytes)),
    };
    records
        .iter()
        .map(|r| {
            let key = frame(&r.topic, &r.key, "key")?;
            let value = frame(&r.topic, &r.value, "value")?;
            Ok((r.topic.clone(), key, value))
        })
        .collect()
}

/// A record's topic, key and value as bytes.
pub type Framed = (String, Option<Vec<u8>>, Option<Vec<u8>>);

fn rejection_count(stats: &Stats) -> u64 {
    RejectKind::ALL
        .iter()
        .map(|k| stats.rejections.with_label_values(&[k.as_str()]).get())
        .sum()
}

fn summary(
    client: &mut postgres::Client,
    stats: &Stats,
    changes: usize,
    total: usize,
    elapsed: Duration,
) -> Result<(), String> {
    let q =
        |c: &mut postgres::Client, sql: &str| c.query(sql, &[]).map_err(|e| format!("{sql}: {e}"));
    let rows: i64 = q(client, "SELECT count(*) FROM audit_logging")?[0].get(0);
    let rejections: i64 = q(client, "SELECT count(*) FROM audit_rejections")?[0].get(0);
    let secs = elapsed.as_secs_f64();
    println!("\nsummary");
    println!("  messages consumed   {total} ({changes} change events and context messages, the rest tombstones and malformed)");
    println!("  audit rows          {rows}");
    println!(
        "  tombstones skipped  {}",
        stats.skipped.with_label_values(&["tombstone"]).get()
    );
    println!("  rejections stored   {rejections}");
    println!(
        "  elapsed             {secs:.1} s ({:.0} messages/s)",
        total as f64 / secs
    );
    println!(
        "  note: librdkafka's mock broker delivers under 1 MB/s per partition, so this rate is the"
    );
    println!("        mock's, not cdc-audit's; BENCHMARKS.md has the service's own figures.");
    println!("\nby table and operation");
    for r in q(client, "SELECT source_table, operation_type, count(*) FROM audit_logging GROUP BY 1, 2 ORDER BY 1, 2")? {
        println!("  {:<12} {:<8} {:>7}", r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, i64>(2));
    }
    println!(
        "\nsample audit rows (audit_trail: the actor and request from the transaction's context)"
    );
    let sample = "SELECT source_table, operation_type, primary_key::text, coalesce(changed_columns::text, ''), \
                  coalesce(actor, ''), coalesce(context ->> 'request_id', '-'), \
                  coalesce(transaction_id, ''), lsn, kafka_topic || '[' || kafka_partition || ']@' || kafka_offset \
                  FROM audit_trail WHERE operation_type = 'UPDATE' ORDER BY id LIMIT 5";
    for r in q(client, sample)? {
        println!(
            "  {} {} key={} changed={} by={} request={} tx={} lsn={} at {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4),
            r.get::<_, String>(5),
            r.get::<_, String>(6),
            r.get::<_, Option<String>>(7).unwrap_or_default(),
            r.get::<_, String>(8)
        );
    }
    println!("\nrejections");
    for r in q(client, "SELECT kafka_topic || '[' || kafka_partition || ']@' || kafka_offset, reason, left(error, 80) FROM audit_rejections ORDER BY id")? {
        println!("  {} {}: {}", r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2));
    }
    if rows as usize != changes
        || rejections as usize
            + changes
            + stats.skipped.with_label_values(&["tombstone"]).get() as usize
            != total
    {
        return Err(format!("expected {changes} audit rows, found {rows}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_is_replaced_in_both_forms() {
        assert_eq!(
            with_dbname("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_dbname("postgres://u@h/db?sslmode=require", "x"),
            "postgres://u@h/x?sslmode=require"
        );
        assert_eq!(with_dbname("postgresql://h", "x"), "postgresql://h/x");
        assert_eq!(
            with_dbname("host=h dbname=a user=u", "x"),
            "host=h user=u dbname=x"
        );
    }

    #[test]
    fn generator_is_deterministic_and_emits_tombstones_after_deletes() {
        let mut a = Generator::new("p", 7);
        let mut b = Generator::new("p", 7);
        for _ in 0..200 {
            let (ra, rb) = (a.next_records(), b.next_records());
            assert_eq!(format!("{ra:?}").len(), format!("{rb:?}").len());
            if ra.len() == 2 {
                assert!(ra[0]
                    .value
                    .as_deref()
                    .is_some_and(|v| v.contains("\"op\":\"d\"")));
                assert!(ra[1].value.is_none());
            }
        }
        assert!(a.tombstones > 0);
    }
}
