//! Recomputing the chains from the stored rows alone, and naming the first broken link.
//!
//! Each chain is read in one snapshot on two connections: its audit rows and its transaction
//! events streamed in offset order (binary COPY), its rejections, gaps and amendments held in
//! memory (there are few). The rows merge in offset order, which is link order, and every link is
//! recomputed from the previous recomputed link, never from a stored one: a row changed,
//! removed, added or moved breaks the chain where it is, unless every later link (and the head)
//! was forged as well, which only a digest taken earlier, kept outside, can show.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::iter::Peekable;

use postgres::{Client, IsolationLevel};

use super::digest::Digest;
use crate::chain::{self, Hash, Kind};
use crate::sink::{
    self, Stored, Target, Tuples, AMENDMENTS, AUDIT, GAPS, REJECTIONS, TRANSACTIONS,
};

/// What `cdc-audit verify` checks.
#[derive(Debug, Default, Clone)]
pub struct Scope {
    /// Only links written at or after this time (anything PostgreSQL reads as a timestamptz):
    /// the first such link of each chain is trusted as the start.
    pub from: Option<String>,
    /// Only the chains of the topics that hold this table's changes.
    pub table: Option<String>,
    /// Each chain must pass through the link this digest signed.
    pub digest: Option<Digest>,
}

/// What is wrong with a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The row's content (or its time, or its link) is not what the link was made with.
    Changed,
    /// Links are missing: rows deleted.
    Missing,
    /// A row that is not a link of this chain, or a second row with a link's number.
    Inserted,
    /// Rows in another order than their links.
    Reordered,
    /// Recomputed consistently, but not the chain a digest signed.
    Rewritten,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Problem::Changed => "changed",
            Problem::Missing => "missing",
            Problem::Inserted => "inserted",
            Problem::Reordered => "reordered",
            Problem::Rewritten => "rewritten",
        })
    }
}

/// The first broken link of a chain: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub problem: Problem,
    /// The row where the break shows: its table, id and Kafka offset, when there is a row.
    pub table: Option<&'static str>,
    pub id: Option<i64>,
    pub offset: Option<i64>,
    /// The link number where the chain breaks.
    pub seq: i64,
    pub detail: String,
}

/// One chain's result.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// Links checked.
    pub links: i64,
    /// Rows written before the chain began (no link).
    pub unlinked: i64,
    /// Links whose row was replayed, purged or erased, by amendments that verify.
    pub amended: i64,
    /// Of those, the links whose row was erased (redacted): intact, not broken.
    pub erased: i64,
    /// Rows of links archived and dropped (retention) that remain in other tables: not checked.
    pub archived: i64,
    /// The last archived link; the chain here starts after it.
    pub archived_through: i64,
    pub broken: Option<Break>,
}

/// The result of a verification: every chain in scope.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub chains: Vec<ChainReport>,
    /// Chains a digest signed that the database no longer has.
    pub vanished: Vec<String>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.vanished.is_empty() && self.chains.iter().all(|c| c.broken.is_none())
    }

    pub fn links(&self) -> i64 {
        self.chains.iter().map(|c| c.links).sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let chains: Vec<serde_json::Value> = self
            .chains
            .iter()
            .map(|c| {
                serde_json::json!({
                    "consumer_group": c.group, "topic": c.topic, "partition": c.partition,
                    "links": c.links, "amended": c.amended, "erased": c.erased,
                    "archived_through": c.archived_through,
                    "unlinked": c.unlinked,
                    "broken": c.broken.as_ref().map(|b| serde_json::json!({
                        "problem": b.problem.to_string(), "seq": b.seq, "table": b.table,
                        "id": b.id, "offset": b.offset, "detail": b.detail,
                    })),
                })
            })
            .collect();
        serde_json::json!({
            "intact": self.intact(), "links": self.links(), "chains": chains,
            "vanished": self.vanished,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.chains {
            write!(
                f,
                "{} {}/{}: {} links",
                c.group, c.topic, c.partition, c.links
            )?;
            if c.amended > 0 {
                write!(f, " ({} amended", c.amended)?;
                if c.erased > 0 {
                    write!(f, ", {} of them erased", c.erased)?;
                }
                write!(f, ")")?;
            }
            if c.unlinked > 0 {
                write!(f, ", {} rows from before the chain began", c.unlinked)?;
            }
            if c.archived_through > 0 {
                write!(f, ", links up to {} archived", c.archived_through)?;
            }
            match &c.broken {
                None => writeln!(f, ": intact")?,
                Some(b) => {
                    write!(f, ": BROKEN at link {}: {}", b.seq, b.problem)?;
                    if let (Some(table), Some(id)) = (b.table, b.id) {
                        write!(f, ", {table} id {id}")?;
                    }
                    if let Some(offset) = b.offset {
                        write!(f, " (offset {offset})")?;
                    }
                    writeln!(f, ": {}", b.detail)?;
                }
            }
        }
        for v in &self.vanished {
            writeln!(
                f,
                "{v}: signed by the digest, but not in the database: BROKEN: missing"
            )?;
        }
        let verdict = if self.intact() { "intact" } else { "BROKEN" };
        write!(
            f,
            "{} chains, {} links: {verdict}",
            self.chains.len(),
            self.links()
        )
    }
}

/// A chain as `audit_positions` has it.
#[derive(Debug, Clone)]
struct ChainHead {
    group: String,
    topic: String,
    partition: i32,
    seq: i64,
    head: Option<Vec<u8>>,
}

/// Verifies every chain in scope, on two connections that `connect` opens.
pub fn verify(
    connect: impl Fn() -> Result<Client, String>,
    scope: &Scope,
) -> Result<Report, String> {
    let (mut a, mut b) = (connect()?, connect()?);
    let err = |e: postgres::Error| sink::with_causes(&e);
    // Both connections read the one snapshot.
    let mut ta = read_only(&mut a)?;
    let snapshot: String = ta
        .query_one("SELECT pg_export_snapshot()", &[])
        .map_err(err)?
        .get(0);
    let mut tb = read_only(&mut b)?;
    tb.batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", literal(&snapshot)))
        .map_err(err)?;

    if scope.from.is_some() && scope.digest.is_some() {
        return Err("--digest checks chains from their start: leave out --from".into());
    }
    let from: Option<i64> = match &scope.from {
        None => None,
        Some(t) => Some(
            tb.query_one(
                "SELECT (extract(epoch FROM $1::text::timestamptz) * 1000000)::int8",
                &[t],
            )
            .map_err(|e| format!("--from {t:?} is not a time PostgreSQL reads: {}", err(e)))?
            .get(0),
        ),
    };
    let topics: Option<Vec<String>> = match &scope.table {
        None => None,
        Some(t) => Some(
            tb.query(
                "SELECT DISTINCT kafka_topic FROM audit_logging WHERE source_table = $1",
                &[t],
            )
            .map_err(err)?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        ),
    };
    let heads: Vec<ChainHead> = tb
        .query(
            "SELECT consumer_group, topic, partition, chain_seq, chain_head FROM audit_positions \
             WHERE chain_seq > 0 ORDER BY consumer_group, topic, partition",
            &[],
        )
        .map_err(err)?
        .iter()
        .map(|r| ChainHead {
            group: r.get(0),
            topic: r.get(1),
            partition: r.get(2),
            seq: r.get(3),
            head: r.get(4),
        })
        .filter(|h| topics.as_ref().is_none_or(|t| t.contains(&h.topic)))
        .collect();

    let mut report = Report::default();
    if let Some(d) = &scope.digest {
        for c in &d.chains {
            let here = heads
                .iter()
                .any(|h| h.group == c.group && h.topic == c.topic && h.partition == c.partition);
            let in_scope = topics.as_ref().is_none_or(|t| t.contains(&c.topic));
            if !here && in_scope {
                report
                    .vanished
                    .push(format!("{} {}/{}", c.group, c.topic, c.partition));
            }
        }
    }
    for head in heads {
        let signed = scope.digest.as_ref().and_then(|d| {
            d.chains
                .iter()
                .find(|c| {
                    c.group == head.group && c.topic == head.topic && c.partition == head.partition
                })
                .map(|c| (c.seq, c.head))
        });
        report
            .chains
            .push(verify_chain(&mut ta, &mut tb, &head, from, signed)?);
    }
    Ok(report)
}

/// A row of the chain being walked.
#[derive(Debug)]
struct Item {
    table: &'static str,
    id: i64,
    offset: i64,
    stored: Stored,
}

/// An amendment of a link, as stored.
#[derive(Debug)]
struct Amend {
    was: Hash,
    now: Option<Hash>,
    erased: bool,
}

fn verify_chain(
    ta: &mut postgres::Transaction<'_>,
    tb: &mut postgres::Transaction<'_>,
    head: &ChainHead,
    from: Option<i64>,
    signed: Option<(i64, Hash)>,
) -> Result<ChainReport, String> {
    let err = |e: postgres::Error| sink::with_causes(&e);
    let of_chain = format!(
        "WHERE kafka_topic = {} AND kafka_partition = {}",
        literal(&head.topic),
        head.partition
    );
    // With --from, the chain is read from the first row written since, by offset.
    let start: Option<i64> = match from {
        None => None,
        Some(unix_us) => {
            let since = format!("'epoch'::timestamptz + {unix_us} * interval '1 microsecond'");
            let mut first: Option<i64> = None;
            for (target, offset) in [
                (AUDIT, "kafka_offset"),
                (TRANSACTIONS, "kafka_offset"),
                (REJECTIONS, "kafka_offset"),
                (GAPS, "first_offset"),
            ] {
                let sql = format!(
                    "SELECT min({offset}) FROM {} {of_chain} AND chain_seq IS NOT NULL AND {} >= {since}",
                    target.table, target.time
                );
                let min: Option<i64> = tb.query_one(&sql, &[]).map_err(err)?.get(0);
                first = match (first, min) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            Some(first.unwrap_or(i64::MAX))
        }
    };
    let since = start.map_or(String::new(), |s| format!("AND {{offset}} >= {s}"));
    let select = |target: Target, offset: &str| {
        let gap_group = if target.table == GAPS.table {
            format!(" AND consumer_group = {}", literal(&head.group))
        } else {
            String::new()
        };
        sink::copy_out(
            target,
            &format!("id, {offset}"),
            &format!(
                "{of_chain}{gap_group} {} ORDER BY {offset}",
                since.replace("{offset}", offset)
            ),
        )
    };
    let read_all =
        |tx: &mut postgres::Transaction<'_>, target: Target, kind: Kind, offset: &str| {
            let mut items = Vec::new();
            let mut tuples = Tuples::new(tx.copy_out(&select(target, offset)).map_err(err)?);
            while let Some((_, fields)) = tuples.next_tuple().map_err(|e| e.to_string())? {
                items.push(item(target.table, kind, fields)?);
            }
            Ok::<_, String>(items)
        };
    let rejections = read_all(tb, REJECTIONS, Kind::Rejection, "kafka_offset")?;
    let gaps = read_all(tb, GAPS, Kind::Gap, "first_offset")?;

    // Amendments: by the link they amend, and as links themselves.
    let sql = sink::copy_out(
        AMENDMENTS,
        "id, target_seq, was_entry, now_entry, action",
        &format!(
            "WHERE consumer_group = {} AND kafka_topic = {} AND kafka_partition = {} ORDER BY chain_seq",
            literal(&head.group),
            literal(&head.topic),
            head.partition
        ),
    );
    let mut amends: BTreeMap<i64, Vec<Amend>> = BTreeMap::new();
    let mut archived: Option<(i64, Hash)> = None;
    let mut amendment_links: HashMap<i64, Item> = HashMap::new();
    {
        let mut tuples = Tuples::new(tb.copy_out(&sql).map_err(err)?);
        while let Some((_, fields)) = tuples.next_tuple().map_err(|e| e.to_string())? {
            let stored = sink::stored(Kind::Amendment, fields, 5)
                .ok_or("an amendment row that is not what verify selected")?;
            let int8 = |i: usize| {
                stored.extra[i]
                    .as_deref()
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, i64::from_be_bytes)
            };
            let hash = |i: usize| {
                stored.extra[i]
                    .as_deref()
                    .and_then(|b| Hash::try_from(b).ok())
            };
            let action = stored.extra[4].as_deref().unwrap_or_default();
            if action == b"archived" {
                // Links up to the target were archived: the chain here starts after it.
                if archived.is_none_or(|(seq, _)| seq < int8(1)) {
                    archived = Some((int8(1), hash(2).unwrap_or_default()));
                }
            } else if stored.extra[1].is_some() {
                amends.entry(int8(1)).or_default().push(Amend {
                    was: hash(2).unwrap_or_default(),
                    now: hash(3),
                    erased: action == b"erased",
                });
            }
            if let Some(seq) = stored.seq {
                let id = int8(0);
                amendment_links.insert(
                    seq,
                    Item {
                        table: AMENDMENTS.table,
                        id,
                        offset: -1,
                        stored,
                    },
                );
            }
        }
    }

    let rows = Stream {
        tuples: Tuples::new(ta.copy_out(&select(AUDIT, "kafka_offset")).map_err(err)?),
        table: AUDIT.table,
        kind: Kind::Row,
    };
    let events = Stream {
        tuples: Tuples::new(
            tb.copy_out(&select(TRANSACTIONS, "kafka_offset"))
                .map_err(err)?,
        ),
        table: TRANSACTIONS.table,
        kind: Kind::Transaction,
    };
    let merged = Merge::new(vec![
        Box::new(rows),
        Box::new(events),
        Box::new(rejections.into_iter().map(Ok)),
        Box::new(gaps.into_iter().map(Ok)),
    ]);

    let mut walk = Walk {
        report: ChainReport {
            group: head.group.clone(),
            topic: head.topic.clone(),
            partition: head.partition,
            links: 0,
            unlinked: 0,
            amended: 0,
            erased: 0,
            archived: 0,
            archived_through: archived.map_or(0, |(seq, _)| seq),
            broken: None,
        },
        expected: archived.map_or(1, |(seq, _)| seq + 1),
        prev: archived.map_or_else(
            || chain::genesis(&head.group, &head.topic, head.partition),
            |(_, link)| link,
        ),
        head_seq: head.seq,
        amends,
        amendment_links,
        signed: signed.filter(|(seq, _)| archived.is_none_or(|(a, _)| *seq > a)),
        anchored: start.is_none(),
        archived_through: archived.map_or(0, |(seq, _)| seq),
        seen_link: false,
    };
    walk.run(merged.peekable())?;
    if walk.report.broken.is_none() {
        walk.finish(head);
    }
    Ok(walk.report)
}

/// One row of a `select` tuple: id and offset first.
fn item(table: &'static str, kind: Kind, fields: &[u8]) -> Result<Item, String> {
    let stored = sink::stored(kind, fields, 2)
        .ok_or_else(|| format!("a row of {table} that is not what verify selected"))?;
    let int8 = |i: usize| {
        stored.extra[i]
            .as_deref()
            .and_then(|b| b.try_into().ok())
            .map_or(0, i64::from_be_bytes)
    };
    Ok(Item {
        table,
        id: int8(0),
        offset: int8(1),
        stored,
    })
}

/// The rows of one table, streamed.
struct Stream<R> {
    tuples: Tuples<R>,
    table: &'static str,
    kind: Kind,
}

impl<R: std::io::Read> Iterator for Stream<R> {
    type Item = Result<Item, String>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.tuples.next_tuple() {
            Ok(Some((_, fields))) => Some(item(self.table, self.kind, fields)),
            Ok(None) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }
}

/// The rows of one table in offset order, whichever way they are read.
type Rows<'a> = Box<dyn Iterator<Item = Result<Item, String>> + 'a>;

/// Merges streams that are each in offset order.
struct Merge<'a> {
    streams: Vec<Peekable<Rows<'a>>>,
}

impl<'a> Merge<'a> {
    fn new(streams: Vec<Rows<'a>>) -> Self {
        Merge {
            streams: streams.into_iter().map(Iterator::peekable).collect(),
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Item, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, i64)> = None;
        for (i, s) in self.streams.iter_mut().enumerate() {
            match s.peek() {
                None => {}
                Some(Err(_)) => return s.next(),
                Some(Ok(item)) if best.is_none_or(|(_, o)| item.offset < o) => {
                    best = Some((i, item.offset));
                }
                Some(Ok(_)) => {}
            }
        }
        best.and_then(|(i, _)| self.streams[i].next())
    }
}

/// The state of one chain's walk.
struct Walk {
    report: ChainReport,
    /// The number of the next link.
    expected: i64,
    /// The recomputed link before it.
    prev: Hash,
    head_seq: i64,
    amends: BTreeMap<i64, Vec<Amend>>,
    amendment_links: HashMap<i64, Item>,
    signed: Option<(i64, Hash)>,
    /// Whether a link has been trusted or computed from the start yet.
    anchored: bool,
    /// Links up to this one were archived (retention): their rows that remain are not checked.
    archived_through: i64,
    /// Whether a linked row has been read yet.
    seen_link: bool,
}

impl Walk {
    fn run(
        &mut self,
        mut items: Peekable<impl Iterator<Item = Result<Item, String>>>,
    ) -> Result<(), String> {
        loop {
            if !self.between()? {
                return Ok(());
            }
            let Some(item) = items.next().transpose()? else {
                return Ok(());
            };
            let Some(seq) = item.stored.seq else {
                if !self.seen_link && self.anchored {
                    self.report.unlinked += 1;
                    continue;
                }
                return self.broke(
                    Problem::Inserted,
                    Some(&item),
                    "a row with no link, among linked rows",
                );
            };
            self.seen_link = true;
            if seq <= self.archived_through {
                self.report.archived += 1;
                continue;
            }
            if !self.anchored {
                // --from: the first link read is trusted as the start.
                self.anchored = true;
                self.expected = seq + 1;
                self.prev = item
                    .stored
                    .link
                    .as_deref()
                    .and_then(|l| l.try_into().ok())
                    .unwrap_or_default();
                self.report.links += 1;
                continue;
            }
            if seq < self.expected {
                return self.broke(
                    Problem::Inserted,
                    Some(&item),
                    &format!("link {seq} appears a second time"),
                );
            }
            if seq > self.expected {
                let next_fits =
                    matches!(items.peek(), Some(Ok(n)) if n.stored.seq == Some(self.expected));
                return if next_fits {
                    self.broke(
                        Problem::Reordered,
                        Some(&item),
                        &format!(
                            "holds link {seq}, and the row after it link {}",
                            self.expected
                        ),
                    )
                } else {
                    self.broke(
                        Problem::Missing,
                        Some(&item),
                        &format!(
                            "links {} to {} are gone before this row",
                            self.expected,
                            seq - 1
                        ),
                    )
                };
            }
            match self.link_of(&item) {
                Err(detail) => return self.broke(Problem::Changed, Some(&item), &detail),
                Ok(link) if Some(&link[..]) == item.stored.link.as_deref() => self.advance(link)?,
                Ok(_) => {
                    let twin = matches!(items.peek(), Some(Ok(n))
                        if n.stored.seq == Some(seq) && self.link_of(n).ok().as_ref().map(|l| &l[..]) == n.stored.link.as_deref());
                    return if twin || seq > self.head_seq {
                        self.broke(Problem::Inserted, Some(&item), "not a link of this chain")
                    } else {
                        self.broke(
                            Problem::Changed,
                            Some(&item),
                            "its content, time or link is not what the chain was made with",
                        )
                    };
                }
            }
        }
    }

    /// The link an item makes after `prev`, or why it cannot be one.
    fn link_of(&self, item: &Item) -> Result<Hash, String> {
        let seq = item.stored.seq.unwrap_or_default();
        let entry = match self.amends.get(&seq) {
            None => item.stored.entry,
            Some(list) => {
                let now = list.last().and_then(|a| a.now);
                if now != Some(item.stored.entry) {
                    return Err("not the row its last amendment put there".into());
                }
                list[0].was
            }
        };
        Ok(chain::link(&self.prev, seq, &entry))
    }

    /// Takes the links that have no row in the offset streams: amendments, and links whose row
    /// was removed by one. `false` once the chain is broken.
    fn between(&mut self) -> Result<bool, String> {
        loop {
            if self.report.broken.is_some() {
                return Ok(false);
            }
            if !self.anchored {
                return Ok(true);
            }
            if let Some(a) = self.amendment_links.remove(&self.expected) {
                let link = chain::link(&self.prev, self.expected, &a.stored.entry);
                if Some(&link[..]) != a.stored.link.as_deref() {
                    self.broke(
                        Problem::Changed,
                        Some(&a),
                        "an amendment that is not what the chain was made with",
                    )?;
                    return Ok(false);
                }
                self.advance(link)?;
                continue;
            }
            let removed = self
                .amends
                .get(&self.expected)
                .filter(|list| list.last().is_some_and(|a| a.now.is_none()))
                .map(|list| list[0].was);
            if let Some(was) = removed {
                let link = chain::link(&self.prev, self.expected, &was);
                self.advance(link)?;
                continue;
            }
            return Ok(true);
        }
    }

    fn advance(&mut self, link: Hash) -> Result<(), String> {
        if let Some(list) = self.amends.get(&self.expected) {
            self.report.amended += 1;
            if list.iter().any(|a| a.erased) {
                self.report.erased += 1;
            }
        }
        if let Some((seq, head)) = self.signed {
            if seq == self.expected && head != link {
                self.broke(
                    Problem::Rewritten,
                    None,
                    "every link verifies, but this is not the link the digest signed: the chain was recomputed since",
                )?;
                return Ok(());
            }
        }
        self.prev = link;
        self.expected += 1;
        self.report.links += 1;
        Ok(())
    }

    fn broke(&mut self, problem: Problem, item: Option<&Item>, detail: &str) -> Result<(), String> {
        if self.report.broken.is_none() {
            self.report.broken = Some(Break {
                problem,
                table: item.map(|i| i.table),
                id: item.map(|i| i.id),
                offset: item.map(|i| i.offset).filter(|&o| o >= 0),
                seq: self.expected,
                detail: detail.to_string(),
            });
        }
        Ok(())
    }

    /// After the last row: the links up to the head must all be there, and end at the head.
    fn finish(&mut self, head: &ChainHead) {
        let last = self.expected - 1;
        if !self.anchored {
            return;
        }
        if last < head.seq {
            let _ = self.broke(
                Problem::Missing,
                None,
                &format!(
                    "the chain's head is link {}, but its rows end at link {last}",
                    head.seq
                ),
            );
        } else if last > head.seq || head.head.as_deref() != Some(&self.prev[..]) {
            let _ = self.broke(
                Problem::Changed,
                None,
                "the head stored in audit_positions is not the last link",
            );
        }
        if let Some((seq, _)) = self.signed.filter(|&(seq, _)| seq > last) {
            let _ = self.broke(
                Problem::Missing,
                None,
                &format!("the digest signed link {seq}, the chain ends at link {last}"),
            );
        }
    }
}

/// A repeatable-read, read-only transaction.
fn read_only(c: &mut Client) -> Result<postgres::Transaction<'_>, String> {
    c.build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| sink::with_causes(&e))
}

/// A SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
