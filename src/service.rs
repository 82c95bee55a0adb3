//! Starting the service from a validated config: pool, migrations, HTTP, systemd notifications,
//! signal handling, then the pipeline until shutdown.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::api;
use crate::config::{self, Config, DigestSettings};
use crate::events::Stats;
use crate::http::{self, HttpState, ReadySettings};
use crate::integrity::{self, Digest, SigningKey};
use crate::migrate;
use crate::pipeline::{self, Shared};
use crate::sink;
use crate::systemd::Notifier;
use crate::tracker::Tracker;
use crate::types::{Control, Exit};

/// Runs the pipeline until `control.shutdown` is set, then drains.
pub fn run(config: Config, control: Arc<Control>, stats: Arc<Stats>) -> Result<Exit, String> {
    keep_freed_memory();
    let digests = match config.digest.clone() {
        None => None,
        Some(settings) => {
            let key = SigningKey::load(&settings.key_file)
                .map_err(|e| format!("CDC_AUDIT_SIGNING_KEY_FILE={e}"))?;
            Some((settings, key))
        }
    };
    let notifier = Arc::new(Notifier::from_env());
    let pool = sink::pool(
        &config.database_url,
        config.pool_size,
        config.database_ca_file.as_deref(),
    )?;
    if config.migrate {
        migrate::with_pool(&pool)?;
    }
    let api = config.api.as_ref().map(api::spawn).transpose()?;
    if config.partitions_ahead > 0 || config.retention.is_some() {
        let months = Months {
            ahead: config.partitions_ahead,
            retention: config.retention.clone(),
        };
        spawn_months(pool.clone(), months, control.clone(), stats.clone());
    }
    if let Some((settings, key)) = digests {
        spawn_digests(settings, key, pool.clone(), control.clone(), stats.clone());
    }
    let tracker = Arc::new(Tracker::default());
    let http = match config.http_addr {
        Some(addr) => {
            let ready = ReadySettings {
                max_lag: config.ready_max_lag,
                stall_timeout: config.stall_timeout,
            };
            let state = Arc::new(HttpState::new(
                stats.clone(),
                tracker.clone(),
                control.clone(),
                pool.clone(),
                ready,
            ));
            http::spawn(addr, state.clone())?;
            Some(state)
        }
        None => None,
    };
    let stall_timeout = config.stall_timeout;
    let started = {
        let (notifier, stats, control) = (notifier.clone(), stats.clone(), control.clone());
        move || {
            notifier.notify("READY=1\nSTATUS=connected and migrated; consuming");
            if let Some(interval) = notifier.watchdog_interval {
                spawn_watchdog(
                    notifier.clone(),
                    stats.clone(),
                    control.clone(),
                    interval,
                    stall_timeout,
                );
            }
        }
    };
    let shared = Shared {
        config,
        tracker,
        control: control.clone(),
        pool,
        stats,
    };
    let result = pipeline::run(shared, started);
    notifier.notify("STOPPING=1");
    if let Some(state) = http {
        state.stopped.store(true, Ordering::Release);
    }
    if let Some(api) = api {
        api.stop();
    }
    result.map_err(|e| e.to_string())
}

/// Pings systemd's watchdog while the poll loop turns, the stage threads run and no writer is
/// stuck inside a database call; a wedged service stops pinging and systemd restarts it.
fn spawn_watchdog(
    notifier: Arc<Notifier>,
    stats: Arc<Stats>,
    control: Arc<Control>,
    interval: std::time::Duration,
    stall: std::time::Duration,
) {
    let spawned = thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            while !control.shutting_down() {
                let h = &stats.health;
                let poll_ok = h.poll_age() < interval.max(std::time::Duration::from_secs(30));
                if poll_ok && h.stages_alive() && h.stalled_writer(stall).is_none() {
                    notifier.notify("WATCHDOG=1");
                } else {
                    log::error!("unhealthy: not pinging the systemd watchdog");
                }
                thread::sleep(interval);
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the watchdog thread: {e}");
    }
}

/// What the service does with `audit_logging`'s months.
struct Months {
    /// Months made ahead; 0: none.
    ahead: i32,
    retention: Option<config::Retention>,
}

/// Every hour: makes `audit_logging`'s months ahead (a month without its partition is not lost:
/// its rows go to the default partition), and archives and drops the months past retention.
fn spawn_months(pool: sink::Pool, months: Months, control: Arc<Control>, stats: Arc<Stats>) {
    let tend = move || -> Result<(), String> {
        let mut client = pool.get().map_err(|e| e.to_string())?;
        if months.ahead > 0 {
            let made: i32 = client
                .query_one("SELECT audit_ensure_partitions($1)", &[&months.ahead])
                .map_err(|e| sink::with_causes(&e))?
                .get(0);
            if made > 0 {
                log::info!("made {made} monthly partitions of audit_logging ahead");
            }
        }
        if let Some(r) = &months.retention {
            let before: String = client
                .query_one(
                    "SELECT (now() - make_interval(days => $1))::text",
                    &[&(r.days as i32)],
                )
                .map_err(|e| sink::with_causes(&e))?
                .get(0);
            for a in integrity::archive::archive_expired(&mut client, &before, &r.dir)? {
                stats.partitions_archived.inc();
                log::info!(
                    "retention: {} rows of {} archived to {}",
                    a.rows,
                    a.partition,
                    a.file.display()
                );
            }
        }
        Ok(())
    };
    let spawned = thread::Builder::new().name("months".into()).spawn(move || {
        let mut next = Instant::now();
        while !control.shutting_down() {
            if Instant::now() < next {
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            next += Duration::from_secs(3600);
            if let Err(e) = tend() {
                log::warn!("audit_logging's months: {e}");
            }
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start the months thread: {e}");
    }
}

/// Takes a signed digest of the chains' heads now and every `interval`: a log line, and a
/// file in the digest directory when there is one.
fn spawn_digests(
    settings: DigestSettings,
    key: SigningKey,
    pool: sink::Pool,
    control: Arc<Control>,
    stats: Arc<Stats>,
) {
    let spawned = thread::Builder::new().name("digest".into()).spawn(move || {
        let mut next = Instant::now();
        while !control.shutting_down() {
            if Instant::now() < next {
                thread::sleep(Duration::from_millis(200));
                continue;
            }
            next += settings.interval;
            let result = match take_digest(&settings, &key, &pool) {
                Ok(()) => "signed",
                Err(e) => {
                    log::error!("digest not taken: {e}");
                    "failed"
                }
            };
            stats.digests.with_label_values(&[result]).inc();
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start the digest thread: {e}");
    }
}

fn take_digest(
    settings: &DigestSettings,
    key: &SigningKey,
    pool: &sink::Pool,
) -> Result<(), String> {
    let mut client = pool.get().map_err(|e| e.to_string())?;
    let digest = Digest::take(&mut client)?;
    let signed = digest.sign(key)?;
    let written = match &settings.dir {
        None => String::new(),
        Some(dir) => {
            let stamp: String = digest
                .taken_at
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            let path = dir.join(format!("digest-{stamp}.json"));
            integrity::write_new(&path, &signed)?;
            format!(" into {}", path.display())
        }
    };
    // The whole signed digest on one line too: a log shipped elsewhere keeps it outside.
    let line = serde_json::from_str::<serde_json::Value>(&signed)
        .map_or(signed.clone(), |v| v.to_string());
    log::info!(
        "digest of {} taken at {}{written}: {}: {line}",
        digest.database,
        digest.taken_at,
        digest.summary()
    );
    Ok(())
}

/// SIGTERM and SIGINT set the shutdown flag; a second signal exits at once.
pub fn install_signal_handlers(control: &Control) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGTERM, SIGINT] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, 1, control.shutdown.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
        signal_hook::flag::register(signal, control.shutdown.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    Ok(())
}

/// glibc gives the free top of a thread's heap back to the kernel once more than
/// `M_TRIM_THRESHOLD` is free there (128 KiB, raised with the largest block it has mapped), and
/// the next allocations fault those pages in again, zeroed. A writer that commits a hot
/// partition's batch frees megabytes of its messages' chunks at once (`source::pending`): with
/// the default, one hot partition drained a quarter slower (BENCHMARKS.md, "Messages that share
/// a buffer"). The pipeline's budgets bound what it holds; this keeps what it freed for the next
/// batches instead, up to 64 MiB a heap.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        const M_TRIM_THRESHOLD: c_int = -1;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // SAFETY: glibc's `mallopt` sets one of its allocator's parameters, under its own lock;
        // it takes no pointer and may be called at any time.
        if unsafe { mallopt(M_TRIM_THRESHOLD, 64 << 20) } != 1 {
            log::warn!("glibc refused M_TRIM_THRESHOLD; freed memory goes back as it frees");
        }
    }
}

/// `cdc-audit run`: the service until SIGTERM or SIGINT; exit 0 when every batch read was
/// committed, 2 when the shutdown deadline passed first.
pub fn command(config: Config) -> Result<ExitCode, String> {
    let control = Arc::new(Control::default());
    install_signal_handlers(&control)?;
    match run(config, control, Arc::new(Stats::new()))? {
        Exit::Drained => {
            log::info!("shut down cleanly: every batch read was committed");
            Ok(ExitCode::SUCCESS)
        }
        Exit::DeadlineExceeded { in_flight } => {
            log::error!("shutdown deadline passed with {in_flight} batches unwritten; they will be read again");
            Ok(ExitCode::from(2))
        }
    }
}

/// `cdc-audit serve`: the read API alone, without consuming, until SIGTERM or SIGINT; for a
/// reader host that should not run the pipeline.
pub fn serve(raw: &std::collections::BTreeMap<String, String>) -> Result<ExitCode, String> {
    let settings = config::api_from_settings(raw)
        .map_err(|e| e.to_string())?
        .ok_or(
        "CDC_AUDIT_API_ADDR is not set: serve needs the address to listen on, e.g. 127.0.0.1:9188",
    )?;
    let control = Control::default();
    install_signal_handlers(&control)?;
    let api = api::spawn(&settings)?;
    println!("serving the read API on http://{}/api/v1/", api.addr);
    while !control.shutting_down() {
        thread::sleep(std::time::Duration::from_millis(100));
    }
    api.stop();
    Ok(ExitCode::SUCCESS)
}
