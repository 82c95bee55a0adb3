//! The `cdc-audit` binary: parses the command line and dispatches to the module each command
//! drives; nothing else happens here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cdc_audit::config::{self, Config};
use cdc_audit::query::cli as query;
use cdc_audit::{demo, http, integrity, logging, migrate, rejections, service, transform};

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
    Migrate {
        /// Then take the positions of the consumer cdc-audit replaces from its table (topic,
        /// partition, offset: one row per processed message) into audit_positions, for
        /// CDC_AUDIT_GROUP_ID: the next offset of each partition is one past its last.
        #[arg(long, value_name = "TABLE")]
        import_positions_from: Option<String>,
    },
    /// Validate the settings and print the effective values, secrets masked; exit 1 on error.
    #[command(after_help = config::settings_help())]
    CheckConfig,
    /// A record's changes in source order: when, what, who (the application's user), the
    /// columns each update changed, and the transaction.
    History(query::HistoryArgs),
    /// A table's rows as the trail says they were at a moment (or one row, with --key), and
    /// from when that reconstruction is reliable.
    AsOf(query::AsOfArgs),
    /// Everything one source transaction did, with its context and whether all of it is here;
    /// or, with --context FIELD=VALUE, the transactions whose context has that field.
    Transaction(query::TransactionArgs),
    /// The tables the trail holds row changes of.
    Tables,
    /// Serve the read API (CDC_AUDIT_API_ADDR, CDC_AUDIT_API_TOKEN) alone, without consuming:
    /// for a reader host that should not run the pipeline.
    Serve,
    /// Recompute the trail's hash chains from the stored rows and report the first broken link
    /// of each: exit 0 only if every chain is intact, 3 if one is broken.
    Verify(integrity::VerifyArgs),
    /// Print the chains' heads signed with CDC_AUDIT_SIGNING_KEY_FILE (Ed25519): keep it outside
    /// the database, and `verify --digest` it later.
    Digest(integrity::DigestArgs),
    /// Replace one data subject's values with a marker in every row of their record (images,
    /// key, change detail, context), recorded with who, when and why in the chain.
    Erase(integrity::EraseArgs),
    /// Archive the months of audit_logging that end before a time to files, record them in the
    /// trail, and drop them (what CDC_AUDIT_RETENTION does by itself).
    Archive(integrity::ArchiveArgs),
    /// Look at, replay or purge the messages stored in audit_rejections.
    Rejections {
        #[command(subcommand)]
        command: rejections::Command,
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

/// The environment over the env-file, every name a setting's, before validation.
fn raw_settings(cli: &Cli) -> Result<BTreeMap<String, String>, String> {
    let raw = config::gather(std::env::vars(), cli.config.as_deref()).map_err(|e| e.to_string())?;
    config::check_names(&raw).map_err(|e| e.to_string())?;
    Ok(raw)
}

/// The validated settings.
fn load(cli: &Cli) -> Result<Config, String> {
    Config::from_settings(&raw_settings(cli)?).map_err(|e| e.to_string())
}

/// Prints a command's output and exits 0; a reader that stopped early (`| head`) is no error.
fn print(output: String) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{output}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("cdc-audit: cannot write the output: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

fn main() -> ExitCode {
    logging::init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run => load(&cli).and_then(service::command),
        Command::Migrate {
            import_positions_from,
        } => raw_settings(&cli)
            .and_then(|raw| migrate::command(&raw, import_positions_from.as_deref()))
            .map(print),
        Command::CheckConfig => load(&cli).map(|c| {
            let lines: Vec<String> = c
                .describe()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            print(lines.join("\n"))
        }),
        Command::History(args) => raw_settings(&cli)
            .and_then(|raw| query::history(&raw, args))
            .map(print),
        Command::AsOf(args) => raw_settings(&cli)
            .and_then(|raw| query::as_of(&raw, args))
            .map(print),
        Command::Transaction(args) => raw_settings(&cli)
            .and_then(|raw| query::transaction(&raw, args))
            .map(print),
        Command::Tables => raw_settings(&cli)
            .and_then(|raw| query::tables(&raw))
            .map(print),
        Command::Serve => raw_settings(&cli).and_then(|raw| service::serve(&raw)),
        Command::Verify(args) => {
            raw_settings(&cli).and_then(|raw| integrity::verify_command(&raw, args))
        }
        Command::Archive(args) => raw_settings(&cli)
            .and_then(|raw| integrity::archive_command(&raw, args))
            .map(print),
        Command::Erase(args) => raw_settings(&cli)
            .and_then(|raw| integrity::erase_command(&raw, args))
            .map(print),
        Command::Digest(args) => raw_settings(&cli)
            .and_then(|raw| integrity::digest_command(&raw, args))
            .map(print),
        Command::Rejections { command } => {
            raw_settings(&cli).and_then(|raw| rejections::command(&raw, command))
        }
        Command::Healthcheck { url } => {
            raw_settings(&cli).and_then(|raw| http::healthcheck(&raw, url.as_deref()))
        }
        Command::Inspect { value, key, topic } => raw_settings(&cli)
            .and_then(|raw| {
                transform::inspect::inspect(&raw, value.as_deref(), key.as_deref(), topic)
            })
            .map(print),
        Command::Demo(args) => demo::run(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("cdc-audit: {e}");
        ExitCode::FAILURE
    })
}
