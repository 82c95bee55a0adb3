//! TLS to PostgreSQL as `sslmode` says, certificate verification with a CA file, TLS/SASL
//! settings for Kafka accepted by the OpenSSL-enabled librdkafka.

use std::process::Command;

use cdc_audit::sink;

use crate::util::TestDb;

fn with_sslmode(url: &str, mode: &str) -> String {
    if url.contains("://") {
        format!(
            "{url}{}sslmode={mode}",
            if url.contains('?') { '&' } else { '?' }
        )
    } else {
        format!("{url} sslmode={mode}")
    }
}

fn uses_tls(client: &mut postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn connections_use_tls_as_sslmode_says_and_verify_with_a_ca_file() {
    let db = TestDb::new("tls");
    let ssl_on: String = db.client().query_one("SHOW ssl", &[]).unwrap().get(0);
    if ssl_on != "on" {
        eprintln!("this PostgreSQL server has ssl off: TLS was not exercised");
        return;
    }
    let pool = sink::pool(&with_sslmode(&db.url, "require"), 1, None).unwrap();
    assert!(
        uses_tls(&mut pool.get().unwrap()),
        "sslmode=require encrypts"
    );
    let mut plain = sink::connect(&with_sslmode(&db.url, "disable"), None).unwrap();
    assert!(!uses_tls(&mut plain), "sslmode=disable does not");

    // With a CA file the server's certificate is verified: the server's self-signed certificate
    // is not for 127.0.0.1, so the connection must be refused.
    let cert: String = db
        .client()
        .query_one("SHOW ssl_cert_file", &[])
        .unwrap()
        .get(0);
    if std::path::Path::new(&cert).is_file() {
        let refused = sink::connect(
            &with_sslmode(&db.url, "require"),
            Some(std::path::Path::new(&cert)),
        );
        let err = refused
            .err()
            .expect("verification refuses a certificate for another host");
        assert!(
            err.contains("certificate") || err.contains("verify"),
            "{err}"
        );
    }
}

fn check_config(env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc-audit"));
    cmd.arg("check-config")
        .env_clear()
        .envs(crate::util::coverage_env());
    for (k, v) in [
        ("CDC_AUDIT_BOOTSTRAP_SERVERS", "kafka:9093"),
        ("CDC_AUDIT_TOPICS", "t"),
        ("DATABASE_URL", "postgres://a@h/db"),
    ] {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn kafka_tls_and_sasl_scram_settings_are_supported_and_secrets_masked() {
    let out = check_config(&[
        ("CDC_AUDIT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("CDC_AUDIT_KAFKA_SASL_MECHANISMS", "SCRAM-SHA-512"),
        ("CDC_AUDIT_KAFKA_SASL_USERNAME", "audit"),
        ("CDC_AUDIT_KAFKA_SASL_PASSWORD", "kafka-secret"),
        (
            "CDC_AUDIT_KAFKA_SSL_CA_LOCATION",
            "/etc/ssl/certs/ca-certificates.crt",
        ),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("CDC_AUDIT_KAFKA_SECURITY_PROTOCOL=SASL_SSL")
            && !stdout.contains("kafka-secret"),
        "{stdout}"
    );
}

#[test]
fn libpq_verify_modes_are_explained() {
    let out = check_config(&[("DATABASE_URL", "postgres://a@h/db?sslmode=verify-full")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("CDC_AUDIT_DATABASE_CA_FILE"), "{stderr}");
}
