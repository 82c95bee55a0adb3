//! Telemetry: the service's counters, kept in one Prometheus registry. Each notable event is a
//! method here that logs once and moves the matching metrics, once per batch, not per message.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::pipeline::Tp;
use crate::transform::{RejectKind, Skip};

pub struct Stats {
    pub registry: Registry,
    pub messages_consumed: IntCounter,
    pub rows_written: IntCounter,
    pub rejections: IntCounterVec,
    pub skipped: IntCounterVec,
    pub transaction_events: IntCounter,
    pub batches_committed: IntCounter,
    pub duplicates_skipped: IntCounter,
    pub batches_dropped: IntCounter,
    pub rewinds: IntCounter,
    pub rebalances: IntCounterVec,
    pub write_retries: IntCounter,
    pub batch_size: Histogram,
    pub write_seconds: Histogram,
    pub paused: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

impl Stats {
    /// Builds the registry. Metric names are constants, so a failure here is a programming error.
    pub fn new() -> Stats {
        let registry = Registry::new();
        let rejections = IntCounterVec::new(
            Opts::new(
                "cdc_audit_rejections_total",
                "Messages stored as rejections, by reason",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(rejections.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        for kind in RejectKind::ALL {
            rejections.with_label_values(&[kind.as_str()]);
        }
        let rebalances = IntCounterVec::new(
            Opts::new(
                "cdc_audit_rebalances_total",
                "Partition assignments and revocations",
            ),
            &["kind"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(rebalances.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let skipped = IntCounterVec::new(
            Opts::new(
                "cdc_audit_messages_skipped_total",
                "Messages with nothing to store, by reason",
            ),
            &["reason"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(skipped.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        for reason in ["tombstone", "heartbeat", "filtered"] {
            skipped.with_label_values(&[reason]);
        }
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("cdc_audit_batch_messages", "Messages per committed batch").buckets(
                vec![
                    1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 50000.0,
                ],
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(batch_size.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let write_seconds = Histogram::with_opts(HistogramOpts::new(
            "cdc_audit_batch_write_seconds",
            "Time to write and commit one batch",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(write_seconds.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let paused = IntGauge::new(
            "cdc_audit_consumer_paused",
            "1 while backpressure pauses consumption",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(paused.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        Stats {
            messages_consumed: counter(
                &registry,
                "cdc_audit_messages_consumed_total",
                "Kafka messages handed to the pipeline",
            ),
            rows_written: counter(
                &registry,
                "cdc_audit_rows_written_total",
                "Audit rows committed to PostgreSQL",
            ),
            transaction_events: counter(
                &registry,
                "cdc_audit_transaction_events_total",
                "BEGIN/END events of the transaction metadata topic stored",
            ),
            batches_committed: counter(
                &registry,
                "cdc_audit_batches_committed_total",
                "Batches committed with their positions",
            ),
            duplicates_skipped: counter(
                &registry,
                "cdc_audit_duplicate_messages_skipped_total",
                "Messages already written, skipped by the position fence",
            ),
            batches_dropped: counter(
                &registry,
                "cdc_audit_batches_dropped_total",
                "Batches dropped unwritten after revoke, rewind or shutdown, to be read again",
            ),
            rewinds: counter(
                &registry,
                "cdc_audit_rewinds_total",
                "Seeks back to the stored position after a gap",
            ),
            write_retries: counter(
                &registry,
                "cdc_audit_write_retries_total",
                "Batch writes retried after a retriable database error",
            ),
            rejections,
            skipped,
            rebalances,
            batch_size,
            write_seconds,
            paused,
            registry,
        }
    }

    pub fn skipped(&self, skip: Skip) {
        let reason = match skip {
            Skip::Tombstone => "tombstone",
            Skip::Heartbeat => "heartbeat",
            Skip::Filtered => "filtered",
        };
        self.skipped.with_label_values(&[reason]).inc();
    }

    pub fn rejected(&self, kind: RejectKind) {
        self.rejections.with_label_values(&[kind.as_str()]).inc();
    }

    /// A batch committed: `rows` audit rows, `skipped` messages below the stored position.
    pub fn batch_committed(
        &self,
        id: u64,
        tp: &Tp,
        range: (i64, i64),
        rows: usize,
        skipped: usize,
        took: Duration,
    ) {
        self.batches_committed.inc();
        self.rows_written.inc_by(rows as u64);
        self.duplicates_skipped.inc_by(skipped as u64);
        self.batch_size.observe((range.1 - range.0) as f64);
        self.write_seconds.observe(took.as_secs_f64());
        log::debug!(
            "batch {id} {}[{}] offsets {}..{}: {rows} rows committed, {skipped} already written, {:.1} ms",
            tp.topic,
            tp.partition,
            range.0,
            range.1,
            took.as_secs_f64() * 1e3
        );
    }

    pub fn rebalance(&self, kind: &'static str, tps: &[Tp]) {
        self.rebalances.with_label_values(&[kind]).inc();
        let list: Vec<String> = tps
            .iter()
            .map(|tp| format!("{}[{}]", tp.topic, tp.partition))
            .collect();
        log::info!("partitions {kind}: {}", list.join(", "));
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}
