//! Retention: a month of `audit_logging` past its time is archived to a file, recorded, and
//! dropped; `cdc-audit verify --archive FILE` checks such a file on its own.
//!
//! The file (`<partition>.cdcaudit.gz`) is gzip of one JSON line, the header, then the month's
//! rows as a PostgreSQL binary COPY stream of the columns the header names (`COPY ... FROM`
//! reads it back into a table of those columns), in Kafka order. The header says, for each chain
//! the month holds, its first and last link, the link before the first (when the database still
//! had it), and the entries of the links in between that are not audit rows of the month
//! (rejections, gaps, transaction events, amendments) and of the links whose row was amended:
//! with those, every link of the month is recomputed from the file alone and must end at the
//! last link, which the database keeps in an 'archived' amendment of the chain.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use postgres::{Client, IsolationLevel};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::chain::{self, Hash, Kind};
use crate::sink::{
    self, Action, Amendment, Target, Tuples, AMENDMENTS, GAPS, REJECTIONS, TRANSACTIONS,
};
use crate::transform::AUDIT_COLUMNS;

const VERSION: u32 = 1;

/// One chain's part of an archive.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChainPart {
    pub consumer_group: String,
    pub topic: String,
    pub partition: i32,
    pub first_seq: i64,
    pub last_seq: i64,
    /// The link before `first_seq`, hex; `None` when the database no longer had it.
    pub before: Option<String>,
    pub last_link: String,
    /// Entries of links in range that are not rows of this month: `[seq, entry hex]`.
    pub others: Vec<(i64, String)>,
    /// Amended links in range: `[seq, was hex, now hex or null]`, oldest amendment first.
    pub amended: Vec<(i64, String, Option<String>)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub cdc_audit_archive: u32,
    pub table: String,
    pub partition: String,
    pub range_from: Option<String>,
    pub range_to: String,
    pub rows: i64,
    pub columns: String,
    pub chains: Vec<ChainPart>,
}

/// What archiving a month did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub partition: String,
    pub rows: i64,
    pub file: PathBuf,
    pub sha256: String,
}

/// The columns of an archive's rows.
fn columns() -> String {
    format!("id, chain_seq, chain_hash, ingested_at, {AUDIT_COLUMNS}")
}

/// Archives and drops every month of `audit_logging` that ends at or before `before` (anything
/// PostgreSQL reads as a timestamptz), oldest first, into `dir`.
pub fn archive_expired(
    client: &mut Client,
    before: &str,
    dir: &Path,
) -> Result<Vec<Archived>, String> {
    let err = |e: postgres::Error| sink::with_causes(&e);
    let months: Vec<String> = client
        .query(
            "SELECT name FROM audit_partitions() WHERE range_to <= $1::text::timestamptz \
             ORDER BY range_to",
            &[&before],
        )
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    months
        .iter()
        .map(|m| archive_month(client, m, dir))
        .collect()
}

fn archive_month(client: &mut Client, month: &str, dir: &Path) -> Result<Archived, String> {
    let err = |e: postgres::Error| sink::with_causes(&e);
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .map_err(err)?;
    let (range_from, range_to): (Option<String>, String) = tx
        .query_one(
            "SELECT range_from::text, range_to::text FROM audit_partitions() WHERE name = $1",
            &[&month],
        )
        .map(|r| (r.get(0), r.get(1)))
        .map_err(err)?;
    // The month's own table: only its rows are read.
    let table = format!("\"{}\"", month.replace('"', "\"\""));
    let chains = tx
        .query(
            &format!(
                "SELECT kafka_topic, kafka_partition, min(chain_seq), max(chain_seq), \
                 (array_agg(chain_hash ORDER BY chain_seq DESC))[1] \
                 FROM {table} WHERE chain_seq IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            &[],
        )
        .map_err(err)?;
    let rows: i64 = tx
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .map_err(err)?
        .get(0);
    let mut parts = Vec::with_capacity(chains.len());
    for c in &chains {
        let (topic, partition, first, last): (String, i32, i64, i64) =
            (c.get(0), c.get(1), c.get(2), c.get(3));
        let group = sink::chain_group(&mut tx, &topic, partition, last)?;
        let mut part = chain_part(&mut tx, group, topic, partition, first, last)?;
        part.last_link = chain::hex(c.get::<_, &[u8]>(4));
        parts.push(part);
    }
    let header = Header {
        cdc_audit_archive: VERSION,
        table: "audit_logging".into(),
        partition: month.into(),
        range_from,
        range_to,
        rows,
        columns: columns(),
        chains: parts,
    };

    let file = dir.join(format!("{month}.cdcaudit.gz"));
    let partial = dir.join(format!("{month}.cdcaudit.gz.partial"));
    let out = std::fs::File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut gz = GzEncoder::new(Hashing::new(out), flate2::Compression::default());
    let io = |e: std::io::Error| format!("{}: {e}", partial.display());
    serde_json::to_writer(&mut gz, &header).map_err(|e| e.to_string())?;
    gz.write_all(b"\n").map_err(io)?;
    let sql = format!(
        "COPY (SELECT {} FROM {table} ORDER BY kafka_topic, kafka_partition, kafka_offset) \
         TO STDOUT (FORMAT binary)",
        columns()
    );
    {
        let mut copy = tx.copy_out(&sql).map_err(err)?;
        std::io::copy(&mut copy, &mut gz).map_err(io)?;
    }
    let hashing = gz.finish().map_err(io)?;
    let (written, digest) = hashing.finish().map_err(io)?;
    written.sync_all().map_err(io)?;
    let sha256 = chain::hex(&digest);

    let file_text = file.display().to_string();
    tx.execute(
        "INSERT INTO audit_archives (partition_name, range_from, range_to, rows, file, sha256) \
         VALUES ($1, $2::text::timestamptz, $3::text::timestamptz, $4, $5, $6)",
        &[
            &month,
            &header.range_from,
            &header.range_to,
            &rows,
            &file_text,
            &sha256,
        ],
    )
    .map_err(err)?;
    let reason = format!("{month} archived to {file_text} (sha256 {sha256})");
    let lasts: Vec<Hash> = header
        .chains
        .iter()
        .map(|c| {
            chain::from_hex(&c.last_link)
                .and_then(|h| Hash::try_from(h).ok())
                .unwrap_or_default()
        })
        .collect();
    let amendments: Vec<Amendment<'_>> = header
        .chains
        .iter()
        .zip(&lasts)
        .map(|(c, last)| Amendment {
            group: &c.consumer_group,
            topic: &c.topic,
            partition: c.partition,
            target_seq: Some(c.last_seq),
            target_id: None,
            action: Action::Archived,
            was: *last,
            now: None,
            reason: Some(&reason),
        })
        .collect();
    sink::amend(&mut tx, &amendments).map_err(|e| e.to_string())?;
    tx.execute("SELECT audit_drop_archived_partition($1)", &[&month])
        .map_err(err)?;
    tx.commit().map_err(err)?;
    std::fs::rename(&partial, &file).map_err(|e| format!("{}: {e}", file.display()))?;
    log::info!(
        "archived {month} ({rows} rows) to {} (sha256 {sha256}) and dropped it",
        file.display()
    );
    Ok(Archived {
        partition: month.into(),
        rows,
        file,
        sha256,
    })
}

/// One chain's header: the link before, the other links and the amended ones in range.
fn chain_part(
    tx: &mut postgres::Transaction<'_>,
    consumer_group: String,
    topic: String,
    partition: i32,
    first: i64,
    last: i64,
) -> Result<ChainPart, String> {
    let err = |e: postgres::Error| sink::with_causes(&e);
    let before: Option<Vec<u8>> = if first == 1 {
        Some(chain::genesis(&consumer_group, &topic, partition).to_vec())
    } else {
        let found = tx
            // Earlier months are archived already (oldest first): the link before is in
            // another table, or in their 'archived' amendment.
            .query(
                "SELECT chain_hash FROM audit_transactions \
                     WHERE kafka_topic = $1 AND kafka_partition = $2 AND chain_seq = $3 \
                 UNION ALL SELECT chain_hash FROM audit_rejections \
                     WHERE kafka_topic = $1 AND kafka_partition = $2 AND chain_seq = $3 \
                 UNION ALL SELECT chain_hash FROM audit_gaps WHERE consumer_group = $4 \
                     AND kafka_topic = $1 AND kafka_partition = $2 AND chain_seq = $3 \
                 UNION ALL SELECT chain_hash FROM audit_amendments WHERE consumer_group = $4 \
                     AND kafka_topic = $1 AND kafka_partition = $2 AND chain_seq = $3 \
                 UNION ALL SELECT was_entry FROM audit_amendments WHERE consumer_group = $4 \
                     AND kafka_topic = $1 AND kafka_partition = $2 AND target_seq = $3 \
                     AND action = 'archived' \
                 LIMIT 1",
                &[&topic, &partition, &(first - 1), &consumer_group],
            )
            .map_err(err)?;
        found.first().map(|r| r.get(0))
    };
    let within = format!(
        "WHERE kafka_topic = {} AND kafka_partition = {partition} AND chain_seq BETWEEN {first} AND {last}",
        crate::integrity::verify::literal(&topic)
    );
    let mut others = Vec::new();
    let targets: [(Target, Kind, String); 4] = [
        (TRANSACTIONS, Kind::Transaction, within.clone()),
        (REJECTIONS, Kind::Rejection, within.clone()),
        (
            GAPS,
            Kind::Gap,
            format!(
                "{within} AND consumer_group = {}",
                crate::integrity::verify::literal(&consumer_group)
            ),
        ),
        (
            AMENDMENTS,
            Kind::Amendment,
            format!(
                "{within} AND consumer_group = {}",
                crate::integrity::verify::literal(&consumer_group)
            ),
        ),
    ];
    for (target, kind, filter) in &targets {
        let mut tuples = Tuples::new(
            tx.copy_out(&sink::copy_out(*target, "", filter))
                .map_err(err)?,
        );
        while let Some((_, fields)) = tuples.next_tuple().map_err(|e| e.to_string())? {
            if let Some(s) = sink::stored(*kind, fields, 0) {
                others.push((s.seq.unwrap_or_default(), chain::hex(&s.entry)));
            }
        }
    }
    // Replayed rows of this month's links may live in a later month: their links are amended,
    // and the amendments say with what.
    others.sort();
    let amended = tx
        .query(
            "SELECT target_seq, was_entry, now_entry FROM audit_amendments WHERE consumer_group = $1 \
             AND kafka_topic = $2 AND kafka_partition = $3 AND target_seq BETWEEN $4 AND $5 \
             AND action <> 'archived' ORDER BY chain_seq",
            &[&consumer_group, &topic, &partition, &first, &last],
        )
        .map_err(err)?
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                chain::hex(r.get::<_, &[u8]>(1)),
                r.get::<_, Option<&[u8]>>(2).map(chain::hex),
            )
        })
        .collect();
    Ok(ChainPart {
        consumer_group,
        topic,
        partition,
        first_seq: first,
        last_seq: last,
        before: before.map(|b| chain::hex(&b)),
        // The caller has it from the month's rows.
        last_link: String::new(),
        others,
        amended,
    })
}

/// A writer that hashes what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
        }
    }

    fn finish(mut self) -> std::io::Result<(W, [u8; 32])> {
        self.inner.flush()?;
        Ok((self.inner, self.hash.finalize().into()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What `verify --archive` found in a file.
#[derive(Debug)]
pub struct ArchiveReport {
    pub partition: String,
    pub rows: i64,
    pub links: i64,
    pub unlinked: i64,
    /// Chains whose first link could not be checked (the link before was gone).
    pub anchored: Vec<String>,
    pub broken: Vec<String>,
}

impl ArchiveReport {
    pub fn intact(&self) -> bool {
        self.broken.is_empty()
    }
}

impl std::fmt::Display for ArchiveReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.broken {
            writeln!(f, "BROKEN: {b}")?;
        }
        for a in &self.anchored {
            writeln!(
                f,
                "{a}: its first link is taken as given (the link before it was gone)"
            )?;
        }
        let verdict = if self.intact() { "intact" } else { "BROKEN" };
        write!(
            f,
            "archive of {}: {} rows, {} links, {} rows from before the chain began: {verdict}",
            self.partition, self.rows, self.links, self.unlinked
        )
    }
}

/// Recomputes every link of an archive file from the file alone.
pub fn verify_archive(path: &Path) -> Result<ArchiveReport, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = BufReader::new(GzDecoder::new(file));
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("{}: not a cdc-audit archive ({e})", path.display()))?;
    let header: Header = serde_json::from_str(&line)
        .map_err(|e| format!("{}: not a cdc-audit archive ({e})", path.display()))?;
    if header.cdc_audit_archive != VERSION || header.columns != columns() {
        return Err(format!(
            "{}: an archive of format {} with other columns: this cdc-audit reads format {VERSION}",
            path.display(),
            header.cdc_audit_archive
        ));
    }
    let mut report = ArchiveReport {
        partition: header.partition.clone(),
        rows: 0,
        links: 0,
        unlinked: 0,
        anchored: Vec::new(),
        broken: Vec::new(),
    };
    let mut parts: BTreeMap<(String, i32), &ChainPart> = header
        .chains
        .iter()
        .map(|c| ((c.topic.clone(), c.partition), c))
        .collect();
    // The rows come in Kafka order, so each chain's in link order: each chain is walked as its
    // rows stream past, and nothing but the chain at hand is held.
    let mut walk: Option<ArchiveWalk<'_>> = None;
    let mut tuples = Tuples::new(reader.by_ref());
    while let Some((_, fields)) = tuples.next_tuple().map_err(|e| e.to_string())? {
        report.rows += 1;
        let stored =
            sink::stored(Kind::Row, fields, 1).ok_or("a row that is not the header's columns")?;
        let id = stored.extra[0]
            .as_deref()
            .and_then(|b| b.try_into().ok())
            .map_or(0, i64::from_be_bytes);
        let Some(seq) = stored.seq else {
            report.unlinked += 1;
            continue;
        };
        // The chain: kafka_topic and kafka_partition, the 21st and 22nd of the row's own fields.
        let mut own = fields;
        for _ in 0..4 + 20 {
            own = sink::field(own).ok_or("a row cut short")?.1;
        }
        let (topic, rest) = sink::field(own).ok_or("a row cut short")?;
        let (partition, _) = sink::field(rest).ok_or("a row cut short")?;
        let key = (
            String::from_utf8_lossy(topic.unwrap_or_default()).into_owned(),
            partition
                .and_then(|b| b.try_into().ok())
                .map_or(0, i32::from_be_bytes),
        );
        if walk.as_ref().is_none_or(|w| w.key != key) {
            if let Some(done) = walk.take() {
                done.finish(&mut report);
            }
            match parts.remove(&key) {
                Some(part) => walk = Some(ArchiveWalk::start(key, part, &mut report)),
                None => {
                    report.broken.push(format!(
                        "{}/{}: a linked row (id {id}) of a chain the header does not name, or out of order",
                        key.0, key.1
                    ));
                    continue;
                }
            }
        }
        if let Some(w) = walk.as_mut() {
            w.row(seq, stored.entry, stored.link.as_deref(), id, &mut report);
        }
    }
    if let Some(done) = walk.take() {
        done.finish(&mut report);
    }
    // Chains of the header with no row here (all their links amended or in other tables).
    for (key, part) in parts {
        ArchiveWalk::start(key, part, &mut report).finish(&mut report);
    }
    if report.rows != header.rows {
        report.broken.push(format!(
            "the header says {} rows, the file holds {}",
            header.rows, report.rows
        ));
    }
    Ok(report)
}

/// One chain of an archive, walked as its rows come.
struct ArchiveWalk<'a> {
    key: (String, i32),
    part: &'a ChainPart,
    name: String,
    others: BTreeMap<i64, Option<Hash>>,
    amended: BTreeMap<i64, (Option<Hash>, Option<Hash>)>,
    /// The next link to compute, and the link before it; `None` until the first row anchors it.
    seq: i64,
    prev: Option<Hash>,
    broke: bool,
}

fn parse_hash(h: &str) -> Option<Hash> {
    chain::from_hex(h).and_then(|b| Hash::try_from(b).ok())
}

impl<'a> ArchiveWalk<'a> {
    fn start(key: (String, i32), part: &'a ChainPart, report: &mut ArchiveReport) -> Self {
        let name = format!("{} {}/{}", part.consumer_group, part.topic, part.partition);
        let mut amended: BTreeMap<i64, (Option<Hash>, Option<Hash>)> = BTreeMap::new();
        for (s, was, now) in &part.amended {
            let entry = amended.entry(*s).or_insert((parse_hash(was), None));
            entry.1 = now.as_deref().and_then(parse_hash);
        }
        let prev = part.before.as_deref().and_then(parse_hash);
        if prev.is_none() {
            report.anchored.push(name.clone());
        }
        ArchiveWalk {
            key,
            part,
            name,
            others: part
                .others
                .iter()
                .map(|(s, e)| (*s, parse_hash(e)))
                .collect(),
            amended,
            seq: part.first_seq,
            prev,
            broke: false,
        }
    }

    fn broken(&mut self, report: &mut ArchiveReport, what: String) {
        if !self.broke {
            report.broken.push(format!("{}: {what}", self.name));
        }
        self.broke = true;
    }

    /// Takes the links before `upto` that have no row here: other tables' and amended ones.
    fn advance(&mut self, upto: i64, report: &mut ArchiveReport) {
        while !self.broke && self.seq < upto {
            let entry = match (self.amended.get(&self.seq), self.others.get(&self.seq)) {
                (Some((was, _)), _) => *was,
                (None, Some(e)) => *e,
                (None, None) => None,
            };
            match (entry, self.prev) {
                (Some(e), Some(prev)) => {
                    self.prev = Some(chain::link(&prev, self.seq, &e));
                    self.seq += 1;
                    report.links += 1;
                }
                _ => {
                    let seq = self.seq;
                    self.broken(report, format!("link {seq}: missing"));
                }
            }
        }
    }

    fn row(
        &mut self,
        seq: i64,
        entry: Hash,
        link: Option<&[u8]>,
        id: i64,
        report: &mut ArchiveReport,
    ) {
        if self.broke {
            return;
        }
        if seq < self.seq || seq > self.part.last_seq {
            return self.broken(report, format!("link {seq} (id {id}): out of place"));
        }
        if self.prev.is_none() && seq == self.part.first_seq {
            // The link before was gone: the first row's link is taken as given.
            self.prev = link.and_then(|l| Hash::try_from(l).ok());
            self.seq = seq + 1;
            report.links += 1;
            return;
        }
        self.advance(seq, report);
        let Some(prev) = self.prev.filter(|_| !self.broke) else {
            return;
        };
        let used = match self.amended.get(&seq) {
            Some((was, now)) => {
                if *now != Some(entry) {
                    return self.broken(
                        report,
                        format!("link {seq} (id {id}): changed since its amendment"),
                    );
                }
                *was
            }
            None => Some(entry),
        };
        let Some(used) = used else {
            return self.broken(
                report,
                format!("link {seq} (id {id}): its amendment is unreadable"),
            );
        };
        let computed = chain::link(&prev, seq, &used);
        if link != Some(&computed[..]) {
            return self.broken(report, format!("link {seq} (id {id}): changed"));
        }
        self.prev = Some(computed);
        self.seq = seq + 1;
        report.links += 1;
    }

    fn finish(mut self, report: &mut ArchiveReport) {
        self.advance(self.part.last_seq + 1, report);
        if !self.broke && self.prev != parse_hash(&self.part.last_link) {
            self.broken(
                report,
                "the links do not end at the header's last link".into(),
            );
        }
    }
}
