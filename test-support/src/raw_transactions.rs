//! The raw floor of transactional writes for benchmarks: one rdkafka transactional producer
//! per partition, each committing whatever records are waiting for it in one transaction
//! (a group commit), so a caller waits for its record to be committed. No decisions, no
//! state, no outcomes: what Kafka transactions alone cost at a given concurrency.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, oneshot};

use crate::load::{Run, drive};

/// A record to write: partition, key, value, headers.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub partition: i32,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
}

type Waiting = (RawRecord, oneshot::Sender<()>);

/// Per partition, a task that commits the records waiting for it.
#[derive(Clone, Debug)]
pub struct TransactionalSenders {
    queues: Vec<mpsc::Sender<Waiting>>,
}

const MAX_BATCH: usize = 512;
const TIMEOUT: Duration = Duration::from_secs(30);

impl TransactionalSenders {
    /// `config` is the producer configuration to start from (idempotent, `acks=all`); each
    /// partition's producer gets its own `transactional.id` under `id_prefix`.
    pub async fn start(
        config: &ClientConfig,
        topic: &str,
        partitions: i32,
        id_prefix: &str,
    ) -> Self {
        let mut queues = Vec::new();
        for partition in 0..partitions {
            let producer: FutureProducer = config
                .clone()
                .set("transactional.id", format!("{id_prefix}-{partition}"))
                .create()
                .expect("a raw transactional producer");
            let ready = producer.clone();
            tokio::task::spawn_blocking(move || ready.init_transactions(TIMEOUT))
                .await
                .expect("init transactions")
                .expect("init transactions");
            let (queue, waiting) = mpsc::channel(4096);
            tokio::spawn(commit_loop(producer, topic.to_owned(), waiting));
            queues.push(queue);
        }
        Self { queues }
    }

    /// Sends every record of `records` from `concurrency` callers, each waiting for its
    /// record's commit before the next.
    pub async fn drive(&self, records: Vec<RawRecord>, concurrency: usize) -> Run {
        let (senders, records) = (self.clone(), Arc::new(records));
        drive(records.len(), concurrency, move |i| {
            let (senders, records) = (senders.clone(), Arc::clone(&records));
            async move { senders.send(records[i].clone()).await }
        })
        .await
    }

    /// Returns once `record` is committed.
    pub async fn send(&self, record: RawRecord) {
        let (done, committed) = oneshot::channel();
        let queue = &self.queues[record.partition as usize];
        queue
            .send((record, done))
            .await
            .expect("a raw sender stopped");
        committed.await.expect("a raw transaction failed");
    }
}

async fn commit_loop(
    producer: FutureProducer,
    topic: String,
    mut waiting: mpsc::Receiver<Waiting>,
) {
    while let Some(first) = waiting.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let beginning = producer.clone();
        tokio::task::spawn_blocking(move || beginning.begin_transaction())
            .await
            .expect("begin")
            .expect("begin transaction");
        let deliveries: Vec<_> = batch
            .iter()
            .map(|(record, _)| {
                let kafka_record = FutureRecord::to(&topic)
                    .partition(record.partition)
                    .key(&record.key)
                    .payload(&record.value)
                    .headers(record.headers.clone());
                producer
                    .send_result(kafka_record)
                    .map_err(|(e, _)| e)
                    .expect("enqueue a raw record")
            })
            .collect();
        for delivery in deliveries {
            delivery
                .await
                .expect("delivery")
                .map_err(|(e, _)| e)
                .expect("a raw record acknowledged");
        }
        let committing = producer.clone();
        tokio::task::spawn_blocking(move || {
            // As the event store does: the rdkafka crate's commit flushes first, and a
            // flush that finds a delivered record not yet released polls for 100 ms.
            while committing.in_flight_count() > 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
            committing.commit_transaction(TIMEOUT)
        })
        .await
        .expect("commit")
        .expect("commit transaction");
        for (_, done) in batch {
            let _ = done.send(());
        }
    }
}
