//! What the poll thread and the hole check both read from librdkafka: messages, copied out of its
//! buffers, and a partition's watermarks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message as _};

use crate::types::{Message, Tp};

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

/// Copies what the pipeline needs out of librdkafka's buffer; topic names are interned.
pub fn copy_message(
    topics: &mut HashMap<String, Arc<str>>,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Message {
    let topic = match topics.get(m.topic()) {
        Some(t) => t.clone(),
        None => {
            let t: Arc<str> = Arc::from(m.topic());
            topics.insert(m.topic().to_string(), t.clone());
            t
        }
    };
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    Message {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}
