//! What the poll thread and the hole check both read from librdkafka: messages, copied out of its
//! buffers, and a partition's watermarks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};

use crate::types::{self, Bytes, Tp};

/// The partition's first offset and its end; `None` (logged) if the broker cannot say.
pub fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tp: &Tp,
    timeout: Duration,
) -> Option<(i64, i64)> {
    consumer
        .fetch_watermarks(&tp.topic, tp.partition, timeout)
        .map_err(|e| log::warn!("watermarks of {}[{}]: {e}", tp.topic, tp.partition))
        .ok()
}

/// Copies what the pipeline needs out of librdkafka's buffer; topic names are interned. (The
/// poll thread copies the messages it takes into its batches' chunks: `Pending::push`.)
pub fn copy_message(
    topics: &mut HashMap<String, Arc<str>>,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> types::Message {
    types::Message {
        topic: interned(topics, m.topic()),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(|k| Bytes::from(k.to_vec())),
        payload: m.payload().map(|p| Bytes::from(p.to_vec())),
        headers: headers(m),
    }
}

/// The one `Arc` of a topic's name.
pub fn interned(topics: &mut HashMap<String, Arc<str>>, topic: &str) -> Arc<str> {
    match topics.get(topic) {
        Some(t) => t.clone(),
        None => {
            let t: Arc<str> = Arc::from(topic);
            topics.insert(topic.to_string(), t.clone());
            t
        }
    }
}

/// A message's headers, copied.
pub fn headers(m: &impl Message) -> Vec<(String, Option<Vec<u8>>)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}
