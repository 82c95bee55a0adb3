//! `cdc-audit inspect`: the transform's answer for one message read from files. The only file
//! reading under `transform/`, and never on the pipeline's path.

use std::collections::BTreeMap;
use std::path::Path;

use super::describe_with;
use super::schemas::{ids, SchemaCache};
use crate::config;
use crate::registry::Registry;
use crate::types::Message;

/// `cdc-audit inspect`: what the service would store for one message whose value (and key) are
/// files, under the column and table rules of `raw`; a JSON description.
pub fn inspect(
    raw: &BTreeMap<String, String>,
    value: Option<&Path>,
    key: Option<&Path>,
    topic: &str,
) -> Result<String, String> {
    let rules = config::rules_from_settings(raw).map_err(|e| e.to_string())?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let msg = Message {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: key.map(read).transpose()?.map(Into::into),
        payload: value.map(read).transpose()?.map(Into::into),
        headers: Vec::new(),
    };
    let schemas = schema_cache(raw)?
        .lookup(&ids([&msg]), None)
        .map_err(|e| format!("the schema registry does not answer: {}", e.0))?;
    serde_json::to_string_pretty(&describe_with(&msg, &rules, &schemas)).map_err(|e| e.to_string())
}

/// The registry `CDC_AUDIT_SCHEMA_REGISTRY_*` of `raw` names, if any, for a command that reads
/// messages outside the pipeline.
pub fn schema_cache(raw: &BTreeMap<String, String>) -> Result<SchemaCache, String> {
    let settings = config::registry_from_settings(raw).map_err(|e| e.to_string())?;
    let registry = settings.as_ref().map(Registry::new).transpose()?;
    Ok(SchemaCache::new(registry, settings.map_or(1, |s| s.cache)))
}
