//! Sending a command to its writer through the log: the record goes to its service's
//! command topic, in the partition whose writer owns its aggregate, keyed and with the
//! envelope's headers, exactly as the command API's own appends are routed. The saga's
//! outbox sends its steps this way.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::{Command, CommandMeta, MessageFamily};

use crate::client::KafkaSettings;
use crate::error::EventStoreError;
use crate::partitioner::partition_for;
use crate::record::to_kafka_headers;
use crate::topics::TopicNames;

/// Sends commands to their writers through the command topics.
#[derive(Clone)]
pub struct CommandSender {
    producer: FutureProducer,
    topics: TopicNames,
    partitions: i32,
    timeout: Duration,
}

impl std::fmt::Debug for CommandSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSender").finish_non_exhaustive()
    }
}

impl CommandSender {
    pub fn new(
        kafka: &KafkaSettings,
        topics: TopicNames,
        partitions: i32,
    ) -> Result<Self, EventStoreError> {
        let producer = kafka
            .producer()
            .create()
            .map_err(|e| EventStoreError::from_kafka("create producer", e))?;
        Ok(Self {
            producer,
            topics,
            partitions,
            timeout: kafka.timeout,
        })
    }

    /// Appends `payload` to its service's command topic, in the partition of its aggregate
    /// (the partition whose writer owns it), and waits for the broker's acknowledgement.
    pub async fn send<C: MessageFamily>(
        &self,
        meta: CommandMeta,
        payload: impl Into<C>,
    ) -> Result<(), EventStoreError> {
        let document = Command::<C> {
            meta,
            payload: payload.into(),
        }
        .to_document();
        let topic = self.topics.commands(C::SERVICE);
        let value = document.to_json();
        let record = FutureRecord::to(&topic)
            .partition(partition_for(&document.subject, self.partitions))
            .key(&document.subject)
            .payload(&value)
            .headers(to_kafka_headers(&document.headers()));
        self.producer
            .send(record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| EventStoreError::from_kafka("send command", e))
    }
}
