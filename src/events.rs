//! Telemetry: the service's metrics in one Prometheus registry, and the health state the HTTP
//! endpoints and the systemd watchdog read. Each notable event is a method here that logs once
//! and moves the matching metrics, once per batch, not per message.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::types::{Batch, Gap, GapCause, RejectKind, Skip, Tp};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the health checks read; every field is written by the stage that knows it.
pub struct Health {
    pub started: Instant,
    /// Unix ms of the poll loop's last turn.
    pub poll_tick_ms: AtomicI64,
    /// Per writer: Unix ms since which it has been inside one write attempt, 0 when idle.
    pub writer_busy_since_ms: Vec<AtomicI64>,
    /// Unix ms of the last committed batch, 0 before the first.
    pub last_commit_ms: AtomicI64,
    /// Whether the last write attempt of any writer failed (the database is away or refusing).
    pub writes_failing: AtomicBool,
    /// The consumer has been through a rebalance (it is in its group).
    pub joined: AtomicBool,
    /// librdkafka reported all brokers down, and nothing has arrived since.
    pub brokers_down: AtomicBool,
    /// The schema registry did not answer the last request for a schema the pipeline waits on.
    pub registry_down: AtomicBool,
    /// Stage threads running; lower than expected means one died.
    pub stages_running: AtomicI64,
    pub stages_expected: AtomicI64,
}

impl Health {
    fn new() -> Health {
        Health {
            started: Instant::now(),
            poll_tick_ms: AtomicI64::new(now_ms()),
            // One slot per possible writer (CDC_AUDIT_WRITERS is at most 64).
            writer_busy_since_ms: (0..64).map(|_| AtomicI64::new(0)).collect(),
            last_commit_ms: AtomicI64::new(0),
            writes_failing: AtomicBool::new(false),
            joined: AtomicBool::new(false),
            brokers_down: AtomicBool::new(false),
            registry_down: AtomicBool::new(false),
            stages_running: AtomicI64::new(0),
            stages_expected: AtomicI64::new(0),
        }
    }

    /// A writer stuck inside one attempt for longer than `limit`, if any.
    pub fn stalled_writer(&self, limit: Duration) -> Option<(usize, Duration)> {
        let now = now_ms();
        self.writer_busy_since_ms
            .iter()
            .enumerate()
            .find_map(|(i, since)| {
                let since = since.load(Ordering::Acquire);
                let busy = Duration::from_millis((now - since).max(0) as u64);
                (since > 0 && busy > limit).then_some((i, busy))
            })
    }

    /// How long ago the poll loop last turned.
    pub fn poll_age(&self) -> Duration {
        Duration::from_millis((now_ms() - self.poll_tick_ms.load(Ordering::Acquire)).max(0) as u64)
    }

    pub fn stages_alive(&self) -> bool {
        self.stages_running.load(Ordering::Acquire) >= self.stages_expected.load(Ordering::Acquire)
    }
}

pub struct Stats {
    pub registry: Registry,
    pub health: Health,
    pub messages_consumed: IntCounter,
    pub rows_written: IntCounter,
    pub rejections: IntCounterVec,
    /// Signed digests the service took, and the ones it could not (`result`).
    pub digests: IntCounterVec,
    /// Months of audit_logging archived and dropped (retention).
    pub partitions_archived: IntCounter,
    pub skipped: IntCounterVec,
    pub transaction_events: IntCounter,
    pub batches_committed: IntCounter,
    pub duplicates_skipped: IntCounter,
    pub batches_dropped: IntCounter,
    pub batches_behind: IntCounter,
    /// Batches written behind their partition's previous one and rolled back: that one did not
    /// leave the chain where it said. Each was then written again on its own.
    pub batches_behind_undone: IntCounter,
    /// Where the writers wait, in seconds (`on`): for a batch from the queue, for their
    /// partition's previous batch (to be linked, or done), and for PostgreSQL's lock on the
    /// partition's position while the previous batch commits.
    pub writer_wait: CounterVec,
    pub rewinds: IntCounter,
    pub offsets_missing: IntCounter,
    pub offsets_not_delivered: IntCounter,
    pub offsets_suspect: IntCounter,
    pub offsets_fetched_again: IntCounter,
    pub registry_requests: IntCounterVec,
    pub bulk_changes: IntCounterVec,
    pub notable_changes: IntCounterVec,
    pub rebalances: IntCounterVec,
    pub write_retries: IntCounter,
    pub batch_size: Histogram,
    pub write_seconds: Histogram,
    pub held_seconds: Histogram,
    pub end_to_end_seconds: Histogram,
    pub paused: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub pool_connections: IntGaugeVec,
    pub channel_depth: IntGaugeVec,
    pub last_commit_seconds: IntGauge,
    pub ready: IntGauge,
}

/// Registers a metric; the names are constants, so failure is a programming error.
fn register<T: Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<T, prometheus::Error>,
) -> T {
    let metric = metric.unwrap_or_else(|e| panic!("metric definition: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric registration: {e}"));
    metric
}

impl Stats {
    pub fn new() -> Stats {
        let r = Registry::new();
        let counter = |name: &str, help: &str| register(&r, IntCounter::new(name, help));
        let labelled = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = register(&r, IntCounterVec::new(Opts::new(name, help), &[label]));
            for v in values {
                c.with_label_values(&[v]);
            }
            c
        };
        // Labelled by `label` and `table`: a series at 0 for each of `values` with no table
        // named, so that rates start from 0.
        let by_table = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = register(
                &r,
                IntCounterVec::new(Opts::new(name, help), &[label, "table"]),
            );
            for v in values {
                c.with_label_values(&[v, ""]);
            }
            c
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
            )
        };
        let info = register(
            &r,
            IntGaugeVec::new(
                Opts::new("cdc_audit_build_info", "Version of the running cdc-audit"),
                &["version"],
            ),
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let reject_kinds: Vec<&str> = RejectKind::ALL.iter().map(|k| k.as_str()).collect();
        let seconds = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ];
        Stats {
            health: Health::new(),
            messages_consumed: counter(
                "cdc_audit_messages_consumed_total",
                "Kafka messages handed to the pipeline",
            ),
            rows_written: counter(
                "cdc_audit_rows_written_total",
                "Audit rows committed to PostgreSQL",
            ),
            rejections: labelled(
                "cdc_audit_rejections_total",
                "Messages stored as rejections, by reason",
                "reason",
                &reject_kinds,
            ),
            digests: labelled(
                "cdc_audit_digests_total",
                "Signed digests of the trail's chains taken (signed) or not (failed)",
                "result",
                &["signed", "failed"],
            ),
            partitions_archived: counter(
                "cdc_audit_partitions_archived_total",
                "Months of audit_logging archived to CDC_AUDIT_ARCHIVE_DIR and dropped",
            ),
            skipped: labelled(
                "cdc_audit_messages_skipped_total",
                "Messages with nothing to store, by reason",
                "reason",
                &["tombstone", "heartbeat", "filtered"],
            ),
            transaction_events: counter(
                "cdc_audit_transaction_events_total",
                "BEGIN/END events of the transaction metadata topic stored",
            ),
            batches_committed: counter(
                "cdc_audit_batches_committed_total",
                "Batches committed with their positions",
            ),
            duplicates_skipped: counter(
                "cdc_audit_duplicate_messages_skipped_total",
                "Messages already written, skipped by the position fence",
            ),
            batches_dropped: counter(
                "cdc_audit_batches_dropped_total",
                "Batches dropped unwritten after revoke, rewind or shutdown, to be read again",
            ),
            batches_behind: counter(
                "cdc_audit_batches_behind_total",
                "Batches written while their partition's previous batch committed, and committed \
                 right behind it",
            ),
            batches_behind_undone: counter(
                "cdc_audit_batches_behind_undone_total",
                "Batches written behind their partition's previous batch and rolled back, as that \
                 one did not leave the chain where it said; written again on their own",
            ),
            writer_wait: {
                let c = register(
                    &r,
                    CounterVec::new(
                        Opts::new(
                            "cdc_audit_writer_wait_seconds_total",
                            "Time the writers spent waiting, by what for: a batch to write \
                             (batch), their partition's previous batch to be linked or done \
                             (previous), PostgreSQL's lock on the partition's position while \
                             the previous batch commits (position)",
                        ),
                        &["on"],
                    ),
                );
                for on in ["batch", "previous", "position"] {
                    c.with_label_values(&[on]);
                }
                c
            },
            rewinds: counter(
                "cdc_audit_rewinds_total",
                "Seeks back to the stored position after a batch that did not connect to it",
            ),
            // No topic label: a series that first appears at its first increment would hide
            // that increment from `increase()`. Which topic is in the log and in audit_gaps.
            offsets_missing: counter(
                "cdc_audit_offsets_missing_total",
                "Offsets Kafka no longer had when they were read past (retention), or not known \
                 to be otherwise; recorded in audit_gaps",
            ),
            offsets_not_delivered: counter(
                "cdc_audit_offsets_not_delivered_total",
                "Offsets Kafka still held but did not deliver (aborted transactions, compaction); \
                 recorded in audit_gaps",
            ),
            offsets_suspect: counter(
                "cdc_audit_offsets_suspect_total",
                "Offsets the broker did not deliver, nor had when fetched again, on a topic that \
                 is not compacted (a broker that skips records); recorded in audit_gaps",
            ),
            bulk_changes: by_table(
                "cdc_audit_bulk_changes_total",
                "Source transactions (or batches, without transaction metadata) that updated or \
                 deleted more than CDC_AUDIT_BULK_THRESHOLD rows of one table; the table is named \
                 when CDC_AUDIT_BULK_WATCH_TABLES matches it",
                "operation",
                &["update", "delete"],
            ),
            notable_changes: by_table(
                "cdc_audit_notable_changes_total",
                "Truncates, and schema changes that drop a table or a column; the table is named \
                 when CDC_AUDIT_BULK_WATCH_TABLES matches it",
                "kind",
                &["truncate", "drop_table", "drop_column"],
            ),
            registry_requests: labelled(
                "cdc_audit_schema_registry_requests_total",
                "Schemas asked of the registry, by answer: found, not_found (its 40403), failed \
                 (unreachable, an error, not a registry's answer: retried)",
                "result",
                &["found", "not_found", "failed"],
            ),
            offsets_fetched_again: counter(
                "cdc_audit_offsets_fetched_again_total",
                "Messages missing from what the broker delivered that a second fetch found: \
                 written after all, in offset order",
            ),
            rebalances: labelled(
                "cdc_audit_rebalances_total",
                "Partition assignments and revocations",
                "kind",
                &["assigned", "revoked"],
            ),
            write_retries: counter(
                "cdc_audit_write_retries_total",
                "Batch writes retried after a database error",
            ),
            batch_size: histogram(
                "cdc_audit_batch_messages",
                "Messages per committed batch",
                vec![
                    1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 50000.0,
                ],
            ),
            write_seconds: histogram(
                "cdc_audit_batch_write_seconds",
                "Time to write and commit one batch",
                seconds.clone(),
            ),
            held_seconds: histogram(
                "cdc_audit_batch_held_seconds",
                "From reading a batch's first message from Kafka to its commit: how long the \
                 service held the batch's oldest change",
                seconds.clone(),
            ),
            end_to_end_seconds: histogram(
                "cdc_audit_end_to_end_latency_seconds",
                "From the source database's commit to the audit row's commit",
                seconds,
            ),
            paused: register(
                &r,
                IntGauge::new(
                    "cdc_audit_consumer_paused",
                    "1 while backpressure pauses consumption",
                ),
            ),
            consumer_lag: gauges(
                "cdc_audit_consumer_lag_messages",
                "Messages in the partition after the stored position",
                &["topic", "partition"],
            ),
            pool_connections: gauges(
                "cdc_audit_pool_connections",
                "PostgreSQL pool connections by state",
                &["state"],
            ),
            channel_depth: gauges(
                "cdc_audit_channel_batches",
                "Batches queued between stages",
                &["channel"],
            ),
            last_commit_seconds: register(
                &r,
                IntGauge::new(
                    "cdc_audit_last_commit_timestamp_seconds",
                    "Unix time of the last committed batch",
                ),
            ),
            ready: register(
                &r,
                IntGauge::new("cdc_audit_ready", "1 while /health/ready answers 200"),
            ),
            registry: r,
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

    /// Offsets of `tp` that Kafka no longer had or did not deliver, now recorded in `audit_gaps`.
    pub fn offsets_missing(&self, tp: &Tp, gap: &Gap) {
        let (start, end) = (gap.offsets.start, gap.offsets.end);
        let n = (end - start) as u64;
        match gap.cause {
            Some(GapCause::NotDelivered) => {
                self.offsets_not_delivered.inc_by(n);
                log::info!(
                    "{}[{}]: offsets {start}..{end} are in Kafka's log but were not delivered \
                     (an aborted transaction, or compaction); recorded in audit_gaps",
                    tp.topic,
                    tp.partition,
                );
            }
            Some(GapCause::Suspect) => {
                self.offsets_suspect.inc_by(n);
                log::error!(
                    "{}[{}]: offsets {start}..{end} were not delivered, and fetched again the \
                     broker had nothing there, committed or not, on a topic that is not \
                     compacted: a broker that skips records loses changes here; recorded in \
                     audit_gaps as suspect",
                    tp.topic,
                    tp.partition,
                );
            }
            cause => {
                self.offsets_missing.inc_by(n);
                let why = match cause {
                    Some(GapCause::Retention) => "retention deleted them before they were read",
                    _ => "retention, compaction or an aborted transaction",
                };
                log::warn!(
                    "{}[{}]: offsets {start}..{end} were not in Kafka ({why}) and cannot be \
                     audited; recorded in audit_gaps",
                    tp.topic,
                    tp.partition,
                );
            }
        }
    }

    pub fn rejected(&self, kind: RejectKind) {
        self.rejections.with_label_values(&[kind.as_str()]).inc();
    }

    /// A batch committed: `rows` audit rows, `skipped` messages below the stored position,
    /// written in `took`.
    pub fn batch_committed(&self, batch: &Batch, rows: usize, skipped: usize, took: Duration) {
        let (id, tp) = (batch.id, &batch.tp);
        let range = (batch.start.unwrap_or(batch.end), batch.end);
        self.batches_committed.inc();
        self.rows_written.inc_by(rows as u64);
        self.duplicates_skipped.inc_by(skipped as u64);
        self.batch_size.observe((range.1 - range.0) as f64);
        self.write_seconds.observe(took.as_secs_f64());
        self.held_seconds
            .observe(batch.created.elapsed().as_secs_f64());
        let now = now_ms();
        self.health.last_commit_ms.store(now, Ordering::Release);
        self.last_commit_seconds.set(now / 1000);
        log::debug!(
            batch_id = id, topic = &*tp.topic, partition = tp.partition, offsets = format!("{}..{}", range.0, range.1);
            "batch committed: {rows} rows, {skipped} already written, {:.1} ms",
            took.as_secs_f64() * 1e3
        );
    }

    pub fn rebalance(&self, kind: &'static str, tps: &[Tp]) {
        self.rebalances.with_label_values(&[kind]).inc();
        self.health.joined.store(true, Ordering::Release);
        let list: Vec<String> = tps
            .iter()
            .map(|tp| format!("{}[{}]", tp.topic, tp.partition))
            .collect();
        log::info!("partitions {kind}: {}", list.join(", "));
        if kind == "revoked" {
            for tp in tps {
                let _ = self
                    .consumer_lag
                    .remove_label_values(&[&*tp.topic, &tp.partition.to_string()]);
            }
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}
