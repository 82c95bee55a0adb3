//! Who made a change: the context an application attaches to its source transaction. On
//! PostgreSQL a transactional logical decoding message whose prefix is a context prefix
//! (`pg_logical_emit_message(true, 'audit', '{"user": "alice"}')`, as Bemi and Sequin do); on
//! MySQL with `include.query=true`, a comment in the statement (`/* audit {"user": "alice"} */`).
//! The context is stored on the row that carries it; changes meet their transaction's context
//! when the trail is read (the `audit_trail` view), so no writer ever waits for another partition.

use base64::Engine;
use serde_json::{Map, Value};

use super::json::Members;
use crate::config::rules::Rules;

/// A context as stored: the JSON object, and the actor field's value as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub json: String,
    pub actor: Option<String>,
}

/// What a message or statement says of its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    None,
    Context(Context),
    /// It is meant as context (the prefix or marker is there) but cannot be read; the row is
    /// stored all the same, with this reason in `change_detail.context_error`.
    Invalid(String),
}

/// The context of a PostgreSQL logical decoding message (`op: "m"`): its prefix must be a
/// context prefix, and it must belong to a transaction (a non-transactional message has no
/// `txId` and is an ordinary message).
pub fn from_message(message: &Members<'_>, source: &Members<'_>, rules: &Rules) -> Found {
    let Some(prefix) = message.text("prefix") else {
        return Found::None;
    };
    if !rules.context_prefixes.iter().any(|p| *p == prefix) || source.get("txId").is_none() {
        return Found::None;
    }
    let Some(content) = message.text("content") else {
        return Found::Invalid("the context message has no content".into());
    };
    let bytes = match base64::engine::general_purpose::STANDARD.decode(content.as_bytes()) {
        Ok(bytes) => bytes,
        Err(e) => {
            return Found::Invalid(format!("the context message's content is not base64: {e}"))
        }
    };
    match std::str::from_utf8(&bytes) {
        Ok(text) => object(text, rules),
        Err(e) => Found::Invalid(format!("the context message's content is not UTF-8: {e}")),
    }
}

/// The context in a statement's comment: `/* <prefix> {...} */`, the first context prefix found.
pub fn from_query(query: &str, rules: &Rules) -> Found {
    for prefix in &rules.context_prefixes {
        let mut rest = query;
        while let Some(at) = rest.find("/*") {
            let comment = &rest[at + 2..];
            let Some(end) = comment.find("*/") else {
                break;
            };
            let body = comment[..end].trim_start();
            if let Some(json) = body.strip_prefix(prefix.as_str()) {
                if json.starts_with(char::is_whitespace) || json.trim_start().starts_with('{') {
                    return object(json.trim(), rules);
                }
            }
            rest = &comment[end + 2..];
        }
    }
    Found::None
}

/// A context's text: it must be a JSON object.
fn object(text: &str, rules: &Rules) -> Found {
    match serde_json::from_str::<Map<String, Value>>(text) {
        Ok(fields) => {
            let actor = match fields.get(&rules.actor_field) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            };
            Found::Context(Context {
                json: Value::Object(fields).to_string(),
                actor,
            })
        }
        Err(e) => Found::Invalid(format!("the context is not a JSON object: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(json: &str) -> Members<'_> {
        Members::parse(json).unwrap()
    }

    fn context(json: &str, actor: Option<&str>) -> Found {
        Found::Context(Context {
            json: json.into(),
            actor: actor.map(String::from),
        })
    }

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn a_transactional_message_with_a_context_prefix_is_context() {
        let rules = Rules::default();
        let content = b64(r#"{"user": "alice", "request_id": "r-17"}"#);
        let message = format!(r#"{{"prefix": "audit", "content": "{content}"}}"#);
        let in_tx = members(r#"{"txId": 556, "lsn": 1}"#);
        assert_eq!(
            from_message(&members(&message), &in_tx, &rules),
            context(r#"{"request_id":"r-17","user":"alice"}"#, Some("alice"))
        );
        let outside = members(r#"{"txId": null, "lsn": 1}"#);
        assert_eq!(
            from_message(&members(&message), &outside, &rules),
            Found::None,
            "a non-transactional message is not context"
        );
        let other = format!(r#"{{"prefix": "outbox", "content": "{content}"}}"#);
        assert_eq!(from_message(&members(&other), &in_tx, &rules), Found::None);
    }

    #[test]
    fn the_actor_field_and_prefixes_are_settings_and_actors_may_be_numbers() {
        let rules = Rules {
            context_prefixes: vec!["ctx".into()],
            actor_field: "uid".into(),
            ..Rules::default()
        };
        let message = format!(
            r#"{{"prefix": "ctx", "content": "{}"}}"#,
            b64(r#"{"uid": 42}"#)
        );
        assert_eq!(
            from_message(&members(&message), &members(r#"{"txId": 1}"#), &rules),
            context(r#"{"uid":42}"#, Some("42"))
        );
    }

    #[test]
    fn unreadable_context_is_reported_not_dropped() {
        let rules = Rules::default();
        let tx = members(r#"{"txId": 1}"#);
        for (content, why) in [
            ("!!!", "not base64"),
            (b64("[1, 2]").as_str(), "not a JSON object"),
            (b64("user=alice").as_str(), "not a JSON object"),
        ] {
            let message = format!(r#"{{"prefix": "audit", "content": "{content}"}}"#);
            match from_message(&members(&message), &tx, &rules) {
                Found::Invalid(reason) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{content}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_statement_comment_with_the_marker_is_context() {
        let rules = Rules::default();
        let query = r#"/* audit {"user": "bob", "request_id": "r-9"} */ UPDATE customers SET email = 'b@x' WHERE id = 1004"#;
        assert_eq!(
            from_query(query, &rules),
            context(r#"{"request_id":"r-9","user":"bob"}"#, Some("bob"))
        );
        let trailing = r#"UPDATE t SET a = 1 /* trace 123 */ /*audit{"user":"carol"}*/"#;
        assert_eq!(
            from_query(trailing, &rules),
            context(r#"{"user":"carol"}"#, Some("carol"))
        );
        for plain in [
            "UPDATE t SET a = 1",
            "/* auditor {\"user\": \"x\"} */ UPDATE t SET a = 1",
            "UPDATE t SET note = '/* audit' WHERE id = 1",
        ] {
            assert_eq!(from_query(plain, &rules), Found::None, "{plain}");
        }
        assert!(matches!(
            from_query("/* audit {user: bob} */ DELETE FROM t", &rules),
            Found::Invalid(_)
        ));
    }
}
