//! The trail's integrity: `cdc-audit verify` recomputes the hash chains from the stored rows,
//! `cdc-audit digest` signs their heads for keeping outside the database, `cdc-audit erase`
//! redacts a data subject and records it in the chain. The chain itself is extended by the
//! writers (`sink`), in each batch's transaction.

pub mod archive;
pub mod digest;
pub mod erase;
pub mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;

pub use digest::{Digest, PublicKey, SigningKey};
pub use verify::{verify, Break, Problem, Report, Scope};

use crate::sink;

/// The exit status of `verify` when a chain is broken (1 is any other failure).
pub const BROKEN: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Only links written at or after this time (2026-11-29, '2026-11-29 12:00+01'); the first
    /// such link of each chain is trusted as the start
    #[arg(long)]
    pub from: Option<String>,
    /// Only the chains of the topics that hold this table's changes (its source_table)
    #[arg(long)]
    pub table: Option<String>,
    /// Also prove that each chain still passes through the links this signed digest holds
    #[arg(long, value_name = "FILE")]
    pub digest: Option<PathBuf>,
    /// Instead, check an archive of an expired month (a .cdcaudit.gz file) on its own
    #[arg(long, value_name = "FILE", conflicts_with_all = ["digest", "from", "table"])]
    pub archive: Option<PathBuf>,
    /// The Ed25519 public key (PEM) digests are checked against; default: the public half of
    /// CDC_AUDIT_SIGNING_KEY_FILE
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(clap::Args, Debug)]
pub struct ArchiveArgs {
    /// Archive and drop the months that end at or before this time (2026-01-01); the service
    /// does it by itself with CDC_AUDIT_RETENTION
    #[arg(long)]
    pub before: String,
    /// Where the archives go (default: CDC_AUDIT_ARCHIVE_DIR)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `cdc-audit archive`.
pub fn archive_command(
    raw: &BTreeMap<String, String>,
    args: &ArchiveArgs,
) -> Result<String, String> {
    let dir = args
        .dir
        .clone()
        .or_else(|| raw.get("CDC_AUDIT_ARCHIVE_DIR").map(PathBuf::from))
        .ok_or("--dir is needed (or CDC_AUDIT_ARCHIVE_DIR): where the archives go")?;
    if !dir.is_dir() {
        return Err(format!("--dir {}: not a directory", dir.display()));
    }
    let mut client = sink::connect_with_settings(raw)?;
    let time = crate::query::parse_time(&mut client, "--before", &args.before)
        .map_err(|e| e.to_string())?;
    let done = archive::archive_expired(&mut client, &time, &dir)?;
    if done.is_empty() {
        return Ok(format!(
            "no month of audit_logging ends at or before {time}"
        ));
    }
    Ok(done
        .iter()
        .map(|a| {
            format!(
                "{}: {} rows archived to {} (sha256 {}) and dropped",
                a.partition,
                a.rows,
                a.file.display(),
                a.sha256
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

#[derive(clap::Args, Debug)]
pub struct DigestArgs {
    /// Write the digest to this file (created; never overwritten) instead of printing it
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct EraseArgs {
    /// db.schema.table (db.table for MySQL and MongoDB), or an unambiguous suffix
    #[arg(long)]
    pub table: String,
    /// The record's key as JSON, '{"id": 1004}', or a single key column's value: 1004
    #[arg(long)]
    pub key: String,
    /// Only these columns, comma-separated (default: every value of the record's rows)
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// Why: recorded with the erasure (a request's reference, a ticket)
    #[arg(long)]
    pub reason: String,
}

/// `cdc-audit erase`.
pub fn erase_command(raw: &BTreeMap<String, String>, args: &EraseArgs) -> Result<String, String> {
    let mut client = sink::connect_with_settings(raw)?;
    let columns: Option<Vec<String>> = args
        .columns
        .as_ref()
        .map(|c| c.iter().map(|c| c.trim().to_string()).collect());
    let done = erase::erase(
        &mut client,
        &args.table,
        &args.key,
        columns.as_deref(),
        &args.reason,
    )?;
    Ok(format!(
        "erased {} of the record's {} rows; each is recorded in audit_amendments (action erased)",
        done.rows, done.found
    ))
}

/// `cdc-audit verify`: exits 0 only when every chain in scope is intact.
pub fn verify_command(
    raw: &BTreeMap<String, String>,
    args: &VerifyArgs,
) -> Result<ExitCode, String> {
    if let Some(path) = &args.archive {
        let report = archive::verify_archive(path)?;
        println!("{report}");
        return Ok(if report.intact() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(BROKEN)
        });
    }
    let digest = match &args.digest {
        None => None,
        Some(path) => {
            let key = match (&args.public_key, raw.get("CDC_AUDIT_SIGNING_KEY_FILE")) {
                (Some(p), _) => PublicKey::load(p)?,
                (None, Some(p)) => SigningKey::load(Path::new(p))?.public()?,
                (None, None) => {
                    return Err(
                        "--digest needs the key it was signed with: --public-key FILE, or \
                         CDC_AUDIT_SIGNING_KEY_FILE"
                            .into(),
                    )
                }
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--digest {}: {e}", path.display()))?;
            Some(
                Digest::open(&text, &key)
                    .map_err(|e| format!("--digest {}: {e}", path.display()))?,
            )
        }
    };
    let scope = Scope {
        from: args.from.clone(),
        table: args.table.clone(),
        digest,
    };
    let report = verify(|| sink::connect_with_settings(raw), &scope)?;
    match args.format {
        Format::Text => println!("{report}"),
        Format::Json => println!("{}", report.to_json()),
    }
    Ok(if report.intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(BROKEN)
    })
}

/// `cdc-audit digest`: the chains' heads, signed with CDC_AUDIT_SIGNING_KEY_FILE.
pub fn digest_command(raw: &BTreeMap<String, String>, args: &DigestArgs) -> Result<String, String> {
    let key = signing_key(raw)?;
    let mut client = sink::connect_with_settings(raw)?;
    let digest = Digest::take(&mut client)?;
    let signed = digest.sign(&key)?;
    match &args.out {
        None => Ok(signed),
        Some(path) => {
            write_new(path, &signed)?;
            Ok(format!("{}: {}", path.display(), digest.summary()))
        }
    }
}

/// The signing key CDC_AUDIT_SIGNING_KEY_FILE names.
pub fn signing_key(raw: &BTreeMap<String, String>) -> Result<SigningKey, String> {
    let path = raw.get("CDC_AUDIT_SIGNING_KEY_FILE").ok_or(
        "CDC_AUDIT_SIGNING_KEY_FILE is not set: digests are signed with an Ed25519 key \
         (openssl genpkey -algorithm ed25519 -out signing-key.pem)",
    )?;
    SigningKey::load(Path::new(path)).map_err(|e| format!("CDC_AUDIT_SIGNING_KEY_FILE={e}"))
}

/// Writes a file that must not exist yet.
pub fn write_new(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}
