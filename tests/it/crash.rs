//! A real PostgreSQL crash, which a proxy cannot fake: the test starts a private server (`initdb`
//! and `pg_ctl` on a free port, as the `postgres` user), and while the pipeline writes into it,
//! crashes it with `pg_ctl stop -m immediate` (no checkpoint: crash recovery on restart), several
//! times. Commits whose acknowledgement was lost, recovery, and pooled connections that come back
//! to a new server process must all end in every change exactly once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cdc_audit::integrity::Digest;

use crate::util::{
    assert_exactly_once, config, free_port, generate, produce_over, wait_until, InProcess, Kafka,
    TestDb,
};

/// A PostgreSQL server of the test's own, removed when dropped.
pub struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_ctl").is_file())
            .max()
            .expect("pg_ctl under /usr/lib/postgresql/*/bin");
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("cdc-audit-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = PrivatePostgres { dir, bin, port };
        if running_as_root() {
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir)
                .status()
                .unwrap();
            assert!(owned.success());
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.ctl_start();
        pg
    }

    /// A server binary, run as the `postgres` user (initdb refuses root).
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=50",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Kills the server without a checkpoint; the next start recovers from the WAL.
    pub fn crash(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }

    /// The server's own database; the handle does not drop it (the server goes).
    pub fn db(&self) -> TestDb {
        TestDb {
            name: "postgres".into(),
            url: self.url(),
            server: self.url(),
            owned: false,
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if Path::new(&self.data()).join("postmaster.pid").exists() {
            let data = self.data();
            let _ = self
                .command("pg_ctl")
                .args(["-D", &data, "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn database_crashes_mid_stream_lose_and_duplicate_nothing() {
    let pg = PrivatePostgres::start();
    let db = pg.db();
    let kafka = Kafka::new("pgcrash");
    let records = generate("pgcrash", 31, 6_000);
    let total = records.len() as i64;
    let producer = produce_over(&kafka, records.clone(), 60, Duration::from_secs(30));
    let service = InProcess::start(config(&kafka, &db, "g"));
    for crash in 1..=3 {
        let mark = total * crash / 5;
        wait_until(
            Duration::from_secs(120),
            "progress before the next crash",
            || db.committed("g") >= mark,
        );
        pg.crash();
        std::thread::sleep(Duration::from_secs(3));
        pg.ctl_start();
    }
    producer.join().unwrap();
    wait_until(
        Duration::from_secs(180),
        "every message committed after the crashes",
        || db.committed("g") == total,
    );
    let retries = service.stats.write_retries.get();
    service.stop();
    // A write in flight when the server dies fails and is retried; one that only waits for a
    // connection gets one when the server is back: either way, exactly once.
    eprintln!("database crashes: {retries} batch writes retried");
    assert!(
        pg.log().matches("database system was interrupted").count() >= 3,
        "the server recovered from three crashes:\n{}",
        pg.log()
    );
    assert_exactly_once(&db, &records);
}

/// With `synchronous_commit = off` a commit returns before its WAL is on disk, and a crash takes
/// it back: 40 to 55% more rows a second with small batches (docs/operations.md), exactly once
/// still. A signed digest waits until the heads it read are flushed, so a crash never takes back
/// a head a digest named.
#[test]
fn a_digest_names_only_chain_heads_already_on_disk() {
    let pg = PrivatePostgres::start();
    let db = pg.db();
    db.migrate();
    let mut c = db.client();
    for statement in [
        "ALTER SYSTEM SET wal_writer_delay = '5s'",
        "SELECT pg_reload_conf()",
        "SET synchronous_commit = off",
    ] {
        c.batch_execute(statement).unwrap();
    }
    // A head committed and not yet flushed: the WAL writer flushes every 5 s.
    let written = (0..20)
        .find_map(|partition: i32| {
            c.execute(
                "INSERT INTO audit_positions \
                 (consumer_group, topic, partition, next_offset, chain_seq, chain_head) \
                 VALUES ('g', 't', $1, 1, 1, $2)",
                &[&partition, &vec![partition as u8; 32]],
            )
            .unwrap();
            let row = c
                .query_one(
                    "SELECT pg_current_wal_insert_lsn()::text, \
                     pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn()",
                    &[],
                )
                .unwrap();
            row.get::<_, bool>(1).then(|| row.get::<_, String>(0))
        })
        .expect("a commit the WAL writer has not flushed yet");
    let digest = Digest::take(&mut db.client()).unwrap();
    assert!(!digest.chains.is_empty(), "the digest names the heads");
    let flushed: bool = c
        .query_one(
            "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn",
            &[&written],
        )
        .unwrap()
        .get(0);
    assert!(
        flushed,
        "the digest was taken before the heads it names were on disk"
    );
}
