//! One partition of the log as its writer sees it: records are produced in transactions on
//! the partition's own transactional producer (acks=all) and confirmed by their delivery
//! reports and the commit; ranges are read back with a short-lived read_committed consumer
//! of that one partition (no group, no commits), only when the writer takes the partition
//! over or settles a transaction whose outcome it does not know.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::client::{KafkaSettings, WriterContext};
use crate::error::EventStoreError;

/// A record to append: key, JSON value, headers.
#[derive(Debug)]
pub struct OutgoingRecord {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
}

#[derive(Clone)]
pub struct PartitionLog {
    producer: FutureProducer<WriterContext>,
    settings: KafkaSettings,
    pub partition: i32,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl PartitionLog {
    /// A log to read ranges and ends from (its producer only asks for watermarks); a
    /// writer needs [`Self::transactional`].
    pub fn reader(settings: KafkaSettings, partition: i32) -> Result<Self, EventStoreError> {
        let producer = settings
            .producer()
            .create_with_context(WriterContext)
            .map_err(|e| EventStoreError::from_kafka("create producer", e))?;
        Ok(Self {
            producer,
            settings,
            partition,
        })
    }

    /// The log a writer appends to: its producer is transactional, with `transactional_id`.
    pub fn transactional(
        settings: KafkaSettings,
        partition: i32,
        transactional_id: &str,
    ) -> Result<Self, EventStoreError> {
        let producer = transactional_producer(&settings, transactional_id)?;
        Ok(Self {
            producer,
            settings,
            partition,
        })
    }

    /// Runs one of librdkafka's blocking transaction calls off the async workers.
    async fn transaction_step(
        &self,
        operation: &'static str,
        step: impl FnOnce(&FutureProducer<WriterContext>, Duration) -> rdkafka::error::KafkaResult<()>
        + Send
        + 'static,
    ) -> Result<(), TransactionError> {
        let producer = self.producer.clone();
        let timeout = self.settings.timeout;
        let outcome = tokio::task::spawn_blocking(move || step(&producer, timeout))
            .await
            .map_err(|e| {
                TransactionError::Retry(EventStoreError::Unavailable {
                    operation,
                    reason: e.to_string(),
                })
            })?;
        outcome.map_err(|e| TransactionError::from_kafka(operation, e))
    }

    /// Registers as the only producer of this transactional id; fences earlier ones.
    pub async fn init_transactions(&self) -> Result<(), TransactionError> {
        self.transaction_step("init transactions", |p, t| p.init_transactions(t))
            .await
    }

    pub async fn begin(&self) -> Result<(), TransactionError> {
        self.transaction_step("begin transaction", |p, _| p.begin_transaction())
            .await
    }

    pub async fn commit(&self) -> Result<(), TransactionError> {
        self.transaction_step("commit transaction", |p, t| {
            settle_deliveries(p, t);
            p.commit_transaction(t)
        })
        .await
    }

    pub async fn abort(&self) -> Result<(), TransactionError> {
        self.transaction_step("abort transaction", |p, t| p.abort_transaction(t))
            .await
    }

    /// Enqueues a record without waiting for it; the future resolves with its offset once
    /// all in-sync replicas have it, or with the reason it could not be written.
    pub async fn enqueue(
        &self,
        topic: &str,
        record: &OutgoingRecord,
    ) -> Result<DeliveryFuture, EventStoreError> {
        let mut waited = Duration::ZERO;
        loop {
            let kafka_record = FutureRecord::to(topic)
                .partition(self.partition)
                .key(&record.key)
                .payload(&record.value)
                .headers(record.headers.clone());
            match self.producer.send_result(kafka_record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if waited < self.settings.timeout =>
                {
                    // The local queue drains as the broker acknowledges; wait, bounded.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    waited += Duration::from_millis(2);
                }
                Err((e, _)) => return Err(EventStoreError::from_kafka("append", e)),
            }
        }
    }

    /// The offset the next record of `topic` will get in this partition.
    pub async fn end_offset(&self, topic: &str) -> Result<i64, EventStoreError> {
        let producer = self.producer.clone();
        let (topic, partition, timeout) = (topic.to_owned(), self.partition, self.settings.timeout);
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&topic, partition, timeout)
        })
        .await
        .map_err(|e| EventStoreError::Unavailable {
            operation: "fetch watermarks",
            reason: e.to_string(),
        })?
        .map(|(_, high)| high)
        .map_err(|e| EventStoreError::from_kafka("fetch watermarks", e))
    }

    /// Calls `each` for every record of `topic` in `[from, to)`, in offset order, stopping
    /// early at the end of the partition (transaction markers take offsets no record has).
    /// Fails as unavailable if the broker stops delivering for longer than the timeout.
    pub async fn read_range(
        &self,
        topic: &str,
        from: i64,
        to: i64,
        mut each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), EventStoreError> {
        if from >= to {
            return Ok(());
        }
        let consumer = self
            .settings
            .partition_reader(topic, self.partition, from)?;
        let mut next = from;
        while next < to {
            let message = tokio::time::timeout(self.settings.timeout, consumer.recv())
                .await
                .map_err(|_| EventStoreError::Unavailable {
                    operation: "read",
                    reason: format!("no record of {topic}/{} past {next}", self.partition),
                })?;
            let message = match message {
                Ok(message) => message,
                Err(KafkaError::PartitionEOF(_)) => break,
                Err(e) => return Err(EventStoreError::from_kafka("read", e)),
            };
            let offset = message.offset();
            if offset < next {
                continue;
            }
            if offset >= to {
                break;
            }
            each(&message);
            next = offset + 1;
        }
        Ok(())
    }
}

/// Waits until librdkafka has let go of every delivered record. The rdkafka crate's
/// `commit_transaction` flushes first, and a flush that finds a record still counted (its
/// delivery report served, the record not yet released) polls for 100 ms before it looks
/// again: that was the 100 ms tail of commits (docs/2026-12-07-write-path-profile.md).
/// The caller has awaited every delivery, so this takes microseconds.
fn settle_deliveries<P: Producer<C>, C: rdkafka::producer::ProducerContext>(
    producer: &P,
    timeout: Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    while producer.in_flight_count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn transactional_producer(
    settings: &KafkaSettings,
    transactional_id: &str,
) -> Result<FutureProducer<WriterContext>, EventStoreError> {
    settings
        .transactional_producer(transactional_id)
        .create_with_context(WriterContext)
        .map_err(|e| EventStoreError::from_kafka("create producer", e))
}

/// Why a transaction step failed: retry it (after an abort), or stop writing (fenced).
#[derive(Debug, Clone)]
pub enum TransactionError {
    Retry(EventStoreError),
    /// Another producer with this transactional id took over: this writer is a zombie.
    Fenced(EventStoreError),
}

impl TransactionError {
    /// Fenced only when the broker said a newer producer of the id exists; any other
    /// failure, fatal ones included, leaves the transaction's outcome to be settled.
    fn from_kafka(operation: &'static str, e: KafkaError) -> Self {
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        );
        let error = EventStoreError::from_kafka(operation, e);
        if fenced {
            Self::Fenced(error)
        } else {
            Self::Retry(error)
        }
    }

    pub fn into_inner(self) -> EventStoreError {
        match self {
            Self::Retry(e) | Self::Fenced(e) => e,
        }
    }
}
