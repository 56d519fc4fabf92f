//! A record of a batch as a reader takes it: decoded into its envelope, or unreadable
//! with the reason (the subscription already sent it to the dead letters).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::EventDocument;

use crate::scan::ScannedRecord;
use crate::subscription::{DeadLettered, Delivered, TopicPartition};

/// A record of the batch, in log order within its partition.
// Nearly every record is `Decoded`: boxing it would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Record {
    Decoded {
        document: EventDocument,
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// The envelope could not be read; the subscription already dead-lettered it.
    Undecodable {
        key: Option<String>,
        payload: Vec<u8>,
        error: String,
        topic: String,
        partition: i32,
        offset: i64,
    },
}

impl Record {
    pub fn position(&self) -> (&str, i32, i64) {
        match self {
            Self::Decoded {
                topic,
                partition,
                offset,
                ..
            }
            | Self::Undecodable {
                topic,
                partition,
                offset,
                ..
            } => (topic, *partition, *offset),
        }
    }
}

/// A batch's records in log order per partition, dead letters in their places.
pub fn records_of(
    delivered: Vec<Delivered<EventDocument>>,
    dead: Vec<DeadLettered>,
) -> Vec<Record> {
    let mut records: Vec<Record> = delivered
        .into_iter()
        .map(|d| Record::Decoded {
            document: d.item,
            topic: d.topic,
            partition: d.partition,
            offset: d.offset,
        })
        .chain(dead.into_iter().map(|d| Record::Undecodable {
            key: d.key,
            payload: d.payload,
            error: d.error,
            topic: d.topic,
            partition: d.partition,
            offset: d.offset,
        }))
        .collect();
    records.sort_by(|a, b| a.position().cmp(&b.position()));
    records
}

/// A record read by a scan (a rebuild, a replay) as a reader takes it.
pub fn record_of_scanned(record: ScannedRecord) -> Record {
    let decoded = record
        .payload
        .as_deref()
        .ok_or_else(|| "a record without a value".to_owned())
        .and_then(|payload| EventDocument::from_json(payload).map_err(|e| e.to_string()));
    match decoded {
        Ok(document) => Record::Decoded {
            document,
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
        },
        Err(error) => Record::Undecodable {
            key: record.key_text(),
            payload: record.payload.unwrap_or_default(),
            error,
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
        },
    }
}

/// When the last decoded record of each partition in `records` was written.
pub fn last_times(records: &[Record]) -> HashMap<TopicPartition, DateTime<Utc>> {
    let mut times = HashMap::new();
    for record in records {
        if let Record::Decoded {
            document,
            topic,
            partition,
            ..
        } = record
        {
            times.insert((topic.clone(), *partition), document.time);
        }
    }
    times
}
