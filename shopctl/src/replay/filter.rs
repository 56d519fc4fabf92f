//! Which records a replay keeps, decided from the record alone (no I/O). The fields come
//! from the CloudEvents headers our writers set (`ce_subject`, `ce_type`, `ce_time`,
//! `ce_correlationid`), and from the JSON value when a header is missing, so records
//! written by other tools are filtered the same way.

use chrono::{DateTime, Utc};
use event_store::scan::ScannedRecord;
use serde_json::Value;

/// What to keep; every given criterion must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The aggregate id (record key, or `subject`).
    pub aggregate: Option<String>,
    /// Any of these event types.
    pub types: Vec<String>,
    /// Occurred at or after.
    pub from: Option<DateTime<Utc>>,
    /// Occurred before.
    pub to: Option<DateTime<Utc>>,
    pub correlation: Option<String>,
}

/// The fields a filter looks at, read once per record.
#[derive(Debug, Default)]
struct Fields {
    subject: Option<String>,
    event_type: Option<String>,
    time: Option<DateTime<Utc>>,
    correlation: Option<String>,
}

impl Fields {
    fn of(record: &ScannedRecord) -> Self {
        let mut fields = Self {
            subject: record.header("ce_subject").map(str::to_owned),
            event_type: record.header("ce_type").map(str::to_owned),
            time: record.header("ce_time").and_then(parse_time),
            correlation: record.header("ce_correlationid").map(str::to_owned),
        };
        let complete = fields.subject.is_some()
            && fields.event_type.is_some()
            && fields.time.is_some()
            && fields.correlation.is_some();
        if !complete
            && let Some(value) = record
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        {
            let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
            fields.subject = fields.subject.or_else(|| text("subject"));
            fields.event_type = fields.event_type.or_else(|| text("type"));
            fields.time = fields
                .time
                .or_else(|| text("time").as_deref().and_then(parse_time));
            fields.correlation = fields.correlation.or_else(|| text("correlationid"));
        }
        fields.time = fields.time.or(record.timestamp);
        fields
    }
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Filter {
    /// Whether `record` is kept.
    pub fn matches(&self, record: &ScannedRecord) -> bool {
        if *self == Self::default() {
            return true;
        }
        let fields = Fields::of(record);
        let key = record.key_text();
        let aggregate_ok = self.aggregate.as_ref().is_none_or(|wanted| {
            key.as_ref() == Some(wanted) || fields.subject.as_ref() == Some(wanted)
        });
        let type_ok = self.types.is_empty()
            || fields
                .event_type
                .as_ref()
                .is_some_and(|t| self.types.contains(t));
        let from_ok = self
            .from
            .is_none_or(|from| fields.time.is_some_and(|t| t >= from));
        let to_ok = self.to.is_none_or(|to| fields.time.is_some_and(|t| t < to));
        let correlation_ok = self
            .correlation
            .as_ref()
            .is_none_or(|wanted| fields.correlation.as_ref() == Some(wanted));
        aggregate_ok && type_ok && from_ok && to_ok && correlation_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        parse_time(text).expect("a time")
    }

    fn event(key: &str, kind: &str, time: &str, correlation: &str) -> ScannedRecord {
        ScannedRecord {
            topic: "orders.events".into(),
            partition: 0,
            offset: 0,
            timestamp: None,
            key: Some(key.as_bytes().to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: vec![
                ("ce_subject".into(), key.into()),
                ("ce_type".into(), kind.into()),
                ("ce_time".into(), time.into()),
                ("ce_correlationid".into(), correlation.into()),
            ],
        }
    }

    #[test]
    fn given_no_criteria_when_filtering_then_everything_is_kept() {
        assert!(Filter::default().matches(&event("a", "OrderPlaced", "2026-01-01T00:00:00Z", "c")));
    }

    #[test]
    fn given_each_criterion_when_filtering_then_only_matching_records_are_kept() {
        let record = event("a", "OrderPlaced", "2026-01-01T10:00:00Z", "c1");
        let keeps = |filter: Filter| filter.matches(&record);
        assert!(keeps(Filter {
            aggregate: Some("a".into()),
            ..Filter::default()
        }));
        assert!(!keeps(Filter {
            aggregate: Some("b".into()),
            ..Filter::default()
        }));
        assert!(keeps(Filter {
            types: vec!["OrderCancelled".into(), "OrderPlaced".into()],
            ..Filter::default()
        }));
        assert!(!keeps(Filter {
            types: vec!["OrderCancelled".into()],
            ..Filter::default()
        }));
        assert!(keeps(Filter {
            correlation: Some("c1".into()),
            ..Filter::default()
        }));
        assert!(!keeps(Filter {
            correlation: Some("c2".into()),
            ..Filter::default()
        }));
    }

    #[test]
    fn given_a_time_range_when_filtering_then_from_is_inclusive_and_to_exclusive() {
        let record = event("a", "OrderPlaced", "2026-01-01T10:00:00Z", "c");
        let range = |from: &str, to: &str| Filter {
            from: Some(at(from)),
            to: Some(at(to)),
            ..Filter::default()
        };
        assert!(range("2026-01-01T10:00:00Z", "2026-01-01T10:00:01Z").matches(&record));
        assert!(!range("2026-01-01T09:00:00Z", "2026-01-01T10:00:00Z").matches(&record));
        assert!(!range("2026-01-01T10:00:01Z", "2026-01-01T11:00:00Z").matches(&record));
    }

    #[test]
    fn given_a_record_without_headers_when_filtering_then_its_json_value_is_read() {
        let record = ScannedRecord {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            payload: Some(
                br#"{"subject":"a","type":"OrderPlaced","time":"2026-01-01T10:00:00Z","correlationid":"c"}"#
                    .to_vec(),
            ),
            headers: Vec::new(),
        };
        let filter = Filter {
            aggregate: Some("a".into()),
            types: vec!["OrderPlaced".into()],
            from: Some(at("2026-01-01T00:00:00Z")),
            to: None,
            correlation: Some("c".into()),
        };
        assert!(filter.matches(&record));
    }
}
