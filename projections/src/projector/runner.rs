//! Running one read model: consume its topics in batches and store each batch's rows,
//! versions, parked records and next offsets in one Postgres transaction. A crash at any
//! point leaves Postgres at the end of some batch, and the subscription starts there.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use event_store::subscription::{DeadLetters, Subscription, TopicPartition};
use event_store::{EventStoreError, KafkaSettings, TopicNames};
use schemas::EventDocument;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::bookkeeping::{self, Checkpoint};
use super::metrics::{Lag, ProjectorMetrics};
use super::plan::{self, Loaded, ParkReason, Record};
use super::{Applied, ReadModel, Schema};

/// How often the lag is measured against the partitions' ends.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// What a projector needs besides its model.
#[derive(Clone, Debug)]
pub struct ProjectorConfig {
    pub kafka: KafkaSettings,
    pub topics: TopicNames,
    /// Most records per batch (one transaction).
    pub batch_max: usize,
}

/// The projector of model `M` into `schema`.
#[derive(Debug)]
pub struct Projector<M: ReadModel> {
    pool: PgPool,
    schema: Schema,
    config: ProjectorConfig,
    metrics: ProjectorMetrics,
    lag: Lag,
    progress: Arc<Notify>,
    _model: PhantomData<fn() -> M>,
}

/// A batch written, not yet counted: what it did, why each parked record was, and how
/// long each stage took.
struct Stored {
    report: BatchReport,
    parked: Vec<ParkReason>,
    stages: Laps,
}

/// Time per stage, taken one after the other.
#[derive(Debug)]
struct Laps {
    at: Instant,
    took: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn start() -> Self {
        Self {
            at: Instant::now(),
            took: Vec::with_capacity(6),
        }
    }

    /// Ends `stage` now and starts the next.
    fn lap(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.took.push((stage, now - self.at));
        self.at = now;
    }
}

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub records: usize,
    pub applied: usize,
    pub duplicates: usize,
    pub gaps: usize,
    pub parked: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Log(#[from] EventStoreError),
}

impl<M: ReadModel> Projector<M> {
    pub fn new(
        pool: PgPool,
        schema: Schema,
        config: ProjectorConfig,
        metrics: ProjectorMetrics,
    ) -> Self {
        Self {
            pool,
            schema,
            config,
            metrics,
            lag: Lag::default(),
            progress: Arc::new(Notify::new()),
            _model: PhantomData,
        }
    }

    /// The schema this projector writes.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Lag as last measured, for readiness and query answers.
    pub fn lag(&self) -> Lag {
        self.lag.clone()
    }

    /// Woken after every committed batch (queries waiting for a position listen here).
    pub fn progress(&self) -> Arc<Notify> {
        Arc::clone(&self.progress)
    }

    /// The topics the model reads.
    pub fn topics(topics: &TopicNames) -> Vec<String> {
        M::SERVICES.iter().map(|s| topics.events(s)).collect()
    }

    /// Runs until `stop`: migrates the schema, then projects. Failures of Postgres or the
    /// broker are waited out with a bounded backoff; nothing is skipped meanwhile.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        let Some(mut subscription) = self.start_with_backoff(&mut backoff, &stop).await else {
            return;
        };
        tracing::info!(read_model = M::NAME, schema = %self.schema, "projector running");
        let mut positions = Positions::since(Utc::now());
        if let Ok(mut conn) = self.pool.acquire().await
            && let Ok(stored) = bookkeeping::checkpoints(&mut conn, &self.schema).await
        {
            positions.extend(&stored);
        }
        let mut measured = Instant::now() - LAG_INTERVAL;
        // The last poll gave nothing: everything the consumer can read is applied. (On
        // Apache Kafka a transaction's commit marker takes an offset that no record fills,
        // so "end - next offset" alone would never reach 0.)
        let mut idle = false;
        loop {
            if measured.elapsed() >= LAG_INTERVAL {
                self.measure_lag(&subscription, &positions, idle);
                measured = Instant::now();
            }
            let waited = Instant::now();
            let batch = tokio::select! {
                () = stop.cancelled() => return,
                batch = subscription.next_batch(
                    self.config.batch_max,
                    Duration::from_millis(250),
                    Duration::ZERO,
                ) => batch,
            };
            let batch = match batch {
                Ok(batch) if batch.is_empty() => {
                    idle = true;
                    backoff = Backoff::default();
                    continue;
                }
                Ok(batch) => {
                    idle = false;
                    self.metrics
                        .stage_seconds
                        .get_or_create(&ProjectorMetrics::with(M::NAME, "stage", "consume"))
                        .observe(waited.elapsed().as_secs_f64());
                    batch
                }
                Err(e) => {
                    tracing::warn!(read_model = M::NAME, error = %e, "cannot consume");
                    if backoff.wait(&stop).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let mut records = records_of(batch.delivered, batch.dead);
            let next_offsets = batch.next_offsets;
            loop {
                match self
                    .apply(
                        Some(subscription.dead_letters()),
                        &mut records,
                        &next_offsets,
                    )
                    .await
                {
                    Ok(report) => {
                        backoff = Backoff::default();
                        subscription.stored(&next_offsets);
                        positions.advance(&next_offsets, &records);
                        self.progress.notify_waiters();
                        tracing::debug!(read_model = M::NAME, ?report, "batch applied");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(read_model = M::NAME, error = %e, "batch not applied; retrying");
                        if backoff.wait(&stop).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// [`Self::start`], retried with backoff; `None` when stopped meanwhile.
    async fn start_with_backoff(
        &self,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Option<Subscription<EventDocument>> {
        loop {
            match self.start().await {
                Ok(subscription) => return Some(subscription),
                Err(e) => {
                    tracing::warn!(read_model = M::NAME, error = %e, "projector cannot start yet");
                    backoff.wait(stop).await.ok()?;
                }
            }
        }
    }

    async fn start(&self) -> Result<Subscription<EventDocument>, ProjectorError> {
        self.schema
            .migrate::<M>(&self.pool.connect_options())
            .await?;
        let mut conn = self.pool.acquire().await?;
        let stored = bookkeeping::checkpoints(&mut conn, &self.schema).await?;
        Ok(Subscription::start(
            &self.config.kafka,
            &group(&self.config.topics, &self.schema),
            &Self::topics(&self.config.topics),
            self.config.topics.dead_letters(),
            bookkeeping::offsets(&stored),
        )?)
    }

    /// Plans and stores one batch in one transaction. `records` loses what another
    /// instance applied meanwhile (it is theirs, and stored).
    pub async fn apply(
        &self,
        dead_letters: Option<&DeadLetters>,
        records: &mut Vec<Record>,
        next_offsets: &std::collections::BTreeMap<TopicPartition, i64>,
    ) -> Result<BatchReport, ProjectorError> {
        let started = Instant::now();
        let mut stages = Laps::start();
        let mut tx = bookkeeping::begin_locked(&self.pool, &self.schema).await?;
        stages.lap("lock");
        let mut stored = self
            .write_batch(&mut tx, dead_letters, records, next_offsets, stages)
            .await?;
        tx.commit().await?;
        stored.stages.lap("commit");
        self.observe(&stored, started);
        Ok(stored.report)
    }

    /// [`Self::apply`] inside a transaction the caller holds (and commits), with the
    /// model's lock already taken; counts nothing in the metrics (the caller's transaction
    /// may still roll back). Without `dead_letters` (a rebuild: the live model sent them
    /// when it met the records) poison records are only parked.
    pub async fn apply_in(
        &self,
        tx: &mut sqlx::PgConnection,
        dead_letters: Option<&DeadLetters>,
        records: &mut Vec<Record>,
        next_offsets: &std::collections::BTreeMap<TopicPartition, i64>,
    ) -> Result<BatchReport, ProjectorError> {
        Ok(self
            .write_batch(tx, dead_letters, records, next_offsets, Laps::start())
            .await?
            .report)
    }

    /// Plans one batch and writes everything it changed through `tx`.
    async fn write_batch(
        &self,
        tx: &mut sqlx::PgConnection,
        dead_letters: Option<&DeadLetters>,
        records: &mut Vec<Record>,
        next_offsets: &std::collections::BTreeMap<TopicPartition, i64>,
        mut stages: Laps,
    ) -> Result<Stored, ProjectorError> {
        let partitions: Vec<TopicPartition> = next_offsets.keys().cloned().collect();
        let claimed = bookkeeping::claim(&mut *tx, &self.schema, &partitions).await?;
        records.retain(|record| {
            let (topic, partition, offset) = record.position();
            claimed
                .get(&(topic.to_owned(), partition))
                .is_none_or(|next| offset >= *next)
        });
        stages.lap("claim");
        // Each event's hop into this read model, while the batch is written.
        let _projects: Vec<tracing::Span> = records
            .iter()
            .filter(|_| event_store::trace::enabled())
            .filter_map(|record| match record {
                Record::Decoded { document, .. } => {
                    let span = tracing::trace_span!(
                        target: event_store::trace::TARGET,
                        "project",
                        read_model = M::NAME,
                        event = %document.event_type,
                        aggregate = %document.subject,
                    );
                    event_store::trace::set_parent(&span, &document.traceparent);
                    Some(span)
                }
                _ => None,
            })
            .collect();
        let keys: Vec<String> = records
            .iter()
            .filter_map(key_of::<M>)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (versions, parked) = bookkeeping::standing(&mut *tx, &self.schema, &keys).await?;
        let loaded = Loaded {
            versions,
            rows: M::load(&mut *tx, &self.schema, &keys).await?,
            parked,
        };
        stages.lap("load");
        let plan = plan::plan(records, loaded, M::key, M::fold);
        for (index, error) in plan.poison() {
            if let (Some(dead_letters), Record::Decoded { document, .. }) =
                (dead_letters, &records[index])
            {
                dead_letters
                    .send_document(document, records[index].position(), error)
                    .await?;
            }
        }
        for (_, reason, parked) in &plan.parked {
            tracing::warn!(
                read_model = M::NAME,
                aggregate = %parked.key,
                version = ?parked.version,
                topic = %parked.topic,
                partition = parked.partition,
                offset = parked.offset,
                reason = ?reason,
                error = %parked.error,
                "record parked"
            );
        }
        let applied: Vec<Applied<'_>> = plan
            .applied
            .iter()
            .filter_map(|&index| match &records[index] {
                Record::Decoded {
                    document,
                    topic,
                    partition,
                    offset,
                } => Some(Applied {
                    key: &document.subject,
                    document,
                    topic,
                    partition: *partition,
                    offset: *offset,
                }),
                Record::Undecodable { .. } => None,
            })
            .collect();
        let report = BatchReport {
            records: records.len(),
            applied: applied.len(),
            duplicates: plan.duplicates,
            gaps: plan.gaps,
            parked: plan.parked.len(),
        };
        stages.lap("plan");
        M::store(
            &mut *tx,
            &self.schema,
            plan.rows.into_iter().collect(),
            &applied,
        )
        .await?;
        stages.lap("store");
        let parked: Vec<&plan::Parked> = plan.parked.iter().map(|(_, _, p)| p).collect();
        bookkeeping::store_parked(&mut *tx, &self.schema, &parked).await?;
        bookkeeping::store_progress(
            &mut *tx,
            &self.schema,
            &plan.versions,
            (next_offsets, &last_times(records)),
        )
        .await?;
        stages.lap("bookkeeping");

        if plan.gaps > 0 {
            tracing::warn!(
                read_model = M::NAME,
                gaps = plan.gaps,
                "version gaps in the log; aggregates parked"
            );
        }
        Ok(Stored {
            report,
            parked: plan.parked.iter().map(|(_, reason, _)| *reason).collect(),
            stages,
        })
    }

    /// Counts a committed batch in the metrics.
    fn observe(&self, stored: &Stored, started: Instant) {
        let labels = ProjectorMetrics::model(M::NAME);
        let report = &stored.report;
        self.metrics
            .batch_size
            .get_or_create(&labels)
            .observe(report.records as f64);
        self.metrics
            .batch_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        for (stage, took) in &stored.stages.took {
            self.metrics
                .stage_seconds
                .get_or_create(&ProjectorMetrics::with(M::NAME, "stage", stage))
                .observe(took.as_secs_f64());
        }
        self.metrics
            .applied
            .get_or_create(&labels)
            .inc_by(report.applied as u64);
        for (reason, count) in [("duplicate", report.duplicates), ("gap", report.gaps)] {
            if count > 0 {
                self.metrics
                    .dropped
                    .get_or_create(&ProjectorMetrics::with(M::NAME, "reason", reason))
                    .inc_by(count as u64);
            }
        }
        for reason in &stored.parked {
            self.metrics
                .parked
                .get_or_create(&ProjectorMetrics::with(
                    M::NAME,
                    "reason",
                    park_label(*reason),
                ))
                .inc();
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
        let labels = ProjectorMetrics::model(M::NAME);
        self.metrics
            .lag_events
            .get_or_create(&labels)
            .set(events as i64);
        self.metrics.lag_seconds.get_or_create(&labels).set(seconds);
        self.lag.set(events, seconds);
    }
}

fn park_label(reason: ParkReason) -> &'static str {
    match reason {
        ParkReason::Poison => "poison",
        ParkReason::Undecodable => "undecodable",
        ParkReason::Gap => "gap",
        ParkReason::Behind => "behind",
    }
}

fn key_of<M: ReadModel>(record: &Record) -> Option<String> {
    match record {
        Record::Decoded { document, .. } => Some(M::key(document)),
        Record::Undecodable { key, .. } => key.clone(),
    }
}

/// The batch's records in log order per partition, dead letters in their places.
pub fn records_of(
    delivered: Vec<event_store::subscription::Delivered<EventDocument>>,
    dead: Vec<event_store::subscription::DeadLettered>,
) -> Vec<Record> {
    let mut records: Vec<Record> = delivered
        .into_iter()
        .map(|d| Record::Decoded {
            document: d.item,
            topic: d.topic,
            partition: d.partition,
            offset: d.offset,
        })
        .chain(dead.into_iter().map(|d| Record::Undecodable {
            key: d.key,
            payload: d.payload,
            error: d.error,
            topic: d.topic,
            partition: d.partition,
            offset: d.offset,
        }))
        .collect();
    records.sort_by(|a, b| a.position().cmp(&b.position()));
    records
}

/// The consumer group of the read model in `schema`: one per read model, so each keeps
/// its own pace.
pub fn group(topics: &TopicNames, schema: &Schema) -> String {
    format!("{}projections.{}", topics.prefix(), schema.name())
}

/// A record read by a scan (a rebuild) as the plan takes it: decoded, or unreadable with
/// the reason.
pub fn record_of_scanned(record: event_store::scan::ScannedRecord) -> Record {
    let decoded = record
        .payload
        .as_deref()
        .ok_or_else(|| "a record without a value".to_owned())
        .and_then(|payload| EventDocument::from_json(payload).map_err(|e| e.to_string()));
    match decoded {
        Ok(document) => Record::Decoded {
            document,
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
        },
        Err(error) => Record::Undecodable {
            key: record.key_text(),
            payload: record.payload.unwrap_or_default(),
            error,
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
        },
    }
}

/// When the last record of each partition in `records` was written.
fn last_times(records: &[Record]) -> HashMap<TopicPartition, DateTime<Utc>> {
    let mut times = HashMap::new();
    for record in records {
        if let Record::Decoded {
            document,
            topic,
            partition,
            ..
        } = record
        {
            times.insert((topic.clone(), *partition), document.time);
        }
    }
    times
}

/// Where the projector is, in memory, for measuring lag.
#[derive(Debug)]
struct Positions {
    next: HashMap<TopicPartition, (i64, Option<DateTime<Utc>>)>,
    /// When this projector started: the age of waiting records of a partition it has not
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

    fn advance(
        &mut self,
        next_offsets: &std::collections::BTreeMap<TopicPartition, i64>,
        records: &[Record],
    ) {
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
    fn lag(&self, ends: &event_store::subscription::Offsets, now: DateTime<Utc>) -> (u64, f64) {
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
