//! The payment aggregate: one authorization per order, for exactly the order total;
//! refunds only of an authorized payment, once.

use event_store::aggregate::Aggregate;
use schemas::payments::{
    PaymentAuthorized, PaymentCommand, PaymentDeclined, PaymentEvent, PaymentRefunded,
    ProviderVerdict,
};
use schemas::{Money, PaymentId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PaymentState {
    #[default]
    New,
    Authorized {
        amount: Money,
    },
    Declined,
    Refunded {
        amount: Money,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum PaymentRejection {
    /// The order already has an authorization (or a decline).
    AlreadyDecided,
    AmountMismatch {
        amount: Money,
        order_total: Money,
    },
    /// The payment id is not the one of its order.
    WrongPayment,
    NotRefundable,
    AlreadyRefunded,
}

#[derive(Debug)]
pub struct Payment;

impl Aggregate for Payment {
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type State = PaymentState;
    type Rejection = PaymentRejection;

    fn decide(
        state: &PaymentState,
        command: &PaymentCommand,
    ) -> Result<Vec<PaymentEvent>, PaymentRejection> {
        let event: PaymentEvent = match (state, command) {
            (PaymentState::New, PaymentCommand::AuthorizePayment(c)) => {
                if c.payment_id != PaymentId::for_order(c.order_id) {
                    return Err(PaymentRejection::WrongPayment);
                }
                if c.amount != c.order_total {
                    return Err(PaymentRejection::AmountMismatch {
                        amount: c.amount,
                        order_total: c.order_total,
                    });
                }
                match &c.verdict {
                    ProviderVerdict::Approved { reference } => PaymentAuthorized {
                        payment_id: c.payment_id,
                        order_id: c.order_id,
                        amount: c.amount,
                        provider_reference: reference.clone(),
                    }
                    .into(),
                    ProviderVerdict::Declined { reason } => PaymentDeclined {
                        payment_id: c.payment_id,
                        order_id: c.order_id,
                        amount: c.amount,
                        reason: reason.clone(),
                    }
                    .into(),
                }
            }
            (_, PaymentCommand::AuthorizePayment(_)) => {
                return Err(PaymentRejection::AlreadyDecided);
            }
            (PaymentState::Authorized { amount }, PaymentCommand::RefundPayment(c)) => {
                PaymentRefunded {
                    payment_id: c.payment_id,
                    order_id: c.order_id,
                    amount: *amount,
                    reason: c.reason.clone(),
                    refund_reference: c.refund_reference.clone(),
                }
                .into()
            }
            (PaymentState::Refunded { .. }, PaymentCommand::RefundPayment(_)) => {
                return Err(PaymentRejection::AlreadyRefunded);
            }
            (_, PaymentCommand::RefundPayment(_)) => return Err(PaymentRejection::NotRefundable),
        };
        Ok(vec![event])
    }

    fn evolve(state: PaymentState, event: &PaymentEvent) -> PaymentState {
        match event {
            PaymentEvent::PaymentAuthorized(e) => PaymentState::Authorized { amount: e.amount },
            PaymentEvent::PaymentDeclined(_) => PaymentState::Declined,
            PaymentEvent::PaymentRefunded(e) => match state {
                PaymentState::Authorized { .. } => PaymentState::Refunded { amount: e.amount },
                other => other,
            },
        }
    }
}
