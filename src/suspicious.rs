//! Suspicious changes: what the audited data does that a person should look at, counted as the
//! rows commit here and logged.
//! - A bulk change: one source transaction that updates or deletes more than
//!   `CDC_AUDIT_BULK_THRESHOLD` rows of one table. Rows carry their transaction's id when the
//!   connector sends transaction metadata (`provide.transaction.metadata=true`); the rows of one
//!   transaction this instance commits are counted together, across batches and partitions.
//!   Without it, each batch is counted on its own, and the log says so.
//! - A notable change: any truncate, and any schema change that drops a table or a column.
//!
//! Metrics have bounded labels: the operation, and the table only when it matches
//! `CDC_AUDIT_BULK_WATCH_TABLES`.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use crate::config::rules::Glob;
use crate::events::Stats;
use crate::types::{Notice, NoticeKind, Outcome};

/// How many transactions' counts are kept; the oldest go first.
const OPEN_TRANSACTIONS: usize = 10_000;

/// A transaction's rows of one table and one operation: the three hashed by std's keyed hash
/// (SipHash-1-3) under a key drawn at startup, 64 bits. Two of the (at most
/// `OPEN_TRANSACTIONS`) counts kept share a key with a chance of about 3 in 10^12, and then only
/// add up; a string key cost an allocation, a formatting and longer compares for each
/// transaction.
type Key = u64;

pub struct Suspicious {
    /// More than this many rows of one table in one transaction is a bulk change; 0: off.
    threshold: u64,
    watch: Vec<Glob>,
    stats: Arc<Stats>,
    open: Mutex<Open>,
    keys: RandomState,
}

/// The counts' maps hash with FxHash (rustc's: a rotate, an xor and a multiply per word), not
/// SipHash: the keys are transaction ids and table names the source database made, and the
/// maps are bounded, so SipHash's defence against chosen keys buys nothing here; it was half
/// of what counting cost.
type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

#[derive(Default)]
struct Fx(u64);

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.add(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Rows counted so far per transaction, table and operation; the oldest keys leave first.
#[derive(Default)]
struct Open {
    counts: FxMap<Key, u64>,
    order: VecDeque<Key>,
}

impl Suspicious {
    pub fn new(threshold: u64, watch: Vec<Glob>, stats: Arc<Stats>) -> Suspicious {
        Suspicious {
            threshold,
            watch,
            stats,
            open: Mutex::new(Open::default()),
            keys: RandomState::new(),
        }
    }

    /// The label a table gets: its name when it is watched, else empty.
    fn label<'t>(&self, table: &'t str) -> &'t str {
        if self.watch.iter().any(|g| g.matches(table)) {
            table
        } else {
            ""
        }
    }

    /// The outcomes of one committed batch (of `topic`).
    pub fn committed<'a>(&self, topic: &str, outcomes: impl Iterator<Item = &'a Outcome>) {
        let mut per_batch: FxMap<(&[u8], NoticeKind), u64> = FxMap::default();
        // Room for a transaction a row (up to a thousand, a small allocation): growing it was a
        // tenth of what counting cost.
        let mut per_transaction: FxMap<(&[u8], &[u8], NoticeKind), u64> =
            FxMap::with_capacity_and_hasher(outcomes.size_hint().0.min(1024), Default::default());
        for outcome in outcomes {
            let Outcome::Row(row) = outcome else { continue };
            let Some(n) = &row.notice else {
                continue;
            };
            match (n.kind, &n.transaction) {
                (NoticeKind::Update | NoticeKind::Delete, _) if self.threshold == 0 => {}
                (NoticeKind::Update | NoticeKind::Delete, Some(t)) => {
                    *per_transaction.entry((t, &n.table, n.kind)).or_default() += 1
                }
                (NoticeKind::Update | NoticeKind::Delete, None) => {
                    *per_batch.entry((&n.table, n.kind)).or_default() += 1
                }
                (NoticeKind::Truncate | NoticeKind::DropTable | NoticeKind::DropColumn, _) => {
                    self.notable(n)
                }
            }
        }
        for ((table, kind), count) in per_batch {
            if count > self.threshold {
                let table = text(table);
                self.bulk(&table, kind);
                log::warn!(
                    "bulk change: {count} rows of {table} {} in one batch of {topic} (more than \
                     CDC_AUDIT_BULK_THRESHOLD={}); the events carry no transaction metadata, so \
                     batches are counted, not transactions",
                    past(kind),
                    self.threshold
                );
            }
        }
        if per_transaction.is_empty() {
            return;
        }
        // The transactions whose count passes the threshold with this batch: each once.
        let mut crossed = Vec::new();
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            for ((transaction, table, kind), added) in per_transaction {
                let key = self.keys.hash_one((kind, transaction, table));
                let before = match open.counts.get_mut(&key) {
                    Some(count) => {
                        *count += added;
                        *count - added
                    }
                    None => {
                        if open.order.len() >= OPEN_TRANSACTIONS {
                            if let Some(oldest) = open.order.pop_front() {
                                open.counts.remove(&oldest);
                            }
                        }
                        open.order.push_back(key);
                        open.counts.insert(key, added);
                        0
                    }
                };
                if before <= self.threshold && before + added > self.threshold {
                    crossed.push((transaction, table, kind));
                }
            }
        }
        for (transaction, table, kind) in crossed {
            let (transaction, table) = (text(transaction), text(table));
            self.bulk(&table, kind);
            log::warn!(
                "bulk change: transaction {transaction} {} more than {} rows of {table} \
                 (CDC_AUDIT_BULK_THRESHOLD)",
                past(kind),
                self.threshold
            );
        }
    }

    fn bulk(&self, table: &str, kind: NoticeKind) {
        self.stats
            .bulk_changes
            .with_label_values(&[kind.as_str(), self.label(table)])
            .inc();
    }

    fn notable(&self, n: &Notice) {
        let table = text(&n.table);
        self.stats
            .notable_changes
            .with_label_values(&[n.kind.as_str(), self.label(&table)])
            .inc();
        let what = match n.kind {
            NoticeKind::Truncate => "truncated",
            NoticeKind::DropTable => "dropped",
            _ => "lost a column:",
        };
        match &n.transaction {
            Some(t) => log::warn!("notable change: {table} {what} (transaction {})", text(t)),
            None => log::warn!("notable change: {table} {what}"),
        }
    }
}

/// A notice's name: UTF-8 as the transform wrote it.
fn text(name: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(name)
}

fn past(kind: NoticeKind) -> &'static str {
    match kind {
        NoticeKind::Delete => "deleted",
        _ => "updated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Row;

    fn row(kind: NoticeKind, table: &str, transaction: Option<&str>) -> Outcome {
        Outcome::Row(Row {
            bytes: Vec::new().into(),
            content: [0; 32],
            source_time_us: None,
            notice: Some(Notice {
                kind,
                table: table.as_bytes().to_vec().into(),
                transaction: transaction.map(|t| t.as_bytes().to_vec().into()),
            }),
        })
    }

    fn count(stats: &Stats, kind: &str, table: &str) -> u64 {
        stats.bulk_changes.with_label_values(&[kind, table]).get()
    }

    fn truncates(stats: &Stats) -> u64 {
        stats
            .notable_changes
            .with_label_values(&["truncate", ""])
            .get()
    }

    #[test]
    fn a_transaction_over_the_threshold_is_one_bulk_change_across_batches() {
        let stats = Arc::new(Stats::new());
        let s = Suspicious::new(3, vec![Glob::new("db.public.watched")], stats.clone());
        let batch = |n: usize, table: &str, tx: &str| {
            (0..n)
                .map(|_| row(NoticeKind::Delete, table, Some(tx)))
                .collect::<Vec<_>>()
        };
        s.committed("t", batch(2, "db.public.watched", "tx1").iter());
        assert_eq!(count(&stats, "delete", "db.public.watched"), 0, "2 of 3");
        s.committed("t", batch(2, "db.public.watched", "tx1").iter());
        assert_eq!(count(&stats, "delete", "db.public.watched"), 1, "4 > 3");
        s.committed("t", batch(5, "db.public.watched", "tx1").iter());
        assert_eq!(
            count(&stats, "delete", "db.public.watched"),
            1,
            "once a transaction"
        );
        // Another table, unwatched: counted without its name.
        s.committed("t", batch(4, "db.public.other", "tx2").iter());
        assert_eq!(count(&stats, "delete", ""), 1);
        // Updates and deletes of one transaction are counted apart.
        let mixed: Vec<Outcome> = (0..3)
            .map(|_| row(NoticeKind::Update, "db.public.other", Some("tx3")))
            .chain((0..3).map(|_| row(NoticeKind::Delete, "db.public.other", Some("tx3"))))
            .collect();
        s.committed("t", mixed.iter());
        assert_eq!(count(&stats, "update", ""), 0);
        assert_eq!(count(&stats, "delete", ""), 1);
        // And its tables apart: 2 + 2 rows of two tables, in two batches, stay under 3 each.
        for table in ["db.public.a", "db.public.b", "db.public.a", "db.public.b"] {
            s.committed("t", batch(1, table, "tx4").iter());
        }
        assert_eq!(count(&stats, "delete", ""), 1, "no table went over");
    }

    #[test]
    fn without_transaction_metadata_a_batch_is_counted_and_truncates_always_are() {
        let stats = Arc::new(Stats::new());
        let s = Suspicious::new(3, Vec::new(), stats.clone());
        let rows: Vec<Outcome> = (0..4)
            .map(|_| row(NoticeKind::Update, "db.t", None))
            .chain([row(NoticeKind::Truncate, "db.t", None)])
            .collect();
        s.committed("t", rows.iter());
        assert_eq!(count(&stats, "update", ""), 1);
        assert_eq!(truncates(&stats), 1);
        // Off: no bulk changes counted, truncates still.
        let off = Suspicious::new(0, Vec::new(), stats.clone());
        off.committed("t", rows.iter());
        assert_eq!(count(&stats, "update", ""), 1);
        assert_eq!(truncates(&stats), 2);
    }
}
