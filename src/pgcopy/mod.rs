//! PostgreSQL binary `COPY` encoding, written by hand: the transform stage encodes each row into
//! bytes on rayon, so the writer only concatenates buffers inside its transaction. Every field is
//! written as binary `COPY ... TO` returns it once stored (`jsonb` in its printed form, an empty
//! array with no dimensions): the hash chain hashes these bytes, and verification reads them back.

pub mod jsonb;

/// The stream header: signature, flags, header-extension length.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The stream trailer: a tuple with field count -1.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const TEXT_OID: u32 = 25;

/// Appends one tuple's fields to a buffer.
pub struct Tuple<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Tuple<'a> {
    pub fn begin(buf: &'a mut Vec<u8>, fields: i16) -> Self {
        buf.extend_from_slice(&fields.to_be_bytes());
        Tuple { buf }
    }

    fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn len(&mut self, len: usize) {
        // Field lengths are i32; a field over 1 GiB is refused by PostgreSQL anyway.
        self.buf
            .extend_from_slice(&(len.min(i32::MAX as usize) as i32).to_be_bytes());
    }

    /// A `text` field; NUL characters, which `text` cannot hold, become U+FFFD.
    pub fn text(&mut self, value: Option<&str>) {
        match value {
            None => self.null(),
            Some(s) if s.contains('\0') => {
                let clean = s.replace('\0', "\u{FFFD}");
                self.len(clean.len());
                self.buf.extend_from_slice(clean.as_bytes());
            }
            Some(s) => {
                self.len(s.len());
                self.buf.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// A `jsonb` field (version byte 1, then the text as `jsonb` prints it). Text that `jsonb`
    /// would refuse goes as it is, for PostgreSQL to refuse.
    pub fn jsonb(&mut self, json: Option<&str>) {
        match json {
            None => self.null(),
            Some(s) => self.jsonb_written(s, |out| jsonb::write_canonical(out, s)),
        }
    }

    /// [`Tuple::jsonb`] of an object whose members a validating reader has split already
    /// (see [`jsonb::write_canonical_split`]): it is not read again where it is flat.
    pub fn jsonb_split<'k>(
        &mut self,
        json: &str,
        members: impl Iterator<Item = (&'k str, &'k str)>,
    ) {
        self.jsonb_written(json, |out| jsonb::write_canonical_split(out, json, members));
    }

    /// A `jsonb` field that `write` writes in canonical form; `json` as it is if `write` says
    /// `jsonb` would refuse it.
    fn jsonb_written(&mut self, json: &str, write: impl FnOnce(&mut Vec<u8>) -> bool) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0, 1]);
        if !write(self.buf) {
            self.buf.truncate(at + 5);
            self.buf.extend_from_slice(json.as_bytes());
        }
        let len = self.buf.len() - at - 4;
        let len = len.min(i32::MAX as usize) as i32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn bytea(&mut self, value: Option<&[u8]>) {
        match value {
            None => self.null(),
            Some(b) => {
                self.len(b.len());
                self.buf.extend_from_slice(b);
            }
        }
    }

    pub fn int4(&mut self, value: i32) {
        self.len(4);
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    pub fn int8(&mut self, value: i64) {
        self.len(8);
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    pub fn int8_opt(&mut self, value: Option<i64>) {
        match value {
            None => self.null(),
            Some(v) => self.int8(v),
        }
    }

    pub fn bool(&mut self, value: Option<bool>) {
        match value {
            None => self.null(),
            Some(b) => {
                self.len(1);
                self.buf.push(b as u8);
            }
        }
    }

    /// A `timestamptz` from microseconds since the Unix epoch.
    pub fn timestamptz(&mut self, unix_micros: Option<i64>) {
        match unix_micros {
            None => self.null(),
            Some(us) => self.int8(us.saturating_sub(PG_EPOCH_OFFSET_US)),
        }
    }

    /// A one-dimensional `text[]` without NULL elements; an empty one has no dimensions.
    pub fn text_array<S: AsRef<str>>(&mut self, values: Option<&[S]>) {
        let Some(values) = values else {
            return self.null();
        };
        if values.is_empty() {
            self.len(12);
            for word in [0i32, 0, TEXT_OID as i32] {
                self.buf.extend_from_slice(&word.to_be_bytes());
            }
            return;
        }
        let body: usize = 20 + values.iter().map(|v| 4 + v.as_ref().len()).sum::<usize>();
        self.len(body);
        self.buf.extend_from_slice(&1i32.to_be_bytes()); // dimensions
        self.buf.extend_from_slice(&0i32.to_be_bytes()); // has nulls
        self.buf.extend_from_slice(&TEXT_OID.to_be_bytes());
        self.buf
            .extend_from_slice(&(values.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        for v in values {
            let v = v.as_ref();
            self.len(v.len());
            self.buf.extend_from_slice(v.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_layout_matches_the_binary_copy_format() {
        let mut buf = Vec::new();
        let mut t = Tuple::begin(&mut buf, 3);
        t.text(Some("ab"));
        t.jsonb(None);
        t.int4(7);
        assert_eq!(
            buf,
            [
                &[0, 3][..],
                &[0, 0, 0, 2],
                b"ab",
                &[0xff; 4],
                &[0, 0, 0, 4],
                &[0, 0, 0, 7]
            ]
            .concat()
        );
    }

    #[test]
    fn timestamps_count_from_2000() {
        let mut buf = Vec::new();
        Tuple::begin(&mut buf, 1).timestamptz(Some(PG_EPOCH_OFFSET_US + 5));
        assert_eq!(&buf[6..], &5i64.to_be_bytes());
    }
}
