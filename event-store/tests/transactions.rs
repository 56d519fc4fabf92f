//! The transactional write path, for Apache Kafka. tansu 0.6.0 cannot commit transactions,
//! so these run on librdkafka's mock cluster, which implements the transaction protocol
//! (InitProducerId, AddPartitionsToTxn, EndTxn) and consumer groups: a client-logic test of
//! our use of it, not a test of a broker.

use std::time::Duration;

use event_store::outcome::Outcome;
use event_store::sample::{Ledger, LedgerCommand, LedgerRejection, OpenAccount, Withdraw};
use event_store::writer::host::{WriteModel, WriterConfig};
use event_store::writer::log::PartitionLog;
use event_store::writer::metrics::WriterMetrics;
use event_store::writer::partition::{PartitionSettings, PartitionWriter, Request};
use event_store::{EventStoreError, KafkaSettings, TopicNames};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use schemas::{Command, CommandMeta};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

fn command(payload: impl Into<LedgerCommand>) -> Command<LedgerCommand> {
    Command {
        meta: CommandMeta::new("/test"),
        payload: payload.into(),
    }
}

fn open_with(account: &str, initial_deposit: u64) -> Command<LedgerCommand> {
    command(OpenAccount {
        account_id: account.into(),
        initial_deposit: Some(initial_deposit),
    })
}

fn cluster() -> anyhow::Result<(
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    KafkaSettings,
    TopicNames,
)> {
    let cluster = MockCluster::new(1)?;
    let topics = TopicNames::new("");
    for spec in topics.for_services(&["ledger"], 1) {
        cluster.create_topic(&spec.name, spec.partitions, 1)?;
    }
    let mut settings = KafkaSettings::new(cluster.bootstrap_servers());
    settings.timeout = Duration::from_secs(10);
    Ok((cluster, settings, topics))
}

fn transactional() -> PartitionSettings {
    PartitionSettings {
        transactions: true,
        ..PartitionSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_several_events_commits_them_together() -> anyhow::Result<()> {
    let (_cluster, settings, topics) = cluster()?;
    let mut config = WriterConfig::new(settings.clone(), topics.clone(), 1);
    config.partition = transactional();
    let (model, runtime) = WriteModel::<Ledger>::new(config, WriterMetrics::unregistered("ledger"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(runtime.run(stop.clone()));

    let opened = model.execute(open_with("acc", 70)).await?;
    assert!(
        matches!(opened, Outcome::Accepted { version: 2, .. }),
        "{opened:?}"
    );
    let refused = model
        .execute(command(Withdraw {
            account_id: "acc".into(),
            amount: 71,
        }))
        .await?;
    assert!(matches!(
        refused,
        Outcome::Rejected {
            reason: LedgerRejection::InsufficientFunds { balance: 70 },
            ..
        }
    ));
    stop.cancel();
    task.await?;

    // A new owner reads the committed log: both events, and the recorded refusal.
    let log = PartitionLog::transactional(settings, 0, "ledger-writer-0")?;
    let writer = PartitionWriter::<Ledger>::take_over(
        log,
        &topics,
        &transactional(),
        WriterMetrics::unregistered("ledger"),
    )
    .await?;
    let slot = writer.core().slot("acc").expect("the account");
    assert_eq!((slot.version, slot.state.balance), (2, 70));
    Ok(())
}

/// Apache Kafka fences the old producer of a transactional id when a new one initializes;
/// the mock cluster does not (it issues a new producer id each time), so the broker's signal
/// is injected here: the writer must answer "not owner" and stop serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_told_it_is_fenced_answers_not_owner_and_stops() -> anyhow::Result<()> {
    let (cluster, settings, topics) = cluster()?;
    let id = "ledger-writer-0";
    let zombie = PartitionWriter::<Ledger>::take_over(
        PartitionLog::transactional(settings.clone(), 0, id)?,
        &topics,
        &transactional(),
        WriterMetrics::unregistered("ledger"),
    )
    .await?;
    cluster.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    let (outcome, stopped) = serve_one_and_watch(zombie, open_with("z", 5)).await;
    assert!(
        matches!(outcome, Err(EventStoreError::NotOwner { .. })),
        "{outcome:?}"
    );
    assert!(stopped, "a fenced writer stops serving by itself");
    // What the broker does with the fenced transaction (Kafka aborts it when the new
    // producer initializes) is beyond the mock; that the caller was not told "accepted" and
    // the writer stopped is ours.
    Ok(())
}

/// Runs `writer` on one command; the outcome, and whether the writer stopped on its own.
async fn serve_one_and_watch(
    writer: PartitionWriter<Ledger>,
    command: Command<LedgerCommand>,
) -> (Result<Outcome<LedgerRejection>, EventStoreError>, bool) {
    let (queue, requests) = mpsc::channel(1);
    let (reply, outcome) = oneshot::channel();
    queue
        .send(Request::Execute { command, reply })
        .await
        .expect("queue open");
    let serving = tokio::spawn(writer.serve(requests, CancellationToken::new()));
    let result = outcome.await.expect("an answer");
    let stopped = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .is_ok();
    drop(queue);
    (result, stopped)
}
