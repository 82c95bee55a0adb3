//! JSON text in the form PostgreSQL prints a `jsonb` value: keys ordered by length and then
//! bytes, the last of repeated keys kept, `", "` and `": "` between members and elements,
//! numbers as `numeric` prints them (`1.0E3` is `1000`, `1.50` stays `1.50`, `-0` is `0`),
//! strings with only `"`, `\`, and control characters escaped.
//!
//! The trail's hash chain covers rows as PostgreSQL returns them (`COPY ... TO` in binary),
//! so the service sends images in this form: what it hashes is then what verification reads
//! back, byte for byte. `tests/it/chain.rs` holds it to the server for every fixture.

use std::cmp::Ordering;

/// Appends `json` in PostgreSQL's `jsonb` text form to `out`. `false` when `json` is not
/// JSON that `jsonb` accepts (then `out` holds a partial result and the caller discards it):
/// PostgreSQL will refuse it too, and the row becomes a rejection.
pub fn write_canonical(out: &mut Vec<u8>, json: &str) -> bool {
    SCRATCH.with(|scratch| {
        let (members, written, orders) = &mut *scratch.borrow_mut();
        members.clear();
        let mut c = Canon {
            src: json.as_bytes(),
            pos: 0,
            out,
            members,
            written,
            orders,
            depth: 0,
        };
        c.ws();
        let ok = c.value().is_some();
        c.ws();
        ok && c.pos == c.src.len()
    })
}

thread_local! {
    /// The members of the objects being written, a copy of an object's members being
    /// reordered, and the orders of the key lists seen last: kept per thread, so that
    /// writing allocates nothing once they have grown.
    static SCRATCH: std::cell::RefCell<(Vec<Member>, Vec<u8>, Orders)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new(), Orders { seen: Vec::new(), next: 0 }))
    };
}

/// [`write_canonical`] of an object whose members a validating reader has split already: each
/// key's text between its quotes (without escapes) and its value's text, both within `json`.
/// A flat object (scalar values, keys without escapes) is written from them without being read
/// again; any other `write_canonical` writes.
pub fn write_canonical_split<'k>(
    out: &mut Vec<u8>,
    json: &str,
    members: impl Iterator<Item = (&'k str, &'k str)>,
) -> bool {
    let at = out.len();
    let split = SCRATCH.with(|scratch| {
        let (members_buf, written, orders) = &mut *scratch.borrow_mut();
        members_buf.clear();
        Canon {
            src: json.as_bytes(),
            pos: 0,
            out,
            members: members_buf,
            written,
            orders,
            depth: 0,
        }
        .split_object(members)
    });
    if split {
        return true;
    }
    out.truncate(at);
    write_canonical(out, json)
}

/// The canonical text of `json`, or `None` when `jsonb` would refuse it.
pub fn canonical(json: &str) -> Option<String> {
    let mut out = Vec::with_capacity(json.len() + json.len() / 8);
    write_canonical(&mut out, json)
        .then(|| String::from_utf8(out).ok())
        .flatten()
}

/// PostgreSQL refuses `numeric` input with an exponent beyond this.
const MAX_EXPONENT: i64 = 1000;
/// Deeper nesting is refused here (serde_json stops at 128); PostgreSQL would take more, but
/// no change event nests this deep.
const MAX_DEPTH: usize = 512;

/// One object member already written to `out`: where it starts and ends, and where its key's
/// escaped text is (without the quotes).
#[derive(Clone, Copy)]
struct Member {
    start: usize,
    end: usize,
    key: (usize, usize),
    escaped: bool,
    /// The value is a string with an escape, still to be written (`flat_object`).
    value_escaped: bool,
    /// The key's length and first eight bytes (unescaped): most comparisons end there.
    order: (usize, u64),
}

struct Canon<'a, 'o> {
    src: &'a [u8],
    pos: usize,
    out: &'o mut Vec<u8>,
    /// Members of the objects being written, innermost last.
    members: &'o mut Vec<Member>,
    /// An object's members while they are reordered.
    written: &'o mut Vec<u8>,
    orders: &'o mut Orders,
    depth: usize,
}

impl Canon<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.pos += 1)
    }

    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.nested(Self::object),
            b'[' => self.nested(Self::array),
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Option<()>) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.src[self.pos..].starts_with(word).then_some(())?;
        self.pos += word.len();
        self.out.extend_from_slice(word);
        Some(())
    }

    fn array(&mut self) -> Option<()> {
        self.eat(b'[')?;
        self.out.push(b'[');
        self.ws();
        if self.eat(b']').is_none() {
            loop {
                self.ws();
                self.value()?;
                self.ws();
                if self.eat(b',').is_some() {
                    self.out.extend_from_slice(b", ");
                    continue;
                }
                self.eat(b']')?;
                break;
            }
        }
        self.out.push(b']');
        Some(())
    }

    fn object(&mut self) -> Option<()> {
        if self.flat_object() {
            return Some(());
        }
        self.eat(b'{')?;
        self.out.push(b'{');
        self.ws();
        let base = self.members.len();
        let region = self.out.len();
        let mut in_order = true;
        if self.eat(b'}').is_none() {
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return None;
                }
                let start = self.out.len();
                let (key, escaped) = self.string()?;
                self.ws();
                self.eat(b':')?;
                self.out.extend_from_slice(b": ");
                self.ws();
                self.value()?;
                let member = Member {
                    start,
                    end: self.out.len(),
                    key,
                    escaped,
                    value_escaped: false,
                    order: sort_key(&unescape(&self.out[key.0..key.1], escaped)),
                };
                if let Some(prev) = self.members[base..].last() {
                    in_order &= key_order(self.out, prev, &member) == Ordering::Less;
                }
                self.members.push(member);
                self.ws();
                if self.eat(b',').is_some() {
                    self.out.extend_from_slice(b", ");
                    continue;
                }
                self.eat(b'}')?;
                break;
            }
        }
        if !in_order {
            self.reorder(base, region);
        }
        self.members.truncate(base);
        self.out.push(b'}');
        Some(())
    }

    /// An object at `pos` whose keys hold no escape and whose values are strings, numbers
    /// without an exponent, or literals: a row image or an event's source, almost always. Its
    /// members are found in the source, put in order, and each written once. `false`, with
    /// nothing written and `pos` where it was, for any other object: the general path writes
    /// it.
    fn flat_object(&mut self) -> bool {
        let src = self.src;
        let src_at = self.pos;
        let base = self.members.len();
        let ws = |mut i: usize| {
            while matches!(src.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                i += 1;
            }
            i
        };
        // The end of the string that opens at `i`, and whether it holds an escape (which
        // `string` checks as it writes).
        let string_end = |mut i: usize| -> Option<(usize, bool)> {
            let mut escaped = false;
            loop {
                i += 1 + special_at(src.get(i + 1..)?)?;
                match src[i] {
                    b'"' => return Some((i + 1, escaped)),
                    b'\\' => escaped = true,
                    _ => return None,
                }
                i += 1;
            }
        };
        let mut i = ws(self.pos + 1);
        let found = (|| -> Option<usize> {
            if src.get(self.pos) != Some(&b'{') {
                return None;
            }
            if src.get(i) == Some(&b'}') {
                return Some(i + 1);
            }
            loop {
                if src.get(i) != Some(&b'"') {
                    return None;
                }
                let (key_end, false) = string_end(i)? else {
                    return None;
                };
                let key = (i + 1, key_end - 1);
                i = ws(key_end);
                if src.get(i) != Some(&b':') {
                    return None;
                }
                let start = ws(i + 1);
                let mut value_escaped = false;
                i = match src.get(start)? {
                    b'"' => {
                        let (end, escaped) = string_end(start)?;
                        value_escaped = escaped;
                        end
                    }
                    b't' if src[start..].starts_with(b"true") => start + 4,
                    b'f' if src[start..].starts_with(b"false") => start + 5,
                    b'n' if src[start..].starts_with(b"null") => start + 4,
                    b'-' | b'0'..=b'9' => plain_number(src, start)?,
                    _ => return None,
                };
                let member = Member {
                    start,
                    end: i,
                    key,
                    escaped: false,
                    value_escaped,
                    order: sort_key(&src[key.0..key.1]),
                };
                self.members.push(member);
                i = ws(i);
                match src.get(i)? {
                    b',' => i = ws(i + 1),
                    b'}' => return Some(i + 1),
                    _ => return None,
                }
            }
        })();
        let Some(end) = found else {
            self.members.truncate(base);
            return false;
        };
        self.write_flat(src_at, base, end)
    }

    /// The whole of `src`, an object whose members a validating reader has already split
    /// (`members`: each key's text between its quotes, without escapes, and its value's text,
    /// both within `src`), written as [`Canon::flat_object`] writes it without reading it
    /// again. `false`, with nothing written, where a member is not one `flat_object` takes.
    fn split_object<'k>(&mut self, members: impl Iterator<Item = (&'k str, &'k str)>) -> bool {
        let src = self.src;
        let base = self.members.len();
        let at = |s: &str| {
            let i = (s.as_ptr() as usize).checked_sub(src.as_ptr() as usize)?;
            (i + s.len() <= src.len()).then_some(i)
        };
        if src.first() != Some(&b'{') || src.last() != Some(&b'}') {
            return false;
        }
        for (key, value) in members {
            let (Some(k), Some(start)) = (at(key), at(value)) else {
                self.members.truncate(base);
                return false;
            };
            let end = start + value.len();
            let value_escaped = match value.as_bytes().first() {
                Some(b'"') => value.contains('\\'),
                Some(b't' | b'f' | b'n') => false,
                Some(b'-' | b'0'..=b'9') if plain_number(src, start) == Some(end) => false,
                _ => {
                    self.members.truncate(base);
                    return false;
                }
            };
            self.members.push(Member {
                start,
                end,
                key: (k, k + key.len()),
                escaped: false,
                value_escaped,
                order: sort_key(key.as_bytes()),
            });
        }
        self.write_flat(0, base, src.len())
    }

    /// Writes the flat object whose members are `members[base..]` (it was read from `src_at`
    /// to `end`), in `jsonb` order; `false`, with nothing written and `pos` at `src_at`, if a
    /// string in it has an escape `jsonb` refuses.
    fn write_flat(&mut self, src_at: usize, base: usize, end: usize) -> bool {
        let src = self.src;
        let order = self.orders.of(src, &self.members[base..]);
        let region = self.out.len();
        self.out.push(b'{');
        let mut first = true;
        for j in 0..self.members.len() - base {
            let (k, kept) = self.orders.seen[order].order[j];
            let m = self.members[base + k as usize];
            let at = self.out.len();
            if kept {
                if !first {
                    self.out.extend_from_slice(b", ");
                }
                first = false;
                self.out.push(b'"');
                self.out.extend_from_slice(&src[m.key.0..m.key.1]);
                self.out.extend_from_slice(b"\": ");
                if !m.value_escaped {
                    self.out.extend_from_slice(&src[m.start..m.end]);
                    continue;
                }
            } else if !m.value_escaped {
                continue;
            }
            // A string with escapes is checked as it is written, even one a later key
            // replaces: `jsonb` refuses the whole text for an escape it cannot hold.
            self.pos = m.start;
            if self.string().is_none() {
                self.out.truncate(region);
                self.members.truncate(base);
                self.pos = src_at;
                return false;
            }
            if !kept {
                self.out.truncate(at);
            }
        }
        self.out.push(b'}');
        self.members.truncate(base);
        self.pos = end;
        true
    }

    /// Rewrites the members from `region` on in `jsonb` order, keeping the last of equal keys.
    fn reorder(&mut self, base: usize, region: usize) {
        self.written.clear();
        self.written.extend_from_slice(&self.out[region..]);
        self.out.truncate(region);
        let written = &*self.written;
        let members = &mut self.members[base..];
        for m in members.iter_mut() {
            m.start -= region;
            m.end -= region;
            m.key = (m.key.0 - region, m.key.1 - region);
        }
        let order = self.orders.of(written, members);
        let kept = self.orders.seen[order]
            .order
            .iter()
            .filter(|(_, kept)| *kept);
        for (n, &(k, _)) in kept.enumerate() {
            if n > 0 {
                self.out.extend_from_slice(b", ");
            }
            let m = &members[k as usize];
            self.out.extend_from_slice(&written[m.start..m.end]);
        }
    }

    /// Writes a string in PostgreSQL's escaping; returns where its text is in `out` (without
    /// the quotes) and whether it holds an escape.
    fn string(&mut self) -> Option<((usize, usize), bool)> {
        self.eat(b'"')?;
        self.out.push(b'"');
        let start = self.out.len();
        let mut escaped = false;
        loop {
            // Copy the run of bytes that need nothing.
            let run = special_at(&self.src[self.pos..])?;
            self.out
                .extend_from_slice(&self.src[self.pos..self.pos + run]);
            self.pos += run;
            match self.src[self.pos] {
                b'"' => break,
                b'\\' => {
                    self.pos += 1;
                    let c = match self.src.get(self.pos)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    };
                    self.pos += 1;
                    escaped |= push_char(self.out, c);
                }
                // A raw control character: not JSON.
                _ => return None,
            }
        }
        let end = self.out.len();
        self.pos += 1;
        self.out.push(b'"');
        Some(((start, end), escaped))
    }

    /// At the `u` of `\uXXXX`: the character, joining a surrogate pair; leaves `pos` on the
    /// last hex digit. `\u0000` and lone surrogates are refused, as `jsonb` refuses them.
    fn unicode_escape(&mut self) -> Option<char> {
        let hex = |s: &[u8]| -> Option<u32> {
            let s = std::str::from_utf8(s.get(..4)?).ok()?;
            u32::from_str_radix(s, 16).ok()
        };
        let first = hex(self.src.get(self.pos + 1..)?)?;
        self.pos += 4;
        let code = match first {
            0 => return None,
            0xd800..=0xdbff => {
                let rest = self.src.get(self.pos + 1..)?;
                if !rest.starts_with(b"\\u") {
                    return None;
                }
                let low = hex(&rest[2..])?;
                if !(0xdc00..=0xdfff).contains(&low) {
                    return None;
                }
                self.pos += 6;
                0x10000 + ((first - 0xd800) << 10) + (low - 0xdc00)
            }
            0xdc00..=0xdfff => return None,
            c => c,
        };
        char::from_u32(code)
    }

    fn number(&mut self) -> Option<()> {
        let s = self.src;
        let mut i = self.pos;
        let negative = s.get(i) == Some(&b'-');
        i += usize::from(negative);
        let digits_at = |i: usize| s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        let int_len = digits_at(i);
        if int_len == 0 || (int_len > 1 && s[i] == b'0') {
            return None;
        }
        let int = &s[i..i + int_len];
        i += int_len;
        let mut frac: &[u8] = &[];
        if s.get(i) == Some(&b'.') {
            let n = digits_at(i + 1);
            if n == 0 {
                return None;
            }
            frac = &s[i + 1..i + 1 + n];
            i += 1 + n;
        }
        let mut exponent: i64 = 0;
        let plain = frac.is_empty() && !matches!(s.get(i), Some(b'e' | b'E'));
        if matches!(s.get(i), Some(b'e' | b'E')) {
            i += 1;
            let sign = match s.get(i) {
                Some(b'-') => -1,
                Some(b'+') => 1,
                _ => 0,
            };
            i += usize::from(sign != 0);
            let n = digits_at(i);
            if n == 0 {
                return None;
            }
            for &d in &s[i..i + n] {
                exponent = exponent * 10 + i64::from(d - b'0');
                if exponent > MAX_EXPONENT {
                    return None;
                }
            }
            exponent *= if sign < 0 { -1 } else { 1 };
            i += n;
        }
        if plain && !(negative && int == b"0") {
            // An integer prints as it is written.
            self.out.extend_from_slice(&s[self.pos..i]);
        } else {
            write_numeric(self.out, negative, int, frac, exponent);
        }
        self.pos = i;
        Some(())
    }
}

/// The `jsonb` orders of the last few key lists of objects written: a table's images, or a
/// connector's sources, have the same keys in the same order event after event, so their
/// order is found once and then only recognised. Keys are compared as written (escaped or
/// not), which names each text once.
struct Orders {
    seen: Vec<Order>,
    /// The entry replaced next once there are `ORDERS` of them.
    next: usize,
}

const ORDERS: usize = 16;

struct Order {
    /// The keys, one after the other, and where each ends.
    keys: Vec<u8>,
    ends: Vec<usize>,
    /// The members by index in `jsonb` order, each with whether it is written (`false`: a
    /// later equal key replaces it).
    order: Vec<(u32, bool)>,
}

impl Orders {
    /// Which entry holds the order of `members` (their keys in `src`), found or made. Sorted
    /// stably: equal keys stay in document order, and the last of each run is kept.
    fn of(&mut self, src: &[u8], members: &[Member]) -> usize {
        let key = |m: &Member| &src[m.key.0..m.key.1];
        let same = |o: &Order| {
            o.ends.len() == members.len()
                && members.iter().enumerate().all(|(i, m)| {
                    let start = if i == 0 { 0 } else { o.ends[i - 1] };
                    key(m) == &o.keys[start..o.ends[i]]
                })
        };
        if let Some(found) = self.seen.iter().position(same) {
            return found;
        }
        let mut by_key: Vec<u32> = (0..members.len() as u32).collect();
        by_key.sort_by(|&a, &b| key_order(src, &members[a as usize], &members[b as usize]));
        let order = (0..by_key.len())
            .map(|j| {
                let m = &members[by_key[j] as usize];
                let replaced = by_key
                    .get(j + 1)
                    .is_some_and(|&n| key_order(src, m, &members[n as usize]) == Ordering::Equal);
                (by_key[j], !replaced)
            })
            .collect();
        let mut keys = Vec::new();
        let ends = members
            .iter()
            .map(|m| {
                keys.extend_from_slice(key(m));
                keys.len()
            })
            .collect();
        let entry = Order { keys, ends, order };
        if self.seen.len() < ORDERS {
            self.seen.push(entry);
            return self.seen.len() - 1;
        }
        let slot = self.next;
        self.next = (self.next + 1) % ORDERS;
        self.seen[slot] = entry;
        slot
    }
}

/// The end of the number at `i` when `numeric` prints it as it is written: no exponent, no
/// leading zero, not a negative zero.
fn plain_number(src: &[u8], i: usize) -> Option<usize> {
    let negative = src[i] == b'-';
    let int_at = i + usize::from(negative);
    let digits = |at: usize| src[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let int = digits(int_at);
    let mut end = int_at + int;
    if int == 0 || (int > 1 && src[int_at] == b'0') {
        return None;
    }
    if src.get(end) == Some(&b'.') {
        let frac = digits(end + 1);
        if frac == 0 {
            return None;
        }
        end += 1 + frac;
    }
    if matches!(src.get(end), Some(b'e' | b'E')) {
        return None;
    }
    let zero = src[int_at..end].iter().all(|&b| b == b'0' || b == b'.');
    (!(negative && zero)).then_some(end)
}

/// Where the first `"`, `\` or control character is: eight bytes at a time (a string's text is
/// most of what is copied, and of what the transform's scanner reads).
pub fn special_at(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte is zero in `x ^ ONES * c` where it is c; `(x - ONES * n) & !x & HIGH` marks the
    // bytes below n (for n up to 128). Borrows mark false bytes only above a true one, so the
    // lowest mark is the first match.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut i = 0;
    while i + 8 <= s.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&s[i..i + 8]);
        let w = u64::from_le_bytes(word);
        let marks = below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20);
        if marks != 0 {
            return Some(i + (marks.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let rest = s[i..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(i + rest)
}

/// `numeric`'s text for the decimal `int.frac × 10^exponent`: as many decimals as the input
/// had after the shift (never fewer than none), no leading zeros, no negative zero.
fn write_numeric(out: &mut Vec<u8>, negative: bool, int: &[u8], frac: &[u8], exponent: i64) {
    let digit = |k: i64| -> u8 {
        // The k-th digit of int ++ frac, zero outside.
        let k = match usize::try_from(k) {
            Ok(k) => k,
            Err(_) => return b'0',
        };
        match k.cmp(&int.len()) {
            Ordering::Less => int[k],
            _ => frac.get(k - int.len()).copied().unwrap_or(b'0'),
        }
    };
    let len = (int.len() + frac.len()) as i64;
    let point = int.len() as i64 + exponent;
    let scale = (frac.len() as i64 - exponent).max(0);
    let zero = int.iter().chain(frac).all(|&d| d == b'0');
    if negative && !zero {
        out.push(b'-');
    }
    // The integral part, from its first non-zero digit.
    let first = (0..point.min(len)).find(|&k| digit(k) != b'0');
    match first {
        None => out.push(b'0'),
        Some(f) => out.extend((f..point).map(digit)),
    }
    if scale > 0 {
        out.push(b'.');
        out.extend((point..point + scale).map(digit));
    }
}

/// Pushes `c` as `jsonb` prints it; `true` when that is an escape.
fn push_char(out: &mut Vec<u8>, c: char) -> bool {
    let escape: &[u8] = match c {
        '"' => b"\\\"",
        '\\' => b"\\\\",
        '\u{8}' => b"\\b",
        '\u{c}' => b"\\f",
        '\n' => b"\\n",
        '\r' => b"\\r",
        '\t' => b"\\t",
        c if (c as u32) < 0x20 => {
            out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            return true;
        }
        c => {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            return false;
        }
    };
    out.extend_from_slice(escape);
    true
}

/// What most key comparisons need: a key's length and first eight bytes (unescaped).
fn sort_key(text: &[u8]) -> (usize, u64) {
    let mut prefix = [0u8; 8];
    let n = text.len().min(8);
    prefix[..n].copy_from_slice(&text[..n]);
    (text.len(), u64::from_be_bytes(prefix))
}

/// `jsonb`'s key order: shorter first, then by bytes, of the keys' unescaped text.
fn key_order(out: &[u8], a: &Member, b: &Member) -> Ordering {
    match a.order.cmp(&b.order) {
        Ordering::Equal if a.order.0 > 8 => {}
        decided => return decided,
    }
    let text = |m: &Member| &out[m.key.0..m.key.1];
    if !a.escaped && !b.escaped {
        let (a, b) = (text(a), text(b));
        return a.len().cmp(&b.len()).then_with(|| a.cmp(b));
    }
    let (a, b) = (unescape(text(a), a.escaped), unescape(text(b), b.escaped));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

/// The text of a key written by `push_char`.
fn unescape(text: &[u8], escaped: bool) -> std::borrow::Cow<'_, [u8]> {
    if !escaped {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            out.push(text[i]);
            i += 1;
            continue;
        }
        let (byte, width) = match text.get(i + 1) {
            Some(b'b') => (8, 2),
            Some(b'f') => (12, 2),
            Some(b'n') => (b'\n', 2),
            Some(b'r') => (b'\r', 2),
            Some(b't') => (b'\t', 2),
            Some(b'u') => {
                let hex = std::str::from_utf8(&text[i + 2..i + 6]).unwrap_or("0");
                (u8::from_str_radix(hex, 16).unwrap_or(0), 6)
            }
            Some(&c) => (c, 2),
            None => (b'\\', 1),
        };
        out.push(byte);
        i += width;
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn objects_are_ordered_and_spaced_as_jsonb_prints_them() {
        let c = |s| canonical(s).unwrap();
        assert_eq!(
            c(r#"{"id":1,"email":"a@b","first_name":"A","x":[1,{}]}"#),
            r#"{"x": [1, {}], "id": 1, "email": "a@b", "first_name": "A"}"#
        );
        assert_eq!(c(r#"{"b":1,"a":2,"b":3}"#), r#"{"a": 2, "b": 3}"#);
        assert_eq!(
            c(r#"{"bb":-0.0,"a":"x\"\u00e9","c":-1.50,"a":null}"#),
            r#"{"a": null, "c": -1.50, "bb": 0.0}"#
        );
        assert_eq!(c(r#" [ ] "#), "[]");
        assert_eq!(
            c(r#"{"a\"b":"\u00e9\n\u0001\/"}"#),
            "{\"a\\\"b\": \"é\\n\\u0001/\"}"
        );
    }

    #[test]
    fn an_order_seen_before_is_recognised_only_for_the_same_keys() {
        let c = |s| canonical(s).unwrap();
        for _ in 0..2 {
            assert_eq!(c(r#"{"bb":1,"a":2}"#), r#"{"a": 2, "bb": 1}"#);
            assert_eq!(c(r#"{"a":3,"bb":4}"#), r#"{"a": 3, "bb": 4}"#);
            assert_eq!(c(r#"{"bb":5,"a":6,"bb":7}"#), r#"{"a": 6, "bb": 7}"#);
            assert_eq!(c(r#"{"bb":8,"ab":9}"#), r#"{"ab": 9, "bb": 8}"#);
            assert_eq!(c(r#"{"b":8,"ab":9}"#), r#"{"b": 8, "ab": 9}"#);
        }
        // More key lists than are kept: each still in its own order.
        for n in 0..40 {
            let text = format!(r#"{{"k{n}":1,"a":2}}"#);
            assert_eq!(
                canonical(&text).unwrap(),
                format!(r#"{{"a": 2, "k{n}": 1}}"#)
            );
        }
    }

    #[test]
    fn numbers_are_printed_as_numeric_prints_them() {
        let cases = [
            ("1.0E10", "10000000000"),
            ("1.50", "1.50"),
            ("-0", "0"),
            ("-0.00", "0.00"),
            ("1.5e-3", "0.0015"),
            ("100e-1", "10.0"),
            ("12.34e1", "123.4"),
            ("0.000", "0.000"),
            ("-7", "-7"),
            ("5e+2", "500"),
            ("-102e+0", "-102"),
            ("-0", "0"),
        ];
        for (input, printed) in cases {
            assert_eq!(canonical(input).as_deref(), Some(printed), "{input}");
        }
    }

    #[test]
    fn special_bytes_are_found_where_they_are() {
        let text = b"abcdefghijklmnop\"qrstuvwxyz\\\x01\xc3\xa9";
        for start in 0..text.len() {
            let expected = text[start..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(super::special_at(&text[start..]), expected, "from {start}");
        }
        assert_eq!(super::special_at("é€😀 plain".as_bytes()), None);
    }

    #[test]
    fn what_jsonb_refuses_is_refused() {
        for bad in [
            r#""\u0000""#,
            r#""\ud800""#,
            "01",
            "1.",
            "{",
            "[1,]",
            "1e1001",
            "\"a\u{1}\"",
            r#"{"a":"\u0000","a":1}"#,
            r#"{"a":1,"b":"\q"}"#,
        ] {
            assert_eq!(canonical(bad), None, "{bad}");
        }
    }
}
