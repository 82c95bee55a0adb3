//! Retention: a month of the trail is archived to a file that verifies on its own, recorded in
//! the trail, and dropped; the chains in the database still verify, starting where the archive
//! ends; a tampered archive is found out; nothing but an archived month can be dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::chain::write_trail;
use crate::util::{assert_chains_intact, tempdir, TestDb};

fn cdc_audit(db: &TestDb, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
        .args(args)
        .env_clear()
        .envs(crate::util::coverage_env())
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap()
}

#[test]
fn an_archived_month_verifies_on_its_own_and_the_trail_after_it() {
    let db = TestDb::new("retention");
    db.migrate();
    write_trail(&db);
    let mut c = db.client();
    // A record erased, so that amended links lie in the month.
    let key: String = c
        .query_one(
            "SELECT primary_key::text FROM audit_logging WHERE source_table = 'customers' \
             AND operation_type = 'UPDATE' LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    let erased = cdc_audit::integrity::erase::erase(&mut c, "customers", &key, None, "r").unwrap();
    assert!(erased.rows > 0);
    let links = assert_chains_intact(&db).links();
    let rows: i64 = c
        .query_one("SELECT count(*) FROM audit_logging", &[])
        .unwrap()
        .get(0);
    // Nothing but an archived month is dropped.
    let refused = c
        .execute(
            "SELECT audit_drop_archived_partition('audit_logging_initial')",
            &[],
        )
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("has no archive"),
        "{refused:?}"
    );

    // The month this trail was written in is the initial partition, up to next month.
    let before: String = c
        .query_one(
            "SELECT ((date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC')::text",
            &[],
        )
        .unwrap()
        .get(0);
    let dir = tempdir("retention");
    let out = cdc_audit(
        &db,
        &[
            "archive",
            "--before",
            &before,
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("audit_logging_initial: {rows} rows archived")),
        "{text}"
    );
    let file = dir.join("audit_logging_initial.cdcaudit.gz");
    assert!(file.is_file());

    // Gone from the database, recorded in it, and the chains verify from where it ends.
    let left: i64 = c
        .query_one("SELECT count(*) FROM audit_logging", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let (recorded, archived_rows): (String, i64) = c
        .query_one("SELECT file, rows FROM audit_archives", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (recorded, archived_rows),
        (file.display().to_string(), rows)
    );
    let report = assert_chains_intact(&db);
    assert!(
        report.chains.iter().all(|c| c.archived_through > 0),
        "{report}"
    );

    // The file verifies on its own: every link.
    let out = cdc_audit(&db, &["verify", "--archive", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("{rows} rows")) && text.ends_with("intact\n"),
        "{text}"
    );
    let checked: i64 = text
        .split(" links")
        .next()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // The file's links and the database's after it are all there were, and one 'archived'
    // amendment a chain.
    assert_eq!(checked + report.links(), links + 2, "{text}\n{report}");

    // One byte of one row changed, the archive recompressed: found out.
    let mut plain = Vec::new();
    GzDecoder::new(std::fs::File::open(&file).unwrap())
        .read_to_end(&mut plain)
        .unwrap();
    // A letter of an e-mail address in an image (not any 0x40 byte: one may be binary COPY data,
    // a length or a timestamp, and changing the byte before it breaks the stream instead).
    let at = plain
        .windows(b"@example.com".len())
        .rposition(|w| w == b"@example.com")
        .unwrap()
        - 1;
    plain[at] = if plain[at] == b'x' { b'y' } else { b'x' };
    let forged = dir.join("forged.cdcaudit.gz");
    let mut gz = GzEncoder::new(
        std::fs::File::create(&forged).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&plain).unwrap();
    gz.finish().unwrap();
    let out = cdc_audit(&db, &["verify", "--archive", forged.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(integrity_broken()),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("changed"), "{text}");
    // Its header says what it is.
    let mut header = String::new();
    BufReader::new(GzDecoder::new(std::fs::File::open(&file).unwrap()))
        .read_line(&mut header)
        .unwrap();
    let header: serde_json::Value = serde_json::from_str(&header).unwrap();
    assert_eq!(header["partition"], "audit_logging_initial");
    assert_eq!(header["chains"].as_array().unwrap().len(), 2);
}

fn integrity_broken() -> i32 {
    i32::from(cdc_audit::integrity::BROKEN)
}
