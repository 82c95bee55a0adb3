//! Logging setup for the binary: env_logger, as text or as JSON lines, read before the settings
//! are validated so that a bad setting is itself logged in the chosen format.

use crate::config;
use crate::events::now_ms;
use crate::transform::decode::iso_micros;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
/// `CDC_AUDIT_LOG_FORMAT=json`, one JSON object a line with the record's correlation fields.
pub fn init() {
    let env = env_logger::Env::default().default_filter_or("info");
    let mut builder = env_logger::Builder::from_env(env);
    if config::log_format(std::env::var("CDC_AUDIT_LOG_FORMAT").ok().as_deref())
        == Ok(config::LogFormat::Json)
    {
        builder.format(|buf, record| {
            use std::io::Write;
            let mut line = serde_json::Map::new();
            let now_us = now_ms() * 1000;
            line.insert("time".into(), iso_micros(now_us).into());
            line.insert("level".into(), record.level().as_str().into());
            line.insert("target".into(), record.target().into());
            line.insert("message".into(), record.args().to_string().into());
            let _ = record.key_values().visit(&mut JsonFields(&mut line));
            writeln!(buf, "{}", serde_json::Value::Object(line))
        });
    }
    builder.init();
}

/// Correlation fields of a log record (batch id, topic, partition, offsets) as JSON members.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let json = match value.to_i64() {
            Some(n) => n.into(),
            None => value.to_string().into(),
        };
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
}
