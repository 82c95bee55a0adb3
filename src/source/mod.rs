//! The poll thread: the only owner of the Kafka consumer. It forms per-partition batches, hands
//! them on, waits for room (and pauses the assignment if the pipeline stays full), and runs the
//! rebalance callbacks (which happen inside `poll`): positions come from PostgreSQL, not Kafka.

pub mod holes;
mod pending;
mod read;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::Config;
use crate::events::{now_ms, Stats};
use crate::sink::{self, Pool};
use crate::tracker::Tracker;
use crate::types::{Batch, Control, Exit, Load, Tp};
use holes::Holes;
use pending::Pending;
use read::{interned, watermarks};

/// How long the poll thread waits for room downstream before it polls again.
const ROOM_WAIT: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub enum SourceError {
    Kafka(KafkaError),
    Spawn(String),
    Panicked,
    /// A downstream stage ended while the source was still running.
    StageDied,
    /// The schema registry's client could not be set up (its CA file, its address).
    Registry(String),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Kafka(e) => write!(f, "Kafka consumer: {e}"),
            SourceError::Spawn(e) => write!(f, "could not start a thread: {e}"),
            SourceError::Panicked => f.write_str("the poll thread panicked"),
            SourceError::StageDied => f.write_str(
                "the transform or a writer thread died; exiting so the service restarts",
            ),
            SourceError::Registry(e) => write!(f, "CDC_AUDIT_SCHEMA_REGISTRY_*: {e}"),
        }
    }
}

impl std::error::Error for SourceError {}

impl From<KafkaError> for SourceError {
    fn from(e: KafkaError) -> Self {
        SourceError::Kafka(e)
    }
}

/// The consumer's context: rebalance callbacks run here, on the poll thread.
pub struct AuditContext {
    tracker: Arc<Tracker>,
    control: Arc<Control>,
    pool: Pool,
    group: String,
    rebalance_timeout: Duration,
    stats: Arc<Stats>,
    /// `auto.offset.reset` is `latest`: a partition without a position starts at its end.
    reset_latest: bool,
}

impl ClientContext for AuditContext {
    /// Partition ends (last stable offsets) for lag, every `statistics.interval.ms`.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.stats
                .health
                .brokers_down
                .store(false, Ordering::Release);
        }
        let ends = statistics.topics.into_iter().flat_map(|(topic, t)| {
            let topic: Arc<str> = Arc::from(topic);
            t.partitions
                .into_values()
                .filter(|p| p.partition >= 0)
                .filter_map(move |p| {
                    let end = if p.ls_offset >= 0 {
                        p.ls_offset
                    } else {
                        p.hi_offset
                    };
                    (end >= 0).then(|| {
                        (
                            Tp {
                                topic: topic.clone(),
                                partition: p.partition,
                            },
                            end,
                        )
                    })
                })
        });
        self.tracker.set_ends(ends);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.stats
                .health
                .brokers_down
                .store(true, Ordering::Release);
        }
        log::warn!("librdkafka: {error}: {reason}");
    }
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| Tp {
            topic: Arc::from(e.topic()),
            partition: e.partition(),
        })
        .collect()
}

impl AuditContext {
    /// Where a partition without a stored position starts: its first offset (or its end, with
    /// `auto.offset.reset=latest`). `None` if the broker cannot say.
    fn first_offset(&self, consumer: &BaseConsumer<Self>, tp: &Tp) -> Option<i64> {
        watermarks(consumer, tp, Duration::from_secs(10)).map(|(low, high)| {
            if self.reset_latest {
                high
            } else {
                low
            }
        })
    }

    /// The offset Kafka has committed for the group (advisory; used when PostgreSQL is away).
    fn kafka_committed(&self, consumer: &BaseConsumer<Self>, tp: &Tp) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.topic, tp.partition);
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .ok()?;
        let offset = committed.find_partition(&tp.topic, tp.partition)?.offset();
        match offset {
            Offset::Offset(n) => Some(n),
            _ => None,
        }
    }

    /// Stored positions of these partitions, or `None` when the database cannot be read now
    /// (the partitions then start from Kafka's committed offset and the writer's fence decides).
    fn stored_positions(&self, tps: &[Tp]) -> Option<HashMap<Tp, i64>> {
        sink::stored_positions(&self.pool, &self.group, tps)
            .map_err(|e| {
                log::warn!(
                    "cannot read stored positions ({e}); starting from Kafka's committed offsets"
                )
            })
            .ok()
    }
}

impl ConsumerContext for AuditContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let tps = tps_of(tpl);
                let stored = self.stored_positions(&tps);
                for tp in &tps {
                    // Every partition starts at an offset the source knows exactly: the stored
                    // position, else where Kafka would start. (librdkafka's own start is not
                    // enough: a partition paused before its first message resumes from its
                    // fetch position, past what the pause discarded.)
                    let start = match &stored {
                        Some(positions) => positions
                            .get(tp)
                            .copied()
                            .or_else(|| self.first_offset(consumer, tp)),
                        None => self
                            .kafka_committed(consumer, tp)
                            .or_else(|| self.first_offset(consumer, tp)),
                    };
                    if let Some(offset) = start {
                        if let Err(e) = tpl.set_partition_offset(
                            &tp.topic,
                            tp.partition,
                            Offset::Offset(offset),
                        ) {
                            log::error!(
                                "cannot set the start of {}[{}]: {e}",
                                tp.topic,
                                tp.partition
                            );
                        }
                    }
                    self.tracker.assign(tp, start);
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    log::error!("assign failed: {e}");
                }
                self.stats.rebalance("assigned", &tps);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let tps = tps_of(tpl);
                // Queued batches of these partitions become stale; wait for those being written.
                self.tracker.revoke(&tps);
                if !self.control.abandoned() {
                    let busy = self
                        .tracker
                        .wait_idle(&tps, Instant::now() + self.rebalance_timeout);
                    if busy > 0 {
                        log::warn!(
                            "{busy} batches of revoked partitions still being written after {:?}; \
                             the stored position fences them against the new owner",
                            self.rebalance_timeout
                        );
                    }
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    log::error!("unassign failed: {e}");
                }
                self.stats.rebalance("revoked", &tps);
            }
            other => {
                log::error!("rebalance error: {other:?}");
                let _ = consumer.unassign();
            }
        }
    }
}

/// The poll thread's view of one assigned partition.
struct Cursor {
    epoch: u64,
    /// The offset after the last message taken (or the known start); `None` until the first.
    next: Option<i64>,
    pending: Option<Pending>,
    /// The pending batch's partition was behind when it filled (see [`complete`]).
    behind: bool,
    /// A seek (back to the stored position after a rewind, or to `next` after a resume) that has
    /// not succeeded yet; messages are ignored until it does.
    seek: Option<i64>,
}

pub struct Source {
    /// Shared with `run`'s loop only, so that a message borrowed from it can be taken by
    /// `accept` while `accept` changes the source.
    consumer: Arc<BaseConsumer<AuditContext>>,
    output: Option<Sender<Batch>>,
    tracker: Arc<Tracker>,
    control: Arc<Control>,
    stats: Arc<Stats>,
    batch_size: usize,
    /// A full batch: `CDC_AUDIT_BATCH_SIZE` messages or `CDC_AUDIT_BATCH_BYTES` bytes.
    full: Load,
    linger: Duration,
    idle_linger: Duration,
    writers: usize,
    last_pending_check: Instant,
    /// What `ready` may hold before the source waits for room downstream (see `send_ready`):
    /// a full batch per slot of the channel.
    ready_budget: Load,
    shutdown_timeout: Duration,
    cursors: HashMap<Tp, Cursor>,
    ready: VecDeque<Batch>,
    paused: bool,
    seen_version: u64,
    next_batch_id: u64,
    topics: HashMap<String, Arc<str>>,
    last_kafka_commit: Instant,
    kafka_committed: HashMap<Tp, i64>,
    holes: Holes,
}

/// The librdkafka settings of the consumer; the user's `CDC_AUDIT_KAFKA_*` come last and win,
/// except the ones exactly-once depends on, which `Config` refuses.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.group_id)
        .set("auto.offset.reset", "earliest")
        // Keep librdkafka's prefetch small: memory stays bounded while PostgreSQL is slow.
        .set("queued.max.messages.kbytes", "8192")
        // Once the prefetch was full, fetch again as soon as there is room, not after
        // librdkafka's default second: the pipeline drains 8 MB in a fraction of that.
        .set("fetch.queue.backoff.ms", "10")
        .set("client.id", "cdc-audit")
        // Partition ends for lag, read in the statistics callback.
        .set("statistics.interval.ms", "5000");
    for (k, v) in &config.kafka {
        c.set(k, v);
    }
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    c
}

/// The settings of the admin client that reads topics' configuration: the broker, and of the
/// user's `CDC_AUDIT_KAFKA_*` those of the connection (security, sockets), not the consumer's own,
/// which librdkafka would warn about.
fn admin_config(config: &Config) -> ClientConfig {
    const CONNECTION: [&str; 6] = [
        "security.",
        "ssl.",
        "sasl.",
        "socket.",
        "broker.",
        "client.dns",
    ];
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", "cdc-audit-holes");
    for (k, v) in &config.kafka {
        if CONNECTION.iter().any(|p| k.starts_with(p)) {
            c.set(k, v);
        }
    }
    c
}

/// How many full batches a batch of a partition that is behind may grow to.
const BEHIND_GROWTH: usize = 3;

/// Whether a batch of `load` is complete: when it reaches `full`, unless its partition is
/// `behind` (the batches waiting in the source for room downstream are all its own: one hot
/// partition): then at `BEHIND_GROWTH` times that. One hot partition keeps at most two writers
/// busy, and each of its batches pays for a transaction, a fence and a hand-over; larger
/// batches pay those for more rows. Where several partitions wait, the writers are busy
/// anyway, and larger batches only held more memory.
fn complete(load: Load, full: Load, behind: bool) -> bool {
    load.reaches(if behind {
        full.times(BEHIND_GROWTH)
    } else {
        full
    })
}

impl Source {
    pub fn new(
        config: &Config,
        output: Sender<Batch>,
        tracker: Arc<Tracker>,
        control: Arc<Control>,
        pool: Pool,
        stats: Arc<Stats>,
    ) -> Result<Source, SourceError> {
        let context = AuditContext {
            tracker: tracker.clone(),
            control: control.clone(),
            pool,
            group: config.group_id.clone(),
            rebalance_timeout: config.rebalance_timeout,
            stats: stats.clone(),
            reset_latest: matches!(
                config.kafka.get("auto.offset.reset").map(String::as_str),
                Some("latest" | "largest" | "end")
            ),
        };
        let consumer: BaseConsumer<AuditContext> =
            client_config(config).create_with_context(context)?;
        let subscription = config.topics.subscription();
        let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        log::info!(
            "subscribed to {} as group {}",
            topics.join(", "),
            config.group_id
        );
        Ok(Source {
            consumer: Arc::new(consumer),
            output: Some(output),
            tracker,
            control,
            stats,
            batch_size: config.batch_size,
            full: Load::batches(config.batch_size, config.batch_bytes, 1),
            linger: config.batch_linger,
            idle_linger: config.batch_idle_linger,
            writers: config.writers,
            last_pending_check: Instant::now(),
            ready_budget: Load::batches(
                config.batch_size,
                config.batch_bytes,
                config.channel_capacity,
            ),
            shutdown_timeout: config.shutdown_timeout,
            cursors: HashMap::new(),
            ready: VecDeque::new(),
            paused: false,
            seen_version: u64::MAX,
            next_batch_id: 0,
            topics: HashMap::new(),
            last_kafka_commit: Instant::now(),
            kafka_committed: HashMap::new(),
            holes: Holes::new(client_config(config), admin_config(config)),
        })
    }

    pub fn run(mut self) -> Result<Exit, SourceError> {
        let depth = self.stats.channel_depth.with_label_values(&["transform"]);
        while !self.control.shutting_down() {
            let consumer = self.consumer.clone();
            let Some(output) = &self.output else {
                return Err(SourceError::StageDied);
            };
            depth.set(output.len() as i64);
            self.stats
                .health
                .poll_tick_ms
                .store(now_ms(), Ordering::Release);
            self.sync();
            let lingering = self.flush_pending();
            self.send_ready();
            // Short while batches wait: for room downstream, or for a writer to be free.
            let waiting = lingering || !self.ready.is_empty();
            let mut timeout = Duration::from_millis(if waiting { 5 } else { 50 });
            // Then what librdkafka already holds, until a batch is ready: the turn above looks at
            // every partition and the clock, which per message took a fifth of this thread.
            let ready = self.ready.len();
            for _ in 0..self.batch_size {
                match consumer.poll(timeout) {
                    None => break,
                    Some(Ok(m)) => {
                        self.stats
                            .health
                            .brokers_down
                            .store(false, Ordering::Release);
                        self.accept(&m);
                    }
                    Some(Err(e)) => {
                        log::warn!("consumer: {e}");
                        break;
                    }
                }
                if self.ready.len() != ready {
                    break;
                }
                timeout = Duration::ZERO;
            }
            if self.last_kafka_commit.elapsed() >= Duration::from_secs(2) {
                self.commit_to_kafka(CommitMode::Async);
            }
        }
        Ok(self.drain())
    }

    /// Catches up with assignments, revocations and rewinds made since the last look.
    fn sync(&mut self) {
        let version = self.tracker.version();
        if version == self.seen_version {
            return;
        }
        self.seen_version = version;
        for (tp, stored) in self.tracker.take_rewinds() {
            if let Some(cursor) = self.cursors.get_mut(&tp) {
                cursor.seek = Some(stored);
            }
        }
        // Without the assignment nothing may be dropped: try again at the next turn.
        let assignment = match self.consumer.assignment() {
            Ok(tpl) => tps_of(&tpl),
            Err(e) => {
                log::warn!("cannot read the assignment: {e}");
                self.seen_version = u64::MAX;
                return;
            }
        };
        self.cursors.retain(|tp, _| assignment.contains(tp));
        for tp in assignment {
            let Some(now) = self.tracker.assigned(&tp) else {
                self.cursors.remove(&tp);
                continue;
            };
            let cursor = self.cursors.entry(tp).or_insert(Cursor {
                epoch: 0,
                next: None,
                pending: None,
                behind: false,
                seek: None,
            });
            if cursor.epoch != now.epoch {
                cursor.epoch = now.epoch;
                cursor.next = now.start;
                cursor.pending = None;
            }
        }
        let cursors = &self.cursors;
        self.ready
            .retain(|b| cursors.get(&b.tp).is_some_and(|c| c.epoch == b.epoch));
        let seeks: Vec<(Tp, i64)> = self
            .cursors
            .iter()
            .filter_map(|(tp, c)| c.seek.map(|s| (tp.clone(), s)))
            .collect();
        for (tp, offset) in seeks {
            match self.consumer.seek(
                &tp.topic,
                tp.partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                Ok(()) => {
                    log::debug!(
                        "{}[{}]: reading from offset {offset}",
                        tp.topic,
                        tp.partition
                    );
                    if let Some(c) = self.cursors.get_mut(&tp) {
                        c.seek = None;
                    }
                }
                // Try again at the next sync; until then this partition's messages are ignored.
                Err(e) => {
                    log::warn!("seek {}[{}] to {offset}: {e}", tp.topic, tp.partition);
                    self.seen_version = u64::MAX;
                }
            }
        }
        // librdkafka keeps a partition's pause through a rebalance: one paused, revoked (which
        // ends the pause here) and assigned again would never be fetched. The whole assignment
        // takes the source's state.
        self.pause(self.paused);
    }

    fn accept(&mut self, m: &BorrowedMessage<'_>) {
        if self.tracker.version() != self.seen_version {
            self.sync();
        }
        let tp = Tp {
            topic: interned(&mut self.topics, m.topic()),
            partition: m.partition(),
        };
        let Some(cursor) = self.cursors.get_mut(&tp) else {
            log::debug!(
                "message of unassigned {}[{}] ignored",
                tp.topic,
                tp.partition
            );
            return;
        };
        let offset = m.offset();
        if cursor.seek.is_some() || cursor.next.is_some_and(|next| offset < next) {
            return; // already taken, or read before a pending seek
        }
        self.stats.messages_consumed.inc();
        // A hole of more than one offset (a single one is a transaction's commit marker).
        let hole = cursor
            .next
            .filter(|&next| offset > next + 1)
            .map(|next| next..offset);
        if cursor.pending.is_none() {
            cursor.behind = false;
        }
        let batch = cursor.pending.get_or_insert_with(|| {
            self.next_batch_id += 1;
            Pending::new(Batch {
                id: self.next_batch_id,
                tp,
                epoch: cursor.epoch,
                start: cursor.next,
                end: offset + 1,
                holes: Vec::new(),
                messages: Vec::with_capacity(self.batch_size.min(4096)),
                bytes: 0,
                created: Instant::now(),
            })
        });
        if let Some(hole) = hole {
            // Checked with the broker before the writer records it: what a second fetch finds
            // is written after all.
            let checked = self
                .holes
                .check(&self.consumer, batch.tp(), hole, &mut self.topics);
            for found in checked.found {
                self.stats.messages_consumed.inc();
                self.stats.offsets_fetched_again.inc();
                batch.push_copied(found);
            }
            batch.holes().extend(checked.holes);
        }
        batch.push(m);
        cursor.next = Some(offset + 1);
        let load = batch.load();
        if load.reaches(self.full) {
            // Looked at once a batch, when it first fills: the batches waiting here are all
            // this partition's.
            if !cursor.behind {
                cursor.behind =
                    !self.ready.is_empty() && self.ready.iter().all(|b| &b.tp == batch.tp());
            }
            if complete(load, self.full, cursor.behind) {
                self.ready
                    .extend(cursor.pending.take().map(Pending::finish));
            }
        }
    }

    /// Hands on the pending batches whose partition has nothing on its way: once they are
    /// `idle_linger` old if a writer is free (at low rates a change waits for a writer, not for
    /// the linger), else once they are `linger` old. A batch whose partition has a batch on its
    /// way grows until that one is written, then goes whether a writer is free or not (or when
    /// it is full: `accept`), so each write takes all that came meanwhile (group commit).
    /// Handed on earlier, it would not be written sooner, only smaller, queued behind its
    /// partition's last one: under a steady load near what the writers can take, batches held
    /// to the linger paid a transaction's fixed cost (its round trips, its commit's flush) for a
    /// few hundred rows each and queued up behind each other. Looked at every 5 ms at most: it
    /// takes the tracker's lock. Returns whether any batch is still pending.
    fn flush_pending(&mut self) -> bool {
        if self.last_pending_check.elapsed() >= Duration::from_millis(5) {
            self.last_pending_check = Instant::now();
            let waited = |c: &Cursor, wait: Duration| {
                c.pending
                    .as_ref()
                    .is_some_and(|b| b.created().elapsed() >= wait)
            };
            let (linger, idle_linger) = (self.linger, self.idle_linger);
            if self.cursors.values().any(|c| waited(c, idle_linger)) {
                // Each busy partition occupies at most one writer.
                let mut busy = self.tracker.busy_partitions();
                busy.extend(self.ready.iter().map(|b| b.tp.clone()));
                let writer_free = busy.len() < self.writers;
                for (tp, cursor) in &mut self.cursors {
                    let due = waited(cursor, linger) || writer_free && waited(cursor, idle_linger);
                    if due && !busy.contains(tp) {
                        self.ready
                            .extend(cursor.pending.take().map(Pending::finish));
                    }
                }
            }
        }
        self.cursors.values().any(|c| c.pending.is_some())
    }

    /// Hands ready batches on while there is room. Once the batches left waiting reach the budget
    /// it waits up to [`ROOM_WAIT`] for room instead of reading on: librdkafka keeps fetching
    /// meanwhile, up to `queued.max.messages.kbytes`, and keeps what it fetched, where a pause
    /// would throw it away and fetch it again on resume (under a steady backlog that was several
    /// pauses a second). Only if twice the budget piles up, the downstream is stuck (the database
    /// is away): it pauses, and resumes once everything is handed on.
    fn send_ready(&mut self) {
        let Some(output) = &self.output else { return };
        let mut waiting: Load = self.ready.iter().map(Batch::load).sum();
        let mut waited = false;
        while let Some(batch) = self.ready.pop_front() {
            let load = batch.load();
            // Counted before it is sent: a writer may finish it before the send returns.
            let tp = batch.tp.clone();
            self.tracker.sent(&tp);
            let sent = if waiting.reaches(self.ready_budget) && !waited {
                // Once per turn, so that poll still serves rebalances every ROOM_WAIT.
                waited = true;
                output.send_timeout(batch, ROOM_WAIT).map_err(|e| match e {
                    SendTimeoutError::Timeout(b) => TrySendError::Full(b),
                    SendTimeoutError::Disconnected(b) => TrySendError::Disconnected(b),
                })
            } else {
                output.try_send(batch)
            };
            match sent {
                Ok(()) => waiting -= load,
                Err(TrySendError::Full(batch)) => {
                    self.tracker.unsent(&tp);
                    self.ready.push_front(batch);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.output = None;
                    return;
                }
            }
        }
        let want_pause = if self.paused {
            !self.ready.is_empty()
        } else {
            waiting.reaches(self.ready_budget.times(2))
        };
        if want_pause != self.paused {
            self.pause(want_pause);
        }
    }

    fn pause(&mut self, pause: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => return log::warn!("assignment: {e}"),
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                if pause != self.paused {
                    log::debug!(
                        "consumption {}",
                        if pause {
                            "paused: pipeline full"
                        } else {
                            "resumed"
                        }
                    );
                }
                if !pause && self.paused {
                    // librdkafka resumes from its own idea of the position, which skips what the
                    // pause discarded for a partition the application had not read yet: seek every
                    // partition to exactly where the source is, and ignore what arrives before.
                    for cursor in self.cursors.values_mut() {
                        cursor.seek = cursor.next;
                    }
                    self.seen_version = u64::MAX;
                }
                self.paused = pause;
                self.stats.paused.set(pause as i64);
            }
            Err(e) => log::warn!("pause/resume: {e}"),
        }
    }

    /// Commits the stored positions to Kafka too, for lag tools; PostgreSQL stays the truth.
    fn commit_to_kafka(&mut self, mode: CommitMode) {
        self.last_kafka_commit = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for (tp, next) in self.tracker.committed_positions() {
            if self.kafka_committed.get(&tp) != Some(&next) {
                let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next));
                self.kafka_committed.insert(tp, next);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, mode) {
                log::debug!("advisory Kafka commit: {e}");
            }
        }
    }

    /// Shutdown: stop fetching, hand on what was read, wait for the writers, leave the group.
    fn drain(mut self) -> Exit {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.pause(true);
        self.sync();
        let mut pending: Vec<Batch> = self
            .cursors
            .values_mut()
            .filter_map(|c| c.pending.take().map(Pending::finish))
            .collect();
        pending.sort_by_key(|b| b.id);
        self.ready.extend(pending);
        log::info!(
            "draining: {} messages in {} batches to hand on, {} batches in flight",
            self.ready.iter().map(|b| b.messages.len()).sum::<usize>(),
            self.ready.len(),
            self.tracker.in_flight()
        );
        while !self.ready.is_empty() && Instant::now() < deadline {
            self.send_ready();
            self.consumer.poll(Duration::from_millis(10));
            self.sync();
        }
        self.output = None; // disconnect: the transform and the writers finish their queues
        while self.tracker.in_flight() > 0 && Instant::now() < deadline {
            self.consumer.poll(Duration::from_millis(20));
        }
        let left = self.tracker.in_flight() + self.ready.len();
        if left > 0 {
            self.control.abandon.store(true, Ordering::Release);
        }
        self.commit_to_kafka(CommitMode::Sync);
        self.consumer.unsubscribe();
        drop(self.consumer); // closes the consumer: leaves the group
        if left > 0 {
            Exit::DeadlineExceeded { in_flight: left }
        } else {
            Exit::Drained
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_batch_of_a_partition_behind_grows_to_three_full_ones_by_messages_or_bytes() {
        let full = Load::batches(2000, 1 << 20, 1);
        let load = |messages, bytes| Load { messages, bytes };
        assert!(!complete(load(1999, 1000), full, false));
        assert!(complete(load(2000, 1000), full, false));
        assert!(complete(load(10, 1 << 20), full, false), "full by bytes");
        assert!(!complete(load(2000, 1000), full, true), "behind: it grows");
        assert!(!complete(load(5999, 3 << 19), full, true));
        assert!(complete(load(6000, 1000), full, true));
        assert!(
            complete(load(10, 3 << 20), full, true),
            "three full ones by bytes"
        );
    }

    fn consumer_settings(extra: &[(&str, &str)]) -> ClientConfig {
        let raw: BTreeMap<String, String> = [
            ("CDC_AUDIT_BOOTSTRAP_SERVERS", "localhost:9092"),
            ("CDC_AUDIT_TOPICS", "a.b.c"),
            ("CDC_AUDIT_DATABASE_URL", "postgres://localhost/db"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        client_config(&Config::from_settings(&raw).unwrap())
    }

    #[test]
    fn the_prefetch_is_bounded_and_refilled_at_once_unless_the_user_says_otherwise() {
        let c = consumer_settings(&[]);
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("8192"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));

        let c = consumer_settings(&[
            ("CDC_AUDIT_KAFKA_FETCH_QUEUE_BACKOFF_MS", "500"),
            ("CDC_AUDIT_KAFKA_QUEUED_MAX_MESSAGES_KBYTES", "4096"),
        ]);
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("500"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("4096"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }
}
