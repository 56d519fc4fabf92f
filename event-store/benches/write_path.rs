//! Appends per second and latency of the write model against raw rdkafka idempotent
//! produce of the same records, to the same broker, at the same concurrency, in one run.
//!
//!     ./dev bench            (or: cargo bench -p event-store --bench write_path)
//!
//! The broker is a private Apache Kafka node, like the local stack's.

mod support;

use std::sync::Arc;
use std::time::Duration;

use event_store::partitioner::partition_for;
use event_store::record::to_kafka_headers;
use event_store::sample::{Ledger, OpenAccount};
use event_store::writer::host::{WriteModel, WriterConfig};
use event_store::writer::metrics::WriterMetrics;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use prometheus_client::registry::Registry;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::EventDocument;
use support::{deposit, deposited_record};
use test_support::load::drive;
use test_support::metrics::observed;
use test_support::raw_transactions::{self, TransactionalSenders};
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
    let raw_tx_topics = TopicNames::new("raw-tx.");
    let admin = TopicAdmin::new(&settings)?;
    admin
        .create(&raw_tx_topics.for_services(&["ledger"], PARTITIONS), 1)
        .await?;
    admin
        .create(&topics.for_services(&["ledger"], PARTITIONS), 1)
        .await?;
    admin
        .create(&raw_topics.for_services(&["ledger"], PARTITIONS), 1)
        .await?;

    let mut registry = Registry::default();
    let (model, runtime) = WriteModel::<Ledger>::new(
        WriterConfig::new(settings.clone(), topics, PARTITIONS),
        WriterMetrics::register(&mut registry, "ledger"),
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

    // Raw transactional: the same records, committed by one transactional producer per
    // partition, each transaction taking every record waiting for its partition.
    let raw_tx_topic = raw_tx_topics.events("ledger");
    let senders =
        TransactionalSenders::start(&settings.producer(), &raw_tx_topic, PARTITIONS, "raw-tx")
            .await;
    let raw_tx_records = records
        .iter()
        .map(|(key, value, headers)| raw_transactions::RawRecord {
            partition: partition_for(key, PARTITIONS),
            key: key.clone(),
            value: value.clone(),
            headers: to_kafka_headers(headers),
        })
        .collect();
    let raw_tx = senders.drive(raw_tx_records, CONCURRENCY).await;

    let before = metrics_text(&registry)?;
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
    let (tx_p50, tx_p99) = raw_tx.percentiles();
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
        "| raw rdkafka transactional produce (a producer per partition, group commit) | {:.0} | {tx_p50:.2} | {tx_p99:.2} |",
        raw_tx.per_second
    );
    println!(
        "| event store (decide + append + confirm) | {:.0} | {store_p50:.2} | {store_p99:.2} |",
        store.per_second
    );
    println!();
    println!(
        "ratio: throughput {:.2} of raw transactional (goal >= 0.7); p99 {:+.2} ms vs raw transactional (goal <= +5 ms)",
        store.per_second / raw_tx.per_second,
        store_p99 - tx_p99
    );
    println!(
        "against raw idempotent produce (no transactions): throughput {:.2}, p99 {:+.2} ms",
        store.per_second / raw.per_second,
        store_p99 - raw_p99
    );
    let after = metrics_text(&registry)?;
    println!("where the store's time goes, per transaction:");
    let mut transactions = 0;
    for stage in ["produce", "commit"] {
        let step = observed(
            &before,
            &after,
            "writer_transaction_seconds",
            &[("stage", stage)],
        );
        println!(
            "  {stage}: mean {:.2} ms, p99 <= {:.0} ms, over {} transactions",
            step.mean() * 1000.0,
            step.p99_bound * 1000.0,
            step.count
        );
        transactions = step.count;
    }
    let commands = observed(&before, &after, "writer_batch_size", &[]).sum;
    println!(
        "  commands per transaction: {:.1}",
        commands / transactions.max(1) as f64
    );
    Ok(())
}

fn metrics_text(registry: &Registry) -> anyhow::Result<String> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}
