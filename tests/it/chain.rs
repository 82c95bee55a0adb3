//! The trail's hash chain. What the service hashes is what PostgreSQL gives back (PostgreSQL is
//! the oracle); `verify` finds each kind of tampering a superuser can do and names the row; a
//! digest signed outside the database catches a chain recomputed consistently; replays and
//! purges of rejections keep it verifiable.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use cdc_audit::chain::{self, Hash, Kind};
use cdc_audit::config::rules::Rules;
use cdc_audit::integrity::{self, Digest, Problem, Report, Scope, SigningKey};
use cdc_audit::pgcopy::jsonb::{canonical, write_canonical_split};
use cdc_audit::sink::{self, copy_rows, write_batch, Target, Tuples, AUDIT, TRANSACTIONS};
use cdc_audit::transform::json::Members;
use cdc_audit::transform::transform;
use cdc_audit::types::{Batch, Message, Outcome, Tp, Transformed};

use crate::fixtures::{fixtures, message};
use crate::util::{assert_chains_intact, ed25519_key, generate, openssl, tempdir, Dice, TestDb};

/// Every fixture's row, COPYed in and read back with binary `COPY ... TO`, is the bytes the
/// service hashed: its `jsonb` in PostgreSQL's printed form, every other field as stored.
#[test]
fn every_fixture_comes_back_from_postgresql_byte_for_byte() {
    let db = TestDb::new("chain_bytes");
    db.migrate();
    let mut c = db.client();
    let rules = Rules::default();
    let mut sent: Vec<(Target, i64, String, Vec<u8>)> = Vec::new();
    for (offset, f) in fixtures().iter().enumerate() {
        let msg = message(f, offset as i64);
        match transform(&msg, &rules) {
            Outcome::Row(row) => sent.push((AUDIT, msg.offset, f.name.clone(), row.bytes.to_vec())),
            Outcome::Transaction(row) => {
                sent.push((TRANSACTIONS, msg.offset, f.name.clone(), row.bytes.to_vec()))
            }
            _ => {}
        }
    }
    assert!(sent.len() >= 50, "only {} fixtures become rows", sent.len());
    let suffix = chain::suffix(0, 1, &[0; 32]);
    let mut tx = c.transaction().unwrap();
    for (target, _, _, bytes) in &sent {
        copy_rows(
            &mut tx,
            *target,
            std::iter::once((bytes.as_slice(), &suffix[..])),
        )
        .unwrap();
    }
    tx.commit().unwrap();
    for target in [AUDIT, TRANSACTIONS] {
        let sql = sink::copy_out(target, "kafka_offset", "ORDER BY kafka_offset");
        let mut back = Tuples::new(c.copy_out(&sql).unwrap());
        for (_, offset, name, bytes) in sent.iter().filter(|s| s.0.table == target.table) {
            let (_, fields) = back.next_tuple().unwrap().expect("every row comes back");
            let (stored_offset, rest) = sink::field(fields).unwrap();
            assert_eq!(stored_offset, Some(&offset.to_be_bytes()[..]));
            // Past the chain's three fields: the row's own, as it was sent.
            let mut own = rest;
            for _ in 0..3 {
                own = sink::field(own).unwrap().1;
            }
            assert!(
                own == &bytes[2..],
                "{name}: stored {:?}\n  sent {:?}",
                String::from_utf8_lossy(own),
                String::from_utf8_lossy(&bytes[2..])
            );
        }
    }
}

/// Random JSON, written every way JSON allows (escapes, exponents, duplicate keys, spacing):
/// the canonical text is what PostgreSQL prints for it as `jsonb`, or refused when it refuses;
/// and so is the text written from an object's members as the transform's reader split them.
#[test]
fn canonical_json_is_what_postgresql_prints_for_jsonb() {
    let db = TestDb::new("chain_canon");
    let mut c = db.client();
    let mut dice = Dice(0x5eed_cafe);
    let mut texts: Vec<String> = (0..3000).map(|_| json_value(&mut dice, 0)).collect();
    // Row images and sources: objects of scalars only, which `jsonb` writes by a path of its own.
    texts.extend((0..1500).map(|_| {
        let n = dice.roll(14);
        let members: Vec<String> = (0..n)
            .map(|_| {
                let key = KEYS[dice.roll(KEYS.len() as u64) as usize];
                let key = escape(&mut dice, key);
                format!("{key}:{}", json_value(&mut dice, 4))
            })
            .collect();
        format!("{{{}}}", members.join(","))
    }));
    let (mut checked, mut split) = (0, 0);
    for text in &texts {
        let pg: Result<String, _> = c
            .query_one("SELECT $1::text::jsonb::text", &[text])
            .map(|r| r.get(0));
        // First, so that the order of its keys is not one `canonical` has just worked out.
        if let Some((members, raw)) = Members::scan_whole(text) {
            let mut out = Vec::new();
            let written = write_canonical_split(&mut out, raw.get(), members.spans());
            match (written, &pg) {
                (true, Ok(theirs)) => {
                    assert_eq!(String::from_utf8_lossy(&out), *theirs, "split {text}");
                    split += 1;
                }
                (false, Err(_)) => {}
                (ours, theirs) => panic!("split {text}: ours {ours:?}, PostgreSQL's {theirs:?}"),
            }
        }
        match (canonical(text), &pg) {
            (Some(ours), Ok(theirs)) => {
                assert_eq!(&ours, theirs, "input {text}");
                checked += 1;
            }
            (None, Err(_)) => {}
            (ours, theirs) => panic!("input {text}: ours {ours:?}, PostgreSQL's {theirs:?}"),
        }
    }
    assert!(checked > 3800, "only {checked} accepted");
    assert!(
        split > 1500,
        "only {split} objects written from their members"
    );
}

/// Object keys: equal lengths, equal prefixes, escapes, the empty key.
const KEYS: [&str; 12] = [
    "id",
    "a",
    "b",
    "email",
    "first_name",
    "first_namd",
    "é",
    "ab",
    "ba",
    "a\"b",
    "",
    "x\ny",
];

/// A JSON text with spacing, escapes and number forms chosen at random.
fn json_value(d: &mut Dice, depth: u32) -> String {
    let ws = |d: &mut Dice| [" ", "", "", "\n ", "\t"][d.roll(5) as usize].to_string();
    match d.roll(if depth > 3 { 4 } else { 6 }) {
        0 => json_number(d),
        1 => json_string(d),
        2 => ["true", "false", "null"][d.roll(3) as usize].into(),
        3 => json_number(d),
        4 => {
            let n = d.roll(5);
            let items: Vec<String> = (0..n).map(|_| json_value(d, depth + 1)).collect();
            format!("[{}{}]", items.join(&format!(",{}", ws(d))), ws(d))
        }
        _ => {
            let n = d.roll(6);
            let members: Vec<String> = (0..n)
                .map(|_| {
                    let key = KEYS[d.roll(KEYS.len() as u64) as usize];
                    format!(
                        "{}{}:{}{}",
                        escape(d, key),
                        ws(d),
                        ws(d),
                        json_value(d, depth + 1)
                    )
                })
                .collect();
            format!("{{{}{}}}", ws(d), members.join(","))
        }
    }
}

fn json_number(d: &mut Dice) -> String {
    let mut s = String::new();
    if d.roll(3) == 0 {
        s.push('-');
    }
    let digits = |d: &mut Dice, n: u64| -> String {
        (0..n)
            .map(|_| char::from(b'0' + d.roll(10) as u8))
            .collect()
    };
    match d.roll(4) {
        0 => s.push('0'),
        _ => {
            s.push(char::from(b'1' + d.roll(9) as u8));
            let n = d.roll(12);
            s.push_str(&digits(d, n));
        }
    }
    if d.roll(2) == 0 {
        s.push('.');
        let n = 1 + d.roll(8);
        s.push_str(&digits(d, n));
    }
    if d.roll(3) == 0 {
        s.push(if d.roll(2) == 0 { 'e' } else { 'E' });
        s.push_str(["", "+", "-"][d.roll(3) as usize]);
        s.push_str(&d.roll(40).to_string());
    }
    s
}

fn json_string(d: &mut Dice) -> String {
    let chars = [
        'a', 'z', ' ', '"', '\\', '/', '\n', '\t', '\u{1}', '\u{1f}', '\u{7f}', 'é', '€', '😀',
        '\u{2028}',
    ];
    let n = d.roll(8);
    let text: String = (0..n)
        .map(|_| chars[d.roll(chars.len() as u64) as usize])
        .collect();
    let s = escape(d, &text);
    // Now and then an escape PostgreSQL refuses.
    match d.roll(40) {
        0 => s.replacen('"', "\"\\u0000", 1),
        1 => s.replacen('"', "\"\\udc00", 1),
        _ => s,
    }
}

/// `text` as a JSON string, each character written raw or as an escape, at random.
fn escape(d: &mut Dice, text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        let must = c == '"' || c == '\\' || (c as u32) < 0x20;
        match (must, d.roll(3)) {
            (false, 0 | 1) => out.push(c),
            (_, 2) if (c as u32) > 0xffff => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04X}", u));
                }
            }
            (_, 2) => out.push_str(&format!("\\u{:04x}", c as u32)),
            _ => out.push_str(&match c {
                '"' => "\\\"".to_string(),
                '\\' => "\\\\".to_string(),
                '\n' => "\\n".to_string(),
                '\t' => "\\t".to_string(),
                '/' => "\\/".to_string(),
                c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
                c => c.to_string(),
            }),
        }
    }
    out.push('"');
    out
}

const TOPIC: &str = "chain.inventory.customers";

/// A trail written by the writers' own transaction: two partitions, a poison message (a
/// rejection), a row PostgreSQL refuses (isolated into a rejection), a hole (a gap), a
/// redelivered batch (written nothing), in batches of 25.
fn build_trail(db: &TestDb) {
    build_trail_with(db, "SELECT 1");
}

/// `build_trail`, with `sql` run on the fresh schema first.
fn build_trail_with(db: &TestDb, sql: &str) {
    db.migrate();
    db.client().batch_execute(sql).unwrap();
    write_trail(db);
}

/// The trail of `build_trail`, into a database whose schema is there.
pub fn write_trail(db: &TestDb) {
    let mut c = db.client();
    let rules = Rules::default();
    let records = generate("chain", 3, 240);
    for partition in 0..2 {
        let mut messages: Vec<Message> = records
            .iter()
            .filter(|r| r.value.is_some())
            .skip(partition as usize)
            .step_by(2)
            .enumerate()
            .map(|(i, r)| Message {
                topic: Arc::from(TOPIC),
                partition,
                // A hole at offsets 40..43.
                offset: i as i64 + if i >= 40 { 3 } else { 0 },
                timestamp_ms: Some(1_700_000_000_000 + i as i64),
                key: r.key.clone().map(|s| s.into_bytes().into()),
                payload: r.value.clone().map(|s| s.into_bytes().into()),
                headers: vec![("h".into(), Some(b"v".to_vec()))],
            })
            .collect();
        messages[7].payload = Some(b"not json".to_vec().into());
        // Valid JSON that jsonb refuses: a lone UTF-16 surrogate escape.
        let image = b"\"after\":{";
        let i = (10..)
            .find(|&i| {
                messages[i]
                    .payload
                    .as_ref()
                    .is_some_and(|p| p.windows(image.len()).any(|w| w == image))
            })
            .unwrap();
        let refused = String::from_utf8(messages[i].payload.as_deref().unwrap().to_vec()).unwrap();
        messages[i].payload = Some(
            refused
                .replacen("\"after\":{", "\"after\":{\"bad\":\"\\ud800\",", 1)
                .into_bytes()
                .into(),
        );
        let mut start = 0;
        for chunk in messages.chunks(25) {
            let end = chunk.last().unwrap().offset + 1;
            let t = Transformed::new(
                Batch {
                    id: 0,
                    tp: Tp {
                        topic: Arc::from(TOPIC),
                        partition,
                    },
                    epoch: 0,
                    start: Some(start),
                    end,
                    holes: Vec::new(),
                    messages: chunk.to_vec(),
                    bytes: 0,
                    created: Instant::now(),
                },
                chunk.iter().map(|m| transform(m, &rules)).collect(),
            );
            write_batch(&mut c, "g", &t, true).unwrap();
            // Delivered again: the fence writes nothing, the chain does not move.
            write_batch(&mut c, "g", &t, true).unwrap();
            start = end;
        }
    }
}

fn verify(db: &TestDb, scope: &Scope) -> Report {
    integrity::verify(|| Ok(db.client()), scope).unwrap()
}

/// The chain that broke, and how.
fn broken(report: &Report) -> &integrity::Break {
    let broken: Vec<_> = report
        .chains
        .iter()
        .filter_map(|c| c.broken.as_ref())
        .collect();
    assert_eq!(broken.len(), 1, "{report}");
    broken[0]
}

/// Runs SQL as a superuser with every trigger off: what tampering looks like.
fn tamper(db: &TestDb, sql: &str) {
    db.client()
        .batch_execute(&format!(
            "SET session_replication_role = replica; {sql}; SET session_replication_role = origin"
        ))
        .unwrap();
}

fn id_at(db: &TestDb, table: &str, partition: i32, offset: i64) -> i64 {
    db.client()
        .query_one(
            &format!("SELECT id FROM {table} WHERE kafka_partition = $1 AND kafka_offset = $2"),
            &[&partition, &offset],
        )
        .unwrap()
        .get(0)
}

#[test]
fn an_untouched_trail_verifies_and_every_row_is_a_link() {
    let db = TestDb::new("chain_intact");
    build_trail(&db);
    let report = assert_chains_intact(&db);
    let count = |sql: &str| -> i64 { db.client().query_one(sql, &[]).unwrap().get(0) };
    let rows = count("SELECT count(*) FROM audit_logging")
        + count("SELECT count(*) FROM audit_rejections")
        + count("SELECT count(*) FROM audit_gaps");
    assert_eq!(report.chains.len(), 2, "{report}");
    assert_eq!(report.links(), rows);
    assert_eq!(
        count("SELECT count(*) FROM audit_rejections"),
        4,
        "a poison and a refused row per partition"
    );
    assert_eq!(count("SELECT count(*) FROM audit_gaps"), 2);
    let unlinked = count(
        "SELECT count(*) FROM (SELECT chain_seq FROM audit_logging UNION ALL \
         SELECT chain_seq FROM audit_rejections UNION ALL SELECT chain_seq FROM audit_gaps) x \
         WHERE chain_seq IS NULL",
    );
    assert_eq!(unlinked, 0);
}

#[test]
fn a_changed_value_is_found_and_named() {
    let db = TestDb::new("chain_changed");
    build_trail(&db);
    let id = id_at(&db, "audit_logging", 1, 30);
    tamper(
        &db,
        &format!("UPDATE audit_logging SET change_user = 'mallory' WHERE id = {id}"),
    );
    let report = verify(&db, &Scope::default());
    let b = broken(&report);
    assert_eq!(
        (b.problem, b.table, b.id, b.offset),
        (Problem::Changed, Some("audit_logging"), Some(id), Some(30)),
        "{report}"
    );
    assert!(!report.intact());
}

#[test]
fn a_changed_time_or_gap_is_found() {
    let db = TestDb::new("chain_time");
    build_trail(&db);
    tamper(&db, "UPDATE audit_logging SET ingested_at = ingested_at - interval '1 day' WHERE kafka_partition = 0 AND kafka_offset = 3");
    tamper(
        &db,
        "UPDATE audit_gaps SET end_offset = end_offset - 1 WHERE kafka_partition = 1",
    );
    let report = verify(&db, &Scope::default());
    let problems: Vec<_> = report
        .chains
        .iter()
        .map(|c| c.broken.as_ref().map(|b| (b.problem, b.table, b.offset)))
        .collect();
    assert_eq!(
        problems,
        [
            Some((Problem::Changed, Some("audit_logging"), Some(3))),
            Some((Problem::Changed, Some("audit_gaps"), Some(40)))
        ],
        "{report}"
    );
}

#[test]
fn a_deleted_row_is_found_and_the_row_after_it_named() {
    let db = TestDb::new("chain_deleted");
    build_trail(&db);
    tamper(
        &db,
        "DELETE FROM audit_logging WHERE kafka_partition = 0 AND kafka_offset = 20",
    );
    let report = verify(&db, &Scope::default());
    let b = broken(&report);
    assert_eq!(
        (b.problem, b.offset),
        (Problem::Missing, Some(21)),
        "{report}"
    );
    // The last rows, deleted: the chain's head says more links were written.
    let db = TestDb::new("chain_deleted_tail");
    build_trail(&db);
    tamper(&db, "DELETE FROM audit_logging WHERE id = (SELECT max(id) FROM audit_logging WHERE kafka_partition = 1)");
    let report = verify(&db, &Scope::default());
    assert_eq!(broken(&report).problem, Problem::Missing, "{report}");
}

#[test]
fn a_forged_row_is_found() {
    let db = TestDb::new("chain_forged");
    build_trail(&db);
    // A copy of a real row, link and all, in the hole Kafka left at offsets 40..43.
    tamper(
        &db,
        "INSERT INTO audit_logging (source_database, source_schema, source_table, operation_type, \
         old_data, kafka_topic, kafka_partition, kafka_offset, ingested_at, chain_seq, chain_hash) \
         SELECT source_database, source_schema, source_table, 'DELETE', new_data, kafka_topic, \
         kafka_partition, 41, ingested_at, chain_seq, chain_hash FROM audit_logging \
         WHERE kafka_partition = 0 AND kafka_offset = 39",
    );
    let report = verify(&db, &Scope::default());
    let b = broken(&report);
    assert_eq!(
        (b.problem, b.offset),
        (Problem::Inserted, Some(41)),
        "{report}"
    );
    // A row with no link at all.
    let db = TestDb::new("chain_forged_bare");
    build_trail(&db);
    tamper(
        &db,
        "INSERT INTO audit_logging (operation_type, kafka_topic, kafka_partition, kafka_offset) \
         VALUES ('DELETE', 'chain.inventory.customers', 1, 1000)",
    );
    let report = verify(&db, &Scope::default());
    let b = broken(&report);
    assert_eq!(
        (b.problem, b.offset),
        (Problem::Inserted, Some(1000)),
        "{report}"
    );
}

#[test]
fn swapped_rows_are_found() {
    let db = TestDb::new("chain_swapped");
    build_trail(&db);
    let (a, b) = (
        id_at(&db, "audit_logging", 0, 30),
        id_at(&db, "audit_logging", 0, 31),
    );
    tamper(
        &db,
        &format!(
            "UPDATE audit_logging SET kafka_offset = -1 WHERE id = {a}; \
             UPDATE audit_logging SET kafka_offset = 30 WHERE id = {b}; \
             UPDATE audit_logging SET kafka_offset = 31 WHERE id = {a}"
        ),
    );
    let report = verify(&db, &Scope::default());
    let broke = broken(&report);
    assert_eq!(
        (broke.problem, broke.id, broke.offset),
        (Problem::Reordered, Some(b), Some(30)),
        "{report}"
    );
}

/// Someone who recomputes every link after changing a row leaves a chain that verifies on its
/// own; a digest taken before proves it was rewritten. A digest signed by another key, or
/// altered, is refused.
#[test]
fn a_consistently_rewritten_chain_is_caught_by_an_earlier_digest() {
    let db = TestDb::new("chain_rewritten");
    build_trail(&db);
    let dir = tempdir("chain_rewritten");
    let key = genkey(&dir, "key.pem");
    let signed = Digest::take(&mut db.client()).unwrap().sign(&key).unwrap();
    let public = key.public().unwrap();
    let digest = Digest::open(&signed, &public).unwrap();
    assert_eq!(digest.chains.len(), 2);

    rewrite_chain(&db, 0, 10);
    assert_chains_intact(&db);
    let scope = Scope {
        digest: Some(digest),
        ..Scope::default()
    };
    let report = verify(&db, &scope);
    let b = broken(&report);
    assert_eq!(b.problem, Problem::Rewritten, "{report}");

    let other = genkey(&dir, "other.pem");
    let forged = Digest::take(&mut db.client())
        .unwrap()
        .sign(&other)
        .unwrap();
    let refused = Digest::open(&forged, &public).unwrap_err();
    assert!(refused.contains("signed by another key"), "{refused}");
    let altered = signed.replacen("\"seq\": ", "\"seq\": 1", 1);
    let refused = Digest::open(&altered, &public).unwrap_err();
    assert!(refused.contains("altered"), "{refused}");
}

/// What a tamperer with the source code does: change a row of `partition` at `offset`, then
/// recompute every later link and the head, exactly as the service would.
fn rewrite_chain(db: &TestDb, partition: i32, offset: i64) {
    tamper(
        db,
        &format!(
            "UPDATE audit_logging SET change_user = 'rewritten' \
             WHERE kafka_partition = {partition} AND kafka_offset = {offset}"
        ),
    );
    let mut c = db.client();
    let mut links: Vec<(&str, i64, i64, Hash)> = Vec::new();
    for (target, kind, offset) in [
        (AUDIT, Kind::Row, "kafka_offset"),
        (sink::REJECTIONS, Kind::Rejection, "kafka_offset"),
        (sink::GAPS, Kind::Gap, "first_offset"),
    ] {
        let sql = sink::copy_out(
            target,
            &format!("id, {offset}"),
            &format!("WHERE kafka_partition = {partition}"),
        );
        let mut tuples = Tuples::new(c.copy_out(&sql).unwrap());
        while let Some((_, fields)) = tuples.next_tuple().unwrap() {
            let s = sink::stored(kind, fields, 2).unwrap();
            let int8 =
                |i: usize| i64::from_be_bytes(s.extra[i].as_deref().unwrap().try_into().unwrap());
            links.push((target.table, int8(0), int8(1), s.entry));
        }
    }
    links.sort_by_key(|l| l.2);
    let mut prev = chain::genesis("g", TOPIC, partition);
    let mut sql = String::new();
    for (seq, (table, id, _, entry)) in links.iter().enumerate() {
        prev = chain::link(&prev, seq as i64 + 1, entry);
        sql += &format!(
            "UPDATE {table} SET chain_hash = '\\x{}' WHERE id = {id};",
            chain::hex(&prev)
        );
    }
    sql += &format!(
        "UPDATE audit_positions SET chain_head = '\\x{}' WHERE partition = {partition}",
        chain::hex(&prev)
    );
    tamper(db, &sql);
}

#[test]
fn replayed_and_purged_rejections_keep_the_chain_verifiable() {
    let db = TestDb::new("chain_amended");
    // A constraint the DBA got wrong refuses the rows at offset 50.
    build_trail_with(
        &db,
        "ALTER TABLE audit_logging ADD CONSTRAINT wrong CHECK (kafka_offset <> 50)",
    );
    let mut c = db.client();
    c.batch_execute("ALTER TABLE audit_logging DROP CONSTRAINT wrong")
        .unwrap();
    let rules = Rules::default();
    let refused = cdc_audit::rejections::Selection {
        reason: Some("database_refused".into()),
        ..Default::default()
    };
    let done = cdc_audit::rejections::replay(
        &mut c,
        &refused,
        &rules,
        &mut cdc_audit::transform::schemas::SchemaCache::new(None, 1),
        false,
    )
    .unwrap();
    assert_eq!((done.written, done.still_rejected), (2, 2), "{done:?}");
    let poison = cdc_audit::rejections::Selection {
        reason: Some("not_json".into()),
        ..Default::default()
    };
    assert_eq!(
        cdc_audit::rejections::purge(&mut c, &poison, false).unwrap(),
        2
    );
    let report = assert_chains_intact(&db);
    assert_eq!(
        report.chains.iter().map(|c| c.amended).sum::<i64>(),
        4,
        "{report}"
    );
    let replayed: i64 = c
        .query_one(
            "SELECT count(*) FROM audit_logging WHERE kafka_offset = 50 AND chain_seq IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(replayed, 2);
    // The amendments are links too: changing one breaks the chain.
    tamper(
        &db,
        "UPDATE audit_amendments SET reason = 'nothing to see' WHERE id = 1",
    );
    let report = verify(&db, &Scope::default());
    assert_eq!(broken(&report).table, Some("audit_amendments"), "{report}");
}

#[test]
fn verify_and_digest_from_the_command_line() {
    let db = TestDb::new("chain_cli");
    build_trail(&db);
    let dir = tempdir("chain_cli");
    genkey(&dir, "key.pem");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
            .args(args)
            .env_clear()
            .envs(crate::util::coverage_env())
            .env("DATABASE_URL", &db.url)
            .env("CDC_AUDIT_SIGNING_KEY_FILE", dir.join("key.pem"))
            .output()
            .unwrap()
    };
    let out = run(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("2 chains") && text.ends_with("intact\n"),
        "{text}"
    );

    let digest = dir.join("digest.json");
    let out = run(&["digest", "--out", digest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = dir.join("public.pem");
    openssl(&[
        "pkey",
        "-in",
        dir.join("key.pem").to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let with_digest = [
        "verify",
        "--digest",
        digest.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ];
    assert_eq!(run(&with_digest).status.code(), Some(0));

    rewrite_chain(&db, 1, 5);
    assert_eq!(
        run(&["verify"]).status.code(),
        Some(0),
        "recomputed consistently"
    );
    let out = run(&with_digest);
    assert_eq!(out.status.code(), Some(integrity::BROKEN as i32));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rewritten"));

    let out = run(&["verify", "--format", "json", "--table", "customers"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["intact"], true, "{json}");
    let out = run(&["verify", "--from", "not a time"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from \"not a time\""));
    let out = run(&["verify", "--from", "2000-01-01"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// An Ed25519 key made the way the operations guide says.
fn genkey(dir: &Path, name: &str) -> SigningKey {
    SigningKey::load(&ed25519_key(dir, name)).unwrap()
}

/// A row's id, old_data, new_data and primary_key, as text.
type Images = (i64, Option<String>, Option<String>, Option<String>);

/// One record's rows.
fn record_rows(db: &TestDb, ids: &[i64]) -> Vec<Images> {
    db.client()
        .query(
            "SELECT id, old_data::text, new_data::text, primary_key::text FROM audit_logging \
             WHERE id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// A record with updates: its table, key and row ids.
fn a_record(db: &TestDb) -> (String, String, Vec<i64>) {
    let mut c = db.client();
    let r = c
        .query_one(
            "SELECT source_table, primary_key::text FROM audit_logging \
             WHERE operation_type = 'UPDATE' AND source_table = 'customers' \
             GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1",
            &[],
        )
        .unwrap();
    let (table, key): (String, String) = (r.get(0), r.get(1));
    let ids: Vec<i64> = c
        .query(
            "SELECT id FROM audit_logging WHERE source_table = $1 AND primary_key = $2::text::jsonb ORDER BY id",
            &[&table, &key],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ids.len() >= 2, "{table} {key}: {ids:?}");
    (table, key, ids)
}

#[test]
fn an_erased_record_keeps_no_value_and_the_chain_verifies() {
    let db = TestDb::new("chain_erase");
    build_trail(&db);
    let (table, key, ids) = a_record(&db);
    let erase = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
            .arg("erase")
            .args(args)
            .env_clear()
            .envs(crate::util::coverage_env())
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap()
    };
    let out = erase(&["--table", &table, "--key", &key, "--reason", "request 42"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "erased {n} of the record's {n} rows",
            n = ids.len()
        )),
        "{text}"
    );
    for (id, old, new, pk) in record_rows(&db, &ids) {
        for image in [old, new, pk].into_iter().flatten() {
            let v: serde_json::Value = serde_json::from_str(&image).unwrap();
            for (column, value) in v.as_object().unwrap() {
                assert!(
                    value.is_null() || value == "[erased]",
                    "row {id}: {column} = {value}"
                );
            }
        }
    }
    let report = assert_chains_intact(&db);
    let erased: i64 = report.chains.iter().map(|c| c.erased).sum();
    assert_eq!(erased as usize, ids.len(), "{report}");
    assert!(report.to_string().contains("of them erased"), "{report}");
    let log = db
        .client()
        .query(
            "SELECT actor, reason FROM audit_amendments WHERE action = 'erased'",
            &[],
        )
        .unwrap();
    assert_eq!(log.len(), ids.len());
    assert_eq!(
        (log[0].get::<_, String>(0), log[0].get::<_, String>(1)),
        ("postgres".into(), "request 42".into())
    );

    // Bad input names what is wrong and changes nothing.
    let out = erase(&["--table", "nosuch", "--key", "1", "--reason", "r"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown table \"nosuch\""));
    let out = erase(&["--table", &table, "--key", "[1]", "--reason", "r"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not JSON of a key"));
    let out = erase(&["--table", &table, "--key", &key, "--reason", " "]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reason is empty"));
}

#[test]
fn erasing_named_columns_keeps_the_others_and_nothing_else_may_change() {
    let db = TestDb::new("chain_erase_columns");
    build_trail(&db);
    let (table, key, ids) = a_record(&db);
    let mut c = db.client();
    let done = cdc_audit::integrity::erase::erase(
        &mut c,
        &table,
        &key,
        Some(&["email".to_string()]),
        "request 43",
    )
    .unwrap();
    assert_eq!(done.rows, ids.len());
    for (id, _, new, pk) in record_rows(&db, &ids) {
        assert_eq!(
            pk.as_deref(),
            Some(key.as_str()),
            "row {id}: the key has no email"
        );
        if let Some(new) = new {
            let v: serde_json::Value = serde_json::from_str(&new).unwrap();
            assert_eq!(v["email"], "[erased]");
            assert_ne!(v["first_name"], "[erased]");
        }
    }
    assert_chains_intact(&db);

    // The append-only trigger still refuses any other change, and an erasure by hand (no
    // amendment) breaks the chain.
    let refused = c
        .batch_execute(&format!(
            "BEGIN; SET LOCAL cdc_audit.erasing = 'on'; \
             UPDATE audit_logging SET operation_type = 'READ' WHERE id = {}; COMMIT",
            ids[0]
        ))
        .unwrap_err();
    assert!(
        refused.to_string().contains("append-only")
            || format!("{refused:?}").contains("append-only"),
        "{refused:?}"
    );
    let mut c = db.client();
    assert!(c
        .execute(
            "UPDATE audit_logging SET change_user = 'x' WHERE id = $1",
            &[&ids[0]]
        )
        .is_err());
    c.batch_execute(&format!(
        "BEGIN; SET LOCAL cdc_audit.erasing = 'on'; \
         UPDATE audit_logging SET new_data = '{{}}' WHERE id = {}; COMMIT",
        ids[1]
    ))
    .unwrap();
    let report = verify(&db, &Scope::default());
    let b = broken(&report);
    assert_eq!(
        (b.problem, b.id),
        (Problem::Changed, Some(ids[1])),
        "{report}"
    );
}

/// The service signs a digest at start and every interval: a file each, and a log line; a
/// key that is not one stops startup, naming the setting.
#[test]
fn the_service_takes_signed_digests_that_verify_proves_the_trail_against() {
    use crate::util::{wait_progress, Kafka, Service};
    let db = TestDb::new("chain_service");
    let kafka = Kafka::new("chain_service");
    let dir = tempdir("chain_service");
    let key = ed25519_key(&dir, "key.pem");
    let digests = dir.join("digests");
    std::fs::create_dir(&digests).unwrap();
    let records = generate("chain_service", 5, 400);
    kafka.produce(&records);
    let settings = [
        ("CDC_AUDIT_SIGNING_KEY_FILE", key.to_str().unwrap()),
        ("CDC_AUDIT_DIGEST_DIR", digests.to_str().unwrap()),
        ("CDC_AUDIT_DIGEST_INTERVAL_S", "10"),
    ];
    let service = Service::spawn(&kafka, &db, "g", &settings);
    wait_progress(&db, "g", records.len() as i64, "every message committed");
    let files = || -> Vec<std::path::PathBuf> {
        let mut f: Vec<_> = std::fs::read_dir(&digests)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        f
    };
    crate::util::wait_until(
        std::time::Duration::from_secs(40),
        "a second digest",
        || files().len() >= 2,
    );
    service.sigterm();
    let (code, log) = service.wait(std::time::Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("digest of ") && log.contains("\"signature\":"),
        "{log}"
    );
    let latest = files().pop().unwrap();
    let public = SigningKey::load(&key).unwrap().public().unwrap();
    let digest = Digest::open(&std::fs::read_to_string(&latest).unwrap(), &public).unwrap();
    assert!(!digest.chains.is_empty());
    let report = verify(
        &db,
        &Scope {
            digest: Some(digest),
            ..Scope::default()
        },
    );
    assert!(report.intact(), "{report}");

    // Not a key: startup stops and says which setting.
    let bad = Service::spawn(
        &kafka,
        &db,
        "g",
        &[("CDC_AUDIT_SIGNING_KEY_FILE", "/etc/hostname")],
    );
    let (code, log) = bad.wait(std::time::Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("CDC_AUDIT_SIGNING_KEY_FILE=/etc/hostname: not a PEM private key"),
        "{log}"
    );
}
