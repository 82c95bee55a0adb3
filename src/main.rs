//! The `cdc-audit` binary: parses the command line and wires the library together.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use cdc_audit::config::{self, Config, SETTINGS};
use cdc_audit::pipeline::{Control, Exit, Message};
use cdc_audit::{demo, events::Stats, migrate, service, sink};

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

fn load(cli: &Cli) -> Result<Config, String> {
    let raw = config::gather(std::env::vars(), cli.config.as_deref()).map_err(|e| e.to_string())?;
    Config::from_settings(&raw).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run => load(&cli).and_then(run),
        Command::Migrate => load(&cli).and_then(|c| {
            let pool = sink::pool(&c.database_url, 1)?;
            let mut conn = pool
                .get()
                .map_err(|e| format!("cannot connect to the database: {e}"))?;
            let applied =
                migrate::migrate(&mut conn).map_err(|e| format!("migration failed: {e}"))?;
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

fn inspect(
    cli: &Cli,
    value: Option<&Path>,
    key: Option<&Path>,
    topic: &str,
) -> Result<ExitCode, String> {
    let raw = config::gather(std::env::vars(), cli.config.as_deref()).map_err(|e| e.to_string())?;
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
