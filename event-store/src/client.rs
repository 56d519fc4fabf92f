//! librdkafka client configurations, in one place so that every producer is idempotent
//! and every consumer stores offsets only when told.

use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::error::EventStoreError;

/// Where the brokers are and how long an operation may take before it counts as
/// "unavailable" rather than hanging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list (`bootstrap.servers`).
    pub brokers: String,
    /// Upper bound for admin calls, metadata and deliveries.
    pub timeout: Duration,
    /// How long a consumer-group member may stay silent before the group moves its
    /// partitions: the failover time after a crash.
    pub session_timeout: Duration,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            timeout: Duration::from_secs(5),
            // Apache Kafka's smallest allowed value by default (group.min.session.timeout.ms).
            session_timeout: Duration::from_secs(6),
        }
    }

    /// How long a group's rebalance may wait for its members: twice the session.
    pub fn rebalance_timeout(&self) -> Duration {
        self.session_timeout * 2
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("socket.timeout.ms", millis(self.timeout))
            // Reconnect quickly after a broker restart, but do not hammer a dead one.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "2000")
            .set("log_level", "4");
        config
    }

    /// An idempotent producer: acks from all in-sync replicas, retries that cannot
    /// duplicate or reorder, and a delivery deadline so a dead broker answers "unavailable".
    pub fn producer(&self) -> ClientConfig {
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", "1")
            .set("message.timeout.ms", millis(self.timeout))
            // We pick partitions ourselves (see the partitioner); this only matters for
            // records produced without one, and agrees with the Java client.
            .set("partitioner", "murmur2_random");
        config
    }

    /// A transactional producer for `transactional_id`: when a new producer with the same
    /// id initializes, the broker fences the old one, so a paused writer's transactions can
    /// never commit after its partition moved.
    pub fn transactional_producer(&self, transactional_id: &str) -> ClientConfig {
        let mut config = self.producer();
        config
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", "60000");
        config
    }

    /// A consumer in `group` that never commits or stores offsets on its own: readers
    /// keep their position next to their state (Postgres) or commit it explicitly. It
    /// reads only committed transactions, and the group moves partitions incrementally
    /// (cooperative-sticky): a member joining or dying moves only the partitions that must
    /// move, and the others keep being read through the rebalance.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut config = self.base();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", millis(self.session_timeout))
            .set("heartbeat.interval.ms", millis(self.session_timeout / 3))
            // Also the group's rebalance timeout: how long a rebalance waits for a member
            // that was asked to rejoin. The broker keeps such a member alive whatever its
            // session, so with librdkafka's default (5 minutes) one instance killed
            // mid-rebalance stalls its group that long. Our readers poll continuously.
            .set("max.poll.interval.ms", millis(self.rebalance_timeout()))
            .set("enable.partition.eof", "false");
        config
    }

    /// A consumer of one partition from `from` on, outside any group (no commits): for
    /// reading ranges or single records back.
    pub fn partition_reader(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<RangeReader, EventStoreError> {
        let mut config = self.consumer("event-store-range-reader");
        config
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.min.bytes", "1")
            .set("max.partition.fetch.bytes", "16777216")
            .set("queued.max.messages.kbytes", "131072");
        let consumer: RangeReader = config
            .create_with_context(EndOfPartitionExpected)
            .map_err(|e| EventStoreError::from_kafka("read", e))?;
        seek_to(&consumer, topic, partition, from)?;
        Ok(consumer)
    }

    /// An admin client (topic creation and description).
    pub fn admin(&self) -> ClientConfig {
        self.base()
    }
}

/// A consumer that reads ranges outside any group, told about each partition's end.
pub type RangeReader = StreamConsumer<EndOfPartitionExpected>;

/// The context of consumers that ask to be told when a partition ends: the end is an
/// answer they wait for, not an error. librdkafka also reports it through the error
/// callback when it comes after the reader stopped listening (it dropped the consumer at
/// the end of its range); other errors are logged as warnings (the call that failed
/// reports them to its caller).
#[derive(Clone, Copy, Debug, Default)]
pub struct EndOfPartitionExpected;

impl ClientContext for EndOfPartitionExpected {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(target: "librdkafka", %error, reason, "librdkafka error");
        }
    }
}

impl ConsumerContext for EndOfPartitionExpected {}

/// The context of a partition writer's transactional producer. Being fenced is how a
/// writer learns that another one took its partition over: an expected turn of events the
/// writer reports itself (a warning), which librdkafka would log as errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterContext;

impl ClientContext for WriterContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let fenced = message.contains("fenced") || message.contains("old epoch");
        let level = match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
                if fenced =>
            {
                RDKafkaLogLevel::Warning
            }
            level => level,
        };
        log_librdkafka(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fenced) {
            tracing::debug!(target: "librdkafka", %error, reason, "producer fenced");
        } else {
            tracing::error!(target: "librdkafka", %error, reason, "librdkafka error");
        }
    }
}

/// Points a group-less consumer at `topic`/`partition` from `offset` on.
pub fn seek_to<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), EventStoreError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| EventStoreError::from_kafka("read", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| EventStoreError::from_kafka("read", e))
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

/// A librdkafka log line as a tracing event at the same level.
pub(crate) fn log_librdkafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility, "{message}");
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}
