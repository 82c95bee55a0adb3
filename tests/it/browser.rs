//! The explorer page in a real browser: headless Chromium driven through chromedriver's
//! WebDriver protocol (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs). The
//! service runs the pipeline with the read API on; the test searches for a key from that run,
//! reads its timeline and diff, and follows the link to the change's transaction.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use cdc_audit::config::ApiSettings;
use cdc_audit::demo::Generator;

use crate::util::{config, free_port, wait_until, InProcess, Kafka, TestDb, PARTITIONS};

const TOKEN: &str = "browser-token-0123456789";

/// A WebDriver session of headless Chromium, through a chromedriver of its own.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver: install Debian's chromium and chromium-driver (.ci/run does)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until(Duration::from_secs(30), "chromedriver listening", || {
            TcpStream::connect(addr).is_ok()
        });
        let profile = std::env::temp_dir().join(format!("cdc-audit-chromium-{port}"));
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: TempDir(profile),
        };
        let created = browser.call("POST", "/session", Some(&capabilities));
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // chromedriver keeps the connection open: read the head, then Content-Length bytes.
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            raw.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length: {head}"));
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).unwrap();
        let response = String::from_utf8_lossy(&body).into_owned();
        let text = response.as_str();
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {response}"));
        if value["value"]["error"].is_string() {
            panic!("WebDriver {method} {path}: {}", value["value"]);
        }
        value["value"].clone()
    }

    fn at(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    fn open(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(&json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            &self.at("/element"),
            Some(&json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {found}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.call(
            "POST",
            &self.at(&format!("/element/{element}/value")),
            Some(&json!({ "text": text })),
        );
    }

    fn click(&self, element: &str) {
        self.call(
            "POST",
            &self.at(&format!("/element/{element}/click")),
            Some(&json!({})),
        );
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// The text the page shows in its view, once it contains `expected` (or after 30 s).
    fn view_text_with(&self, expected: &str) -> String {
        let started = Instant::now();
        loop {
            let text = self.script(
                "return document.getElementById('view').innerText",
                json!([]),
            );
            let text = text.as_str().unwrap_or_default().to_string();
            if text.contains(expected) || started.elapsed() > Duration::from_secs(30) {
                return text;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &std::path::Path) {
        let png = self.call("GET", &self.at("/screenshot"), None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(|| self.call("DELETE", &self.at(""), None));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_explorer_shows_a_records_timeline_and_its_transaction() {
    let db = TestDb::new("explorer");
    let kafka = Kafka::new("explorer");
    let messages = "explorer.message".to_string();
    kafka
        .cluster
        .create_topic(&messages, PARTITIONS, 1)
        .unwrap();
    let mut generator = Generator::new("explorer", 9).with_context();
    let mut records = Vec::new();
    while generator.changes < 600 {
        records.extend(generator.next_records());
    }
    kafka.produce(&records);
    let api_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cfg = config(&kafka, &db, "g");
    if let cdc_audit::config::Topics::List(topics) = &mut cfg.topics {
        topics.push(messages);
    }
    cfg.api = Some(ApiSettings {
        addr: api_addr,
        token: TOKEN.into(),
        database_url: db.url.clone(),
        database_ca_file: None,
        statement_timeout: Duration::from_secs(10),
        signing_key_file: None,
    });
    let service = InProcess::start(cfg);
    wait_until(Duration::from_secs(120), "every message committed", || {
        db.committed("g") == records.len() as i64
    });

    // An update with a context, from the run: what the page must show for its record.
    let row = db
        .client()
        .query_one(
            "SELECT primary_key ->> 'id', transaction_id, changed_columns[1], \
                    old_data ->> changed_columns[1], new_data ->> changed_columns[1], actor, \
                    context ->> 'request_id' \
               FROM audit_trail WHERE source_table = 'customers' AND operation_type = 'UPDATE' \
                AND cardinality(changed_columns) > 0 AND context IS NOT NULL \
              ORDER BY id LIMIT 1",
            &[],
        )
        .unwrap();
    let (id, tx, column, old, new, actor, request): (
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    );

    let browser = Browser::start();
    browser.open(&format!("http://{api_addr}/#token={TOKEN}"));
    let tables = browser.view_text_with("inventory.public.customers");
    assert!(tables.contains("Tables in the trail"), "{tables}");
    browser.type_into("#search input[name=table]", "customers");
    browser.type_into("#search input[name=key]", &id);
    browser.click(&browser.find("#search button[type=submit]"));
    let timeline = browser.view_text_with("oldest first");
    assert!(
        timeline.contains(&format!("inventory.public.customers {{\"id\":{id}}}")),
        "{timeline}"
    );
    for expected in [
        &column,
        &format!("\"{old}\""),
        &format!("\"{new}\""),
        &format!("by {actor}"),
        &request,
    ] {
        assert!(
            timeline.contains(expected.as_str()),
            "the timeline should show {expected:?}:\n{timeline}"
        );
    }
    let diff_cells = browser.script(
        "return [...document.querySelectorAll('table.diff tbody tr')].map(r => r.innerText)",
        json!([]),
    );
    assert!(
        diff_cells.as_array().unwrap().iter().any(|r| {
            let r = r.as_str().unwrap_or_default();
            r.contains(&column) && r.contains(&old) && r.contains(&new)
        }),
        "a diff row holds the column with its old and new value: {diff_cells}"
    );
    browser.screenshot(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("explorer-timeline.png"),
    );

    let tx_link = browser.find(&format!("a[href='#/tx/{}']", tx.replace(':', "%3A")));
    browser.click(&tx_link);
    let transaction = browser.view_text_with(&format!("Transaction {tx}"));
    assert!(
        transaction.contains(&format!("Transaction {tx}")),
        "{transaction}"
    );
    assert!(
        transaction.contains(&format!("\"request_id\":\"{request}\"")),
        "its context: {transaction}"
    );
    assert!(
        transaction.contains(&format!("by {actor}")),
        "{transaction}"
    );
    browser.screenshot(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("explorer-transaction.png"),
    );

    // Keyboard: the search form is reached and submitted without a mouse.
    let focused = browser.script(
        "document.querySelector('#search input[name=table]').focus(); \
         return document.activeElement.getAttribute('name')",
        json!([]),
    );
    assert_eq!(focused, json!("table"));
    drop(browser);
    service.stop();
}
