//! Holes in what the broker delivered, checked before they are recorded.
//!
//! A partition's offsets are consecutive, so a hole of more than one offset between two delivered
//! messages is something Kafka did not deliver (a single one is a transaction's marker). Before the
//! writer records a hole in `audit_gaps`, the poll thread asks the broker about it:
//! 1. where the partition's log starts: what lies below, retention deleted (`retention`);
//! 2. on a topic that is compacted, the rest is compaction's (`not_delivered`), and is not fetched
//!    again: such a topic has holes everywhere;
//! 3. otherwise the rest is fetched again, from its first offset, reading committed records: what
//!    this finds the broker had skipped, and it is written after all, in offset order;
//! 4. what is still missing is fetched once more reading uncommitted records: a run where this
//!    finds records was an aborted transaction's (`not_delivered`);
//! 5. a run where neither found anything is `suspect`: Kafka never leaves one, a broker that skips
//!    records does, and the changes in it are missing from the trail.
//!
//! A broker that does not answer leaves the hole's cause unknown (NULL), as before it was checked.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::read::{copy_message, watermarks};
use crate::types::{Gap, GapCause, Message, Tp};

/// How long checking one hole may take, all fetches together, before the cause of what is left is
/// unknown: the poll thread waits meanwhile, well within `max.poll.interval.ms`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(4);
/// How long one fetch waits for the broker to deliver past the hole or reach the partition's end.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// A partition's log start asked this recently is asked again only for a later batch's hole.
const LOG_START_FRESH: Duration = Duration::from_secs(1);

/// What checking a hole found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Messages of the hole that a second fetch delivered, in offset order.
    pub found: Vec<Message>,
    /// The runs still missing, each with its cause (`None`: the broker did not answer).
    pub holes: Vec<Gap>,
}

/// The poll thread's means of checking holes: two consumers of its own (one reading committed
/// records, one uncommitted), assigned only while a hole is fetched, and an admin client for
/// topics' `cleanup.policy`. Made on the first hole; most runs never see one.
pub struct Holes {
    settings: ClientConfig,
    admin_settings: ClientConfig,
    committed: Option<BaseConsumer>,
    uncommitted: Option<BaseConsumer>,
    admin: Option<AdminClient<DefaultClientContext>>,
    /// Whether each topic is compacted, asked once per run (`None`: the broker did not say).
    compacted: HashMap<Arc<str>, Option<bool>>,
    log_starts: HashMap<Tp, (Instant, i64)>,
}

impl Holes {
    /// `settings`: the consumer's (security, bootstrap); `admin_settings`: the same without the
    /// consumer's own properties.
    pub fn new(settings: ClientConfig, admin_settings: ClientConfig) -> Holes {
        Holes {
            settings,
            admin_settings,
            committed: None,
            uncommitted: None,
            admin: None,
            compacted: HashMap::new(),
            log_starts: HashMap::new(),
        }
    }

    /// Checks the hole `hole` of `tp`; `consumer` is the one that read past it.
    pub fn check<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        tp: &Tp,
        hole: Range<i64>,
        topics: &mut HashMap<String, Arc<str>>,
    ) -> Checked {
        let mut checked = Checked::default();
        let Some(log_start) = self.log_start(consumer, tp) else {
            checked.holes.push(Gap {
                offsets: hole,
                cause: None,
            });
            return checked;
        };
        let split = log_start.clamp(hole.start, hole.end);
        if split > hole.start {
            checked.holes.push(Gap {
                offsets: hole.start..split,
                cause: Some(GapCause::Retention),
            });
        }
        let rest = split..hole.end;
        if rest.is_empty() {
            return checked;
        }
        let compacted = self.compacted(&tp.topic);
        if compacted == Some(true) {
            checked.holes.push(Gap {
                offsets: rest,
                cause: Some(GapCause::NotDelivered),
            });
            return checked;
        }
        let deadline = Instant::now() + CHECK_TIMEOUT;
        let found = match self.fetch(true, tp, rest.clone(), topics, deadline) {
            Ok(found) => found,
            Err(e) => {
                log::warn!(
                    "{}[{}]: fetching the hole {}..{} again: {e}; its cause is not known",
                    tp.topic,
                    tp.partition,
                    rest.start,
                    rest.end
                );
                checked.holes.push(Gap {
                    offsets: rest,
                    cause: None,
                });
                return checked;
            }
        };
        let runs = runs_without(rest, found.iter().map(|m| m.offset));
        checked.found = found;
        for run in runs {
            let cause = match self.fetch(false, tp, run.clone(), topics, deadline) {
                Ok(aborted) if !aborted.is_empty() => Some(GapCause::NotDelivered),
                Ok(_) => Some(GapCause::Suspect),
                Err(e) => {
                    log::warn!(
                        "{}[{}]: fetching the hole {}..{} uncommitted: {e}; its cause is not known",
                        tp.topic,
                        tp.partition,
                        run.start,
                        run.end
                    );
                    None
                }
            };
            checked.holes.push(Gap {
                offsets: run,
                cause,
            });
        }
        checked
    }

    /// Where `tp`'s log starts, asked of the consumer that read past the hole.
    fn log_start<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        tp: &Tp,
    ) -> Option<i64> {
        if let Some((asked, start)) = self.log_starts.get(tp) {
            if asked.elapsed() < LOG_START_FRESH {
                return Some(*start);
            }
        }
        let (low, _) = watermarks(consumer, tp, Duration::from_secs(2))?;
        self.log_starts.insert(tp.clone(), (Instant::now(), low));
        Some(low)
    }

    /// Whether `topic`'s `cleanup.policy` includes `compact`; `None` if the broker does not say.
    fn compacted(&mut self, topic: &Arc<str>) -> Option<bool> {
        if let Some(known) = self.compacted.get(topic) {
            return *known;
        }
        let answer = self.describe(topic);
        let known = match answer {
            Ok(policy) => Some(policy.split(',').any(|p| p.trim() == "compact")),
            Err(e) => {
                log::warn!(
                    "cannot read the cleanup.policy of {topic} ({e}): its holes are fetched \
                     again, and any the broker has nothing at are suspect"
                );
                None
            }
        };
        self.compacted.insert(topic.clone(), known);
        known
    }

    fn describe(&mut self, topic: &str) -> Result<String, String> {
        if self.admin.is_none() {
            self.admin = Some(self.admin_settings.create().map_err(|e| e.to_string())?);
        }
        let Some(admin) = &self.admin else {
            return Err("no admin client".into());
        };
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(2)));
        let results =
            block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options))
                .map_err(|e| e.to_string())?;
        let resource = results
            .into_iter()
            .next()
            .ok_or("no answer")?
            .map_err(|e| e.to_string())?;
        Ok(resource
            .get("cleanup.policy")
            .and_then(|entry| entry.value.clone())
            .unwrap_or_else(|| "delete".into()))
    }

    /// The messages of `range` that a fetch from its first offset delivers, reading committed
    /// records or not.
    fn fetch(
        &mut self,
        committed: bool,
        tp: &Tp,
        range: Range<i64>,
        topics: &mut HashMap<String, Arc<str>>,
        deadline: Instant,
    ) -> Result<Vec<Message>, KafkaError> {
        let slot = if committed {
            &mut self.committed
        } else {
            &mut self.uncommitted
        };
        if slot.is_none() {
            let mut settings = self.settings.clone();
            settings
                .set(
                    "isolation.level",
                    if committed {
                        "read_committed"
                    } else {
                        "read_uncommitted"
                    },
                )
                .set("enable.partition.eof", "true")
                .set("statistics.interval.ms", "0")
                .set("client.id", "cdc-audit-holes");
            *slot = Some(settings.create()?);
        }
        let Some(consumer) = slot.as_ref() else {
            return Ok(Vec::new());
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(range.start))?;
        consumer.assign(&tpl)?;
        let result = fetch_range(consumer, &range, topics, deadline);
        let _ = consumer.unassign();
        result
    }
}

/// Polls `consumer`, assigned at `range.start`, until it delivers an offset past `range`, says the
/// partition ends, or the time is up. The broker holds records past every hole (the consumer that
/// found the hole read one), so a broker that answered without error all along and delivered
/// nothing past the hole has nothing more to give there: what was found is the answer.
fn fetch_range(
    consumer: &BaseConsumer,
    range: &Range<i64>,
    topics: &mut HashMap<String, Arc<str>>,
    deadline: Instant,
) -> Result<Vec<Message>, KafkaError> {
    let deadline = deadline.min(Instant::now() + FETCH_TIMEOUT);
    let mut found = Vec::new();
    let mut last_error = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match consumer.poll(left.min(Duration::from_millis(100))) {
            Some(Ok(m)) if m.offset() >= range.end => return Ok(found),
            Some(Ok(m)) if m.offset() >= range.start => found.push(copy_message(topics, &m)),
            Some(Ok(_)) | None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(found),
            // Transient errors are retried by librdkafka; the last one is the answer if time
            // runs out.
            Some(Err(e)) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// The runs of `range` that none of `offsets` (ascending) falls in.
fn runs_without(range: Range<i64>, offsets: impl Iterator<Item = i64>) -> Vec<Range<i64>> {
    let mut runs = Vec::new();
    let mut at = range.start;
    for offset in offsets {
        if offset > at {
            runs.push(at..offset);
        }
        at = at.max(offset + 1);
    }
    if at < range.end {
        runs.push(at..range.end);
    }
    runs
}

/// Polls a future to completion on this thread (rdkafka's admin calls answer on their own thread).
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_without_what_was_found() {
        let runs = |range, found: &[i64]| -> Vec<(i64, i64)> {
            let runs = runs_without(range, found.iter().copied());
            runs.into_iter().map(|r| (r.start, r.end)).collect()
        };
        assert_eq!(runs(10..20, &[]), [(10, 20)]);
        assert_eq!(runs(10..20, &[10, 11, 15]), [(12, 15), (16, 20)]);
        assert_eq!(runs(10..13, &[10, 11, 12]), []);
        assert_eq!(runs(10..20, &[19]), [(10, 19)]);
    }
}
