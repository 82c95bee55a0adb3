//! The writer pool: writers take batches from one queue (it holds at most one batch of a
//! partition, see `pipeline::TransformStage`) and commit each batch's rows, rejections and next
//! position in one transaction, after checking the stored position (the fence).

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::Transaction;
use postgres_openssl::MakeTlsConnector;
use r2d2_postgres::PostgresConnectionManager;

use crate::events::now_ms;
use crate::events::Stats;
use crate::pgcopy;
use crate::pipeline::{Batch, Control, Finish, Message, Tp, Tracker, Transformed};
use crate::transform::{
    Outcome, RejectKind, Rejection, Row, Skip, AUDIT_COLUMNS, TRANSACTION_COLUMNS,
};

pub type Pool = r2d2::Pool<PostgresConnectionManager<MakeTlsConnector>>;

/// TLS for PostgreSQL connections, used as the URL's `sslmode` says (`disable`, `prefer`,
/// `require`). Like libpq, `require` encrypts without checking the server's certificate unless
/// a CA file is given (`CDC_AUDIT_DATABASE_CA_FILE`); then the certificate and host name are verified.
pub fn tls(ca_file: Option<&std::path::Path>) -> Result<MakeTlsConnector, String> {
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(|e| format!("TLS: {e}"))?;
    match ca_file {
        Some(path) => builder
            .set_ca_file(path)
            .map_err(|e| format!("CDC_AUDIT_DATABASE_CA_FILE={}: {e}", path.display()))?,
        None => builder.set_verify(SslVerifyMode::NONE),
    }
    Ok(MakeTlsConnector::new(builder.build()))
}

/// Connection settings with defaults that make a dead connection fail, not hang a writer;
/// the URL can override each of them.
fn connection_config(url: &str) -> Result<postgres::Config, String> {
    let mut config: postgres::Config = url.parse().map_err(|e| format!("database URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(60));
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(30));
    }
    Ok(config)
}

/// Builds the connection pool; connections are opened lazily, so a database that is down at
/// start does not stop the service.
pub fn pool(url: &str, size: u32, ca_file: Option<&std::path::Path>) -> Result<Pool, String> {
    let manager = PostgresConnectionManager::new(connection_config(url)?, tls(ca_file)?);
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(5))
        .build_unchecked(manager))
}

/// One connection outside the pool (tools, the demo), with the same TLS and timeouts.
pub fn connect(url: &str, ca_file: Option<&std::path::Path>) -> Result<postgres::Client, String> {
    connection_config(url)?.connect(tls(ca_file)?).map_err(|e| {
        format!(
            "cannot connect to {}: {}",
            crate::config::mask_url(url),
            with_causes(&e)
        )
    })
}

/// An error and its causes ("error performing TLS handshake: certificate verify failed").
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A failed database call.
#[derive(Debug)]
pub enum SinkError {
    Db(postgres::Error),
    /// The COPY stream broke; the server's own error, when there is one, is inside.
    Io(std::io::Error),
}

impl SinkError {
    fn from_io(e: std::io::Error) -> SinkError {
        // The postgres crate wraps its own error in the io::Error of a COPY write.
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<postgres::Error>())
        {
            Some(_) => match e.into_inner().map(|b| b.downcast::<postgres::Error>()) {
                Some(Ok(db)) => SinkError::Db(*db),
                _ => SinkError::Io(std::io::Error::other("COPY stream failed")),
            },
            None => SinkError::Io(e),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            SinkError::Db(e) => classify(e),
            SinkError::Io(_) => ErrorClass::Retriable,
        }
    }
}

impl From<postgres::Error> for SinkError {
    fn from(e: postgres::Error) -> Self {
        SinkError::Db(e)
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Db(e) => match e.as_db_error() {
                Some(db) => {
                    write!(f, "{} (SQLSTATE {})", db.message(), db.code().code())?;
                    match db.detail() {
                        Some(detail) => write!(f, ": {detail}"),
                        None => Ok(()),
                    }
                }
                None => f.write_str(&with_causes(e)),
            },
            SinkError::Io(e) => write!(f, "COPY stream: {e}"),
        }
    }
}

/// What a failed database call means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database is away, overloaded or asked us to retry: back off and try again.
    Retriable,
    /// A row's data was refused: isolate the row and reject it.
    Data,
    /// The schema or permissions are wrong: retry slowly and say so loudly; a person must act.
    Fatal,
}

/// The one place that decides what a PostgreSQL error means.
pub fn classify(e: &postgres::Error) -> ErrorClass {
    let Some(code) = e.code() else {
        return ErrorClass::Retriable;
    };
    let c = code.code();
    if c.starts_with("08")
        || c.starts_with("53")
        || c.starts_with("57P")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || c.starts_with("58")
    {
        ErrorClass::Retriable
    } else if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") {
        ErrorClass::Data
    } else {
        ErrorClass::Fatal
    }
}

/// How a batch's transaction ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Committed up to `next`: `rows` new audit rows, `transactions` transaction events, the
    /// kinds of the new rejections and skips, `skipped` messages that were already written, and
    /// the offsets Kafka did not deliver (recorded in `audit_gaps`).
    Committed {
        next: i64,
        missing: Vec<Gap>,
        rows: usize,
        transactions: usize,
        rejected: Vec<RejectKind>,
        skips: Vec<Skip>,
        skipped: usize,
    },
    /// The stored position is behind the batch's start: the batch does not connect.
    Behind { stored: i64 },
}

/// A run of offsets Kafka did not deliver, as recorded in `audit_gaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub offsets: Range<i64>,
    /// `None` when the partition's first offset was not known.
    pub cause: Option<GapCause>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapCause {
    /// Below the partition's first offset: retention deleted them before they were read.
    Retention,
    /// At or past the partition's first offset, yet not delivered: an aborted transaction's
    /// records and marker, or records compaction removed.
    NotDelivered,
}

impl GapCause {
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::Retention => "retention",
            GapCause::NotDelivered => "not_delivered",
        }
    }
}

/// A COPY target: the table and its column list.
pub type Target = (&'static str, &'static str);
pub const AUDIT: Target = ("audit_logging", AUDIT_COLUMNS);
pub const TRANSACTIONS: Target = ("audit_transactions", TRANSACTION_COLUMNS);

/// Encoded rows for one target, with the message each came from.
type Rows<'a> = Vec<(&'a Message, &'a [u8])>;

/// Writes one batch in one transaction, fenced by the stored position of its partition.
/// With `isolate`, rows PostgreSQL refuses are found by splitting and stored as rejections.
pub fn write_batch(
    client: &mut postgres::Client,
    group: &str,
    t: &Transformed,
    isolate: bool,
) -> Result<Written, SinkError> {
    let batch = &t.batch;
    let topic: &str = &batch.tp.topic;
    let partition = batch.tp.partition;
    let first = batch.messages.first().map_or(batch.end, |m| m.offset);
    let from = batch.start.unwrap_or(first);

    // Typed statements go out with their parameters in one round trip; untyped ones are
    // prepared first, a second round trip each on every batch.
    let mut tx = client.transaction()?;
    let key = || position_key(&group, &topic, &partition);
    let lock = "SELECT next_offset FROM audit_positions \
                WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR UPDATE";
    let stored: i64 = match tx.query_typed_opt(lock, &key())? {
        Some(row) => row.get(0),
        None => {
            tx.execute_typed(
                "INSERT INTO audit_positions (consumer_group, topic, partition, next_offset) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[key(), vec![(&from, Type::INT8)]].concat(),
            )?;
            // Either our row, or one a concurrent owner committed first: lock whichever it is.
            tx.query_typed_one(lock, &key())?.get(0)
        }
    };
    if stored >= batch.end {
        // Everything here is already written (a redelivery, or an owner that lost the partition).
        return Ok(Written::Committed {
            next: stored,
            missing: Vec::new(),
            rows: 0,
            transactions: 0,
            rejected: Vec::new(),
            skips: Vec::new(),
            skipped: batch.messages.len(),
        });
    }
    if stored < from {
        return Ok(Written::Behind { stored });
    }

    // Only messages at or past the stored position are new.
    let skipped = batch.messages.iter().filter(|m| m.offset < stored).count();
    let (mut rows, mut transactions): (Rows<'_>, Rows<'_>) = (Vec::new(), Vec::new());
    let mut rejections: Vec<(&Message, Rejection)> = Vec::new();
    let mut skips = Vec::new();
    for (msg, outcome) in batch.messages.iter().zip(&t.outcomes).skip(skipped) {
        match outcome {
            Outcome::Row(row) => rows.push((msg, &row.bytes)),
            Outcome::Transaction(bytes) => transactions.push((msg, bytes)),
            Outcome::Rejected(r) => rejections.push((msg, r.clone())),
            Outcome::Skipped(skip) => skips.push(*skip),
        }
    }
    for (target, list) in [(AUDIT, &mut rows), (TRANSACTIONS, &mut transactions)] {
        if !isolate {
            copy_rows(&mut tx, target, list.iter().map(|(_, b)| *b))?;
            continue;
        }
        let refused = copy_isolating(&mut tx, target, list)?;
        for &(i, ref error) in refused.iter().rev() {
            let (msg, _) = list.remove(i);
            let kind = RejectKind::DatabaseRefused;
            rejections.push((
                msg,
                Rejection {
                    kind,
                    error: error.clone(),
                },
            ));
        }
    }
    rejections.sort_by_key(|(m, _)| m.offset);
    for (msg, rejection) in &rejections {
        insert_rejection(&mut tx, msg, rejection)?;
    }
    let missing = gaps(missing_offsets(stored, batch), batch.log_start);
    for gap in &missing {
        let cause = gap.cause.map(GapCause::as_str);
        tx.execute_typed(
            "INSERT INTO audit_gaps (consumer_group, kafka_topic, kafka_partition, first_offset, \
             end_offset, cause) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                key(),
                vec![
                    (&gap.offsets.start, Type::INT8),
                    (&gap.offsets.end, Type::INT8),
                    (&cause, Type::TEXT),
                ],
            ]
            .concat(),
        )?;
    }
    tx.execute_typed(
        "UPDATE audit_positions SET next_offset = $4, updated_at = now() \
         WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        &[key(), vec![(&batch.end, Type::INT8)]].concat(),
    )?;
    tx.commit()?;
    Ok(Written::Committed {
        next: batch.end,
        missing,
        rows: rows.len(),
        transactions: transactions.len(),
        rejected: rejections.iter().map(|(_, r)| r.kind).collect(),
        skips,
        skipped,
    })
}

/// The runs of offsets from `from` to the batch's last message that Kafka did not deliver:
/// retention or compaction removed them, or they were an aborted transaction's. A single missing
/// offset is the commit marker of a transaction, which consumers never see, and is not counted.
fn missing_offsets(from: i64, batch: &Batch) -> Vec<Range<i64>> {
    let mut next = from;
    let mut missing = Vec::new();
    for m in batch.messages.iter().filter(|m| m.offset >= from) {
        if m.offset > next + 1 {
            missing.push(next..m.offset);
        }
        next = m.offset + 1;
    }
    missing
}

/// The missing runs, each split at the partition's first offset when it is known: what lies
/// below it retention removed.
fn gaps(missing: Vec<Range<i64>>, log_start: Option<i64>) -> Vec<Gap> {
    missing
        .into_iter()
        .flat_map(|r| match log_start {
            None => vec![(r, None)],
            Some(first) => {
                let split = first.clamp(r.start, r.end);
                vec![
                    (r.start..split, Some(GapCause::Retention)),
                    (split..r.end, Some(GapCause::NotDelivered)),
                ]
            }
        })
        .filter(|(offsets, _)| !offsets.is_empty())
        .map(|(offsets, cause)| Gap { offsets, cause })
        .collect()
}

/// The parameters naming a row of `audit_positions`, typed.
fn position_key<'a>(
    group: &'a &str,
    topic: &'a &str,
    partition: &'a i32,
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    vec![
        (group, Type::TEXT),
        (topic, Type::TEXT),
        (partition, Type::INT4),
    ]
}

/// How much COPY data goes to PostgreSQL in one message.
const COPY_CHUNK: usize = 64 * 1024;

pub fn copy_rows<'a>(
    tx: &mut Transaction<'_>,
    (table, columns): Target,
    rows: impl Iterator<Item = &'a [u8]>,
) -> Result<(), SinkError> {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut writer = tx.copy_in(&format!(
        "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
    ))?;
    // The writer sends a CopyData message whenever it holds more than 4 KiB, each a trip through
    // the connection and a TLS record: rows go to it in chunks of COPY_CHUNK instead.
    let sent: std::io::Result<()> = (|| {
        let mut chunk = Vec::with_capacity(COPY_CHUNK);
        chunk.extend_from_slice(pgcopy::HEADER);
        for row in rows {
            if chunk.len() + row.len() > COPY_CHUNK && !chunk.is_empty() {
                writer.write_all(&chunk)?;
                chunk.clear();
            }
            chunk.extend_from_slice(row);
        }
        chunk.extend_from_slice(pgcopy::TRAILER);
        writer.write_all(&chunk)
    })();
    match sent {
        Ok(()) => writer.finish().map(|_| ()).map_err(SinkError::Db),
        // Dropping the writer without finish() aborts the COPY; the transaction is rolled back.
        Err(e) => Err(SinkError::from_io(e)),
    }
}

/// Copies rows under savepoints, halving on data errors, and returns the rows refused
/// (index into `rows`, ascending, and the error text).
fn copy_isolating(
    tx: &mut Transaction<'_>,
    target: Target,
    rows: &[(&Message, &[u8])],
) -> Result<Vec<(usize, String)>, SinkError> {
    let mut refused = Vec::new();
    let mut stack = vec![(0usize, rows.len())];
    while let Some((lo, hi)) = stack.pop() {
        if lo >= hi {
            continue;
        }
        let mut sp = tx.savepoint("isolate")?;
        match copy_rows(&mut sp, target, rows[lo..hi].iter().map(|(_, b)| *b)) {
            Ok(()) => sp.commit()?,
            Err(e) if e.class() == ErrorClass::Data => {
                sp.rollback()?;
                if hi - lo == 1 {
                    refused.push((lo, e.to_string()));
                } else {
                    let mid = lo + (hi - lo) / 2;
                    stack.push((mid, hi));
                    stack.push((lo, mid));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

fn insert_rejection(
    tx: &mut Transaction<'_>,
    msg: &Message,
    r: &Rejection,
) -> Result<(), postgres::Error> {
    let timestamp = msg
        .timestamp_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let headers = headers_json(&msg.headers);
    tx.execute(
        "INSERT INTO audit_rejections (kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, \
         kafka_key, kafka_value, kafka_headers, reason, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9)",
        &[
            &&*msg.topic,
            &msg.partition,
            &msg.offset,
            &timestamp,
            &msg.key,
            &msg.payload,
            &headers,
            &r.kind.as_str(),
            &r.error.replace('\0', "\u{FFFD}"),
        ],
    )?;
    Ok(())
}

/// Headers as a JSON array of `[name, value]`; a value that is not UTF-8 is written as `\x` hex.
fn headers_json(headers: &[(String, Option<Vec<u8>>)]) -> Option<String> {
    if headers.is_empty() {
        return None;
    }
    let items: Vec<serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            let value = v.as_ref().map(|bytes| match std::str::from_utf8(bytes) {
                Ok(s) => s.replace('\0', "\u{FFFD}"),
                Err(_) => format!(
                    "\\x{}",
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            });
            serde_json::json!([k.replace('\0', "\u{FFFD}"), value])
        })
        .collect();
    Some(serde_json::Value::Array(items).to_string())
}

/// Exponential backoff with jitter, capped.
struct Backoff {
    attempt: u32,
    seed: u64,
}

impl Backoff {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Backoff { attempt: 0, seed }
    }

    fn next(&mut self) -> Duration {
        self.attempt = (self.attempt + 1).min(16);
        let cap_ms = (100u64 << self.attempt.min(9)).min(30_000);
        // xorshift: enough randomness to spread instances apart, no crate needed.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        Duration::from_millis(cap_ms / 2 + self.seed % (cap_ms / 2 + 1))
    }
}

/// The writers' end of the transform stage, shared by all of them.
#[derive(Clone)]
pub struct Queue {
    /// Batches to write; it holds at most one batch per partition.
    pub batches: Receiver<Transformed>,
    /// Tells the transform stage a partition's batch is done, so its next one may come.
    pub done: Sender<Tp>,
}

/// A writer thread: takes transformed batches from the queue and commits each one.
pub struct Writer {
    id: usize,
    queue: Queue,
    pool: Pool,
    group: String,
    tracker: Arc<Tracker>,
    control: Arc<Control>,
    stats: Arc<Stats>,
}

impl Writer {
    pub fn new(
        id: usize,
        queue: Queue,
        pool: Pool,
        group: String,
        tracker: Arc<Tracker>,
        control: Arc<Control>,
        stats: Arc<Stats>,
    ) -> Self {
        Writer {
            id,
            queue,
            pool,
            group,
            tracker,
            control,
            stats,
        }
    }

    pub fn run(self) {
        let depth = self.stats.channel_depth.with_label_values(&["writers"]);
        for batch in &self.queue.batches {
            depth.set(self.queue.batches.len() as i64);
            let how = self.write(&batch);
            self.tracker.finish(&batch.batch.tp, batch.batch.epoch, how);
            // Only fails once the transform stage is gone, and then nothing waits for it.
            let _ = self.queue.done.send(batch.batch.tp.clone());
        }
        log::debug!("writer {} finished", self.id);
    }

    /// Writes one batch, retrying for as long as it takes, unless its epoch ends first.
    fn write(&self, t: &Transformed) -> Finish {
        let b = &t.batch;
        let mut backoff = Backoff::new();
        let mut isolate = false;
        loop {
            if !self.tracker.is_current(&b.tp, b.epoch) || self.control.abandoned() {
                self.stats.batches_dropped.inc();
                log::debug!(
                    "batch {} {}[{}] dropped: its epoch ended",
                    b.id,
                    b.tp.topic,
                    b.tp.partition
                );
                return Finish::Dropped;
            }
            let started = Instant::now();
            let busy = &self.stats.health.writer_busy_since_ms[self.id];
            busy.store(now_ms(), Ordering::Release);
            let result = match self.pool.get() {
                Ok(mut conn) => write_batch(&mut conn, &self.group, t, isolate)
                    .map_err(|e| (e.class(), e.to_string())),
                Err(e) => Err((
                    ErrorClass::Retriable,
                    format!("no database connection: {e}"),
                )),
            };
            busy.store(0, Ordering::Release);
            self.stats
                .health
                .writes_failing
                .store(result.is_err(), Ordering::Release);
            match result {
                Ok(Written::Committed {
                    next,
                    missing,
                    rows,
                    transactions,
                    rejected,
                    skips,
                    skipped,
                }) => {
                    self.stats
                        .batch_committed(b, rows, skipped, started.elapsed());
                    self.stats.transaction_events.inc_by(transactions as u64);
                    let now_us = now_ms() * 1000;
                    for outcome in t.outcomes.iter().skip(skipped) {
                        if let Outcome::Row(Row {
                            source_time_us: Some(at),
                            ..
                        }) = outcome
                        {
                            self.stats
                                .end_to_end_seconds
                                .observe((now_us - at).max(0) as f64 / 1e6);
                        }
                    }
                    for skip in skips {
                        self.stats.skipped(skip);
                    }
                    for gap in &missing {
                        self.stats.offsets_missing(&b.tp, gap);
                    }
                    for kind in &rejected {
                        self.stats.rejected(*kind);
                    }
                    if !rejected.is_empty() {
                        log::warn!(
                            "batch {}: {} messages stored as rejections",
                            b.id,
                            rejected.len()
                        );
                    }
                    return Finish::Committed { next };
                }
                Ok(Written::Behind { stored }) => {
                    self.stats.rewinds.inc();
                    log::warn!(
                        "batch {} {}[{}] starts at {:?} but the stored position is {stored}: reading again from there",
                        b.id, b.tp.topic, b.tp.partition, b.start
                    );
                    return Finish::Rewind { stored };
                }
                Err((ErrorClass::Data, e)) if !isolate => {
                    log::warn!(
                        "batch {}: a row was refused ({e}); splitting the batch to isolate it",
                        b.id
                    );
                    isolate = true;
                }
                Err((class, e)) => {
                    let wait = backoff.next();
                    self.stats.write_retries.inc();
                    if class == ErrorClass::Fatal {
                        log::error!(
                            "batch {} {}[{}]: {e}; a person must fix this; retrying in {wait:?}",
                            b.id,
                            b.tp.topic,
                            b.tp.partition
                        );
                    } else {
                        log::warn!(
                            "batch {} {}[{}]: {e}; retrying in {wait:?}",
                            b.id,
                            b.tp.topic,
                            b.tp.partition
                        );
                    }
                    self.sleep(wait);
                }
            }
        }
    }

    fn sleep(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.control.abandoned() {
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_split_at_the_partitions_first_offset() {
        let gap = |offsets: Range<i64>, cause| Gap { offsets, cause };
        let (r, n) = (Some(GapCause::Retention), Some(GapCause::NotDelivered));
        let missing = vec![2..5, 7..9, 12..20];
        assert_eq!(
            gaps(missing.clone(), None),
            [gap(2..5, None), gap(7..9, None), gap(12..20, None)]
        );
        assert_eq!(
            gaps(missing.clone(), Some(8)),
            [gap(2..5, r), gap(7..8, r), gap(8..9, n), gap(12..20, n)]
        );
        assert_eq!(
            gaps(missing.clone(), Some(2)),
            [gap(2..5, n), gap(7..9, n), gap(12..20, n)]
        );
        assert_eq!(
            gaps(missing, Some(20)),
            [gap(2..5, r), gap(7..9, r), gap(12..20, r)]
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(
            first >= Duration::from_millis(100) && first <= Duration::from_millis(200),
            "{first:?}"
        );
        for _ in 0..20 {
            assert!(b.next() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn header_values_that_are_not_utf8_are_hex() {
        let h = headers_json(&[("a".into(), Some(vec![0xff, 0x01])), ("b".into(), None)]).unwrap();
        assert_eq!(h, r#"[["a","\\xff01"],["b",null]]"#);
    }
}
