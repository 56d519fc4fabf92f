//! librdkafka client configurations, in one place so that every producer is idempotent
//! and every consumer stores offsets only when told.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

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
    /// Longest a consumer's fetch waits for records (`fetch.wait.max.ms`). Apache Kafka
    /// answers a fetch as soon as records arrive, so this only bounds an idle fetch; tansu
    /// 0.6.0 holds every fetch this long (and serves each partition of it with SQL
    /// queries), so on tansu it is both the latency of a hop and the broker's idle load.
    pub fetch_wait: Duration,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            timeout: Duration::from_secs(5),
            // Apache Kafka's smallest allowed value by default (group.min.session.timeout.ms).
            session_timeout: Duration::from_secs(6),
            fetch_wait: Duration::from_millis(50),
        }
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
    /// keep their position next to their state (Postgres) or commit it explicitly.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut config = self.base();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", millis(self.session_timeout))
            .set("heartbeat.interval.ms", millis(self.session_timeout / 3))
            .set("enable.partition.eof", "false")
            // Readers of the log sit on every hop of a saga. librdkafka's default wait is
            // 500 ms, which tansu would add to every hop (see `fetch_wait`).
            .set("fetch.wait.max.ms", millis(self.fetch_wait));
        config
    }

    /// A consumer of one partition from `from` on, outside any group (no commits): for
    /// reading ranges or single records back.
    pub fn partition_reader(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<StreamConsumer, EventStoreError> {
        let mut config = self.consumer("event-store-range-reader");
        config
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.min.bytes", "1")
            .set("max.partition.fetch.bytes", "16777216")
            .set("queued.max.messages.kbytes", "131072");
        let consumer: StreamConsumer = config
            .create()
            .map_err(|e| EventStoreError::from_kafka("read", e))?;
        seek_to(&consumer, topic, partition, from)?;
        Ok(consumer)
    }

    /// An admin client (topic creation and description).
    pub fn admin(&self) -> ClientConfig {
        self.base()
    }
}

/// Points a group-less consumer at `topic`/`partition` from `offset` on.
pub fn seek_to(
    consumer: &StreamConsumer,
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
