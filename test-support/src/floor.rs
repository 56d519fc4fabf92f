//! The broker's own latency floor, for benchmarks to print their figures against: from a
//! record's produce acknowledgement to a plain consumer (at the end of the topic) receiving
//! it, per record, under the same load shape as the measured path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::load::{Run, drive};

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// `count` records of 600 bytes to `topic` (which must exist with `partitions`), from
/// `concurrency` callers each waiting for its record to be consumed before the next.
/// `consumer` is a consumer configuration, with the services' fetch wait (its group is not
/// used: partitions are assigned).
pub async fn produce_to_consume(
    producer: FutureProducer,
    consumer: &ClientConfig,
    topic: &str,
    partitions: i32,
    (count, concurrency): (usize, usize),
) -> anyhow::Result<Run> {
    let consumer: StreamConsumer = consumer.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let waiting: Waiting = Arc::default();
    let receiver = {
        let waiting = Arc::clone(&waiting);
        tokio::spawn(async move {
            while let Ok(message) = consumer.recv().await {
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                if let Some(tx) = waiting.lock().expect("lock").remove(&key) {
                    let _ = tx.send(Instant::now());
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await; // the consumer positions itself
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let topic = topic.to_owned();
    let run = {
        let (waiting, latencies) = (Arc::clone(&waiting), Arc::clone(&latencies));
        drive(count, concurrency, move |i| {
            let (producer, waiting, latencies, topic) = (
                producer.clone(),
                Arc::clone(&waiting),
                Arc::clone(&latencies),
                topic.clone(),
            );
            async move {
                let key = format!("raw-{i}");
                let (tx, rx) = oneshot::channel();
                waiting.lock().expect("lock").insert(key.clone(), tx);
                let payload = vec![b'x'; 600];
                let sent = producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await;
                let acked = Instant::now();
                if sent.is_ok()
                    && let Ok(Ok(received)) =
                        tokio::time::timeout(Duration::from_secs(30), rx).await
                {
                    latencies
                        .lock()
                        .expect("lock")
                        .push(received.saturating_duration_since(acked));
                }
            }
        })
        .await
    };
    receiver.abort();
    let latencies = std::mem::take(&mut *latencies.lock().expect("lock"));
    Ok(Run {
        per_second: run.per_second,
        latencies,
    })
}
