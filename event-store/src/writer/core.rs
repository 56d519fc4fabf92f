//! The decisions of one partition's writer, without I/O: which commands are duplicates,
//! which conflict with their expected version, what the others decide on the current state,
//! and how records read back from the log change that state (by the reader rule).
//!
//! A batch decides at most one command per aggregate; a later command on the same
//! aggregate is deferred to the next batch. So every event is decided on state made only of
//! confirmed events, and the reader rule (next version, first record wins) cannot admit an
//! event on top of a predecessor that lost to another writer. Plans become state only through
//! [`PartitionCore::apply_event`], once the log confirms them.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use schemas::{Command, CommandId, Event, EventId, EventMeta, MessageFamily};

use crate::aggregate::Aggregate;
use crate::gate::Admission;
use crate::outcome::Outcome;
use crate::position::Position;

/// How long, and for how many commands at most, a partition remembers outcomes: a command
/// id seen within the window gets its first outcome back, however many other commands
/// came since, across restarts and takeovers (the outcomes are rebuilt from the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdempotencyWindow {
    pub duration: TimeDelta,
    /// A hard bound on memory; reaching it forgets the oldest outcomes early (logged).
    pub max_commands: usize,
}

impl Default for IdempotencyWindow {
    /// 24 hours, like the idempotency keys of payment APIs; at most a million commands.
    fn default() -> Self {
        Self {
            duration: TimeDelta::hours(24),
            max_commands: 1_000_000,
        }
    }
}

/// How much of a partition's state its writer keeps in memory when a snapshot store holds
/// the rest. What a saved snapshot holds leaves memory once it has been idle for `idle`
/// (an aggregate no batch used, an outcome decided that long ago), or earlier past the
/// counts (least recently used aggregates and oldest outcomes first), and is read back
/// from the store when a command needs it. So memory follows the working set of the last
/// `idle`, up to the counts, instead of the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub aggregates: usize,
    pub outcomes: usize,
    pub idle: TimeDelta,
}

impl Default for MemoryBudget {
    /// At most about 2 MB per partition writer (an aggregate or an outcome takes some 500
    /// bytes); what was not used for 2 minutes goes.
    fn default() -> Self {
        Self {
            aggregates: 2_000,
            outcomes: 2_000,
            idle: TimeDelta::minutes(2),
        }
    }
}

/// Outcomes of recent commands, oldest first for eviction.
#[derive(Debug)]
struct Remembered<R> {
    window: IdempotencyWindow,
    by_id: HashMap<CommandId, Outcome<R>>,
    order: VecDeque<(DateTime<Utc>, CommandId)>,
}

impl<R> Remembered<R> {
    fn new(window: IdempotencyWindow) -> Self {
        Self {
            window,
            by_id: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers (or, for a command with several events, updates) an outcome decided at `at`.
    fn insert(&mut self, command: CommandId, outcome: Outcome<R>, at: DateTime<Utc>) {
        if self.by_id.insert(command, outcome).is_none() {
            self.order.push_back((at, command));
        }
        self.forget_before(at - self.window.duration);
    }

    /// Forgets outcomes decided before `horizon`, and the oldest beyond the cap.
    fn forget_before(&mut self, horizon: DateTime<Utc>) {
        while let Some(&(when, oldest)) = self.order.front() {
            let full = self.by_id.len() > self.window.max_commands;
            if when >= horizon && !full {
                break;
            }
            if full && when >= horizon {
                tracing::warn!(
                    max = self.window.max_commands,
                    "idempotency memory full: forgetting outcomes younger than the window"
                );
            }
            self.order.pop_front();
            self.by_id.remove(&oldest);
        }
    }

    /// Lets the oldest outcomes go: those decided before `idle_before`, and more down to
    /// `keep`, sparing the newest `unsaved` ones; whether any went.
    fn evict(&mut self, keep: usize, unsaved: usize, idle_before: DateTime<Utc>) -> bool {
        let excess = self.by_id.len().saturating_sub(keep);
        let evictable = self.order.len().saturating_sub(unsaved);
        let idle = self
            .order
            .iter()
            .take(evictable)
            .take_while(|(at, _)| *at < idle_before)
            .count();
        let gone = excess.max(idle).min(evictable);
        for (_, oldest) in self.order.drain(..gone) {
            self.by_id.remove(&oldest);
        }
        gone > 0
    }
}

/// One aggregate as the writer holds it.
#[derive(Debug)]
pub struct Slot<A: Aggregate> {
    pub version: u64,
    pub state: A::State,
    pub last_position: Option<Position>,
    /// When a batch last needed it (the writer's clock, in milliseconds), for eviction.
    pub(crate) used: i64,
}

// By hand: a derive would demand `A: Clone`, though only its state is cloned.
impl<A: Aggregate> Clone for Slot<A> {
    fn clone(&self) -> Self {
        Self {
            version: self.version,
            state: self.state.clone(),
            last_position: self.last_position.clone(),
            used: self.used,
        }
    }
}

impl<A: Aggregate> Default for Slot<A> {
    fn default() -> Self {
        Self {
            version: 0,
            state: A::State::default(),
            last_position: None,
            used: 0,
        }
    }
}

/// What the writer does with one command of a batch.
#[derive(Clone, Debug)]
pub enum Plan<A: Aggregate> {
    /// Seen before: answer the remembered outcome, append nothing.
    Known(Outcome<A::Rejection>),
    /// A duplicate of an earlier command in the same batch (by index): same answer.
    SameAs(usize),
    /// Refused or conflicting: record the outcome durably, then answer it.
    Record(Outcome<A::Rejection>),
    /// Append these events; accepted once the log confirms every one of them.
    Append(Vec<Event<A::Event>>),
    /// An earlier command of the batch decides this aggregate: plan again next batch.
    Defer,
}

/// What changed in one partition since the previous cut, as of its offsets: what
/// [`PartitionCore::take_cut`] hands to the snapshot store to save.
#[derive(Debug)]
pub struct SnapshotCut<A: Aggregate> {
    pub partition: i32,
    pub events_offset: i64,
    pub outcomes_offset: i64,
    pub aggregates: Vec<(String, Slot<A>)>,
    pub outcomes: Vec<(CommandId, Outcome<A::Rejection>, DateTime<Utc>)>,
    /// Outcomes decided before this are out of the idempotency window: delete them.
    pub forget_before: DateTime<Utc>,
}

/// The state of every aggregate in one partition, as of `next_offset` in its event log.
#[derive(Debug)]
pub struct PartitionCore<A: Aggregate> {
    pub service: &'static str,
    pub partition: i32,
    slots: HashMap<String, Slot<A>>,
    remembered: Remembered<A::Rejection>,
    /// The state reflects the event partition up to this offset (exclusive).
    pub next_offset: i64,
    /// Outcome records are known up to this offset of the outcome partition (exclusive).
    pub outcomes_next_offset: i64,
    /// Changed since the last snapshot cut.
    dirty: HashSet<String>,
    fresh_outcomes: Vec<(CommandId, Outcome<A::Rejection>, DateTime<Utc>)>,
    events_since_cut: u64,
    /// Some of the state lives only in the snapshot store (evicted, or not loaded since a
    /// takeover): what memory lacks must be recalled from it before a decision.
    partial: bool,
    /// The time of the latest batch, in milliseconds, never going back: when aggregates
    /// were last used.
    clock: i64,
    /// When idle aggregates were last looked for.
    swept: i64,
}

/// What a batch needs that memory lacks, when the core is partial.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    pub aggregates: Vec<String>,
    pub commands: Vec<CommandId>,
}

impl<A: Aggregate> PartitionCore<A> {
    pub fn new(partition: i32, window: IdempotencyWindow) -> Self {
        Self {
            service: A::Event::SERVICE,
            partition,
            slots: HashMap::new(),
            remembered: Remembered::new(window),
            next_offset: 0,
            outcomes_next_offset: 0,
            dirty: HashSet::new(),
            fresh_outcomes: Vec::new(),
            events_since_cut: 0,
            partial: false,
            clock: 0,
            swept: 0,
        }
    }

    /// A partition whose state, as of these offsets, is in the snapshot store: memory
    /// starts empty and fills as commands and the tail of the log need aggregates.
    pub fn resumed(
        partition: i32,
        window: IdempotencyWindow,
        next_offset: i64,
        outcomes_next_offset: i64,
    ) -> Self {
        Self {
            next_offset,
            outcomes_next_offset,
            partial: true,
            ..Self::new(partition, window)
        }
    }

    pub fn window(&self) -> IdempotencyWindow {
        self.remembered.window
    }

    /// Whether some of the state is only in the snapshot store.
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// Marks the aggregates a batch works on as used `now`, and says which of them and of
    /// its commands' outcomes memory lacks (nothing, unless the core is partial).
    pub fn missing<'a>(
        &mut self,
        aggregates: impl IntoIterator<Item = &'a str>,
        commands: impl IntoIterator<Item = CommandId>,
        now: DateTime<Utc>,
    ) -> Missing {
        self.clock = self.clock.max(now.timestamp_millis());
        let mut missing = Missing::default();
        for id in aggregates {
            match self.slots.get_mut(id) {
                Some(slot) => slot.used = self.clock,
                None if self.partial && !missing.aggregates.iter().any(|m| m == id) => {
                    missing.aggregates.push(id.to_owned());
                }
                None => {}
            }
        }
        if self.partial {
            missing.commands = commands
                .into_iter()
                .filter(|c| !self.remembered.by_id.contains_key(c))
                .collect();
        }
        missing
    }

    /// Takes back outcomes recalled from the snapshot store (already saved there).
    pub fn recall(
        &mut self,
        command: CommandId,
        outcome: Outcome<A::Rejection>,
        at: DateTime<Utc>,
    ) {
        // At the front: eviction spares the newest entries as the unsaved ones, so only
        // `remember` may add at the back.
        if self.remembered.by_id.insert(command, outcome).is_none() {
            self.remembered.order.push_front((at, command));
        }
    }

    /// Lets memory go down to `budget` at `now`: only what a saved snapshot holds, so call
    /// it while no cut is in flight. Past a count, that kind shrinks to three quarters of
    /// it, so the scan runs now and then; idle aggregates are looked for every quarter of
    /// `budget.idle`.
    pub fn evict(&mut self, budget: MemoryBudget, now: DateTime<Utc>) {
        let idle_before = now
            .checked_sub_signed(budget.idle)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let over = self.slots.len() > budget.aggregates;
        let sweep = now.timestamp_millis() - self.swept >= budget.idle.num_milliseconds() / 4;
        // Only clean aggregates can go; skip the scan when every one is dirty.
        if (over || sweep) && self.slots.len() > self.dirty.len() {
            self.swept = now.timestamp_millis();
            let mut clean: Vec<(i64, &String)> = self
                .slots
                .iter()
                .filter(|(id, _)| !self.dirty.contains(*id))
                .map(|(id, slot)| (slot.used, id))
                .collect();
            clean.sort_unstable();
            let excess = if over {
                self.slots.len() - budget.aggregates * 3 / 4
            } else {
                0
            };
            let idle = clean
                .iter()
                .take_while(|(used, _)| *used < idle_before.timestamp_millis())
                .count();
            let gone: Vec<String> = clean[..excess.max(idle).min(clean.len())]
                .iter()
                .map(|(_, id)| (*id).clone())
                .collect();
            self.partial |= !gone.is_empty();
            for id in gone {
                self.slots.remove(&id);
            }
        }
        let keep = if self.remembered.by_id.len() > budget.outcomes {
            budget.outcomes * 3 / 4
        } else {
            budget.outcomes
        };
        if self
            .remembered
            .evict(keep, self.fresh_outcomes.len(), idle_before)
        {
            self.partial = true;
        }
    }

    pub fn slot(&self, aggregate_id: &str) -> Option<&Slot<A>> {
        self.slots.get(aggregate_id)
    }

    pub fn slots(&self) -> impl Iterator<Item = (&String, &Slot<A>)> {
        self.slots.iter()
    }

    /// Restores one aggregate from the snapshot store, unless memory already holds it.
    pub fn restore(&mut self, aggregate_id: String, mut slot: Slot<A>) {
        slot.used = self.clock;
        self.slots.entry(aggregate_id).or_insert(slot);
    }

    /// Plans `commands` in order; see the module documentation for why at most one
    /// command per aggregate is decided.
    pub fn plan(&self, commands: &[Command<A::Command>], now: DateTime<Utc>) -> Vec<Plan<A>> {
        let mut deciding: HashSet<String> = HashSet::new();
        let mut seen: HashMap<CommandId, usize> = HashMap::new();
        let mut plans = Vec::with_capacity(commands.len());
        for (index, command) in commands.iter().enumerate() {
            if let Some(&first) = seen.get(&command.meta.id) {
                plans.push(Plan::SameAs(first));
                continue;
            }
            seen.insert(command.meta.id, index);
            let aggregate_id = command.payload.aggregate_id();
            if let Some(known) = self.remembered.by_id.get(&command.meta.id) {
                plans.push(Plan::Known(known.clone()));
            } else if deciding.insert(aggregate_id.clone()) {
                plans.push(self.decide(command, aggregate_id, now));
            } else {
                plans.push(Plan::Defer);
            }
        }
        plans
    }

    fn decide(
        &self,
        command: &Command<A::Command>,
        aggregate_id: String,
        now: DateTime<Utc>,
    ) -> Plan<A> {
        let (mut version, mut state) = self
            .slots
            .get(&aggregate_id)
            .map_or((0, A::State::default()), |s| (s.version, s.state.clone()));
        if let Some(expected) = command.meta.expected_version
            && expected != version
        {
            return Plan::Record(Outcome::Conflict {
                aggregate_id,
                expected,
                current: version,
            });
        }
        match A::decide(&state, &command.payload) {
            Err(reason) => Plan::Record(Outcome::Rejected {
                aggregate_id,
                version,
                reason,
            }),
            Ok(payloads) => Plan::Append(
                payloads
                    .into_iter()
                    .map(|payload| {
                        version += 1;
                        state = A::evolve(std::mem::take(&mut state), &payload);
                        Event {
                            meta: event_meta(command, version, now),
                            payload,
                        }
                    })
                    .collect(),
            ),
        }
    }

    /// Applies one record of the event partition by the reader rule; a `Next` event
    /// changes its aggregate and becomes its command's accepted outcome.
    pub fn apply_event(&mut self, event: &Event<A::Event>, offset: i64) -> Admission {
        self.next_offset = self.next_offset.max(offset + 1);
        let aggregate_id = event.payload.aggregate_id();
        let slot = self.slots.entry(aggregate_id.clone()).or_default();
        slot.used = self.clock;
        let admission = Admission::of(slot.version, event.meta.version);
        if admission == Admission::Next {
            slot.state = A::evolve(std::mem::take(&mut slot.state), &event.payload);
            slot.version = event.meta.version;
            let position = Position {
                service: self.service.to_owned(),
                partition: self.partition,
                offset,
            };
            slot.last_position = Some(position.clone());
            let outcome = Outcome::Accepted {
                aggregate_id,
                version: slot.version,
                position: Some(position),
            };
            self.dirty.insert(event.payload.aggregate_id());
            self.events_since_cut += 1;
            self.remember(event.meta.command_id, outcome, event.meta.occurred_at);
        }
        admission
    }

    /// Passes over a record of the event partition that is not a usable event.
    pub fn skip_record(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// Remembers an outcome that appended no event (recorded in the log of outcomes),
    /// decided at `at`.
    pub fn remember(
        &mut self,
        command: CommandId,
        outcome: Outcome<A::Rejection>,
        at: DateTime<Utc>,
    ) {
        self.fresh_outcomes.push((command, outcome.clone(), at));
        self.remembered.insert(command, outcome, at);
    }

    /// How many aggregates and remembered outcomes this partition holds in memory.
    pub fn held(&self) -> (usize, usize) {
        (self.slots.len(), self.remembered.by_id.len())
    }

    /// Events applied since the last snapshot cut.
    pub fn events_since_cut(&self) -> u64 {
        self.events_since_cut
    }

    /// What changed since the last cut, as of the current offsets; `None` if nothing did.
    pub fn take_cut(&mut self, now: DateTime<Utc>) -> Option<SnapshotCut<A>> {
        if self.dirty.is_empty() && self.fresh_outcomes.is_empty() {
            return None;
        }
        let aggregates = self
            .dirty
            .drain()
            .filter_map(|id| self.slots.get(&id).map(|slot| (id, slot.clone())))
            .collect();
        self.events_since_cut = 0;
        Some(SnapshotCut {
            partition: self.partition,
            events_offset: self.next_offset,
            outcomes_offset: self.outcomes_next_offset,
            aggregates,
            outcomes: last_per_command(std::mem::take(&mut self.fresh_outcomes)),
            forget_before: now - self.remembered.window.duration,
        })
    }

    /// Forgets what changed so far: the state is exactly what a snapshot holds.
    pub fn mark_clean(&mut self) {
        self.dirty.clear();
        self.fresh_outcomes.clear();
        self.events_since_cut = 0;
    }

    /// A cut that could not be saved: its changes go into the next one.
    pub fn return_cut(&mut self, cut: SnapshotCut<A>) {
        self.dirty
            .extend(cut.aggregates.into_iter().map(|(id, _)| id));
        let mut outcomes = cut.outcomes;
        outcomes.append(&mut self.fresh_outcomes);
        self.fresh_outcomes = outcomes;
    }

    /// The outcome remembered for `command`, if any.
    pub fn outcome_of(&self, command: CommandId) -> Option<&Outcome<A::Rejection>> {
        self.remembered.by_id.get(&command)
    }

    /// An `Accepted` outcome for a command that caused no event: the current version.
    pub fn unchanged(&self, aggregate_id: &str) -> Outcome<A::Rejection> {
        let slot = self.slots.get(aggregate_id);
        Outcome::Accepted {
            aggregate_id: aggregate_id.to_owned(),
            version: slot.map_or(0, |s| s.version),
            position: slot.and_then(|s| s.last_position.clone()),
        }
    }
}

/// A command with several events is remembered once per event, each outcome newer than the
/// last: only its final one is its outcome.
fn last_per_command<R>(
    outcomes: Vec<(CommandId, Outcome<R>, DateTime<Utc>)>,
) -> Vec<(CommandId, Outcome<R>, DateTime<Utc>)> {
    let mut seen = HashSet::new();
    let mut last: Vec<_> = outcomes
        .into_iter()
        .rev()
        .filter(|(command, _, _)| seen.insert(*command))
        .collect();
    last.reverse();
    last
}

fn event_meta<C>(command: &Command<C>, version: u64, now: DateTime<Utc>) -> EventMeta {
    EventMeta {
        id: EventId::new(),
        version,
        occurred_at: now,
        command_id: command.meta.id,
        correlation_id: command.meta.correlation_id,
        causation_id: command.meta.id.as_uuid(),
        traceparent: command.meta.traceparent.child(),
    }
}

#[cfg(test)]
mod tests {
    use schemas::CommandMeta;

    use super::*;
    use crate::sample::{Deposit, Ledger, LedgerCommand, LedgerRejection, OpenAccount, Withdraw};

    fn command(payload: impl Into<LedgerCommand>, expected: Option<u64>) -> Command<LedgerCommand> {
        Command {
            meta: CommandMeta {
                expected_version: expected,
                ..CommandMeta::new("/test")
            },
            payload: payload.into(),
        }
    }

    fn open(id: &str) -> LedgerCommand {
        OpenAccount {
            account_id: id.into(),
            initial_deposit: None,
        }
        .into()
    }

    fn deposit(id: &str, amount: u64) -> LedgerCommand {
        Deposit {
            account_id: id.into(),
            amount,
        }
        .into()
    }

    /// Given: each command is planned and its events confirmed at the next offsets.
    fn given(core: &mut PartitionCore<Ledger>, commands: &[Command<LedgerCommand>]) {
        for command in commands {
            if let Plan::Append(events) = core
                .plan(std::slice::from_ref(command), Utc::now())
                .remove(0)
            {
                for event in events {
                    let offset = core.next_offset;
                    assert_eq!(core.apply_event(&event, offset), Admission::Next);
                }
            }
        }
    }

    #[test]
    fn one_command_per_aggregate_is_decided_per_batch_the_rest_wait() {
        let mut core = PartitionCore::<Ledger>::new(0, IdempotencyWindow::default());
        let plans = core.plan(
            &[
                command(open("a"), None),
                command(deposit("a", 10), None),
                command(open("b"), None),
            ],
            Utc::now(),
        );
        assert!(matches!(&plans[0], Plan::Append(e) if e[0].meta.version == 1));
        assert!(matches!(&plans[1], Plan::Defer));
        assert!(matches!(&plans[2], Plan::Append(e) if e[0].meta.version == 1));
        // Nothing is state until the log confirms it.
        assert!(core.slot("a").is_none());

        given(
            &mut core,
            &[command(open("a"), None), command(deposit("a", 10), None)],
        );
        let withdraw = command(
            Withdraw {
                account_id: "a".into(),
                amount: 11,
            },
            None,
        );
        assert!(matches!(
            core.plan(&[withdraw], Utc::now()).remove(0),
            Plan::Record(Outcome::Rejected {
                version: 2,
                reason: LedgerRejection::InsufficientFunds { balance: 10 },
                ..
            })
        ));
    }

    #[test]
    fn an_expected_version_that_is_not_current_is_a_conflict() {
        let mut core = PartitionCore::<Ledger>::new(0, IdempotencyWindow::default());
        given(&mut core, &[command(open("a"), None)]);
        let stale = core.plan(&[command(deposit("a", 1), Some(0))], Utc::now());
        assert!(matches!(
            &stale[0],
            Plan::Record(Outcome::Conflict {
                expected: 0,
                current: 1,
                ..
            })
        ));
        let current = core.plan(&[command(deposit("a", 1), Some(1))], Utc::now());
        assert!(matches!(&current[0], Plan::Append(events) if events[0].meta.version == 2));
    }

    #[test]
    fn a_command_id_seen_before_gets_its_outcome_back_and_appends_nothing() {
        let mut core = PartitionCore::<Ledger>::new(3, IdempotencyWindow::default());
        let first = command(open("a"), None);
        given(&mut core, std::slice::from_ref(&first));
        let again = core.plan(&[first.clone(), first.clone()], Utc::now());
        let Plan::Known(Outcome::Accepted {
            version, position, ..
        }) = &again[0]
        else {
            panic!("expected the remembered outcome, got {:?}", again[0]);
        };
        assert_eq!(*version, 1);
        assert_eq!(
            position.as_ref().map(|p| (p.partition, p.offset)),
            Some((3, 0))
        );
        assert!(matches!(again[1], Plan::SameAs(0)));

        let refused = command(open("a"), None);
        let Plan::Record(outcome) = core
            .plan(std::slice::from_ref(&refused), Utc::now())
            .remove(0)
        else {
            panic!("a second open is refused");
        };
        core.remember(refused.meta.id, outcome.clone(), Utc::now());
        assert!(matches!(
            core.plan(&[refused], Utc::now()).remove(0),
            Plan::Known(known) if known == outcome
        ));
    }

    #[test]
    fn the_log_decides_between_two_writers_first_record_wins() {
        // Two writers planned version 2 of "a" on the same state; the log has both.
        let mut core = PartitionCore::<Ledger>::new(0, IdempotencyWindow::default());
        given(&mut core, &[command(open("a"), None)]);
        let ours = core.plan(&[command(deposit("a", 5), None)], Utc::now());
        let theirs = core.plan(&[command(deposit("a", 7), None)], Utc::now());
        let (Plan::Append(ours), Plan::Append(theirs)) = (&ours[0], &theirs[0]) else {
            panic!("both append");
        };
        assert_eq!(core.apply_event(&theirs[0], 1), Admission::Next);
        assert_eq!(
            core.apply_event(&ours[0], 2),
            Admission::Duplicate { last: 2 }
        );
        assert_eq!(core.slot("a").map(|s| s.state.balance), Some(7));
        assert_eq!(core.next_offset, 3);
    }

    #[test]
    fn outcomes_are_remembered_however_busy_the_aggregate_and_forgotten_after_the_window() {
        let window = IdempotencyWindow {
            duration: TimeDelta::hours(1),
            max_commands: 1000,
        };
        let mut core = PartitionCore::<Ledger>::new(0, window);
        let first = command(open("a"), None);
        given(&mut core, std::slice::from_ref(&first));
        for _ in 0..500 {
            given(&mut core, &[command(deposit("a", 1), None)]);
        }
        assert!(
            core.outcome_of(first.meta.id).is_some(),
            "500 later commands do not evict it"
        );

        let later = Utc::now() + TimeDelta::hours(2);
        core.remember(CommandId::new(), core.unchanged("a"), later);
        assert!(
            core.outcome_of(first.meta.id).is_none(),
            "an hour-old outcome is forgotten"
        );
    }

    #[test]
    fn the_memory_cap_forgets_the_oldest_first() {
        let window = IdempotencyWindow {
            duration: TimeDelta::hours(1),
            max_commands: 3,
        };
        let mut core = PartitionCore::<Ledger>::new(0, window);
        let ids: Vec<CommandId> = (0..4).map(|_| CommandId::new()).collect();
        for id in &ids {
            core.remember(*id, core.unchanged("a"), Utc::now());
        }
        assert!(core.outcome_of(ids[0]).is_none());
        assert!(ids[1..].iter().all(|id| core.outcome_of(*id).is_some()));
    }

    fn budget(aggregates: usize, outcomes: usize, idle: TimeDelta) -> MemoryBudget {
        MemoryBudget {
            aggregates,
            outcomes,
            idle,
        }
    }

    /// Given four saved aggregates, "b", "c" and "d" used at `t0`, "a" a second later,
    /// then "e" created and not saved yet.
    fn four_saved_and_one_new(t0: DateTime<Utc>) -> PartitionCore<Ledger> {
        let mut core = PartitionCore::<Ledger>::new(0, IdempotencyWindow::default());
        given(
            &mut core,
            &["a", "b", "c", "d"].map(|id| command(open(id), None)),
        );
        assert!(core.take_cut(t0).is_some());
        assert_eq!(core.missing(["b", "c", "d"], [], t0), Missing::default());
        let t1 = t0 + TimeDelta::seconds(1);
        assert_eq!(core.missing(["a"], [], t1), Missing::default());
        given(&mut core, &[command(open("e"), None)]);
        core
    }

    #[test]
    fn past_its_count_memory_keeps_the_aggregates_last_used_and_never_one_a_snapshot_lacks() {
        let t0 = Utc::now();
        let mut core = four_saved_and_one_new(t0);

        // When memory may hold 4 aggregates (it shrinks to 3 when over).
        core.evict(
            budget(4, 100, TimeDelta::hours(1)),
            t0 + TimeDelta::seconds(1),
        );

        // Then "a" (used last) and "e" (not in a snapshot yet) stay; two of the rest go.
        assert!(core.is_partial());
        assert!(core.slot("a").is_some() && core.slot("e").is_some());
        assert_eq!(core.held().0, 3);
        let missing = core.missing(["a", "b", "c", "d", "new"], [], t0);
        assert_eq!(missing.aggregates.len(), 3, "{missing:?}");
        assert!(missing.aggregates.contains(&"new".to_owned()));
    }

    #[test]
    fn what_no_batch_used_for_the_idle_time_leaves_memory_however_few() {
        let t0 = Utc::now();
        let mut core = four_saved_and_one_new(t0);
        let mut outcomes = PartitionCore::<Ledger>::new(0, IdempotencyWindow::default());
        let old = CommandId::new();
        outcomes.remember(old, outcomes.unchanged("a"), t0);
        assert!(outcomes.take_cut(t0).is_some());

        // When two minutes pass with memory far under its counts, and "a" idle for less.
        let idle = budget(100, 100, TimeDelta::minutes(2));
        core.evict(idle, t0 + TimeDelta::seconds(89));
        assert_eq!(core.held().0, 5, "nothing idle yet");
        // The next look, a quarter of the idle time later.
        core.evict(idle, t0 + TimeDelta::milliseconds(120_500));
        outcomes.evict(idle, t0 + TimeDelta::minutes(3));

        // Then the idle saved ones are gone: "b", "c", "d", and the old outcome.
        let mut held: Vec<&str> = core.slots().map(|(id, _)| id.as_str()).collect();
        held.sort_unstable();
        assert_eq!(held, ["a", "e"]);
        assert!(outcomes.outcome_of(old).is_none() && outcomes.is_partial());
    }

    #[test]
    fn outcomes_leave_memory_oldest_first_once_saved_and_unknown_commands_are_looked_up() {
        let now = Utc::now();
        let mut core = PartitionCore::<Ledger>::new(0, IdempotencyWindow::default());
        let saved: Vec<CommandId> = (0..4).map(|_| CommandId::new()).collect();
        for id in &saved {
            core.remember(*id, core.unchanged("a"), now);
        }
        assert!(core.take_cut(now).is_some());
        let unsaved: Vec<CommandId> = (0..4).map(|_| CommandId::new()).collect();
        for id in &unsaved {
            core.remember(*id, core.unchanged("a"), now);
        }
        // Not partial yet: an unknown command is new, nothing to look up.
        assert_eq!(
            core.missing([], [CommandId::new()], now),
            Missing::default()
        );

        core.evict(budget(100, 2, TimeDelta::hours(1)), now);

        assert!(saved.iter().all(|id| core.outcome_of(*id).is_none()));
        assert!(unsaved.iter().all(|id| core.outcome_of(*id).is_some()));
        let missing = core.missing([], [saved[0], unsaved[0]], now);
        assert_eq!(missing.commands, vec![saved[0]]);
        core.recall(saved[0], core.unchanged("a"), now);
        assert!(core.outcome_of(saved[0]).is_some());
    }

    #[test]
    fn a_restored_aggregate_never_replaces_the_one_in_memory() {
        let mut core = PartitionCore::<Ledger>::resumed(0, IdempotencyWindow::default(), 10, 0);
        assert_eq!(
            core.missing(["a"], [], Utc::now()).aggregates,
            vec!["a".to_owned()]
        );
        given(&mut core, &[command(open("a"), None)]);
        core.restore("a".into(), Slot::default());
        assert_eq!(core.slot("a").map(|s| s.version), Some(1));
    }

    #[test]
    fn a_command_with_several_events_is_cut_with_its_final_outcome() {
        let mut core = PartitionCore::<Ledger>::new(0, IdempotencyWindow::default());
        let open = command(
            OpenAccount {
                account_id: "a".into(),
                initial_deposit: Some(5),
            },
            None,
        );
        given(&mut core, std::slice::from_ref(&open));
        let cut = core.take_cut(Utc::now()).expect("a cut");
        assert_eq!(cut.outcomes.len(), 1);
        assert!(matches!(
            cut.outcomes[0].1,
            Outcome::Accepted { version: 2, .. }
        ));
    }

    #[test]
    fn a_recalled_outcome_never_shields_an_unsaved_one_from_staying() {
        let now = Utc::now();
        let mut core = PartitionCore::<Ledger>::new(0, IdempotencyWindow::default());
        let unsaved = CommandId::new();
        core.remember(unsaved, core.unchanged("a"), now);
        let recalled = CommandId::new();
        core.recall(recalled, core.unchanged("b"), now - TimeDelta::hours(1));

        core.evict(budget(100, 1, TimeDelta::minutes(2)), now);

        assert!(
            core.outcome_of(unsaved).is_some(),
            "not saved yet: it stays"
        );
        assert!(core.outcome_of(recalled).is_none());
    }
}
