//! The reader's loop: subscribe from the offsets stored in Postgres, and per batch claim
//! its partitions' checkpoints, let the handler write, store versions and next offsets,
//! commit, then tell the consumer. Postgres or the broker being down is waited out with a
//! bounded backoff; nothing is skipped meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use schemas::EventDocument;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;

use super::bookkeeping::{self, Checkpoint};
use super::record::{Record, last_times, records_of};
use super::schema::Schema;
use crate::client::KafkaSettings;
use crate::error::EventStoreError;
use crate::subscription::{Batch, DeadLetters, Offsets, Subscription, TopicPartition};

/// How often the lag is measured against the partitions' ends.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// How long one poll waits for a first record.
const POLL: Duration = Duration::from_millis(250);

/// What a reader does with its batches: the projectors and the saga orchestrator are
/// handlers; the loop, the offsets and the versions are the reader's.
pub trait BatchHandler: Send + Sync {
    /// What one batch did, for the handler's metrics and logs.
    type Report: fmt::Debug + Send;
    /// Its failures; the loop logs them and retries the batch after a backoff.
    type Error: fmt::Display + From<sqlx::Error> + From<EventStoreError> + Send;

    /// Names the reader in logs.
    fn name(&self) -> &str;

    /// The schema holding its checkpoints and versions.
    fn schema(&self) -> &Schema;

    /// The database it writes.
    fn pool(&self) -> &PgPool;

    /// Readies its tables before the first batch (migrations); retried with backoff.
    fn prepare(&self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// Begins a batch's transaction; a handler whose batches must be serialized against
    /// an operator takes its lock here.
    fn begin(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Postgres>, sqlx::Error>> + Send {
        self.pool().begin()
    }

    /// Writes one batch through `tx`. Every record is this reader's to apply: those
    /// another instance stored meanwhile (a rebalance in flight) are gone. Without
    /// `dead_letters` (a rebuild: the live reader sent them when it met the records)
    /// poison records are only set aside.
    /// The batch comes with its [`Span`]: where it stands in its partitions.
    fn write<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        batch: (&'a [Record], Span<'a>),
        dead_letters: Option<&'a DeadLetters>,
        stages: &'a mut Stages,
    ) -> impl Future<Output = Result<Written<Self::Report>, Self::Error>> + Send + 'a;

    /// A batch's transaction committed.
    fn committed(&self, report: &Self::Report, stages: &Stages);

    /// Records waiting in the assigned partitions, and the age of the last record applied
    /// from the most delayed of them.
    fn lag(&self, events: u64, seconds: f64);

    /// The reader keeps up: a poll found nothing, or a second batch in a row was less
    /// than full (called at every such poll, after the batch is applied). One short batch
    /// alone says little: the first poll of a start often finds the consumer's buffer
    /// still filling.
    fn caught_up(&self) {}
}

/// Where a batch stands in its partitions: the next offsets stored before it, as its claim
/// found them (another instance may have moved them), and the next offsets after it.
#[derive(Clone, Copy, Debug)]
pub struct Span<'a> {
    pub before: &'a HashMap<TopicPartition, i64>,
    pub after: &'a BTreeMap<TopicPartition, i64>,
}

/// What a handler wrote: the last version it took of each aggregate whose version it
/// does not keep itself (stored with the offsets, in the same transaction; a projector's
/// rows keep theirs) and its report.
#[derive(Debug)]
pub struct Written<R> {
    pub versions: HashMap<String, u64>,
    pub report: R,
}

/// Time per stage of a batch, taken one after the other.
#[derive(Debug)]
pub struct Stages {
    at: Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Stages {
    pub fn start() -> Self {
        Self {
            at: Instant::now(),
            took: Vec::with_capacity(8),
        }
    }

    /// Ends `stage` now and starts the next.
    pub fn lap(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.took.push((stage, now - self.at));
        self.at = now;
    }

    /// Every stage ended so far, in order.
    pub fn took(&self) -> &[(&'static str, Duration)] {
        &self.took
    }

    /// The time of the stages after the wait for the batch ("consume").
    pub fn writing(&self) -> Duration {
        self.took
            .iter()
            .filter(|(stage, _)| *stage != "consume")
            .map(|(_, took)| *took)
            .sum()
    }
}

/// One batch inside the caller's transaction `tx`: claims the checkpoints of its
/// partitions, drops the records another instance stored meanwhile, lets the handler
/// write, and stores the versions and `next_offsets`.
///
/// The claim locks the checkpoint rows, so another instance that read the same
/// partitions waits, then sees how far this one got.
pub async fn write_batch<H: BatchHandler>(
    handler: &H,
    tx: &mut PgConnection,
    records: &mut Vec<Record>,
    next_offsets: &BTreeMap<TopicPartition, i64>,
    dead_letters: Option<&DeadLetters>,
    stages: &mut Stages,
) -> Result<H::Report, H::Error> {
    let partitions: Vec<TopicPartition> = next_offsets.keys().cloned().collect();
    let claimed = bookkeeping::claim(&mut *tx, handler.schema(), &partitions).await?;
    records.retain(|record| {
        let (topic, partition, offset) = record.position();
        claimed
            .get(&(topic.to_owned(), partition))
            .is_none_or(|next| offset >= *next)
    });
    stages.lap("claim");
    let span = Span {
        before: &claimed,
        after: next_offsets,
    };
    let written = handler
        .write(&mut *tx, (records, span), dead_letters, stages)
        .await?;
    bookkeeping::store_progress(
        &mut *tx,
        handler.schema(),
        &written.versions,
        (next_offsets, &last_times(records)),
    )
    .await?;
    stages.lap("bookkeeping");
    Ok(written.report)
}

/// One batch in a transaction of its own ([`write_batch`], then commit); the handler
/// hears of it once committed.
pub async fn apply<H: BatchHandler>(
    handler: &H,
    records: &mut Vec<Record>,
    next_offsets: &BTreeMap<TopicPartition, i64>,
    dead_letters: Option<&DeadLetters>,
    mut stages: Stages,
) -> Result<H::Report, H::Error> {
    let mut tx = handler.begin().await?;
    stages.lap("lock");
    let report = write_batch(
        handler,
        &mut tx,
        records,
        next_offsets,
        dead_letters,
        &mut stages,
    )
    .await?;
    tx.commit().await?;
    stages.lap("commit");
    handler.committed(&report, &stages);
    Ok(report)
}

/// Where a reader reads.
#[derive(Clone, Debug)]
pub struct ReaderSettings {
    pub kafka: KafkaSettings,
    /// Its consumer group: one per reader, so that each keeps its own pace.
    pub group: String,
    pub topics: Vec<String>,
    /// The dead-letter topic, for records that cannot be decoded or applied.
    pub dead_letters: String,
    /// Most records per batch (one transaction).
    pub batch_max: usize,
}

/// A handler reading its topics.
#[derive(Debug)]
pub struct Reader<H> {
    handler: H,
    settings: ReaderSettings,
}

impl<H: BatchHandler> Reader<H> {
    pub fn new(handler: H, settings: ReaderSettings) -> Self {
        Self { handler, settings }
    }

    /// Runs until `stop`. While a full batch is written, the consumer fetches and decodes
    /// the next one ([`Self::write_while_fetching`]); the batches are still applied one
    /// after the other, in log order.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        let Some((mut subscription, stored)) = self.start_with_backoff(&mut backoff, &stop).await
        else {
            return;
        };
        let name = self.handler.name();
        tracing::info!(reader = name, schema = %self.handler.schema(), "reading");
        let dead_letters = subscription.dead_letters().clone();
        let mut positions = Positions::since(Utc::now());
        positions.extend(&stored);
        let mut measured: Option<Instant> = None;
        // The last poll gave nothing: everything the consumer can read is applied. (On
        // Apache Kafka a transaction's commit marker takes an offset that no record fills,
        // so "end - next offset" alone would never reach 0.)
        let mut idle = false;
        // Batches in a row that were less than full.
        let mut short = 0u32;
        let mut fetched = None;
        loop {
            if measured.is_none_or(|at| at.elapsed() >= LAG_INTERVAL) {
                self.measure_lag(&subscription, &positions, idle);
                measured = Some(Instant::now());
            }
            let mut stages = Stages::start();
            let batch;
            (subscription, batch) = self.next(fetched.take(), subscription, &stop).await;
            let Some(batch) = batch else {
                return;
            };
            idle = batch.is_empty();
            if idle {
                self.handler.caught_up();
                continue;
            }
            stages.lap("consume");
            let mut records = records_of(batch.delivered, batch.dead);
            short = if records.len() < self.settings.batch_max {
                short.saturating_add(1)
            } else {
                0
            };
            let next_offsets = batch.next_offsets;
            let applied;
            (subscription, fetched, applied) = self
                .write_while_fetching(
                    subscription,
                    &dead_letters,
                    (&mut records, &next_offsets),
                    stages,
                    &stop,
                )
                .await;
            if applied.is_err() {
                return;
            }
            if short >= 2 {
                self.handler.caught_up();
            }
            subscription.stored(&next_offsets);
            positions.advance(&next_offsets, &records);
        }
    }

    /// The batch fetched while the last one was written, else a fresh one; a failed
    /// fetch is retried after a backoff. `None` when stopped first.
    async fn next(
        &self,
        mut fetched: Option<Fetched>,
        mut subscription: Subscription<EventDocument>,
        stop: &CancellationToken,
    ) -> (Subscription<EventDocument>, Option<Batch<EventDocument>>) {
        let mut backoff = Backoff::default();
        loop {
            if fetched.is_none() {
                (subscription, fetched) =
                    fetch(subscription, self.settings.batch_max, stop.clone()).await;
            }
            match fetched.take() {
                None => return (subscription, None),
                Some(Ok(batch)) => return (subscription, Some(batch)),
                Some(Err(e)) => {
                    tracing::warn!(reader = self.handler.name(), error = %e, "cannot consume");
                    if backoff.wait(stop).await.is_err() {
                        return (subscription, None);
                    }
                }
            }
        }
    }

    /// Applies `records` like [`Self::apply_until_done`]. When they filled a batch (the
    /// reader is behind), the next batch is fetched and decoded on another worker
    /// meanwhile, so a catch-up spends its time writing; a reader that keeps up takes its
    /// next records after the write, as they come. Returns the subscription, the batch
    /// fetched meanwhile, and whether the write committed (`Err` when stopped first).
    async fn write_while_fetching(
        &self,
        subscription: Subscription<EventDocument>,
        dead_letters: &DeadLetters,
        (records, next_offsets): (&mut Vec<Record>, &BTreeMap<TopicPartition, i64>),
        stages: Stages,
        stop: &CancellationToken,
    ) -> (Subscription<EventDocument>, Option<Fetched>, Result<(), ()>) {
        if records.len() < self.settings.batch_max {
            let applied = self
                .apply_until_done(dead_letters, records, next_offsets, stages, stop)
                .await;
            return (subscription, None, applied);
        }
        let fetching = tokio::spawn(fetch(subscription, self.settings.batch_max, stop.clone()));
        let applied = self
            .apply_until_done(dead_letters, records, next_offsets, stages, stop)
            .await;
        match fetching.await {
            Ok((subscription, next)) => (subscription, next, applied),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Applies one batch, retrying after a backoff until it commits; `Err` when stopped
    /// first.
    async fn apply_until_done(
        &self,
        dead_letters: &DeadLetters,
        records: &mut Vec<Record>,
        next_offsets: &BTreeMap<TopicPartition, i64>,
        stages: Stages,
        stop: &CancellationToken,
    ) -> Result<(), ()> {
        let name = self.handler.name();
        let mut backoff = Backoff::default();
        let mut stages = Some(stages);
        let dead_letters = Some(dead_letters);
        loop {
            let stages = stages.take().unwrap_or_else(Stages::start);
            match apply(&self.handler, records, next_offsets, dead_letters, stages).await {
                Ok(report) => {
                    tracing::debug!(reader = name, ?report, "batch applied");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(reader = name, error = %e, "batch not applied; retrying");
                    backoff.wait(stop).await?;
                }
            }
        }
    }

    fn measure_lag(
        &self,
        subscription: &Subscription<EventDocument>,
        positions: &Positions,
        idle: bool,
    ) {
        let (events, seconds) = if idle {
            (0, 0.0)
        } else {
            positions.lag(&subscription.high_watermarks(), Utc::now())
        };
        self.handler.lag(events, seconds);
    }

    /// [`Self::start`], retried with backoff; `None` when stopped meanwhile.
    async fn start_with_backoff(
        &self,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Option<(Subscription<EventDocument>, Vec<Checkpoint>)> {
        loop {
            match self.start().await {
                Ok(started) => return Some(started),
                Err(e) => {
                    tracing::warn!(reader = self.handler.name(), error = %e, "reader cannot start yet");
                    backoff.wait(stop).await.ok()?;
                }
            }
        }
    }

    /// Prepares the handler's schema and subscribes from the checkpoints stored there,
    /// which it also returns (the lag counts from them).
    async fn start(&self) -> Result<(Subscription<EventDocument>, Vec<Checkpoint>), H::Error> {
        self.handler.prepare().await?;
        let mut conn = self.handler.pool().acquire().await?;
        let stored = bookkeeping::checkpoints(&mut conn, self.handler.schema()).await?;
        drop(conn);
        let subscription = Subscription::start(
            &self.settings.kafka,
            &self.settings.group,
            &self.settings.topics,
            self.settings.dead_letters.clone(),
            bookkeeping::offsets(&stored),
        )?;
        Ok((subscription, stored))
    }
}

type Fetched = Result<Batch<EventDocument>, EventStoreError>;

/// The next batch of at most `max` records (empty after [`POLL`] without records), and the
/// subscription back; `None` when stopped first. It owns the subscription so that it can
/// run as a task of its own while the previous batch is written.
async fn fetch(
    mut subscription: Subscription<EventDocument>,
    max: usize,
    stop: CancellationToken,
) -> (Subscription<EventDocument>, Option<Fetched>) {
    let batch = tokio::select! {
        () = stop.cancelled() => None,
        batch = subscription.next_batch(max, POLL, Duration::ZERO) => Some(batch),
    };
    (subscription, batch)
}

/// Where the reader is, in memory, for measuring lag.
#[derive(Debug)]
struct Positions {
    next: HashMap<TopicPartition, (i64, Option<DateTime<Utc>>)>,
    /// When this reader started: the age of waiting records of a partition it has not
    /// applied anything of yet is at least the time since.
    started: DateTime<Utc>,
}

impl Positions {
    fn since(started: DateTime<Utc>) -> Self {
        Self {
            next: HashMap::new(),
            started,
        }
    }

    fn extend(&mut self, stored: &[Checkpoint]) {
        for c in stored {
            self.next.insert(
                (c.topic.clone(), c.partition),
                (c.next_offset, c.last_event_at),
            );
        }
    }

    fn advance(&mut self, next_offsets: &BTreeMap<TopicPartition, i64>, records: &[Record]) {
        let times = last_times(records);
        for (key, next) in next_offsets {
            let entry = self.next.entry(key.clone()).or_insert((0, None));
            entry.0 = entry.0.max(*next);
            if let Some(time) = times.get(key) {
                entry.1 = Some(*time);
            }
        }
    }

    /// Records waiting in the assigned partitions, and the age of the last applied record
    /// of the most delayed waiting partition.
    fn lag(&self, ends: &Offsets, now: DateTime<Utc>) -> (u64, f64) {
        let mut events = 0u64;
        let mut seconds = 0f64;
        for (key, end) in ends {
            let (next, last_at) = self.next.get(key).copied().unwrap_or((0, None));
            let waiting = (end - next).max(0);
            if waiting > 0 {
                events += waiting.unsigned_abs();
                let at = last_at.unwrap_or(self.started);
                let age = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
                seconds = seconds.max(age);
            }
        }
        (events, seconds)
    }
}

/// Waits that double from 100 ms up to 5 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    /// Sleeps; `Err` when stopped meanwhile.
    async fn wait(&mut self, stop: &CancellationToken) -> Result<(), ()> {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        tokio::select! {
            () = stop.cancelled() => Err(()),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + seconds, 0).expect("a time")
    }

    #[test]
    fn lag_counts_waiting_records_and_the_age_of_the_most_delayed_partition() {
        // Given a reader that stored offset 10 of partition 0 (last event at t=5) and
        // nothing of partition 1, started at t=0
        let mut positions = Positions::since(at(0));
        positions.extend(&[Checkpoint {
            topic: "t".into(),
            partition: 0,
            next_offset: 10,
            last_event_at: Some(at(5)),
        }]);
        // When partition 0 ends at 12 and partition 1 at 3, measured at t=20
        let ends: Offsets = [(("t".into(), 0), 12), (("t".into(), 1), 3)].into();
        // Then 5 records wait, and the oldest wait is partition 1's, since the start
        assert_eq!(positions.lag(&ends, at(20)), (5, 20.0));
        // And once both are read to their ends nothing waits
        positions.advance(&[(("t".into(), 0), 12), (("t".into(), 1), 3)].into(), &[]);
        assert_eq!(positions.lag(&ends, at(30)), (0, 0.0));
    }
}
