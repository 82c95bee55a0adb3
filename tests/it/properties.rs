//! The transform never panics, whatever the bytes: arbitrary input, and real Debezium events
//! truncated or with bytes changed, in the value and in the key.

use std::sync::{Arc, OnceLock};

use cdc_audit::config::rules::Rules;
use cdc_audit::transform::{describe, transform};
use cdc_audit::types::Message;
use cdc_audit::types::Outcome;
use proptest::prelude::*;

pub fn message(key: Option<Vec<u8>>, value: Option<Vec<u8>>) -> Message {
    Message {
        topic: Arc::from("t"),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: key.map(Into::into),
        payload: value.map(Into::into),
        headers: Vec::new(),
    }
}

/// Rules that exercise every rewrite path: masking, hashing, filters, change user.
fn busy_rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules {
        columns: Rules::parse_column_rules(
            "*.email=hash,*.id=redact,*.first_name=drop,*.*_at=redact",
        )
        .unwrap(),
        hash_key: Some(b"0123456789abcdef".to_vec()),
        change_user_column: Some("last_name".into()),
        exclude: vec![cdc_audit::config::rules::Glob::new("*.skipme")],
        ..Rules::default()
    })
}

/// A fixture's key (if any) and value.
type Event = (Option<Vec<u8>>, Vec<u8>);

fn corpus() -> &'static Vec<Event> {
    static CORPUS: OnceLock<Vec<Event>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        crate::fixtures::fixtures()
            .into_iter()
            .filter_map(|f| Some((f.key, f.value?)))
            .collect()
    })
}

fn run(key: Option<Vec<u8>>, value: Option<Vec<u8>>) {
    let msg = message(key, value);
    for rules in [&Rules::default(), busy_rules()] {
        if let Outcome::Rejected(r) = transform(&msg, rules) {
            assert!(!r.error.is_empty());
        }
        describe(&msg, rules);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..512),
                                   key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
        run(key, Some(value));
    }

    #[test]
    fn json_shaped_text_never_panics(value in r#"\{("(op|before|after|source|payload|schema|ts_ms|transaction|ddl|status|id|patch|updateDescription)":(null|"[a-z]{0,3}"|-?[0-9]{1,20}|\{\}|\[\]|"\{\\"\$oid\\":1\}"|\{"scale":"x"\}),?){0,8}\}"#) {
        run(Some(br#"{"id":"{\"$oid\":\"x\"}"}"#.to_vec()), Some(value.into_bytes()));
    }

    #[test]
    fn mutated_debezium_events_never_panic(pick in any::<prop::sample::Index>(),
                                           cut in any::<prop::sample::Index>(),
                                           edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
                                           mutate_key in any::<bool>()) {
        let (key, value) = pick.get(corpus()).clone();
        let mutate = |mut bytes: Vec<u8>| {
            for (at, byte) in &edits {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = *byte;
                }
            }
            let keep = cut.index(bytes.len() + 1);
            bytes.truncate(keep.max(bytes.len() * 3 / 4));
            bytes
        };
        let (key, value) = if mutate_key { (key.map(mutate), value) } else { (key, mutate(value)) };
        run(key, Some(value));
    }
}
