//! The partition [`Tracker`], shared by the poll thread (assign, revoke, send) and the writers
//! (finish): assignment epochs, batches in flight, and the rewinds writers ask for.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::types::{Finish, Tp};

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use super::*;

    fn tp(p: i32) -> Tp {
        Tp {
            topic: Arc::from("t"),
            partition: p,
        }
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
