//! The vocabulary every stage speaks: a message, a partition, a batch and its load, what the
//! transform made of each message, how a writer finished, and the flags every stage reads. A leaf:
//! it imports no other module of the crate, so imports can point the way data flows.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A Kafka message copied out of librdkafka's buffer, so it can cross threads.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Message {
    /// The bytes the message holds (payload, key and headers): what batches and budgets count.
    pub fn size(&self) -> usize {
        let len = |b: Option<&[u8]>| b.map_or(0, <[u8]>::len);
        len(self.payload.as_deref()) + len(self.key.as_deref()) + headers_size(&self.headers)
    }
}

/// The bytes of headers' keys and values, as [`Message::size`] counts them.
pub fn headers_size(headers: &[(String, Option<Vec<u8>>)]) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
        .sum()
}

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: Arc<str>,
    pub partition: i32,
}

/// Consecutive messages of one partition. It covers the offsets `[start, end)`: `start` is the
/// consumer's position before the batch (known from the stored position or the previous batch),
/// so offsets Kafka skips (compaction, transaction markers) are covered too.
#[derive(Debug)]
pub struct Batch {
    pub id: u64,
    pub tp: Tp,
    /// The assignment epoch the batch was read under; a batch of an older epoch is never written.
    pub epoch: u64,
    /// `None` when the partition started from Kafka's committed offset (the database was not
    /// reachable at assignment): the writer then checks the stored position against the first offset.
    pub start: Option<i64>,
    pub end: i64,
    /// The holes of more than one offset the source saw in this batch, each checked with the
    /// broker and given its cause (see `source::holes`). A hole the writer finds that is not
    /// here (before the first message of a partition whose start was not known) has no cause.
    pub holes: Vec<Gap>,
    pub messages: Vec<Message>,
    /// The sum of the messages' [`Message::size`].
    pub bytes: usize,
    pub created: Instant,
}

impl Batch {
    pub fn load(&self) -> Load {
        Load {
            messages: self.messages.len(),
            bytes: self.bytes,
        }
    }
}

/// Messages and their bytes, as buffers count them: a budget is spent when either is reached,
/// so read-ahead sized in batches holds as many messages of small events and no more bytes of
/// large ones than `CDC_AUDIT_BATCH_BYTES` allows a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub messages: usize,
    pub bytes: usize,
}

impl Load {
    /// `n` batches, each full at `messages` messages or `bytes` bytes.
    pub fn batches(messages: usize, bytes: usize, n: usize) -> Load {
        Load { messages, bytes }.times(n)
    }

    pub fn times(self, n: usize) -> Load {
        Load {
            messages: self.messages.saturating_mul(n),
            bytes: self.bytes.saturating_mul(n),
        }
    }

    pub fn reaches(&self, budget: Load) -> bool {
        self.messages >= budget.messages || self.bytes >= budget.bytes
    }
}

impl std::ops::AddAssign for Load {
    fn add_assign(&mut self, other: Load) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

impl std::iter::Sum for Load {
    fn sum<I: Iterator<Item = Load>>(loads: I) -> Load {
        loads.fold(Load::default(), |mut total, load| {
            total += load;
            total
        })
    }
}

impl std::ops::SubAssign for Load {
    fn sub_assign(&mut self, other: Load) {
        self.messages -= other.messages;
        self.bytes -= other.bytes;
    }
}

/// A batch after the transform: each message with what became of it, in offset order.
#[derive(Debug)]
pub struct Transformed {
    pub batch: Batch,
    pub outcomes: Vec<Outcome>,
    /// Where this batch's writer tells the next one's where it leaves the partition's hash
    /// chain.
    pub handoff: Arc<Handoff>,
    /// The handoff of the partition's previous batch, if that one was still with the writers
    /// when this one was handed to them.
    pub after: Option<Arc<Handoff>>,
}

impl Transformed {
    pub fn new(batch: Batch, outcomes: Vec<Outcome>) -> Self {
        Transformed {
            batch,
            outcomes,
            handoff: Arc::default(),
            after: None,
        }
    }
}

/// What a batch's writer tells the writer of the partition's next batch, so that the two
/// transactions overlap: the next one links and COPYs its rows while this one commits, and
/// commits only if this one left the chain where it said.
#[derive(Debug, Default)]
pub struct Handoff {
    state: Mutex<Slot>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Slot {
    relay: Relay,
    /// Once finished: the link the writer kept to the end, the chain's head its commit left
    /// (`Pending` if it did not commit one). A writer whose attempt does not commit sets the
    /// relay back to `Pending` before it tries again or gives up, so the relay it finishes
    /// from is linked only if it committed that link.
    kept: Relay,
}

/// Where a batch's writer is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// Not linked yet.
    #[default]
    Pending,
    /// Linked: if it commits, the chain's head is this entry (sequence number and link).
    Linked { seq: i64, link: [u8; 32] },
    /// The writer is done with the batch, whatever became of it.
    Finished,
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, relay: Relay) {
        let mut slot = self.lock();
        if slot.relay != Relay::Finished {
            if relay == Relay::Finished {
                slot.kept = slot.relay;
            }
            slot.relay = relay;
        }
        drop(slot);
        self.changed.notify_all();
    }

    /// Waits until the writer has linked the batch (if `linked_will_do`) or is done with it, or
    /// until `stop()` says to stop (asked every 50 ms); returns the relay then.
    pub fn wait(&self, linked_will_do: bool, stop: impl FnMut() -> bool) -> Relay {
        self.wait_until(
            |relay| matches!(relay, Relay::Linked { .. }) && linked_will_do,
            stop,
        )
        .relay
    }

    /// Waits while the relay is `linked`, then says whether the writer finished the batch with
    /// that link kept, its commit's chain head: `false` if it gave the link up (an attempt that
    /// did not commit, whatever came after), or if `stop()` (asked every 50 ms) said to stop
    /// first.
    pub fn kept(&self, linked: Relay, stop: impl FnMut() -> bool) -> bool {
        let slot = self.wait_until(|relay| relay != linked, stop);
        slot.relay == Relay::Finished && slot.kept == linked
    }

    fn wait_until(
        &self,
        done: impl Fn(Relay) -> bool,
        mut stop: impl FnMut() -> bool,
    ) -> MutexGuard<'_, Slot> {
        let mut slot = self.lock();
        loop {
            match slot.relay {
                Relay::Finished => return slot,
                relay if done(relay) || stop() => return slot,
                _ => {}
            }
            slot = self
                .changed
                .wait_timeout(slot, Duration::from_millis(50))
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// How a writer finished with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Written (or found already written); the partition's stored position is now `next`.
    Committed { next: i64 },
    /// Not written: its epoch ended (revoke, rewind) or shutdown abandoned it.
    Dropped,
    /// Not written: the stored position is behind the batch; read again from `stored`.
    Rewind { stored: i64 },
}

/// What became of one message. `B` holds a row's encoded bytes: [`Bytes`] once made.
#[derive(Debug)]
pub enum Outcome<B = Bytes> {
    /// One `audit_logging` row.
    Row(Row<B>),
    /// One `audit_transactions` row (a BEGIN or END of the transaction metadata topic).
    Transaction(Row<B>),
    /// Nothing to store; its offset still counts as consumed.
    Skipped(Skip),
    Rejected(Rejection),
}

impl<B> Outcome<B> {
    /// The same outcome, its row's bytes (and its notice's names) held by what `f` makes of
    /// them.
    pub fn with_bytes<C>(self, f: impl FnMut(B) -> C) -> Outcome<C> {
        match self {
            Outcome::Row(row) => Outcome::Row(row.with_bytes(f)),
            Outcome::Transaction(row) => Outcome::Transaction(row.with_bytes(f)),
            Outcome::Skipped(skip) => Outcome::Skipped(skip),
            Outcome::Rejected(rejection) => Outcome::Rejected(rejection),
        }
    }
}

/// Bytes that are a part of a buffer others share: a message's key or value (the messages of
/// a batch share the poll thread's chunks), a row (the rows transformed together share theirs).
/// They are made on one thread and freed on another, and glibc frees a block another thread
/// allocated under that thread's arena lock: one buffer for many makes that once for all.
#[derive(Clone)]
pub struct Bytes {
    buf: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl Bytes {
    /// `range` of `buf`, which others share.
    pub fn shared(buf: &Arc<Vec<u8>>, range: Range<usize>) -> Self {
        Bytes {
            buf: buf.clone(),
            range,
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        let range = 0..bytes.len();
        Bytes {
            buf: Arc::new(bytes),
            range,
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

/// Its own bytes only, not the buffer's.
impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        **self == **other
    }
}

impl Eq for Bytes {}

/// Its own bytes only, not the buffer's.
impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A row encoded as a binary COPY tuple whose last fields the writer appends (the chain's:
/// see `chain`), its content hash, and its source commit time for the end-to-end latency metric.
#[derive(Debug)]
pub struct Row<B = Bytes> {
    pub bytes: B,
    pub content: [u8; 32],
    pub source_time_us: Option<i64>,
    /// What the suspicious-change detector counts, for the rows it looks at (updates, deletes,
    /// truncates, drops).
    pub notice: Option<Notice<B>>,
}

impl<B> Row<B> {
    fn with_bytes<C>(self, mut f: impl FnMut(B) -> C) -> Row<C> {
        Row {
            bytes: f(self.bytes),
            content: self.content,
            source_time_us: self.source_time_us,
            notice: self.notice.map(|n| Notice {
                kind: n.kind,
                table: f(n.table),
                transaction: n.transaction.map(&mut f),
            }),
        }
    }
}

/// A change the detector of suspicious changes counts once its row is committed. Its names are
/// UTF-8, in the buffer its row shares (beside the row, not in it): no block of their own to
/// free on the writer's thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice<B = Bytes> {
    pub kind: NoticeKind,
    /// `db.schema.table`, empty parts left out.
    pub table: B,
    pub transaction: Option<B>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    Update,
    Delete,
    Truncate,
    DropTable,
    DropColumn,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Update => "update",
            NoticeKind::Delete => "delete",
            NoticeKind::Truncate => "truncate",
            NoticeKind::DropTable => "drop_table",
            NoticeKind::DropColumn => "drop_column",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A null value, Debezium's marker for log compaction after a delete.
    Tombstone,
    /// A Debezium heartbeat (`__debezium-heartbeat.*`): liveness, not a change.
    Heartbeat,
    /// A table left out by `CDC_AUDIT_INCLUDE_TABLES` / `CDC_AUDIT_EXCLUDE_TABLES`.
    Filtered,
}

/// Why a message could not become an audit row; stored with its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectKind,
    pub error: String,
}

/// The fixed set of rejection reasons (a bounded metric label and a column value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// Not UTF-8 JSON at all.
    NotJson,
    /// JSON, but not a change event this version understands.
    NotAChangeEvent,
    /// A change event with an operation code outside Debezium's set.
    UnknownOperation,
    /// A field of the right name but the wrong type or value.
    InvalidField,
    /// The message key is present but not JSON.
    InvalidKey,
    /// PostgreSQL refused the row (found by splitting the batch).
    DatabaseRefused,
    /// Registry-framed, with a schema id the registry does not know (or no registry set).
    SchemaNotFound,
    /// Registry-framed bytes that do not decode under their schema, or a schema this version
    /// does not read.
    Undecodable,
}

impl RejectKind {
    pub const ALL: [RejectKind; 8] = [
        RejectKind::NotJson,
        RejectKind::NotAChangeEvent,
        RejectKind::UnknownOperation,
        RejectKind::InvalidField,
        RejectKind::InvalidKey,
        RejectKind::DatabaseRefused,
        RejectKind::SchemaNotFound,
        RejectKind::Undecodable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::NotJson => "not_json",
            RejectKind::NotAChangeEvent => "not_a_change_event",
            RejectKind::UnknownOperation => "unknown_operation",
            RejectKind::InvalidField => "invalid_field",
            RejectKind::InvalidKey => "invalid_key",
            RejectKind::DatabaseRefused => "database_refused",
            RejectKind::SchemaNotFound => "schema_not_found",
            RejectKind::Undecodable => "undecodable",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// At or past the partition's first offset, and explained: an aborted transaction's records
    /// (a second fetch that reads uncommitted records found them) or a compacted topic.
    NotDelivered,
    /// At or past the partition's first offset, and not explained: fetched again, the broker
    /// still had nothing there, committed or not, and the topic is not compacted. Kafka never
    /// does this; a broker that skips records does, and their changes are not in the trail.
    Suspect,
}

impl GapCause {
    pub fn as_str(self) -> &'static str {
        match self {
            GapCause::Retention => "retention",
            GapCause::NotDelivered => "not_delivered",
            GapCause::Suspect => "suspect",
        }
    }
}

/// Flags shared by every stage.
#[derive(Debug, Default)]
pub struct Control {
    /// Set by SIGTERM/SIGINT (or the demo): stop polling, drain, leave.
    pub shutdown: Arc<AtomicBool>,
    /// Set when the shutdown deadline passed: writers stop retrying and drop what they hold.
    pub abandon: AtomicBool,
}

impl Control {
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::Release);
    }
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
    pub fn abandoned(&self) -> bool {
        self.abandon.load(Ordering::Acquire)
    }
}

/// How the pipeline ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every in-flight batch was committed (or dropped to be re-read) before the deadline.
    Drained,
    /// The deadline passed with batches still being written; they will be read again.
    DeadlineExceeded { in_flight: usize },
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    /// The writer of a batch behind another waits while the link it was given stands: until
    /// that one's writer is done, or gives the link up; and learns whether it was kept to the
    /// end, even where it was given up and linked again before the wait began.
    #[test]
    fn a_link_is_kept_only_if_the_batch_finishes_with_it() {
        let linked = Relay::Linked {
            seq: 7,
            link: [1; 32],
        };
        let again = Relay::Linked {
            seq: 7,
            link: [2; 32],
        };
        // What the writer sets after `linked`, 120 ms into the wait, and whether it was kept.
        let cases: [(&[Relay], bool); 4] = [
            (&[Relay::Finished], true),
            (&[Relay::Pending], false),
            (&[again], false),
            (&[Relay::Pending, again, Relay::Finished], false),
        ];
        for (then, kept) in cases {
            let handoff = Arc::new(Handoff::default());
            handoff.set(linked);
            let writer = {
                let (handoff, then) = (handoff.clone(), then.to_vec());
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(120));
                    then.into_iter().for_each(|r| handoff.set(r));
                })
            };
            let started = Instant::now();
            assert_eq!(handoff.kept(linked, || false), kept, "{then:?}");
            assert!(started.elapsed() >= Duration::from_millis(120), "{then:?}");
            writer.join().unwrap();
            // Asked after the writer is done: the same answer.
            assert_eq!(handoff.kept(linked, || false), kept, "{then:?}");
        }
        // Asked to stop while the link stands: not known to be kept.
        let handoff = Handoff::default();
        handoff.set(linked);
        assert!(!handoff.kept(linked, || true));
    }
}
