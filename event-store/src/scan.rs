//! Scans: reading one topic's partitions between offsets, outside any consumer group and
//! without committing anything. Rebuilds read a model's topics from offset zero up to
//! where the live model is; operators replay slices of the log or tail it (`--follow`).
//!
//! A bounded partition is done when the scan has handed out everything below its end, or
//! when the broker reports the partition's end (on Apache Kafka a transaction's commit
//! marker takes an offset no record fills, so the record before an end can be the last).
//! One scan reads one topic: the end-of-partition event names only a partition number.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{EndOfPartitionExpected, KafkaSettings, RangeReader};
use crate::error::EventStoreError;
use crate::record::header_pairs;

/// One record as a scan hands it out, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (create time), when the broker kept one.
    pub timestamp: Option<DateTime<Utc>>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl ScannedRecord {
    /// An owned copy of a record the broker handed out.
    pub fn of(message: &impl Message) -> Self {
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message
                .timestamp()
                .to_millis()
                .and_then(DateTime::from_timestamp_millis),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: header_pairs(message),
        }
    }

    /// The key as text (ours are aggregate ids).
    pub fn key_text(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where one partition's scan starts and ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub from: i64,
    /// Exclusive end; `None`: keep reading as records arrive.
    pub to: Option<i64>,
}

/// Reads one topic's partitions over their ranges.
pub struct LogScan {
    topic: String,
    consumer: RangeReader,
    /// Unfinished partitions and their ranges' ends.
    open: BTreeMap<i32, Option<i64>>,
    /// How long a bounded scan may go without a record before the broker counts as gone.
    stall: Duration,
    /// When a record or a partition's end last arrived.
    progressed: Instant,
}

/// How long a batch waits for the next record once one arrived.
const LINGER: Duration = Duration::from_millis(1);

impl std::fmt::Debug for LogScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogScan")
            .field("topic", &self.topic)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl LogScan {
    /// Starts reading `topic` at each partition's `from`, in large fetches (a rebuild's or
    /// a replay's catch-up). Partitions whose range is empty are done from the start.
    pub fn open(
        settings: &KafkaSettings,
        topic: &str,
        ranges: &BTreeMap<i32, Range>,
    ) -> Result<Self, EventStoreError> {
        Self::start(settings, topic, ranges, false)
    }

    /// [`LogScan::open`] for a live tail that starts near the end: small buffers (one per
    /// page watching), and no fetch every few milliseconds while nothing comes.
    pub fn tail(
        settings: &KafkaSettings,
        topic: &str,
        ranges: &BTreeMap<i32, Range>,
    ) -> Result<Self, EventStoreError> {
        Self::start(settings, topic, ranges, true)
    }

    fn start(
        settings: &KafkaSettings,
        topic: &str,
        ranges: &BTreeMap<i32, Range>,
        following: bool,
    ) -> Result<Self, EventStoreError> {
        let mut config = settings.consumer("event-store-scan");
        config.set("enable.partition.eof", "true");
        if following {
            config
                .set("fetch.wait.max.ms", "100")
                .set("max.partition.fetch.bytes", "1048576")
                .set("queued.max.messages.kbytes", "4096");
        } else {
            config
                .set("fetch.wait.max.ms", "10")
                .set("max.partition.fetch.bytes", "16777216")
                .set("queued.max.messages.kbytes", "262144");
        }
        let consumer: RangeReader = config
            .create_with_context(EndOfPartitionExpected)
            .map_err(|e| EventStoreError::from_kafka("scan", e))?;
        let mut assignment = TopicPartitionList::new();
        let mut open = BTreeMap::new();
        for (&partition, range) in ranges {
            if range.to.is_some_and(|to| range.from >= to) {
                continue;
            }
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(range.from))
                .map_err(|e| EventStoreError::from_kafka("scan", e))?;
            open.insert(partition, range.to);
        }
        if !open.is_empty() {
            consumer
                .assign(&assignment)
                .map_err(|e| EventStoreError::from_kafka("scan", e))?;
        }
        Ok(Self {
            topic: topic.to_owned(),
            consumer,
            open,
            stall: settings.timeout * 4,
            progressed: Instant::now(),
        })
    }

    /// Every bounded partition is read to its end (a following scan is never done).
    pub fn is_done(&self) -> bool {
        self.open.is_empty()
    }

    /// Up to `max` records in offset order per partition: waits up to `wait` for the
    /// first, then takes what follows within a millisecond. Records at or past a
    /// partition's end are left out. A connection the client lost and is restoring ends a
    /// batch early, not the scan; a bounded scan that has seen neither a record nor a
    /// partition's end for four broker timeouts fails as unavailable, never hangs.
    pub async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ScannedRecord>, EventStoreError> {
        let mut batch = Vec::new();
        let mut window = wait;
        while batch.len() < max && !self.open.is_empty() {
            let message = match tokio::time::timeout(window, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(KafkaError::PartitionEOF(partition))) => {
                    self.progressed = Instant::now();
                    if self.open.get(&partition).is_some_and(Option::is_some) {
                        self.open.remove(&partition);
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    let error = EventStoreError::from_kafka("scan", e);
                    if !error.is_unavailable() {
                        return Err(error);
                    }
                    // librdkafka reports a lost connection (all brokers down, a transport
                    // failure) and reconnects by itself: the batch ends here, and a bounded
                    // scan that makes no progress for its stall time fails below.
                    break;
                }
                Ok(Ok(message)) => message,
            };
            self.progressed = Instant::now();
            window = LINGER;
            let (partition, offset) = (message.partition(), message.offset());
            let Some(&end) = self.open.get(&partition) else {
                continue;
            };
            if end.is_some_and(|end| offset >= end) {
                self.open.remove(&partition);
                continue;
            }
            batch.push(ScannedRecord::of(&message));
            if end.is_some_and(|end| offset + 1 >= end) {
                self.open.remove(&partition);
            }
        }
        let bounded = self.open.values().any(Option::is_some);
        if batch.is_empty() && bounded && self.progressed.elapsed() > self.stall {
            return Err(self.stalled());
        }
        Ok(batch)
    }

    fn stalled(&self) -> EventStoreError {
        EventStoreError::Unavailable {
            operation: "scan",
            reason: format!(
                "no record of {} arrived for {} s (partitions still open: {:?})",
                self.topic,
                self.stall.as_secs(),
                self.open.keys().collect::<Vec<_>>()
            ),
        }
    }
}

/// The first offset of each partition of `topic` whose record was written at or after
/// `time` (the partition's end when none was), as the broker's time index tells.
pub async fn offsets_for_time(
    settings: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    time: DateTime<Utc>,
) -> Result<BTreeMap<i32, i64>, EventStoreError> {
    const OPERATION: &str = "offsets for time";
    let consumer = client(settings, "event-store-scan", OPERATION)?;
    let mut query = TopicPartitionList::new();
    for &partition in partitions {
        query
            .add_partition_offset(topic, partition, Offset::Offset(time.timestamp_millis()))
            .map_err(|e| EventStoreError::from_kafka(OPERATION, e))?;
    }
    let timeout = settings.timeout;
    let found = blocking(OPERATION, move || {
        consumer.offsets_for_times(query, timeout)
    })
    .await?;
    let mut offsets = BTreeMap::new();
    for element in found.elements() {
        let offset = match element.offset() {
            Offset::Offset(offset) => offset,
            // No record at or after the time: start at the end (nothing to read).
            _ => watermarks(settings, topic, element.partition()).await?.1,
        };
        offsets.insert(element.partition(), offset);
    }
    Ok(offsets)
}

/// The low and high watermarks of one partition: its first offset and the offset the
/// next record will get.
pub async fn watermarks(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), EventStoreError> {
    let all = watermarks_of(settings, topic, vec![partition]).await?;
    Ok(all.get(&partition).copied().unwrap_or((0, 0)))
}

/// The high watermark of every partition `0..partitions` of `topic`.
pub async fn ends(
    settings: &KafkaSettings,
    topic: &str,
    partitions: i32,
) -> Result<BTreeMap<i32, i64>, EventStoreError> {
    let all = watermarks_of(settings, topic, (0..partitions).collect()).await?;
    Ok(all.into_iter().map(|(p, (_, high))| (p, high)).collect())
}

/// Low and high watermarks of `partitions` of `topic`, through one client.
pub async fn watermarks_of(
    settings: &KafkaSettings,
    topic: &str,
    partitions: Vec<i32>,
) -> Result<BTreeMap<i32, (i64, i64)>, EventStoreError> {
    const OPERATION: &str = "fetch watermarks";
    let consumer = client(settings, "event-store-scan", OPERATION)?;
    let (topic, timeout) = (topic.to_owned(), settings.timeout);
    blocking(OPERATION, move || {
        partitions
            .into_iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, timeout)
                    .map(|marks| (p, marks))
            })
            .collect()
    })
    .await
}

/// The high watermark of every partition of `topic`, however many it has (from the
/// topic's metadata).
pub async fn topic_ends(
    settings: &KafkaSettings,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, EventStoreError> {
    let consumer = Arc::new(client(settings, "event-store-scan", ENDS)?);
    every_end(consumer, topic, settings.timeout).await
}

/// The committed end of every partition of `topic` once the transactions that have
/// ended can be read. Kafka answers a commit before its coordinator has written the
/// commit markers, so for a few milliseconds after a writer's answer its records are not
/// yet readable and the committed end (the last stable offset) has not moved. This waits,
/// up to the timeout, until each committed end reaches the end of what is written; with a
/// transaction still open it answers the committed ends at the timeout. For reading back
/// what was just acknowledged (audits, tests), not for live lag.
pub async fn settled_ends(
    settings: &KafkaSettings,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, EventStoreError> {
    let committed = Arc::new(client(settings, "event-store-scan", ENDS)?);
    let written: Arc<StreamConsumer> = Arc::new(
        settings
            .consumer("event-store-scan")
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(|e| EventStoreError::from_kafka(ENDS, e))?,
    );
    let deadline = Instant::now() + settings.timeout;
    loop {
        let ends = every_end(committed.clone(), topic, settings.timeout).await?;
        let written_ends = every_end(written.clone(), topic, settings.timeout).await?;
        if ends == written_ends || Instant::now() >= deadline {
            return Ok(ends);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const ENDS: &str = "fetch watermarks";

/// The high watermark, as `consumer`'s isolation level sees it, of every partition of
/// `topic` in its metadata.
async fn every_end(
    consumer: Arc<StreamConsumer>,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, EventStoreError> {
    let topic = topic.to_owned();
    blocking(ENDS, move || {
        let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        partitions
            .into_iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, timeout)
                    .map(|(_, high)| (p, high))
            })
            .collect()
    })
    .await
}

/// Where the records of each partition end, given its high watermark in `ends`: the
/// offset after its last committed record (0 when it has none). The watermark can be past
/// that: each transaction's commit marker takes an offset, and aborted records do too, so
/// a reader whose next offset reached this end has read everything there is to read.
pub async fn record_ends(
    settings: &KafkaSettings,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, i64>, EventStoreError> {
    Ok(last_records(settings, topic, ends, 1)
        .await?
        .into_iter()
        .map(|(p, first)| (p, first.map_or(0, |offset| offset + 1)))
        .collect())
}

/// The offset of the `n`th committed record counting back from each partition's end in
/// `ends` (`None` where the partition holds fewer). Offsets are not records: transaction
/// markers and aborted records take offsets too, so this reads backwards from each end, in
/// growing windows, until it has seen `n` records or the partition's start.
pub async fn last_records(
    settings: &KafkaSettings,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    n: usize,
) -> Result<BTreeMap<i32, Option<i64>>, EventStoreError> {
    if n == 0 {
        return Ok(ends.iter().map(|(&p, &end)| (p, Some(end))).collect());
    }
    let mut found = BTreeMap::new();
    let mut window = i64::try_from(n.max(4))
        .unwrap_or(i64::MAX)
        .saturating_mul(2);
    loop {
        let ranges: BTreeMap<i32, Range> = ends
            .iter()
            .filter(|(p, _)| !found.contains_key(*p))
            .map(|(&p, &end)| {
                let from = end.saturating_sub(window).max(0);
                (
                    p,
                    Range {
                        from,
                        to: Some(end),
                    },
                )
            })
            .collect();
        if ranges.is_empty() {
            return Ok(found);
        }
        let mut seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        let mut scan = LogScan::open(settings, topic, &ranges)?;
        while !scan.is_done() {
            for record in scan.next_batch(10_000, Duration::from_millis(100)).await? {
                seen.entry(record.partition)
                    .or_default()
                    .push(record.offset);
            }
        }
        for (partition, range) in ranges {
            let offsets = seen.remove(&partition).unwrap_or_default();
            if offsets.len() >= n {
                found.insert(partition, Some(offsets[offsets.len() - n]));
            } else if range.from == 0 {
                found.insert(partition, None);
            }
        }
        window = window.saturating_mul(16);
    }
}

/// The offsets consumer group `group` committed on `partitions` of `topic` (`None`
/// where it committed nothing). Reads them without joining the group.
pub async fn committed(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<BTreeMap<i32, Option<i64>>, EventStoreError> {
    const OPERATION: &str = "fetch committed offsets";
    let consumer = client(settings, group, OPERATION)?;
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query.add_partition(topic, partition);
    }
    let timeout = settings.timeout;
    let found = blocking(OPERATION, move || {
        consumer.committed_offsets(query, timeout)
    })
    .await?;
    Ok(found
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => (e.partition(), Some(offset)),
            _ => (e.partition(), None),
        })
        .collect())
}

/// A consumer of `group` for one-off queries (it never joins the group).
fn client(
    settings: &KafkaSettings,
    group: &str,
    operation: &'static str,
) -> Result<StreamConsumer, EventStoreError> {
    settings
        .consumer(group)
        .create()
        .map_err(|e| EventStoreError::from_kafka(operation, e))
}

/// Runs one of librdkafka's blocking calls off the async workers.
async fn blocking<T: Send + 'static>(
    operation: &'static str,
    call: impl FnOnce() -> rdkafka::error::KafkaResult<T> + Send + 'static,
) -> Result<T, EventStoreError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| EventStoreError::Unavailable {
            operation,
            reason: e.to_string(),
        })?
        .map_err(|e| EventStoreError::from_kafka(operation, e))
}
