//! Settings: read from the environment and an optional env-file, then validated into a [`Config`]
//! before any thread starts. Every error names the setting, the value and what is allowed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

pub mod rules;

use rules::{Action, Glob, Rules};

/// Prefix of every setting; `CDC_AUDIT_KAFKA_<PROPERTY>` passes a librdkafka property through.
pub const PREFIX: &str = "CDC_AUDIT_";
const KAFKA_PREFIX: &str = "CDC_AUDIT_KAFKA_";

/// One known setting: its name, default (if any) and a line for `--help` and the README.
pub struct Setting {
    pub name: &'static str,
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// Every setting the service reads, in the order `check-config` prints them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "CDC_AUDIT_BOOTSTRAP_SERVERS",
        default: None,
        help: "Kafka bootstrap servers, host:port[,host:port...]",
    },
    Setting {
        name: "CDC_AUDIT_TOPICS",
        default: None,
        help: "comma-separated topics to audit (or CDC_AUDIT_TOPIC_REGEX)",
    },
    Setting {
        name: "CDC_AUDIT_TOPIC_REGEX",
        default: None,
        help: "regular expression of topics to audit, e.g. ^dbserver1\\.inventory\\..*",
    },
    Setting {
        name: "CDC_AUDIT_GROUP_ID",
        default: Some(DEFAULT_GROUP_ID),
        help: "Kafka consumer group; instances with one group id share the partitions",
    },
    Setting {
        name: "CDC_AUDIT_DATABASE_URL",
        default: None,
        help: "PostgreSQL sink, URL or key=value form (falls back to DATABASE_URL)",
    },
    Setting {
        name: "CDC_AUDIT_DATABASE_CA_FILE",
        default: None,
        help: "PEM file of CAs: verify the server's certificate and host name (with sslmode=require)",
    },
    Setting {
        name: "CDC_AUDIT_BATCH_SIZE",
        default: Some("2000"),
        help: "messages per batch (one transaction per partition batch), 1..=100000",
    },
    Setting {
        name: "CDC_AUDIT_BATCH_BYTES",
        default: Some("1048576"),
        help: "a batch is full at this many bytes of messages (payload, key, headers) even with fewer than CDC_AUDIT_BATCH_SIZE; bounds memory with large events, 1024..=268435456",
    },
    Setting {
        name: "CDC_AUDIT_BATCH_LINGER_MS",
        default: Some("100"),
        help: "longest a partly filled batch waits for a free writer when its partition has nothing on the way (while its partition's last batch is written, it waits for that one), 1..=60000",
    },
    Setting {
        name: "CDC_AUDIT_BATCH_IDLE_LINGER_MS",
        default: Some("20"),
        help: "how long a partly filled batch waits when a writer is free, 0..=CDC_AUDIT_BATCH_LINGER_MS",
    },
    Setting {
        name: "CDC_AUDIT_WRITERS",
        default: Some("2"),
        help: "writer threads, each with its own connection, 1..=64",
    },
    Setting {
        name: "CDC_AUDIT_POOL_SIZE",
        default: None,
        help: "PostgreSQL connections in the pool, at least writers + 1 (default writers + 2)",
    },
    Setting {
        name: "CDC_AUDIT_CHANNEL_CAPACITY",
        default: Some("8"),
        help: "batches queued between stages, per channel, 1..=1024",
    },
    Setting {
        name: "CDC_AUDIT_SHUTDOWN_TIMEOUT_MS",
        default: Some("30000"),
        help: "on SIGTERM/SIGINT, how long in-flight batches may take to commit, 100..=600000",
    },
    Setting {
        name: "CDC_AUDIT_REBALANCE_TIMEOUT_MS",
        default: Some("10000"),
        help: "on revoke, how long to wait for batches being written, 0..=300000",
    },
    Setting {
        name: "CDC_AUDIT_MIGRATE",
        default: Some("true"),
        help: "apply schema/ migrations at start of `run` (true or false)",
    },
    Setting {
        name: "CDC_AUDIT_HTTP_ADDR",
        default: Some("0.0.0.0:9187"),
        help: "address of /health/live, /health/ready, /metrics and /status; `off` to disable",
    },
    Setting {
        name: "CDC_AUDIT_API_ADDR",
        default: Some("off"),
        help: "ip:port of the read API (/api/v1/...), a listener of its own; `off` to disable",
    },
    Setting {
        name: "CDC_AUDIT_API_TOKEN",
        default: None,
        help: "bearer token every API request must carry, at least 16 characters (or CDC_AUDIT_API_TOKEN_FILE)",
    },
    Setting {
        name: "CDC_AUDIT_API_TOKEN_FILE",
        default: None,
        help: "file holding the API's bearer token",
    },
    Setting {
        name: "CDC_AUDIT_API_DATABASE_URL",
        default: None,
        help: "the API's own connections, best as the cdc_audit_reader role (default: the database URL)",
    },
    Setting {
        name: "CDC_AUDIT_API_STATEMENT_TIMEOUT_MS",
        default: Some("10000"),
        help: "longest one API query may run, 100..=600000",
    },
    Setting {
        name: "CDC_AUDIT_READY_MAX_LAG",
        default: None,
        help: "not ready while the total consumer lag is over this many messages",
    },
    Setting {
        name: "CDC_AUDIT_STALL_TIMEOUT_MS",
        default: Some("120000"),
        help: "a writer inside one database call longer than this is stalled (not ready, no watchdog ping)",
    },
    Setting {
        name: "CDC_AUDIT_LOG_FORMAT",
        default: Some("text"),
        help: "text (readable) or json (one object per line, for log shippers); levels via RUST_LOG",
    },
    Setting {
        name: "CDC_AUDIT_INCLUDE_TABLES",
        default: None,
        help: "audit only these tables: comma-separated patterns of db.schema.table (* and ?)",
    },
    Setting {
        name: "CDC_AUDIT_EXCLUDE_TABLES",
        default: None,
        help: "do not audit these tables: comma-separated patterns of db.schema.table",
    },
    Setting {
        name: "CDC_AUDIT_COLUMN_RULES",
        default: None,
        help: "per column: <table pattern>.<column>=drop|redact|hash, comma-separated",
    },
    Setting {
        name: "CDC_AUDIT_HASH_KEY",
        default: None,
        help: "secret key of the `hash` column rule (HMAC-SHA256), at least 16 bytes",
    },
    Setting {
        name: "CDC_AUDIT_CHANGE_USER_COLUMN",
        default: None,
        help: "row column whose value is stored as change_user, e.g. updated_by",
    },
    Setting {
        name: "CDC_AUDIT_CONTEXT_PREFIXES",
        default: Some(rules::DEFAULT_CONTEXT_PREFIX),
        help: "logical decoding message prefixes (PostgreSQL) and statement comment markers (MySQL) that carry the application's context, comma-separated, or `none`",
    },
    Setting {
        name: "CDC_AUDIT_ACTOR_FIELD",
        default: Some(rules::DEFAULT_ACTOR_FIELD),
        help: "context field that names who made a change",
    },
    Setting {
        name: "CDC_AUDIT_PARTITIONS_AHEAD",
        default: Some("3"),
        help: "months of audit_logging partitions the service keeps made ahead (0: none, when pg_partman or a person makes them)",
    },
    Setting {
        name: "CDC_AUDIT_BULK_THRESHOLD",
        default: Some("1000"),
        help: "a source transaction updating or deleting more rows of one table than this is a bulk change (counted, logged, alerted on); 0: off",
    },
    Setting {
        name: "CDC_AUDIT_BULK_WATCH_TABLES",
        default: None,
        help: "tables named in the bulk and notable change metrics: comma-separated patterns of db.schema.table (* and ?); others are counted unnamed",
    },
    Setting {
        name: "CDC_AUDIT_RETENTION",
        default: Some("off"),
        help: "how long audit_logging keeps a month, in days (`400d`): older months are archived to CDC_AUDIT_ARCHIVE_DIR, then dropped; or `off`",
    },
    Setting {
        name: "CDC_AUDIT_ARCHIVE_DIR",
        default: None,
        help: "where expired months are archived, one file each (needs CDC_AUDIT_RETENTION)",
    },
    Setting {
        name: "CDC_AUDIT_SCHEMA_REGISTRY_URL",
        default: None,
        help: "a Confluent-compatible schema registry (Confluent, Apicurio, Redpanda), http:// or https://, for registry-framed Avro; credentials in the URL are read as CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH",
    },
    Setting {
        name: "CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH",
        default: None,
        help: "user:password for the registry's HTTP basic auth (never logged)",
    },
    Setting {
        name: "CDC_AUDIT_SCHEMA_REGISTRY_CA_FILE",
        default: None,
        help: "PEM file of the CA that signed the registry's certificate (default: the system's)",
    },
    Setting {
        name: "CDC_AUDIT_SCHEMA_REGISTRY_CERT_FILE",
        default: None,
        help: "PEM certificate (chain) the service presents to the registry (mutual TLS; with CDC_AUDIT_SCHEMA_REGISTRY_KEY_FILE)",
    },
    Setting {
        name: "CDC_AUDIT_SCHEMA_REGISTRY_KEY_FILE",
        default: None,
        help: "PEM private key of CDC_AUDIT_SCHEMA_REGISTRY_CERT_FILE",
    },
    Setting {
        name: "CDC_AUDIT_SCHEMA_REGISTRY_TIMEOUT_MS",
        default: Some("5000"),
        help: "connect and read timeout of one registry request, 100..=120000",
    },
    Setting {
        name: "CDC_AUDIT_SCHEMA_REGISTRY_CACHE",
        default: Some("1000"),
        help: "how many schemas are kept by id, 1..=100000",
    },
    Setting {
        name: "CDC_AUDIT_SIGNING_KEY_FILE",
        default: None,
        help: "Ed25519 private key (PEM, `openssl genpkey -algorithm ed25519`) that signs digests of the trail's hash chains",
    },
    Setting {
        name: "CDC_AUDIT_DIGEST_DIR",
        default: None,
        help: "where the service writes a signed digest every CDC_AUDIT_DIGEST_INTERVAL_S (needs CDC_AUDIT_SIGNING_KEY_FILE)",
    },
    Setting {
        name: "CDC_AUDIT_DIGEST_INTERVAL_S",
        default: Some("3600"),
        help: "seconds between digests: to CDC_AUDIT_DIGEST_DIR, and a log line (with a signing key)",
    },
];

/// A setting that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Missing {
        setting: String,
        allowed: String,
    },
    Invalid {
        setting: String,
        value: String,
        allowed: String,
    },
    Unknown {
        setting: String,
    },
    Conflict {
        message: String,
    },
    File {
        path: String,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing { setting, allowed } => {
                write!(f, "{setting} is not set: {allowed}")
            }
            ConfigError::Invalid {
                setting,
                value,
                allowed,
            } => {
                write!(f, "{setting}={value:?} is not allowed: {allowed}")
            }
            ConfigError::Unknown { setting } => write!(
                f,
                "{setting} is not a setting of cdc-audit (see `cdc-audit check-config --help`; \
                 librdkafka properties go in {KAFKA_PREFIX}<PROPERTY>)"
            ),
            ConfigError::Conflict { message } => f.write_str(message),
            ConfigError::File { path, message } => write!(f, "config file {path}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which topics the consumer subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topics {
    List(Vec<String>),
    /// librdkafka subscribes to a pattern when the name starts with `^`.
    Regex(String),
}

impl Topics {
    pub fn subscription(&self) -> Vec<String> {
        match self {
            Topics::List(list) => list.clone(),
            Topics::Regex(pattern) if pattern.starts_with('^') => vec![pattern.clone()],
            Topics::Regex(pattern) => vec![format!("^{pattern}")],
        }
    }
}

/// The validated settings of one service instance.
#[derive(Debug, Clone)]
pub struct Config {
    pub bootstrap_servers: String,
    pub topics: Topics,
    pub group_id: String,
    pub database_url: String,
    pub database_ca_file: Option<std::path::PathBuf>,
    pub batch_size: usize,
    /// A batch is full at this many bytes of messages, whatever its count: every buffer is
    /// sized in batches, so this is what bounds memory when events are large.
    pub batch_bytes: usize,
    pub batch_linger: Duration,
    /// A partly filled batch is handed on after this long when a writer is free and its
    /// partition has nothing on the way (group commit).
    pub batch_idle_linger: Duration,
    pub writers: usize,
    pub pool_size: u32,
    pub channel_capacity: usize,
    pub shutdown_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub migrate: bool,
    /// librdkafka properties from `CDC_AUDIT_KAFKA_*`, lower-cased with `_` turned into `.`.
    pub kafka: BTreeMap<String, String>,
    /// Which tables and columns are audited, and how.
    pub rules: Rules,
    pub http_addr: Option<std::net::SocketAddr>,
    pub ready_max_lag: Option<i64>,
    pub stall_timeout: Duration,
    pub log_format: LogFormat,
    /// The read API, when `CDC_AUDIT_API_ADDR` is set.
    pub api: Option<ApiSettings>,
    /// Signed digests of the chains' heads: `None` without `CDC_AUDIT_SIGNING_KEY_FILE`.
    pub digest: Option<DigestSettings>,
    /// Months of `audit_logging` partitions to keep made ahead; 0: none.
    pub partitions_ahead: i32,
    /// How long a month is kept, and where it is archived after.
    pub retention: Option<Retention>,
    /// The schema registry, when `CDC_AUDIT_SCHEMA_REGISTRY_URL` is set.
    pub registry: Option<RegistrySettings>,
    /// More rows than this of one table updated or deleted by one transaction is a bulk change; 0: off.
    pub bulk_threshold: u64,
    /// Tables the suspicious-change metrics name.
    pub bulk_watch: Vec<Glob>,
}

/// Retention of `audit_logging` months: kept `days`, then archived into `dir` and dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub days: u32,
    pub dir: std::path::PathBuf,
}

/// `CDC_AUDIT_RETENTION` and `CDC_AUDIT_ARCHIVE_DIR`.
pub fn retention_from(
    retention: Option<&str>,
    dir: Option<&str>,
) -> Result<Option<Retention>, ConfigError> {
    let days = match retention.unwrap_or("off") {
        "off" => {
            return match dir {
                Some(d) => Err(invalid(
                    "CDC_AUDIT_ARCHIVE_DIR",
                    d,
                    "unset, unless CDC_AUDIT_RETENTION says how long the trail keeps a month",
                )),
                None => Ok(None),
            }
        }
        v => v
            .strip_suffix('d')
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..=36_500).contains(n))
            .ok_or_else(|| invalid("CDC_AUDIT_RETENTION", v, "days, 1d to 36500d, or off"))?,
    };
    let dir = dir.ok_or_else(|| ConfigError::Missing {
        setting: "CDC_AUDIT_ARCHIVE_DIR".into(),
        allowed:
            "CDC_AUDIT_RETENTION is set: an existing directory for the archives of expired months"
                .into(),
    })?;
    let path = std::path::PathBuf::from(dir);
    if !path.is_dir() {
        return Err(invalid(
            "CDC_AUDIT_ARCHIVE_DIR",
            dir,
            "an existing directory the archives of expired months go into",
        ));
    }
    Ok(Some(Retention { days, dir: path }))
}

/// Signed digests of the trail's chains, taken by the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestSettings {
    pub key_file: std::path::PathBuf,
    /// Where the periodic digests go, one file each; `None`: only the log line.
    pub dir: Option<std::path::PathBuf>,
    pub interval: Duration,
}

/// The read API's settings: its listener, token and own connections.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiSettings {
    pub addr: std::net::SocketAddr,
    pub token: String,
    pub database_url: String,
    pub database_ca_file: Option<std::path::PathBuf>,
    pub statement_timeout: Duration,
    /// Signs `GET /api/v1/digest`; without it that endpoint says digests are not configured.
    pub signing_key_file: Option<std::path::PathBuf>,
}

impl fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSettings")
            .field("addr", &self.addr)
            .field("token", &"****")
            .field("database_url", &mask_url(&self.database_url))
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// Where registry-framed messages' schemas come from.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Without credentials: `http(s)://host[:port][/path]`.
    pub url: String,
    /// `user:password`, from the URL or `CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH`.
    pub basic_auth: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key, for mutual TLS.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub timeout: Duration,
    pub cache: usize,
}

impl fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("url", &self.url)
            .field("basic_auth", &self.basic_auth.as_ref().map(|_| "****"))
            .field("ca_file", &self.ca_file)
            .field(
                "client_cert",
                &self.client_cert.as_ref().map(|(cert, _)| cert),
            )
            .field("timeout", &self.timeout)
            .field("cache", &self.cache)
            .finish()
    }
}

/// Only the registry's settings (the CLI's `inspect` and `rejections replay` read them too):
/// `None` without `CDC_AUDIT_SCHEMA_REGISTRY_URL`.
pub fn registry_from_settings(
    raw: &BTreeMap<String, String>,
) -> Result<Option<RegistrySettings>, ConfigError> {
    let get = |k: &str| raw.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(url) = get("CDC_AUDIT_SCHEMA_REGISTRY_URL") else {
        for dependent in [
            "CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH",
            "CDC_AUDIT_SCHEMA_REGISTRY_CA_FILE",
            "CDC_AUDIT_SCHEMA_REGISTRY_CERT_FILE",
            "CDC_AUDIT_SCHEMA_REGISTRY_KEY_FILE",
        ] {
            if get(dependent).is_some() {
                return Err(ConfigError::Conflict {
                    message: format!("{dependent} is set but CDC_AUDIT_SCHEMA_REGISTRY_URL is not: set the registry's URL too"),
                });
            }
        }
        return Ok(None);
    };
    let allowed = "http://host[:port][/path] or https://..., e.g. http://registry:8081";
    let masked = mask_url(url);
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(s, _)| matches!(*s, "http" | "https"))
        .ok_or_else(|| invalid("CDC_AUDIT_SCHEMA_REGISTRY_URL", &masked, allowed))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if host.is_empty() || host.contains(['?', '#', ' ']) || path.contains(['?', '#']) {
        return Err(invalid("CDC_AUDIT_SCHEMA_REGISTRY_URL", &masked, allowed));
    }
    let basic_auth = match (userinfo, get("CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict {
                message: "CDC_AUDIT_SCHEMA_REGISTRY_URL holds credentials and CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH is set: set one of them".into(),
            })
        }
        (Some(u), None) | (None, Some(u)) => {
            if !u.contains(':') {
                return Err(invalid(
                    "CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH",
                    "****",
                    "user:password",
                ));
            }
            Some(u.to_string())
        }
        (None, None) => None,
    };
    let pem = |name: &str| match get(name).map(std::path::PathBuf::from) {
        Some(path) if !path.is_file() => Err(invalid(
            name,
            &path.display().to_string(),
            "a readable PEM file",
        )),
        other => Ok(other),
    };
    let ca_file = pem("CDC_AUDIT_SCHEMA_REGISTRY_CA_FILE")?;
    let client_cert = match (
        pem("CDC_AUDIT_SCHEMA_REGISTRY_CERT_FILE")?,
        pem("CDC_AUDIT_SCHEMA_REGISTRY_KEY_FILE")?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Conflict {
                message: "CDC_AUDIT_SCHEMA_REGISTRY_CERT_FILE and CDC_AUDIT_SCHEMA_REGISTRY_KEY_FILE go together: set both, or neither".into(),
            })
        }
    };
    if client_cert.is_some() && scheme != "https" {
        return Err(invalid(
            "CDC_AUDIT_SCHEMA_REGISTRY_URL",
            &masked,
            "https://... when a client certificate is set",
        ));
    }
    let number =
        |name: &str, default: u64, min: u64, max: u64| whole(name, get(name), default, min..=max);
    Ok(Some(RegistrySettings {
        url: format!("{scheme}://{host}{}", path.trim_end_matches('/')),
        basic_auth,
        ca_file,
        client_cert,
        timeout: Duration::from_millis(number(
            "CDC_AUDIT_SCHEMA_REGISTRY_TIMEOUT_MS",
            5000,
            100,
            120_000,
        )?),
        cache: number("CDC_AUDIT_SCHEMA_REGISTRY_CACHE", 1000, 1, 100_000)? as usize,
    }))
}

/// The consumer group when `CDC_AUDIT_GROUP_ID` is not set.
pub const DEFAULT_GROUP_ID: &str = "cdc-audit";

/// `CDC_AUDIT_GROUP_ID` (trimmed), or its default if it is not set or empty: for the tools that
/// need the group without the service's settings (`migrate --import-positions-from`).
pub fn group_id_from_settings(raw: &BTreeMap<String, String>) -> &str {
    raw.get("CDC_AUDIT_GROUP_ID")
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .unwrap_or(DEFAULT_GROUP_ID)
}

/// Refuses a `CDC_AUDIT_*` name that is not a setting (a typo would otherwise be ignored).
pub fn check_names(raw: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for key in raw.keys() {
        let known = key == "DATABASE_URL"
            || key == "CDC_AUDIT_CONFIG_FILE"
            || key.starts_with(KAFKA_PREFIX)
            || SETTINGS.iter().any(|s| s.name == key);
        if !known {
            return Err(ConfigError::Unknown {
                setting: key.clone(),
            });
        }
    }
    Ok(())
}

/// Only the read API's settings (for `cdc-audit serve`, which needs no broker): `None` when
/// `CDC_AUDIT_API_ADDR` is off.
pub fn api_from_settings(
    raw: &BTreeMap<String, String>,
) -> Result<Option<ApiSettings>, ConfigError> {
    let get = |name: &str| raw.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let addr = match get("CDC_AUDIT_API_ADDR").unwrap_or("off") {
        "off" => return Ok(None),
        v => v.parse().map_err(|_| {
            invalid(
                "CDC_AUDIT_API_ADDR",
                v,
                "ip:port, e.g. 127.0.0.1:9188, or off",
            )
        })?,
    };
    let token = match (get("CDC_AUDIT_API_TOKEN"), get("CDC_AUDIT_API_TOKEN_FILE")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict {
                message: "CDC_AUDIT_API_TOKEN and CDC_AUDIT_API_TOKEN_FILE are both set: set one of them".into(),
            })
        }
        (None, None) => {
            return Err(ConfigError::Missing {
                setting: "CDC_AUDIT_API_TOKEN".into(),
                allowed: "CDC_AUDIT_API_ADDR is set: the API needs a bearer token of at least 16 characters (or CDC_AUDIT_API_TOKEN_FILE)".into(),
            })
        }
        (Some(token), None) => token.to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| invalid("CDC_AUDIT_API_TOKEN_FILE", path, &format!("a readable file ({e})")))?
            .trim()
            .to_string(),
    };
    if token.chars().count() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "CDC_AUDIT_API_TOKEN",
            "****",
            "a token of at least 16 characters, without spaces",
        ));
    }
    let database_url = get("CDC_AUDIT_API_DATABASE_URL")
        .or_else(|| get("CDC_AUDIT_DATABASE_URL"))
        .or_else(|| get("DATABASE_URL"))
        .ok_or_else(|| ConfigError::Missing {
            setting: "CDC_AUDIT_API_DATABASE_URL".into(),
            allowed: "set it (or CDC_AUDIT_DATABASE_URL) to the audit database, best as the cdc_audit_reader role".into(),
        })?
        .to_string();
    let timeout = get("CDC_AUDIT_API_STATEMENT_TIMEOUT_MS").unwrap_or("10000");
    let statement_timeout = match timeout.parse::<u64>() {
        Ok(ms) if (100..=600_000).contains(&ms) => Duration::from_millis(ms),
        _ => {
            return Err(invalid(
                "CDC_AUDIT_API_STATEMENT_TIMEOUT_MS",
                timeout,
                "milliseconds, 100 to 600000",
            ))
        }
    };
    Ok(Some(ApiSettings {
        addr,
        token,
        database_url,
        database_ca_file: get("CDC_AUDIT_DATABASE_CA_FILE").map(std::path::PathBuf::from),
        statement_timeout,
        signing_key_file: get("CDC_AUDIT_SIGNING_KEY_FILE").map(std::path::PathBuf::from),
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `CDC_AUDIT_LOG_FORMAT`, read on its own: logging starts before the rest is validated.
pub fn log_format(value: Option<&str>) -> Result<LogFormat, ConfigError> {
    match value.map(str::trim) {
        None | Some("") | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(invalid("CDC_AUDIT_LOG_FORMAT", other, "text or json")),
    }
}

/// Properties the service sets itself; passing them through would break exactly-once or be ambiguous.
const OWNED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "positions are committed with the rows in PostgreSQL; auto-commit stays off",
    ),
    (
        "enable.auto.offset.store",
        "the service stores offsets itself",
    ),
    ("group.id", "use CDC_AUDIT_GROUP_ID"),
    ("bootstrap.servers", "use CDC_AUDIT_BOOTSTRAP_SERVERS"),
    ("enable.partition.eof", "the service sets it"),
];

/// Raw settings: the environment over an optional env-file (`KEY=VALUE` lines, as systemd's
/// `EnvironmentFile=`), restricted to `CDC_AUDIT_*` and `DATABASE_URL`.
pub fn gather(
    env: impl IntoIterator<Item = (String, String)>,
    file: Option<&Path>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut raw = BTreeMap::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err(ConfigError::File {
                    path: path.display().to_string(),
                    message: format!("line {}: expected KEY=VALUE, found {line:?}", n + 1),
                });
            };
            raw.insert(key.trim().to_string(), unquote(value.trim()).to_string());
        }
    }
    for (key, value) in env {
        if key.starts_with(PREFIX) || key == "DATABASE_URL" {
            raw.insert(key, value);
        }
    }
    Ok(raw)
}

fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

impl Config {
    /// Validates raw settings. `CDC_AUDIT_CONFIG_FILE` is accepted as the file's own name.
    pub fn from_settings(raw: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        check_names(raw)?;
        let get = |name: &str| raw.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

        let bootstrap_servers = get("CDC_AUDIT_BOOTSTRAP_SERVERS")
            .ok_or_else(|| ConfigError::Missing {
                setting: "CDC_AUDIT_BOOTSTRAP_SERVERS".into(),
                allowed: "set it to the Kafka brokers, host:port[,host:port...]".into(),
            })?
            .to_string();
        for server in bootstrap_servers.split(',') {
            let ok = server
                .trim()
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid(
                    "CDC_AUDIT_BOOTSTRAP_SERVERS",
                    &bootstrap_servers,
                    "a comma-separated list of host:port",
                ));
            }
        }

        let topics = match (get("CDC_AUDIT_TOPICS"), get("CDC_AUDIT_TOPIC_REGEX")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict {
                    message:
                        "CDC_AUDIT_TOPICS and CDC_AUDIT_TOPIC_REGEX are both set: set one of them"
                            .into(),
                })
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    setting: "CDC_AUDIT_TOPICS".into(),
                    allowed:
                        "set it to a comma-separated list of topics, or set CDC_AUDIT_TOPIC_REGEX"
                            .into(),
                })
            }
            (Some(list), None) => {
                let topics: Vec<String> = list.split(',').map(|t| t.trim().to_string()).collect();
                if let Some(bad) = topics.iter().find(|t| !valid_topic(t)) {
                    return Err(invalid(
                        "CDC_AUDIT_TOPICS",
                        list,
                        &format!(
                            "topic names of 1 to 249 letters, digits, '.', '_' or '-' ({bad:?} is not one)"
                        ),
                    ));
                }
                Topics::List(topics)
            }
            (None, Some(pattern)) => Topics::Regex(pattern.to_string()),
        };

        let group_id = group_id_from_settings(raw).to_string();
        let database_url = get("CDC_AUDIT_DATABASE_URL")
            .or_else(|| get("DATABASE_URL"))
            .ok_or_else(|| ConfigError::Missing {
                setting: "CDC_AUDIT_DATABASE_URL".into(),
                allowed: "set it (or DATABASE_URL) to the sink, e.g. postgres://user@host/db"
                    .into(),
            })?
            .to_string();
        if database_url.contains("sslmode=verify") {
            return Err(invalid(
                "CDC_AUDIT_DATABASE_URL",
                &mask_url(&database_url),
                "sslmode disable, prefer or require; to verify the server, use sslmode=require with CDC_AUDIT_DATABASE_CA_FILE",
            ));
        }
        if let Err(e) = database_url.parse::<postgres::Config>() {
            return Err(invalid(
                "CDC_AUDIT_DATABASE_URL",
                &mask_url(&database_url),
                &format!("a PostgreSQL connection string ({e})"),
            ));
        }

        let number = |name: &str, default: u64, min: u64, max: u64| {
            whole(name, get(name), default, min..=max)
        };
        let batch_size = number("CDC_AUDIT_BATCH_SIZE", 2000, 1, 100_000)? as usize;
        let batch_bytes = number("CDC_AUDIT_BATCH_BYTES", 1 << 20, 1 << 10, 1 << 28)? as usize;
        let batch_linger =
            Duration::from_millis(number("CDC_AUDIT_BATCH_LINGER_MS", 100, 1, 60_000)?);
        let linger_ms = batch_linger.as_millis() as u64;
        let batch_idle_linger = Duration::from_millis(number(
            "CDC_AUDIT_BATCH_IDLE_LINGER_MS",
            20.min(linger_ms),
            0,
            linger_ms,
        )?);
        let writers = number("CDC_AUDIT_WRITERS", 2, 1, 64)? as usize;
        let pool_size = number("CDC_AUDIT_POOL_SIZE", writers as u64 + 2, 2, 256)? as u32;
        if (pool_size as usize) < writers + 1 {
            return Err(invalid(
                "CDC_AUDIT_POOL_SIZE",
                &pool_size.to_string(),
                &format!(
                    "at least CDC_AUDIT_WRITERS + 1 = {} (one connection per writer and one for assignments)",
                    writers + 1
                ),
            ));
        }
        let channel_capacity = number("CDC_AUDIT_CHANNEL_CAPACITY", 8, 1, 1024)? as usize;
        let shutdown_timeout = Duration::from_millis(number(
            "CDC_AUDIT_SHUTDOWN_TIMEOUT_MS",
            30_000,
            100,
            600_000,
        )?);
        let rebalance_timeout = Duration::from_millis(number(
            "CDC_AUDIT_REBALANCE_TIMEOUT_MS",
            10_000,
            0,
            300_000,
        )?);
        let migrate = match get("CDC_AUDIT_MIGRATE").map(|v| v.to_ascii_lowercase()) {
            None => true,
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => true,
            Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => false,
            Some(v) => return Err(invalid("CDC_AUDIT_MIGRATE", &v, "true or false")),
        };

        let mut kafka = BTreeMap::new();
        for (key, value) in raw.range(KAFKA_PREFIX.to_string()..) {
            let Some(suffix) = key.strip_prefix(KAFKA_PREFIX) else {
                break;
            };
            let property = suffix.to_ascii_lowercase().replace('_', ".");
            if property.is_empty() {
                return Err(ConfigError::Unknown {
                    setting: key.clone(),
                });
            }
            if let Some((_, why)) = OWNED_KAFKA_PROPERTIES.iter().find(|(p, _)| *p == property) {
                return Err(ConfigError::Conflict {
                    message: format!(
                        "{key}={value:?} sets {property}, which cannot be overridden: {why}"
                    ),
                });
            }
            kafka.insert(property, value.clone());
        }
        // Validate the passthrough with librdkafka itself, so a typo fails here, not in a thread.
        let mut client = rdkafka::ClientConfig::new();
        for (k, v) in &kafka {
            client.set(k, v);
        }
        if let Err(e) = client.create_native_config() {
            return Err(ConfigError::Conflict {
                message: format!("a CDC_AUDIT_KAFKA_* setting was refused by librdkafka: {e}"),
            });
        }

        let rules = rules(&get)?;
        let database_ca_file = get("CDC_AUDIT_DATABASE_CA_FILE").map(std::path::PathBuf::from);
        if let Some(path) = &database_ca_file {
            if !path.is_file() {
                return Err(invalid(
                    "CDC_AUDIT_DATABASE_CA_FILE",
                    &path.display().to_string(),
                    "a readable PEM file",
                ));
            }
        }
        let http_addr = match get("CDC_AUDIT_HTTP_ADDR").unwrap_or("0.0.0.0:9187") {
            "off" => None,
            v => Some(v.parse().map_err(|_| {
                invalid(
                    "CDC_AUDIT_HTTP_ADDR",
                    v,
                    "ip:port, e.g. 0.0.0.0:9187, or off",
                )
            })?),
        };
        let ready_max_lag = match get("CDC_AUDIT_READY_MAX_LAG") {
            None => None,
            Some(_) => Some(number("CDC_AUDIT_READY_MAX_LAG", 0, 0, i64::MAX as u64)? as i64),
        };
        let stall_timeout = Duration::from_millis(number(
            "CDC_AUDIT_STALL_TIMEOUT_MS",
            120_000,
            1_000,
            3_600_000,
        )?);
        let log_format = log_format(get("CDC_AUDIT_LOG_FORMAT"))?;
        let api = api_from_settings(raw)?;
        if let (Some(api), Some(http)) = (&api, http_addr) {
            if api.addr == http {
                return Err(ConfigError::Conflict {
                    message: format!("CDC_AUDIT_API_ADDR and CDC_AUDIT_HTTP_ADDR are both {http}: the read API needs a listener of its own"),
                });
            }
        }

        let partitions_ahead = number("CDC_AUDIT_PARTITIONS_AHEAD", 3, 0, 120)? as i32;
        let retention = retention_from(get("CDC_AUDIT_RETENTION"), get("CDC_AUDIT_ARCHIVE_DIR"))?;
        let bulk_threshold = number("CDC_AUDIT_BULK_THRESHOLD", 1000, 0, 1_000_000_000)?;
        let bulk_watch = table_globs(&get, "CDC_AUDIT_BULK_WATCH_TABLES")?;
        let digest = match get("CDC_AUDIT_SIGNING_KEY_FILE") {
            None => {
                if let Some(dir) = get("CDC_AUDIT_DIGEST_DIR") {
                    return Err(invalid(
                        "CDC_AUDIT_DIGEST_DIR",
                        dir,
                        "unset, unless CDC_AUDIT_SIGNING_KEY_FILE names the key that signs digests",
                    ));
                }
                None
            }
            Some(key) => {
                let dir = get("CDC_AUDIT_DIGEST_DIR").map(std::path::PathBuf::from);
                if let Some(d) = dir.as_ref().filter(|d| !d.is_dir()) {
                    return Err(invalid(
                        "CDC_AUDIT_DIGEST_DIR",
                        &d.display().to_string(),
                        "an existing directory the service can write digests into",
                    ));
                }
                Some(DigestSettings {
                    key_file: key.into(),
                    dir,
                    interval: Duration::from_secs(number(
                        "CDC_AUDIT_DIGEST_INTERVAL_S",
                        3600,
                        10,
                        7 * 86_400,
                    )?),
                })
            }
        };

        Ok(Config {
            bootstrap_servers,
            topics,
            group_id,
            database_url,
            database_ca_file,
            batch_size,
            batch_bytes,
            batch_linger,
            batch_idle_linger,
            writers,
            pool_size,
            channel_capacity,
            shutdown_timeout,
            rebalance_timeout,
            migrate,
            kafka,
            rules,
            http_addr,
            ready_max_lag,
            stall_timeout,
            log_format,
            api,
            digest,
            partitions_ahead,
            retention,
            registry: registry_from_settings(raw)?,
            bulk_threshold,
            bulk_watch,
        })
    }

    /// The effective settings as `NAME=value` lines, secrets masked.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut out = vec![
            (
                "CDC_AUDIT_BOOTSTRAP_SERVERS".to_string(),
                self.bootstrap_servers.clone(),
            ),
            match &self.topics {
                Topics::List(list) => ("CDC_AUDIT_TOPICS".to_string(), list.join(",")),
                Topics::Regex(p) => ("CDC_AUDIT_TOPIC_REGEX".to_string(), p.clone()),
            },
            ("CDC_AUDIT_GROUP_ID".into(), self.group_id.clone()),
            (
                "CDC_AUDIT_DATABASE_URL".into(),
                mask_url(&self.database_url),
            ),
            ("CDC_AUDIT_BATCH_SIZE".into(), self.batch_size.to_string()),
            ("CDC_AUDIT_BATCH_BYTES".into(), self.batch_bytes.to_string()),
            (
                "CDC_AUDIT_BATCH_LINGER_MS".into(),
                self.batch_linger.as_millis().to_string(),
            ),
            (
                "CDC_AUDIT_BATCH_IDLE_LINGER_MS".into(),
                self.batch_idle_linger.as_millis().to_string(),
            ),
            ("CDC_AUDIT_WRITERS".into(), self.writers.to_string()),
            ("CDC_AUDIT_POOL_SIZE".into(), self.pool_size.to_string()),
            (
                "CDC_AUDIT_CHANNEL_CAPACITY".into(),
                self.channel_capacity.to_string(),
            ),
            (
                "CDC_AUDIT_SHUTDOWN_TIMEOUT_MS".into(),
                self.shutdown_timeout.as_millis().to_string(),
            ),
            (
                "CDC_AUDIT_REBALANCE_TIMEOUT_MS".into(),
                self.rebalance_timeout.as_millis().to_string(),
            ),
            ("CDC_AUDIT_MIGRATE".into(), self.migrate.to_string()),
            (
                "CDC_AUDIT_HTTP_ADDR".into(),
                self.http_addr.map_or("off".into(), |a| a.to_string()),
            ),
            (
                "CDC_AUDIT_API_ADDR".into(),
                self.api
                    .as_ref()
                    .map_or("off".into(), |a| a.addr.to_string()),
            ),
            (
                "CDC_AUDIT_STALL_TIMEOUT_MS".into(),
                self.stall_timeout.as_millis().to_string(),
            ),
            (
                "CDC_AUDIT_LOG_FORMAT".into(),
                if self.log_format == LogFormat::Json {
                    "json"
                } else {
                    "text"
                }
                .into(),
            ),
        ];
        if let Some(lag) = self.ready_max_lag {
            out.push(("CDC_AUDIT_READY_MAX_LAG".into(), lag.to_string()));
        }
        let r = &self.rules;
        let globs = |g: &[Glob]| g.iter().map(Glob::as_str).collect::<Vec<_>>().join(",");
        let api = self.api.as_ref();
        let registry = self.registry.as_ref();
        let optional = [
            (
                "CDC_AUDIT_API_TOKEN",
                api.map_or(String::new(), |_| "****".into()),
            ),
            (
                "CDC_AUDIT_API_DATABASE_URL",
                api.map_or(String::new(), |a| mask_url(&a.database_url)),
            ),
            (
                "CDC_AUDIT_API_STATEMENT_TIMEOUT_MS",
                api.map_or(String::new(), |a| {
                    a.statement_timeout.as_millis().to_string()
                }),
            ),
            (
                "CDC_AUDIT_DATABASE_CA_FILE",
                self.database_ca_file
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
            ),
            (
                "CDC_AUDIT_PARTITIONS_AHEAD",
                self.partitions_ahead.to_string(),
            ),
            ("CDC_AUDIT_BULK_THRESHOLD", self.bulk_threshold.to_string()),
            ("CDC_AUDIT_BULK_WATCH_TABLES", globs(&self.bulk_watch)),
            (
                "CDC_AUDIT_RETENTION",
                self.retention
                    .as_ref()
                    .map_or("off".into(), |r| format!("{}d", r.days)),
            ),
            (
                "CDC_AUDIT_ARCHIVE_DIR",
                self.retention
                    .as_ref()
                    .map_or(String::new(), |r| r.dir.display().to_string()),
            ),
            (
                "CDC_AUDIT_SIGNING_KEY_FILE",
                self.digest
                    .as_ref()
                    .map_or(String::new(), |d| d.key_file.display().to_string()),
            ),
            (
                "CDC_AUDIT_DIGEST_DIR",
                self.digest
                    .as_ref()
                    .and_then(|d| d.dir.as_ref())
                    .map_or(String::new(), |p| p.display().to_string()),
            ),
            (
                "CDC_AUDIT_DIGEST_INTERVAL_S",
                self.digest
                    .as_ref()
                    .map_or(String::new(), |d| d.interval.as_secs().to_string()),
            ),
            (
                "CDC_AUDIT_SCHEMA_REGISTRY_URL",
                registry.map_or(String::new(), |g| g.url.clone()),
            ),
            (
                "CDC_AUDIT_SCHEMA_REGISTRY_BASIC_AUTH",
                registry
                    .and_then(|g| g.basic_auth.as_ref())
                    .map_or(String::new(), |_| "****".into()),
            ),
            (
                "CDC_AUDIT_SCHEMA_REGISTRY_CA_FILE",
                registry
                    .and_then(|g| g.ca_file.as_ref())
                    .map_or(String::new(), |p| p.display().to_string()),
            ),
            (
                "CDC_AUDIT_SCHEMA_REGISTRY_CERT_FILE",
                registry
                    .and_then(|g| g.client_cert.as_ref())
                    .map_or(String::new(), |(c, _)| c.display().to_string()),
            ),
            (
                "CDC_AUDIT_SCHEMA_REGISTRY_KEY_FILE",
                registry
                    .and_then(|g| g.client_cert.as_ref())
                    .map_or(String::new(), |(_, k)| k.display().to_string()),
            ),
            (
                "CDC_AUDIT_SCHEMA_REGISTRY_TIMEOUT_MS",
                registry.map_or(String::new(), |g| g.timeout.as_millis().to_string()),
            ),
            (
                "CDC_AUDIT_SCHEMA_REGISTRY_CACHE",
                registry.map_or(String::new(), |g| g.cache.to_string()),
            ),
            ("CDC_AUDIT_INCLUDE_TABLES", globs(&r.include)),
            ("CDC_AUDIT_EXCLUDE_TABLES", globs(&r.exclude)),
            (
                "CDC_AUDIT_COLUMN_RULES",
                r.columns
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "CDC_AUDIT_HASH_KEY",
                if r.hash_key.is_some() {
                    "****".into()
                } else {
                    String::new()
                },
            ),
            (
                "CDC_AUDIT_CHANGE_USER_COLUMN",
                r.change_user_column.clone().unwrap_or_default(),
            ),
            (
                "CDC_AUDIT_CONTEXT_PREFIXES",
                if r.context_prefixes.is_empty() {
                    "none".into()
                } else {
                    r.context_prefixes.join(",")
                },
            ),
            ("CDC_AUDIT_ACTOR_FIELD", r.actor_field.clone()),
        ];
        out.extend(
            optional
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v)),
        );
        for (k, v) in &self.kafka {
            let name = format!("{KAFKA_PREFIX}{}", k.to_ascii_uppercase().replace('.', "_"));
            let shown = if is_secret_property(k) {
                "****".to_string()
            } else {
                v.clone()
            };
            out.push((name, shown));
        }
        out
    }
}

/// Only the transform's settings (for `cdc-audit inspect`, which needs no broker or database).
pub fn rules_from_settings(raw: &BTreeMap<String, String>) -> Result<Rules, ConfigError> {
    rules(&|name: &str| raw.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()))
}

/// A setting of comma-separated `db.schema.table` patterns.
fn table_globs<'a>(
    get: &impl Fn(&str) -> Option<&'a str>,
    name: &str,
) -> Result<Vec<Glob>, ConfigError> {
    let Some(v) = get(name) else {
        return Ok(Vec::new());
    };
    let patterns: Vec<&str> = v.split(',').map(str::trim).collect();
    if patterns
        .iter()
        .any(|p| p.is_empty() || p.contains(char::is_whitespace))
    {
        return Err(invalid(
            name,
            v,
            "comma-separated patterns of db.schema.table, such as inventory.public.* (no spaces)",
        ));
    }
    Ok(patterns.into_iter().map(Glob::new).collect())
}

fn rules<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<Rules, ConfigError> {
    let globs = |name: &str| table_globs(get, name);
    let columns = match get("CDC_AUDIT_COLUMN_RULES") {
        None => Vec::new(),
        Some(v) => {
            Rules::parse_column_rules(v).map_err(|e| invalid("CDC_AUDIT_COLUMN_RULES", v, &e))?
        }
    };
    let hash_key = get("CDC_AUDIT_HASH_KEY").map(|k| k.as_bytes().to_vec());
    if hash_key.as_ref().is_some_and(|k| k.len() < 16) {
        return Err(invalid(
            "CDC_AUDIT_HASH_KEY",
            "****",
            "a secret of at least 16 bytes",
        ));
    }
    if hash_key.is_none() && columns.iter().any(|r| r.action == Action::Hash) {
        return Err(ConfigError::Missing {
            setting: "CDC_AUDIT_HASH_KEY".into(),
            allowed: "CDC_AUDIT_COLUMN_RULES has a `hash` rule, which needs a secret key of at least 16 bytes".into(),
        });
    }
    let name_like = |v: &str| {
        !v.is_empty() && v.len() <= 64 && !v.contains(|c: char| c.is_whitespace() || c == ',')
    };
    let context_prefixes = match get("CDC_AUDIT_CONTEXT_PREFIXES") {
        None => vec![rules::DEFAULT_CONTEXT_PREFIX.to_string()],
        Some("none") => Vec::new(),
        Some(v) => {
            let prefixes: Vec<&str> = v.split(',').map(str::trim).collect();
            if !prefixes.iter().all(|p| name_like(p) && !p.contains("*/")) {
                return Err(invalid(
                    "CDC_AUDIT_CONTEXT_PREFIXES",
                    v,
                    "comma-separated prefixes of up to 64 characters without spaces, such as audit,app_context; or none",
                ));
            }
            prefixes.into_iter().map(str::to_string).collect()
        }
    };
    let actor_field = match get("CDC_AUDIT_ACTOR_FIELD") {
        None => rules::DEFAULT_ACTOR_FIELD.to_string(),
        Some(v) if name_like(v) => v.to_string(),
        Some(v) => {
            return Err(invalid(
                "CDC_AUDIT_ACTOR_FIELD",
                v,
                "one field name of up to 64 characters without spaces or commas, such as user",
            ))
        }
    };
    Ok(Rules {
        include: globs("CDC_AUDIT_INCLUDE_TABLES")?,
        exclude: globs("CDC_AUDIT_EXCLUDE_TABLES")?,
        columns,
        change_user_column: get("CDC_AUDIT_CHANGE_USER_COLUMN").map(str::to_string),
        hash_key,
        context_prefixes,
        actor_field,
    })
}

/// A whole-number setting: `default` when unset.
fn whole(
    name: &str,
    value: Option<&str>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                invalid(
                    name,
                    v,
                    &format!("a whole number from {} to {}", range.start(), range.end()),
                )
            }),
    }
}

fn invalid(setting: &str, value: &str, allowed: &str) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        value: value.into(),
        allowed: allowed.into(),
    }
}

fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_secret_property(property: &str) -> bool {
    [
        "password",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "ssl.keystore",
    ]
    .iter()
    .any(|s| property.contains(s))
}

/// Hides the password of a connection string, in URL or key=value form.
pub fn mask_url(url: &str) -> String {
    if let Some(rest) = url.split_once("://") {
        let (scheme, rest) = rest;
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let masked_authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:****@{host}"),
                None => authority.to_string(),
            },
            None => authority.to_string(),
        };
        let tail = mask_password_param(tail);
        return format!("{scheme}://{masked_authority}{tail}");
    }
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mask_password_param(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// The settings table for `check-config --help`.
pub fn settings_help() -> String {
    let mut out = String::from("Settings (environment variables):\n");
    for s in SETTINGS {
        let default = s
            .default
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        out.push_str(&format!("  {:<32} {}{default}\n", s.name, s.help));
    }
    out.push_str("  CDC_AUDIT_KAFKA_<PROPERTY>       any librdkafka property, e.g. CDC_AUDIT_KAFKA_MAX_POLL_INTERVAL_MS=6000\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BTreeMap<String, String> {
        [
            ("CDC_AUDIT_BOOTSTRAP_SERVERS", "localhost:9092"),
            ("CDC_AUDIT_TOPICS", "a.b.c,a.b.d"),
            ("DATABASE_URL", "postgres://u:pw@localhost/db"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut raw = base();
        for (k, v) in extra {
            raw.insert(k.to_string(), v.to_string());
        }
        Config::from_settings(&raw)
    }

    #[test]
    fn defaults_are_valid_and_database_url_falls_back() {
        let c = with(&[]).unwrap();
        assert_eq!(c.batch_size, 2000);
        assert_eq!(c.batch_bytes, 1 << 20);
        assert_eq!(c.batch_linger, Duration::from_millis(100));
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.database_url, "postgres://u:pw@localhost/db");
        assert_eq!(c.topics, Topics::List(vec!["a.b.c".into(), "a.b.d".into()]));
    }

    #[test]
    fn idle_linger_is_bounded_by_the_linger() {
        assert_eq!(
            with(&[]).unwrap().batch_idle_linger,
            Duration::from_millis(20)
        );
        let short = with(&[("CDC_AUDIT_BATCH_LINGER_MS", "5")]).unwrap();
        assert_eq!(short.batch_idle_linger, Duration::from_millis(5));
        let e = with(&[("CDC_AUDIT_BATCH_IDLE_LINGER_MS", "300")]).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("CDC_AUDIT_BATCH_IDLE_LINGER_MS")
                && e.contains("300")
                && e.contains("0 to 100"),
            "{e}"
        );
    }

    #[test]
    fn kafka_passthrough_maps_names() {
        let c = with(&[("CDC_AUDIT_KAFKA_MAX_POLL_INTERVAL_MS", "6000")]).unwrap();
        assert_eq!(
            c.kafka.get("max.poll.interval.ms").map(String::as_str),
            Some("6000")
        );
    }

    #[test]
    fn kafka_passthrough_refused_by_librdkafka_is_an_error() {
        let e = with(&[("CDC_AUDIT_KAFKA_NO_SUCH_PROPERTY", "1")]).unwrap_err();
        assert!(e.to_string().contains("no.such.property"), "{e}");
    }

    #[test]
    fn auto_commit_cannot_be_enabled() {
        let e = with(&[("CDC_AUDIT_KAFKA_ENABLE_AUTO_COMMIT", "true")]).unwrap_err();
        assert!(e.to_string().contains("enable.auto.commit"), "{e}");
    }

    #[test]
    fn secrets_are_masked() {
        let c = with(&[("CDC_AUDIT_KAFKA_SASL_PASSWORD", "hunter2")]).unwrap();
        let text = format!("{:?}", c.describe());
        assert!(
            !text.contains("hunter2") && !text.contains(":pw@"),
            "{text}"
        );
        assert_eq!(
            mask_url("host=x password=abc user=u"),
            "host=x password=**** user=u"
        );
        assert_eq!(
            mask_url("postgres://h/db?password=abc"),
            "postgres://h/db?password=****"
        );
    }

    #[test]
    fn env_file_is_read_and_env_wins() {
        let dir = std::env::temp_dir().join(format!("cdc-audit-cfg-{}", std::process::id()));
        std::fs::write(
            &dir,
            "# comment\nCDC_AUDIT_BATCH_SIZE=\"50\"\nCDC_AUDIT_WRITERS=3\nOTHER=x\n",
        )
        .unwrap();
        let env = vec![("CDC_AUDIT_WRITERS".to_string(), "5".to_string())];
        let raw = gather(env, Some(&dir)).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            raw.get("CDC_AUDIT_BATCH_SIZE").map(String::as_str),
            Some("50")
        );
        assert_eq!(raw.get("CDC_AUDIT_WRITERS").map(String::as_str), Some("5"));
    }
}
