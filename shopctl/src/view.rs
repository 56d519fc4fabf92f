//! How records are shown: one JSON object per record for scripts (`replay`, `--json`),
//! or a block with the key, the headers and the value pretty-printed for people
//! (`tail`, `read`); the JSON form is [`inspection::record`]'s. Sealed personal fields are shown opened with their users' keys, and as
//! `[forgotten]` once a user was forgotten ([`Opener`]).

use std::fmt::Write;

use event_store::scan::ScannedRecord;
use inspection::record::{as_json, value_of};
use serde_json::Value;
use service_runtime::Infrastructure;
use service_runtime::personal_data::KeyStore;

use crate::connect;

/// Opens the sealed personal fields of the records shown, with the users' keys in
/// Postgres. Without them (Postgres unreachable, the keys' table missing or not readable)
/// the fields stay sealed and a note on stderr says why, once: reading the log needs only
/// the broker.
#[derive(Clone, Debug)]
pub struct Opener {
    keys: Option<KeyStore>,
}

impl Opener {
    pub async fn connect(infra: &Infrastructure) -> Self {
        match connect::postgres(infra, 2).await {
            Ok(pool) => Self {
                keys: Some(KeyStore::new(pool)),
            },
            Err(e) => {
                sealed_because(e.as_ref());
                Self { keys: None }
            }
        }
    }

    /// The values of `records` (see [`value_of`]), their sealed fields opened: one round
    /// trip for the keys of the whole batch, bounded by [`KEYS_WITHIN`].
    pub async fn values(&mut self, records: &[ScannedRecord]) -> Vec<Value> {
        let mut values: Vec<Value> = records.iter().map(value_of).collect();
        let Some(keys) = &self.keys else {
            return values;
        };
        let found = tokio::time::timeout(KEYS_WITHIN, keys.for_values(values.iter())).await;
        match found {
            Ok(Ok(keyring)) => values.iter_mut().for_each(|v| keyring.open_json(v)),
            Ok(Err(e)) => {
                sealed_because(&e);
                self.keys = None;
            }
            Err(_) => {
                let late = format!("the users' keys were not read within {KEYS_WITHIN:?}");
                sealed_because(&*anyhow::anyhow!(late));
                self.keys = None;
            }
        }
        values
    }
}

/// How long one look-up of keys may take before shopctl goes on with the fields sealed.
const KEYS_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

fn sealed_because(reason: &(dyn std::error::Error + 'static)) {
    let reason = service_runtime::telemetry::one_line(reason);
    eprintln!("shopctl: personal fields are shown sealed from here on: {reason}");
}

/// The record for a person: a heading line, the key, every header, `value` indented.
pub fn pretty(record: &ScannedRecord, value: &Value) -> String {
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
    let text = match value {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    };
    out.push_str(&text);
    out.push('\n');
    out
}

/// `record` with `value` in the chosen form, ready to print.
pub fn render(record: &ScannedRecord, value: Value, json: bool) -> String {
    if json {
        as_json(record, value).to_string()
    } else {
        pretty(record, &value)
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
    fn the_pretty_form_shows_key_headers_and_indented_json() {
        let order = record(br#"{"type":"OrderPlaced"}"#);
        let text = pretty(&order, &value_of(&order));
        assert!(
            text.contains("orders.events partition 1 offset 42"),
            "{text}"
        );
        assert!(text.contains("key: o-1"));
        assert!(text.contains("  ce_type: OrderPlaced"));
        assert!(text.contains("{\n  \"type\": \"OrderPlaced\"\n}"), "{text}");
    }
}
