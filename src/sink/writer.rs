//! A writer thread: takes transformed batches from the writers' queue and writes each one in
//! its fenced transaction (small batches of several partitions waiting together, in one),
//! retrying for as long as its partition's epoch lasts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::connect::Pool;
use super::error::{Backoff, ErrorClass, SinkError};
use super::fence::{write_after, write_batch, write_group, Written};
use crate::events::{now_ms, Stats};
use crate::suspicious::Suspicious;
use crate::tracker::Tracker;
use crate::types::{Control, Finish, Handoff, Outcome, Relay, Row, Tp, Transformed};

/// The writers' end of the transform stage, shared by all of them.
#[derive(Clone)]
pub struct Queue {
    /// Batches to write; it holds at most two batches per partition (`AT_WRITERS`).
    pub batches: Receiver<Transformed>,
    /// Tells the transform stage a partition's batch is done, so its next one may come.
    pub done: Sender<Tp>,
}

/// A writer thread: takes transformed batches from the queue and commits each one, or several
/// partitions' batches in one transaction when they are waiting together.
pub struct Writer {
    id: usize,
    queue: Queue,
    /// The most messages one transaction takes from the queue (a full batch's).
    group_messages: usize,
    /// How many writers share the queue.
    writers: usize,
    pool: Pool,
    group: String,
    tracker: Arc<Tracker>,
    control: Arc<Control>,
    stats: Arc<Stats>,
    suspicious: Arc<Suspicious>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        queue: Queue,
        (group_messages, writers): (usize, usize),
        pool: Pool,
        group: String,
        tracker: Arc<Tracker>,
        control: Arc<Control>,
        stats: Arc<Stats>,
        suspicious: Arc<Suspicious>,
    ) -> Self {
        Writer {
            id,
            queue,
            group_messages,
            writers,
            pool,
            group,
            tracker,
            control,
            stats,
            suspicious,
        }
    }

    pub fn run(self) {
        let depth = self.stats.channel_depth.with_label_values(&["writers"]);
        for first in &self.queue.batches {
            depth.set(self.queue.batches.len() as i64);
            // What else is waiting, until a full batch's messages are taken: under load with many
            // partitions, each partition's batch is small, and a transaction each is most of
            // what writing them costs. No more than this writer's share of what waits, so that
            // the others (and their connections) are not left idle while it writes.
            let share = (1 + self.queue.batches.len()).div_ceil(self.writers.max(1));
            let mut taken = vec![first];
            let mut messages = taken[0].batch.messages.len();
            while messages < self.group_messages && taken.len() < share {
                let Ok(t) = self.queue.batches.try_recv() else {
                    break;
                };
                messages += t.batch.messages.len();
                taken.push(t);
            }
            // Together, their epoch current: a batch whose partition has nothing else with the
            // writers, or whose partition's previous batch comes just before it in this
            // transaction. One whose previous batch another writer has yet to finish is written
            // behind it, on its own. The rest, after them, one by one, as they came.
            let mut together: Vec<&Transformed> = Vec::new();
            let mut alone: Vec<&Transformed> = Vec::new();
            for t in &taken {
                let b = &t.batch;
                let last = together.iter().rev().find(|o| o.batch.tp == b.tp);
                let follows = match (&t.after, last) {
                    (None, None) => true,
                    (Some(previous), None) => previous.is_finished(),
                    (Some(previous), Some(last)) => Arc::ptr_eq(previous, &last.handoff),
                    (None, Some(_)) => false,
                };
                if follows && self.tracker.is_current(&b.tp, b.epoch) {
                    together.push(t);
                } else {
                    alone.push(t);
                }
            }
            if together.len() > 1 {
                self.write_together(&together);
            } else {
                alone.splice(0..0, together);
            }
            for t in alone {
                let how = self.write(t);
                self.done(t, how);
            }
        }
        log::debug!("writer {} finished", self.id);
    }

    /// The writer is done with `t`: the next batch of its partition may come.
    fn done(&self, t: &Transformed, how: Finish) {
        t.handoff.set(Relay::Finished);
        self.tracker.finish(&t.batch.tp, t.batch.epoch, how);
        // Only fails once the transform stage is gone, and then nothing waits for it.
        let _ = self.queue.done.send(t.batch.tp.clone());
    }

    /// Writes several partitions' batches in one transaction ([`write_group`]); if that
    /// fails, one by one, each as [`Writer::write`] does (which retries, and isolates a row
    /// PostgreSQL refuses).
    fn write_together(&self, batches: &[&Transformed]) {
        let started = Instant::now();
        match self.on_connection(|conn| write_group(conn, &self.group, batches)) {
            Ok(written) => {
                self.stats.write_transactions.inc();
                self.stats
                    .health
                    .writes_failing
                    .store(false, Ordering::Release);
                // Each batch's share of the transaction's time, by its messages, so that the
                // writers' time adds up.
                let took = started.elapsed();
                let messages: usize = batches.iter().map(|t| t.batch.messages.len()).sum();
                for (t, written) in batches.iter().zip(written) {
                    let share = t.batch.messages.len() as f64 / messages.max(1) as f64;
                    let how = self.finished(t, written, took.mul_f64(share));
                    self.done(t, how);
                }
            }
            Err((_, e)) => {
                log::debug!(
                    "{} batches not written together ({e}); writing them one by one",
                    batches.len()
                );
                for t in batches {
                    let how = self.write(t);
                    self.done(t, how);
                }
            }
        }
    }

    /// Writes one batch, retrying for as long as it takes, unless its epoch ends first. While
    /// the partition's previous batch is with another writer, this one is written behind it
    /// once that one is linked ([`write_after`]); if that does not hold, it waits for the
    /// previous one to finish and is written on its own.
    fn write(&self, t: &Transformed) -> Finish {
        let b = &t.batch;
        let mut backoff = Backoff::new();
        let mut isolate = false;
        let stop = || !self.tracker.is_current(&b.tp, b.epoch) || self.control.abandoned();
        let mut after = t.after.as_deref();
        loop {
            if let Some(previous) = after.take().filter(|_| !stop()) {
                if let Some(finish) = self.write_behind(t, previous, stop) {
                    return finish;
                }
            }
            if stop() {
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
            let result = self.on_connection(|conn| write_batch(conn, &self.group, t, isolate));
            self.stats
                .health
                .writes_failing
                .store(result.is_err(), Ordering::Release);
            match result {
                Ok(written) => {
                    self.stats.write_transactions.inc();
                    return self.finished(t, written, started.elapsed());
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

    /// Writes `t` behind the partition's previous batch once that one is linked
    /// ([`write_after`]): how the writer finished with it, or `None` once the previous one is
    /// done and `t` is to be written on its own.
    fn write_behind(
        &self,
        t: &Transformed,
        previous: &Handoff,
        stop: impl Fn() -> bool + Copy,
    ) -> Option<Finish> {
        let started = Instant::now();
        if let Relay::Linked { seq, link } = previous.wait(true, stop) {
            let b = &t.batch;
            match self.on_connection(|conn| write_after(conn, &self.group, t, (seq, link))) {
                Ok(Some(written)) => {
                    self.stats.batches_behind.inc();
                    self.stats.write_transactions.inc();
                    return Some(self.finished(t, written, started.elapsed()));
                }
                Ok(None) => {}
                Err((_, e)) => log::debug!(
                    "batch {} {}[{}] not written behind the previous one: {e}",
                    b.id,
                    b.tp.topic,
                    b.tp.partition
                ),
            }
        }
        previous.wait(false, stop);
        None
    }

    /// `work` on a pooled connection, the writer marked busy meanwhile (the health check's
    /// stuck writer).
    fn on_connection<R>(
        &self,
        work: impl FnOnce(&mut postgres::Client) -> Result<R, SinkError>,
    ) -> Result<R, (ErrorClass, String)> {
        let busy = &self.stats.health.writer_busy_since_ms[self.id];
        busy.store(now_ms(), Ordering::Release);
        let result = match self.pool.get() {
            Ok(mut conn) => work(&mut conn).map_err(|e| (e.class(), e.to_string())),
            Err(e) => Err((
                ErrorClass::Retriable,
                format!("no database connection: {e}"),
            )),
        };
        busy.store(0, Ordering::Release);
        result
    }

    /// Counts and logs what a batch's transaction did (`took`: the writer's time on it): how
    /// the writer finished with it.
    fn finished(&self, t: &Transformed, written: Written, took: Duration) -> Finish {
        let b = &t.batch;
        match written {
            Written::Committed {
                next,
                missing,
                rows,
                transactions,
                rejected,
                skips,
                skipped,
            } => {
                self.stats.batch_committed(b, rows, skipped, took);
                self.stats.transaction_events.inc_by(transactions as u64);
                let now_us = now_ms() * 1000;
                // Observed here, added to the shared histogram once for the batch.
                let end_to_end = self.stats.end_to_end_seconds.local();
                for outcome in t.outcomes.iter().skip(skipped) {
                    if let Outcome::Row(Row {
                        source_time_us: Some(at),
                        ..
                    }) = outcome
                    {
                        end_to_end.observe((now_us - at).max(0) as f64 / 1e6);
                    }
                }
                end_to_end.flush();
                self.suspicious
                    .committed(&b.tp.topic, t.outcomes.iter().skip(skipped));
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
                Finish::Committed { next }
            }
            Written::Behind { stored } => {
                self.stats.rewinds.inc();
                log::warn!(
                "batch {} {}[{}] starts at {:?} but the stored position is {stored}: reading again from there",
                b.id, b.tp.topic, b.tp.partition, b.start
            );
                Finish::Rewind { stored }
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
