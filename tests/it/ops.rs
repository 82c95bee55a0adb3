//! Operating the service: health, metrics and status over HTTP (asked with curl), Prometheus's
//! promtool on the metrics and the shipped rules, systemd's notification protocol and unit
//! verifier, JSON logs, and the `healthcheck` subcommand.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proxy::{self, Proxy};
use crate::util::{free_port, generate, run_ok, wait_until, Kafka, Service, TestDb};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// (status, body) of a request made with curl.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn get(port: u16, path: &str) -> (u16, String) {
    curl(&[&format!("http://127.0.0.1:{port}{path}")])
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .to_string_lossy()
        .to_string()
}

#[test]
fn http_endpoints_report_health_metrics_and_status_and_readiness_follows_the_database() {
    assert!(have("curl"), "curl is needed (.ci/run installs it)");
    let db = TestDb::new("http");
    let kafka = Kafka::new("http");
    let records = generate("http", 3, 400);
    kafka.produce(&records);
    let proxy = Proxy::start(proxy::target(&db.url));
    db.migrate();
    let proxied = db.alias(proxy.url(&db.url));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let service = Service::spawn(&kafka, &proxied, "g", &[("CDC_AUDIT_HTTP_ADDR", &addr)]);
    wait_until(Duration::from_secs(90), "every message committed", || {
        db.committed("g") == records.len() as i64
    });

    assert_eq!(get(port, "/health/live").0, 200);
    let (code, body) = get(port, "/health/ready");
    assert_eq!(code, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    for check in ["database", "kafka", "writers", "lag"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {body}");
    }

    let (code, status) = get(port, "/status");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["assignment"].as_array().unwrap().len(), 12);
    // Lag comes from librdkafka's statistics every 5 s; counters move just after each commit.
    let rows = db.count("audit_logging");
    wait_until(
        Duration::from_secs(30),
        "lag known and zero, all rows counted",
        || {
            let s: Value = serde_json::from_str(&get(port, "/status").1).unwrap();
            s["counts"]["rows_written"] == rows
                && s["assignment"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["lag"] == 0)
        },
    );

    let (code, metrics) = get(port, "/metrics");
    assert_eq!(code, 200);
    let rows = db.count("audit_logging");
    assert!(
        metrics.contains(&format!("cdc_audit_rows_written_total {rows}")),
        "{metrics}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "cdc_audit_pool_connections",
        "cdc_audit_end_to_end_latency_seconds_bucket",
        "cdc_audit_batch_held_seconds_bucket",
        "cdc_audit_writer_wait_seconds_total{on=\"position\"}",
        "cdc_audit_batches_behind_undone_total",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    if have("promtool") {
        let file = std::env::temp_dir().join(format!("{}-metrics.txt", db.name));
        std::fs::write(&file, &metrics).unwrap();
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(format!("promtool check metrics < {}", file.display())),
        );
    }
    assert_metrics_referenced_by_rules_and_dashboard_exist(&metrics);

    // Bad requests get the right answer and leave the service alone.
    assert_eq!(get(port, "/nope").0, 404);
    assert_eq!(
        curl(&["-X", "POST", &format!("http://127.0.0.1:{port}/metrics")]).0,
        405
    );
    let huge = std::env::temp_dir().join(format!("{}-huge", db.name));
    std::fs::write(&huge, vec![b'x'; 1 << 20]).unwrap();
    assert_eq!(
        curl(&[
            "-X",
            "GET",
            "--data-binary",
            &format!("@{}", huge.display()),
            &format!("http://127.0.0.1:{port}/status")
        ])
        .0,
        413
    );
    assert_eq!(get(port, &format!("/status?{}", "a".repeat(5000))).0, 414);

    // The healthcheck subcommand (the container's HEALTHCHECK) agrees.
    let healthcheck = |addr: &str| {
        Command::new(env!("CARGO_BIN_EXE_cdc-audit"))
            .args(["healthcheck", "--url", addr])
            .env_clear()
            .envs(crate::util::coverage_env())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(healthcheck(&addr));

    // The database goes away: not ready, and the body says why; it comes back: ready again.
    proxy.cut();
    wait_until(Duration::from_secs(30), "not ready", || {
        get(port, "/health/ready").0 == 503
    });
    let body: Value = serde_json::from_str(&get(port, "/health/ready").1).unwrap();
    assert_eq!(body["checks"]["database"]["ok"], false, "{body}");
    assert!(!healthcheck(&addr));
    assert_eq!(
        get(port, "/health/live").0,
        200,
        "alive while the database is away"
    );
    proxy.restore();
    wait_until(Duration::from_secs(30), "ready again", || {
        get(port, "/health/ready").0 == 200
    });
    service.sigterm();
    assert_eq!(service.wait(Duration::from_secs(60)).0, Some(0));
}

/// Every `cdc_audit_*` metric the alert rules and the dashboard use is one the service exports.
fn assert_metrics_referenced_by_rules_and_dashboard_exist(metrics: &str) {
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/cdc-audit.json",
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("cdc_audit_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                metrics.contains(&name),
                "{file} uses {name}, which /metrics does not have"
            );
            rest = &rest[i + name.len()..];
        }
    }
    if have("promtool") {
        for (what, file) in [
            ("rules", "deploy/prometheus/alerts.yml"),
            ("config", "deploy/prometheus/prometheus.yml"),
        ] {
            run_ok(Command::new("promtool").args(["check", what, &repo(file)]));
        }
        // The alerts fire as their unit tests say: holes page or warn by their cause.
        run_ok(Command::new("promtool").args([
            "test",
            "rules",
            &repo("deploy/prometheus/alerts.test.yml"),
        ]));
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/cdc-audit.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| p.len() >= 10));
}

#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping() {
    let db = TestDb::new("notify");
    let kafka = Kafka::new("notify");
    let socket_path = std::env::temp_dir().join(format!("{}.sock", db.name));
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let service = Service::spawn(
        &kafka,
        &db,
        "g",
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
            ("CDC_AUDIT_HTTP_ADDR", "off"),
        ],
    );
    let mut heard: Vec<String> = Vec::new();
    let listen = |heard: &mut Vec<String>, until: &dyn Fn(&[String]) -> bool, limit: Duration| {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 512];
        while !until(heard) && Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                heard.push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        }
    };
    listen(
        &mut heard,
        &|h| h.iter().filter(|m| m.as_str() == "WATCHDOG=1").count() >= 3,
        Duration::from_secs(60),
    );
    assert!(heard[0].starts_with("READY=1"), "{heard:?}");
    assert_eq!(
        db.count("cdc_audit_migrations"),
        cdc_audit::migrate::MIGRATIONS.len() as i64,
        "READY comes after the migrations"
    );
    assert!(
        heard.iter().filter(|m| m.as_str() == "WATCHDOG=1").count() >= 3,
        "{heard:?}"
    );
    service.sigterm();
    listen(
        &mut heard,
        &|h| h.iter().any(|m| m == "STOPPING=1"),
        Duration::from_secs(30),
    );
    assert!(heard.iter().any(|m| m == "STOPPING=1"), "{heard:?}");
    assert_eq!(service.wait(Duration::from_secs(60)).0, Some(0));
    std::fs::remove_file(&socket_path).unwrap();
}

#[test]
fn json_logs_carry_correlation_fields_and_no_secrets() {
    let db = TestDb::new("jsonlog");
    let kafka = Kafka::new("jsonlog");
    let records = generate("jsonlog", 2, 200);
    kafka.produce(&records);
    // Trust authentication ignores the password, so it can be a secret the logs must not show.
    let with_password = db.url.replacen("postgres@", "postgres:hunter2secret@", 1);
    assert_ne!(
        with_password, db.url,
        "the test needs a URL with a user part"
    );
    let secret_db = db.alias(with_password);
    let service = Service::spawn(
        &kafka,
        &secret_db,
        "g",
        &[
            ("CDC_AUDIT_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,cdc_audit=debug"),
            ("CDC_AUDIT_HTTP_ADDR", "off"),
        ],
    );
    wait_until(Duration::from_secs(90), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    service.sigterm();
    let (code, log) = service.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("hunter2secret"), "the password leaked");
    let mut batch_lines = 0;
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for field in ["time", "level", "target", "message"] {
            assert!(v.get(field).is_some(), "{field} missing: {line}");
        }
        if v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("batch committed"))
        {
            assert!(
                v["batch_id"].is_number()
                    && v["topic"].is_string()
                    && v["partition"].is_number()
                    && v["offsets"].is_string(),
                "{line}"
            );
            batch_lines += 1;
        }
    }
    assert!(batch_lines > 0, "no batch lines in:\n{log}");
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        eprintln!("systemd-analyze is not installed: the units were not verified");
        return;
    }
    // The units name the installed binary; verify them against the one just built.
    let dir = std::env::temp_dir().join(format!("cdc-audit-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let units = [
        "cdc-audit.service",
        "cdc-audit-verify.service",
        "cdc-audit-verify.timer",
    ];
    for name in units {
        let unit = std::fs::read_to_string(repo(&format!("deploy/systemd/{name}"))).unwrap();
        let unit = unit
            .replace("/usr/local/bin/cdc-audit", env!("CARGO_BIN_EXE_cdc-audit"))
            .replace(
                "EnvironmentFile=/etc/cdc-audit/cdc-audit.env",
                "EnvironmentFile=-/etc/cdc-audit/cdc-audit.env",
            );
        std::fs::write(dir.join(name), unit).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.map(|u| dir.join(u)))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("cdc-audit"),
        "{stderr}"
    );
}

#[test]
fn docker_compose_file_is_valid() {
    if !have("docker-compose") {
        eprintln!("docker-compose is not installed: the compose file was not checked");
        return;
    }
    let out = Command::new("docker-compose")
        .args(["-f", &repo("docker-compose.yml"), "config", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped Alertmanager configuration is valid, and routes each shipped alert by its
/// severity: critical ones page (PagerDuty), warnings go to Slack.
#[test]
fn every_shipped_alert_is_routed_by_its_severity() {
    if !have("amtool") {
        return; // .ci/run installs it (Debian's prometheus-alertmanager)
    }
    let config = repo("deploy/prometheus/alertmanager.yml");
    run_ok(Command::new("amtool").args(["check-config", &config]));
    let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let mut alert = None;
    let mut routed = 0;
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alert = Some(name.to_string());
        }
        let Some(severity) = line
            .strip_prefix("labels: {severity: ")
            .and_then(|s| s.strip_suffix('}'))
        else {
            continue;
        };
        let name = alert.take().expect("labels after their alert");
        let receiver = run_ok(Command::new("amtool").args([
            "config",
            "routes",
            "test",
            &format!("--config.file={config}"),
            &format!("alertname={name}"),
            &format!("severity={severity}"),
            "instance=cdc-audit-0",
        ]));
        let expected = match severity {
            "critical" => "pagerduty",
            "warning" => "slack",
            other => panic!("{name} has severity {other}, which nothing routes"),
        };
        assert_eq!(receiver.trim(), expected, "{name} ({severity})");
        routed += 1;
    }
    assert!(routed >= 10, "only {routed} alerts found in alerts.yml");
}

/// The documents of a manifest under deploy/kubernetes, as JSON (PyYAML reads them).
fn manifest(file: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            &repo(&format!("deploy/kubernetes/{file}")),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The port of an `ip:port` setting.
fn port_of(addr: &Value) -> u64 {
    let addr = addr.as_str().unwrap();
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn the_kubernetes_manifests_build_validate_and_agree_with_what_the_binary_serves() {
    assert!(
        have("kubectl") && have("kubernetes-validate"),
        ".ci/run installs kubectl (Debian's kubernetes-client) and kubernetes-validate (PyPI)"
    );
    // kustomize assembles them; every built-in kind passes the Kubernetes schemas, strictly.
    let built = run_ok(Command::new("kubectl").args(["kustomize", &repo("deploy/kubernetes")]));
    let file = std::env::temp_dir().join(format!("cdc-audit-k8s-{}.yaml", std::process::id()));
    std::fs::write(&file, &built).unwrap();
    let mut files = vec![file.to_string_lossy().to_string()];
    files.push(repo("deploy/kubernetes/keda-scaledobject.yaml"));
    let report = run_ok(
        Command::new("kubernetes-validate")
            .arg("--strict")
            .args(&files),
    );
    let _ = std::fs::remove_file(&file);
    for kind in [
        "deployment/cdc-audit",
        "service/cdc-audit",
        "poddisruptionbudget/cdc-audit",
        "secret/cdc-audit-secrets",
        "configmap/cdc-audit-settings",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}")),
            "{report}"
        );
    }

    let deployment = &manifest("deployment.yaml")[0];
    let settings = &manifest("configmap.yaml")[0]["data"];
    let secret = &manifest("secret.yaml")[0]["stringData"];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let ports: std::collections::HashMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["metrics"], port_of(&settings["CDC_AUDIT_HTTP_ADDR"]));
    assert_eq!(ports["api"], port_of(&settings["CDC_AUDIT_API_ADDR"]));
    // A rolling update drains: the kill comes after the service's own shutdown timeout.
    let grace_ms = pod["terminationGracePeriodSeconds"].as_u64().unwrap() * 1000;
    let shutdown_ms: u64 = settings["CDC_AUDIT_SHUTDOWN_TIMEOUT_MS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        grace_ms > shutdown_ms,
        "{grace_ms} ms of grace, {shutdown_ms} ms to drain"
    );
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        0
    );
    // Every secret the pod names is in the Secret.
    for env in container["env"].as_array().unwrap() {
        if let Some(key) = env["valueFrom"]["secretKeyRef"]["key"].as_str() {
            assert!(secret.get(key).is_some(), "{key}");
        }
    }
    for item in pod["volumes"][0]["secret"]["items"].as_array().unwrap() {
        assert!(
            secret.get(item["key"].as_str().unwrap()).is_some(),
            "{item}"
        );
    }
    // The Service and the ServiceMonitor reach the pods' metrics port.
    let service = &manifest("service.yaml")[0];
    let monitor = &manifest("servicemonitor.yaml")[0];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the Service selects the pods");
    }
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    let service_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .expect("the ServiceMonitor's port is the Service's");
    assert_eq!(
        ports[service_port["targetPort"].as_str().unwrap()],
        ports["metrics"]
    );
    // KEDA scales this Deployment on this group's lag.
    let keda = &manifest("keda-scaledobject.yaml")[0]["spec"];
    assert_eq!(
        keda["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert_eq!(
        keda["triggers"][0]["metadata"]["consumerGroup"],
        settings["CDC_AUDIT_GROUP_ID"]
    );
    assert!(keda["maxReplicaCount"].as_u64().unwrap() >= 1);

    // The probes ask what the binary serves, on the port they name.
    let db = TestDb::new("k8s_probes");
    let kafka = Kafka::new("k8s-probes");
    let records = generate("k8s-probes", 2, 50);
    kafka.produce(&records);
    db.migrate();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _service = Service::spawn(&kafka, &db, "g", &[("CDC_AUDIT_HTTP_ADDR", &addr)]);
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(
            ports[get["port"].as_str().unwrap()],
            ports["metrics"],
            "{probe}"
        );
        let path = get["path"].as_str().unwrap();
        wait_until(
            Duration::from_secs(90),
            &format!("{probe} {path} is 200"),
            || self::get(port, path).0 == 200,
        );
    }
}

/// A delete event without a schema, in the source transaction `tx` (or none).
fn delete_event(table: &str, id: usize, tx: Option<&str>) -> cdc_audit::demo::Record {
    let transaction = match tx {
        Some(tx) => {
            serde_json::json!({"id": tx, "total_order": id + 1, "data_collection_order": id + 1})
        }
        None => Value::Null,
    };
    let value = serde_json::json!({
        "before": {"id": id, "note": "gone"},
        "after": null,
        "source": {"connector": "postgresql", "name": "inv", "db": "inv", "schema": "public",
                   "table": table, "ts_ms": 1_700_000_000_000i64, "txId": 777, "lsn": 1000 + id},
        "op": if table == "truncated" { "t" } else { "d" },
        "ts_ms": 1_700_000_000_100i64,
        "transaction": transaction,
    });
    cdc_audit::demo::Record {
        topic: String::new(),
        key: Some(serde_json::json!({"id": id}).to_string()),
        value: Some(value.to_string()),
    }
}

#[test]
fn a_bulk_delete_and_a_truncate_are_counted_logged_and_named_when_watched() {
    let db = TestDb::new("bulk");
    let kafka = Kafka::new("bulk");
    let topic = kafka.topics[0].clone();
    let mut records: Vec<cdc_audit::demo::Record> = Vec::new();
    // One transaction deletes 250 rows of a watched table, spread over the topic's partitions
    // by key; another deletes 50 of it; a third, 150 rows of a table not watched.
    records.extend((0..250).map(|i| delete_event("orders", i, Some("571:9000"))));
    records.extend((250..300).map(|i| delete_event("orders", i, Some("572:9100"))));
    records.extend((300..450).map(|i| delete_event("lines", i, Some("573:9200"))));
    records.push(delete_event("truncated", 999, None));
    for r in &mut records {
        r.topic = topic.clone();
    }
    kafka.produce(&records);
    db.migrate();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let service = Service::spawn(
        &kafka,
        &db,
        "g",
        &[
            ("CDC_AUDIT_HTTP_ADDR", &addr),
            ("CDC_AUDIT_BULK_THRESHOLD", "100"),
            ("CDC_AUDIT_BULK_WATCH_TABLES", "inv.public.orders"),
        ],
    );
    wait_until(Duration::from_secs(90), "every message committed", || {
        db.committed("g") == records.len() as i64
    });
    let (_, metrics) = get(port, "/metrics");
    let series = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("absent")
            .to_string()
    };
    assert_eq!(
        series(r#"cdc_audit_bulk_changes_total{operation="delete",table="inv.public.orders"}"#),
        "1",
        "one bulk transaction of the watched table: {metrics}"
    );
    assert_eq!(
        series(r#"cdc_audit_bulk_changes_total{operation="delete",table=""}"#),
        "1",
        "the other table's, unnamed"
    );
    assert_eq!(
        series(r#"cdc_audit_notable_changes_total{kind="truncate",table=""}"#),
        "1"
    );
    let log = service.log_text();
    assert!(
        log.contains(
            "bulk change: transaction 571:9000 deleted more than 100 rows of inv.public.orders"
        ),
        "{log}"
    );
    assert!(!log.contains("572:9100"), "50 rows are not a bulk change");
    assert!(
        log.contains("notable change: inv.public.truncated truncated"),
        "{log}"
    );
}

/// The writers' sessions ask the kernel to write the pages they evict as they go
/// (`backend_flush_after`), so that a checkpoint's closing fsyncs do not find them all dirty;
/// a value the database (like the server, the role or the URL) sets is left as it is.
#[test]
fn writer_sessions_flush_their_writes_unless_the_database_says_otherwise() {
    let db = TestDb::new("flush_after");
    let show = |client: &mut postgres::Client| -> String {
        client
            .query_one("SHOW backend_flush_after", &[])
            .unwrap()
            .get(0)
    };
    let source: String = db
        .client()
        .query_one(
            "SELECT source FROM pg_settings WHERE name = 'backend_flush_after'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        source, "default",
        "this test needs a server that leaves backend_flush_after at its default"
    );
    let writers = cdc_audit::sink::pool(&db.url, 1, None).unwrap();
    assert_eq!(
        show(&mut writers.get().unwrap()),
        cdc_audit::sink::FLUSH_AFTER
    );
    // Other sessions keep PostgreSQL's default.
    assert_eq!(show(&mut db.client()), "0");
    for set in ["0", "64kB"] {
        db.client()
            .batch_execute(&format!(
                "ALTER DATABASE {} SET backend_flush_after = '{set}'",
                db.name
            ))
            .unwrap();
        let writers = cdc_audit::sink::pool(&db.url, 1, None).unwrap();
        assert_eq!(show(&mut writers.get().unwrap()), set);
    }
}
