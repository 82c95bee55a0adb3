//! What a failed database call means (one place classifies PostgreSQL's errors), and how long
//! to wait before trying again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::error::SqlState;

/// An error and its causes ("error performing TLS handshake: certificate verify failed").
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A failed database call.
#[derive(Debug)]
pub enum SinkError {
    Db(postgres::Error),
    /// The COPY stream broke; the server's own error, when there is one, is inside.
    Io(std::io::Error),
}

impl SinkError {
    pub fn from_io(e: std::io::Error) -> SinkError {
        // The postgres crate wraps its own error in the io::Error of a COPY write.
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<postgres::Error>())
        {
            Some(_) => match e.into_inner().map(|b| b.downcast::<postgres::Error>()) {
                Some(Ok(db)) => SinkError::Db(*db),
                _ => SinkError::Io(std::io::Error::other("COPY stream failed")),
            },
            None => SinkError::Io(e),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            SinkError::Db(e) => classify(e),
            SinkError::Io(_) => ErrorClass::Retriable,
        }
    }
}

impl From<postgres::Error> for SinkError {
    fn from(e: postgres::Error) -> Self {
        SinkError::Db(e)
    }
}

impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkError::Db(e) => match e.as_db_error() {
                Some(db) => {
                    write!(f, "{} (SQLSTATE {})", db.message(), db.code().code())?;
                    match db.detail() {
                        Some(detail) => write!(f, ": {detail}"),
                        None => Ok(()),
                    }
                }
                None => f.write_str(&with_causes(e)),
            },
            SinkError::Io(e) => write!(f, "COPY stream: {e}"),
        }
    }
}

/// What a failed database call means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database is away, overloaded or asked us to retry: back off and try again.
    Retriable,
    /// A row's data was refused: isolate the row and reject it.
    Data,
    /// The schema or permissions are wrong: retry slowly and say so loudly; a person must act.
    Fatal,
}

/// The one place that decides what a PostgreSQL error means.
pub fn classify(e: &postgres::Error) -> ErrorClass {
    let Some(code) = e.code() else {
        return ErrorClass::Retriable;
    };
    let c = code.code();
    if c.starts_with("08")
        || c.starts_with("53")
        || c.starts_with("57P")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || c.starts_with("58")
    {
        ErrorClass::Retriable
    } else if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") {
        ErrorClass::Data
    } else {
        ErrorClass::Fatal
    }
}
/// Exponential backoff with jitter, capped.
pub struct Backoff {
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Backoff { attempt: 0, seed }
    }

    pub fn next(&mut self) -> Duration {
        self.attempt = (self.attempt + 1).min(16);
        let cap_ms = (100u64 << self.attempt.min(9)).min(30_000);
        // xorshift: enough randomness to spread instances apart, no crate needed.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        Duration::from_millis(cap_ms / 2 + self.seed % (cap_ms / 2 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(
            first >= Duration::from_millis(100) && first <= Duration::from_millis(200),
            "{first:?}"
        );
        for _ in 0..20 {
            assert!(b.next() <= Duration::from_secs(30));
        }
    }
}
