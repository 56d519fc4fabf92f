//! librdkafka client configurations, in one place so that every producer is idempotent
//! and every consumer stores offsets only when told.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
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
    /// TLS and SASL towards the brokers (none by default).
    pub security: KafkaSecurity,
}

/// `security.protocol`: whether the connection is encrypted (TLS) and whether the client
/// logs in (SASL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl std::str::FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(Self::Plaintext),
            "ssl" => Ok(Self::Ssl),
            "sasl_plaintext" => Ok(Self::SaslPlaintext),
            "sasl_ssl" => Ok(Self::SaslSsl),
            _ => Err("expected plaintext, ssl, sasl_plaintext or sasl_ssl".into()),
        }
    }
}

/// How the brokers are reached and who the client says it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    /// PEM file of the authorities that sign the brokers' certificates; without it, the
    /// system's. The broker's name (or IP address) must be in its certificate.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM files), for brokers that ask for one.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// The SASL login, for the `sasl_*` protocols.
    pub sasl: Option<SaslLogin>,
}

/// A SASL login (SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN). The password never shows in
/// `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslLogin {
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for SaslLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslLogin")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            timeout: Duration::from_secs(5),
            // Apache Kafka's smallest allowed value by default (group.min.session.timeout.ms).
            session_timeout: Duration::from_secs(6),
            security: KafkaSecurity::default(),
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
        let security = &self.security;
        config.set("security.protocol", security.protocol.name());
        if let Some(ca) = &security.ca_file {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some((certificate, key)) = &security.client_certificate {
            config
                .set(
                    "ssl.certificate.location",
                    certificate.display().to_string(),
                )
                .set("ssl.key.location", key.display().to_string());
        }
        if let Some(login) = &security.sasl {
            config
                .set("sasl.mechanism", &login.mechanism)
                .set("sasl.username", &login.username)
                .set("sasl.password", &login.password);
        }
        config
    }

    /// Whether the brokers take this client's TLS handshake and SASL login: one connection
    /// attempt of at most `within`. A plaintext connection without a login counts as
    /// accepted without trying. Blocks its thread.
    pub fn try_login(&self, within: Duration) -> Result<Login, EventStoreError> {
        if self.security.protocol == SecurityProtocol::Plaintext {
            return Ok(Login::Accepted);
        }
        let watch = LoginWatch::default();
        let producer: BaseProducer<LoginWatch> = self
            .base()
            .create_with_context(watch.clone())
            .map_err(|e| EventStoreError::from_kafka("connect", e))?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            // Serves the error callback, where librdkafka reports handshakes and logins.
            producer.poll(Duration::from_millis(50));
            if let Some(reason) = watch.seen().refused {
                return Ok(Login::Refused(reason));
            }
            if producer
                .client()
                .fetch_metadata(None, Duration::from_millis(200))
                .is_ok()
            {
                return Ok(Login::Accepted);
            }
        }
        let seen = watch.seen();
        Ok(match seen.refused {
            Some(reason) => Login::Refused(reason),
            None => Login::NoAnswer(seen.last_error),
        })
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

/// What one connection attempt with the client's TLS and SASL settings found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Login {
    Accepted,
    /// The TLS handshake or the SASL login failed: librdkafka's reason. Waiting will not
    /// fix it.
    Refused(String),
    /// No broker answered in time, with the last error librdkafka gave, if any (a TLS
    /// client on a plaintext listener shows here, as a handshake cut short).
    NoAnswer(Option<String>),
}

#[derive(Clone, Debug, Default)]
struct Seen {
    refused: Option<String>,
    last_error: Option<String>,
}

/// Keeps the first TLS or SASL failure librdkafka reports, and its last error.
#[derive(Clone, Default)]
struct LoginWatch {
    seen: Arc<Mutex<Seen>>,
}

impl LoginWatch {
    fn seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ClientContext for LoginWatch {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)
        ) {
            seen.refused.get_or_insert_with(|| reason.to_owned());
        } else if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            seen.last_error = Some(reason.to_owned());
        }
    }
}

impl rdkafka::producer::ProducerContext for LoginWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
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
