//! Appends per second and latency of the write model against raw rdkafka idempotent
//! produce of the same records, to the same broker, at the same concurrency, in one run.
//!
//!     ./dev bench            (or: cargo bench -p event-store --bench write_path)
//!
//! The broker is a private Apache Kafka node, like the local stack's.

mod support;

use std::sync::Arc;
use std::time::Duration;

use event_store::record::to_kafka_headers;
use event_store::sample::{Ledger, OpenAccount};
use event_store::writer::host::{WriteModel, WriterConfig};
use event_store::writer::metrics::WriterMetrics;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::EventDocument;
use support::{deposit, deposited_record};
use test_support::load::drive;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 8;
const ACCOUNTS: usize = 2_000;
const COMMANDS: usize = 20_000;
const CONCURRENCY: usize = 64;

/// Key, value and headers of one raw record.
type RawRecord = (String, Vec<u8>, Vec<(&'static str, String)>);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let broker = test_support::PrivateBroker::start().await;
    let settings = KafkaSettings::new(&broker.brokers);
    let topics = TopicNames::new("");
    let raw_topics = TopicNames::new("raw.");
    let admin = TopicAdmin::new(&settings)?;
    admin
        .create(&topics.for_services(&["ledger"], PARTITIONS), 1)
        .await?;
    admin
        .create(&raw_topics.for_services(&["ledger"], PARTITIONS), 1)
        .await?;

    let (model, runtime) = WriteModel::<Ledger>::new(
        WriterConfig::new(settings.clone(), topics, PARTITIONS),
        WriterMetrics::unregistered("ledger"),
    );
    let stop = CancellationToken::new();
    let writer = tokio::spawn(runtime.run(stop.clone()));
    let accounts: Arc<Vec<String>> = Arc::new((0..ACCOUNTS).map(|i| format!("acct-{i}")).collect());
    // Warm-up, and the accounts the deposits need.
    for account in accounts.iter() {
        let open = support::deposit(account, 0);
        let open = schemas::Command {
            meta: open.meta,
            payload: OpenAccount {
                account_id: account.clone(),
                initial_deposit: None,
            }
            .into(),
        };
        model.execute(open).await?;
    }

    // Raw: the same event records (and headers), idempotent, acks=all, same concurrency.
    let producer: FutureProducer = settings.producer().create()?;
    let raw_topic = raw_topics.events("ledger");
    let records: Arc<Vec<RawRecord>> = Arc::new(
        (0..COMMANDS)
            .map(|i| {
                let account = &accounts[i % ACCOUNTS];
                let value = deposited_record(account, 2 + (i / ACCOUNTS) as u64);
                let headers = EventDocument::from_json(&value).expect("ours").headers();
                (account.clone(), value, headers)
            })
            .collect(),
    );
    let raw = {
        let (producer, records, topic) =
            (producer.clone(), Arc::clone(&records), raw_topic.clone());
        drive(COMMANDS, CONCURRENCY, move |i| {
            let (producer, records, topic) =
                (producer.clone(), Arc::clone(&records), topic.clone());
            async move {
                let (key, value, headers) = &records[i];
                let record = FutureRecord::to(&topic)
                    .key(key)
                    .payload(value)
                    .headers(to_kafka_headers(headers));
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .expect("raw produce");
            }
        })
        .await
    };

    let store = {
        let (model, accounts) = (model.clone(), Arc::clone(&accounts));
        drive(COMMANDS, CONCURRENCY, move |i| {
            let (model, accounts) = (model.clone(), Arc::clone(&accounts));
            async move {
                let outcome = model
                    .execute(deposit(&accounts[i % ACCOUNTS], 1))
                    .await
                    .expect("a deposit");
                assert!(outcome.is_accepted());
            }
        })
        .await
    };
    stop.cancel();
    writer.await?;

    let (raw_p50, raw_p99) = raw.percentiles();
    let (store_p50, store_p99) = store.percentiles();
    println!(
        "write path: {COMMANDS} appends, {CONCURRENCY} concurrent, {PARTITIONS} partitions, a private Apache Kafka node"
    );
    println!("| path | appends/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "| raw rdkafka idempotent produce | {:.0} | {raw_p50:.2} | {raw_p99:.2} |",
        raw.per_second
    );
    println!(
        "| event store (decide + append + confirm) | {:.0} | {store_p50:.2} | {store_p99:.2} |",
        store.per_second
    );
    println!(
        "ratio: throughput {:.2} of raw (goal >= 0.5); p99 {:+.2} ms vs raw (goal <= +5 ms)",
        store.per_second / raw.per_second,
        store_p99 - raw_p99
    );
    Ok(())
}
