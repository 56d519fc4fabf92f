//! Feeding the sagas: the orchestrator reads the order, payment, notification and user
//! topics in batches, and per batch stores the sagas it changed, their deadlines, the
//! steps they decided (the outbox), the versions it took in and the next offsets, in one
//! Postgres transaction. A crash leaves Postgres at the end of some batch, and the
//! subscription starts there; nothing is decided twice.
//!
//! The deadline poller is here too: it feeds "deadline passed" to sagas whose payment did
//! not answer in time, under the same row locks, so the two never race on a saga.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_store::subscription::{Subscription, TopicPartition};
use event_store::{KafkaSettings, TopicNames};
use projections::projector::{Schema, bookkeeping};
use schemas::{EventDocument, OrderId, TraceParent, UserId};
use sqlx::PgPool;
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

/// One record of a batch, as far as the orchestrator got with it.
struct Taken {
    document: EventDocument,
    position: (String, i32, i64),
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
        let mut subscription = loop {
            match self.subscribe().await {
                Ok(subscription) => break subscription,
                Err(e) => {
                    tracing::warn!(error = %e, "orchestrator cannot start yet");
                    if pause(&stop, Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        };
        tracing::info!("saga orchestrator consuming");
        let mut next = self.stored_offsets().await;
        loop {
            let batch = tokio::select! {
                () = stop.cancelled() => return,
                batch = subscription.next_batch(self.config.batch_max, Duration::from_millis(250), Duration::ZERO) => batch,
            };
            let batch = match batch {
                Ok(batch) if batch.is_empty() => {
                    self.measure_lag(&subscription, &next);
                    continue;
                }
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot consume");
                    if pause(&stop, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            let mut taken: Vec<Taken> = batch
                .delivered
                .into_iter()
                .map(|d| Taken {
                    position: (d.topic, d.partition, d.offset),
                    document: d.item,
                })
                .collect();
            loop {
                match self
                    .apply(&subscription, &mut taken, &batch.next_offsets)
                    .await
                {
                    Ok(()) => {
                        subscription.stored(&batch.next_offsets);
                        next.extend(batch.next_offsets.clone());
                        self.dispatch.notify_one();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "batch not applied; retrying");
                        if pause(&stop, Duration::from_secs(1)).await {
                            return;
                        }
                    }
                }
            }
            self.measure_lag(&subscription, &next);
        }
    }

    async fn stored_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        let Ok(mut conn) = self.pool.acquire().await else {
            return BTreeMap::new();
        };
        bookkeeping::checkpoints(&mut conn, &self.schema)
            .await
            .map(|stored| bookkeeping::offsets(&stored).into_iter().collect())
            .unwrap_or_default()
    }

    async fn subscribe(&self) -> Result<Subscription<EventDocument>, crate::OrchestratorError> {
        let mut conn = self.pool.acquire().await?;
        let stored = bookkeeping::checkpoints(&mut conn, &self.schema).await?;
        Ok(Subscription::start(
            &self.config.kafka,
            &Self::group(&self.config.topics),
            &self.topics(),
            self.config.topics.dead_letters(),
            bookkeeping::offsets(&stored),
        )?)
    }

    /// Records of the assigned partitions not taken in yet, from the fetch statistics.
    fn measure_lag(
        &self,
        subscription: &Subscription<EventDocument>,
        next: &BTreeMap<TopicPartition, i64>,
    ) {
        let behind: i64 = subscription
            .high_watermarks()
            .iter()
            .map(|(partition, end)| (end - next.get(partition).copied().unwrap_or(0)).max(0))
            .sum();
        self.metrics.lag_events.set(behind);
    }

    /// Decides one batch and stores everything it changed in one transaction. `taken`
    /// loses the records another instance stored meanwhile (a rebalance in flight).
    async fn apply(
        &self,
        subscription: &Subscription<EventDocument>,
        taken: &mut Vec<Taken>,
        next_offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), crate::OrchestratorError> {
        let mut tx = self.pool.begin().await?;
        let partitions: Vec<TopicPartition> = next_offsets.keys().cloned().collect();
        let claimed = bookkeeping::claim(&mut tx, &self.schema, &partitions).await?;
        taken.retain(|t| {
            let (topic, partition, offset) = &t.position;
            claimed
                .get(&(topic.clone(), *partition))
                .is_none_or(|next| offset >= next)
        });
        let subjects: Vec<String> = taken.iter().map(|t| t.document.subject.clone()).collect();
        let mut versions = bookkeeping::versions(&mut tx, &self.schema, &subjects).await?;
        let mut facts = Vec::new();
        for t in taken.iter() {
            if !self.admit(&mut versions, &t.document) {
                continue;
            }
            match fact_of(&t.document) {
                Ok(Fact::Irrelevant) => {}
                Ok(fact) => facts.push((fact, t.document.id.as_uuid(), t.document.traceparent)),
                Err(error) => {
                    subscription
                        .dead_letters()
                        .send_document(
                            &t.document,
                            (t.position.0.as_str(), t.position.1, t.position.2),
                            &error,
                        )
                        .await?;
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
        let mut sagas = store::lock_sagas(&mut tx, &orders).await?;
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
        let mut deactivated = store::deactivated_among(&mut tx, &users).await?;
        let decided = self.decide(&mut sagas, &mut deactivated, facts);
        let changed: Vec<&Saga> = decided
            .changed
            .iter()
            .filter_map(|id| sagas.get(id))
            .collect();
        store::store(&mut tx, &changed, &decided.instructions).await?;
        store::store_deactivated(&mut tx, &decided.deactivated).await?;
        bookkeeping::store_progress(
            &mut tx,
            &self.schema,
            &versions,
            (next_offsets, &last_times(taken)),
        )
        .await?;
        tx.commit().await?;
        Ok(())
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

#[derive(Default)]
struct Decided {
    changed: HashSet<OrderId>,
    instructions: Vec<Issued>,
    deactivated: Vec<(UserId, DateTime<Utc>)>,
}

fn last_times(taken: &[Taken]) -> HashMap<TopicPartition, DateTime<Utc>> {
    let mut times = HashMap::new();
    for t in taken {
        times.insert((t.position.0.clone(), t.position.1), t.document.time);
    }
    times
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
