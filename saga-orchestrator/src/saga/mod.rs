//! The order saga as a pure state machine: `(saga, input) -> (saga, actions)`.
//!
//! One saga per order. It moves forward through three steps — authorize the payment,
//! confirm the order, notify the customer — and when a step fails or times out, or the
//! customer cancels, it switches to compensating: a plan of undo steps, built in reverse
//! order of the steps done, run one at a time, each at most once.
//!
//! Inputs are facts (events read from the log, a deadline that fired, an action the
//! executor gave up on) and an operator's retry of a failed saga. Actions are what the orchestrator must make happen; each carries
//! a [`Step`] that names it, so the command it becomes has an id derived from the saga
//! and the step, and a re-sent command is a duplicate the writer drops.
//!
//! No I/O here: the orchestrator loads the saga, calls [`react`], and stores the saga,
//! its deadline and its actions in one transaction.

#[cfg(test)]
mod tests;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use schemas::notifications::NotificationKind;
use schemas::orders::CancelledBy;
use schemas::{CorrelationId, Money, OrderId, PaymentId, UserId};

/// The saga's state as the API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    Running,
    Compensating,
    Completed,
    Compensated,
    /// A compensation could not be carried out: an operator must look.
    Failed,
}

impl SagaState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Compensating,
            Self::Completed,
            Self::Compensated,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_final(&self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }
}

/// Every action a saga can take; each at most once per saga, so its name is enough to
/// derive the id of the command it becomes.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    AuthorizePayment,
    ConfirmOrder,
    NotifyOrderConfirmed,
    RejectOrder,
    CancelOrder,
    RefundPayment,
    NotifyPaymentDeclined,
    NotifyOrderCancelled,
}

impl Step {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::AuthorizePayment => "authorize_payment",
            Self::ConfirmOrder => "confirm_order",
            Self::NotifyOrderConfirmed => "notify_order_confirmed",
            Self::RejectOrder => "reject_order",
            Self::CancelOrder => "cancel_order",
            Self::RefundPayment => "refund_payment",
            Self::NotifyPaymentDeclined => "notify_payment_declined",
            Self::NotifyOrderCancelled => "notify_order_cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        ALL_STEPS.into_iter().find(|s| s.as_str() == text)
    }

    fn notify(kind: NotificationKind) -> Self {
        match kind {
            NotificationKind::OrderConfirmed => Self::NotifyOrderConfirmed,
            NotificationKind::PaymentDeclined => Self::NotifyPaymentDeclined,
            NotificationKind::OrderCancelled => Self::NotifyOrderCancelled,
        }
    }

    /// Whether this is an undo step (as opposed to a forward step of the workflow).
    pub fn is_compensation(&self) -> bool {
        !matches!(
            self,
            Self::AuthorizePayment | Self::ConfirmOrder | Self::NotifyOrderConfirmed
        )
    }
}

pub const ALL_STEPS: [Step; 8] = [
    Step::AuthorizePayment,
    Step::ConfirmOrder,
    Step::NotifyOrderConfirmed,
    Step::RejectOrder,
    Step::CancelOrder,
    Step::RefundPayment,
    Step::NotifyPaymentDeclined,
    Step::NotifyOrderCancelled,
];

/// What the orchestrator must make happen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Ask the payment provider, then record its verdict with `AuthorizePayment`.
    AuthorizePayment {
        payment_id: PaymentId,
        user_id: UserId,
        amount: Money,
    },
    ConfirmOrder {
        payment_id: PaymentId,
    },
    RejectOrder {
        reason: String,
    },
    CancelOrder {
        reason: String,
    },
    /// Ask the provider to refund, then record it with `RefundPayment`.
    RefundPayment {
        payment_id: PaymentId,
        amount: Money,
        reason: String,
    },
    /// Deliver through the notification channel, then record the delivery report.
    Notify {
        user_id: UserId,
        kind: NotificationKind,
    },
}

/// An action of one saga, named by its step: what the orchestrator carries out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    pub step: Step,
    pub action: Action,
}

/// Facts the saga reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    OrderPlaced {
        order_id: OrderId,
        user_id: UserId,
        amount: Money,
        /// The request that placed the order: every command of the saga continues it.
        correlation_id: CorrelationId,
    },
    /// `user_active` is what the orchestrator knows of the user when the payment lands:
    /// a deactivated user's order is not confirmed.
    PaymentAuthorized {
        user_active: bool,
    },
    PaymentDeclined {
        reason: String,
    },
    PaymentRefunded,
    OrderConfirmed,
    OrderRejected,
    OrderCancelled {
        by: CancelledBy,
        reason: String,
    },
    NotificationSent {
        kind: NotificationKind,
    },
    NotificationFailed {
        kind: NotificationKind,
        error: String,
    },
    /// The payment deadline passed (fired from the deadline table).
    PaymentDeadlinePassed,
    /// The executor gave up on a step for good (not a transient failure).
    StepAbandoned {
        step: Step,
        error: String,
    },
    /// The payment request was never sent: the saga stopped needing it first.
    PaymentNotAsked,
    /// An operator dealt with what made a compensation fail (say, a refund the provider
    /// refused) and asks the failed saga to try it again.
    OperatorRetry,
}

impl Input {
    pub fn name(&self) -> &'static str {
        match self {
            Self::OrderPlaced { .. } => "order_placed",
            Self::PaymentAuthorized { .. } => "payment_authorized",
            Self::PaymentDeclined { .. } => "payment_declined",
            Self::PaymentRefunded => "payment_refunded",
            Self::OrderConfirmed => "order_confirmed",
            Self::OrderRejected => "order_rejected",
            Self::OrderCancelled { .. } => "order_cancelled",
            Self::NotificationSent { .. } => "notification_sent",
            Self::NotificationFailed { .. } => "notification_failed",
            Self::PaymentDeadlinePassed => "payment_deadline_passed",
            Self::StepAbandoned { .. } => "step_abandoned",
            Self::PaymentNotAsked => "payment_not_asked",
            Self::OperatorRetry => "operator_retry",
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            Self::PaymentDeclined { reason } => Some(reason.clone()),
            Self::OrderCancelled { by, reason } => Some(format!("by {by:?}: {reason}")),
            Self::NotificationSent { kind } => Some(kind.as_str().to_owned()),
            Self::NotificationFailed { kind, error } => Some(format!("{}: {error}", kind.as_str())),
            Self::StepAbandoned { step, error } => Some(format!("{}: {error}", step.as_str())),
            Self::PaymentAuthorized { user_active: false } => Some("user deactivated".into()),
            _ => None,
        }
    }
}

/// Where the forward path stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    AuthorizingPayment,
    ConfirmingOrder,
    NotifyingCustomer,
    Done,
}

/// What is known of the payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    Requested,
    Authorized,
    Declined,
    Refunded,
}

/// One undo step of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Compensation {
    pub step: Step,
    pub issued_at: Option<DateTime<Utc>>,
    pub done_at: Option<DateTime<Utc>>,
}

/// One line of the saga's history: an input it saw or an action it issued. Named
/// `SagaStep` in the OpenAPI documents (the query API has a `HistoryEntry` of its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = SagaStep)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    /// `event`, `command`, `deadline` or `operator`.
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

/// Something that went wrong and stays on record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    pub at: DateTime<Utc>,
    pub step: String,
    pub error: String,
}

/// One order's saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    pub user_id: UserId,
    pub payment_id: PaymentId,
    pub amount: Money,
    pub state: SagaState,
    pub stage: Stage,
    pub payment: PaymentState,
    /// Why the saga compensates, once it does.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub compensating_because: Option<String>,
    pub compensations: Vec<Compensation>,
    pub failures: Vec<Failure>,
    pub history: Vec<HistoryEntry>,
    /// When the payment must have answered; `None` once it did (or the saga moved on).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payment_deadline: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How long the payment may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub payment_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            payment_timeout: Duration::seconds(30),
        }
    }
}

/// The saga after an input, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    pub saga: Saga,
    pub instructions: Vec<Instruction>,
}

/// Why an input changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("no saga for this order yet")]
    NoSaga,
    #[error("the saga already started")]
    AlreadyStarted,
    #[error("{0} does not apply in this state")]
    NotApplicable(&'static str),
}

/// The saga's reaction to `input` at time `at`.
pub fn react(
    saga: Option<&Saga>,
    input: &Input,
    at: DateTime<Utc>,
    policy: &Policy,
) -> Result<Reaction, Ignored> {
    match (saga, input) {
        (None, Input::OrderPlaced { .. }) => Ok(start(input, at, policy)),
        (None, _) => Err(Ignored::NoSaga),
        (Some(_), Input::OrderPlaced { .. }) => Err(Ignored::AlreadyStarted),
        (Some(saga), input) => {
            let mut run = Run::new(saga.clone(), at);
            run.saga.history.push(HistoryEntry {
                at,
                kind: match input {
                    Input::PaymentDeadlinePassed => "deadline",
                    Input::OperatorRetry => "operator",
                    _ => "event",
                }
                .into(),
                name: input.name().into(),
                detail: input.detail(),
            });
            run.apply(input)?;
            Ok(run.finish())
        }
    }
}

fn start(placed: &Input, at: DateTime<Utc>, policy: &Policy) -> Reaction {
    let Input::OrderPlaced {
        order_id,
        user_id,
        amount,
        correlation_id,
    } = placed.clone()
    else {
        unreachable!("a saga starts with its order placed")
    };
    let payment_id = PaymentId::for_order(order_id);
    let saga = Saga {
        order_id,
        correlation_id,
        user_id,
        payment_id,
        amount,
        state: SagaState::Running,
        stage: Stage::AuthorizingPayment,
        payment: PaymentState::Requested,
        compensating_because: None,
        compensations: Vec::new(),
        failures: Vec::new(),
        history: vec![HistoryEntry {
            at,
            kind: "event".into(),
            name: "order_placed".into(),
            detail: None,
        }],
        payment_deadline: Some(at + policy.payment_timeout),
        started_at: at,
        updated_at: at,
    };
    let mut run = Run::new(saga, at);
    run.issue(
        Step::AuthorizePayment,
        Action::AuthorizePayment {
            payment_id,
            user_id,
            amount,
        },
    );
    run.finish()
}

/// One reaction being worked out.
struct Run {
    saga: Saga,
    at: DateTime<Utc>,
    instructions: Vec<Instruction>,
}

impl Run {
    fn new(saga: Saga, at: DateTime<Utc>) -> Self {
        Self {
            saga,
            at,
            instructions: Vec::new(),
        }
    }

    fn finish(mut self) -> Reaction {
        self.saga.updated_at = self.at;
        Reaction {
            saga: self.saga,
            instructions: self.instructions,
        }
    }

    fn issue(&mut self, step: Step, action: Action) {
        self.saga.history.push(HistoryEntry {
            at: self.at,
            kind: "command".into(),
            name: step.as_str().into(),
            detail: None,
        });
        self.instructions.push(Instruction {
            order_id: self.saga.order_id,
            correlation_id: self.saga.correlation_id,
            step,
            action,
        });
    }

    fn fail(&mut self, step: &str, error: &str) {
        self.saga.failures.push(Failure {
            at: self.at,
            step: step.into(),
            error: error.into(),
        });
    }

    fn apply(&mut self, input: &Input) -> Result<(), Ignored> {
        let not_applicable = Err(Ignored::NotApplicable(input.name()));
        match input {
            Input::OrderPlaced { .. } => not_applicable,
            Input::PaymentAuthorized { user_active } => self.payment_authorized(*user_active),
            Input::PaymentDeclined { reason } => self.payment_declined(reason),
            Input::PaymentDeadlinePassed => self.deadline_passed(),
            // Only the saga asks for refunds: one it did not plan is not its business.
            Input::PaymentRefunded
                if self.saga.payment != PaymentState::Authorized
                    || !self
                        .saga
                        .compensations
                        .iter()
                        .any(|c| c.step == Step::RefundPayment) =>
            {
                not_applicable
            }
            Input::PaymentRefunded => {
                self.saga.payment = PaymentState::Refunded;
                self.completed(Step::RefundPayment);
                Ok(())
            }
            Input::OrderConfirmed => self.order_confirmed(),
            Input::OrderRejected => {
                self.order_ended();
                Ok(())
            }
            Input::OrderCancelled { by, reason } => self.order_cancelled(*by, reason),
            Input::NotificationSent { kind } => self.notified(*kind),
            Input::NotificationFailed { kind, error } => {
                self.fail(Step::notify(*kind).as_str(), error);
                self.notified(*kind)
            }
            Input::StepAbandoned { step, error } => self.abandoned(*step, error),
            Input::PaymentNotAsked => self.payment_not_asked(),
            Input::OperatorRetry => self.retried(),
        }
    }

    fn payment_authorized(&mut self, user_active: bool) -> Result<(), Ignored> {
        if self.saga.payment != PaymentState::Requested {
            return Err(Ignored::NotApplicable("payment_authorized"));
        }
        self.saga.payment = PaymentState::Authorized;
        self.saga.payment_deadline = None;
        if self.saga.stage != Stage::AuthorizingPayment || self.saga.state != SagaState::Running {
            // The saga gave up on the payment (timeout, cancellation) before it landed.
            self.plan(&[Step::RefundPayment]);
            return Ok(());
        }
        if !user_active {
            self.compensate(
                "the user was deactivated before confirmation",
                &[Step::RefundPayment, Step::CancelOrder],
            );
            return Ok(());
        }
        self.saga.stage = Stage::ConfirmingOrder;
        let payment_id = self.saga.payment_id;
        self.issue(Step::ConfirmOrder, Action::ConfirmOrder { payment_id });
        Ok(())
    }

    fn payment_declined(&mut self, reason: &str) -> Result<(), Ignored> {
        if self.saga.payment != PaymentState::Requested {
            return Err(Ignored::NotApplicable("payment_declined"));
        }
        self.saga.payment = PaymentState::Declined;
        self.saga.payment_deadline = None;
        if self.saga.state == SagaState::Running {
            self.compensate(
                &format!("payment declined: {reason}"),
                &[Step::RejectOrder, Step::NotifyPaymentDeclined],
            );
        } else {
            self.settle();
        }
        Ok(())
    }

    fn deadline_passed(&mut self) -> Result<(), Ignored> {
        let due = self
            .saga
            .payment_deadline
            .filter(|due| *due <= self.at && self.saga.payment == PaymentState::Requested)
            .ok_or(Ignored::NotApplicable("payment_deadline_passed"))?;
        self.saga.payment_deadline = None;
        self.fail(
            Step::AuthorizePayment.as_str(),
            &format!(
                "no answer from the payment provider by {}",
                due.to_rfc3339()
            ),
        );
        if self.saga.state == SagaState::Running {
            self.compensate(
                "the payment did not answer in time",
                &[Step::RejectOrder, Step::NotifyPaymentDeclined],
            );
        } else {
            self.settle();
        }
        Ok(())
    }

    fn order_confirmed(&mut self) -> Result<(), Ignored> {
        if self.saga.stage != Stage::ConfirmingOrder {
            return Err(Ignored::NotApplicable("order_confirmed"));
        }
        self.saga.stage = Stage::NotifyingCustomer;
        if self.saga.state == SagaState::Running {
            let user_id = self.saga.user_id;
            self.issue(
                Step::NotifyOrderConfirmed,
                Action::Notify {
                    user_id,
                    kind: NotificationKind::OrderConfirmed,
                },
            );
        }
        Ok(())
    }

    fn order_cancelled(&mut self, by: CancelledBy, reason: &str) -> Result<(), Ignored> {
        self.order_ended();
        if self.saga.state != SagaState::Running && self.saga.state != SagaState::Completed {
            return Ok(());
        }
        let why = match by {
            CancelledBy::Customer => format!("cancelled by the customer: {reason}"),
            CancelledBy::Saga => format!("cancelled: {reason}"),
        };
        match self.saga.stage {
            // The payment is still out: undo it if and when it lands.
            Stage::AuthorizingPayment => self.compensate(&why, &[]),
            // Confirmation can no longer happen.
            Stage::ConfirmingOrder => self.compensate(&why, &[Step::RefundPayment]),
            Stage::NotifyingCustomer | Stage::Done => {
                self.compensate(&why, &[Step::RefundPayment, Step::NotifyOrderCancelled]);
            }
        }
        Ok(())
    }

    fn notified(&mut self, kind: NotificationKind) -> Result<(), Ignored> {
        if kind == NotificationKind::OrderConfirmed {
            if self.saga.stage != Stage::NotifyingCustomer {
                return Err(Ignored::NotApplicable("notification"));
            }
            self.saga.stage = Stage::Done;
            if self.saga.state == SagaState::Running {
                self.saga.state = SagaState::Completed;
            }
        } else {
            self.completed(Step::notify(kind));
        }
        Ok(())
    }

    fn payment_not_asked(&mut self) -> Result<(), Ignored> {
        if self.saga.payment != PaymentState::Requested
            || self.saga.payment_deadline.is_none()
            || self.saga.state == SagaState::Running
        {
            return Err(Ignored::NotApplicable("payment_not_asked"));
        }
        // Nothing can land any more: no deadline to wait for.
        self.saga.payment_deadline = None;
        self.settle();
        Ok(())
    }

    fn abandoned(&mut self, step: Step, error: &str) -> Result<(), Ignored> {
        self.fail(step.as_str(), error);
        if step.is_compensation() && self.saga.state == SagaState::Compensating {
            self.saga.state = SagaState::Failed;
        }
        Ok(())
    }

    /// A failed saga compensates again: the compensation given up on is issued anew under
    /// the same step (so the same command id), and the rest of the plan follows it.
    fn retried(&mut self) -> Result<(), Ignored> {
        if self.saga.state != SagaState::Failed {
            return Err(Ignored::NotApplicable("operator_retry"));
        }
        if let Some(given_up) = self
            .saga
            .compensations
            .iter_mut()
            .find(|c| c.done_at.is_none())
        {
            given_up.issued_at = None;
        }
        self.saga.state = SagaState::Compensating;
        self.settle();
        Ok(())
    }

    /// The order reached an end (rejected or cancelled): undoing it is done.
    fn order_ended(&mut self) {
        self.completed(Step::RejectOrder);
        self.completed(Step::CancelOrder);
    }

    /// Switches to compensating with `plan`, in the order given.
    fn compensate(&mut self, why: &str, plan: &[Step]) {
        self.saga.state = SagaState::Compensating;
        self.saga.compensating_because = Some(why.to_owned());
        self.plan(plan);
    }

    /// Adds undo steps not planned yet, then issues the next one. They undo something
    /// that happened after the steps already planned, so they go before every step not
    /// issued yet (reverse order of the steps done).
    fn plan(&mut self, steps: &[Step]) {
        if self.saga.state != SagaState::Failed {
            self.saga.state = SagaState::Compensating;
        }
        let mut at = self
            .saga
            .compensations
            .iter()
            .position(|c| c.issued_at.is_none())
            .unwrap_or(self.saga.compensations.len());
        for step in steps {
            if !self.saga.compensations.iter().any(|c| c.step == *step) {
                let undo = Compensation {
                    step: *step,
                    issued_at: None,
                    done_at: None,
                };
                self.saga.compensations.insert(at, undo);
                at += 1;
            }
        }
        self.settle();
    }

    /// Marks `step` done if planned (an event can finish a step before it is issued).
    fn completed(&mut self, step: Step) {
        let at = self.at;
        if let Some(c) = self
            .saga
            .compensations
            .iter_mut()
            .find(|c| c.step == step && c.done_at.is_none())
        {
            c.done_at = Some(at);
        }
        self.settle();
    }

    /// Issues the first undone compensation unless one is out; ends the saga when
    /// nothing is left to undo and no payment is still out.
    fn settle(&mut self) {
        if self.saga.state != SagaState::Compensating {
            return;
        }
        let Some(next) = self
            .saga
            .compensations
            .iter()
            .position(|c| c.done_at.is_none())
        else {
            if self.saga.payment != PaymentState::Requested || self.saga.payment_deadline.is_none()
            {
                self.saga.state = SagaState::Compensated;
            }
            return;
        };
        if self.saga.compensations[next].issued_at.is_some() {
            return;
        }
        self.saga.compensations[next].issued_at = Some(self.at);
        let step = self.saga.compensations[next].step;
        let action = self.undo(step);
        self.issue(step, action);
    }

    fn undo(&self, step: Step) -> Action {
        let why = self
            .saga
            .compensating_because
            .clone()
            .unwrap_or_else(|| "saga compensation".into());
        let user_id = self.saga.user_id;
        match step {
            Step::RejectOrder => Action::RejectOrder { reason: why },
            Step::CancelOrder => Action::CancelOrder { reason: why },
            Step::RefundPayment => Action::RefundPayment {
                payment_id: self.saga.payment_id,
                amount: self.saga.amount,
                reason: why,
            },
            Step::NotifyPaymentDeclined => Action::Notify {
                user_id,
                kind: NotificationKind::PaymentDeclined,
            },
            Step::NotifyOrderCancelled => Action::Notify {
                user_id,
                kind: NotificationKind::OrderCancelled,
            },
            Step::AuthorizePayment | Step::ConfirmOrder | Step::NotifyOrderConfirmed => {
                unreachable!("forward steps are never planned as compensations")
            }
        }
    }
}
