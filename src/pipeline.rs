//! The batch types that cross the stage channels, the partition [`Tracker`] shared by the poll
//! thread and the writers, and the wiring that spawns and joins the stages.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Select, Sender};
use prometheus::IntGauge;
use rayon::prelude::*;

use crate::config::Config;
use crate::events::Stats;
use crate::sink::{Pool, Queue, Writer};
use crate::source::{Source, SourceError};
use crate::transform::rules::Rules;
use crate::transform::{transform, Outcome};

/// A Kafka message copied out of librdkafka's buffer, so it can cross threads.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Message {
    /// The bytes the message holds (payload, key and headers): what batches and budgets count.
    pub fn size(&self) -> usize {
        let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
        len(&self.payload)
            + len(&self.key)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + len(v))
                .sum::<usize>()
    }
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
    /// The partition's first offset as the broker gave it when the source saw a hole of more
    /// than one offset in this batch: what lies below it retention removed; what Kafka did not
    /// deliver at or past it was an aborted transaction's or compacted. `None`: no such hole,
    /// or the broker did not answer.
    pub log_start: Option<i64>,
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
    /// `batches` full batches of `config`.
    pub fn batches(config: &Config, batches: usize) -> Load {
        Load {
            messages: config.batch_size,
            bytes: config.batch_bytes,
        }
        .times(batches)
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

#[derive(Debug, Default)]
struct PartitionState {
    epoch: u64,
    assigned: bool,
    /// The partition's end (last stable offset) from librdkafka's statistics.
    end: Option<i64>,
    /// Where the next batch starts, when known (stored position at assignment or rewind).
    start: Option<i64>,
    in_flight: usize,
    committed: Option<i64>,
}

#[derive(Debug, Default)]
struct TrackerInner {
    partitions: HashMap<Tp, PartitionState>,
    rewinds: Vec<(Tp, i64)>,
    next_epoch: u64,
}

/// Partition state shared by the poll thread (assign, revoke, send) and the writers (finish).
/// Epochs fence stale batches inside the process; the stored position fences them in the database.
#[derive(Debug, Default)]
pub struct Tracker {
    inner: Mutex<TrackerInner>,
    changed: Condvar,
    /// Bumped whenever an epoch changes, so the poll thread notices without taking the lock.
    version: AtomicU64,
}

/// An assigned partition as `/status` shows it.
#[derive(Debug, Clone)]
pub struct PartitionStatus {
    pub tp: Tp,
    /// The stored position, as far as this instance knows it.
    pub committed: Option<i64>,
    pub end: Option<i64>,
    pub in_flight: usize,
}

impl PartitionStatus {
    pub fn lag(&self) -> Option<i64> {
        Some((self.end? - self.committed.unwrap_or(0)).max(0))
    }
}

/// What the poll thread needs to know about an assigned partition.
#[derive(Debug, Clone, Copy)]
pub struct Assigned {
    pub epoch: u64,
    pub start: Option<i64>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerInner> {
        // A writer that panicked while holding the lock leaves consistent counters; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::Release);
        self.changed.notify_all();
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Starts a new epoch for a newly assigned partition.
    pub fn assign(&self, tp: &Tp, start: Option<i64>) {
        let mut inner = self.lock();
        inner.next_epoch += 1;
        let epoch = inner.next_epoch;
        let state = inner.partitions.entry(tp.clone()).or_default();
        state.epoch = epoch;
        state.assigned = true;
        state.start = start;
        drop(inner);
        self.bump();
    }

    /// Ends the epoch of revoked partitions: their queued batches will be dropped, not written.
    pub fn revoke(&self, tps: &[Tp]) {
        let mut inner = self.lock();
        for tp in tps {
            inner.next_epoch += 1;
            let epoch = inner.next_epoch;
            if let Some(state) = inner.partitions.get_mut(tp) {
                state.epoch = epoch;
                state.assigned = false;
                state.start = None;
            }
        }
        drop(inner);
        self.bump();
    }

    /// Waits until no batch of these partitions is being written, or the deadline passes.
    /// Returns the number still in flight.
    pub fn wait_idle(&self, tps: &[Tp], deadline: Instant) -> usize {
        let mut inner = self.lock();
        loop {
            let busy: usize = tps
                .iter()
                .filter_map(|tp| inner.partitions.get(tp))
                .map(|s| s.in_flight)
                .sum();
            let now = Instant::now();
            if busy == 0 || now >= deadline {
                return busy;
            }
            inner = match self.changed.wait_timeout(inner, deadline - now) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
    }

    pub fn in_flight(&self) -> usize {
        self.lock().partitions.values().map(|s| s.in_flight).sum()
    }

    /// The partition's epoch and start, if it is assigned.
    pub fn assigned(&self, tp: &Tp) -> Option<Assigned> {
        let inner = self.lock();
        let state = inner.partitions.get(tp).filter(|s| s.assigned)?;
        Some(Assigned {
            epoch: state.epoch,
            start: state.start,
        })
    }

    /// Counts a batch as in flight; called by the poll thread when it hands the batch on.
    pub fn sent(&self, tp: &Tp) {
        self.lock()
            .partitions
            .entry(tp.clone())
            .or_default()
            .in_flight += 1;
    }

    /// The partitions with a batch on its way to the writers or being written.
    pub fn busy_partitions(&self) -> HashSet<Tp> {
        self.lock()
            .partitions
            .iter()
            .filter(|(_, s)| s.in_flight > 0)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// Takes back [`Tracker::sent`] for a batch the channel did not accept.
    pub fn unsent(&self, tp: &Tp) {
        if let Some(state) = self.lock().partitions.get_mut(tp) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }

    pub fn is_current(&self, tp: &Tp, epoch: u64) -> bool {
        self.lock()
            .partitions
            .get(tp)
            .is_some_and(|s| s.assigned && s.epoch == epoch)
    }

    /// Records how a writer finished with a batch. Only a rewind changes what the poll thread
    /// must catch up with; every finish wakes `wait_idle`.
    pub fn finish(&self, tp: &Tp, epoch: u64, how: Finish) {
        let mut rewound = false;
        let mut inner = self.lock();
        let TrackerInner {
            partitions,
            rewinds,
            next_epoch,
        } = &mut *inner;
        if let Some(state) = partitions.get_mut(tp) {
            state.in_flight = state.in_flight.saturating_sub(1);
            match how {
                Finish::Committed { next } => {
                    state.committed = Some(state.committed.map_or(next, |c| c.max(next)));
                }
                Finish::Rewind { stored } if state.assigned && state.epoch == epoch => {
                    // Everything read after this batch is stale too: a new epoch from `stored`.
                    *next_epoch += 1;
                    state.epoch = *next_epoch;
                    state.start = Some(stored);
                    rewinds.push((tp.clone(), stored));
                    rewound = true;
                }
                Finish::Rewind { .. } | Finish::Dropped => {}
            }
        }
        drop(inner);
        if rewound {
            self.bump();
        } else {
            self.changed.notify_all();
        }
    }

    /// Records partition ends from librdkafka's statistics, for lag.
    pub fn set_ends(&self, ends: impl IntoIterator<Item = (Tp, i64)>) {
        let mut inner = self.lock();
        for (tp, end) in ends {
            if let Some(state) = inner.partitions.get_mut(&tp) {
                state.end = Some(end);
            }
        }
    }

    /// The assigned partitions, for status and metrics.
    pub fn snapshot(&self) -> Vec<PartitionStatus> {
        let inner = self.lock();
        let mut out: Vec<PartitionStatus> = inner
            .partitions
            .iter()
            .filter(|(_, s)| s.assigned)
            .map(|(tp, s)| PartitionStatus {
                tp: tp.clone(),
                committed: s.committed.max(s.start),
                end: s.end,
                in_flight: s.in_flight,
            })
            .collect();
        out.sort_by(|a, b| a.tp.cmp(&b.tp));
        out
    }

    pub fn total_lag(&self) -> i64 {
        self.snapshot()
            .iter()
            .filter_map(PartitionStatus::lag)
            .sum()
    }

    /// Seeks requested by writers since the last call.
    pub fn take_rewinds(&self) -> Vec<(Tp, i64)> {
        std::mem::take(&mut self.lock().rewinds)
    }

    /// Stored positions committed by this process for assigned partitions (advisory Kafka commit).
    pub fn committed_positions(&self) -> Vec<(Tp, i64)> {
        let inner = self.lock();
        inner
            .partitions
            .iter()
            .filter(|(_, s)| s.assigned)
            .filter_map(|(tp, s)| s.committed.map(|c| (tp.clone(), c)))
            .collect()
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

/// Everything the stages share.
pub struct Shared {
    pub config: Config,
    pub tracker: Arc<Tracker>,
    pub control: Arc<Control>,
    pub pool: Pool,
    pub stats: Arc<Stats>,
}

/// The transform stage: one thread that takes batches in order, transforms each one's messages
/// in parallel on rayon, and hands them to the writers, which share one queue. A partition has at
/// most one batch with the writers (queued or being written); its next batches wait here,
/// transformed and in order, until a writer says it is done with that one. So any free writer
/// takes any partition's batch (no writer idles while another has a backlog), and each partition's
/// batches are still written one after the other.
struct TransformStage {
    input: Receiver<Batch>,
    /// From the writers: the partition of each batch they are done with, written or not.
    done: Receiver<Tp>,
    rules: Arc<Rules>,
    output: Sender<Transformed>,
    /// What may wait here before the stage stops taking batches from the source.
    budget: Load,
    waiting_gauge: IntGauge,
}

/// Per partition, transformed batches waiting for the one the writers have.
#[derive(Default)]
struct Lanes {
    /// Partitions with a batch at the writers, and what waits behind it.
    out: HashMap<Tp, VecDeque<Transformed>>,
    waiting: Load,
}

impl TransformStage {
    fn run(self) {
        let mut lanes = Lanes::default();
        let mut input_open = true;
        loop {
            if !input_open && lanes.out.is_empty() {
                return; // the source is gone and every batch is done: the writers finish
            }
            let mut select = Select::new();
            let take = input_open && !lanes.waiting.reaches(self.budget);
            let input = take.then(|| select.recv(&self.input));
            let done = select.recv(&self.done);
            let op = select.select();
            let next = if Some(op.index()) == input {
                match op.recv(&self.input) {
                    Ok(batch) => lanes.push(self.transform(batch)),
                    Err(_) => {
                        input_open = false;
                        None
                    }
                }
            } else {
                debug_assert_eq!(op.index(), done);
                match op.recv(&self.done) {
                    Ok(tp) => lanes.done(&tp),
                    Err(_) => break,
                }
            };
            self.waiting_gauge
                .set(lanes.out.values().map(VecDeque::len).sum::<usize>() as i64);
            if let Some(batch) = next {
                if self.output.send(batch).is_err() {
                    break;
                }
            }
        }
        log::error!("the writers are gone; stopping the transform stage");
    }

    fn transform(&self, batch: Batch) -> Transformed {
        let rules = &*self.rules;
        let outcomes = batch
            .messages
            .par_iter()
            .map(|m| transform(m, rules))
            .collect();
        Transformed { batch, outcomes }
    }
}

impl Lanes {
    /// A new batch: returned to go to the writers if its partition has none there, else queued.
    fn push(&mut self, batch: Transformed) -> Option<Transformed> {
        match self.out.get_mut(&batch.batch.tp) {
            Some(queue) => {
                self.waiting += batch.batch.load();
                queue.push_back(batch);
                None
            }
            None => {
                self.out.insert(batch.batch.tp.clone(), VecDeque::new());
                Some(batch)
            }
        }
    }

    /// The writers are done with `tp`'s batch: its next one, if any, goes to them.
    fn done(&mut self, tp: &Tp) -> Option<Transformed> {
        let queue = self.out.get_mut(tp)?;
        match queue.pop_front() {
            Some(next) => {
                self.waiting -= next.batch.load();
                Some(next)
            }
            None => {
                self.out.remove(tp);
                None
            }
        }
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

/// Spawns the stages, runs until `control.shutdown` is set, and drains.
/// `started` runs once the consumer exists and every stage is running.
pub fn run(shared: Shared, started: impl FnOnce()) -> Result<Exit, SourceError> {
    let Shared {
        config,
        tracker,
        control,
        pool,
        stats,
    } = shared;
    let (batch_tx, batch_rx) = bounded::<Batch>(config.channel_capacity);
    let (writers_tx, writers_rx) = bounded::<Transformed>(config.channel_capacity);
    let (done_tx, done_rx) = unbounded::<Tp>();
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for id in 0..config.writers {
        let queue = Queue {
            batches: writers_rx.clone(),
            done: done_tx.clone(),
        };
        let writer = Writer::new(
            id,
            queue,
            pool.clone(),
            config.group_id.clone(),
            tracker.clone(),
            control.clone(),
            stats.clone(),
        );
        handles.push(spawn_stage(&stats, &format!("writer-{id}"), move || {
            writer.run()
        })?);
    }
    drop((writers_rx, done_tx));
    let transform = TransformStage {
        input: batch_rx,
        done: done_rx,
        rules: Arc::new(config.rules.clone()),
        output: writers_tx,
        budget: Load::batches(&config, config.channel_capacity),
        waiting_gauge: stats.channel_depth.with_label_values(&["waiting"]),
    };
    handles.push(spawn_stage(&stats, "transform", move || transform.run())?);

    let source = Source::new(
        &config,
        batch_tx,
        tracker.clone(),
        control.clone(),
        pool,
        stats.clone(),
    )?;
    let source_handle = spawn_stage(&stats, "source", move || source.run())?;
    started();
    let source_result = source_handle
        .join()
        .unwrap_or_else(|_| Err(SourceError::Panicked));

    // The source dropped the batch sender: the transform and the writers finish their queues.
    let deadline = Instant::now() + config.shutdown_timeout;
    for handle in handles {
        while !handle.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
    let exit = source_result?;
    if exit == Exit::Drained && tracker.in_flight() > 0 {
        return Ok(Exit::DeadlineExceeded {
            in_flight: tracker.in_flight(),
        });
    }
    Ok(exit)
}

/// Counts a stage thread as running until it returns or unwinds, for `/health/live`.
struct Running(Arc<Stats>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.health.stages_running.fetch_sub(1, Ordering::AcqRel);
    }
}

fn spawn_stage<T: Send + 'static>(
    stats: &Arc<Stats>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, SourceError> {
    stats.health.stages_expected.fetch_add(1, Ordering::AcqRel);
    stats.health.stages_running.fetch_add(1, Ordering::AcqRel);
    let running = Running(stats.clone());
    spawn(name, move || {
        let _running = running;
        f()
    })
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, SourceError> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| SourceError::Spawn(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::RecvTimeoutError;

    fn tp(p: i32) -> Tp {
        Tp {
            topic: Arc::from("t"),
            partition: p,
        }
    }

    /// A batch of `messages` messages of 10 bytes each.
    fn batch(p: i32, id: u64, messages: usize) -> Batch {
        let message = |offset| Message {
            topic: Arc::from("t"),
            partition: p,
            offset,
            timestamp_ms: None,
            key: Some(b"key".to_vec()),
            payload: Some(b"payload".to_vec()),
            headers: Vec::new(),
        };
        let messages: Vec<Message> = (0..messages as i64).map(message).collect();
        Batch {
            id,
            tp: tp(p),
            epoch: 1,
            start: None,
            end: messages.len() as i64,
            log_start: None,
            bytes: messages.iter().map(Message::size).sum(),
            messages,
            created: Instant::now(),
        }
    }

    fn stage(
        budget: Load,
    ) -> (
        Sender<Batch>,
        Sender<Tp>,
        Receiver<Transformed>,
        TransformStage,
    ) {
        let (input, input_rx) = bounded(8);
        let (done, done_rx) = unbounded();
        let (output_tx, output) = bounded(8);
        let stage = TransformStage {
            input: input_rx,
            done: done_rx,
            rules: Arc::new(Rules::default()),
            output: output_tx,
            budget,
            waiting_gauge: IntGauge::new("waiting", "test").unwrap(),
        };
        (input, done, output, stage)
    }

    /// The id of the next batch handed to the writers.
    fn next_id(output: &Receiver<Transformed>) -> Result<u64, RecvTimeoutError> {
        output
            .recv_timeout(Duration::from_secs(5))
            .map(|t| t.batch.id)
    }

    #[test]
    fn a_partitions_next_batch_waits_for_the_writers_and_other_partitions_do_not() {
        let (input, done, output, stage) = stage(Load {
            messages: 11,
            bytes: usize::MAX,
        });
        let handle = thread::spawn(move || stage.run());
        let batches = [
            batch(0, 1, 5),
            batch(0, 2, 10),
            batch(1, 3, 5),
            batch(0, 4, 5),
            batch(1, 5, 5),
        ];
        for b in batches {
            input.send(b).unwrap();
        }
        let next = || next_id(&output);
        assert_eq!(next(), Ok(1));
        assert_eq!(next(), Ok(3), "partition 1 is not held up by partition 0");
        assert!(
            output.recv_timeout(Duration::from_millis(200)).is_err(),
            "partition 0's second batch waits until the writers are done with its first"
        );
        assert_eq!(input.len(), 1, "15 messages waiting: the budget is spent");

        done.send(tp(0)).unwrap();
        assert_eq!(next(), Ok(2));
        done.send(tp(0)).unwrap();
        assert_eq!(next(), Ok(4), "in order, one at a time");
        done.send(tp(1)).unwrap();
        assert_eq!(next(), Ok(5));

        drop(input);
        for p in [1, 0] {
            assert!(!handle.is_finished(), "batches are still out");
            done.send(tp(p)).unwrap();
        }
        handle.join().unwrap();
        assert!(output.recv().is_err(), "the writers' queue closes");
    }

    #[test]
    fn the_lanes_budget_counts_bytes_too() {
        let (input, done, output, stage) = stage(Load {
            messages: 1000,
            bytes: 100,
        });
        let handle = thread::spawn(move || stage.run());
        for b in [
            batch(0, 1, 1),
            batch(0, 2, 9),
            batch(0, 3, 1),
            batch(0, 4, 1),
        ] {
            input.send(b).unwrap();
        }
        let next = || next_id(&output);
        assert_eq!(next(), Ok(1));
        thread::sleep(Duration::from_millis(200));
        assert_eq!(
            input.len(),
            1,
            "10 messages but 100 bytes waiting: the byte budget is spent"
        );
        done.send(tp(0)).unwrap();
        assert_eq!(next(), Ok(2));
        for id in [3, 4] {
            done.send(tp(0)).unwrap();
            assert_eq!(next(), Ok(id));
        }
        drop(input);
        done.send(tp(0)).unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn revoke_makes_queued_batches_stale() {
        let t = Tracker::default();
        t.assign(&tp(0), Some(10));
        let a = t.assigned(&tp(0)).unwrap();
        assert!(t.is_current(&tp(0), a.epoch));
        t.revoke(&[tp(0)]);
        assert!(!t.is_current(&tp(0), a.epoch));
        t.assign(&tp(0), Some(10));
        assert!(
            !t.is_current(&tp(0), a.epoch),
            "a new assignment is a new epoch"
        );
    }

    #[test]
    fn rewind_starts_a_new_epoch_from_the_stored_position() {
        let t = Tracker::default();
        t.assign(&tp(1), None);
        let a = t.assigned(&tp(1)).unwrap();
        t.sent(&tp(1));
        t.finish(&tp(1), a.epoch, Finish::Rewind { stored: 42 });
        let b = t.assigned(&tp(1)).unwrap();
        assert_ne!(a.epoch, b.epoch);
        assert_eq!(b.start, Some(42));
        assert_eq!(t.take_rewinds(), vec![(tp(1), 42)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn wait_idle_returns_when_writers_finish() {
        let t = Arc::new(Tracker::default());
        t.assign(&tp(2), Some(0));
        let epoch = t.assigned(&tp(2)).unwrap().epoch;
        t.sent(&tp(2));
        let t2 = t.clone();
        let h = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            t2.finish(&tp(2), epoch, Finish::Committed { next: 5 });
        });
        assert_eq!(
            t.wait_idle(&[tp(2)], Instant::now() + Duration::from_secs(10)),
            0
        );
        h.join().unwrap();
        assert_eq!(t.committed_positions(), vec![(tp(2), 5)]);
    }
}
