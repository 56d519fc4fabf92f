//! Takeover: the time from a partition's assignment to serving, with 1,000,000 events in
//! its history, without and with a snapshot.
//!
//!     ./dev bench            (or, with SHOP_TEST_DATABASE_URL set: cargo bench -p event-store --bench takeover)
//!
//! The broker is a private Apache Kafka node; snapshots go to the Postgres that
//! `SHOP_TEST_DATABASE_URL` points at (a fresh database is created).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::sample::{AccountOpened, Ledger, LedgerEvent};
use event_store::writer::log::PartitionLog;
use event_store::writer::metrics::WriterMetrics;
use event_store::writer::partition::{PartitionSettings, PartitionWriter};
use event_store::writer::snapshot::SnapshotStore;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::{Event, EventMeta};
use support::deposited_record;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const EVENTS: u64 = 1_000_000;
const ACCOUNTS: u64 = 1_000;
const TAIL: u64 = 10_000;

fn opened_record(account: &str) -> Vec<u8> {
    Event {
        meta: EventMeta::new(1),
        payload: LedgerEvent::AccountOpened(AccountOpened {
            account_id: account.into(),
        }),
    }
    .to_document()
    .to_json()
}

/// Appends events `from..to` of the history: account `n % ACCOUNTS`, contiguous versions.
async fn append(producer: &FutureProducer, topic: &str, from: u64, to: u64) -> anyhow::Result<()> {
    let mut in_flight = std::collections::VecDeque::new();
    for n in from..to {
        let account = format!("acct-{}", n % ACCOUNTS);
        let version = n / ACCOUNTS + 1;
        let value = if version == 1 {
            opened_record(&account)
        } else {
            deposited_record(&account, version)
        };
        loop {
            let record = FutureRecord::to(topic)
                .partition(0)
                .key(&account)
                .payload(&value);
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push_back(delivery);
                    break;
                }
                Err(_) => {
                    if let Some(oldest) = in_flight.pop_front() {
                        oldest.await?.map_err(|(e, _)| e)?;
                    }
                }
            }
        }
        if in_flight.len() >= 50_000 {
            in_flight
                .pop_front()
                .expect("in flight")
                .await?
                .map_err(|(e, _)| e)?;
        }
    }
    for delivery in in_flight {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

async fn take_over(
    settings: &KafkaSettings,
    snapshots: Option<Arc<SnapshotStore>>,
) -> anyhow::Result<(Duration, PartitionWriter<Ledger>)> {
    let started = Instant::now();
    let writer = PartitionWriter::<Ledger>::take_over(
        PartitionLog::transactional(settings.clone(), 0, "ledger-writer-0")?,
        &TopicNames::new(""),
        &PartitionSettings {
            snapshots,
            ..PartitionSettings::default()
        },
        WriterMetrics::unregistered("ledger"),
    )
    .await?;
    Ok((started.elapsed(), writer))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = test_support::TestEnv::new().await;
    let pool = env.pool().await;
    SnapshotStore::migrator().run(&pool).await?;
    let store = Arc::new(SnapshotStore::new(pool));

    let broker = test_support::PrivateBroker::start().await;
    let mut settings = KafkaSettings::new(&broker.brokers);
    settings.timeout = Duration::from_secs(30);
    let topics = TopicNames::new("");
    TopicAdmin::new(&settings)?
        .create(&topics.for_services(&["ledger"], 1), 1)
        .await?;
    let topic = topics.events("ledger");
    let producer: FutureProducer = settings.producer().create()?;

    let started = Instant::now();
    append(&producer, &topic, 0, EVENTS).await?;
    let produced = started.elapsed();
    println!(
        "history: {EVENTS} events on {ACCOUNTS} aggregates in one partition, produced in {produced:.1?}"
    );

    let (full, writer) = take_over(&settings, None).await?;
    assert_eq!(writer.core().next_offset, EVENTS as i64);
    drop(writer);

    // A writer with snapshots takes over once (full replay), serves, and leaves: leaving
    // saves its snapshot. Then the history grows by a tail the snapshot does not cover.
    let (_, writer) = take_over(&settings, Some(Arc::clone(&store))).await?;
    let stop = CancellationToken::new();
    stop.cancel();
    let (_, requests) = mpsc::channel(1);
    drop(writer.serve(requests, stop).await);
    append(&producer, &topic, EVENTS, EVENTS + TAIL).await?;

    let (with_snapshot, writer) = take_over(&settings, Some(store)).await?;
    assert_eq!(writer.core().next_offset, (EVENTS + TAIL) as i64);

    println!("| takeover of one partition | seconds |");
    println!("|---|---|");
    println!(
        "| replaying all {EVENTS} events | {:.2} |",
        full.as_secs_f64()
    );
    println!(
        "| from a snapshot, replaying a tail of {TAIL} events | {:.2} |",
        with_snapshot.as_secs_f64()
    );
    println!(
        "with snapshots: {:.2} s (goal <= 5 s), {:.1}x faster than replay",
        with_snapshot.as_secs_f64(),
        full.as_secs_f64() / with_snapshot.as_secs_f64()
    );
    Ok(())
}
