//! A record of the log as one JSON object: where it is, when, its key, its headers and its
//! value (nested when it is JSON). `shopctl replay` prints it, the console serves it.

use event_store::scan::ScannedRecord;
use serde_json::{Map, Value, json};

/// The record as one JSON object: where it is, its key and headers, and `value` (its
/// value as [`value_of`] gives it, maybe opened).
pub fn as_json(record: &ScannedRecord, value: Value) -> Value {
    let headers: Map<String, Value> = record
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp.map(|t| t.to_rfc3339()),
        "key": record.key_text(),
        "headers": headers,
        "value": value,
    })
}

/// The value as JSON when it parses, else as text; `null` for a record without one.
pub fn value_of(record: &ScannedRecord) -> Value {
    match record.payload.as_deref() {
        None => Value::Null,
        Some(bytes) => serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_are_nested_and_other_bytes_are_text() {
        let record = |payload: &[u8]| ScannedRecord {
            topic: "orders.events".into(),
            partition: 1,
            offset: 42,
            timestamp: None,
            key: Some(b"o-1".to_vec()),
            payload: Some(payload.to_vec()),
            headers: vec![("ce_type".into(), "OrderPlaced".into())],
        };
        let order = record(br#"{"type":"OrderPlaced"}"#);
        let shown = as_json(&order, value_of(&order));
        assert_eq!(shown["value"]["type"], "OrderPlaced");
        assert_eq!(shown["headers"]["ce_type"], "OrderPlaced");
        assert_eq!(shown["key"], "o-1");
        assert_eq!(value_of(&record(b"not json")), "not json");
    }
}
