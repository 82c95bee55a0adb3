//! The audit questions against an independent oracle: generated changes are written through the
//! real transform and writer, applied in the same order to a plain map, and the trail's answers
//! (as-of, history, diffs, the actor from the transaction's context) compared with the map's.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use serde_json::{json, Value};

use cdc_audit::config::rules::Rules;
use cdc_audit::query;
use cdc_audit::sink::{write_batch, Written};
use cdc_audit::transform::decode::iso_micros;
use cdc_audit::transform::transform;
use cdc_audit::types::{Batch, Message, Tp, Transformed};

use crate::util::{Dice, TestDb};

/// One Kafka record: key and value as Debezium's JSON converter writes them without schemas.
pub type Event = (Option<String>, String);

/// Writes `events` as one batch at the next offsets of `topic`'s partition 0.
pub fn write(db: &TestDb, topic: &str, events: &[Event]) {
    let topic: Arc<str> = Arc::from(topic);
    let mut client = db.client();
    let start: i64 = client
        .query_one(
            "SELECT coalesce(max(next_offset), 0) FROM audit_positions WHERE topic = $1",
            &[&&*topic],
        )
        .unwrap()
        .get(0);
    let messages: Vec<Message> = events
        .iter()
        .enumerate()
        .map(|(i, (key, value))| Message {
            topic: topic.clone(),
            partition: 0,
            offset: start + i as i64,
            timestamp_ms: None,
            key: key.clone().map(|s| s.into_bytes().into()),
            payload: Some(value.clone().into_bytes().into()),
            headers: Vec::new(),
        })
        .collect();
    let rules = Rules {
        change_user_column: Some("updated_by".into()),
        ..Rules::default()
    };
    let outcomes = messages.iter().map(|m| transform(m, &rules)).collect();
    let batch = Batch {
        id: 0,
        tp: Tp {
            topic,
            partition: 0,
        },
        epoch: 0,
        start: Some(start),
        end: start + events.len() as i64,
        holes: Vec::new(),
        bytes: messages.iter().map(Message::size).sum(),
        messages,
        created: Instant::now(),
    };
    let t = Transformed::new(batch, outcomes);
    match write_batch(&mut client, "g", &t, false).unwrap() {
        Written::Committed { rows, rejected, .. } => {
            assert!(rejected.is_empty(), "a generated event was rejected");
            assert!(rows <= events.len());
        }
        other => panic!("{other:?}"),
    }
}

/// A PostgreSQL connector's change event on `inventory.public.<table>`.
#[allow(clippy::too_many_arguments)]
pub fn change(
    table: &str,
    op: &str,
    key: Option<i64>,
    before: Option<&Value>,
    after: Option<&Value>,
    ts_us: i64,
    lsn: i64,
    tx: i64,
    snapshot: &str,
) -> Event {
    let value = json!({
        "before": before, "after": after, "op": op, "ts_ms": ts_us / 1000 + 5,
        "source": {"version": "2.7.3.Final", "connector": "postgresql", "name": "pg",
                   "ts_ms": ts_us / 1000, "ts_us": ts_us, "snapshot": snapshot, "db": "inventory",
                   "schema": "public", "table": table, "txId": tx, "lsn": lsn}
    });
    (
        key.map(|k| json!({ "id": k }).to_string()),
        value.to_string(),
    )
}

/// A transactional logical decoding message with prefix `audit` and this context.
pub fn context_message(context: &Value, ts_us: i64, lsn: i64, tx: i64) -> Event {
    let content = base64::engine::general_purpose::STANDARD.encode(context.to_string());
    let value = json!({
        "op": "m", "ts_ms": ts_us / 1000,
        "source": {"version": "2.7.3.Final", "connector": "postgresql", "name": "pg",
                   "ts_ms": ts_us / 1000, "ts_us": ts_us, "snapshot": "false", "db": "inventory",
                   "schema": "", "table": "", "txId": tx, "lsn": lsn},
        "message": {"prefix": "audit", "content": content}
    });
    (Some(r#"{"prefix":"audit"}"#.into()), value.to_string())
}

/// The oracle: the table as a map, after each event; the time of each event.
struct Oracle {
    table: BTreeMap<i64, Value>,
    /// (time, the whole table just after the event at that time)
    moments: Vec<(i64, BTreeMap<i64, Value>)>,
    /// Per key, its changes: (operation, row after or before, the columns an update changed).
    history: BTreeMap<i64, Vec<(String, Value, Vec<String>)>>,
}

impl Oracle {
    /// A row read by the snapshot (`r`) or inserted (`c`): its event, and the map's new state.
    fn put(
        &mut self,
        events: &mut Vec<Event>,
        op: &str,
        id: i64,
        row: Value,
        at: (i64, i64, i64),
        marker: &str,
    ) {
        let (ts, lsn, tx) = at;
        events.push(change(
            "items",
            op,
            Some(id),
            None,
            Some(&row),
            ts,
            lsn,
            tx,
            marker,
        ));
        let name = if op == "r" { "READ" } else { "INSERT" };
        self.table.insert(id, row.clone());
        self.history
            .entry(id)
            .or_default()
            .push((name.into(), row, vec![]));
    }
}

pub const T0: i64 = 1_790_000_000_000_000; // 2026-09-21, in microseconds

fn row(id: i64, rng: &mut Dice) -> Value {
    let by = ["app", "batch"][rng.roll(2) as usize];
    json!({"id": id, "name": format!("item-{}", rng.roll(1000)),
           "price": rng.roll(10_000) as f64 / 100.0, "stock": rng.roll(50), "updated_by": by})
}

/// Generates a snapshot, then inserts, updates, deletes, keys inserted again after their delete,
/// and a truncate followed in its own transaction by an insert; writes them in batches.
fn generate_and_write(db: &TestDb) -> Oracle {
    let mut rng = Dice(0x9e37_79b9_7f4a_7c15);
    let mut oracle = Oracle {
        table: BTreeMap::new(),
        moments: Vec::new(),
        history: BTreeMap::new(),
    };
    let mut events = Vec::new();
    let (mut ts, mut lsn, mut tx) = (T0, 1_000_000, 700);
    let mut deleted: Vec<i64> = Vec::new();
    let mut next_id = 1;
    let record = |oracle: &mut Oracle, ts: i64| {
        oracle.moments.push((ts, oracle.table.clone()));
    };
    // The snapshot: twenty rows, the last one marked as such.
    for i in 0..20 {
        let r = row(next_id, &mut rng);
        let marker = match i {
            0 => "first",
            19 => "last",
            _ => "true",
        };
        ts += 1_000;
        lsn += 10;
        oracle.put(&mut events, "r", next_id, r, (ts, lsn, tx), marker);
        record(&mut oracle, ts);
        next_id += 1;
    }
    for step in 0..400 {
        ts += 1_000 + rng.roll(2_000) as i64;
        lsn += 100;
        tx += 1;
        if step == 250 {
            // TRUNCATE, and in the same transaction (same commit time) an insert after it.
            events.push(change("items", "t", None, None, None, ts, lsn, tx, "false"));
            oracle.table.clear();
            deleted.extend(oracle.history.keys().copied());
            let r = row(next_id, &mut rng);
            lsn += 10;
            oracle.put(&mut events, "c", next_id, r, (ts, lsn, tx), "false");
            next_id += 1;
            record(&mut oracle, ts);
            continue;
        }
        let live: Vec<i64> = oracle.table.keys().copied().collect();
        let choice = rng.roll(10);
        match choice {
            // An insert: a new key, or one deleted before (inserted again).
            _ if live.is_empty() || choice < 3 || (live.len() < 5 && choice < 6) => {
                let id = if !deleted.is_empty() && rng.roll(3) == 0 {
                    deleted.swap_remove(rng.roll(deleted.len() as u64) as usize)
                } else {
                    next_id += 1;
                    next_id - 1
                };
                let r = row(id, &mut rng);
                oracle.put(&mut events, "c", id, r, (ts, lsn, tx), "false");
            }
            3..=7 => {
                let id = live[rng.roll(live.len() as u64) as usize];
                let old = oracle.table[&id].clone();
                let mut new = old.clone();
                let mut changed = Vec::new();
                for column in ["name", "price", "stock"] {
                    if rng.roll(2) == 0 {
                        let fresh = row(id, &mut rng)[column].clone();
                        if fresh != old[column] {
                            changed.push(column.to_string());
                        }
                        new[column] = fresh;
                    }
                }
                // Half the updates come without a before image (PostgreSQL's default replica
                // identity): the diff is then taken against the version before it.
                let before = (rng.roll(2) == 0).then_some(&old);
                events.push(change(
                    "items",
                    "u",
                    Some(id),
                    before,
                    Some(&new),
                    ts,
                    lsn,
                    tx,
                    "false",
                ));
                oracle.table.insert(id, new.clone());
                oracle
                    .history
                    .entry(id)
                    .or_default()
                    .push(("UPDATE".into(), new, changed));
            }
            _ => {
                let id = live[rng.roll(live.len() as u64) as usize];
                let old = oracle.table.remove(&id).unwrap();
                events.push(change(
                    "items",
                    "d",
                    Some(id),
                    Some(&old),
                    None,
                    ts,
                    lsn,
                    tx,
                    "false",
                ));
                oracle
                    .history
                    .entry(id)
                    .or_default()
                    .push(("DELETE".into(), old, vec![]));
                deleted.push(id);
            }
        }
        record(&mut oracle, ts);
    }
    for chunk in events.chunks(97) {
        write(db, "pg.inventory.items", chunk);
    }
    oracle
}

fn as_of_map(client: &mut postgres::Client, at_us: i64) -> (BTreeMap<i64, Value>, query::AsOf) {
    let answer = query::as_of(client, "items", &iso_micros(at_us), None).unwrap();
    let map = answer
        .rows
        .iter()
        .map(|r| {
            (
                r["primary_key"]["id"].as_i64().unwrap(),
                r["row_data"].clone(),
            )
        })
        .collect();
    (map, answer)
}

#[test]
fn as_of_and_history_agree_with_an_independent_replay() {
    let db = TestDb::new("asof");
    db.migrate();
    let oracle = generate_and_write(&db);
    let mut client = db.client();
    query::prepare(&mut client).unwrap();

    // Every tenth moment, the moment of the truncate, and between two events.
    let truncate_at = oracle.moments[20 + 250].0;
    let mut checked = 0;
    for (i, (at, expected)) in oracle.moments.iter().enumerate() {
        if i % 10 != 0 && *at != truncate_at && i + 1 != oracle.moments.len() {
            continue;
        }
        let (found, answer) = as_of_map(&mut client, *at);
        assert_eq!(&found, expected, "the table as of moment {i} ({at})");
        let (between, _) = as_of_map(&mut client, at + 500);
        assert_eq!(&between, expected, "half a millisecond after moment {i}");
        let (basis, from) = match i {
            0..=18 => ("none", None),
            _ if *at < truncate_at => ("snapshot", Some(oracle.moments[19].0)),
            _ => ("truncate", Some(truncate_at)),
        };
        assert_eq!(answer.basis, basis, "the basis at moment {i}");
        assert_eq!(
            answer.reliable_from,
            from.map(iso_utc),
            "reliable from, at moment {i}"
        );
        checked += 1;
    }
    assert!(checked > 40);
    let (before_all, answer) = as_of_map(&mut client, T0);
    assert!(before_all.is_empty() && answer.basis == "none");

    // One row with --key, and a key of no row at that moment.
    let (at, table) = &oracle.moments[200];
    let (&id, expected) = table.iter().nth(3).unwrap();
    let one = query::as_of(&mut client, "items", &iso_micros(*at), Some(&json!(id))).unwrap();
    assert_eq!(one.rows.len(), 1);
    assert_eq!(&one.rows[0]["row_data"], expected);

    // Each key's history: the same operations and images, in source order, with the columns
    // each update changed (against the version before it when there was no before image).
    for (id, changes) in &oracle.history {
        let h = query::history(&mut client, "public.items", &json!({ "id": id }), 1000).unwrap();
        assert_eq!(h.total as usize, changes.len(), "key {id}");
        for (got, (op, image, changed)) in h.changes.iter().zip(changes) {
            assert_eq!(got["operation_type"], json!(op), "key {id}");
            let image_field = if op == "DELETE" {
                "old_data"
            } else {
                "new_data"
            };
            assert_eq!(&got[image_field], image, "key {id}, {op}");
            if op == "UPDATE" {
                let diff: Vec<String> = got["changes"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect();
                assert_eq!(&diff, changed, "key {id}: the columns the update changed");
            }
        }
    }
    let limited = query::history(&mut client, "items", &json!(1), 2).unwrap();
    assert_eq!(limited.changes.len(), 2.min(oracle.history[&1].len()));
    assert_eq!(
        limited.changes.last().unwrap()["operation_type"],
        json!(oracle.history[&1].last().unwrap().0),
        "the limit keeps the last changes"
    );
}

/// `2026-09-21T...+00:00`, as PostgreSQL's to_jsonb writes a timestamptz in UTC.
fn iso_utc(us: i64) -> String {
    let iso = iso_micros(us);
    let iso = iso.trim_end_matches('Z');
    let text = match iso.split_once('.') {
        Some((seconds, fraction)) if fraction.trim_end_matches('0').is_empty() => seconds.into(),
        Some((seconds, fraction)) => format!("{seconds}.{}", fraction.trim_end_matches('0')),
        None => iso.to_string(),
    };
    format!("{text}+00:00")
}

#[test]
fn context_names_the_actor_of_its_own_transaction_only() {
    let db = TestDb::new("context");
    db.migrate();
    let customer = |id: i64, email: &str| json!({"id": id, "email": email, "updated_by": "pool"});
    let (a, b) = (
        json!({"user": "alice", "request_id": "r-1"}),
        json!({"user": "bob", "request_id": "r-2"}),
    );
    // Two transactions interleave; their context messages arrive on another topic, one of
    // them after the changes it describes.
    let update = |id: i64, email: &str, at: i64, tx: i64| {
        let after = customer(id, email);
        change(
            "customers",
            "u",
            Some(id),
            None,
            Some(&after),
            T0 + at,
            100 + at,
            tx,
            "false",
        )
    };
    let changes = [
        update(1, "a1", 10, 801),
        update(2, "b1", 20, 802),
        update(1, "a2", 30, 801),
        update(2, "b2", 40, 802),
        // No context: the change-user column names who did it.
        update(3, "c1", 50, 803),
    ];
    write(&db, "pg.inventory.customers", &changes);
    write(&db, "pg.message", &[context_message(&a, T0 + 5, 105, 801)]);
    write(
        &db,
        "pg.message",
        &[
            context_message(&b, T0 + 15, 115, 802),
            // A second message in one transaction: a later field wins, the others stay.
            context_message(
                &json!({"request_id": "r-2b", "reason": "refund"}),
                T0 + 45,
                145,
                802,
            ),
        ],
    );
    let mut c = db.client();
    let rows: Vec<(String, String, Option<String>, Option<String>)> = c
        .query(
            "SELECT new_data ->> 'email', actor, context ->> 'request_id', context ->> 'reason' \
               FROM audit_trail ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let row = |email: &str, actor: &str, request: Option<&str>, reason: Option<&str>| {
        (
            email.to_string(),
            actor.to_string(),
            request.map(String::from),
            reason.map(String::from),
        )
    };
    assert_eq!(
        rows,
        [
            row("a1", "alice", Some("r-1"), None),
            row("b1", "bob", Some("r-2b"), Some("refund")),
            row("a2", "alice", Some("r-1"), None),
            row("b2", "bob", Some("r-2b"), Some("refund")),
            row("c1", "pool", None, None),
        ],
        "each change has its own transaction's context, and no other"
    );
    // The messages themselves are context, not changes.
    let messages: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_trail WHERE operation_type = 'MESSAGE'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(messages, 0);

    query::prepare(&mut c).unwrap();
    let t = query::transaction(&mut c, "801").unwrap();
    assert_eq!(t.changes.len(), 2);
    assert!(t.changes.iter().all(|ch| ch["actor"] == json!("alice")));
    assert_eq!(
        t.changes[1]["changes"],
        json!({"email": {"old": "a1", "new": "a2"}}),
        "an update without a before image is diffed against the version before it"
    );
    let found = query::transactions_by_context(&mut c, "request_id", "r-2b").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["transaction_id"], json!("802"));
    assert!(query::transactions_by_context(&mut c, "request_id", "r-3")
        .unwrap()
        .is_empty());
}

#[test]
fn a_mysql_statement_comment_is_the_context_of_its_row() {
    let db = TestDb::new("mysqlctx");
    db.migrate();
    let event = |id: i64, query: &str| {
        let value = json!({
            "before": null, "after": {"id": id}, "op": "c", "ts_ms": 1_700_000_000_000_i64,
            "source": {"version": "2.7.3.Final", "connector": "mysql", "name": "my", "ts_ms": 1_700_000_000_000_i64,
                       "snapshot": "false", "db": "shop", "table": "orders", "server_id": 223344,
                       "file": "mysql-bin.000003", "pos": 154 + id, "row": 0, "query": query}
        });
        (Some(json!({ "id": id }).to_string()), value.to_string())
    };
    write(
        &db,
        "my.shop.orders",
        &[
            event(
                1,
                r#"/* audit {"user": "erin", "request_id": "r-7"} */ INSERT INTO orders VALUES (1)"#,
            ),
            event(2, "INSERT INTO orders VALUES (2)"),
        ],
    );
    let actors: Vec<Option<String>> = db
        .client()
        .query("SELECT actor FROM audit_trail ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actors, [Some("erin".to_string()), None]);
}

/// The binary, as a user runs it against `db`.
fn cdc_audit(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
        .args(args)
        .env_clear()
        .envs(crate::util::coverage_env())
        .env("CDC_AUDIT_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_answers_and_names_what_is_wrong_with_a_question() {
    let db = TestDb::new("askcli");
    db.migrate();
    let c = |id: i64, email: &str| json!({"id": id, "email": email, "bio": "long", "updated_by": "pool"});
    let mut toast = c(7, "x2");
    toast["bio"] = json!("__debezium_unavailable_value");
    write(
        &db,
        "pg.inventory.customers",
        &[
            change(
                "customers",
                "c",
                Some(7),
                None,
                Some(&c(7, "x1")),
                T0 + 10,
                10,
                901,
                "false",
            ),
            change(
                "customers",
                "u",
                Some(7),
                Some(&c(7, "x1")),
                Some(&toast),
                T0 + 20,
                20,
                902,
                "false",
            ),
        ],
    );
    write(
        &db,
        "pg.message",
        &[context_message(
            &json!({"user": "alice", "request_id": "r-17"}),
            T0 + 19,
            19,
            902,
        )],
    );
    // The same table name in another database: the bare name is then ambiguous.
    let other = change(
        "customers",
        "c",
        Some(1),
        None,
        Some(&c(1, "o")),
        T0 + 30,
        30,
        903,
        "false",
    );
    write(
        &db,
        "pg2.inventory.customers",
        &[(other.0, other.1.replace("\"inventory\"", "\"crm\""))],
    );

    let (ok, out, err) = cdc_audit(&db, &["history", "inventory.public.customers", "7"]);
    assert!(ok, "{err}");
    assert!(out.contains("2 changes"), "{out}");
    assert!(out.contains("UPDATE  by alice  tx 902"), "{out}");
    assert!(out.contains("email: \"x1\" -> \"x2\""), "{out}");
    assert!(out.contains("bio: unchanged, not sent"), "{out}");
    assert!(
        !out.contains("bio: \""),
        "an unsent column is not a change: {out}"
    );

    let (ok, out, _) = cdc_audit(
        &db,
        &[
            "history",
            "inventory.public.customers",
            "{\"id\": 7}",
            "--format",
            "json",
        ],
    );
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        ok && json["changes"][1]["changes"]["email"]["new"] == json!("x2"),
        "{out}"
    );

    let (ok, out, err) = cdc_audit(
        &db,
        &["as-of", "inventory.customers", "--at", &iso_micros(T0 + 15)],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("1 rows")
            && out.contains("\"x1\"")
            && out.contains("not known to be complete"),
        "{out}"
    );

    let (ok, out, err) = cdc_audit(&db, &["transaction", "--context", "request_id=r-17"]);
    assert!(
        ok && out.contains("tx 902") && out.contains("alice"),
        "{out}{err}"
    );
    let (ok, out, _) = cdc_audit(&db, &["transaction", "902"]);
    assert!(
        ok && out.contains("context {\"request_id\":\"r-17\",\"user\":\"alice\"}"),
        "{out}"
    );

    let (ok, out, _) = cdc_audit(&db, &["tables"]);
    assert!(
        ok && out.contains("crm.public.customers") && out.contains("inventory.public.customers"),
        "{out}"
    );

    for (args, expect) in [
        (&["history", "nosuch", "1"][..], "unknown table \"nosuch\""),
        (&["history", "customers", "1"][..], "ambiguous table \"customers\": it could be crm.public.customers, inventory.public.customers"),
        (&["history", "inventory.customers", "{\"id\": 7"][..], "is not JSON of a key"),
        (&["as-of", "inventory.public.customers", "--at", "yesterday-ish"][..], "--at \"yesterday-ish\" is not a time"),
        (&["history", "inventory.public.customers", "7", "--limit", "0"][..], "limit 0 is out of range"),
        (&["transaction", "--context", "request_id"][..], "is not FIELD=VALUE"),
        (&["history", "inventory.public.customers", "7", "--format", "yaml"][..], "invalid value 'yaml' for '--format"),
    ] {
        let (ok, out, err) = cdc_audit(&db, args);
        assert!(!ok, "{args:?} should fail: {out}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_select_only_reader_can_ask_every_question() {
    let db = TestDb::new("reader");
    db.migrate();
    let role = format!("reader_{}", db.name);
    let sql =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/roles.sql")).unwrap();
    let sql = sql
        .replace("cdc_audit_reader", &role)
        .replace("cdc_audit_service", &format!("svc_{}", db.name));
    db.client().batch_execute(&sql).unwrap();
    write(
        &db,
        "pg.inventory.customers",
        &[change(
            "customers",
            "c",
            Some(1),
            None,
            Some(&json!({"id": 1})),
            T0,
            1,
            1,
            "false",
        )],
    );
    let mut config: postgres::Config = db.url.parse().unwrap();
    config.user(&role);
    config.dbname(&db.name);
    let mut reader = config.connect(postgres::NoTls).unwrap();
    query::prepare(&mut reader).unwrap();
    assert_eq!(
        query::history(&mut reader, "customers", &json!(1), 10)
            .unwrap()
            .total,
        1
    );
    assert_eq!(
        query::as_of(&mut reader, "customers", "2030-01-01", None)
            .unwrap()
            .rows
            .len(),
        1
    );
    assert!(query::transaction(&mut reader, "1").is_ok());
    let refused = reader.batch_execute("INSERT INTO audit_gaps (consumer_group, kafka_topic, kafka_partition, first_offset, end_offset) VALUES ('g', 't', 0, 1, 2)");
    assert!(
        format!("{refused:?}").contains("permission denied"),
        "{refused:?}"
    );
    let hidden = reader.query("SELECT count(*) FROM audit_rejections", &[]);
    assert!(
        format!("{hidden:?}").contains("permission denied"),
        "raw rejected messages are not the reader's"
    );
    drop(reader);
    for r in [role, format!("svc_{}", db.name)] {
        db.client()
            .batch_execute(&format!("DROP OWNED BY {r}; DROP ROLE {r}"))
            .unwrap();
    }
}
