//! The transform stage: the thread between the source and the writers that runs the transform
//! on rayon and keeps, per partition, the batches waiting for the one the writers have (lanes).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Select, Sender};
use prometheus::IntGauge;
use rayon::prelude::*;

use super::schemas::{ids, SchemaCache};
use super::{transform_together, SHARING};
use crate::config::rules::Rules;
use crate::events::Stats;
use crate::tracker::Tracker;
use crate::types::{Batch, Control, Finish, Handoff, Load, Outcome, Tp, Transformed};

/// The transform stage: one thread that takes batches in order, transforms each one's messages
/// in parallel on rayon, and hands them to the writers, which share one queue. A partition has at
/// most [`AT_WRITERS`] batches with the writers (queued or being written); its next batches wait
/// here, transformed and in order, until a writer says it is done with one. So any free writer
/// takes any partition's batch (no writer idles while another has a backlog), and a partition's
/// next batch is written while its previous one commits (see [`Handoff`]): one hot partition
/// keeps two writers busy.
pub struct TransformStage {
    pub input: Receiver<Batch>,
    /// From the writers: the partition of each batch they are done with, written or not.
    pub done: Receiver<Tp>,
    pub rules: Arc<Rules>,
    pub output: Sender<Transformed>,
    /// What may wait here before the stage stops taking batches from the source.
    pub budget: Load,
    pub waiting_gauge: IntGauge,
    /// Where registry-framed messages' schemas come from.
    pub schemas: SchemaCache,
    pub stats: Arc<Stats>,
    pub tracker: Arc<Tracker>,
    pub control: Arc<Control>,
}

/// How many batches of one partition may be with the writers at once: one committing, the next
/// linked and copied behind it.
pub const AT_WRITERS: usize = 2;

/// Per partition, transformed batches waiting for the ones the writers have.
#[derive(Default)]
struct Lanes {
    /// Partitions with batches at the writers, and what waits behind them.
    out: HashMap<Tp, Lane>,
    waiting: Load,
}

#[derive(Default)]
struct Lane {
    /// Batches with the writers.
    at_writers: usize,
    /// The handoff of the last batch handed to the writers.
    last: Option<Arc<Handoff>>,
    queue: VecDeque<Transformed>,
}

impl Lane {
    /// `batch` goes to the writers: after the previous one, if that is still there.
    fn hand_on(&mut self, mut batch: Transformed) -> Transformed {
        batch.after = self.last.take().filter(|_| self.at_writers > 0);
        self.last = Some(batch.handoff.clone());
        self.at_writers += 1;
        batch
    }
}

impl TransformStage {
    pub fn run(mut self) {
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
                    Ok(batch) => self.transform(batch).and_then(|t| lanes.push(t)),
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
                .set(lanes.out.values().map(|l| l.queue.len()).sum::<usize>() as i64);
            if let Some(batch) = next {
                if self.output.send(batch).is_err() {
                    break;
                }
            }
        }
        log::error!("the writers are gone; stopping the transform stage");
    }

    /// The batch's messages transformed; `None` if it was given up while the schema registry
    /// did not answer (its epoch ended, or shutdown): read again, like any batch not written.
    fn transform(&mut self, batch: Batch) -> Option<Transformed> {
        let ids = ids(&batch.messages);
        let stale = !ids.is_empty() && !self.tracker.is_current(&batch.tp, batch.epoch);
        let schemas = if ids.is_empty() || stale {
            // A stale batch goes on unread: the writers drop it, as any other.
            Default::default()
        } else {
            let (tracker, control) = (&self.tracker, &self.control);
            let give_up = || control.shutting_down() || !tracker.is_current(&batch.tp, batch.epoch);
            match self.schemas.resolve(&ids, &self.stats, give_up) {
                Ok(schemas) => schemas,
                Err(_) => {
                    self.stats.batches_dropped.inc();
                    self.tracker.finish(&batch.tp, batch.epoch, Finish::Dropped);
                    return None;
                }
            }
        };
        let rules = &*self.rules;
        let parts: Vec<Vec<Outcome>> = batch
            .messages
            .par_chunks(SHARING)
            .map(|chunk| transform_together(chunk, rules, &schemas))
            .collect();
        let mut outcomes = Vec::with_capacity(batch.messages.len());
        parts.into_iter().for_each(|part| outcomes.extend(part));
        Some(Transformed::new(batch, outcomes))
    }
}

impl Lanes {
    /// A new batch: returned to go to the writers if its partition has room there, else queued.
    fn push(&mut self, batch: Transformed) -> Option<Transformed> {
        let lane = self.out.entry(batch.batch.tp.clone()).or_default();
        if lane.at_writers < AT_WRITERS && lane.queue.is_empty() {
            return Some(lane.hand_on(batch));
        }
        self.waiting += batch.batch.load();
        lane.queue.push_back(batch);
        None
    }

    /// The writers are done with one of `tp`'s batches: its next one, if any, goes to them.
    fn done(&mut self, tp: &Tp) -> Option<Transformed> {
        let lane = self.out.get_mut(tp)?;
        lane.at_writers = lane.at_writers.saturating_sub(1);
        match lane.queue.pop_front() {
            Some(next) => {
                self.waiting -= next.batch.load();
                Some(lane.hand_on(next))
            }
            None => {
                if lane.at_writers == 0 {
                    self.out.remove(tp);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::{Duration, Instant};

    use crossbeam_channel::{bounded, unbounded, RecvTimeoutError};

    use super::*;
    use crate::types::Message;

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
            key: Some(b"key".to_vec().into()),
            payload: Some(b"payload".to_vec().into()),
            headers: Vec::new(),
        };
        let messages: Vec<Message> = (0..messages as i64).map(message).collect();
        Batch {
            id,
            tp: tp(p),
            epoch: 1,
            start: None,
            end: messages.len() as i64,
            holes: Vec::new(),
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
            schemas: SchemaCache::new(None, 1),
            stats: Arc::new(Stats::new()),
            tracker: Arc::new(Tracker::default()),
            control: Arc::new(Control::default()),
        };
        (input, done, output, stage)
    }

    /// The next batch handed to the writers.
    fn next(output: &Receiver<Transformed>) -> Result<Transformed, RecvTimeoutError> {
        output.recv_timeout(Duration::from_secs(5))
    }

    /// The id of the next batch handed to the writers.
    fn next_id(output: &Receiver<Transformed>) -> Result<u64, RecvTimeoutError> {
        next(output).map(|t| t.batch.id)
    }

    #[test]
    fn two_batches_of_a_partition_go_to_the_writers_each_after_the_one_before() {
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
            batch(0, 5, 5),
            batch(1, 6, 5),
            batch(0, 7, 5),
            batch(0, 8, 5),
        ];
        for b in batches {
            input.send(b).unwrap();
        }
        let out = |ids: &[u64]| -> Vec<Transformed> {
            ids.iter()
                .map(|id| {
                    let t = next(&output).unwrap();
                    assert_eq!(t.batch.id, *id);
                    t
                })
                .collect()
        };
        let follows = |t: &Transformed, before: &Transformed| {
            t.after
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(a, &before.handoff))
        };
        let first = out(&[1, 2, 3, 6]);
        assert!(first[0].after.is_none() && first[2].after.is_none());
        assert!(follows(&first[1], &first[0]), "2 is written behind 1");
        assert!(follows(&first[3], &first[2]), "6 is written behind 3");
        assert!(
            output.recv_timeout(Duration::from_millis(200)).is_err(),
            "partition 0's third batch waits until the writers are done with its first"
        );
        assert_eq!(input.len(), 1, "15 messages waiting: the budget is spent");

        done.send(tp(0)).unwrap();
        let fourth = out(&[4]).remove(0);
        assert!(follows(&fourth, &first[1]), "in order: 4 behind 2");
        done.send(tp(0)).unwrap();
        let fifth = out(&[5]).remove(0);
        assert!(follows(&fifth, &fourth));
        for p in [1, 1] {
            done.send(tp(p)).unwrap();
        }
        done.send(tp(0)).unwrap();
        let seventh = out(&[7]).remove(0);
        done.send(tp(0)).unwrap();
        assert!(follows(&out(&[8])[0], &seventh), "8 behind 7");
        done.send(tp(0)).unwrap();

        drop(input);
        assert!(!handle.is_finished(), "a batch is still out");
        done.send(tp(0)).unwrap();
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
            batch(0, 2, 1),
            batch(0, 3, 9),
            batch(0, 4, 1),
            batch(0, 5, 1),
        ] {
            input.send(b).unwrap();
        }
        let next = || next_id(&output);
        assert_eq!((next(), next()), (Ok(1), Ok(2)));
        thread::sleep(Duration::from_millis(200));
        assert_eq!(
            input.len(),
            1,
            "10 messages but 100 bytes waiting: the byte budget is spent"
        );
        for id in [3, 4, 5] {
            done.send(tp(0)).unwrap();
            assert_eq!(next(), Ok(id));
        }
        drop(input);
        for _ in 0..2 {
            done.send(tp(0)).unwrap();
        }
        handle.join().unwrap();
    }
}
