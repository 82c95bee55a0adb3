//! The transform, whatever the bytes: a Kafka message's value (and key) through both rule sets,
//! and the rejection's description. It must never panic, and a rejection always says why.
//!
//! The first byte chooses: bit 0, the busy rules (masking, hashing, filters, change user) or
//! none; bit 1, whether the input after it is split at its first NUL into key and value.
#![no_main]

use std::sync::{Arc, OnceLock};

use cdc_audit::config::rules::{Glob, Rules};
use cdc_audit::transform::{describe, transform};
use cdc_audit::types::{Message, Outcome};
use libfuzzer_sys::fuzz_target;

fn busy_rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules {
        columns: Rules::parse_column_rules("*.email=hash,*.id=redact,*.first_name=drop,*.*_at=redact")
            .unwrap_or_default(),
        hash_key: Some(b"0123456789abcdef".to_vec()),
        change_user_column: Some("last_name".into()),
        exclude: vec![Glob::new("*.skipme")],
        ..Rules::default()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = match rest.iter().position(|&b| b == 0).filter(|_| mode & 2 != 0) {
        Some(i) => (Some(rest[..i].to_vec()), rest[i + 1..].to_vec()),
        None => (None, rest.to_vec()),
    };
    let msg = Message {
        topic: Arc::from("dbserver1.inventory.customers"),
        partition: 0,
        offset: 0,
        timestamp_ms: Some(0),
        key,
        payload: Some(value),
        headers: Vec::new(),
    };
    let default = Rules::default();
    let rules = if mode & 1 != 0 { busy_rules() } else { &default };
    if let Outcome::Rejected(r) = transform(&msg, rules) {
        assert!(!r.error.is_empty(), "a rejection without a reason");
    }
    describe(&msg, rules);
});
