//! Fencing on the real broker: each partition's writer appends in Kafka transactions under
//! the partition's transactional id, so a second writer of the partition fences the first.
//! The first writer's late appends are refused by the broker, its callers get no 2xx, and
//! a read_committed reader of the log never sees a version twice.

use std::time::Duration;

use event_store::outcome::Outcome;
use event_store::sample::{Deposit, Ledger, LedgerCommand, OpenAccount};
use event_store::writer::log::{OutgoingRecord, PartitionLog, TransactionError};
use event_store::writer::metrics::WriterMetrics;
use event_store::writer::partition::{PartitionSettings, PartitionWriter, Request};
use event_store::{EventStoreError, KafkaSettings, TopicAdmin, TopicNames};
use rdkafka::Message;
use rdkafka::message::OwnedHeaders;
use schemas::{Command, CommandMeta, EventDocument};
use test_support::TestEnv;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const ID: &str = "ledger-writer-0";

fn command(payload: impl Into<LedgerCommand>) -> Command<LedgerCommand> {
    Command {
        meta: CommandMeta::new("/test"),
        payload: payload.into(),
    }
}

fn open(account: &str) -> Command<LedgerCommand> {
    command(OpenAccount {
        account_id: account.into(),
        initial_deposit: None,
    })
}

fn deposit(account: &str, amount: u64) -> Command<LedgerCommand> {
    command(Deposit {
        account_id: account.into(),
        amount,
    })
}

async fn ledger(env: &TestEnv) -> anyhow::Result<(KafkaSettings, TopicNames)> {
    let settings = KafkaSettings::new(&env.brokers);
    let topics = TopicNames::new(&env.topic_prefix);
    TopicAdmin::new(&settings)?
        .create(&topics.for_services(&["ledger"], 1), 1)
        .await?;
    Ok((settings, topics))
}

/// A writer of partition 0 under the one transactional id: taking over fences the others.
async fn take_over(
    settings: &KafkaSettings,
    topics: &TopicNames,
) -> anyhow::Result<PartitionWriter<Ledger>> {
    Ok(PartitionWriter::take_over(
        PartitionLog::transactional(settings.clone(), 0, &format!("{}{ID}", topics.prefix()))?,
        topics,
        &PartitionSettings::default(),
        WriterMetrics::unregistered("ledger"),
    )
    .await?)
}

/// A writer serving its queue on a task; the task ends when the writer stops.
struct Serving {
    queue: mpsc::Sender<Request<Ledger>>,
    task: tokio::task::JoinHandle<PartitionWriter<Ledger>>,
}

impl Serving {
    fn start(writer: PartitionWriter<Ledger>) -> Self {
        let (queue, requests) = mpsc::channel(16);
        let task = tokio::spawn(writer.serve(requests, CancellationToken::new()));
        Self { queue, task }
    }

    async fn execute(
        &self,
        command: Command<LedgerCommand>,
    ) -> Result<Outcome<event_store::sample::LedgerRejection>, EventStoreError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Request::Execute { command, reply })
            .await
            .map_err(|_| EventStoreError::NotOwner {
                service: "ledger",
                partition: 0,
            })?;
        outcome.await.unwrap_or(Err(EventStoreError::NotOwner {
            service: "ledger",
            partition: 0,
        }))
    }
}

/// Every committed event of partition 0, as a read_committed reader sees them.
async fn committed_events(
    settings: &KafkaSettings,
    topics: &TopicNames,
) -> anyhow::Result<Vec<EventDocument>> {
    let log = PartitionLog::reader(settings.clone(), 0)?;
    let topic = topics.events("ledger");
    let end = event_store::scan::settled_ends(settings, &topic)
        .await?
        .get(&0)
        .copied()
        .unwrap_or(0);
    let mut events = Vec::new();
    log.read_range(&topic, 0, end, |m| {
        events.push(EventDocument::from_json(m.payload().expect("a value")).expect("an event"));
    })
    .await?;
    Ok(events)
}

fn versions_of(events: &[EventDocument], account: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.subject == account)
        .map(|e| e.aggregateversion)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_of_a_partition_fences_the_first() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let (settings, topics) = ledger(&env).await?;
    let first = Serving::start(take_over(&settings, &topics).await?);
    let opened = first.execute(open("acc")).await?;
    assert!(
        matches!(opened, Outcome::Accepted { version: 1, .. }),
        "{opened:?}"
    );

    // The second writer takes over: it fences the first and reads what it committed.
    let second = take_over(&settings, &topics).await?;
    assert_eq!(second.core().slot("acc").map(|s| s.version), Some(1));
    let second = Serving::start(second);

    // The first one, unaware, decides on its state and appends: the broker refuses, its
    // caller gets "not owner" (no 2xx), and it stops serving by itself.
    let late = first.execute(deposit("acc", 5)).await;
    assert!(
        matches!(late, Err(EventStoreError::NotOwner { .. })),
        "a fenced writer's append must fail: {late:?}"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(10), first.task).await;
    assert!(stopped.is_ok(), "a fenced writer stops serving by itself");

    let accepted = second.execute(deposit("acc", 7)).await?;
    assert!(
        matches!(accepted, Outcome::Accepted { version: 2, .. }),
        "{accepted:?}"
    );
    let events = committed_events(&settings, &topics).await?;
    assert_eq!(
        versions_of(&events, "acc"),
        vec![1, 2],
        "one record per version"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_open_when_the_partition_moves_never_commits() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let (settings, topics) = ledger(&env).await?;
    let id = format!("{}{ID}", topics.prefix());
    let zombie = PartitionLog::transactional(settings.clone(), 0, &id)?;
    zombie
        .init_transactions()
        .await
        .map_err(TransactionError::into_inner)?;
    // The zombie's record is written and acknowledged inside its open transaction...
    zombie.begin().await.map_err(TransactionError::into_inner)?;
    let record = OutgoingRecord {
        key: "acc".into(),
        value: br#"{"not":"committed"}"#.to_vec(),
        headers: OwnedHeaders::new(),
    };
    let delivery = zombie.enqueue(&topics.events("ledger"), &record).await?;
    assert!(delivery.await?.is_ok(), "acknowledged, not yet committed");

    // ...when the new owner initializes: the broker aborts it, and its commit is refused.
    let successor = take_over(&settings, &topics).await?;
    let commit = zombie.commit().await;
    assert!(
        matches!(commit, Err(TransactionError::Fenced(_))),
        "the zombie's commit must be fenced: {commit:?}"
    );
    assert!(
        successor.core().slot("acc").is_none(),
        "the successor saw nothing"
    );
    assert!(committed_events(&settings, &topics).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_several_events_commits_them_together() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let (settings, topics) = ledger(&env).await?;
    let writer = Serving::start(take_over(&settings, &topics).await?);
    let opened = writer
        .execute(command(OpenAccount {
            account_id: "rich".into(),
            initial_deposit: Some(70),
        }))
        .await?;
    assert!(
        matches!(opened, Outcome::Accepted { version: 2, .. }),
        "{opened:?}"
    );

    // A new owner reads both events from the committed log.
    let successor = take_over(&settings, &topics).await?;
    let slot = successor.core().slot("rich").expect("the account");
    assert_eq!((slot.version, slot.state.balance), (2, 70));
    let events = committed_events(&settings, &topics).await?;
    assert_eq!(versions_of(&events, "rich"), vec![1, 2]);
    Ok(())
}
