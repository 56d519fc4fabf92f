//! How envelopes become Kafka records and back: key = aggregate id, value = the CloudEvents
//! JSON document, headers = the attributes tools filter on.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

/// Kafka headers from the `(name, value)` pairs an envelope lists.
pub fn to_kafka_headers(pairs: &[(&'static str, String)]) -> OwnedHeaders {
    pairs
        .iter()
        .fold(OwnedHeaders::new_with_capacity(pairs.len()), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
}

/// The headers of a consumed record as text pairs, in record order. Values that are not
/// UTF-8 (none of ours) are shown lossily.
pub fn header_pairs<M: Message>(message: &M) -> Vec<(String, String)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}
