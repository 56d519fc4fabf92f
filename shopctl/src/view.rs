//! How records are shown: one JSON object per record for scripts (`replay`, `--json`),
//! or a block with the key, the headers and the value pretty-printed for people
//! (`tail`, `read`).

use std::fmt::Write;

use event_store::scan::ScannedRecord;
use serde_json::{Map, Value, json};

/// The record as one JSON object: where it is, its key and headers, and its value (parsed
/// when it is JSON, as text otherwise).
pub fn as_json(record: &ScannedRecord) -> Value {
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
        "value": value_of(record),
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

/// The record for a person: a heading line, the key, every header, the value indented.
pub fn pretty(record: &ScannedRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "── {} partition {} offset {}  {}",
        record.topic,
        record.partition,
        record.offset,
        record
            .timestamp
            .map_or_else(|| "(no timestamp)".into(), |t| t.to_rfc3339())
    );
    let _ = writeln!(
        out,
        "key: {}",
        record.key_text().unwrap_or_else(|| "(none)".into())
    );
    for (name, value) in &record.headers {
        let _ = writeln!(out, "  {name}: {value}");
    }
    let value = value_of(record);
    let text = match &value {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    out.push_str(&text);
    out.push('\n');
    out
}

/// `record` in the chosen form, ready to print.
pub fn render(record: &ScannedRecord, json: bool) -> String {
    if json {
        as_json(record).to_string()
    } else {
        pretty(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> ScannedRecord {
        ScannedRecord {
            topic: "orders.events".into(),
            partition: 1,
            offset: 42,
            timestamp: None,
            key: Some(b"o-1".to_vec()),
            payload: Some(payload.to_vec()),
            headers: vec![("ce_type".into(), "OrderPlaced".into())],
        }
    }

    #[test]
    fn json_values_are_nested_and_other_bytes_are_text() {
        let shown = as_json(&record(br#"{"type":"OrderPlaced"}"#));
        assert_eq!(shown["value"]["type"], "OrderPlaced");
        assert_eq!(shown["headers"]["ce_type"], "OrderPlaced");
        assert_eq!(shown["key"], "o-1");
        assert_eq!(as_json(&record(b"not json"))["value"], "not json");
    }

    #[test]
    fn the_pretty_form_shows_key_headers_and_indented_json() {
        let text = pretty(&record(br#"{"type":"OrderPlaced"}"#));
        assert!(
            text.contains("orders.events partition 1 offset 42"),
            "{text}"
        );
        assert!(text.contains("key: o-1"));
        assert!(text.contains("  ce_type: OrderPlaced"));
        assert!(text.contains("{\n  \"type\": \"OrderPlaced\"\n}"), "{text}");
    }
}
