//! Reading single records back by position: how history and time-travel queries fold an
//! aggregate from the log, with the positions an index gives them. Records of one
//! aggregate share a partition, so one short-lived reader per partition follows the
//! wanted offsets in order, skipping ahead when the next one is far.

use std::collections::BTreeMap;

use rdkafka::Message;
use rdkafka::error::KafkaError;

use crate::client::{KafkaSettings, RangeReader, seek_to};
use crate::error::EventStoreError;
use crate::scan::ScannedRecord;

/// Past how many unwanted records the reader jumps instead of reading through them.
const SKIP_AHEAD: i64 = 256;

/// A record's value, by its place in the log.
pub type Found = BTreeMap<(String, i32, i64), Vec<u8>>;

/// Records by their place in the log.
pub type FoundRecords = BTreeMap<(String, i32, i64), ScannedRecord>;

/// Reads the values of the records at `positions` (topic, partition, offset). Every
/// position must exist: a missing record (deleted by retention, or a wrong index) is an
/// error, not a gap.
pub async fn read_at(
    settings: &KafkaSettings,
    positions: &[(String, i32, i64)],
) -> Result<Found, EventStoreError> {
    Ok(records_at(settings, positions)
        .await?
        .into_iter()
        .map(|(place, record)| (place, record.payload.unwrap_or_default()))
        .collect())
}

/// [`read_at`], with each record's key, headers and timestamp.
pub async fn records_at(
    settings: &KafkaSettings,
    positions: &[(String, i32, i64)],
) -> Result<FoundRecords, EventStoreError> {
    read_records(settings, positions, Missing::Fails).await
}

/// The records at `positions` that are there: one that is not (deleted by retention, an
/// index ahead of a re-created topic) is left out instead of failing the others.
pub async fn records_found(
    settings: &KafkaSettings,
    positions: &[(String, i32, i64)],
) -> Result<FoundRecords, EventStoreError> {
    read_records(settings, positions, Missing::LeftOut).await
}

/// What a position without a record means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Missing {
    Fails,
    LeftOut,
}

async fn read_records(
    settings: &KafkaSettings,
    positions: &[(String, i32, i64)],
    missing: Missing,
) -> Result<FoundRecords, EventStoreError> {
    let mut by_partition: BTreeMap<(&str, i32), Vec<i64>> = BTreeMap::new();
    for (topic, partition, offset) in positions {
        by_partition
            .entry((topic.as_str(), *partition))
            .or_default()
            .push(*offset);
    }
    let mut found = FoundRecords::new();
    for ((topic, partition), mut offsets) in by_partition {
        offsets.sort_unstable();
        offsets.dedup();
        read_partition(settings, topic, partition, &offsets, &mut found, missing).await?;
    }
    Ok(found)
}

async fn read_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    offsets: &[i64],
    found: &mut FoundRecords,
    missing: Missing,
) -> Result<(), EventStoreError> {
    let Some(&first) = offsets.first() else {
        return Ok(());
    };
    let consumer = settings.partition_reader(topic, partition, first)?;
    let at = (topic, partition);
    let gone = |offset: i64| missing.gone(at, offset);
    let mut wanted = offsets.iter().copied().peekable();
    while let Some(&next) = wanted.peek() {
        // A broker that does not answer is unavailable, never a record that is not there.
        let message = tokio::time::timeout(settings.timeout, consumer.recv())
            .await
            .map_err(|_| EventStoreError::Unavailable {
                operation: "read",
                reason: format!("no answer for {topic}/{partition}@{next}"),
            })?;
        let message = match message {
            Ok(message) => message,
            Err(KafkaError::PartitionEOF(_)) => return gone(next),
            Err(e) => return Err(EventStoreError::from_kafka("read", e)),
        };
        let offset = message.offset();
        if offset < next {
            continue;
        }
        if offset > next {
            gone(next)?;
            // Left out: the wanted offsets this record passed have no record.
            while wanted.next_if(|&o| o < offset).is_some() {}
            if wanted.peek() != Some(&offset) {
                skip_ahead(&consumer, at, offset, wanted.peek().copied())?;
                continue;
            }
        }
        found.insert(
            (topic.to_owned(), partition, offset),
            ScannedRecord::of(&message),
        );
        wanted.next();
        skip_ahead(&consumer, at, offset, wanted.peek().copied())?;
    }
    Ok(())
}

impl Missing {
    /// The first wanted offset without a record: an error, or the end of what is found
    /// in this partition when the rest may be left out.
    fn gone(self, (topic, partition): (&str, i32), offset: i64) -> Result<(), EventStoreError> {
        match self {
            Self::Fails => Err(EventStoreError::Unavailable {
                operation: "read",
                reason: format!("no record at {topic}/{partition}@{offset}"),
            }),
            Self::LeftOut => Ok(()),
        }
    }
}

/// Seeks to the next wanted offset when it is far enough past `offset` that reading up to
/// it would cost more than a seek.
fn skip_ahead(
    consumer: &RangeReader,
    (topic, partition): (&str, i32),
    offset: i64,
    next_wanted: Option<i64>,
) -> Result<(), EventStoreError> {
    match next_wanted {
        Some(after) if after - offset > SKIP_AHEAD => seek_to(consumer, topic, partition, after),
        _ => Ok(()),
    }
}
