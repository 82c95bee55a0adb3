//! The read API over real HTTP: the token, every path against the OpenAPI document, bad
//! parameters named with a 400 (never a 500), pages that follow each other, and `cdc-audit serve`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use cdc_audit::api::{self, Api, OPENAPI, PATHS};
use cdc_audit::config::ApiSettings;
use cdc_audit::integrity::{Digest, SigningKey};

use crate::history::{change, context_message, write, T0};
use crate::util::{ed25519_key, tempdir, wait_until, TestDb};

const TOKEN: &str = "test-token-0123456789";

/// GET `path` with `token`; the status and the body as JSON.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n{auth}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

/// A trail of two records of one table, a context, and the same table name in another database.
fn trail(db: &TestDb) {
    db.migrate();
    let c = |id: i64, email: &str| json!({"id": id, "email": email, "updated_by": "pool"});
    write(
        db,
        "pg.inventory.customers",
        &[
            change(
                "customers",
                "c",
                Some(7),
                None,
                Some(&c(7, "x1")),
                T0 + 10,
                10,
                901,
                "false",
            ),
            change(
                "customers",
                "u",
                Some(7),
                Some(&c(7, "x1")),
                Some(&c(7, "x2")),
                T0 + 20,
                20,
                902,
                "false",
            ),
            change(
                "customers",
                "c",
                Some(8),
                None,
                Some(&c(8, "y1")),
                T0 + 30,
                30,
                903,
                "false",
            ),
            change(
                "customers",
                "d",
                Some(8),
                Some(&c(8, "y1")),
                None,
                T0 + 40,
                40,
                904,
                "false",
            ),
        ],
    );
    let context = json!({"user": "alice", "request_id": "r-17"});
    write(
        db,
        "pg.message",
        &[context_message(&context, T0 + 19, 19, 902)],
    );
    let other = change(
        "customers",
        "c",
        Some(1),
        None,
        Some(&c(1, "o")),
        T0 + 50,
        50,
        905,
        "false",
    );
    write(
        db,
        "pg2.inventory.customers",
        &[(other.0, other.1.replace("\"inventory\"", "\"crm\""))],
    );
}

fn start(db: &TestDb) -> Api {
    start_signing(db, None)
}

/// The API, signing digests with the key in `signing_key_file`.
fn start_signing(db: &TestDb, signing_key_file: Option<std::path::PathBuf>) -> Api {
    api::spawn(&ApiSettings {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        database_url: db.url.clone(),
        database_ca_file: None,
        statement_timeout: Duration::from_secs(10),
        signing_key_file,
    })
    .unwrap()
}

/// Checks `value` against an OpenAPI 3.0 schema: type, nullable, enum, required, properties,
/// items, and `$ref` into the document. Returns what does not match.
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = reference
            .trim_start_matches("#/")
            .split('/')
            .fold(doc, |v, part| &v[part]);
        return violations(doc, target, value, at);
    }
    if value.is_null() {
        let typed = schema.get("type").is_some();
        return if typed && schema["nullable"] != json!(true) {
            vec![format!("{at}: null, but not nullable")]
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    let kind_ok = match schema.get("type").and_then(Value::as_str) {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("the checker does not know type {other}"),
    };
    if !kind_ok {
        out.push(format!("{at}: {value} is not of type {}", schema["type"]));
        return out;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = name.as_str().unwrap();
        if value.get(name).is_none() {
            out.push(format!("{at}: {name} is required but absent"));
        }
    }
    if let (Some(properties), Some(object)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (name, field) in object {
            match properties.get(name) {
                Some(s) => out.extend(violations(doc, s, field, &format!("{at}.{name}"))),
                None => out.push(format!("{at}.{name} is not in the document")),
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            out.extend(violations(doc, items, item, &format!("{at}[{i}]")));
        }
    }
    out
}

/// The status's response schema of `path` (a documented path) in the document.
fn response_schema<'a>(doc: &'a Value, path: &str, status: u16) -> &'a Value {
    let response = &doc["paths"][path]["get"]["responses"][status.to_string()];
    assert!(!response.is_null(), "{path} documents no {status} response");
    let response = match response.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .trim_start_matches("#/")
            .split('/')
            .fold(doc, |v, part| &v[part]),
        None => response,
    };
    &response["content"]["application/json"]["schema"]
}

#[test]
fn every_path_answers_as_the_openapi_document_says() {
    let db = TestDb::new("apidoc");
    trail(&db);
    let key_file = ed25519_key(&tempdir("apidoc"), "key.pem");
    let api = start_signing(&db, Some(key_file.clone()));
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let documented: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut served = PATHS.to_vec();
    served.sort();
    let mut documented_sorted = documented.clone();
    documented_sorted.sort();
    assert_eq!(
        served, documented_sorted,
        "the API and its document name the same paths"
    );

    let key = "%7B%22id%22%3A%207%7D"; // {"id": 7}
    let at = cdc_audit::transform::decode::iso_micros(T0 + 25);
    let valid = [
        ("/api/v1/openapi.json", "/api/v1/openapi.json".to_string()),
        ("/api/v1/tables", "/api/v1/tables".to_string()),
        (
            "/api/v1/changes",
            "/api/v1/changes?table=inventory.customers&limit=2".to_string(),
        ),
        (
            "/api/v1/history",
            format!("/api/v1/history?table=inventory.customers&key={key}"),
        ),
        (
            "/api/v1/as-of",
            format!("/api/v1/as-of?table=inventory.customers&at={at}"),
        ),
        (
            "/api/v1/transactions",
            "/api/v1/transactions?context_field=request_id&context_value=r-17".to_string(),
        ),
        (
            "/api/v1/transactions/{id}",
            "/api/v1/transactions/902".to_string(),
        ),
        ("/api/v1/digest", "/api/v1/digest".to_string()),
    ];
    for (path, url) in &valid {
        let (status, body) = get(api.addr, url, Some(TOKEN));
        assert_eq!(status, 200, "{url}: {body}");
        let wrong = violations(&doc, response_schema(&doc, path, 200), &body, path);
        assert!(
            wrong.is_empty(),
            "{url} does not answer as documented: {wrong:#?}\n{body}"
        );
        let (status, body) = get(api.addr, url, None);
        assert_eq!(status, 401, "{url} without a token");
        assert!(violations(&doc, response_schema(&doc, path, 401), &body, path).is_empty());
    }
    // The answers are the trail's, not only well formed.
    let (_, history) = get(api.addr, &valid[3].1, Some(TOKEN));
    assert_eq!(history["total"], json!(2));
    assert_eq!(history["changes"][1]["actor"], json!("alice"));
    assert_eq!(
        history["changes"][1]["changes"]["email"],
        json!({"old": "x1", "new": "x2"})
    );
    let (_, as_of) = get(api.addr, &valid[4].1, Some(TOKEN));
    assert_eq!(as_of["rows"].as_array().unwrap().len(), 1, "{as_of}");
    // The digest is signed with the service's key: it opens with the public half.
    let (_, digest) = get(api.addr, "/api/v1/digest", Some(TOKEN));
    let public = SigningKey::load(&key_file).unwrap().public().unwrap();
    let opened = Digest::open(&digest.to_string(), &public).unwrap();
    assert_eq!(opened.database, db.name);
    let unsigned = start(&db);
    let (status, body) = get(unsigned.addr, "/api/v1/digest", Some(TOKEN));
    assert_eq!(status, 404, "{body}");
    assert!(violations(
        &doc,
        response_schema(&doc, "/api/v1/digest", 404),
        &body,
        "digest"
    )
    .is_empty());
    unsigned.stop();
    let (_, tables) = get(api.addr, "/api/v1/tables", Some(TOKEN));
    let customers = &tables["tables"][1];
    assert_eq!(customers["qualified"], json!("inventory.public.customers"));
    assert_eq!(customers["changes"], json!(4));
    assert!(customers["first_change"].as_str() < customers["last_change"].as_str());

    // A 400 names the parameter, in the documented shape.
    for (path, url, parameter) in [
        (
            "/api/v1/history",
            "/api/v1/history?table=inventory.customers".to_string(),
            "key",
        ),
        (
            "/api/v1/as-of",
            "/api/v1/as-of?table=inventory.customers".to_string(),
            "at",
        ),
        (
            "/api/v1/changes",
            "/api/v1/changes?limit=ten".to_string(),
            "limit",
        ),
        (
            "/api/v1/transactions",
            "/api/v1/transactions?context_field=request_id".to_string(),
            "context_value",
        ),
    ] {
        let (status, body) = get(api.addr, &url, Some(TOKEN));
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["parameter"], json!(parameter), "{url}: {body}");
        assert!(violations(&doc, response_schema(&doc, path, 400), &body, path).is_empty());
    }
    api.stop();
}

#[test]
fn bad_questions_get_a_400_that_says_what_is_wrong_and_never_a_500() {
    let db = TestDb::new("apibad");
    trail(&db);
    let api = start(&db);
    for (url, expect) in [
        (
            "/api/v1/history?table=nosuch&key=1",
            "unknown table \"nosuch\"",
        ),
        (
            "/api/v1/history?table=customers&key=1",
            "ambiguous table \"customers\"",
        ),
        (
            "/api/v1/history?table=inventory.customers&key=%7B%22id",
            "is not JSON of a key",
        ),
        (
            "/api/v1/as-of?table=inventory.customers&at=soon",
            "at \"soon\" is not a time",
        ),
        (
            "/api/v1/history?table=inventory.customers&key=7&limit=0",
            "out of range",
        ),
        ("/api/v1/changes?limit=5000", "limit 5000 is out of range"),
        (
            "/api/v1/changes?operation=NOPE",
            "operation \"NOPE\" is not one of",
        ),
        ("/api/v1/changes?key=7", "a key needs its table"),
        (
            "/api/v1/changes?tabel=customers",
            "unknown parameter \"tabel\"",
        ),
        ("/api/v1/changes?limit=1&limit=2", "given twice"),
        (
            "/api/v1/changes?table=%ff",
            "not valid percent-encoded UTF-8",
        ),
        (
            "/api/v1/changes?from=soonish",
            "from \"soonish\" is not a time",
        ),
        (
            "/api/v1/history?table=x%27%3B%20DROP%20TABLE%20audit_logging%3B%20--&key=1",
            "unknown table",
        ),
        ("/api/v1/transactions/%", "not valid percent-encoded"),
    ] {
        let (status, body) = get(api.addr, url, Some(TOKEN));
        assert_eq!(status, 400, "{url}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(expect), "{url}: {message}");
    }
    assert_eq!(
        db.count("audit_logging"),
        6,
        "nothing a parameter says is run as SQL"
    );
    let (status, _) = get(api.addr, "/api/v1/nothing", Some(TOKEN));
    assert_eq!(status, 404);
    let (status, _) = get(api.addr, "/api/v1/tables", Some("test-token-0123456780"));
    assert_eq!(status, 401, "a token one character off");
    api.stop();
}

#[test]
fn pages_of_changes_follow_each_other_newest_first() {
    let db = TestDb::new("apipages");
    trail(&db);
    let api = start(&db);
    let mut url = "/api/v1/changes?table=inventory.public.customers&limit=3".to_string();
    let mut ids = Vec::new();
    loop {
        let (status, page) = get(api.addr, &url, Some(TOKEN));
        assert_eq!(status, 200, "{page}");
        ids.extend(
            page["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_i64() {
            Some(cursor) => {
                url = format!(
                    "/api/v1/changes?table=inventory.public.customers&limit=3&cursor={cursor}"
                )
            }
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.sort_by(|a, b| b.cmp(a));
    expected.dedup();
    assert_eq!(ids, expected, "newest first, each once");
    assert_eq!(ids.len(), 4);
    let (_, by_actor) = get(api.addr, "/api/v1/changes?actor=alice", Some(TOKEN));
    assert_eq!(by_actor["changes"].as_array().unwrap().len(), 1);
    assert_eq!(by_actor["changes"][0]["operation_type"], json!("UPDATE"));
    api.stop();
}

#[test]
fn serve_runs_the_api_alone_and_stops_on_sigterm() {
    let db = TestDb::new("apiserve");
    trail(&db);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
        .arg("serve")
        .env_clear()
        .envs(crate::util::coverage_env())
        .env("CDC_AUDIT_DATABASE_URL", &db.url)
        .env("CDC_AUDIT_API_ADDR", addr.to_string())
        .env("CDC_AUDIT_API_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the API listening", || {
        TcpStream::connect(addr).is_ok()
    });
    let (status, body) = get(addr, "/api/v1/tables", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
        .arg("serve")
        .env_clear()
        .envs(crate::util::coverage_env())
        .env("CDC_AUDIT_DATABASE_URL", &db.url)
        .env("CDC_AUDIT_API_ADDR", addr.to_string())
        .env("CDC_AUDIT_API_TOKEN", "short")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("CDC_AUDIT_API_TOKEN")
            && !stderr.contains("short"),
        "{stderr}"
    );
}
