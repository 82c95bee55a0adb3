//! Digests: every chain's head at one moment, signed with an Ed25519 key only the service holds,
//! to be kept outside the database. A later `verify --digest` proves the chains still pass
//! through these links, so that nothing before them was rewritten since, even by someone who
//! recomputed every link in the database: they cannot sign a new digest.
//!
//! Keys are PEM files as OpenSSL writes them (`openssl genpkey -algorithm ed25519`, and
//! `openssl pkey -pubout` for the public half); signing and checking use OpenSSL, which the
//! service links already.

use std::path::Path;
use std::time::{Duration, Instant};

use openssl::pkey::{Id, PKey, Private, Public};
use openssl::sign::{Signer, Verifier};
use serde::{Deserialize, Serialize};

use crate::chain::{self, Hash};
use crate::sink::with_causes;

/// The format's version, the first member of every digest.
const VERSION: u32 = 1;

/// One chain's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub seq: i64,
    pub head: Hash,
}

/// The heads of every chain of a database, at `taken_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub database: String,
    pub taken_at: String,
    pub chains: Vec<Head>,
}

/// What is signed: the digest's members but the key and the signature, in this order.
#[derive(Serialize, Deserialize)]
struct Body {
    cdc_audit_digest: u32,
    database: String,
    taken_at: String,
    chains: Vec<HeadJson>,
}

#[derive(Serialize, Deserialize)]
struct HeadJson {
    consumer_group: String,
    topic: String,
    partition: i32,
    seq: i64,
    head: String,
}

#[derive(Serialize, Deserialize)]
struct Signed {
    #[serde(flatten)]
    body: Body,
    public_key: String,
    signature: String,
}

/// How long a digest waits for the database to flush what it read.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Waits until the database's WAL is on disk up to where it is now written. With
/// `synchronous_commit = off`, a batch's commit returns before its WAL is flushed, and a crash
/// takes back the last of them (at most 3 × `wal_writer_delay`): a digest waits for that, so it
/// never names a head a crash can take back. A standby has nothing to wait for here.
fn wait_flushed(client: &mut postgres::Client, limit: Duration) -> Result<(), String> {
    let written: Option<String> = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
             ELSE pg_current_wal_insert_lsn()::text END",
            &[],
        )
        .map_err(|e| with_causes(&e))?
        .get(0);
    let Some(written) = written else {
        return Ok(());
    };
    let deadline = Instant::now() + limit;
    loop {
        let flushed: bool = client
            .query_one(
                "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn",
                &[&written],
            )
            .map_err(|e| with_causes(&e))?
            .get(0);
        if flushed {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the database had not flushed its WAL up to {written} after {limit:?}: no digest \
                 is taken of chain heads a crash could still take back"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Digest {
    /// Reads every chain's head, in one statement: one moment; once what it read is on disk.
    pub fn take(client: &mut postgres::Client) -> Result<Digest, String> {
        let digest = Digest::read(client).map_err(|e| with_causes(&e))?;
        wait_flushed(client, FLUSH_WAIT)?;
        Ok(digest)
    }

    fn read(client: &mut postgres::Client) -> Result<Digest, postgres::Error> {
        let meta = client.query_one(
            "SELECT current_database()::text, \
             to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )?;
        let rows = client.query(
            "SELECT consumer_group, topic, partition, chain_seq, chain_head FROM audit_positions \
             WHERE chain_seq > 0 AND chain_head IS NOT NULL \
             ORDER BY consumer_group, topic, partition",
            &[],
        )?;
        let chains = rows
            .iter()
            .filter_map(|r| {
                Some(Head {
                    group: r.get(0),
                    topic: r.get(1),
                    partition: r.get(2),
                    seq: r.get(3),
                    head: Hash::try_from(r.get::<_, &[u8]>(4)).ok()?,
                })
            })
            .collect();
        Ok(Digest {
            database: meta.get(0),
            taken_at: meta.get(1),
            chains,
        })
    }

    fn body(&self) -> Body {
        Body {
            cdc_audit_digest: VERSION,
            database: self.database.clone(),
            taken_at: self.taken_at.clone(),
            chains: self
                .chains
                .iter()
                .map(|c| HeadJson {
                    consumer_group: c.group.clone(),
                    topic: c.topic.clone(),
                    partition: c.partition,
                    seq: c.seq,
                    head: chain::hex(&c.head),
                })
                .collect(),
        }
    }

    /// The digest as JSON, signed with `key`.
    pub fn sign(&self, key: &SigningKey) -> Result<String, String> {
        let body = self.body();
        let message = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let mut signer = Signer::new_without_digest(&key.0).map_err(|e| e.to_string())?;
        let signature = signer
            .sign_oneshot_to_vec(&message)
            .map_err(|e| e.to_string())?;
        let signed = Signed {
            body,
            public_key: chain::hex(&key.public()?.raw()?),
            signature: chain::hex(&signature),
        };
        serde_json::to_string_pretty(&signed).map_err(|e| e.to_string())
    }

    /// Reads a signed digest, refusing it unless `key` signed exactly this.
    pub fn open(text: &str, key: &PublicKey) -> Result<Digest, String> {
        let signed: Signed =
            serde_json::from_str(text).map_err(|e| format!("not a cdc-audit digest: {e}"))?;
        if signed.body.cdc_audit_digest != VERSION {
            return Err(format!(
                "a digest of format {}, this cdc-audit reads format {VERSION}",
                signed.body.cdc_audit_digest
            ));
        }
        let trusted = chain::hex(&key.raw()?);
        if signed.public_key != trusted {
            return Err(format!(
                "the digest was signed by another key ({}), not the trusted one ({trusted})",
                signed.public_key
            ));
        }
        let signature = chain::from_hex(&signed.signature).ok_or("the signature is not hex")?;
        let message = serde_json::to_vec(&signed.body).map_err(|e| e.to_string())?;
        let mut verifier = Verifier::new_without_digest(&key.0).map_err(|e| e.to_string())?;
        if !verifier
            .verify_oneshot(&signature, &message)
            .map_err(|e| e.to_string())?
        {
            return Err("the digest's signature does not match its content: it was altered".into());
        }
        let mut chains = Vec::with_capacity(signed.body.chains.len());
        for c in signed.body.chains {
            let head = chain::from_hex(&c.head)
                .and_then(|h| Hash::try_from(h).ok())
                .ok_or_else(|| format!("the head of {}/{} is not a hash", c.topic, c.partition))?;
            chains.push(Head {
                group: c.consumer_group,
                topic: c.topic,
                partition: c.partition,
                seq: c.seq,
                head,
            });
        }
        Ok(Digest {
            database: signed.body.database,
            taken_at: signed.body.taken_at,
            chains,
        })
    }

    /// One line for the log: how many chains and links, and a short fingerprint.
    pub fn summary(&self) -> String {
        let links: i64 = self.chains.iter().map(|c| c.seq).sum();
        let all: Vec<u8> = self.chains.iter().flat_map(|c| c.head).collect();
        let fingerprint = <sha2::Sha256 as sha2::Digest>::digest(&all);
        format!(
            "{} chains, {links} links, heads {}",
            self.chains.len(),
            chain::hex(&fingerprint[..8])
        )
    }
}

/// The service's Ed25519 signing key.
pub struct SigningKey(PKey<Private>);

/// A key that digests are checked against.
pub struct PublicKey(PKey<Public>);

impl SigningKey {
    /// Reads a PEM private key; the error names the file and says what is wrong.
    pub fn load(path: &Path) -> Result<SigningKey, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                log::warn!(
                    "{}: the signing key can be read by others than its owner (chmod 600 it):                      whoever reads it can sign digests",
                    path.display()
                );
            }
        }
        let key = PKey::private_key_from_pem(&pem).map_err(|_| {
            format!(
                "{}: not a PEM private key (make one with: openssl genpkey -algorithm ed25519)",
                path.display()
            )
        })?;
        if key.id() != Id::ED25519 {
            return Err(format!("{}: not an Ed25519 key", path.display()));
        }
        Ok(SigningKey(key))
    }

    pub fn public(&self) -> Result<PublicKey, String> {
        let raw = self.0.raw_public_key().map_err(|e| e.to_string())?;
        PKey::public_key_from_raw_bytes(&raw, Id::ED25519)
            .map(PublicKey)
            .map_err(|e| e.to_string())
    }
}

impl PublicKey {
    /// Reads a PEM public key (`openssl pkey -in key.pem -pubout`), or the public half of a
    /// PEM private key.
    pub fn load(path: &Path) -> Result<PublicKey, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(key) = PKey::public_key_from_pem(&pem) {
            if key.id() != Id::ED25519 {
                return Err(format!("{}: not an Ed25519 key", path.display()));
            }
            return Ok(PublicKey(key));
        }
        SigningKey::load(path)?.public()
    }

    fn raw(&self) -> Result<Vec<u8>, String> {
        self.0.raw_public_key().map_err(|e| e.to_string())
    }
}
