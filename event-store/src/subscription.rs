//! Subscriptions: how readers (projectors, the saga) consume the log. A subscription
//! delivers decoded, upcast envelopes in batches with their positions; it never commits or
//! stores an offset itself. The reader keeps its offsets next to its state (one Postgres
//! transaction) and hands them back: at start, and after each commit, so that a partition
//! assigned later starts exactly where the reader's state ends.
//!
//! A record that cannot be decoded is not the reader's problem to guess at: it goes to the
//! dead-letter topic, unchanged, with headers naming the error, the reader and its original
//! position, and the batch's offsets move past it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schemas::{DecodeError, Event, EventDocument, MessageFamily};

use crate::client::KafkaSettings;
use crate::error::EventStoreError;

/// A topic partition.
pub type TopicPartition = (String, i32);

/// Next offset to read, per topic partition.
pub type Offsets = HashMap<TopicPartition, i64>;

/// What a subscription turns records into.
pub trait Decodable: Sized + Send + 'static {
    fn decode(document: EventDocument) -> Result<Self, DecodeError>;
}

impl<E: MessageFamily + Send + 'static> Decodable for Event<E> {
    fn decode(document: EventDocument) -> Result<Self, DecodeError> {
        document.decode::<E>()
    }
}

/// The envelope alone, payload still JSON: for readers that decode per type themselves
/// (projectors, the event index), so that a payload they cannot use is theirs to park.
impl Decodable for EventDocument {
    fn decode(document: EventDocument) -> Result<Self, DecodeError> {
        Ok(document)
    }
}

/// One decoded record and where it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered<T> {
    pub item: T,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A record that could not be decoded; it was sent to the dead-letter topic.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLettered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's key: the aggregate id for every record our writers append.
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub error: String,
}

/// Records consumed together.
#[derive(Debug)]
pub struct Batch<T> {
    pub delivered: Vec<Delivered<T>>,
    /// The next offset of every partition the batch touched, dead letters included: what
    /// the reader stores with the state the batch produced.
    pub next_offsets: BTreeMap<TopicPartition, i64>,
    /// Records of the batch that could not be decoded, already in the dead letters.
    pub dead: Vec<DeadLettered>,
}

impl<T> Batch<T> {
    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }

    pub fn dead_lettered(&self) -> usize {
        self.dead.len()
    }
}

/// Seeds every assignment with the reader's own offsets, and keeps the partitions' ends
/// as the fetch responses report them (librdkafka's statistics), so that measuring lag
/// costs the broker nothing.
struct SubscriptionContext {
    group: String,
    known: Arc<Mutex<Offsets>>,
    ends: Arc<Mutex<Offsets>>,
}

impl ClientContext for SubscriptionContext {
    /// A mirrored offset commit refused because the group is rebalancing is of no
    /// consequence (the reader's own store is the truth; the next batch commits again).
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let level = match facility {
            "COMMITFAIL" => RDKafkaLogLevel::Debug,
            _ => level,
        };
        crate::client::log_librdkafka(level, facility, message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self.ends.lock().expect("ends lock");
        for (name, topic) in statistics.topics {
            for (id, partition) in topic.partitions {
                if id >= 0 && partition.hi_offset >= 0 {
                    ends.insert((name.clone(), id), partition.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for SubscriptionContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned: Vec<TopicPartition> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let known = self.known.lock().expect("offsets lock");
                for (topic, partition) in assigned {
                    let offset = known
                        .get(&(topic.clone(), partition))
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                    let _ = tpl.set_partition_offset(&topic, partition, offset);
                }
                drop(known);
                let partitions: Vec<String> = tpl
                    .elements()
                    .iter()
                    .map(|e| format!("{}[{}]@{:?}", e.topic(), e.partition(), e.offset()))
                    .collect();
                tracing::info!(group = %self.group, ?partitions, "subscription assigned partitions");
                // Cooperative rebalancing hands over only the partitions that move.
                let taken = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
                    _ => consumer.assign(tpl),
                };
                if let Err(e) = taken {
                    tracing::error!(error = %e, "could not take the assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "subscription revoked partitions");
                let released = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
                    _ => consumer.unassign(),
                };
                if let Err(e) = released {
                    tracing::warn!(error = %e, "could not release revoked partitions");
                }
            }
            other => tracing::warn!(error = ?other, "rebalance error"),
        }
    }
}

/// A reader's view of some topics.
pub struct Subscription<T: Decodable> {
    consumer: Arc<StreamConsumer<SubscriptionContext>>,
    dead_letters: DeadLetters,
    known: Arc<Mutex<Offsets>>,
    ends: Arc<Mutex<Offsets>>,
    _decodes: std::marker::PhantomData<fn() -> T>,
}

impl<T: Decodable> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("reader", &self.dead_letters.reader)
            .finish_non_exhaustive()
    }
}

impl<T: Decodable> Subscription<T> {
    /// Joins consumer group `group` on `topics`, starting every partition at the offset in
    /// `stored` (or the beginning when the reader has none).
    pub fn start(
        settings: &KafkaSettings,
        group: &str,
        topics: &[String],
        dead_letter_topic: String,
        stored: Offsets,
    ) -> Result<Self, EventStoreError> {
        let known = Arc::new(Mutex::new(stored));
        let ends = Arc::new(Mutex::new(Offsets::new()));
        let mut config = settings.consumer(group);
        config.set("statistics.interval.ms", "1000");
        let consumer: StreamConsumer<SubscriptionContext> = config
            .create_with_context(SubscriptionContext {
                group: group.to_owned(),
                known: Arc::clone(&known),
                ends: Arc::clone(&ends),
            })
            .map_err(|e| EventStoreError::from_kafka("subscribe", e))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| EventStoreError::from_kafka("subscribe", e))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            dead_letters: DeadLetters::new(settings, dead_letter_topic, group)?,
            known,
            ends,
            _decodes: std::marker::PhantomData,
        })
    }

    /// Tells the subscription the reader stored these offsets; a partition assigned later
    /// starts there. They are also committed to the consumer group, in the background, as
    /// a mirror for Kafka's own tools (`kafka-consumer-groups --describe` shows each
    /// reader's lag); the reader never reads them back: its own store is the truth.
    pub fn stored(&self, next_offsets: &BTreeMap<TopicPartition, i64>) {
        let mut known = self.known.lock().expect("offsets lock");
        let mut mirror = TopicPartitionList::new();
        for (key, offset) in next_offsets {
            known.insert(key.clone(), *offset);
            let _ = mirror.add_partition_offset(&key.0, key.1, Offset::Offset(*offset));
        }
        drop(known);
        if let Err(e) = self.consumer.commit(&mirror, CommitMode::Async) {
            tracing::debug!(error = %e, "offsets not mirrored to the consumer group");
        }
    }

    /// Partitions assigned to this reader now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Up to `max` records: waits up to `wait` for the first, then takes what follows
    /// within `linger` of the previous one. An empty batch means nothing arrived.
    pub async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
        linger: Duration,
    ) -> Result<Batch<T>, EventStoreError> {
        let mut batch = Batch {
            delivered: Vec::new(),
            next_offsets: BTreeMap::new(),
            dead: Vec::new(),
        };
        let mut pending_dead = Vec::new();
        let mut until = tokio::time::Instant::now() + wait;
        while batch.delivered.len() + batch.dead.len() < max {
            let message = match tokio::time::timeout_at(until, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    let error = EventStoreError::from_kafka("consume", e);
                    // A broker that went away is librdkafka's to reconnect to: it reports
                    // it, and goes on fetching once the broker is back. Waiting out each
                    // report would leave the reader behind by as many waits as reports
                    // queued up during the outage.
                    if error.is_unavailable() {
                        tracing::debug!(%error, "broker unavailable; librdkafka reconnects");
                        continue;
                    }
                    // The records taken so far have left the consumer: hand them over, or
                    // they would be skipped.
                    if batch.delivered.is_empty() && batch.dead.is_empty() {
                        return Err(error);
                    }
                    tracing::warn!(%error, "consume failed mid-batch; handing over what was taken");
                    break;
                }
                Ok(Ok(message)) => message,
            };
            until = tokio::time::Instant::now() + linger;
            if let Some(dead_letter) = self.take(&message, &mut batch)? {
                pending_dead.push(dead_letter);
            }
        }
        for delivery in pending_dead {
            delivery
                .await
                .map_err(|_| EventStoreError::Unavailable {
                    operation: "dead-letter",
                    reason: "producer shut down".into(),
                })?
                .map_err(|(e, _)| EventStoreError::from_kafka("dead-letter", e))?;
        }
        self.past_markers(&mut batch.next_offsets);
        Ok(batch)
    }

    /// Adds `message` to `batch`, decoded or as a dead letter (then sent, its delivery
    /// returned for the caller to await); a record below the reader's stored offset is
    /// left out.
    fn take(
        &self,
        message: &BorrowedMessage<'_>,
        batch: &mut Batch<T>,
    ) -> Result<Option<rdkafka::producer::DeliveryFuture>, EventStoreError> {
        let key = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        if self
            .known
            .lock()
            .expect("offsets lock")
            .get(&key)
            .is_some_and(|next| offset < *next)
        {
            return Ok(None); // Already part of the reader's stored state.
        }
        batch.next_offsets.insert(key.clone(), offset + 1);
        match decode::<T>(message) {
            Ok(item) => {
                batch.delivered.push(Delivered {
                    item,
                    topic: key.0,
                    partition: key.1,
                    offset,
                });
                Ok(None)
            }
            Err(error) => {
                let delivery = self.dead_letters.send_record(message, &error)?;
                batch.dead.push(DeadLettered {
                    topic: key.0,
                    partition: key.1,
                    offset,
                    key: message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    error: error.to_string(),
                });
                Ok(Some(delivery))
            }
        }
    }

    /// Moves the batch's next offsets past the transaction markers (and aborted records)
    /// the consumer has stepped over: offsets that are not records, so a reader at the end
    /// of a partition stores its end and shows no lag. The consumer's position only passes
    /// what it handed out or what is not a record, and every record it handed out is in
    /// this batch or stored; a partition that only stepped over markers since (an idle
    /// reader) joins the batch with no records, so that its checkpoint moves too.
    fn past_markers(&self, next_offsets: &mut BTreeMap<TopicPartition, i64>) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let known = self.known.lock().expect("offsets lock");
        for element in positions.elements() {
            let Offset::Offset(position) = element.offset() else {
                continue;
            };
            let key = (element.topic().to_owned(), element.partition());
            match next_offsets.get_mut(&key) {
                Some(next) => *next = (*next).max(position),
                None if position > known.get(&key).copied().unwrap_or(0) => {
                    next_offsets.insert(key, position);
                }
                None => {}
            }
        }
    }

    /// Where this reader's dead letters go.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// The end (high watermark) of each assigned partition as the last fetch responses
    /// reported it (refreshed every second): for lag. A partition not fetched yet is absent.
    pub fn high_watermarks(&self) -> Offsets {
        let ends = self.ends.lock().expect("ends lock");
        self.assignment()
            .into_iter()
            .filter_map(|key| ends.get(&key).map(|end| (key, *end)))
            .collect()
    }
}

/// Where a reader sends the records it cannot use: the dead-letter topic, each record as
/// it was, with headers naming the error, the reader and the record's original position.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    reader: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// Dead letters of `reader` (its consumer group) into `topic`.
    pub fn new(
        settings: &KafkaSettings,
        topic: String,
        reader: &str,
    ) -> Result<Self, EventStoreError> {
        let producer = settings
            .producer()
            .create()
            .map_err(|e| EventStoreError::from_kafka("create producer", e))?;
        Ok(Self {
            producer,
            topic,
            reader: reader.to_owned(),
        })
    }

    /// Sends a record, as it was, to the dead-letter topic with why and where it was.
    fn send_record(
        &self,
        message: &BorrowedMessage<'_>,
        error: &DecodeError,
    ) -> Result<rdkafka::producer::DeliveryFuture, EventStoreError> {
        tracing::warn!(
            reader = %self.reader,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            %error,
            "record cannot be decoded; sent to the dead letters"
        );
        let headers = message
            .headers()
            .map(|h| {
                h.iter().fold(OwnedHeaders::new(), |acc, header| {
                    acc.insert(Header {
                        key: header.key,
                        value: header.value,
                    })
                })
            })
            .unwrap_or_default();
        let position = (message.topic(), message.partition(), message.offset());
        self.send(
            headers,
            position,
            message.key().unwrap_or_default(),
            message.payload().unwrap_or_default(),
            &error.to_string(),
        )
    }

    /// Sends a record that decoded but that the reader cannot apply to the dead-letter
    /// topic, with why and where it was; waits for the broker's acknowledgement.
    pub async fn send_document(
        &self,
        document: &EventDocument,
        position: (&str, i32, i64),
        error: &str,
    ) -> Result<(), EventStoreError> {
        let headers = crate::record::to_kafka_headers(&document.headers());
        let delivery = self.send(
            headers,
            position,
            document.subject.as_bytes(),
            &document.to_json(),
            error,
        )?;
        delivery
            .await
            .map_err(|_| EventStoreError::Unavailable {
                operation: "dead-letter",
                reason: "producer shut down".into(),
            })?
            .map_err(|(e, _)| EventStoreError::from_kafka("dead-letter", e))?;
        Ok(())
    }

    fn send(
        &self,
        mut headers: OwnedHeaders,
        (topic, partition, offset): (&str, i32, i64),
        key: &[u8],
        payload: &[u8],
        error: &str,
    ) -> Result<rdkafka::producer::DeliveryFuture, EventStoreError> {
        for (name, value) in [
            ("dlq_reader", self.reader.clone()),
            ("dlq_error", error.to_owned()),
            ("dlq_topic", topic.to_owned()),
            ("dlq_partition", partition.to_string()),
            ("dlq_offset", offset.to_string()),
            ("dlq_time", Utc::now().to_rfc3339()),
        ] {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.producer
            .send_result(record)
            .map_err(|(e, _)| EventStoreError::from_kafka("dead-letter", e))
    }
}

fn decode<T: Decodable>(message: &BorrowedMessage<'_>) -> Result<T, DecodeError> {
    let payload = message
        .payload()
        .ok_or_else(|| DecodeError::Malformed("a record without a value".into()))?;
    T::decode(EventDocument::from_json(payload)?)
}
