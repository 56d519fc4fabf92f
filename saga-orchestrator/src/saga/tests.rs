//! Every path of the saga, given / when / then, without I/O: given the inputs so far,
//! when this one arrives, then these steps are issued and the saga is in this state.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use schemas::notifications::NotificationKind;
use schemas::orders::CancelledBy;
use schemas::{CorrelationId, Money, OrderId, UserId};

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
}

fn placed() -> Input {
    Input::OrderPlaced {
        order_id: OrderId::new(),
        user_id: UserId::new(),
        amount: Money {
            amount_cents: 2500,
            currency: "EUR".parse().unwrap(),
        },
        correlation_id: CorrelationId::new(),
    }
}

const AUTHORIZED: Input = Input::PaymentAuthorized { user_active: true };

fn declined() -> Input {
    Input::PaymentDeclined {
        reason: "insufficient funds".into(),
    }
}

fn cancelled_by_customer() -> Input {
    Input::OrderCancelled {
        by: CancelledBy::Customer,
        reason: "changed my mind".into(),
    }
}

fn cancelled_by_saga() -> Input {
    Input::OrderCancelled {
        by: CancelledBy::Saga,
        reason: "compensation".into(),
    }
}

fn sent(kind: NotificationKind) -> Input {
    Input::NotificationSent { kind }
}

/// The saga after `inputs`, each one second after the previous (all must apply).
fn given(inputs: &[Input]) -> Saga {
    let mut saga = None;
    for (i, input) in inputs.iter().enumerate() {
        let at = t0() + Duration::seconds(i as i64);
        let reaction = react(saga.as_ref(), input, at, &Policy::default())
            .unwrap_or_else(|e| panic!("input {i} ({input:?}) applies: {e}"));
        saga = Some(reaction.saga);
    }
    saga.expect("at least one input")
}

/// When `input` arrives at `at` after `inputs`: the reaction.
fn when_at(inputs: &[Input], input: Input, at: DateTime<Utc>) -> Result<Reaction, Ignored> {
    let saga = given(inputs);
    react(Some(&saga), &input, at, &Policy::default())
}

fn when(inputs: &[Input], input: Input) -> Reaction {
    when_at(inputs, input, t0() + Duration::seconds(inputs.len() as i64))
        .expect("the input applies")
}

fn steps(reaction: &Reaction) -> Vec<Step> {
    reaction.instructions.iter().map(|i| i.step).collect()
}

#[test]
fn an_order_placed_starts_a_saga_that_asks_for_the_payment_with_a_deadline() {
    let reaction = react(None, &placed(), t0(), &Policy::default()).unwrap();
    assert_eq!(steps(&reaction), [Step::AuthorizePayment]);
    let saga = &reaction.saga;
    assert_eq!(
        (saga.state, saga.stage),
        (SagaState::Running, Stage::AuthorizingPayment)
    );
    assert_eq!(saga.payment_deadline, Some(t0() + Duration::seconds(30)));
    let Action::AuthorizePayment {
        payment_id, amount, ..
    } = &reaction.instructions[0].action
    else {
        panic!("an authorization");
    };
    assert_eq!(*payment_id, PaymentId::for_order(saga.order_id));
    assert_eq!(amount.amount_cents, 2500);
}

#[test]
fn happy_path_authorize_confirm_notify_complete() {
    let then = when(&[placed()], AUTHORIZED);
    assert_eq!(steps(&then), [Step::ConfirmOrder]);
    assert_eq!(then.saga.payment_deadline, None, "the payment answered");

    let then = when(&[placed(), AUTHORIZED], Input::OrderConfirmed);
    assert_eq!(steps(&then), [Step::NotifyOrderConfirmed]);

    let then = when(
        &[placed(), AUTHORIZED, Input::OrderConfirmed],
        sent(NotificationKind::OrderConfirmed),
    );
    assert!(steps(&then).is_empty());
    assert_eq!(
        (then.saga.state, then.saga.stage),
        (SagaState::Completed, Stage::Done)
    );
    assert!(then.saga.compensations.is_empty() && then.saga.failures.is_empty());
}

#[test]
fn a_declined_payment_rejects_the_order_then_tells_the_customer() {
    let then = when(&[placed()], declined());
    assert_eq!(
        steps(&then),
        [Step::RejectOrder],
        "one compensation at a time"
    );
    assert_eq!(then.saga.state, SagaState::Compensating);

    let then = when(&[placed(), declined()], Input::OrderRejected);
    assert_eq!(steps(&then), [Step::NotifyPaymentDeclined]);

    let then = when(
        &[placed(), declined(), Input::OrderRejected],
        sent(NotificationKind::PaymentDeclined),
    );
    assert!(steps(&then).is_empty());
    assert_eq!(then.saga.state, SagaState::Compensated);
}

#[test]
fn a_deactivated_user_gets_the_payment_refunded_then_the_order_cancelled() {
    let deactivated = Input::PaymentAuthorized { user_active: false };
    let then = when(&[placed()], deactivated.clone());
    assert_eq!(
        steps(&then),
        [Step::RefundPayment],
        "reverse order: payment first"
    );
    assert!(
        then.saga
            .compensating_because
            .as_deref()
            .unwrap()
            .contains("deactivated")
    );

    let then = when(&[placed(), deactivated.clone()], Input::PaymentRefunded);
    assert_eq!(steps(&then), [Step::CancelOrder]);

    let then = when(
        &[placed(), deactivated, Input::PaymentRefunded],
        cancelled_by_saga(),
    );
    assert!(steps(&then).is_empty());
    assert_eq!(then.saga.state, SagaState::Compensated);
}

#[test]
fn an_order_cancelled_before_its_confirmation_gets_its_payment_refunded() {
    // The order was cancelled while the saga's ConfirmOrder was on its way: the writer
    // refuses the confirmation, and the saga sees the cancellation.
    let then = when(&[placed(), AUTHORIZED], cancelled_by_customer());
    assert_eq!(steps(&then), [Step::RefundPayment]);
    let then = when(
        &[placed(), AUTHORIZED, cancelled_by_customer()],
        Input::PaymentRefunded,
    );
    assert_eq!(then.saga.state, SagaState::Compensated);
    assert!(steps(&then).is_empty(), "the order is already cancelled");
}

#[test]
fn the_customer_cancelling_a_confirmed_order_refunds_then_notifies() {
    for before in [
        vec![placed(), AUTHORIZED, Input::OrderConfirmed],
        vec![
            placed(),
            AUTHORIZED,
            Input::OrderConfirmed,
            sent(NotificationKind::OrderConfirmed),
        ],
    ] {
        let then = when(&before, cancelled_by_customer());
        assert_eq!(steps(&then), [Step::RefundPayment]);
        assert_eq!(then.saga.state, SagaState::Compensating);

        let mut so_far = before.clone();
        so_far.extend([cancelled_by_customer()]);
        let then = when(&so_far, Input::PaymentRefunded);
        assert_eq!(steps(&then), [Step::NotifyOrderCancelled]);

        so_far.push(Input::PaymentRefunded);
        let then = when(&so_far, sent(NotificationKind::OrderCancelled));
        assert_eq!(then.saga.state, SagaState::Compensated);
    }
}

#[test]
fn a_failed_notification_completes_the_saga_with_the_failure_on_record() {
    let then = when(
        &[placed(), AUTHORIZED, Input::OrderConfirmed],
        Input::NotificationFailed {
            kind: NotificationKind::OrderConfirmed,
            error: "webhook answered 500 five times".into(),
        },
    );
    assert!(steps(&then).is_empty(), "no business rollback");
    assert_eq!(then.saga.state, SagaState::Completed);
    assert_eq!(then.saga.failures.len(), 1);
    assert_eq!(then.saga.failures[0].step, "notify_order_confirmed");
}

#[test]
fn the_payment_deadline_rejects_the_order_and_a_late_authorization_is_refunded() {
    let early = when_at(
        &[placed()],
        Input::PaymentDeadlinePassed,
        t0() + Duration::seconds(29),
    );
    assert!(
        matches!(early, Err(Ignored::NotApplicable(_))),
        "not due yet"
    );

    let due = t0() + Duration::seconds(30);
    let then = when_at(&[placed()], Input::PaymentDeadlinePassed, due).unwrap();
    assert_eq!(steps(&then), [Step::RejectOrder]);
    assert_eq!(then.saga.failures[0].step, "authorize_payment");
    assert_eq!(then.saga.payment_deadline, None);

    let settled = [
        placed(),
        Input::PaymentDeadlinePassed,
        Input::OrderRejected,
        sent(NotificationKind::PaymentDeclined),
    ];
    let saga = given_with_deadline(&settled);
    assert_eq!(saga.state, SagaState::Compensated);

    let late = react(
        Some(&saga),
        &AUTHORIZED,
        due + Duration::seconds(10),
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(
        steps(&late),
        [Step::RefundPayment],
        "no payment kept for a rejected order"
    );
    assert_eq!(late.saga.state, SagaState::Compensating);
    let done = react(
        Some(&late.saga),
        &Input::PaymentRefunded,
        due + Duration::seconds(11),
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(done.saga.state, SagaState::Compensated);
}

/// Like [`given`], but the deadline input arrives when it is due.
fn given_with_deadline(inputs: &[Input]) -> Saga {
    let mut saga: Option<Saga> = None;
    let mut at = t0();
    for input in inputs {
        if let (Input::PaymentDeadlinePassed, Some(s)) = (input, &saga) {
            at = s.payment_deadline.expect("a deadline");
        }
        saga = Some(
            react(saga.as_ref(), input, at, &Policy::default())
                .unwrap()
                .saga,
        );
        at += Duration::seconds(1);
    }
    saga.unwrap()
}

#[test]
fn a_customer_cancelling_while_the_payment_is_out_waits_for_its_answer() {
    let then = when(&[placed()], cancelled_by_customer());
    assert!(steps(&then).is_empty());
    assert_eq!(
        then.saga.state,
        SagaState::Compensating,
        "the payment may still land"
    );

    let then = when(&[placed(), cancelled_by_customer()], AUTHORIZED);
    assert_eq!(steps(&then), [Step::RefundPayment]);

    let then = when(&[placed(), cancelled_by_customer()], declined());
    assert!(steps(&then).is_empty());
    assert_eq!(then.saga.state, SagaState::Compensated, "nothing was taken");
}

#[test]
fn a_payment_never_asked_for_lets_a_cancelled_saga_end_without_waiting_for_the_deadline() {
    assert!(
        when_at(&[placed()], Input::PaymentNotAsked, t0()).is_err(),
        "a running saga needs its payment"
    );
    let then = when(&[placed(), cancelled_by_customer()], Input::PaymentNotAsked);
    assert_eq!(then.saga.state, SagaState::Compensated);
    assert_eq!(then.saga.payment_deadline, None);
    assert!(
        steps(&then).is_empty(),
        "nothing was taken, nothing to refund"
    );
}

#[test]
fn a_customer_cancelling_after_a_decline_finishes_the_rejection() {
    let then = when(&[placed(), declined()], cancelled_by_customer());
    assert_eq!(
        steps(&then),
        [Step::NotifyPaymentDeclined],
        "the order ended: reject_order is done without being needed"
    );
}

#[test]
fn a_refund_given_up_for_good_fails_the_saga_for_an_operator() {
    let then = when(
        &[placed(), AUTHORIZED, cancelled_by_customer()],
        Input::StepAbandoned {
            step: Step::RefundPayment,
            error: "provider refuses the refund".into(),
        },
    );
    assert_eq!(then.saga.state, SagaState::Failed);
    assert!(steps(&then).is_empty());
}

/// A completed order cancelled by its customer, whose refund the provider refused for good.
fn refund_refused_after_completion() -> Vec<Input> {
    vec![
        placed(),
        AUTHORIZED,
        Input::OrderConfirmed,
        sent(NotificationKind::OrderConfirmed),
        cancelled_by_customer(),
        Input::StepAbandoned {
            step: Step::RefundPayment,
            error: "provider refuses the refund".into(),
        },
    ]
}

#[test]
fn an_operator_retry_issues_the_refund_given_up_on_again_and_the_saga_compensates() {
    let failed = refund_refused_after_completion();
    assert_eq!(given(&failed).state, SagaState::Failed);

    let then = when(&failed, Input::OperatorRetry);
    assert_eq!(steps(&then), [Step::RefundPayment]);
    assert_eq!(then.saga.state, SagaState::Compensating);
    let kinds: Vec<(&str, &str)> = then.saga.history[then.saga.history.len() - 2..]
        .iter()
        .map(|h| (h.kind.as_str(), h.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("operator", "operator_retry"),
            ("command", "refund_payment")
        ]
    );
    assert_eq!(then.saga.failures.len(), 1, "the refusal stays on record");

    let retried = [failed.clone(), vec![Input::OperatorRetry]].concat();
    let then = when(&retried, Input::PaymentRefunded);
    assert_eq!(steps(&then), [Step::NotifyOrderCancelled]);

    let refunded = [retried, vec![Input::PaymentRefunded]].concat();
    let then = when(&refunded, sent(NotificationKind::OrderCancelled));
    assert_eq!(
        (then.saga.state, then.saga.payment),
        (SagaState::Compensated, PaymentState::Refunded)
    );
}

#[test]
fn a_retry_refused_again_fails_the_saga_again() {
    let retried = [
        refund_refused_after_completion(),
        vec![Input::OperatorRetry],
    ]
    .concat();
    let then = when(
        &retried,
        Input::StepAbandoned {
            step: Step::RefundPayment,
            error: "still refused".into(),
        },
    );
    assert_eq!(then.saga.state, SagaState::Failed);
    assert!(steps(&then).is_empty());
    assert_eq!(then.saga.failures.len(), 2);
}

#[test]
fn a_retry_after_the_refund_landed_anyway_goes_on_with_the_rest_of_the_plan() {
    let landed = [
        refund_refused_after_completion(),
        vec![Input::PaymentRefunded],
    ]
    .concat();
    assert_eq!(
        given(&landed).state,
        SagaState::Failed,
        "waits for an operator"
    );
    let then = when(&landed, Input::OperatorRetry);
    assert_eq!(steps(&then), [Step::NotifyOrderCancelled]);
}

#[test]
fn only_a_failed_saga_can_be_retried() {
    let not_applicable = Err(Ignored::NotApplicable("operator_retry"));
    let running = [placed(), AUTHORIZED];
    assert_eq!(
        when_at(&running, Input::OperatorRetry, t0()),
        not_applicable
    );
    let completed = [
        placed(),
        AUTHORIZED,
        Input::OrderConfirmed,
        sent(NotificationKind::OrderConfirmed),
    ];
    assert_eq!(
        when_at(&completed, Input::OperatorRetry, t0()),
        not_applicable
    );
    let retried = [
        refund_refused_after_completion(),
        vec![Input::OperatorRetry],
    ]
    .concat();
    assert_eq!(
        when_at(&retried, Input::OperatorRetry, t0()),
        not_applicable,
        "compensating again"
    );
}

#[test]
fn inputs_out_of_place_change_nothing() {
    assert_eq!(
        react(None, &AUTHORIZED, t0(), &Policy::default()),
        Err(Ignored::NoSaga)
    );
    assert_eq!(
        when_at(&[placed()], placed(), t0()),
        Err(Ignored::AlreadyStarted)
    );
    assert!(when_at(&[placed()], Input::OrderConfirmed, t0()).is_err());
    assert!(
        when_at(&[placed(), AUTHORIZED], AUTHORIZED, t0()).is_err(),
        "a duplicate"
    );
    assert!(when_at(&[placed(), declined()], AUTHORIZED, t0()).is_err());
}

#[test]
fn steps_and_states_round_trip_their_names() {
    for step in ALL_STEPS {
        assert_eq!(Step::parse(step.as_str()), Some(step));
    }
    for state in [
        "running",
        "compensating",
        "completed",
        "compensated",
        "failed",
    ] {
        assert_eq!(SagaState::parse(state).map(|s| s.as_str()), Some(state));
    }
    assert_eq!(SagaState::parse("done"), None);
}

/// Any input the log or the clock can produce.
fn any_input() -> impl Strategy<Value = Input> {
    let kind = prop_oneof![
        Just(NotificationKind::OrderConfirmed),
        Just(NotificationKind::PaymentDeclined),
        Just(NotificationKind::OrderCancelled),
    ];
    prop_oneof![
        any::<bool>().prop_map(|user_active| Input::PaymentAuthorized { user_active }),
        Just(declined()),
        Just(Input::PaymentRefunded),
        Just(Input::OrderConfirmed),
        Just(Input::OrderRejected),
        Just(cancelled_by_customer()),
        Just(cancelled_by_saga()),
        kind.clone()
            .prop_map(|kind| Input::NotificationSent { kind }),
        kind.prop_map(|kind| Input::NotificationFailed {
            kind,
            error: "down".into()
        }),
        Just(Input::PaymentDeadlinePassed),
        Just(Input::PaymentNotAsked),
    ]
}

/// What the world answers to everything the saga issued, until nothing is left: the
/// writers accept every command, the channel delivers, the clock passes the deadline.
fn answer_everything(mut saga: Saga, mut at: DateTime<Utc>, issued: &mut Vec<Step>) -> Saga {
    let policy = Policy::default();
    for _ in 0..20 {
        let next = saga
            .compensations
            .iter()
            .find(|c| c.issued_at.is_some() && c.done_at.is_none())
            .map(|c| match c.step {
                Step::RefundPayment => Input::PaymentRefunded,
                Step::RejectOrder => Input::OrderRejected,
                Step::CancelOrder => cancelled_by_saga(),
                Step::NotifyPaymentDeclined => sent(NotificationKind::PaymentDeclined),
                _ => sent(NotificationKind::OrderCancelled),
            })
            .or(match (saga.state, saga.stage, saga.payment_deadline) {
                (_, _, Some(due)) => {
                    at = at.max(due);
                    Some(Input::PaymentDeadlinePassed)
                }
                (SagaState::Running, Stage::ConfirmingOrder, _) => Some(Input::OrderConfirmed),
                (_, Stage::NotifyingCustomer, _) => Some(sent(NotificationKind::OrderConfirmed)),
                _ => None,
            });
        let Some(input) = next else { break };
        at += Duration::seconds(1);
        match react(Some(&saga), &input, at, &policy) {
            Ok(reaction) => {
                issued.extend(steps(&reaction));
                saga = reaction.saga;
            }
            Err(_) => break,
        }
    }
    saga
}

proptest! {
    /// Whatever arrives, in whatever order: no step is issued twice, and a saga that
    /// ended compensated never keeps an authorized payment.
    #[test]
    fn no_step_twice_and_no_payment_kept_by_a_compensated_saga(
        inputs in proptest::collection::vec(any_input(), 0..12),
    ) {
        let policy = Policy::default();
        let first = react(None, &placed(), t0(), &policy).unwrap();
        let mut issued: Vec<Step> = steps(&first);
        let mut saga = first.saga;
        for (i, input) in inputs.iter().enumerate() {
            let at = t0() + Duration::seconds(20 * (i as i64 + 1));
            if let Ok(reaction) = react(Some(&saga), input, at, &policy) {
                issued.extend(steps(&reaction));
                saga = reaction.saga;
            }
        }
        let end = answer_everything(saga, t0() + Duration::seconds(1000), &mut issued);
        let mut unique = issued.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), issued.len(), "issued twice: {:?}", issued);
        prop_assert!(end.state.is_final(), "the saga does not end: {:?}", end);
        if end.state == SagaState::Compensated {
            prop_assert!(end.payment != PaymentState::Authorized, "payment kept: {:?}", end);
        }
        if end.state == SagaState::Completed {
            prop_assert_eq!(end.payment, PaymentState::Authorized);
        }
    }
}
