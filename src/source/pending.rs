//! A partition's batch while the poll thread fills it. Each message's key and value are copied
//! out of librdkafka's buffer into a chunk, which the messages share (`types::Bytes`) once it is
//! full or the batch is handed on: a batch of 2 000 makes, and its writer frees, a few dozen
//! blocks for its messages' bytes instead of 4 000, and glibc frees a block another thread made
//! under that thread's arena lock.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::Message as KafkaMessage;

use super::read::headers;
use crate::types::{headers_size, Batch, Bytes, Gap, Load, Message, Tp};

/// The first chunk's room; each next one's is twice the last's, up to [`CHUNK`].
const FIRST_CHUNK: usize = 4 << 10;
/// The largest chunk: below glibc's threshold for `mmap` (128 KiB), so that chunks are made and
/// freed in the heap, not mapped and unmapped. A larger message gets a chunk of its own size.
const CHUNK: usize = 64 << 10;

/// A message whose key and value are in the open chunk, at these ranges.
struct Unsealed {
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

pub struct Pending {
    /// Holds the messages of the chunks sealed so far.
    batch: Batch,
    chunk: Vec<u8>,
    unsealed: Vec<Unsealed>,
}

impl Pending {
    /// `batch` holds no message yet.
    pub fn new(batch: Batch) -> Self {
        Pending {
            batch,
            chunk: Vec::new(),
            unsealed: Vec::new(),
        }
    }

    pub fn tp(&self) -> &Tp {
        &self.batch.tp
    }

    pub fn created(&self) -> Instant {
        self.batch.created
    }

    pub fn load(&self) -> Load {
        Load {
            messages: self.batch.messages.len() + self.unsealed.len(),
            bytes: self.batch.bytes,
        }
    }

    /// Takes `m`, whose offset follows every message here, copying its bytes.
    pub fn push(&mut self, m: &impl KafkaMessage) {
        let (key, payload) = (m.key(), m.payload());
        let len = |b: Option<&[u8]>| b.map_or(0, <[u8]>::len);
        let size = len(key) + len(payload);
        if self.chunk.capacity() - self.chunk.len() < size {
            let room = (self.chunk.capacity() * 2).clamp(FIRST_CHUNK, CHUNK);
            self.seal();
            self.chunk = Vec::with_capacity(room.max(size));
        }
        let chunk = &mut self.chunk;
        let mut copy = |bytes: Option<&[u8]>| {
            bytes.map(|b| {
                let start = chunk.len();
                chunk.extend_from_slice(b);
                start..chunk.len()
            })
        };
        let unsealed = Unsealed {
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: copy(key),
            payload: copy(payload),
            headers: headers(m),
        };
        self.batch.bytes += size + headers_size(&unsealed.headers);
        self.batch.end = unsealed.offset + 1;
        self.unsealed.push(unsealed);
    }

    /// Takes a message copied already (one a hole's check found), whose offset follows every
    /// message here.
    pub fn push_copied(&mut self, msg: Message) {
        self.seal();
        self.batch.bytes += msg.size();
        self.batch.end = msg.offset + 1;
        self.batch.messages.push(msg);
    }

    pub fn holes(&mut self) -> &mut Vec<Gap> {
        &mut self.batch.holes
    }

    /// The batch, every message holding its bytes.
    pub fn finish(mut self) -> Batch {
        self.seal();
        self.batch
    }

    /// The unsealed messages take their bytes from the chunk, which they then share.
    fn seal(&mut self) {
        if self.unsealed.is_empty() {
            return;
        }
        let mut chunk = std::mem::take(&mut self.chunk);
        // The last chunk of a batch handed on early (a linger) may be mostly room: the
        // messages would hold it until their batch is written.
        if chunk.capacity() - chunk.len() > chunk.len() / 8 {
            chunk.shrink_to_fit();
        }
        let chunk = Arc::new(chunk);
        let bytes = |range: Option<Range<usize>>| range.map(|r| Bytes::shared(&chunk, r));
        let tp = &self.batch.tp;
        self.batch
            .messages
            .extend(self.unsealed.drain(..).map(|u| Message {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: u.offset,
                timestamp_ms: u.timestamp_ms,
                key: bytes(u.key),
                payload: bytes(u.payload),
                headers: u.headers,
            }));
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
    use rdkafka::Timestamp;

    use super::*;

    fn batch() -> Batch {
        Batch {
            id: 1,
            tp: Tp {
                topic: Arc::from("db.public.t"),
                partition: 3,
            },
            epoch: 1,
            start: Some(10),
            end: 11,
            holes: Vec::new(),
            messages: Vec::new(),
            bytes: 0,
            created: Instant::now(),
        }
    }

    /// Offset `10 + i`: keys but every seventh, values of 0 to 3 000 bytes, one of 100 KiB
    /// (more than a chunk), tombstones, and headers on every fifth.
    fn record(i: usize) -> OwnedMessage {
        let size = if i == 150 { 100 << 10 } else { i * 37 % 3000 };
        let payload = (i % 11 != 4).then(|| (0..size).map(|b| (b * i % 251) as u8).collect());
        let key = (i % 7 != 0).then(|| format!("{{\"id\":{i}}}").into_bytes());
        let headers = (i % 5 == 0).then(|| {
            OwnedHeaders::new()
                .insert(Header {
                    key: "trace",
                    value: Some(&i.to_be_bytes()[..]),
                })
                .insert(Header {
                    key: "none",
                    value: None::<&[u8]>,
                })
        });
        let at = Timestamp::CreateTime(1_700_000_000_000 + i as i64);
        OwnedMessage::new(
            payload,
            key,
            "db.public.t".into(),
            at,
            3,
            10 + i as i64,
            headers,
        )
    }

    fn copied(r: &OwnedMessage) -> Message {
        Message {
            topic: Arc::from(r.topic()),
            partition: r.partition(),
            offset: r.offset(),
            timestamp_ms: r.timestamp().to_millis(),
            key: r.key().map(|k| k.to_vec().into()),
            payload: r.payload().map(|p| p.to_vec().into()),
            headers: headers(r),
        }
    }

    #[test]
    fn messages_keep_their_bytes_and_share_a_few_chunks() {
        let records: Vec<OwnedMessage> = (0..400).map(record).collect();
        let mut pending = Pending::new(batch());
        for (i, r) in records.iter().enumerate() {
            if i == 200 {
                // What a hole's check found comes between.
                pending.push_copied(copied(r));
            } else {
                pending.push(r);
            }
        }
        let load = pending.load();
        let batch = pending.finish();

        assert_eq!(load.messages, 400);
        assert_eq!(batch.messages.len(), 400);
        assert_eq!(batch.end, 410);
        for (m, r) in batch.messages.iter().zip(&records) {
            assert_eq!(
                (&*m.topic, m.partition, m.offset),
                ("db.public.t", 3, r.offset())
            );
            assert_eq!(m.timestamp_ms, r.timestamp().to_millis());
            assert_eq!(m.key.as_deref(), r.key(), "offset {}", r.offset());
            assert_eq!(m.payload.as_deref(), r.payload(), "offset {}", r.offset());
            let hs = r.headers().map_or(0, |h| h.count());
            assert_eq!(m.headers.len(), hs);
            if hs > 0 {
                assert_eq!(m.headers[0].0, "trace");
                assert_eq!(m.headers[1], ("none".to_string(), None));
            }
        }
        let sizes: usize = batch.messages.iter().map(Message::size).sum();
        assert_eq!(load.bytes, sizes);
        assert_eq!(batch.bytes, sizes);

        // Where one message's bytes do not follow the last one's in memory, a block starts.
        let slices = batch
            .messages
            .iter()
            .flat_map(|m| [m.key.as_deref(), m.payload.as_deref()])
            .flatten()
            .filter(|b| !b.is_empty());
        let mut blocks = 0;
        let mut end = std::ptr::null();
        for b in slices {
            if b.as_ptr() != end {
                blocks += 1;
            }
            end = b.as_ptr_range().end;
        }
        // Full chunks, two ramps of four smaller ones (from the start, and after the copied
        // message), the large message's own, the copied message's own, two left part-full.
        let bytes: usize = records
            .iter()
            .map(|r| r.payload().map_or(0, <[u8]>::len))
            .sum();
        assert!(
            blocks <= bytes / CHUNK + 12,
            "{blocks} blocks for {bytes} bytes in 400 messages"
        );
    }
}
