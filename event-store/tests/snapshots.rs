//! Snapshots on the real broker and Postgres: a writer leaving its partition saves what
//! changed; the next owner starts from the snapshot and replays only the tail.

use std::sync::Arc;
use std::time::Duration;

use event_store::outcome::Outcome;
use event_store::sample::{Deposit, Ledger, LedgerCommand, LedgerRejection, OpenAccount, Withdraw};
use event_store::writer::core::MemoryBudget;
use event_store::writer::host::{WriteModel, WriterConfig};
use event_store::writer::log::PartitionLog;
use event_store::writer::metrics::WriterMetrics;
use event_store::writer::partition::{PartitionSettings, PartitionWriter, SnapshotPolicy};
use event_store::writer::snapshot::SnapshotStore;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use schemas::{Command, CommandMeta};
use test_support::TestEnv;
use tokio_util::sync::CancellationToken;

fn command(payload: LedgerCommand) -> Command<LedgerCommand> {
    Command {
        meta: CommandMeta::new("/test"),
        payload,
    }
}

fn deposit(account: &str, amount: u64) -> Command<LedgerCommand> {
    command(
        Deposit {
            account_id: account.into(),
            amount,
        }
        .into(),
    )
}

#[tokio::test]
async fn a_new_owner_starts_from_the_snapshot_and_replays_only_the_tail() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    SnapshotStore::migrator().run(&pool).await?;
    let store = Arc::new(SnapshotStore::new(pool.clone()));
    let settings = KafkaSettings::new(&env.brokers);
    let topics = TopicNames::new(&env.topic_prefix);
    TopicAdmin::new(&settings)?
        .create(&topics.for_services(&["ledger"], 1), 1)
        .await?;
    let mut config = WriterConfig::new(settings.clone(), topics.clone(), 1);
    config.partition.snapshots = Some(Arc::clone(&store));
    config.partition.snapshot_policy = SnapshotPolicy {
        every_events: 10,
        every: Duration::from_secs(3600),
    };

    let (model, runtime) =
        WriteModel::<Ledger>::new(config.clone(), WriterMetrics::unregistered("ledger"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(runtime.run(stop.clone()));
    let opened = command(
        OpenAccount {
            account_id: "acc".into(),
            initial_deposit: None,
        }
        .into(),
    );
    let first_outcome = model.execute(opened.clone()).await?;
    for amount in 1..=24 {
        model.execute(deposit("acc", amount)).await?;
    }
    let refused = command(
        Withdraw {
            account_id: "acc".into(),
            amount: 10_000,
        }
        .into(),
    );
    let refusal = model.execute(refused.clone()).await?;
    // Leaving the partition saves what changed since the last cut.
    stop.cancel();
    task.await?;

    let (events_offset, version): (i64, i64) = sqlx::query_as(
        "SELECT s.events_offset, a.version FROM event_store.snapshots s \
         JOIN event_store.snapshot_aggregates a USING (service, partition) \
         WHERE s.service = 'ledger' AND a.aggregate_id = 'acc'",
    )
    .fetch_one(&pool)
    .await?;
    // 25 events, each committed alone: each followed by its transaction's commit marker.
    assert_eq!(
        (events_offset, version),
        (49, 25),
        "the snapshot covers all 25 events"
    );

    // The tail: events the snapshot does not cover, written by a later owner.
    let (model, runtime) = WriteModel::<Ledger>::new(
        WriterConfig::new(settings.clone(), topics.clone(), 1),
        WriterMetrics::unregistered("ledger"),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(runtime.run(stop.clone()));
    model.execute(deposit("acc", 1000)).await?;
    stop.cancel();
    task.await?;

    // Tamper with the snapshot: if the next owner read the log from the start instead,
    // it could not know this balance.
    sqlx::query(
        "UPDATE event_store.snapshot_aggregates SET state = jsonb_set(state, '{balance}', '5000') \
         WHERE aggregate_id = 'acc'",
    )
    .execute(&pool)
    .await?;
    let id = format!("{}ledger-writer-0", topics.prefix());
    let writer = PartitionWriter::<Ledger>::take_over(
        PartitionLog::transactional(settings.clone(), 0, &id)?,
        &topics,
        &PartitionSettings {
            snapshots: Some(Arc::clone(&store)),
            ..PartitionSettings::default()
        },
        WriterMetrics::unregistered("ledger"),
    )
    .await?;
    let slot = writer.core().slot("acc").expect("the account");
    assert_eq!(
        slot.state.balance,
        5000 + 1000,
        "snapshot state plus the replayed tail"
    );
    assert_eq!(slot.version, 26);
    // The 26th event follows the snapshot's offset 49 (the 25th event's commit marker).
    assert_eq!(writer.core().next_offset, 51);
    drop(writer);

    // Outcomes from before the snapshot stay in the store, and are answered the same.
    let (model, runtime) = WriteModel::<Ledger>::new(config, WriterMetrics::unregistered("ledger"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(runtime.run(stop.clone()));
    assert_eq!(model.execute(opened).await?, first_outcome);
    assert_eq!(model.execute(refused).await?, refusal);
    assert!(matches!(refusal, Outcome::Rejected { .. }));
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_writer_over_its_memory_budget_reads_back_what_it_let_go() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    SnapshotStore::migrator().run(&pool).await?;
    let settings = KafkaSettings::new(&env.brokers);
    let topics = TopicNames::new(&env.topic_prefix);
    TopicAdmin::new(&settings)?
        .create(&topics.for_services(&["ledger"], 1), 1)
        .await?;
    let mut config = WriterConfig::new(settings, topics, 1);
    config.partition.snapshots = Some(Arc::new(SnapshotStore::new(pool.clone())));
    // A cut after every batch, and room for 4 accounts and 4 outcomes.
    config.partition.snapshot_policy = SnapshotPolicy {
        every_events: 1,
        every: Duration::from_secs(3600),
    };
    config.partition.memory = MemoryBudget {
        aggregates: 4,
        outcomes: 4,
        ..MemoryBudget::default()
    };
    let metrics = WriterMetrics::unregistered("ledger");
    let (model, runtime) = WriteModel::<Ledger>::new(config, metrics.clone());
    let stop = CancellationToken::new();
    let task = tokio::spawn(runtime.run(stop.clone()));

    // Given 20 accounts, each opened with a deposit of its number.
    let mut opened = Vec::new();
    for n in 0..20u64 {
        let open = command(
            OpenAccount {
                account_id: format!("acc{n}"),
                initial_deposit: Some(n + 1),
            }
            .into(),
        );
        let outcome = model.execute(open.clone()).await?;
        opened.push((open, outcome));
    }

    // When each is asked for one more than its balance, then for exactly its balance.
    for n in 0..20u64 {
        let account = format!("acc{n}");
        let too_much = command(
            Withdraw {
                account_id: account.clone(),
                amount: n + 2,
            }
            .into(),
        );
        let refused = model.execute(too_much).await?;
        assert!(
            matches!(
                refused,
                Outcome::Rejected { version: 2, reason: LedgerRejection::InsufficientFunds { balance }, .. }
                    if balance == n + 1
            ),
            "{account} is read back with its balance: {refused:?}"
        );
        let all = command(
            Withdraw {
                account_id: account,
                amount: n + 1,
            }
            .into(),
        );
        assert!(matches!(
            model.execute(all).await?,
            Outcome::Accepted { version: 3, .. }
        ));
    }

    // Then a retried command, long out of memory, gets its first outcome back.
    for (open, outcome) in &opened {
        assert_eq!(&model.execute(open.clone()).await?, outcome);
    }
    let labels = |key: &'static str, value: &str| {
        vec![("service", "ledger".to_owned()), (key, value.to_owned())]
    };
    let held = metrics
        .aggregates_held
        .get_or_create(&labels("partition", "0"))
        .get();
    assert!(
        held <= 5,
        "at most the budget and one batch's aggregate: {held}"
    );
    let recalled = |kind| metrics.recalled.get_or_create(&labels("kind", kind)).get();
    assert!(recalled("aggregate") >= 16, "{}", recalled("aggregate"));
    assert!(recalled("outcome") >= 16, "{}", recalled("outcome"));
    stop.cancel();
    task.await?;
    Ok(())
}
