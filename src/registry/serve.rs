//! A schema registry in process: the part of Confluent's REST API that Debezium's converters and
//! this service use, for `cdc-audit demo --format avro` and the tests. Schemas live in memory;
//! an Avro schema is checked to be JSON, not to be Avro, and there are no compatibility checks.
//! Not a registry to run.
//!
//! - `GET /schemas/ids/{id}`: `{"schema": "..."}`, or 404 with error 40403;
//! - `POST /subjects/{subject}/versions` with `{"schema": "...", "schemaType": "AVRO"}`:
//!   `{"id": n}`, the same id for the same schema under any subject;
//! - `GET /subjects` and `GET /subjects/{subject}/versions`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

#[derive(Default)]
struct State {
    /// Schemas by id - 1, with their type.
    schemas: Vec<(String, String)>,
    /// Each subject's versions, as schema ids.
    subjects: BTreeMap<String, Vec<u32>>,
}

/// The registry, serving until dropped.
pub struct LocalRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stopped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Deserialize)]
struct Registration {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

impl LocalRegistry {
    /// Listens on `addr` (port 0 for any).
    pub fn start(addr: SocketAddr) -> Result<LocalRegistry, String> {
        let server = Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("{addr} is not an IP address"))?;
        let state = Arc::new(Mutex::new(State::default()));
        let stopped = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stopped) = (state.clone(), stopped.clone());
            thread::Builder::new()
                .name("registry".into())
                .spawn(move || {
                    while !stopped.load(Ordering::Acquire) {
                        match server.recv_timeout(Duration::from_millis(100)) {
                            Ok(Some(request)) => handle(&state, request),
                            Ok(None) => {}
                            Err(e) => log::warn!("registry: {e}"),
                        }
                    }
                })
                .map_err(|e| e.to_string())?
        };
        Ok(LocalRegistry {
            addr,
            state,
            stopped,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many schemas it holds: the last id given.
    pub fn schemas(&self) -> usize {
        lock(&self.state).schemas.len()
    }

    /// The text of schema `id`.
    pub fn schema(&self, id: u32) -> Option<String> {
        let state = lock(&self.state);
        state
            .schemas
            .get((id as usize).checked_sub(1)?)
            .map(|(s, _)| s.clone())
    }

    /// Registers an Avro schema under `subject`, as a producer's serializer does; its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        register(&mut lock(&self.state), subject, schema, "AVRO")
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(state: &mut State, subject: &str, schema: &str, schema_type: &str) -> u32 {
    let id = match state.schemas.iter().position(|(s, _)| s == schema) {
        Some(i) => i as u32 + 1,
        None => {
            state
                .schemas
                .push((schema.to_string(), schema_type.to_string()));
            state.schemas.len() as u32
        }
    };
    let versions = state.subjects.entry(subject.to_string()).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    id
}

fn error(status: u16, code: u32, message: &str) -> (u16, Value) {
    (status, json!({"error_code": code, "message": message}))
}

fn handle(state: &Mutex<State>, mut request: Request) {
    let url = request.url().to_string();
    let parts: Vec<&str> = url.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    let (status, body) = match (&method, parts.as_slice()) {
        (Method::Get, ["schemas", "ids", id]) => match id.parse::<usize>() {
            Ok(id) if id >= 1 => match lock(state).schemas.get(id - 1) {
                Some((schema, t)) if t == "AVRO" => (200, json!({"schema": schema})),
                Some((schema, t)) => (200, json!({"schema": schema, "schemaType": t})),
                None => error(404, 40403, &format!("Schema {id} not found")),
            },
            _ => error(404, 40403, &format!("Schema {id} not found")),
        },
        (Method::Get, ["subjects"]) => {
            (200, json!(lock(state).subjects.keys().collect::<Vec<_>>()))
        }
        (Method::Get, ["subjects", subject, "versions"]) => {
            match lock(state).subjects.get(*subject) {
                Some(ids) => (200, json!((1..=ids.len()).collect::<Vec<_>>())),
                None => error(404, 40401, &format!("Subject '{subject}' not found.")),
            }
        }
        (Method::Post, ["subjects", subject, "versions"]) => {
            let mut body = String::new();
            let read = request.as_reader().read_to_string(&mut body);
            match read
                .ok()
                .and_then(|_| serde_json::from_str::<Registration>(&body).ok())
            {
                None => error(
                    422,
                    42201,
                    "Invalid schema: the body is not {\"schema\": ...}",
                ),
                Some(r) => {
                    let t = r
                        .schema_type
                        .unwrap_or_else(|| "AVRO".into())
                        .to_uppercase();
                    // Avro schemas are JSON; whether they are Avro is the reader's to say.
                    let valid = t != "AVRO" || serde_json::from_str::<Value>(&r.schema).is_ok();
                    if valid {
                        let id = register(&mut lock(state), subject, &r.schema, &t);
                        (200, json!({"id": id}))
                    } else {
                        error(422, 42201, "Invalid schema")
                    }
                }
            }
        }
        _ => error(404, 404, "HTTP 404 Not Found"),
    };
    let header = Header::from_bytes(
        &b"Content-Type"[..],
        &b"application/vnd.schemaregistry.v1+json"[..],
    );
    let mut response = Response::from_string(body.to_string()).with_status_code(status);
    if let Ok(h) = header {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}
