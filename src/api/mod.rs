//! The read API: the questions of [`crate::query`] as JSON over HTTP, for the people and tools
//! that do not write SQL. A listener of its own (never the metrics port), a bearer token on every
//! request, its own small read-only pool with a statement timeout, so it cannot slow the writers
//! beyond what its queries cost PostgreSQL. `openapi.json` beside this file documents it; a test
//! holds the two together.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::config::ApiSettings;
use crate::integrity::{Digest, SigningKey};
use crate::query::{self, ErrorKind, QueryError, Search};
use crate::sink::{self, Pool};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The explorer: one self-contained page (HTML, CSS, plain JavaScript) served at `/`. It holds
/// no data; it asks the API with the token the user gives it.
pub const PAGE: &str = include_str!("page.html");

/// Every path the API answers, as the OpenAPI document names them.
pub const PATHS: &[&str] = &[
    "/api/v1/openapi.json",
    "/api/v1/tables",
    "/api/v1/digest",
    "/api/v1/changes",
    "/api/v1/history",
    "/api/v1/as-of",
    "/api/v1/transactions",
    "/api/v1/transactions/{id}",
];

const MAX_URL: usize = 4096;

/// How long `/api/v1/tables` answers from its last count.
const TABLES_FRESH: Duration = Duration::from_secs(10);

/// A running API: stop it with [`Api::stop`].
pub struct Api {
    pub addr: SocketAddr,
    stopped: Arc<AtomicBool>,
}

impl Api {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}

struct State {
    pool: Pool,
    /// The tables' summary counts every row change of each table: it is reused for
    /// `TABLES_FRESH`, so a page polling it does not make PostgreSQL count all the time.
    tables: Mutex<Option<(Instant, Value)>>,
    /// SHA-256 of the token: compared digest to digest, so the comparison takes the same time
    /// whatever the guess, and its length is not given away either.
    token_digest: [u8; 32],
    /// Signs `/api/v1/digest`, when digests are configured.
    signing_key: Option<SigningKey>,
}

/// Starts the API's threads on `settings.addr` (port 0: any free port).
pub fn spawn(settings: &ApiSettings) -> Result<Api, String> {
    let pool = sink::reader_pool(
        &settings.database_url,
        4,
        settings.database_ca_file.as_deref(),
        settings.statement_timeout,
    )?;
    let signing_key = settings
        .signing_key_file
        .as_deref()
        .map(SigningKey::load)
        .transpose()
        .map_err(|e| format!("CDC_AUDIT_SIGNING_KEY_FILE={e}"))?;
    let server = Server::http(settings.addr).map_err(|e| {
        format!(
            "cannot listen on {} (CDC_AUDIT_API_ADDR): {e}",
            settings.addr
        )
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("{} is not an IP address", settings.addr))?;
    let state = Arc::new(State {
        pool,
        tables: Mutex::new(None),
        token_digest: Sha256::digest(settings.token.as_bytes()).into(),
        signing_key,
    });
    let server = Arc::new(server);
    let stopped = Arc::new(AtomicBool::new(false));
    for i in 0..2 {
        let (server, state, stopped) = (server.clone(), state.clone(), stopped.clone());
        thread::Builder::new()
            .name(format!("api-{i}"))
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    match server.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(request)) => handle(&state, request),
                        Ok(None) => {}
                        Err(e) => log::warn!("api: {e}"),
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    log::info!("read API on http://{addr}/api/v1/ and the explorer on http://{addr}/ (bearer token required)");
    Ok(Api { addr, stopped })
}

/// An answer that is not a success: its status and message, and the parameter at fault.
#[derive(Debug)]
struct Refusal {
    status: u16,
    message: String,
    parameter: Option<&'static str>,
}

impl Refusal {
    fn bad(parameter: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status: 400,
            message: message.into(),
            parameter: Some(parameter),
        }
    }
}

impl From<QueryError> for Refusal {
    fn from(e: QueryError) -> Refusal {
        let status = match e.kind {
            ErrorKind::Invalid => 400,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        };
        if status == 500 {
            log::error!("api: {}", e.message);
        }
        Refusal {
            status,
            message: e.message,
            parameter: None,
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| panic!("static header {name}"))
}

fn respond(request: Request, status: u16, body: &Value) {
    let mut response = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"));
    if status == 401 {
        response = response.with_header(header("WWW-Authenticate", "Bearer"));
    }
    if let Err(e) = request.respond(response) {
        log::debug!("api response: {e}");
    }
}

fn handle(state: &State, request: Request) {
    let path = request.url().split(['?', '#']).next().unwrap_or("");
    if matches!(path, "/" | "/index.html") && matches!(request.method(), Method::Get | Method::Head)
    {
        let response = Response::from_string(PAGE)
            .with_header(header("Content-Type", "text/html; charset=utf-8"))
            .with_header(header(
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ))
            .with_header(header("X-Content-Type-Options", "nosniff"))
            .with_header(header("Referrer-Policy", "no-referrer"));
        if let Err(e) = request.respond(response) {
            log::debug!("api response: {e}");
        }
        return;
    }
    let answer = answer(state, &request);
    match answer {
        Ok(body) => respond(request, 200, &body),
        Err(r) => {
            let mut body = json!({"error": r.message});
            if let Some(p) = r.parameter {
                body["parameter"] = json!(p);
            }
            respond(request, r.status, &body)
        }
    }
}

fn authorized(state: &State, request: &Request) -> bool {
    let given = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| {
            let value = h.value.as_str();
            // The scheme's name is case-insensitive (RFC 9110).
            let scheme = value.get(..7)?;
            scheme.eq_ignore_ascii_case("bearer ").then(|| &value[7..])
        })
        .unwrap_or("");
    let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    digest
        .iter()
        .zip(state.token_digest.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn answer(state: &State, request: &Request) -> Result<Value, Refusal> {
    if request.url().len() > MAX_URL {
        return Err(Refusal {
            status: 414,
            message: format!("the URL is longer than {MAX_URL} bytes"),
            parameter: None,
        });
    }
    if !matches!(request.method(), Method::Get | Method::Head) {
        return Err(Refusal {
            status: 405,
            message: "the API only reads: GET".into(),
            parameter: None,
        });
    }
    if !authorized(state, request) {
        return Err(Refusal {
            status: 401,
            message: "a bearer token is needed: Authorization: Bearer <CDC_AUDIT_API_TOKEN>".into(),
            parameter: None,
        });
    }
    let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
    let route = match path {
        "/api/v1/openapi.json" => {
            return serde_json::from_str(OPENAPI).map_err(|e| Refusal {
                status: 500,
                message: format!("the OpenAPI document does not parse: {e}"),
                parameter: None,
            })
        }
        p if p.starts_with("/api/v1/transactions/") => "/api/v1/transactions/{id}",
        p => match PATHS.iter().find(|known| **known == p) {
            Some(known) => *known,
            None => {
                return Err(Refusal {
                    status: 404,
                    message: format!("no such path; the API's paths are {}", PATHS.join(", ")),
                    parameter: None,
                })
            }
        },
    };
    let mut params = Params::parse(query)?;
    let mut client = state
        .pool
        .get_timeout(Duration::from_secs(5))
        .map_err(|e| Refusal {
            status: 503,
            message: format!("no database connection: {e}"),
            parameter: None,
        })?;
    let value = match route {
        "/api/v1/tables" => {
            params.done()?;
            let mut cached = state.tables.lock().unwrap_or_else(|e| e.into_inner());
            match cached.as_ref() {
                Some((at, value)) if at.elapsed() < TABLES_FRESH => value.clone(),
                _ => {
                    let value = json!({"tables": query::table_summary(&mut client)?});
                    *cached = Some((Instant::now(), value.clone()));
                    value
                }
            }
        }
        "/api/v1/digest" => {
            params.done()?;
            let key = state.signing_key.as_ref().ok_or_else(|| Refusal {
                status: 404,
                message: "digests are not configured: set CDC_AUDIT_SIGNING_KEY_FILE".into(),
                parameter: None,
            })?;
            let internal = |message: String| Refusal {
                status: 500,
                message,
                parameter: None,
            };
            let digest = Digest::take(&mut client).map_err(internal)?;
            let signed = digest.sign(key).map_err(internal)?;
            serde_json::from_str(&signed).map_err(|e| internal(e.to_string()))?
        }
        "/api/v1/history" => {
            let table = params.required("table")?;
            let key = params
                .key()?
                .ok_or_else(|| Refusal::bad("key", "key is required"))?;
            let limit = params.number("limit", 100)?;
            params.done()?;
            query::history(&mut client, &table, &key, limit)?.to_json()
        }
        "/api/v1/as-of" => {
            let table = params.required("table")?;
            let at = params.required("at")?;
            let key = params.key()?;
            params.done()?;
            query::as_of(&mut client, &table, &at, key.as_ref())?.to_json()
        }
        "/api/v1/transactions/{id}" => {
            params.done()?;
            let id = percent_decode(&path["/api/v1/transactions/".len()..]).ok_or_else(|| {
                Refusal::bad(
                    "id",
                    "the transaction id is not valid percent-encoded UTF-8",
                )
            })?;
            if id.is_empty() {
                return Err(Refusal::bad("id", "the transaction id is empty"));
            }
            query::transaction(&mut client, &id)?.to_json()
        }
        "/api/v1/transactions" => {
            let field = params.required("context_field")?;
            let value = params.required("context_value")?;
            params.done()?;
            json!({"transactions": query::transactions_by_context(&mut client, &field, &value)?})
        }
        _ => {
            let search = Search {
                table: params.take("table"),
                key: params.key()?,
                actor: params.take("actor"),
                operation: params.take("operation"),
                from: params.take("from"),
                to: params.take("to"),
                transaction: params.take("transaction"),
                before: params.optional_number("cursor")?,
                limit: params.number("limit", 100)?,
            };
            params.done()?;
            query::changes(&mut client, &search)?
        }
    };
    Ok(value)
}

/// A request's query parameters, each taken once; what is left over is refused.
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(query: &str) -> Result<Params, Refusal> {
        let mut params = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                percent_decode(text).ok_or_else(|| Refusal {
                    status: 400,
                    message: format!("parameter {name:?} is not valid percent-encoded UTF-8"),
                    parameter: None,
                })
            };
            let (name, value) = (decode(name)?, decode(value)?);
            if params.insert(name.clone(), value).is_some() {
                return Err(Refusal {
                    status: 400,
                    message: format!("parameter {name} is given twice"),
                    parameter: None,
                });
            }
        }
        Ok(Params(params))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name).filter(|v| !v.is_empty())
    }

    fn required(&mut self, name: &'static str) -> Result<String, Refusal> {
        self.take(name)
            .ok_or_else(|| Refusal::bad(name, format!("{name} is required")))
    }

    fn key(&mut self) -> Result<Option<Value>, Refusal> {
        self.take("key")
            .map(|k| query::parse_key(&k).map_err(|e| Refusal::bad("key", e.message)))
            .transpose()
    }

    fn optional_number(&mut self, name: &'static str) -> Result<Option<i64>, Refusal> {
        self.take(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| Refusal::bad(name, format!("{name} {v:?} is not a whole number")))
            })
            .transpose()
    }

    fn number(&mut self, name: &'static str, default: i64) -> Result<i64, Refusal> {
        Ok(self.optional_number(name)?.unwrap_or(default))
    }

    /// Refuses the parameters no one took.
    fn done(self) -> Result<(), Refusal> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(name) => Err(Refusal {
                status: 400,
                message: format!("unknown parameter {name:?}; the OpenAPI document at /api/v1/openapi.json lists each path's"),
                parameter: None,
            }),
        }
    }
}

/// `%XX` escapes and `+` (a space, in a query) decoded; `None` when they are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_are_decoded_and_bad_ones_refused() {
        assert_eq!(
            percent_decode("%7B%22id%22%3A%201004%7D").as_deref(),
            Some(r#"{"id": 1004}"#)
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        for bad in ["%", "%4", "%zz", "%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn parameters_are_taken_once_and_leftovers_refused() {
        let mut p = Params::parse("table=customers&key=1004&limit=5").unwrap();
        assert_eq!(p.required("table").unwrap(), "customers");
        assert_eq!(p.number("limit", 100).unwrap(), 5);
        let left = p.done().unwrap_err();
        assert!(
            left.message.contains("unknown parameter \"key\""),
            "{}",
            left.message
        );
        let twice = Params::parse("a=1&a=2").err().unwrap();
        assert!(twice.message.contains("given twice"));
        let bad = Params::parse("limit=ten")
            .unwrap()
            .number("limit", 1)
            .unwrap_err();
        assert_eq!((bad.status, bad.parameter), (400, Some("limit")));
    }
}
