//! Health, metrics and status over HTTP (tiny_http), on threads of their own: the handlers read
//! shared state and never take a lock the pipeline needs, so no client can stall the service.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::events::{now_ms, Stats};
use crate::sink::Pool;
use crate::tracker::Tracker;
use crate::types::{Control, RejectKind};

/// Thresholds of `/health/ready`.
#[derive(Debug, Clone)]
pub struct ReadySettings {
    /// Total lag over which the instance is not ready; `None` for no limit.
    pub max_lag: Option<i64>,
    /// A writer inside one database call for longer than this is stalled.
    pub stall_timeout: Duration,
}

pub struct HttpState {
    pub stats: Arc<Stats>,
    pub tracker: Arc<Tracker>,
    pub control: Arc<Control>,
    pub pool: Pool,
    pub ready: ReadySettings,
    /// Set when the service has finished: the server threads end.
    pub stopped: std::sync::atomic::AtomicBool,
    /// The database check's last answer, reused for a second so probes do not load the pool.
    db_check: Mutex<Option<(Instant, Result<(), String>)>>,
}

const MAX_BODY: usize = 64 * 1024;
const MAX_URL: usize = 2048;

impl HttpState {
    pub fn new(
        stats: Arc<Stats>,
        tracker: Arc<Tracker>,
        control: Arc<Control>,
        pool: Pool,
        ready: ReadySettings,
    ) -> Self {
        HttpState {
            stats,
            tracker,
            control,
            pool,
            ready,
            stopped: Default::default(),
            db_check: Mutex::new(None),
        }
    }

    fn database(&self) -> Result<(), String> {
        let mut cached = self.db_check.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, result)) = cached.as_ref() {
            if at.elapsed() < Duration::from_secs(1) {
                return result.clone();
            }
        }
        let result = self
            .pool
            .get_timeout(Duration::from_secs(1))
            .map_err(|e| format!("no connection: {e}"))
            .and_then(|mut c| {
                c.simple_query("SELECT 1")
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        *cached = Some((Instant::now(), result.clone()));
        result
    }

    /// Every readiness check with its verdict; the instance is ready when all pass.
    pub fn readiness(&self) -> (bool, Value) {
        let h = &self.stats.health;
        let mut checks = serde_json::Map::new();
        let mut check = |name: &str, result: Result<String, String>| {
            let value = match result {
                Ok(detail) => json!({"ok": true, "detail": detail}),
                Err(detail) => json!({"ok": false, "detail": detail}),
            };
            checks.insert(name.to_string(), value);
        };
        check(
            "database",
            self.database().map(|()| "answers through the pool".into()),
        );
        check(
            "kafka",
            if h.brokers_down.load(Ordering::Acquire) {
                Err("all brokers are down".into())
            } else if !h.joined.load(Ordering::Acquire) {
                Err("not yet in the consumer group".into())
            } else {
                Ok("in the consumer group".into())
            },
        );
        check(
            "schema_registry",
            if h.registry_down.load(Ordering::Acquire) {
                Err("the schema registry does not answer; registry-framed messages wait".into())
            } else {
                Ok("answering, or not needed".into())
            },
        );
        check(
            "writers",
            match h.stalled_writer(self.ready.stall_timeout) {
                Some((w, busy)) => Err(format!(
                    "writer {w} has been inside one database call for {busy:?}"
                )),
                None if h.writes_failing.load(Ordering::Acquire) => {
                    Err("the last write failed; retrying".into())
                }
                None if !h.stages_alive() => Err("a pipeline thread has stopped".into()),
                None => Ok("writing".into()),
            },
        );
        let lag = self.tracker.total_lag();
        check(
            "lag",
            match self.ready.max_lag {
                Some(max) if lag > max => Err(format!("lag {lag} is over {max}")),
                _ => Ok(format!("lag {lag}")),
            },
        );
        let ready = checks.values().all(|c| c["ok"] == true) && !self.control.shutting_down();
        self.stats.ready.set(ready as i64);
        (ready, json!({"ready": ready, "checks": checks}))
    }

    pub fn status(&self) -> Value {
        let h = &self.stats.health;
        let partitions: Vec<Value> = self
            .tracker
            .snapshot()
            .into_iter()
            .map(|p| {
                json!({
                    "topic": &*p.tp.topic, "partition": p.tp.partition, "stored_position": p.committed,
                    "end_offset": p.end, "lag": p.lag(), "in_flight_batches": p.in_flight,
                })
            })
            .collect();
        let last_commit = h.last_commit_ms.load(Ordering::Acquire);
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": h.started.elapsed().as_secs(),
            "paused": self.stats.paused.get() == 1,
            "shutting_down": self.control.shutting_down(),
            "assignment": partitions,
            "in_flight_batches": self.tracker.in_flight(),
            "last_commit_seconds_ago": (last_commit > 0).then(|| (now_ms() - last_commit) / 1000),
            "counts": {
                "messages_consumed": self.stats.messages_consumed.get(),
                "rows_written": self.stats.rows_written.get(),
                "transaction_events": self.stats.transaction_events.get(),
                "rejections": RejectKind::ALL.iter()
                    .map(|k| (k.as_str().to_string(), json!(self.stats.rejections.with_label_values(&[k.as_str()]).get())))
                    .collect::<serde_json::Map<_, _>>(),
                "batches_committed": self.stats.batches_committed.get(),
                "duplicates_skipped": self.stats.duplicates_skipped.get(),
                "write_retries": self.stats.write_retries.get(),
            },
        })
    }

    pub fn metrics(&self) -> String {
        let state = self.pool.state();
        let pool = &self.stats.pool_connections;
        pool.with_label_values(&["idle"])
            .set(i64::from(state.idle_connections));
        pool.with_label_values(&["in_use"])
            .set(i64::from(state.connections - state.idle_connections));
        for p in self.tracker.snapshot() {
            if let Some(lag) = p.lag() {
                self.stats
                    .consumer_lag
                    .with_label_values(&[&*p.tp.topic, &p.tp.partition.to_string()])
                    .set(lag);
            }
        }
        self.readiness();
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.stats.registry.gather(), &mut out) {
            log::warn!("metrics encoding: {e}");
        }
        out.push_str(&process_metrics());
        out
    }
}

/// The standard `process_*` metrics, read from /proc (Linux).
fn process_metrics() -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    let page = 4096.0;
    let ticks = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may contain spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat(5); here shifted by 3 (pid, comm, state).
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            (field(11) + field(12)) / ticks,
        );
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            field(20),
        );
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            field(21) * page,
        );
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        });
        if let Some(boot) = boot {
            metric(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot + field(19) / ticks,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        let max = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(max) = max {
            metric(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                max,
            );
        }
    }
    out
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| panic!("static header {name}"))
}

fn json_response(status: u16, body: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

fn handle(state: &HttpState, mut request: Request) {
    let too_big = request.body_length().is_some_and(|n| n > MAX_BODY);
    let response = if request.url().len() > MAX_URL {
        json_response(414, &json!({"error": "URL too long"}))
    } else if too_big {
        json_response(413, &json!({"error": "request body too large"}))
    } else if !matches!(request.method(), Method::Get | Method::Head) {
        json_response(405, &json!({"error": "only GET"})).with_header(header("Allow", "GET, HEAD"))
    } else {
        // A GET body is read (up to the limit) and ignored, so the connection stays usable.
        let mut sink = Vec::new();
        let _ = request
            .as_reader()
            .take(MAX_BODY as u64)
            .read_to_end(&mut sink);
        let path = request.url().split('?').next().unwrap_or("");
        match path {
            "/health/live" => {
                let h = &state.stats.health;
                let poll_age = h.poll_age();
                if h.stages_alive() && poll_age < Duration::from_secs(60) {
                    json_response(200, &json!({"live": true}))
                } else {
                    json_response(
                        503,
                        &json!({"live": false, "stages_alive": h.stages_alive(), "poll_loop_seconds_ago": poll_age.as_secs()}),
                    )
                }
            }
            "/health/ready" => {
                let (ready, body) = state.readiness();
                json_response(if ready { 200 } else { 503 }, &body)
            }
            "/status" => json_response(200, &state.status()),
            "/metrics" => Response::from_string(state.metrics()).with_header(header(
                "Content-Type",
                "text/plain; version=0.0.4; charset=utf-8",
            )),
            _ => json_response(
                404,
                &json!({"error": "not found", "paths": ["/health/live", "/health/ready", "/metrics", "/status"]}),
            ),
        }
    };
    if let Err(e) = request.respond(response) {
        log::debug!("http response: {e}");
    }
}

/// Starts the server threads, which end when `state.stopped` is set; returns the bound address
/// (an ephemeral port when given port 0).
pub fn spawn(addr: SocketAddr, state: Arc<HttpState>) -> Result<SocketAddr, String> {
    let server = Server::http(addr)
        .map_err(|e| format!("cannot listen on {addr} (CDC_AUDIT_HTTP_ADDR): {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("{addr} is not an IP address"))?;
    let server = Arc::new(server);
    for i in 0..2 {
        let (server, state) = (server.clone(), state.clone());
        thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || loop {
                match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(request)) => handle(&state, request),
                    Ok(None) => {}
                    Err(e) => log::warn!("http: {e}"),
                }
                if state.stopped.load(Ordering::Acquire) {
                    return;
                }
            })
            .map_err(|e| e.to_string())?;
    }
    log::info!("health and metrics on http://{bound}");
    Ok(bound)
}

/// `cdc-audit healthcheck`: asks a running instance whether it is ready (GET /health/ready) and
/// prints its answer; exit 0 if it is. For container health checks: no curl needed.
pub fn healthcheck(raw: &BTreeMap<String, String>, url: Option<&str>) -> Result<ExitCode, String> {
    use std::io::Write;
    use std::net::{TcpStream, ToSocketAddrs};
    let target = match url {
        Some(u) => u
            .trim_start_matches("http://")
            .trim_end_matches("/health/ready")
            .to_string(),
        None => raw
            .get("CDC_AUDIT_HTTP_ADDR")
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:9187".into())
            .replace("0.0.0.0", "127.0.0.1")
            .replace("[::]", "[::1]"),
    };
    let addr = target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve {target}"))?;
    let timeout = Duration::from_secs(3);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /health/ready HTTP/1.0\r\nHost: {target}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{addr}: {e}"))?;
    let status = response.split_whitespace().nth(1).unwrap_or("");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    println!("{body}");
    Ok(if status == "200" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
