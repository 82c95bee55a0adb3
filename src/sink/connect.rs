//! Connecting to PostgreSQL: the writers' pool and single connections for the tools, with TLS
//! as the URL's `sslmode` says and timeouts that make a dead connection fail, not hang.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use r2d2_postgres::PostgresConnectionManager;

use super::error::with_causes;

pub type Pool = r2d2::Pool<PostgresConnectionManager<MakeTlsConnector>>;

/// TLS for PostgreSQL connections, used as the URL's `sslmode` says (`disable`, `prefer`,
/// `require`). Like libpq, `require` encrypts without checking the server's certificate unless
/// a CA file is given (`CDC_AUDIT_DATABASE_CA_FILE`); then the certificate and host name are verified.
pub fn tls(ca_file: Option<&Path>) -> Result<MakeTlsConnector, String> {
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(|e| format!("TLS: {e}"))?;
    match ca_file {
        Some(path) => builder
            .set_ca_file(path)
            .map_err(|e| format!("CDC_AUDIT_DATABASE_CA_FILE={}: {e}", path.display()))?,
        None => builder.set_verify(SslVerifyMode::NONE),
    }
    Ok(MakeTlsConnector::new(builder.build()))
}

/// Connection settings with defaults that make a dead connection fail, not hang a writer;
/// the URL can override each of them.
fn connection_config(url: &str) -> Result<postgres::Config, String> {
    let mut config: postgres::Config = url.parse().map_err(|e| format!("database URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(60));
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(30));
    }
    Ok(config)
}

/// Builds the connection pool; connections are opened lazily, so a database that is down at
/// start does not stop the service. Each connection writes as [`write_through`] says.
pub fn pool(url: &str, size: u32, ca_file: Option<&Path>) -> Result<Pool, String> {
    let manager = PostgresConnectionManager::new(connection_config(url)?, tls(ca_file)?);
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(5))
        .connection_customizer(Box::new(WriteThrough))
        .build_unchecked(manager))
}

/// What a writing session sets `backend_flush_after` to when nothing else does.
pub const FLUSH_AFTER: &str = "256kB";

/// Makes the session ask the kernel to write the pages it evicts from PostgreSQL's buffers
/// once it has written [`FLUSH_AFTER`] of them (`backend_flush_after`), unless the server, the
/// database, the role or the URL's `options` set that (`pg_settings.source` is then not
/// `default`; PostgreSQL's default is 0, never). Without it, an append-only trail leaves its
/// pages dirty in the page cache until a checkpoint's closing fsyncs write them all at once
/// (630 to 740 MB in one second on the bench machine), which stalls every commit on the server.
/// A server that refuses the setting is logged and written to as it is.
pub fn write_through(client: &mut postgres::Client) {
    let set = client.batch_execute(&format!(
        "SELECT set_config('backend_flush_after', '{FLUSH_AFTER}', false) FROM pg_settings \
         WHERE name = 'backend_flush_after' AND source = 'default'"
    ));
    if let Err(e) = set {
        log::warn!(
            "backend_flush_after not set ({}): the kernel writes this session's pages when it will",
            with_causes(&e)
        );
    }
}

/// Sets up each connection of the writers' pool once, when it is opened.
#[derive(Debug)]
struct WriteThrough;

impl r2d2::CustomizeConnection<postgres::Client, postgres::Error> for WriteThrough {
    fn on_acquire(&self, client: &mut postgres::Client) -> Result<(), postgres::Error> {
        write_through(client);
        Ok(())
    }
}

/// A pool for reading the trail (the read API): its sessions are read-only, answer in UTC, and
/// stop any statement after `statement_timeout`.
pub fn reader_pool(
    url: &str,
    size: u32,
    ca_file: Option<&Path>,
    statement_timeout: Duration,
) -> Result<Pool, String> {
    let manager = PostgresConnectionManager::new(connection_config(url)?, tls(ca_file)?);
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(5))
        .connection_customizer(Box::new(ReadOnly(statement_timeout)))
        .build_unchecked(manager))
}

/// Sets up each connection of a reader pool once, when it is opened.
#[derive(Debug)]
struct ReadOnly(Duration);

impl r2d2::CustomizeConnection<postgres::Client, postgres::Error> for ReadOnly {
    fn on_acquire(&self, client: &mut postgres::Client) -> Result<(), postgres::Error> {
        client.batch_execute(&format!(
            "SET default_transaction_read_only = on; SET TIME ZONE 'UTC'; \
             SET statement_timeout = {}",
            self.0.as_millis()
        ))
    }
}

/// One connection outside the pool (tools, the demo), with the same TLS and timeouts.
pub fn connect(url: &str, ca_file: Option<&Path>) -> Result<postgres::Client, String> {
    connection_config(url)?.connect(tls(ca_file)?).map_err(|e| {
        format!(
            "cannot connect to {}: {}",
            crate::config::mask_url(url),
            with_causes(&e)
        )
    })
}

/// One connection to the audit database the raw settings name (`CDC_AUDIT_DATABASE_URL`, else
/// `DATABASE_URL`, with `CDC_AUDIT_DATABASE_CA_FILE`): what the command-line tools read with.
pub fn connect_with_settings(raw: &BTreeMap<String, String>) -> Result<postgres::Client, String> {
    let url = raw
        .get("CDC_AUDIT_DATABASE_URL")
        .or_else(|| raw.get("DATABASE_URL"))
        .ok_or(
            "CDC_AUDIT_DATABASE_URL is not set: set it (or DATABASE_URL) to the audit database",
        )?;
    let ca_file = raw.get("CDC_AUDIT_DATABASE_CA_FILE").map(Path::new);
    connect(url, ca_file)
}
