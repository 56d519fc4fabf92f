//! The write model on the real broker: outcomes, optimistic concurrency, idempotency
//! across restarts. The aggregate is the store's own sample ledger.

use std::collections::HashMap;
use std::time::Duration;

use event_store::outcome::Outcome;
use event_store::sample::{
    Deposit, Ledger, LedgerCommand, LedgerEvent, LedgerRejection, OpenAccount, Withdraw,
};
use event_store::writer::host::{WriteModel, WriterConfig};
use event_store::writer::log::PartitionLog;
use event_store::writer::metrics::WriterMetrics;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use rdkafka::Message;
use rdkafka::producer::FutureProducer;
use schemas::{Command, CommandMeta, EventDocument};
use test_support::TestEnv;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 2;

struct Ledgers {
    settings: KafkaSettings,
    topics: TopicNames,
}

impl Ledgers {
    async fn new(env: &TestEnv) -> anyhow::Result<Self> {
        let settings = KafkaSettings::new(&env.brokers);
        let topics = TopicNames::new(&env.topic_prefix);
        TopicAdmin::new(&settings)?
            .create(&topics.for_services(&["ledger"], PARTITIONS), 1)
            .await?;
        Ok(Self { settings, topics })
    }

    /// A running write model; it stops (leaving the group) when the token is cancelled.
    fn start(
        &self,
    ) -> (
        WriteModel<Ledger>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let config = WriterConfig::new(self.settings.clone(), self.topics.clone(), PARTITIONS);
        let (model, runtime) = WriteModel::new(config, WriterMetrics::unregistered("ledger"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(runtime.run(stop.clone()));
        (model, stop, task)
    }

    /// Every event record of the ledger, per partition, in log order.
    async fn events(&self) -> anyhow::Result<Vec<EventDocument>> {
        let topic = self.topics.events("ledger");
        let ends = event_store::scan::settled_ends(&self.settings, &topic).await?;
        let mut all = Vec::new();
        for partition in 0..PARTITIONS {
            let log = PartitionLog::reader(self.settings.clone(), partition)?;
            let end = ends.get(&partition).copied().unwrap_or(0);
            log.read_range(&topic, 0, end, |m| {
                all.push(EventDocument::from_json(m.payload().expect("a value")).expect("ours"));
            })
            .await?;
        }
        Ok(all)
    }
}

fn command(payload: impl Into<LedgerCommand>, expected: Option<u64>) -> Command<LedgerCommand> {
    Command {
        meta: CommandMeta {
            expected_version: expected,
            ..CommandMeta::new("/test")
        },
        payload: payload.into(),
    }
}

fn open(account: &str) -> Command<LedgerCommand> {
    command(
        OpenAccount {
            account_id: account.into(),
            initial_deposit: None,
        },
        None,
    )
}

fn deposit(account: &str, amount: u64, expected: Option<u64>) -> Command<LedgerCommand> {
    command(
        Deposit {
            account_id: account.into(),
            amount,
        },
        expected,
    )
}

#[tokio::test]
async fn commands_are_decided_appended_and_answered_with_versions_and_positions()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let ledgers = Ledgers::new(&env).await?;
    let (model, stop, task) = ledgers.start();

    let opened = model.execute(open("acc-1")).await?;
    let Outcome::Accepted {
        version: 1,
        position: Some(first),
        ..
    } = opened
    else {
        panic!("open accepted at version 1: {opened:?}");
    };
    let deposited = model.execute(deposit("acc-1", 50, Some(1))).await?;
    let Outcome::Accepted {
        version: 2,
        position: Some(second),
        ..
    } = deposited
    else {
        panic!("deposit accepted at version 2: {deposited:?}");
    };
    assert_eq!(second.partition, first.partition);
    assert_eq!(second.partition, model.partition_of("acc-1"));
    assert!(second.offset > first.offset);

    let refused = model
        .execute(command(
            Withdraw {
                account_id: "acc-1".into(),
                amount: 51,
            },
            None,
        ))
        .await?;
    assert_eq!(
        refused,
        Outcome::Rejected {
            aggregate_id: "acc-1".into(),
            version: 2,
            reason: LedgerRejection::InsufficientFunds { balance: 50 },
        }
    );

    let events = ledgers.events().await?;
    let types: Vec<(&str, u64)> = events
        .iter()
        .map(|e| (e.event_type.as_str(), e.aggregateversion))
        .collect();
    assert_eq!(types, [("AccountOpened", 1), ("Deposited", 2)]);
    let decoded = events[1].clone().decode::<LedgerEvent>()?;
    assert_eq!(decoded.meta.version, 2);
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn of_100_concurrent_commands_expecting_one_version_exactly_one_is_accepted()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let ledgers = Ledgers::new(&env).await?;
    let (model, stop, task) = ledgers.start();
    model.execute(open("hot")).await?;
    let before = ledgers.events().await?.len();

    let attempts = (0..100).map(|i| {
        let model = model.clone();
        tokio::spawn(async move { model.execute(deposit("hot", i + 1, Some(1))).await })
    });
    let mut accepted = 0;
    let mut conflicts = 0;
    for attempt in attempts {
        match attempt.await?? {
            Outcome::Accepted { version: 2, .. } => accepted += 1,
            Outcome::Conflict {
                expected: 1,
                current: 2,
                ..
            } => conflicts += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((accepted, conflicts), (1, 99));
    let events = ledgers.events().await?;
    assert_eq!(events.len(), before + 1, "exactly one new event in the log");
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn one_command_id_five_times_gives_one_set_of_events_and_five_identical_outcomes()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let ledgers = Ledgers::new(&env).await?;
    let (model, stop, task) = ledgers.start();
    model.execute(open("acc")).await?;
    let same = deposit("acc", 10, None);
    let refused_once = command(
        Withdraw {
            account_id: "acc".into(),
            amount: 1_000,
        },
        None,
    );

    let concurrent: Vec<_> = (0..5)
        .map(|_| {
            let (model, same) = (model.clone(), same.clone());
            tokio::spawn(async move { model.execute(same).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for attempt in concurrent {
        outcomes.push(attempt.await??);
    }
    let refusal = model.execute(refused_once.clone()).await?;
    assert!(matches!(refusal, Outcome::Rejected { .. }));
    stop.cancel();
    task.await?;

    // A new writer (a restart) rebuilds from the log and answers the same.
    let (restarted, stop, task) = ledgers.start();
    outcomes.push(restarted.execute(same.clone()).await?);
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
    assert!(matches!(outcomes[0], Outcome::Accepted { version: 2, .. }));
    // A refusal is remembered across the restart too, even though money arrived since.
    restarted.execute(deposit("acc", 5_000, None)).await?;
    assert_eq!(restarted.execute(refused_once).await?, refusal);

    let deposits: HashMap<String, usize> =
        ledgers
            .events()
            .await?
            .iter()
            .fold(HashMap::new(), |mut counts, e| {
                *counts.entry(e.commandid.to_string()).or_default() += 1;
                counts
            });
    assert_eq!(deposits[&same.meta.id.to_string()], 1, "one set of events");
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_write_model_without_a_broker_answers_unavailable_in_bounded_time() -> anyhow::Result<()>
{
    let env = TestEnv::new().await;
    let mut settings = KafkaSettings::new("127.0.0.1:1");
    settings.timeout = Duration::from_secs(1);
    let mut config = WriterConfig::new(settings, TopicNames::new(&env.topic_prefix), PARTITIONS);
    config.ownership_wait = Duration::from_secs(2);
    let (model, runtime) = WriteModel::<Ledger>::new(config, WriterMetrics::unregistered("ledger"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(runtime.run(stop.clone()));
    let started = std::time::Instant::now();
    let err = model.execute(open("nowhere")).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("retry"), "{err}");
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn the_writer_answers_what_state_it_decides_on() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let ledgers = Ledgers::new(&env).await?;
    let (model, stop, task) = ledgers.start();
    assert_eq!(model.state_of("nobody").await?.0, 0);
    model.execute(open("acc")).await?;
    model.execute(deposit("acc", 42, None)).await?;
    let (version, state) = model.state_of("acc").await?;
    assert_eq!((version, state.balance), (2, 42));
    stop.cancel();
    task.await?;
    Ok(())
}

/// Commands on the command topic (the saga's path) that are there before the writer joins
/// arrive while it is still taking its partitions over: every one must still be decided,
/// none skipped by a later record's commit.
#[tokio::test]
async fn commands_waiting_on_the_command_topic_at_takeover_are_all_decided() -> anyhow::Result<()> {
    use event_store::partitioner::partition_for;
    use event_store::scan::{committed, settled_ends};
    use rdkafka::producer::FutureRecord;

    let env = TestEnv::new().await;
    let ledgers = Ledgers::new(&env).await?;
    // A history long enough that taking the partitions over takes a while.
    let (model, stop, task) = ledgers.start();
    let history = futures_util::future::join_all((0..40).map(|i| {
        let model = model.clone();
        async move {
            let account = format!("history-{i}");
            model.execute(open(&account)).await?;
            for _ in 0..50 {
                model.execute(deposit(&account, 1, None)).await?;
            }
            anyhow::Ok(())
        }
    }));
    history
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    stop.cancel();
    task.await?;

    let producer: FutureProducer = ledgers.settings.producer().create()?;
    let topic = ledgers.topics.commands("ledger");
    let accounts: Vec<String> = (0..200).map(|i| format!("takeover-{i}")).collect();
    for account in &accounts {
        let document = open(account).to_document();
        let value = document.to_json();
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(partition_for(account, PARTITIONS))
                    .key(account)
                    .payload(&value),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
    }

    let (_model, stop, task) = ledgers.start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let opened = loop {
        let opened: std::collections::HashSet<String> = ledgers
            .events()
            .await?
            .into_iter()
            .map(|e| e.subject)
            .filter(|s| s.starts_with("takeover-"))
            .collect();
        if opened.len() == accounts.len() || tokio::time::Instant::now() > deadline {
            break opened;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let missing: Vec<&String> = accounts.iter().filter(|a| !opened.contains(*a)).collect();
    assert!(missing.is_empty(), "never decided: {missing:?}");

    // Every record's offset is committed once its outcome is known.
    let ends = settled_ends(&ledgers.settings, &topic).await?;
    let group = ledgers.topics.writers_group("ledger");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done = committed(&ledgers.settings, &group, &topic, PARTITIONS).await?;
        if ends
            .iter()
            .all(|(p, end)| done.get(p).copied().flatten() == Some(*end))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {done:?}, ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.cancel();
    task.await?;
    Ok(())
}
