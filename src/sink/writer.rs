//! A writer thread: takes transformed batches from the writers' queue and writes each one in
//! its fenced transaction, retrying for as long as its partition's epoch lasts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::connect::Pool;
use super::error::{Backoff, ErrorClass, SinkError};
use super::fence::{write_after, write_batch, Written};
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

/// A writer thread: takes transformed batches from the queue and commits each one.
pub struct Writer {
    id: usize,
    queue: Queue,
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
        let waiting = self.stats.writer_wait.with_label_values(&["batch"]);
        let mut idle = Instant::now();
        for batch in &self.queue.batches {
            waiting.inc_by(idle.elapsed().as_secs_f64());
            depth.set(self.queue.batches.len() as i64);
            let how = self.write(&batch);
            batch.handoff.set(Relay::Finished);
            self.tracker.finish(&batch.batch.tp, batch.batch.epoch, how);
            // Only fails once the transform stage is gone, and then nothing waits for it.
            let _ = self.queue.done.send(batch.batch.tp.clone());
            idle = Instant::now();
        }
        log::debug!("writer {} finished", self.id);
    }

    /// Writes one batch, retrying for as long as it takes, unless its epoch ends first. While
    /// the partition's previous batch is with another writer, this one is written behind it
    /// once that one is linked ([`write_after`]); if that does not hold, it waits for the
    /// previous one to finish and is written on its own. An attempt that does not commit voids
    /// the link it told the next batch's writer.
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
            if result.is_err() {
                // The link this attempt told the next batch's writer is void.
                t.handoff.set(Relay::Pending);
            }
            match result {
                Ok(written) => return self.finished(t, written, started),
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
        let waiting = self.stats.writer_wait.with_label_values(&["previous"]);
        let relay = previous.wait(true, stop);
        waiting.inc_by(started.elapsed().as_secs_f64());
        if let Relay::Linked { seq, link } = relay {
            let b = &t.batch;
            let previous_done = || {
                let copied = Instant::now();
                let kept = previous.kept(relay, stop);
                waiting.inc_by(copied.elapsed().as_secs_f64());
                kept
            };
            let written = self.on_connection(|conn| {
                write_after(conn, &self.group, t, (seq, link), previous_done)
            });
            match written {
                Ok(behind) => {
                    self.stats
                        .writer_wait
                        .with_label_values(&["position"])
                        .inc_by(behind.locking.as_secs_f64());
                    if let Some(written) = behind.written {
                        self.stats.batches_behind.inc();
                        return Some(self.finished(t, written, started));
                    }
                    self.stats.batches_behind_undone.inc();
                }
                Err((_, e)) => log::debug!(
                    "batch {} {}[{}] not written behind the previous one: {e}",
                    b.id,
                    b.tp.topic,
                    b.tp.partition
                ),
            }
            // Not committed: the link this attempt told the next batch's writer is void, and
            // that writer waits for the next one.
            t.handoff.set(Relay::Pending);
        }
        let finishing = Instant::now();
        previous.wait(false, stop);
        waiting.inc_by(finishing.elapsed().as_secs_f64());
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

    /// Counts and logs what a batch's transaction did: how the writer finished with it.
    fn finished(&self, t: &Transformed, written: Written, started: Instant) -> Finish {
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
                self.stats
                    .batch_committed(b, rows, skipped, started.elapsed());
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
