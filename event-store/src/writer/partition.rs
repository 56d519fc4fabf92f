//! The writer of one partition: a task that takes commands in batches, plans them on its
//! own state ([`PartitionCore`]), appends the events, and answers once the log confirms.
//!
//! Every batch is one Kafka transaction (its events and recorded outcomes), on a producer
//! whose transactional id belongs to the partition. Taking a partition over starts with
//! `init_transactions`, which fences every earlier producer of that id and settles its open
//! transaction, and only then reads the state: nothing a former owner writes can land
//! after it. The state changes only once a transaction committed; a fenced commit makes the
//! writer stop (its callers get "not owner", never a 2xx). A transaction whose outcome is
//! unknown (the broker went away mid-commit) stops the writer too: its host resumes the
//! partition with a fresh producer of the same id, whose `init_transactions` completes or
//! aborts what was left open, and the state is read again from the log.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use schemas::{
    Command, CommandId, Event, EventDocument, MessageFamily, OutcomeDocument,
    envelope::{DATA_CONTENT_TYPE, SPEC_VERSION, source_of},
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::aggregate::Aggregate;
use crate::error::EventStoreError;
use crate::outcome::Outcome;
use crate::record::to_kafka_headers;
use crate::topics::TopicNames;
use crate::trace;
use crate::writer::core::SnapshotCut;
use crate::writer::core::{IdempotencyWindow, MemoryBudget, Missing, PartitionCore, Plan};
use crate::writer::log::{OutgoingRecord, PartitionLog, TransactionError};
use crate::writer::metrics::WriterMetrics;
use crate::writer::snapshot::Snapshots;

pub type Reply<A> = Result<Outcome<<A as Aggregate>::Rejection>, EventStoreError>;

/// What a partition writer is asked.
#[derive(Debug)]
pub enum Request<A: Aggregate> {
    /// Decide a command; the outcome goes to `reply`.
    Execute {
        command: Command<A::Command>,
        reply: oneshot::Sender<Reply<A>>,
    },
    /// The current version and state of an aggregate (version 0: it does not exist), as
    /// the writer decides on it: after the commands queued before this request.
    Read {
        aggregate_id: String,
        reply: oneshot::Sender<Result<(u64, A::State), EventStoreError>>,
    },
}

/// A command being executed.
#[derive(Debug)]
struct Execution<A: Aggregate> {
    command: Command<A::Command>,
    reply: oneshot::Sender<Reply<A>>,
}

/// How many records of the log's tail a writer holding part of its state reads before it
/// recalls the aggregates they touch.
const TAIL_CHUNK: i64 = 10_000;

/// How many queued commands one batch takes at most.
const MAX_BATCH: usize = 512;

/// How long a writer whose last batch held several commands waits at most for as many
/// before it begins the next transaction (tokio's timer makes it 1 to 2 ms).
const GATHER: Duration = Duration::from_millis(1);

fn commands_in<A: Aggregate>(batch: &[Request<A>]) -> usize {
    batch
        .iter()
        .filter(|r| matches!(r, Request::Execute { .. }))
        .count()
}

/// Waits up to [`GATHER`] for more requests, until the batch holds `expected` commands, so
/// one transaction carries the commands of callers answered by the last one instead of a
/// transaction each for two half-full batches. A batch of reads only does not wait: it
/// writes nothing.
async fn gather<A: Aggregate>(
    queue: &mut mpsc::Receiver<Request<A>>,
    batch: &mut Vec<Request<A>>,
    expected: usize,
    stop: &CancellationToken,
) {
    let mut commands = commands_in(batch);
    if commands == 0 {
        return;
    }
    let _ = tokio::time::timeout(GATHER, async {
        while batch.len() < MAX_BATCH && commands < expected {
            let request = tokio::select! {
                () = stop.cancelled() => break,
                request = queue.recv() => match request {
                    Some(request) => request,
                    None => break,
                },
            };
            if matches!(request, Request::Execute { .. }) {
                commands += 1;
            }
            batch.push(request);
        }
    })
    .await;
}

fn take_waiting<A: Aggregate>(queue: &mut mpsc::Receiver<Request<A>>, batch: &mut Vec<Request<A>>) {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

/// When a partition writer cuts a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// After this many applied events...
    pub every_events: u64,
    /// ...or this long after the last cut, if anything changed.
    pub every: Duration,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            every_events: 10_000,
            every: Duration::from_secs(30),
        }
    }
}

/// How a partition writer keeps its state and fences others.
#[derive(Clone, Debug, Default)]
pub struct PartitionSettings {
    pub idempotency: IdempotencyWindow,
    pub snapshots: Snapshots,
    pub snapshot_policy: SnapshotPolicy,
    /// What stays in memory when `snapshots` holds the rest (without a store, everything).
    pub memory: MemoryBudget,
}

#[derive(Debug)]
pub struct PartitionWriter<A: Aggregate> {
    core: PartitionCore<A>,
    log: PartitionLog,
    events_topic: String,
    outcomes_topic: String,
    metrics: WriterMetrics,
    /// Set when the writer may be behind its partition (a failed append or read): it
    /// catches up before deciding anything else.
    behind: bool,
    snapshots: Snapshots,
    policy: SnapshotPolicy,
    budget: MemoryBudget,
    /// Why the writer stopped on its own, if it did: its host resumes it with a fresh
    /// producer while the partition is still assigned here.
    halted: Option<Halt>,
    last_cut: Instant,
    saving: Option<JoinHandle<SaveResult<A>>>,
}

/// Why a writer stopped serving on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Halt {
    /// A newer producer of the partition's transactional id exists: another writer took over.
    Fenced,
    /// A transaction's outcome is unknown (the broker went away mid-commit).
    Unsettled,
}

impl Halt {
    fn reason(self) -> &'static str {
        match self {
            Self::Fenced => "fenced by a newer owner",
            Self::Unsettled => "a transaction's outcome is unknown",
        }
    }
}

/// A background snapshot save; a failed cut comes back to be merged into the next one.
type SaveResult<A> = Result<(), (EventStoreError, SnapshotCut<A>)>;

impl<A: Aggregate> PartitionWriter<A> {
    /// Builds the partition's state: from its last snapshot when there is one, then the
    /// events and recorded outcomes after it, by the reader rule.
    pub async fn take_over(
        log: PartitionLog,
        topics: &TopicNames,
        settings: &PartitionSettings,
        metrics: WriterMetrics,
    ) -> Result<Self, EventStoreError> {
        let started = Instant::now();
        let service = A::Event::SERVICE;
        let partition = log.partition;
        // Fence earlier owners (and settle their open transaction) before reading, so
        // nothing they write can land after the state is built.
        log.init_transactions()
            .await
            .map_err(TransactionError::into_inner)?;
        let window = settings.idempotency;
        let restored = match &settings.snapshots {
            Some(store) => store.load::<A>(partition, window).await?,
            None => None,
        };
        let from_snapshot = restored.is_some();
        let mut writer = Self {
            core: restored.unwrap_or_else(|| PartitionCore::new(partition, window)),
            events_topic: topics.events(service),
            outcomes_topic: topics.outcomes(service),
            log,
            metrics,
            behind: true,
            snapshots: settings.snapshots.clone(),
            policy: settings.snapshot_policy,
            budget: settings.memory,
            halted: None,
            last_cut: Instant::now(),
            saving: None,
        };
        writer.catch_up().await?;
        writer
            .read_outcomes(writer.core.outcomes_next_offset)
            .await?;
        writer.metrics.held(partition, writer.core.held());
        let labels = writer.metrics.labels();
        writer
            .metrics
            .takeover_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            service,
            partition,
            from_snapshot,
            next_offset = writer.core.next_offset,
            seconds = started.elapsed().as_secs_f64(),
            "partition taken over"
        );
        Ok(writer)
    }

    pub fn partition(&self) -> i32 {
        self.core.partition
    }

    pub fn core(&self) -> &PartitionCore<A> {
        &self.core
    }

    /// Serves commands from `queue` until `stop` is cancelled or the queue closes, then
    /// hands the state back (a partition that returns to this instance resumes from it).
    pub async fn serve(
        mut self,
        mut queue: mpsc::Receiver<Request<A>>,
        stop: CancellationToken,
    ) -> Self {
        // A takeover that replayed a long tail saves it before the first command.
        self.maybe_snapshot().await;
        // Commands the last batch carried: while several callers keep the writer busy, the
        // ones it just answered are about to send their next command.
        let mut last_commands = 0;
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => break,
                request = queue.recv() => match request {
                    Some(request) => request,
                    None => break,
                },
            };
            let mut batch = vec![first];
            take_waiting(&mut queue, &mut batch);
            if last_commands > 1 {
                gather(&mut queue, &mut batch, last_commands, &stop).await;
            }
            last_commands = commands_in(&batch);
            self.process(batch).await;
            self.metrics.held(self.core.partition, self.core.held());
            if let Some(halt) = self.halted {
                tracing::warn!(
                    partition = self.core.partition,
                    reason = halt.reason(),
                    "partition writer stopped"
                );
                break;
            }
            self.maybe_snapshot().await;
        }
        // Whatever is still queued was not decided: its callers retry elsewhere.
        self.final_snapshot().await;
        self
    }

    /// Cuts and saves a snapshot in the background when the policy says so; one at a time.
    async fn maybe_snapshot(&mut self) {
        let Some(store) = self.snapshots.clone() else {
            return;
        };
        if self.saving.as_ref().is_some_and(|s| !s.is_finished()) {
            return;
        }
        if let Some(finished) = self.saving.take() {
            // Finished: this await returns at once.
            self.settle_save(finished.await.ok());
        }
        // No cut is in flight: all that is not dirty, the store holds.
        self.core.evict(self.budget, Utc::now());
        let due = self.core.events_since_cut() >= self.policy.every_events
            || self.last_cut.elapsed() >= self.policy.every;
        if !due {
            return;
        }
        self.last_cut = Instant::now();
        if let Some(cut) = self.core.take_cut(Utc::now()) {
            self.saving = Some(tokio::spawn(async move {
                store.save(&cut).await.map_err(|e| (e, cut))
            }));
        }
    }

    fn settle_save(&mut self, result: Option<SaveResult<A>>) {
        if let Some(Err((e, cut))) = result {
            tracing::warn!(partition = self.core.partition, error = %e, "snapshot not saved; retrying later");
            self.core.return_cut(cut);
        }
    }

    /// On leaving a partition: save what changed, so the next owner replays less.
    async fn final_snapshot(&mut self) {
        let Some(store) = self.snapshots.clone() else {
            return;
        };
        if let Some(saving) = self.saving.take() {
            self.settle_save(saving.await.ok());
        }
        if let Some(cut) = self.core.take_cut(Utc::now()) {
            let saved = tokio::time::timeout(Duration::from_secs(30), store.save(&cut)).await;
            if !matches!(saved, Ok(Ok(()))) {
                self.core.return_cut(cut);
            }
        }
    }

    /// Reads the event partition from where the state ends to the current end.
    pub async fn catch_up(&mut self) -> Result<(), EventStoreError> {
        let end = self.log.end_offset(&self.events_topic).await?;
        self.apply_range(self.core.next_offset, end).await?;
        self.behind = false;
        Ok(())
    }

    /// Takes the partition up again after it was parked or halted, on a fresh `log`:
    /// fences whoever wrote meanwhile, then reads what the state lacks (the events, and
    /// the outcomes another owner recorded meanwhile, which a retry must get back).
    pub async fn resume(mut self, log: PartitionLog) -> Result<Self, (EventStoreError, Self)> {
        self.log = log;
        self.halted = None;
        self.behind = true;
        let caught_up = async {
            self.log
                .init_transactions()
                .await
                .map_err(TransactionError::into_inner)?;
            self.catch_up().await?;
            self.read_outcomes(self.core.outcomes_next_offset).await
        }
        .await;
        match caught_up {
            Ok(()) => Ok(self),
            Err(e) => Err((e, self)),
        }
    }

    /// Why the writer stopped on its own, if it did.
    pub fn halted(&self) -> Option<Halt> {
        self.halted
    }

    /// Reads what the state lacks before deciding on these aggregates and commands: the
    /// tail of the log if the writer may be behind, then what memory let go of.
    async fn settle(
        &mut self,
        aggregates: &[String],
        commands: impl IntoIterator<Item = CommandId>,
    ) -> Result<(), EventStoreError> {
        if self.behind {
            self.catch_up().await?;
        }
        let missing =
            self.core
                .missing(aggregates.iter().map(String::as_str), commands, Utc::now());
        self.recall(&missing).await
    }

    /// Reads back from the snapshot store what memory lacks.
    async fn recall(&mut self, missing: &Missing) -> Result<(), EventStoreError> {
        match self.snapshots.clone() {
            Some(store) if *missing != Missing::default() => {
                let (aggregates, outcomes) =
                    store.recall(&mut self.core, missing, Utc::now()).await?;
                self.metrics.recalled(aggregates, outcomes);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn read_outcomes(&mut self, from: i64) -> Result<(), EventStoreError> {
        let end = self.log.end_offset(&self.outcomes_topic).await?;
        self.read_outcome_range(from, end).await
    }

    /// Remembers the recorded outcomes in `[from, to)`; the first outcome of a command wins.
    async fn read_outcome_range(&mut self, from: i64, to: i64) -> Result<(), EventStoreError> {
        let core = &mut self.core;
        self.log
            .read_range(&self.outcomes_topic, from, to, |message| {
                if let Some((command, outcome, at)) = decode_outcome::<A>(message)
                    && core.outcome_of(command).is_none()
                {
                    core.remember(command, outcome, at);
                }
            })
            .await?;
        self.core.outcomes_next_offset = self.core.outcomes_next_offset.max(to);
        Ok(())
    }

    /// Applies the event records in `[from, to)` by the reader rule. When memory holds only
    /// part of the state, it goes in chunks: each recalls the aggregates it touches first.
    async fn apply_range(&mut self, from: i64, to: i64) -> Result<(), EventStoreError> {
        let mut next = from;
        while next < to {
            let end = if self.core.is_partial() {
                (next + TAIL_CHUNK).min(to)
            } else {
                to
            };
            if self.core.is_partial() {
                let mut records = Vec::new();
                self.log
                    .read_range(&self.events_topic, next, end, |message| {
                        records.push((message.offset(), decode_event::<A>(message)));
                    })
                    .await?;
                let touched: Vec<String> = records
                    .iter()
                    .filter_map(|(_, event)| event.as_ref().map(|e| e.payload.aggregate_id()))
                    .collect();
                let missing = self.core.missing(
                    touched.iter().map(String::as_str),
                    std::iter::empty(),
                    Utc::now(),
                );
                self.recall(&missing).await?;
                for (offset, event) in records {
                    apply_record(&mut self.core, &self.metrics, offset, event);
                }
            } else {
                let (core, metrics) = (&mut self.core, &self.metrics);
                self.log
                    .read_range(&self.events_topic, next, end, |message| {
                        apply_record(core, metrics, message.offset(), decode_event::<A>(message));
                    })
                    .await?;
            }
            next = end;
        }
        Ok(())
    }

    /// Decides and answers a batch; commands deferred by the plan (a second command on
    /// an aggregate) go into the next round, after the first one's events are confirmed.
    async fn process(&mut self, requests: Vec<Request<A>>) {
        let mut batch = Vec::with_capacity(requests.len());
        let mut reads = Vec::new();
        for request in requests {
            match request {
                Request::Execute { command, reply } => batch.push(Execution { command, reply }),
                Request::Read {
                    aggregate_id,
                    reply,
                } => reads.push((aggregate_id, reply)),
            }
        }
        self.execute(batch).await;
        if reads.is_empty() {
            return;
        }
        let ids: Vec<String> = reads.iter().map(|(id, _)| id.clone()).collect();
        let settled = self.settle(&ids, std::iter::empty()).await;
        for (aggregate_id, reply) in reads {
            let answer = match &settled {
                Err(e) => Err(e.clone()),
                Ok(()) => Ok(self
                    .core
                    .slot(&aggregate_id)
                    .map_or((0, A::State::default()), |s| (s.version, s.state.clone()))),
            };
            let _ = reply.send(answer);
        }
    }

    async fn execute(&mut self, mut batch: Vec<Execution<A>>) {
        while !batch.is_empty() {
            let labels = self.metrics.labels();
            self.metrics
                .batch_size
                .get_or_create(&labels)
                .observe(batch.len() as f64);
            let commands: Vec<Command<A::Command>> =
                batch.iter().map(|r| r.command.clone()).collect();
            let aggregates: Vec<String> =
                commands.iter().map(|c| c.payload.aggregate_id()).collect();
            let settled = self
                .settle(&aggregates, commands.iter().map(|c| c.meta.id))
                .await;
            let results = match settled {
                Err(e) => vec![Some(Err(e)); commands.len()],
                Ok(()) => self.decide_and_commit(&commands).await,
            };
            let mut deferred = Vec::new();
            for (request, result) in batch.into_iter().zip(results) {
                match result {
                    Some(result) => self.answer(request, result),
                    None => deferred.push(request),
                }
            }
            batch = deferred;
        }
    }

    fn answer(&self, request: Execution<A>, result: Reply<A>) {
        let label = match &result {
            Ok(Outcome::Accepted { .. }) => "accepted",
            Ok(Outcome::Rejected { .. }) => "rejected",
            Ok(Outcome::Conflict { .. }) => "conflict",
            Err(_) => "failed",
        };
        self.metrics
            .commands
            .get_or_create(&self.metrics.with("outcome", label))
            .inc();
        let _ = request.reply.send(result);
    }

    /// Every event and recorded outcome of the batch in one Kafka transaction; the state
    /// changes only once it commits. The result of each command, `None` for those deferred
    /// to the next round.
    async fn decide_and_commit(
        &mut self,
        commands: &[Command<A::Command>],
    ) -> Vec<Option<Reply<A>>> {
        // Each command's hop: `decide` continues the command's trace, `append` (until the
        // transaction is over) is the parent its events name.
        let decides: Vec<tracing::Span> = commands
            .iter()
            .map(|command| {
                let span = tracing::trace_span!(target: trace::TARGET, "decide", aggregate = %command.payload.aggregate_id());
                trace::set_parent(&span, &command.meta.traceparent);
                span
            })
            .collect();
        let mut plans = self.core.plan(commands, Utc::now());
        let appends: Vec<tracing::Span> = decides
            .iter()
            .map(|decide| {
                // A child by context only: `decide` ends here, `append` with the transaction.
                let span = tracing::trace_span!(target: trace::TARGET, parent: None, "append", partition = self.core.partition);
                trace::set_parent_span(&span, decide);
                span
            })
            .collect();
        drop(decides);
        let mut results: Vec<Option<Reply<A>>> = vec![None; plans.len()];
        let records = self.records_of(commands, &mut plans, &appends, &mut results);
        if !records.is_empty() {
            match self.commit_records(&records).await {
                Ok(offsets) => {
                    self.apply_committed(commands, &plans, &records, &offsets, &mut results)
                }
                Err(error) => {
                    for (i, _, _) in &records {
                        results[*i] = Some(Err(error.clone()));
                    }
                }
            }
        }
        for (i, plan) in plans.iter().enumerate() {
            if let Plan::SameAs(first) = plan {
                results[i] = results[*first].clone();
            }
        }
        results
    }

    /// The records the plans append (events) or record (refusals), each with the index of
    /// its command and whether it is an event; the results known without appending
    /// (unchanged, already decided) go into `results`.
    fn records_of(
        &self,
        commands: &[Command<A::Command>],
        plans: &mut [Plan<A>],
        appends: &[tracing::Span],
        results: &mut [Option<Reply<A>>],
    ) -> Vec<(usize, bool, OutgoingRecord)> {
        let mut records = Vec::new();
        for (i, plan) in plans.iter_mut().enumerate() {
            match plan {
                Plan::Append(events) if events.is_empty() => {
                    results[i] = Some(Ok(self.core.unchanged(&commands[i].payload.aggregate_id())));
                }
                Plan::Append(events) => {
                    let append = trace::exported(&appends[i]);
                    for event in events.iter_mut() {
                        if let Some(append) = append {
                            event.meta.traceparent = append;
                        }
                        let document = event.to_document();
                        records.push((
                            i,
                            true,
                            record_of(&document.subject, document.to_json(), &document.headers()),
                        ));
                    }
                }
                Plan::Record(outcome) => {
                    let document = outcome_document::<A>(&commands[i], outcome);
                    records.push((
                        i,
                        false,
                        record_of(&document.subject, document.to_json(), &document.headers()),
                    ));
                }
                Plan::Known(outcome) => results[i] = Some(Ok(outcome.clone())),
                Plan::SameAs(_) | Plan::Defer => {}
            }
        }
        records
    }

    /// Writes `records` in one transaction; their offsets once it committed.
    async fn commit_records(
        &mut self,
        records: &[(usize, bool, OutgoingRecord)],
    ) -> Result<Vec<i64>, EventStoreError> {
        let started = Instant::now();
        let produced = self.produce(records).await;
        self.observe_stage("produce", started);
        let outcome = match produced {
            Ok(offsets) => match self.timed("commit", self.log.commit()).await {
                Ok(()) => return Ok(offsets),
                // The commit may have reached the broker: only a fresh producer of this
                // transactional id can tell (it completes or aborts it).
                Err(TransactionError::Retry(e)) => {
                    self.halted = Some(Halt::Unsettled);
                    return Err(e);
                }
                Err(fenced) => fenced,
            },
            Err(TransactionError::Retry(e)) => {
                // Nothing was committed: aborting makes that final.
                match self.log.abort().await {
                    Ok(()) => return Err(e),
                    Err(TransactionError::Retry(abort)) => {
                        tracing::warn!(partition = self.core.partition, error = %abort, "aborting the transaction failed");
                        self.halted = Some(Halt::Unsettled);
                        return Err(e);
                    }
                    Err(fenced) => fenced,
                }
            }
            Err(fenced) => fenced,
        };
        tracing::warn!(partition = self.core.partition, error = %outcome.into_inner(), "transaction fenced: another writer owns this partition now");
        self.fence();
        Err(self.not_owner())
    }

    /// Begins a transaction and produces `records` in it; their offsets once every one is
    /// acknowledged (not yet committed).
    async fn produce(
        &self,
        records: &[(usize, bool, OutgoingRecord)],
    ) -> Result<Vec<i64>, TransactionError> {
        self.log.begin().await?;
        let mut deliveries = Vec::with_capacity(records.len());
        for (_, is_event, record) in records {
            let topic = if *is_event {
                &self.events_topic
            } else {
                &self.outcomes_topic
            };
            let delivery = self
                .log
                .enqueue(topic, record)
                .await
                .map_err(TransactionError::Retry)?;
            deliveries.push(delivery);
        }
        let mut offsets = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(d)) => offsets.push(d.offset),
                Ok(Err((e, _))) => {
                    return Err(TransactionError::Retry(EventStoreError::from_kafka(
                        "append", e,
                    )));
                }
                Err(_) => {
                    return Err(TransactionError::Retry(EventStoreError::Unavailable {
                        operation: "append",
                        reason: "producer shut down".into(),
                    }));
                }
            }
        }
        Ok(offsets)
    }

    fn observe_stage(&self, stage: &str, started: Instant) {
        self.metrics
            .transaction_seconds
            .get_or_create(&self.metrics.with("stage", stage))
            .observe(started.elapsed().as_secs_f64());
    }

    async fn timed<T>(&self, stage: &str, step: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let result = step.await;
        self.observe_stage(stage, started);
        result
    }

    /// Another writer took the partition over: stop writing.
    fn fence(&mut self) {
        self.halted = Some(Halt::Fenced);
        let labels = self.metrics.labels();
        self.metrics.fenced.get_or_create(&labels).inc();
    }

    fn not_owner(&self) -> EventStoreError {
        EventStoreError::NotOwner {
            service: A::Event::SERVICE,
            partition: self.core.partition,
        }
    }

    /// After a commit: apply the events at their offsets and remember recorded outcomes.
    fn apply_committed(
        &mut self,
        commands: &[Command<A::Command>],
        plans: &[Plan<A>],
        records: &[(usize, bool, OutgoingRecord)],
        offsets: &[i64],
        results: &mut [Option<Reply<A>>],
    ) {
        let mut applied = records.iter().zip(offsets);
        for (i, plan) in plans.iter().enumerate() {
            match plan {
                Plan::Append(events) if !events.is_empty() => {
                    for event in events {
                        let (_, offset) = applied.next().expect("one offset per record");
                        self.core.apply_event(event, *offset);
                    }
                    let last = events.last().expect("not empty");
                    let outcome = self.core.outcome_of(last.meta.command_id).cloned();
                    results[i] = Some(Ok(
                        outcome.expect("applied events leave their command's outcome")
                    ));
                    let labels = self.metrics.labels();
                    self.metrics
                        .appended
                        .get_or_create(&labels)
                        .inc_by(events.len() as u64);
                }
                Plan::Record(outcome) => {
                    let (_, offset) = applied.next().expect("one offset per record");
                    self.core.outcomes_next_offset = self.core.outcomes_next_offset.max(offset + 1);
                    self.core
                        .remember(commands[i].meta.id, outcome.clone(), Utc::now());
                    results[i] = Some(Ok(outcome.clone()));
                }
                _ => {}
            }
        }
    }
}

/// Applies one record of the event partition (`None`: not a usable event) by the reader
/// rule, counting what it drops.
fn apply_record<A: Aggregate>(
    core: &mut PartitionCore<A>,
    metrics: &WriterMetrics,
    offset: i64,
    event: Option<Event<A::Event>>,
) {
    let reason = match event {
        None => {
            core.skip_record(offset);
            Some("undecodable")
        }
        Some(event) => core.apply_event(&event, offset).drop_reason(),
    };
    if let Some(reason) = reason {
        metrics
            .dropped
            .get_or_create(&metrics.with("reason", reason))
            .inc();
    }
}

fn decode_event<A: Aggregate>(message: &BorrowedMessage<'_>) -> Option<Event<A::Event>> {
    let document = EventDocument::from_json(message.payload()?).ok()?;
    document.decode::<A::Event>().ok()
}

fn decode_outcome<A: Aggregate>(
    message: &BorrowedMessage<'_>,
) -> Option<(CommandId, Outcome<A::Rejection>, DateTime<Utc>)> {
    let document = OutcomeDocument::from_json(message.payload()?).ok()?;
    let outcome = serde_json::from_value(document.data).ok()?;
    Some((document.commandid, outcome, document.time))
}

fn outcome_document<A: Aggregate>(
    command: &Command<A::Command>,
    outcome: &Outcome<A::Rejection>,
) -> OutcomeDocument {
    let outcome_type = match outcome {
        Outcome::Conflict { .. } => "CommandConflicted",
        _ => "CommandRejected",
    };
    OutcomeDocument {
        specversion: SPEC_VERSION.to_owned(),
        id: uuid::Uuid::now_v7(),
        source: source_of(A::Event::SERVICE),
        outcome_type: outcome_type.to_owned(),
        subject: outcome.aggregate_id().to_owned(),
        time: Utc::now(),
        datacontenttype: DATA_CONTENT_TYPE.to_owned(),
        aggregatetype: A::Event::AGGREGATE_TYPE.to_owned(),
        commandid: command.meta.id,
        commandtype: command.payload.type_name().to_owned(),
        correlationid: command.meta.correlation_id,
        traceparent: command.meta.traceparent,
        data: serde_json::to_value(outcome).expect("outcomes serialize to JSON"),
    }
}

fn record_of(key: &str, value: Vec<u8>, headers: &[(&'static str, String)]) -> OutgoingRecord {
    OutgoingRecord {
        key: key.to_owned(),
        value,
        headers: to_kafka_headers(headers),
    }
}
