//! Ownership of partitions and routing of commands to their writer.
//!
//! The lease is the consumer group of the command topic (`<prefix><service>.commands`,
//! group `<prefix><service>-writers`): the instance the group assigns partition p to writes
//! partition p of the event topic. The group rebalances cooperatively: a member that joins,
//! leaves or dies moves only the partitions that must move. On assignment the host builds
//! (or, for a partition it had before, catches up) that partition's state and starts its
//! writer, whose transactional producer fences any earlier writer of the partition; on
//! revocation it stops the writer and keeps its state parked, in case the partition comes
//! back. A writer that stops on its own (fenced, or a transaction left unsettled by a
//! broker failure) is resumed while the partition is still assigned here.
//!
//! Commands reach a writer two ways: [`WriteModel::execute`] in this process (the HTTP
//! path, which skips the command topic when the partition is local, and otherwise hands
//! the command to the instance that writes the partition, see [`super::peers`]) and
//! records on the command topic (the saga's path), whose offsets are committed once their
//! outcome is known.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schemas::{Command, CommandDocument, MessageFamily};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::aggregate::Aggregate;
use crate::client::KafkaSettings;
use crate::error::EventStoreError;
use crate::outcome::Outcome;
use crate::partitioner::partition_for;
use crate::topics::TopicNames;
use crate::writer::log::PartitionLog;
use crate::writer::metrics::WriterMetrics;
use crate::writer::partition::{PartitionSettings, PartitionWriter, Reply, Request};
use crate::writer::peers::{PeerState, Peers};

/// How often a caller waiting for a partition nobody announced looks at the directory again.
const LOOK_AGAIN: Duration = Duration::from_millis(200);

/// How long a writer that stopped on its own waits before it resumes: time for the group's
/// revocation to reach this instance when it is the one that lost the partition.
const RESUME_AFTER: Duration = Duration::from_millis(500);

/// How a write model is set up.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub kafka: KafkaSettings,
    pub topics: TopicNames,
    pub partitions: i32,
    /// How long `execute` waits for the aggregate's partition to be served here (after a
    /// start or a rebalance) before answering "not owner".
    pub ownership_wait: Duration,
    /// Commands waiting for one partition's writer; beyond this, `execute` sheds load.
    pub queue_capacity: usize,
    /// Idempotency window, snapshots, and whether Kafka transactions fence writers.
    pub partition: PartitionSettings,
    /// The other instances, when commands for partitions written elsewhere are handed to
    /// their writer; without, such commands wait `ownership_wait` for the partition here.
    pub peers: Option<Peers>,
}

impl WriterConfig {
    pub fn new(kafka: KafkaSettings, topics: TopicNames, partitions: i32) -> Self {
        Self {
            kafka,
            topics,
            partitions,
            ownership_wait: Duration::from_secs(10),
            queue_capacity: 4096,
            partition: PartitionSettings::default(),
            peers: None,
        }
    }
}

/// The handle callers use: `execute` a command, get its outcome.
pub struct WriteModel<A: Aggregate> {
    shared: Arc<Shared<A>>,
}

impl<A: Aggregate> Clone for WriteModel<A> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for WriteModel<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteModel")
            .field("service", &A::Event::SERVICE)
            .finish_non_exhaustive()
    }
}

struct Shared<A: Aggregate> {
    config: WriterConfig,
    /// Queues of the partitions served here.
    serving: RwLock<HashMap<i32, mpsc::Sender<Request<A>>>>,
    /// Bumped whenever `serving` changes, to wake `execute` calls waiting for a partition.
    changed: watch::Sender<u64>,
    /// Partitions the group assigned here (served, or being taken over).
    assigned: Mutex<BTreeSet<i32>>,
    /// Whether the group has assigned this instance anything (even nothing) yet.
    joined: std::sync::atomic::AtomicBool,
}

/// Where a command for a partition goes.
enum Route<A: Aggregate> {
    Here(mpsc::Sender<Request<A>>),
    /// The base URL of the instance that writes the partition.
    There(String),
}

/// What a call asks of the instance that writes a partition.
enum Ask<'a, C> {
    Execute(&'a Command<C>),
    State(&'a str),
}

/// Where a call for a partition got to: the writer's queue here, or the answer of the
/// instance that writes it.
enum Reached<A: Aggregate> {
    Here(mpsc::Sender<Request<A>>),
    There(serde_json::Value),
}

impl<A: Aggregate> WriteModel<A> {
    /// The handle and the runtime that must run (as a service worker) for it to serve.
    pub fn new(config: WriterConfig, metrics: WriterMetrics) -> (Self, WriterRuntime<A>) {
        let shared = Arc::new(Shared {
            config,
            serving: RwLock::new(HashMap::new()),
            changed: watch::channel(0).0,
            assigned: Mutex::default(),
            joined: std::sync::atomic::AtomicBool::new(false),
        });
        let runtime = WriterRuntime {
            shared: Arc::clone(&shared),
            metrics,
        };
        (Self { shared }, runtime)
    }

    /// The partition that owns `aggregate_id`.
    pub fn partition_of(&self, aggregate_id: &str) -> i32 {
        partition_for(aggregate_id, self.shared.config.partitions)
    }

    /// Decides `command` and returns its outcome once it is durable: accepted (events in
    /// Kafka), rejected or conflicting (outcome recorded), or the same outcome as before
    /// when its id was seen. Errors mean nothing can be said yet: retry. The partition's
    /// writer decides, here or, with peers, at the instance that writes it.
    pub async fn execute(
        &self,
        command: Command<A::Command>,
    ) -> Result<Outcome<A::Rejection>, EventStoreError> {
        let partition = self.partition_of(&command.payload.aggregate_id());
        match self.reach(partition, Ask::Execute(&command)).await? {
            Reached::Here(queue) => self.execute_on(queue, partition, command).await,
            Reached::There(answer) => decode_answer(answer),
        }
    }

    /// Like [`Self::execute`], but only by a writer of this instance: what a peer's
    /// forwarded command gets. Waits (up to `ownership_wait`) only while the partition is
    /// being taken over here; a partition not assigned here is "not owner" at once.
    pub async fn execute_here(
        &self,
        command: Command<A::Command>,
    ) -> Result<Outcome<A::Rejection>, EventStoreError> {
        let partition = self.partition_of(&command.payload.aggregate_id());
        let queue = self.local_queue(partition).await?;
        self.execute_on(queue, partition, command).await
    }

    async fn execute_on(
        &self,
        queue: mpsc::Sender<Request<A>>,
        partition: i32,
        command: Command<A::Command>,
    ) -> Result<Outcome<A::Rejection>, EventStoreError> {
        let (reply, outcome) = oneshot::channel();
        queue
            .try_send(Request::Execute { command, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EventStoreError::Unavailable {
                    operation: "execute",
                    reason: format!("the writer of partition {partition} is saturated"),
                },
                mpsc::error::TrySendError::Closed(_) => self.not_owner(partition),
            })?;
        outcome
            .await
            .unwrap_or_else(|_| Err(self.not_owner(partition)))
    }

    /// The current version and state of an aggregate, from its writer: as fresh as the
    /// log (the writer's state is never behind what it confirmed). Version 0: no such aggregate.
    pub async fn state_of(&self, aggregate_id: &str) -> Result<(u64, A::State), EventStoreError> {
        let partition = self.partition_of(aggregate_id);
        match self.reach(partition, Ask::State(aggregate_id)).await? {
            Reached::Here(queue) => self.state_on(queue, partition, aggregate_id).await,
            Reached::There(answer) => {
                let PeerState { version, state } = decode_answer(answer)?;
                Ok((version, state))
            }
        }
    }

    /// Like [`Self::state_of`], only from a writer of this instance (see [`Self::execute_here`]).
    pub async fn state_here(&self, aggregate_id: &str) -> Result<(u64, A::State), EventStoreError> {
        let partition = self.partition_of(aggregate_id);
        let queue = self.local_queue(partition).await?;
        self.state_on(queue, partition, aggregate_id).await
    }

    async fn state_on(
        &self,
        queue: mpsc::Sender<Request<A>>,
        partition: i32,
        aggregate_id: &str,
    ) -> Result<(u64, A::State), EventStoreError> {
        let (reply, answer) = oneshot::channel();
        queue
            .try_send(Request::Read {
                aggregate_id: aggregate_id.to_owned(),
                reply,
            })
            .map_err(|_| self.not_owner(partition))?;
        answer
            .await
            .unwrap_or_else(|_| Err(self.not_owner(partition)))
    }

    fn peers(&self) -> &Peers {
        self.shared
            .config
            .peers
            .as_ref()
            .expect("commands are routed elsewhere only with peers")
    }

    /// Where `partition`'s commands go: its writer here once it serves, or with peers the
    /// instance the directory names. Waits (until `deadline`) while nobody serves it.
    async fn route(
        &self,
        partition: i32,
        deadline: tokio::time::Instant,
    ) -> Result<Route<A>, EventStoreError> {
        let mut changes = self.shared.changed.subscribe();
        let group = self.group();
        loop {
            if let Some(queue) = self.shared.queue(partition) {
                return Ok(Route::Here(queue));
            }
            let mut wake = deadline;
            if let Some(peers) = &self.shared.config.peers {
                match peers.owner(&group, partition).await? {
                    Some(owner) if Some(owner.as_str()) != peers.me() => {
                        return Ok(Route::There(owner));
                    }
                    // Nobody announced it, or the entry names this instance, which is
                    // taking the partition over or lost it: wait, and look again.
                    _ => peers.forget(&group, partition),
                }
                wake = deadline.min(tokio::time::Instant::now() + LOOK_AGAIN);
            }
            match tokio::time::timeout_at(wake, changes.changed()).await {
                Ok(Ok(())) => {}
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(self.not_owner(partition));
                }
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }

    /// Finds `partition`'s writer: its queue when it serves here, or else the answer to
    /// `ask` of the instance the directory names, following the partition while the
    /// instances asked say they do not write it (until `ownership_wait`).
    async fn reach(
        &self,
        partition: i32,
        ask: Ask<'_, A::Command>,
    ) -> Result<Reached<A>, EventStoreError> {
        let deadline = tokio::time::Instant::now() + self.shared.config.ownership_wait;
        // Serialized once, and only when the command leaves this instance.
        let mut document = None;
        loop {
            let owner = match self.route(partition, deadline).await? {
                Route::Here(queue) => return Ok(Reached::Here(queue)),
                Route::There(owner) => owner,
            };
            let peers = self.peers();
            let service = A::Event::SERVICE;
            let answer = match ask {
                Ask::Execute(command) => {
                    let document = document.get_or_insert_with(|| command.to_document());
                    peers.execute(&owner, service, partition, document).await
                }
                Ask::State(aggregate_id) => {
                    peers.state(&owner, service, partition, aggregate_id).await
                }
            };
            match answer {
                Ok(answer) => return Ok(Reached::There(answer)),
                Err(EventStoreError::NotOwner { .. }) => {
                    self.moved(partition, &owner, deadline).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The owner the directory named does not write `partition` (any more): forget it and
    /// pause before looking again, or give up at `deadline`.
    async fn moved(
        &self,
        partition: i32,
        owner: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), EventStoreError> {
        self.peers().forget(&self.group(), partition);
        tracing::debug!(
            partition,
            owner,
            "the named owner does not write the partition"
        );
        let pause = tokio::time::Instant::now() + LOOK_AGAIN;
        if pause >= deadline {
            return Err(self.not_owner(partition));
        }
        tokio::time::sleep_until(pause).await;
        Ok(())
    }

    /// The queue of `partition`'s writer here, waiting (bounded) while it is taken over here.
    async fn local_queue(
        &self,
        partition: i32,
    ) -> Result<mpsc::Sender<Request<A>>, EventStoreError> {
        let mut changes = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + self.shared.config.ownership_wait;
        loop {
            if let Some(queue) = self.shared.queue(partition) {
                return Ok(queue);
            }
            let not_owner = EventStoreError::NotOwner {
                service: A::Event::SERVICE,
                partition,
            };
            if !self.shared.is_assigned(partition) {
                return Err(not_owner);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(not_owner),
            }
        }
    }

    fn group(&self) -> String {
        self.shared.config.topics.writers_group(A::Event::SERVICE)
    }

    fn not_owner(&self, partition: i32) -> EventStoreError {
        EventStoreError::NotOwner {
            service: A::Event::SERVICE,
            partition,
        }
    }

    /// Partitions this instance serves now.
    pub fn served_partitions(&self) -> Vec<i32> {
        self.shared.served()
    }

    /// Why this instance cannot decide every command the group gave it, if it cannot:
    /// it has not joined the writers' group yet, or partitions assigned here are still
    /// being taken over (readiness).
    pub fn not_serving(&self) -> Option<String> {
        use std::sync::atomic::Ordering;
        if !self.shared.joined.load(Ordering::Relaxed) {
            return Some(format!(
                "{} writers: not in the writers' group yet",
                A::Event::SERVICE
            ));
        }
        let served: BTreeSet<i32> = self.shared.served().into_iter().collect();
        let pending: Vec<i32> = self
            .shared
            .assigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .difference(&served)
            .copied()
            .collect();
        (!pending.is_empty()).then(|| {
            format!(
                "{} writers: partitions {pending:?} being taken over",
                A::Event::SERVICE
            )
        })
    }
}

/// A peer's JSON answer as the type it stands for.
fn decode_answer<T: serde::de::DeserializeOwned>(
    answer: serde_json::Value,
) -> Result<T, EventStoreError> {
    serde_json::from_value(answer).map_err(|e| EventStoreError::Refused {
        operation: "forward to the partition's writer",
        reason: format!("the owner's answer cannot be read: {e}"),
    })
}

impl<A: Aggregate> Shared<A> {
    /// Partitions this instance serves now, in order.
    fn served(&self) -> Vec<i32> {
        let mut served: Vec<i32> = self
            .serving
            .read()
            .expect("serving lock")
            .keys()
            .copied()
            .collect();
        served.sort_unstable();
        served
    }

    /// Tells the peers (when there are) that this instance writes `partitions`. A failure
    /// only delays commands forwarded here: the next check announces again.
    async fn announce(&self, partitions: &[i32]) {
        let Some(peers) = &self.config.peers else {
            return;
        };
        let group = self.config.topics.writers_group(A::Event::SERVICE);
        if let Err(e) = peers.announce(&group, partitions).await {
            tracing::warn!(service = A::Event::SERVICE, error = %e, "cannot announce the partitions written here");
        }
    }

    fn is_assigned(&self, partition: i32) -> bool {
        self.assigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&partition)
    }

    /// Records a change of assignment, and wakes callers waiting for a partition.
    fn set_assigned(&self, partitions: &[i32], assigned: bool) {
        let mut held = self
            .assigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for partition in partitions {
            if assigned {
                held.insert(*partition);
            } else {
                held.remove(partition);
            }
        }
        drop(held);
        self.changed.send_modify(|n| *n += 1);
    }

    fn queue(&self, partition: i32) -> Option<mpsc::Sender<Request<A>>> {
        self.serving
            .read()
            .expect("serving lock")
            .get(&partition)
            .cloned()
    }

    fn set_serving(&self, partition: i32, queue: Option<mpsc::Sender<Request<A>>>) {
        let mut serving = self.serving.write().expect("serving lock");
        match queue {
            Some(queue) => serving.insert(partition, queue),
            None => serving.remove(&partition),
        };
        drop(serving);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Forwards the group's rebalances to the runtime loop; rdkafka calls it while polling.
struct OwnershipContext {
    events: mpsc::UnboundedSender<Ownership>,
}

#[derive(Debug)]
enum Ownership {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

impl ClientContext for OwnershipContext {}

impl ConsumerContext for OwnershipContext {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let _ = self.events.send(Ownership::Revoked(partitions(list)));
        }
    }

    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let _ = self.events.send(Ownership::Assigned(partitions(list)));
        }
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// Per partition: its writer, running or parked.
type Writers<W> = HashMap<i32, W>;

/// One partition being taken over or served.
struct Running<A: Aggregate> {
    stop: CancellationToken,
    task: JoinHandle<Option<PartitionWriter<A>>>,
}

/// A command from the command topic whose outcome is awaited before its offset commits.
struct InFlight<A: Aggregate> {
    partition: i32,
    offset: i64,
    /// `None` when the record could not be decoded (skipped, with a warning).
    command: Option<Command<A::Command>>,
    outcome: oneshot::Receiver<Reply<A>>,
    /// Whether its writer has it (the partition may still be being taken over).
    sent: bool,
}

/// The command offsets decided per partition held, and when to commit them again.
#[derive(Debug, Default)]
struct CommandCommits {
    done: HashMap<i32, i64>,
    ticks: u32,
}

impl CommandCommits {
    /// How many ticks (of 500 ms) pass between commits of unchanged offsets.
    const AGAIN_EVERY: u32 = 10;

    /// Takes in what was just decided; the offsets to commit now, if any: all of them
    /// (for the partitions still `held`) when something new was decided or a while passed.
    fn due(
        &mut self,
        fresh: HashMap<i32, i64>,
        held: impl Fn(i32) -> bool,
    ) -> Option<HashMap<i32, i64>> {
        self.ticks = self.ticks.wrapping_add(1);
        let changed = !fresh.is_empty();
        for (partition, next) in fresh {
            let known = self.done.entry(partition).or_insert(next);
            *known = (*known).max(next);
        }
        self.done.retain(|p, _| held(*p));
        let again = self.ticks.is_multiple_of(Self::AGAIN_EVERY);
        ((changed || again) && !self.done.is_empty()).then(|| self.done.clone())
    }
}

/// The loop that holds the lease and runs the partition writers. Run it as a worker.
pub struct WriterRuntime<A: Aggregate> {
    shared: Arc<Shared<A>>,
    metrics: WriterMetrics,
}

impl<A: Aggregate> std::fmt::Debug for WriterRuntime<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterRuntime")
            .field("service", &A::Event::SERVICE)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> WriterRuntime<A> {
    /// Joins the writers' group and serves until `stop`; then leaves the group, so that
    /// another instance takes the partitions over without waiting for a session timeout.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match self.run_once(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(service = A::Event::SERVICE, error = %e, "writer runtime failed; restarting");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Joins the writers' group on the command topic; its assignments and revocations come
    /// through the receiver.
    fn join(
        &self,
    ) -> Result<
        (
            StreamConsumer<OwnershipContext>,
            mpsc::UnboundedReceiver<Ownership>,
        ),
        EventStoreError,
    > {
        let config = &self.shared.config;
        let service = A::Event::SERVICE;
        let (events, ownership) = mpsc::unbounded_channel();
        let consumer: StreamConsumer<OwnershipContext> = config
            .kafka
            .consumer(&config.topics.writers_group(service))
            .create_with_context(OwnershipContext { events })
            .map_err(|e| EventStoreError::from_kafka("join writers", e))?;
        consumer
            .subscribe(&[&config.topics.commands(service)])
            .map_err(|e| EventStoreError::from_kafka("join writers", e))?;
        Ok((consumer, ownership))
    }

    /// Starts the writers of assigned partitions (from their parked state when this
    /// instance held them before), and halts and parks those of revoked ones.
    async fn on_ownership(
        &self,
        change: Ownership,
        (running, parked): (&mut Writers<Running<A>>, &mut Writers<PartitionWriter<A>>),
        in_flight: &mut VecDeque<InFlight<A>>,
        halted: &mpsc::UnboundedSender<i32>,
    ) {
        match change {
            Ownership::Assigned(list) => {
                self.shared
                    .joined
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.shared.set_assigned(&list, true);
                for partition in list {
                    let writer = parked.remove(&partition);
                    let run = self.start(partition, writer, Duration::ZERO, halted);
                    running.insert(partition, run);
                }
            }
            Ownership::Revoked(list) => {
                self.shared.set_assigned(&list, false);
                for partition in list {
                    if let Some(writer) = self.halt(running.remove(&partition)).await {
                        parked.insert(partition, writer);
                    }
                }
                in_flight.retain(|f| self.shared.is_assigned(f.partition));
            }
        }
    }

    async fn run_once(&self, stop: &CancellationToken) -> Result<(), EventStoreError> {
        let config = &self.shared.config;
        let (consumer, mut ownership) = self.join()?;
        let mut running: HashMap<i32, Running<A>> = HashMap::new();
        let mut parked: HashMap<i32, PartitionWriter<A>> = HashMap::new();
        let mut in_flight: VecDeque<InFlight<A>> = VecDeque::new();
        let mut commits = CommandCommits::default();
        let (halted, mut halts) = mpsc::unbounded_channel();
        let mut commit_tick = tokio::time::interval(Duration::from_millis(500));
        // The directory of owners heals itself (after a Postgres restart, say) when every
        // instance announces what it writes once per session timeout.
        let mut announce_tick = tokio::time::interval(config.kafka.session_timeout);
        let outcome = loop {
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                Some(change) = ownership.recv() => {
                    self.on_ownership(change, (&mut running, &mut parked), &mut in_flight, &halted).await;
                }
                Some(partition) = halts.recv() => {
                    // A writer stopped on its own; resume it while the partition is ours.
                    if let Some(writer) = self.halt(running.remove(&partition)).await {
                        let run = self.start(partition, Some(writer), RESUME_AFTER, &halted);
                        running.insert(partition, run);
                    }
                }
                message = consumer.recv() => match message {
                    Ok(message) => in_flight.push_back(self.forward(&message)),
                    // librdkafka reconnects to a broker that went away by itself.
                    Err(e) => match EventStoreError::from_kafka("consume commands", e) {
                        error if error.is_unavailable() => {
                            tracing::debug!(%error, "broker unavailable; librdkafka reconnects");
                        }
                        error => break Err(error),
                    },
                },
                _ = commit_tick.tick() => self.commit_done(&consumer, &mut in_flight, &mut commits),
                _ = announce_tick.tick() => self.shared.announce(&self.shared.served()).await,
            }
        };
        let held: Vec<i32> = running.keys().copied().collect();
        self.shared
            .joined
            .store(false, std::sync::atomic::Ordering::Relaxed);
        for (_, run) in running.drain() {
            self.halt(Some(run)).await;
        }
        // What the writers decided before they stopped, while the partitions are held.
        self.commit_done(&consumer, &mut in_flight, &mut commits);
        self.shared.set_assigned(&held, false);
        consumer.unsubscribe();
        outcome
    }

    /// Starts serving `partition` after `delay`: from its parked state (caught up) or from
    /// the log, on a fresh transactional producer whose initialization fences every
    /// earlier writer of the partition. A writer that stops on its own reports on `halted`.
    fn start(
        &self,
        partition: i32,
        parked: Option<PartitionWriter<A>>,
        delay: Duration,
        halted: &mpsc::UnboundedSender<i32>,
    ) -> Running<A> {
        let shared = Arc::clone(&self.shared);
        let metrics = self.metrics.clone();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let halted = halted.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => return parked,
                () = tokio::time::sleep(delay) => {}
            }
            let started = Instant::now();
            let mut writer = match Self::take(&shared, partition, parked, &metrics, &token).await {
                Ok(writer) => writer,
                Err(parked) => return parked,
            };
            let (queue, requests) = mpsc::channel(shared.config.queue_capacity);
            shared.set_serving(partition, Some(queue));
            metrics
                .owned_partitions
                .get_or_create(&metrics.labels())
                .inc();
            tracing::info!(
                partition,
                seconds = started.elapsed().as_secs_f64(),
                "serving partition"
            );
            shared.announce(&[partition]).await;
            writer = writer.serve(requests, token).await;
            shared.set_serving(partition, None);
            metrics
                .owned_partitions
                .get_or_create(&metrics.labels())
                .dec();
            if writer.halted().is_some() {
                let _ = halted.send(partition);
            }
            Some(writer)
        });
        Running { stop, task }
    }

    /// Takes `partition` over (or resumes its parked writer), retrying until it succeeds
    /// or `token` is cancelled (then the parked writer, if any, comes back as the error).
    async fn take(
        shared: &Shared<A>,
        partition: i32,
        mut parked: Option<PartitionWriter<A>>,
        metrics: &WriterMetrics,
        token: &CancellationToken,
    ) -> Result<PartitionWriter<A>, Option<PartitionWriter<A>>> {
        let config = &shared.config;
        let id = format!(
            "{}{}-writer-{partition}",
            config.topics.prefix(),
            A::Event::SERVICE
        );
        loop {
            let attempt = match PartitionLog::transactional(config.kafka.clone(), partition, &id) {
                Err(e) => Err(e),
                Ok(log) => match parked.take() {
                    Some(writer) => writer.resume(log).await.map_err(|(e, writer)| {
                        parked = Some(writer);
                        e
                    }),
                    None => {
                        PartitionWriter::take_over(
                            log,
                            &config.topics,
                            &config.partition,
                            metrics.clone(),
                        )
                        .await
                    }
                },
            };
            match attempt {
                Ok(writer) => return Ok(writer),
                Err(e) => {
                    tracing::warn!(partition, error = %e, "taking over failed; retrying");
                    tokio::select! {
                        () = token.cancelled() => return Err(parked),
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Stops a partition's writer (after its current batch) and returns its state.
    async fn halt(&self, running: Option<Running<A>>) -> Option<PartitionWriter<A>> {
        let running = running?;
        running.stop.cancel();
        running.task.await.ok().flatten()
    }

    /// Takes a command record into the in-flight queue and hands it to its partition's
    /// writer. A record that arrives while the partition is still being taken over here
    /// (the consumer fetches from the moment of assignment) or while the writer's queue is
    /// full waits in the queue, unsent, and is sent once the writer serves: its offset
    /// must not commit before its outcome is known, or a later record's commit would skip it.
    fn forward(&self, message: &rdkafka::message::BorrowedMessage<'_>) -> InFlight<A> {
        let partition = message.partition();
        let offset = message.offset();
        let command = message
            .payload()
            .and_then(|p| CommandDocument::from_json(p).ok())
            .and_then(|d| d.decode::<A::Command>().ok());
        let (reply, outcome) = oneshot::channel();
        let mut flight = InFlight {
            partition,
            offset,
            command: None,
            outcome,
            sent: false,
        };
        match command {
            Some(command) => {
                flight.command = Some(command);
                self.send(&mut flight);
            }
            None => {
                tracing::warn!(
                    partition,
                    offset,
                    "command record cannot be decoded; skipped"
                );
                let _ = reply.send(Err(EventStoreError::Unsupported(
                    "undecodable command".into(),
                )));
                flight.sent = true;
            }
        }
        flight
    }

    /// Sends a command to its partition's writer when that writer serves here: a first
    /// time, or again after an attempt failed (broker trouble, a lost race) or the writer
    /// let go of it. Sending twice is safe: the writer answers a known command id with its
    /// first outcome.
    fn send(&self, flight: &mut InFlight<A>) {
        let (Some(command), Some(queue)) =
            (flight.command.clone(), self.shared.queue(flight.partition))
        else {
            return;
        };
        let (reply, outcome) = oneshot::channel();
        if queue.try_send(Request::Execute { command, reply }).is_ok() {
            flight.outcome = outcome;
            flight.sent = true;
        }
    }

    /// Commits, per partition, the offsets of commands whose outcome is known, in order.
    /// Commits are asynchronous and can fail (a rebalance in progress), so the offsets done
    /// stay known per partition held and are committed again every few ticks: otherwise a
    /// lost commit would leave the group behind until the next command arrived.
    fn commit_done(
        &self,
        consumer: &StreamConsumer<OwnershipContext>,
        in_flight: &mut VecDeque<InFlight<A>>,
        commits: &mut CommandCommits,
    ) {
        let topic = self.shared.config.topics.commands(A::Event::SERVICE);
        let mut done: HashMap<i32, i64> = HashMap::new();
        for flight in in_flight.iter_mut().filter(|f| !f.sent) {
            self.send(flight);
        }
        while let Some(front) = in_flight.front_mut() {
            if !front.sent {
                break;
            }
            match front.outcome.try_recv() {
                // Decided (or never decidable): done.
                Ok(Ok(_)) | Ok(Err(EventStoreError::Unsupported(_))) => {
                    done.insert(front.partition, front.offset + 1);
                    in_flight.pop_front();
                }
                // Retryable, or its writer let go of it: send it again; nothing after it
                // commits until it is decided.
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                    self.send(front);
                    break;
                }
                // Still deciding.
                Err(oneshot::error::TryRecvError::Empty) => break,
            }
        }
        let Some(done) = commits.due(done, |p| self.shared.is_assigned(p)) else {
            return;
        };
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in done {
            let _ = offsets.add_partition_offset(&topic, partition, Offset::Offset(next));
        }
        if let Err(e) = consumer.commit(&offsets, rdkafka::consumer::CommitMode::Async) {
            tracing::warn!(error = %e, "committing command offsets failed; they will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decided_offsets_are_committed_at_once_then_again_now_and_then_for_held_partitions() {
        let mut commits = CommandCommits::default();
        let held = |p: i32| p != 2;
        // Given offsets decided on partitions 0 and 2 (2 no longer held)...
        let first = commits.due(HashMap::from([(0, 5), (2, 9)]), held);
        assert_eq!(first, Some(HashMap::from([(0, 5)])));
        // ...when nothing new is decided, nothing is committed for a while...
        for _ in 2..CommandCommits::AGAIN_EVERY {
            assert_eq!(commits.due(HashMap::new(), held), None);
        }
        // ...then the same offsets again (a lost commit heals).
        assert_eq!(
            commits.due(HashMap::new(), held),
            Some(HashMap::from([(0, 5)]))
        );
        // An older offset never moves a partition back.
        assert_eq!(
            commits.due(HashMap::from([(0, 3), (1, 1)]), held),
            Some(HashMap::from([(0, 5), (1, 1)]))
        );
    }
}
