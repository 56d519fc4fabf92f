//! Running one read model: the projector is a handler of the checkpointed reader
//! ([`event_store::reader`]), which consumes the model's topics and, per batch, stores
//! what the projector wrote with the versions and next offsets in one Postgres
//! transaction. Per batch the projector loads the rows and standing of the batch's
//! aggregates, plans (the reader rule, parking, the fold), and stores rows and parked
//! records. Aggregates known to be new ([`super::fresh`]: a catch-up or a rebuild from
//! offset zero) skip the look-up, and their rows and versions go in through COPY.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use event_store::reader::copy::is_unique_violation;
use event_store::reader::runner::{self as reader, BatchHandler, Reader, ReaderSettings};
use event_store::reader::{Record, Span, Stages, Written, bookkeeping};
use event_store::subscription::{DeadLetters, TopicPartition};
use event_store::{EventStoreError, KafkaSettings, TopicNames};

use crate::ProjectionError;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::fresh::{Fresh, Known};
use super::metrics::{Lag, ProjectorMetrics};
use super::plan::{self, Loaded, ParkReason};
use super::{Applied, ReadModel, Schema};

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
    fresh: Mutex<Fresh>,
    _model: PhantomData<fn() -> M>,
}

/// A batch written: what it did, and why each parked record was.
#[derive(Debug)]
pub struct Stored {
    report: BatchReport,
    parked: Vec<ParkReason>,
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
            fresh: Mutex::new(Fresh::default()),
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
        let settings = ReaderSettings {
            kafka: self.config.kafka.clone(),
            group: group(&self.config.topics, &self.schema),
            topics: Self::topics(&self.config.topics),
            dead_letters: self.config.topics.dead_letters(),
            batch_max: self.config.batch_max,
        };
        Reader::new(self, settings).run(stop).await;
    }

    /// Plans and stores one batch in a transaction of its own. `records` loses what
    /// another instance applied meanwhile (it is theirs, and stored).
    pub async fn apply(
        &self,
        dead_letters: Option<&DeadLetters>,
        records: &mut Vec<Record>,
        next_offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BatchReport, ProjectionError> {
        let stored =
            reader::apply(self, records, next_offsets, dead_letters, Stages::start()).await?;
        Ok(stored.report)
    }

    /// [`Self::apply`] inside a transaction the caller holds (and commits), with the
    /// model's lock already taken; counts nothing in the metrics (the caller's transaction
    /// may still roll back). Without `dead_letters` (a rebuild: the live model sent them
    /// when it met the records) poison records are only parked.
    pub async fn apply_in(
        &self,
        tx: &mut PgConnection,
        dead_letters: Option<&DeadLetters>,
        records: &mut Vec<Record>,
        next_offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BatchReport, ProjectionError> {
        let mut stages = Stages::start();
        let stored =
            reader::write_batch(self, tx, records, next_offsets, dead_letters, &mut stages).await?;
        Ok(stored.report)
    }

    /// Plans one batch and writes its rows and parked records through `tx`.
    async fn write_batch(
        &self,
        tx: &mut PgConnection,
        (records, span): (&[Record], Span<'_>),
        dead_letters: Option<&DeadLetters>,
        stages: &mut Stages,
    ) -> Result<Written<Stored>, ProjectionError> {
        let _projects = trace_spans::<M>(records);
        let keys: Vec<Option<String>> = records.iter().map(key_of::<M>).collect();
        let (known, new) = self.new_keys(records, &keys, span);
        let loaded = self.load(&mut *tx, &keys, &new).await?;
        stages.lap("load");
        let plan = plan::plan(records, loaded, M::key, M::fold);
        set_aside::<M>(&plan, records, dead_letters).await?;
        let applied = applied_of(&plan, (records, &keys), &new);
        let report = BatchReport {
            records: records.len(),
            applied: applied.len(),
            duplicates: plan.duplicates,
            gaps: plan.gaps,
            parked: plan.parked.len(),
        };
        stages.lap("plan");
        let (new_versions, versions) = split(rowless::<M>(&plan), &new);
        let (new_rows, rows) = split(plan.rows, &new);
        M::store(&mut *tx, &self.schema, rows.into_iter().collect(), &applied).await?;
        stages.lap("store");
        self.copy_new(
            &mut *tx,
            new_rows.into_iter().collect(),
            &applied,
            &new_versions,
        )
        .await?;
        stages.lap("copy");
        self.fresh().wrote(
            &known,
            keys.iter().flatten().map(String::as_str),
            span.after,
        );
        let parked: Vec<&bookkeeping::Parked> = plan.parked.iter().map(|(_, _, p)| p).collect();
        bookkeeping::store_parked(&mut *tx, &self.schema, &parked).await?;
        Ok(Written {
            versions,
            report: Stored {
                report,
                parked: plan.parked.iter().map(|(_, reason, _)| *reason).collect(),
            },
        })
    }

    /// Whether the model holds any row, version, parked record or checkpoint past zero.
    async fn holds_anything(&self) -> Result<bool, sqlx::Error> {
        let table = |name| self.schema.table(name);
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {}) OR EXISTS (SELECT 1 FROM {})
                 OR EXISTS (SELECT 1 FROM {}) OR EXISTS (SELECT 1 FROM {} WHERE next_offset > 0)",
            table(M::TABLE),
            table("versions"),
            table("parked"),
            table("checkpoints"),
        )))
        .fetch_one(&self.pool)
        .await
    }

    fn fresh(&self) -> MutexGuard<'_, Fresh> {
        self.fresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The keys of the batch that are new to the model, and the partitions whose new keys
    /// are known.
    fn new_keys(
        &self,
        records: &[Record],
        keys: &[Option<String>],
        span: Span<'_>,
    ) -> (Known, HashSet<String>) {
        let mut fresh = self.fresh();
        let known = fresh.claim(span);
        let new = records
            .iter()
            .zip(keys)
            .filter_map(|(record, key)| {
                let key = key.as_ref()?;
                let (topic, partition, _) = record.position();
                fresh
                    .is_new(&known, &(topic.to_owned(), partition), key)
                    .then(|| key.clone())
            })
            .collect();
        (known, new)
    }

    /// COPYs the rows and versions of new aggregates. A key that was there after all
    /// (rows written by hand, or a model whose aggregates span partitions) fails the
    /// batch; the projector stops knowing new keys, and the retry looks every key up.
    async fn copy_new(
        &self,
        tx: &mut PgConnection,
        rows: Vec<(String, M::Row)>,
        applied: &[Applied<'_>],
        versions: &HashMap<String, u64>,
    ) -> Result<(), sqlx::Error> {
        let copied = async {
            M::copy_new(&self.schema, rows, applied)
                .send(&mut *tx)
                .await?;
            bookkeeping::copy_versions(&mut *tx, &self.schema, versions).await
        }
        .await;
        if let Err(e) = &copied
            && is_unique_violation(e)
        {
            tracing::warn!(read_model = M::NAME, error = %e, "a new aggregate was stored already; looking every aggregate up from now on");
            self.fresh().forget();
        }
        copied
    }

    /// What the plan needs of the batch's aggregates that are not `new`: their versions
    /// (the greater of the row's and the versions table's), which are parked, and their
    /// rows.
    async fn load(
        &self,
        tx: &mut PgConnection,
        keys: &[Option<String>],
        new: &HashSet<String>,
    ) -> Result<Loaded<M::Row>, sqlx::Error> {
        let keys: Vec<String> = keys
            .iter()
            .flatten()
            .filter(|key| !new.contains(*key))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if keys.is_empty() {
            return Ok(Loaded {
                versions: HashMap::new(),
                rows: HashMap::new(),
                parked: HashSet::new(),
            });
        }
        let (mut versions, parked) = bookkeeping::standing(&mut *tx, &self.schema, &keys).await?;
        let rows = M::load(&mut *tx, &self.schema, &keys).await?;
        for (key, row) in &rows {
            let version = versions.entry(key.clone()).or_default();
            *version = (*version).max(M::version_of(row));
        }
        Ok(Loaded {
            versions,
            rows,
            parked,
        })
    }

    /// Counts a committed batch in the metrics.
    fn observe(&self, stored: &Stored, stages: &Stages) {
        let labels = ProjectorMetrics::model(M::NAME);
        let report = &stored.report;
        self.metrics
            .batch_size
            .get_or_create(&labels)
            .observe(report.records as f64);
        self.metrics
            .batch_seconds
            .get_or_create(&labels)
            .observe(stages.writing().as_secs_f64());
        for (stage, took) in stages.took() {
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
}

impl<M: ReadModel> BatchHandler for Projector<M> {
    type Report = Stored;
    type Error = ProjectionError;

    fn name(&self) -> &str {
        M::NAME
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Migrates the schema; a model that holds anything already is not fresh: every
    /// aggregate is looked up.
    async fn prepare(&self) -> Result<(), ProjectionError> {
        self.schema
            .migrate(&self.pool.connect_options(), M::migrator())
            .await?;
        if self.holds_anything().await? {
            self.fresh().forget();
        }
        Ok(())
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        bookkeeping::begin_locked(&self.pool, &self.schema).await
    }

    fn write<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        batch: (&'a [Record], Span<'a>),
        dead_letters: Option<&'a DeadLetters>,
        stages: &'a mut Stages,
    ) -> impl Future<Output = Result<Written<Stored>, ProjectionError>> + Send + 'a {
        self.write_batch(tx, batch, dead_letters, stages)
    }

    fn committed(&self, stored: &Stored, stages: &Stages) {
        self.observe(stored, stages);
        self.progress.notify_waiters();
    }

    fn lag(&self, events: u64, seconds: f64) {
        let labels = ProjectorMetrics::model(M::NAME);
        self.metrics
            .lag_events
            .get_or_create(&labels)
            .set(events as i64);
        self.metrics.lag_seconds.get_or_create(&labels).set(seconds);
        self.lag.set(events, seconds);
    }

    fn caught_up(&self) {
        let mut fresh = self.fresh();
        if fresh.is_knowing() {
            fresh.forget();
            tracing::info!(
                read_model = M::NAME,
                "caught up: every aggregate is looked up from now on"
            );
        }
    }
}

/// The versions the plan moved that no stored row keeps (the aggregate's last applied
/// event left no row, or left it as it was): these go to the reader's versions table.
fn rowless<M: ReadModel>(plan: &plan::Plan<M::Row>) -> HashMap<String, u64> {
    plan.versions
        .iter()
        .filter(|(key, version)| plan.rows.get(*key).map(M::version_of) != Some(**version))
        .map(|(key, version)| (key.clone(), *version))
        .collect()
}

/// `map` split into the entries of `new` keys and the others.
fn split<V>(
    map: HashMap<String, V>,
    new: &HashSet<String>,
) -> (HashMap<String, V>, HashMap<String, V>) {
    map.into_iter().partition(|(key, _)| new.contains(key))
}

/// Each event's hop into this read model, while the batch is written.
fn trace_spans<M: ReadModel>(records: &[Record]) -> Vec<tracing::Span> {
    if !event_store::trace::enabled() {
        return Vec::new();
    }
    records
        .iter()
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
        .collect()
}

/// Sends the plan's poison records to the dead letters (when the reader has them) and
/// logs every record it parked.
async fn set_aside<M: ReadModel>(
    plan: &plan::Plan<M::Row>,
    records: &[Record],
    dead_letters: Option<&DeadLetters>,
) -> Result<(), EventStoreError> {
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
    if plan.gaps > 0 {
        tracing::warn!(
            read_model = M::NAME,
            gaps = plan.gaps,
            "version gaps in the log; aggregates parked"
        );
    }
    Ok(())
}

/// The events the plan applied, with where each was in the log.
fn applied_of<'a, R>(
    plan: &plan::Plan<R>,
    (records, keys): (&'a [Record], &[Option<String>]),
    new: &HashSet<String>,
) -> Vec<Applied<'a>> {
    plan.applied
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
                new: keys[index].as_ref().is_some_and(|key| new.contains(key)),
            }),
            Record::Undecodable { .. } => None,
        })
        .collect()
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

/// The consumer group of the read model in `schema`: one per read model, so each keeps
/// its own pace.
pub fn group(topics: &TopicNames, schema: &Schema) -> String {
    format!("{}projections.{}", topics.prefix(), schema.name())
}
