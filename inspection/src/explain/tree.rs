//! The causal tree of one correlation id, built without I/O from what the event index and
//! the saga's outbox recorded:
//!
//! - an event hangs under the command that caused it (its `causationid`);
//! - a saga step (a command) hangs under the message that made the saga issue it: an
//!   event, or the command of an earlier step; a step issued by a deadline has none; an
//!   event of another request (the customer cancelling the order) is a root of its own;
//! - commands no saga issued are the requests that started it all (the roots).
//!
//! Children are ordered by time, so reading down a branch follows what happened.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// An event as the index lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventFact {
    pub event_id: Uuid,
    pub event_type: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub occurred_at: DateTime<Utc>,
    pub causation_id: Uuid,
}

/// A command the saga issued, as its outbox lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SagaStep {
    pub command_id: Uuid,
    pub order_id: Uuid,
    pub step: String,
    pub causation_id: Option<Uuid>,
    pub issued_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// An event of another request (another correlation id) that made this correlation's saga
/// issue a step, such as the customer's cancellation of the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Elsewhere {
    #[serde(flatten)]
    pub event: EventFact,
    pub correlation_id: Uuid,
}

/// One node of the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Node {
    /// A command that came from outside (an HTTP request), known by the events it caused.
    Request {
        command_id: Uuid,
        /// When its first event occurred.
        at: DateTime<Utc>,
        children: Vec<Node>,
    },
    SagaStep {
        #[serde(flatten)]
        step: SagaStep,
        children: Vec<Node>,
    },
    Event {
        #[serde(flatten)]
        event: EventFact,
        children: Vec<Node>,
    },
    /// An event of another request, with the steps it made the saga issue.
    Elsewhere {
        #[serde(flatten)]
        cause: Elsewhere,
        children: Vec<Node>,
    },
    /// Steps the saga issued on its own (a fired deadline), or for a message the index
    /// does not hold.
    Deadline { children: Vec<Node> },
}

impl Node {
    fn at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Request { at, .. } => Some(*at),
            Self::SagaStep { step, .. } => Some(step.issued_at),
            Self::Event { event, .. } => Some(event.occurred_at),
            Self::Elsewhere { cause, .. } => Some(cause.event.occurred_at),
            Self::Deadline { children } => children.iter().filter_map(Self::at).min(),
        }
    }

    pub fn children(&self) -> &[Node] {
        match self {
            Self::Request { children, .. }
            | Self::SagaStep { children, .. }
            | Self::Event { children, .. }
            | Self::Elsewhere { children, .. }
            | Self::Deadline { children } => children,
        }
    }
}

/// The orders of the steps whose cause is neither among `events` nor among `steps`, and
/// those causes: what to look for in other requests.
pub fn unknown_causes(events: &[EventFact], steps: &[SagaStep]) -> (Vec<String>, Vec<Uuid>) {
    let known: HashSet<Uuid> = events
        .iter()
        .map(|e| e.event_id)
        .chain(steps.iter().map(|s| s.command_id))
        .collect();
    let mut orders = Vec::new();
    let mut causes = Vec::new();
    for step in steps {
        if let Some(cause) = step.causation_id.filter(|c| !known.contains(c)) {
            orders.push(step.order_id.to_string());
            causes.push(cause);
        }
    }
    orders.sort();
    orders.dedup();
    causes.sort();
    causes.dedup();
    (orders, causes)
}

/// The roots of the tree of `events` and `steps` (and the `elsewhere` events that caused
/// some of the steps), ordered by time.
pub fn build(events: &[EventFact], steps: &[SagaStep], elsewhere: &[Elsewhere]) -> Vec<Node> {
    let step_ids: HashSet<Uuid> = steps.iter().map(|s| s.command_id).collect();
    let event_ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    let elsewhere_ids: HashSet<Uuid> = elsewhere.iter().map(|e| e.event.event_id).collect();
    // Parent id -> children, where the parent is a message id (command or event).
    let mut events_by_cause: BTreeMap<Uuid, Vec<&EventFact>> = BTreeMap::new();
    for event in events {
        events_by_cause
            .entry(event.causation_id)
            .or_default()
            .push(event);
    }
    let mut steps_by_cause: BTreeMap<Option<Uuid>, Vec<&SagaStep>> = BTreeMap::new();
    for step in steps {
        let known = step
            .causation_id
            .filter(|c| event_ids.contains(c) || step_ids.contains(c) || elsewhere_ids.contains(c));
        steps_by_cause.entry(known).or_default().push(step);
    }
    let index = Index {
        events_by_cause,
        steps_by_cause,
    };
    let mut roots: Vec<Node> = index
        .events_by_cause
        .iter()
        .filter(|(cause, _)| !step_ids.contains(*cause) && !event_ids.contains(*cause))
        .map(|(&command_id, caused)| Node::Request {
            command_id,
            at: caused
                .iter()
                .map(|e| e.occurred_at)
                .min()
                .unwrap_or_default(),
            children: index.under(command_id),
        })
        .collect();
    roots.extend(elsewhere.iter().map(|cause| Node::Elsewhere {
        cause: cause.clone(),
        children: index.under(cause.event.event_id),
    }));
    if let Some(unprompted) = index.steps_by_cause.get(&None) {
        roots.push(Node::Deadline {
            children: sorted(unprompted.iter().map(|s| index.step(s)).collect()),
        });
    }
    sorted(roots)
}

struct Index<'a> {
    events_by_cause: BTreeMap<Uuid, Vec<&'a EventFact>>,
    steps_by_cause: BTreeMap<Option<Uuid>, Vec<&'a SagaStep>>,
}

impl Index<'_> {
    /// Everything caused by message `id`.
    fn under(&self, id: Uuid) -> Vec<Node> {
        let events = self
            .events_by_cause
            .get(&id)
            .into_iter()
            .flatten()
            .map(|e| Node::Event {
                event: (*e).clone(),
                children: self.under(e.event_id),
            });
        let steps = self
            .steps_by_cause
            .get(&Some(id))
            .into_iter()
            .flatten()
            .map(|s| self.step(s));
        sorted(events.chain(steps).collect())
    }

    fn step(&self, step: &SagaStep) -> Node {
        Node::SagaStep {
            step: step.clone(),
            children: self.under(step.command_id),
        }
    }
}

fn sorted(mut nodes: Vec<Node>) -> Vec<Node> {
    nodes.sort_by_key(Node::at);
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a time")
    }

    fn event(id: u128, kind: &str, cause: u128, at: i64) -> EventFact {
        EventFact {
            event_id: Uuid::from_u128(id),
            event_type: kind.into(),
            aggregate_type: "order".into(),
            aggregate_id: "o".into(),
            version: 1,
            topic: "orders.events".into(),
            partition: 0,
            offset: 0,
            occurred_at: t(at),
            causation_id: Uuid::from_u128(cause),
        }
    }

    fn step(id: u128, name: &str, cause: Option<u128>, at: i64) -> SagaStep {
        SagaStep {
            command_id: Uuid::from_u128(id),
            order_id: Uuid::from_u128(0),
            step: name.into(),
            causation_id: cause.map(Uuid::from_u128),
            issued_at: t(at),
            done_at: None,
            attempts: 1,
            last_error: None,
        }
    }

    /// The tree as text: one line per node, indented by depth.
    fn outline(nodes: &[Node], depth: usize, out: &mut Vec<String>) {
        for node in nodes {
            let label = match node {
                Node::Request { command_id, .. } => format!("request {}", command_id.as_u128()),
                Node::SagaStep { step, .. } => format!("step {}", step.step),
                Node::Event { event, .. } => format!("event {}", event.event_type),
                Node::Elsewhere { cause, .. } => format!("elsewhere {}", cause.event.event_type),
                Node::Deadline { .. } => "deadline".into(),
            };
            out.push(format!("{}{label}", "  ".repeat(depth)));
            outline(node.children(), depth + 1, out);
        }
    }

    #[test]
    fn given_a_request_and_saga_steps_when_built_then_each_hangs_under_its_cause() {
        let events = [
            event(10, "OrderPlaced", 1, 0),
            event(11, "PaymentAuthorized", 20, 2),
            event(12, "OrderConfirmed", 21, 4),
        ];
        let steps = [
            step(20, "authorize_payment", Some(10), 1),
            step(21, "confirm_order", Some(11), 3),
        ];
        let mut lines = Vec::new();
        outline(&build(&events, &steps, &[]), 0, &mut lines);
        assert_eq!(
            lines,
            [
                "request 1",
                "  event OrderPlaced",
                "    step authorize_payment",
                "      event PaymentAuthorized",
                "        step confirm_order",
                "          event OrderConfirmed",
            ]
        );
    }

    #[test]
    fn given_a_step_from_a_deadline_and_one_after_a_step_when_built_then_both_are_placed() {
        let events = [
            event(10, "OrderPlaced", 1, 0),
            event(13, "OrderRejected", 22, 9),
        ];
        let steps = [
            step(20, "authorize_payment", Some(10), 1),
            step(22, "reject_order", None, 8),
            step(23, "notify_rejection", Some(20), 10),
        ];
        let mut lines = Vec::new();
        outline(&build(&events, &steps, &[]), 0, &mut lines);
        assert_eq!(
            lines,
            [
                "request 1",
                "  event OrderPlaced",
                "    step authorize_payment",
                "      step notify_rejection",
                "deadline",
                "  step reject_order",
                "    event OrderRejected",
            ]
        );
    }

    #[test]
    fn given_a_step_caused_by_another_request_when_built_then_it_hangs_under_that_event() {
        let events = [
            event(10, "OrderPlaced", 1, 0),
            event(14, "PaymentRefunded", 24, 12),
        ];
        let steps = [
            step(20, "authorize_payment", Some(10), 1),
            step(24, "refund_payment", Some(30), 11),
            step(25, "notify_order_cancelled", Some(14), 13),
            step(26, "reject_order", Some(99), 14),
        ];
        let (orders, causes) = unknown_causes(&events, &steps);
        assert_eq!(orders, [Uuid::from_u128(0).to_string()]);
        assert_eq!(causes, [Uuid::from_u128(30), Uuid::from_u128(99)]);
        let cancelled = Elsewhere {
            event: event(30, "OrderCancelled", 2, 10),
            correlation_id: Uuid::from_u128(7),
        };
        let mut lines = Vec::new();
        outline(&build(&events, &steps, &[cancelled]), 0, &mut lines);
        assert_eq!(
            lines,
            [
                "request 1",
                "  event OrderPlaced",
                "    step authorize_payment",
                "elsewhere OrderCancelled",
                "  step refund_payment",
                "    event PaymentRefunded",
                "      step notify_order_cancelled",
                "deadline",
                "  step reject_order",
            ],
            "a cause found nowhere stays with the deadline's steps"
        );
    }

    #[test]
    fn given_two_requests_in_one_correlation_when_built_then_they_are_roots_in_time_order() {
        let events = [
            event(11, "OrderCancelled", 2, 5),
            event(10, "OrderPlaced", 1, 0),
        ];
        let roots = build(&events, &[], &[]);
        let ids: Vec<u128> = roots
            .iter()
            .filter_map(|n| match n {
                Node::Request { command_id, .. } => Some(command_id.as_u128()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, [1, 2]);
    }
}
