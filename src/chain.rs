//! The trail's hash chain: what each link hashes. One chain per consumer group and partition
//! runs through every row the partition's messages became, in offset order, whichever table
//! holds it (audit rows, transaction events, rejections, gaps), and through the amendments made
//! to them since (a replayed or purged rejection, an erasure).
//!
//! A row's *content* is SHA-256 over a tag naming its table and its fields exactly as binary
//! `COPY ... TO` returns them (`pgcopy` writes them in that form). Its *entry* adds when it was
//! written; its *link* is SHA-256 of the previous link, its number in the chain, and its entry.
//! The row stores its number (`chain_seq`) and link (`chain_hash`); the partition's row of
//! `audit_positions` stores the head. Verification recomputes every link from the rows alone.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The table a chained row is in: the first byte of its content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Row,
    Transaction,
    Rejection,
    Gap,
    Amendment,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Row => b'L',
            Kind::Transaction => b'T',
            Kind::Rejection => b'R',
            Kind::Gap => b'G',
            Kind::Amendment => b'A',
        }
    }
}

/// The fields every chained row has after its own, in this order: when it was written (a
/// timestamptz), its number in the chain (`chain_seq`, int8) and its link (`chain_hash`, bytea).
pub const CHAIN_FIELDS: i16 = 3;
pub type Suffix = [u8; 60];

/// The content hash of a row: `fields` are its own columns' binary COPY fields (the tuple
/// without its field count and without `CHAIN_COLUMNS`).
pub fn content(kind: Kind, fields: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([kind.tag()]);
    h.update(fields);
    h.finalize().into()
}

/// The entry of a row: its content, written at `time` (PostgreSQL microseconds since 2000).
pub fn entry(content: &Hash, time: i64) -> Hash {
    let mut h = Sha256::new();
    h.update(content);
    h.update(time.to_be_bytes());
    h.finalize().into()
}

/// Link number `seq`, after `prev`.
pub fn link(prev: &Hash, seq: i64, entry: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(entry);
    h.finalize().into()
}

/// What link 1 of a chain follows: the chain's name, so that no chain's links fit another's.
pub fn genesis(group: &str, topic: &str, partition: i32) -> Hash {
    let mut h = Sha256::new();
    h.update(b"cdc-audit chain v1\0");
    h.update(group.as_bytes());
    h.update([0]);
    h.update(topic.as_bytes());
    h.update([0]);
    h.update(partition.to_be_bytes());
    h.finalize().into()
}

/// The binary COPY fields of the chain (`CHAIN_FIELDS`).
pub fn suffix(time: i64, seq: i64, link: &Hash) -> Suffix {
    let mut s = [0; 60];
    s[0..4].copy_from_slice(&8i32.to_be_bytes());
    s[4..12].copy_from_slice(&time.to_be_bytes());
    s[12..16].copy_from_slice(&8i32.to_be_bytes());
    s[16..24].copy_from_slice(&seq.to_be_bytes());
    s[24..28].copy_from_slice(&32i32.to_be_bytes());
    s[28..60].copy_from_slice(link);
    s
}

/// The chain fields of a row outside any chain (written before the chain began): its time.
pub fn unlinked_suffix(time: i64) -> [u8; 20] {
    let mut s = [0xff; 20];
    s[0..4].copy_from_slice(&8i32.to_be_bytes());
    s[4..12].copy_from_slice(&time.to_be_bytes());
    s
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower- or upper-case hex, `None` if it is not.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_of_a_link_changes_it() {
        let c = content(Kind::Row, b"fields");
        let e = entry(&c, 7);
        let g = genesis("g", "t", 0);
        let l = link(&g, 1, &e);
        assert_ne!(content(Kind::Rejection, b"fields"), c);
        assert_ne!(entry(&c, 8), e);
        assert_ne!(link(&g, 2, &e), l);
        assert_ne!(link(&genesis("g", "t", 1), 1, &e), l);
        assert_ne!(link(&g, 1, &entry(&content(Kind::Row, b"field5"), 7)), l);
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(from_hex("0001ABff").as_deref(), Some(&bytes[..]));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
    }
}
