//! Feeding the sagas: the orchestrator is a handler of the checkpointed reader
//! ([`event_store::reader`]) on the order, payment, notification and user topics. Per
//! batch it stores the sagas it changed, their deadlines and the steps they decided (the
//! outbox) in the transaction where the reader stores the versions it took in and the
//! next offsets. A crash leaves Postgres at the end of some batch, and the subscription
//! starts there; nothing is decided twice.
//!
//! The deadline poller is here too: it feeds "deadline passed" to sagas whose payment did
//! not answer in time, under the same row locks, so the two never race on a saga.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_store::reader::bookkeeping;
use event_store::reader::{
    BatchHandler, Reader, ReaderSettings, Record, Schema, Span, Stages, Written,
};
use event_store::subscription::DeadLetters;
use event_store::{KafkaSettings, TopicNames};
use schemas::{EventDocument, OrderId, TraceParent, UserId};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::facts::{Fact, fact_of};
use crate::metrics::SagaMetrics;
use crate::saga::{Input, Policy, Saga, react};
use crate::store;
use crate::store::Issued;

/// The services whose events the orchestrator reads.
pub const SERVICES: [&str; 4] = ["orders", "payments", "notifications", "users"];

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub kafka: KafkaSettings,
    pub topics: TopicNames,
    pub batch_max: usize,
    pub policy: Policy,
}

#[derive(Debug)]
pub struct Runner {
    pool: PgPool,
    config: RunnerConfig,
    schema: Schema,
    dispatch: Arc<Notify>,
    metrics: SagaMetrics,
}

impl Runner {
    pub fn new(
        pool: PgPool,
        config: RunnerConfig,
        dispatch: Arc<Notify>,
        metrics: SagaMetrics,
    ) -> Self {
        Self {
            pool,
            config,
            schema: Schema::named(crate::SCHEMA).expect("a valid schema name"),
            dispatch,
            metrics,
        }
    }

    /// The event topics the orchestrator reads.
    fn topics(&self) -> Vec<String> {
        SERVICES
            .iter()
            .map(|s| self.config.topics.events(s))
            .collect()
    }

    pub fn group(topics: &TopicNames) -> String {
        format!("{}saga-orchestrator", topics.prefix())
    }

    /// Runs until `stop`, waiting out a broker or Postgres that is down.
    pub async fn run(self, stop: CancellationToken) {
        let settings = ReaderSettings {
            kafka: self.config.kafka.clone(),
            group: Self::group(&self.config.topics),
            topics: self.topics(),
            dead_letters: self.config.topics.dead_letters(),
            batch_max: self.config.batch_max,
        };
        Reader::new(self, settings).run(stop).await;
    }

    /// Decides one batch and writes the sagas, steps and deactivated users it changed
    /// through `tx`; how many sagas changed.
    async fn decide_batch(
        &self,
        tx: &mut PgConnection,
        records: &[Record],
        dead_letters: Option<&DeadLetters>,
    ) -> Result<Written<usize>, crate::SagaError> {
        let subjects: Vec<String> = decoded(records).map(|(d, _)| d.subject.clone()).collect();
        let mut versions = bookkeeping::versions(&mut *tx, &self.schema, &subjects).await?;
        let mut facts = Vec::new();
        for (document, position) in decoded(records) {
            if !self.admit(&mut versions, document) {
                continue;
            }
            match fact_of(document) {
                Ok(Fact::Irrelevant) => {}
                Ok(fact) => facts.push((fact, document.id.as_uuid(), document.traceparent)),
                Err(error) => {
                    if let Some(dead_letters) = dead_letters {
                        dead_letters
                            .send_document(document, position, &error)
                            .await?;
                    }
                }
            }
        }
        let orders: Vec<OrderId> = facts
            .iter()
            .filter_map(|(f, _, _)| match f {
                Fact::Saga { order_id, .. } => Some(*order_id),
                _ => None,
            })
            .collect();
        let mut sagas = store::lock_sagas(&mut *tx, &orders).await?;
        let users: Vec<UserId> = sagas
            .values()
            .map(|s| s.user_id)
            .chain(facts.iter().filter_map(|(f, _, _)| match f {
                Fact::Saga {
                    input: Input::OrderPlaced { user_id, .. },
                    ..
                } => Some(*user_id),
                _ => None,
            }))
            .collect();
        let mut deactivated = store::deactivated_among(&mut *tx, &users).await?;
        let decided = self.decide(&mut sagas, &mut deactivated, facts);
        let changed: Vec<&Saga> = decided
            .changed
            .iter()
            .filter_map(|id| sagas.get(id))
            .collect();
        store::store(&mut *tx, &changed, &decided.instructions).await?;
        store::store_deactivated(&mut *tx, &decided.deactivated).await?;
        Ok(Written {
            versions,
            report: changed.len(),
        })
    }

    /// The reader rule: take the next version of an aggregate; a version already taken is
    /// a duplicate (the first record of a version in log order wins). A gap cannot be
    /// waited out here (the saga must move on), so it is reported and taken.
    fn admit(&self, versions: &mut HashMap<String, u64>, document: &EventDocument) -> bool {
        let last = versions.get(&document.subject).copied().unwrap_or(0);
        let version = document.aggregateversion;
        if version <= last {
            self.metrics.observe_input("record", "duplicate");
            return false;
        }
        if version > last + 1 {
            tracing::warn!(aggregate = %document.subject, last, version, "version gap in the log; taking the record");
            self.metrics.observe_input("record", "gap");
        }
        versions.insert(document.subject.clone(), version);
        true
    }

    fn decide(
        &self,
        sagas: &mut HashMap<OrderId, Saga>,
        deactivated: &mut HashSet<UserId>,
        facts: Vec<(Fact, Uuid, TraceParent)>,
    ) -> Decided {
        let now = store::now();
        let mut decided = Decided::default();
        for (fact, event_id, traceparent) in facts {
            let (order_id, mut input) = match fact {
                Fact::UserDeactivated { user_id } => {
                    if deactivated.insert(user_id) {
                        decided.deactivated.push((user_id, now));
                    }
                    continue;
                }
                Fact::Irrelevant => continue,
                Fact::Saga { order_id, input } => (order_id, input),
            };
            let span = tracing::trace_span!(
                target: event_store::trace::TARGET,
                "saga step",
                input = input.name(),
                %order_id,
            );
            event_store::trace::set_parent(&span, &traceparent);
            // The steps it issues continue from this span.
            let traceparent = event_store::trace::exported(&span).unwrap_or(traceparent);
            let saga = sagas.get(&order_id);
            if let (Input::PaymentAuthorized { user_active }, Some(saga)) = (&mut input, saga) {
                *user_active = !deactivated.contains(&saga.user_id);
            }
            match react(saga, &input, now, &self.config.policy) {
                Ok(reaction) => {
                    self.metrics.observe_input(input.name(), "applied");
                    decided.changed.insert(order_id);
                    decided.instructions.extend(Issued::all(
                        reaction.instructions,
                        Some(event_id),
                        Some(traceparent),
                    ));
                    sagas.insert(order_id, reaction.saga);
                }
                Err(ignored) => {
                    self.metrics.observe_input(input.name(), "ignored");
                    tracing::debug!(%order_id, input = input.name(), %ignored, "input ignored");
                }
            }
        }
        decided
    }
}

impl BatchHandler for Runner {
    /// How many sagas the batch changed.
    type Report = usize;
    type Error = crate::SagaError;

    fn name(&self) -> &str {
        crate::NAME
    }

    fn schema(&self) -> &Schema {
        &self.schema
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn write<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        (records, _span): (&'a [Record], Span<'a>),
        dead_letters: Option<&'a DeadLetters>,
        _stages: &'a mut Stages,
    ) -> impl Future<Output = Result<Written<usize>, crate::SagaError>> + Send + 'a {
        self.decide_batch(tx, records, dead_letters)
    }

    fn committed(&self, _changed: &usize, _stages: &Stages) {
        self.dispatch.notify_one();
    }

    fn lag(&self, events: u64, _seconds: f64) {
        self.metrics
            .lag_events
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }
}

/// The batch's decoded records with their positions (those that could not be decoded are
/// already in the dead letters).
fn decoded(records: &[Record]) -> impl Iterator<Item = (&EventDocument, (&str, i32, i64))> {
    records.iter().filter_map(|record| match record {
        Record::Decoded { document, .. } => Some((document, record.position())),
        Record::Undecodable { .. } => None,
    })
}

#[derive(Default)]
struct Decided {
    changed: HashSet<OrderId>,
    instructions: Vec<Issued>,
    deactivated: Vec<(UserId, DateTime<Utc>)>,
}

/// Sleeps `delay` unless stopped first; true when stopped.
async fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Fires payment deadlines: every `interval`, the sagas whose deadline passed get
/// "deadline passed", in a transaction that locks their rows.
#[derive(Debug)]
pub struct DeadlinePoller {
    pub pool: PgPool,
    pub policy: Policy,
    pub interval: Duration,
    pub dispatch: Arc<Notify>,
    pub metrics: SagaMetrics,
}

impl DeadlinePoller {
    /// How often the sagas are counted by state for `/metrics`.
    const CENSUS_EVERY: Duration = Duration::from_secs(5);

    pub async fn run(self, stop: CancellationToken) {
        let mut census_due = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= census_due {
                census_due = tokio::time::Instant::now() + Self::CENSUS_EVERY;
                match store::census(&self.pool).await {
                    Ok(census) => self.metrics.observe_census(&census),
                    Err(e) => tracing::debug!(error = %e, "cannot count the sagas"),
                }
            }
            match self.fire().await {
                Ok(0) => {}
                Ok(fired) => {
                    tracing::info!(fired, "payment deadlines fired");
                    self.dispatch.notify_one();
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "cannot fire deadlines"),
            }
            if pause(&stop, self.interval).await {
                return;
            }
        }
    }

    /// Fires up to 100 due deadlines; how many.
    pub async fn fire(&self) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let overdue = store::lock_overdue(&mut tx, 100).await?;
        let now = store::now();
        let mut changed = Vec::with_capacity(overdue.len());
        let mut instructions = Vec::new();
        for mut saga in overdue {
            match react(
                Some(&saga),
                &Input::PaymentDeadlinePassed,
                now,
                &self.policy,
            ) {
                Ok(reaction) => {
                    self.metrics.deadlines_fired.inc();
                    instructions.extend(Issued::all(reaction.instructions, None, None));
                    changed.push(reaction.saga);
                }
                Err(_) => {
                    // Nothing left to wait for: drop the deadline.
                    saga.payment_deadline = None;
                    changed.push(saga);
                }
            }
        }
        let refs: Vec<&Saga> = changed.iter().collect();
        store::store(&mut tx, &refs, &instructions).await?;
        tx.commit().await?;
        Ok(changed.len())
    }
}
