//! Wiring only: builds the channels between the stages, spawns each stage on a named thread,
//! runs until shutdown, and joins them downstream in turn.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};

use crate::config::Config;
use crate::events::Stats;
use crate::registry::Registry;
use crate::sink::{Pool, Queue, Writer};
use crate::source::{Source, SourceError};
use crate::suspicious::Suspicious;
use crate::tracker::Tracker;
use crate::transform::schemas::SchemaCache;
use crate::transform::stage::TransformStage;
use crate::types::{Batch, Control, Exit, Load, Tp, Transformed};

/// Everything the stages share.
pub struct Shared {
    pub config: Config,
    pub tracker: Arc<Tracker>,
    pub control: Arc<Control>,
    pub pool: Pool,
    pub stats: Arc<Stats>,
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
    let (registry, cache) = match &config.registry {
        Some(settings) => (
            Some(Registry::new(settings).map_err(SourceError::Registry)?),
            settings.cache,
        ),
        None => (None, 1),
    };
    let (batch_tx, batch_rx) = bounded::<Batch>(config.channel_capacity);
    let (writers_tx, writers_rx) = bounded::<Transformed>(config.channel_capacity);
    let (done_tx, done_rx) = unbounded::<Tp>();
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    let suspicious = Arc::new(Suspicious::new(
        config.bulk_threshold,
        config.bulk_watch.clone(),
        stats.clone(),
    ));
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
            suspicious.clone(),
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
        budget: Load::batches(
            config.batch_size,
            config.batch_bytes,
            config.channel_capacity,
        ),
        waiting_gauge: stats.channel_depth.with_label_values(&["waiting"]),
        schemas: SchemaCache::new(registry, cache),
        stats: stats.clone(),
        tracker: tracker.clone(),
        control: control.clone(),
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
