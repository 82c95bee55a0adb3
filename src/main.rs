//! The `cdc-audit` binary: parses the command line and wires the library together.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use cdc_audit::config::{self, Config, SETTINGS};
use cdc_audit::pipeline::{Control, Exit, Message};
use cdc_audit::{demo, events::Stats, migrate, rejections, service, sink};

#[derive(Parser)]
#[command(
    name = "cdc-audit",
    version,
    about = "Debezium change events from Kafka into an exactly-once PostgreSQL audit trail"
)]
struct Cli {
    /// Read settings from this env-file (KEY=VALUE lines); the environment wins over it.
    #[arg(
        long,
        global = true,
        env = "CDC_AUDIT_CONFIG_FILE",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: consume the topics and append one audit row per change, exactly once.
    Run,
    /// Apply the SQL migrations in schema/ to the database (idempotent).
    Migrate,
    /// Validate the settings and print the effective values, secrets masked; exit 1 on error.
    #[command(after_help = settings_help())]
    CheckConfig,
    /// Look at, replay or purge the messages stored in audit_rejections.
    Rejections {
        #[command(subcommand)]
        command: RejectionsCommand,
    },
    /// Ask a running instance whether it is ready (GET /health/ready); exit 0 if it is. For
    /// container health checks: no curl needed.
    Healthcheck {
        /// Defaults to CDC_AUDIT_HTTP_ADDR (0.0.0.0 becomes 127.0.0.1), else 127.0.0.1:9187.
        #[arg(long)]
        url: Option<String>,
    },
    /// Show what the service would store for one message (a Debezium value in a file, and
    /// optionally its key), under the current CDC_AUDIT_* column and table settings.
    Inspect {
        /// The message value (JSON); omit for a tombstone.
        value: Option<PathBuf>,
        /// The message key (JSON).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The topic the message came from.
        #[arg(long, default_value = "inspect")]
        topic: String,
    },
    /// Run the real pipeline on an in-process Kafka with generated Debezium traffic, into a fresh
    /// database; needs only a reachable PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres).
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum RejectionsCommand {
    /// List stored rejections, oldest first.
    List {
        #[command(flatten)]
        select: Select,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one rejection whole: coordinates, reason, error, key, headers and value.
    Show { id: i64 },
    /// Run rejections through the current transform and settings (after a fix or a settings
    /// change) and write, exactly once, what now becomes an audit row.
    Replay {
        #[command(flatten)]
        select: Select,
        /// Say what would happen, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete rejections (needs --yes).
    Purge {
        #[command(flatten)]
        select: Select,
        /// Every rejection.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        yes: bool,
    },
}

/// Which rejections: all given filters apply.
#[derive(clap::Args)]
struct Select {
    /// Rejection id (repeatable).
    #[arg(long = "id")]
    ids: Vec<i64>,
    /// not_json, not_a_change_event, unknown_operation, invalid_field, invalid_key, database_refused
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    topic: Option<String>,
    /// Rejected before this time, e.g. 2026-01-31 or "2026-01-31 12:00+00".
    #[arg(long)]
    before: Option<String>,
}

impl Select {
    fn selection(&self) -> rejections::Selection {
        rejections::Selection {
            ids: self.ids.clone(),
            reason: self.reason.clone(),
            topic: self.topic.clone(),
            before: self.before.clone(),
        }
    }
}

fn rejections_command(cli: &Cli, command: &RejectionsCommand) -> Result<ExitCode, String> {
    let raw = raw_settings(cli)?;
    let url = raw
        .get("CDC_AUDIT_DATABASE_URL")
        .or_else(|| raw.get("DATABASE_URL"))
        .ok_or(
            "CDC_AUDIT_DATABASE_URL is not set: set it (or DATABASE_URL) to the audit database",
        )?;
    let ca_file = raw
        .get("CDC_AUDIT_DATABASE_CA_FILE")
        .map(std::path::Path::new);
    let mut client = sink::connect(url, ca_file)?;
    match command {
        RejectionsCommand::List { select, limit } => print!(
            "{}",
            rejections::list(&mut client, &select.selection(), *limit)?
        ),
        RejectionsCommand::Show { id } => print!("{}", rejections::show(&mut client, *id)?),
        RejectionsCommand::Replay { select, dry_run } => {
            let rules = config::rules_from_settings(&raw).map_err(|e| e.to_string())?;
            let done = rejections::replay(&mut client, &select.selection(), &rules, *dry_run)?;
            println!(
                "{}{} written, {} skipped, {} still rejected",
                if *dry_run { "dry run: " } else { "" },
                done.written,
                done.skipped,
                done.still_rejected
            );
        }
        RejectionsCommand::Purge { select, all, yes } => {
            if !yes {
                return Err("purge deletes rejections for good: add --yes".into());
            }
            println!(
                "{} rejections deleted",
                rejections::purge(&mut client, &select.selection(), *all)?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn settings_help() -> String {
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

/// The environment over the env-file, before validation.
fn raw_settings(cli: &Cli) -> Result<std::collections::BTreeMap<String, String>, String> {
    config::gather(std::env::vars(), cli.config.as_deref()).map_err(|e| e.to_string())
}

fn load(cli: &Cli) -> Result<Config, String> {
    let raw = raw_settings(cli)?;
    Config::from_settings(&raw).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run => load(&cli).and_then(run),
        Command::Migrate => load(&cli).and_then(|c| {
            let pool = sink::pool(&c.database_url, 1, c.database_ca_file.as_deref())?;
            let mut conn = pool
                .get()
                .map_err(|e| format!("cannot connect to the database: {e}"))?;
            let applied = migrate::migrate(&mut conn)
                .map_err(|e| format!("migration failed: {}", sink::with_causes(&e)))?;
            println!(
                "{} migrations applied ({} known)",
                applied.len(),
                migrate::MIGRATIONS.len()
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::CheckConfig => load(&cli).map(|c| {
            for (name, value) in c.describe() {
                println!("{name}={value}");
            }
            ExitCode::SUCCESS
        }),
        Command::Rejections { command } => rejections_command(&cli, command),
        Command::Healthcheck { url } => healthcheck(&cli, url.as_deref()),
        Command::Inspect { value, key, topic } => {
            inspect(&cli, value.as_deref(), key.as_deref(), topic)
        }
        Command::Demo(args) => demo::run(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("cdc-audit: {e}");
        ExitCode::FAILURE
    })
}

fn healthcheck(cli: &Cli, url: Option<&str>) -> Result<ExitCode, String> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let raw = raw_settings(cli)?;
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

fn init_logging() {
    let env = env_logger::Env::default().default_filter_or("info");
    let mut builder = env_logger::Builder::from_env(env);
    if config::log_format(std::env::var("CDC_AUDIT_LOG_FORMAT").ok().as_deref())
        == Ok(config::LogFormat::Json)
    {
        builder.format(|buf, record| {
            use std::io::Write;
            let mut line = serde_json::Map::new();
            let now_us = cdc_audit::events::now_ms() * 1000;
            line.insert(
                "time".into(),
                cdc_audit::transform::decode::iso_micros(now_us).into(),
            );
            line.insert("level".into(), record.level().as_str().into());
            line.insert("target".into(), record.target().into());
            line.insert("message".into(), record.args().to_string().into());
            let _ = record.key_values().visit(&mut JsonFields(&mut line));
            writeln!(buf, "{}", serde_json::Value::Object(line))
        });
    }
    builder.init();
}

/// Correlation fields of a log record (batch id, topic, partition, offsets) as JSON members.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let json = match value.to_i64() {
            Some(n) => n.into(),
            None => value.to_string().into(),
        };
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
}

fn inspect(
    cli: &Cli,
    value: Option<&Path>,
    key: Option<&Path>,
    topic: &str,
) -> Result<ExitCode, String> {
    let raw = raw_settings(cli)?;
    let rules = config::rules_from_settings(&raw).map_err(|e| e.to_string())?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let msg = Message {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: key.map(read).transpose()?,
        payload: value.map(read).transpose()?,
        headers: Vec::new(),
    };
    let described = cdc_audit::transform::describe(&msg, &rules);
    println!(
        "{}",
        serde_json::to_string_pretty(&described).map_err(|e| e.to_string())?
    );
    Ok(ExitCode::SUCCESS)
}

fn run(config: Config) -> Result<ExitCode, String> {
    let control = Arc::new(Control::default());
    service::install_signal_handlers(&control)?;
    match service::run(config, control, Arc::new(Stats::new()))? {
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
