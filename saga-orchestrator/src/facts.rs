//! What an event from the log means to the orchestrator: an input of one order's saga, a
//! change of what it knows about a user, or nothing.

use schemas::notifications::NotificationEvent;
use schemas::orders::OrderEvent;
use schemas::payments::PaymentEvent;
use schemas::users::UserEvent;
use schemas::{CorrelationId, EventDocument, Money, OrderId, UserId};

use crate::saga::Input;

/// An event as the orchestrator reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fact {
    /// An input of the saga of `order_id`. `PaymentAuthorized` comes with
    /// `user_active: true`; the runner corrects it from what it knows of the user.
    Saga {
        order_id: OrderId,
        input: Input,
    },
    UserDeactivated {
        user_id: UserId,
    },
    /// An event the saga does not react to (a registration, an email change, ...).
    Irrelevant,
}

/// The fact an event stands for; an error when it cannot be decoded.
pub fn fact_of(document: &EventDocument) -> Result<Fact, String> {
    let document = document.clone();
    let decoded = match document.aggregatetype.as_str() {
        "order" => document
            .decode::<OrderEvent>()
            .map(|e| of_order(e.payload, e.meta.correlation_id)),
        "payment" => document
            .decode::<PaymentEvent>()
            .map(|e| of_payment(e.payload)),
        "notification" => document
            .decode::<NotificationEvent>()
            .map(|e| of_notification(e.payload)),
        "user" => document.decode::<UserEvent>().map(|e| match e.payload {
            UserEvent::UserDeactivated(d) => Fact::UserDeactivated { user_id: d.user_id },
            // Forgetting an active user deactivates them too.
            UserEvent::UserForgotten(f) => Fact::UserDeactivated { user_id: f.user_id },
            _ => Fact::Irrelevant,
        }),
        _ => return Ok(Fact::Irrelevant),
    };
    decoded.map_err(|e| e.to_string())
}

fn saga(order_id: OrderId, input: Input) -> Fact {
    Fact::Saga { order_id, input }
}

fn of_order(event: OrderEvent, correlation_id: CorrelationId) -> Fact {
    match event {
        OrderEvent::OrderPlaced(e) => saga(
            e.order_id,
            Input::OrderPlaced {
                order_id: e.order_id,
                user_id: e.user_id,
                amount: Money {
                    amount_cents: e.total_cents,
                    currency: e.currency,
                },
                correlation_id,
            },
        ),
        OrderEvent::OrderConfirmed(e) => saga(e.order_id, Input::OrderConfirmed),
        OrderEvent::OrderRejected(e) => saga(e.order_id, Input::OrderRejected),
        OrderEvent::OrderCancelled(e) => saga(
            e.order_id,
            Input::OrderCancelled {
                by: e.cancelled_by,
                reason: e.reason,
            },
        ),
    }
}

fn of_payment(event: PaymentEvent) -> Fact {
    match event {
        PaymentEvent::PaymentAuthorized(e) => {
            saga(e.order_id, Input::PaymentAuthorized { user_active: true })
        }
        PaymentEvent::PaymentDeclined(e) => {
            saga(e.order_id, Input::PaymentDeclined { reason: e.reason })
        }
        PaymentEvent::PaymentRefunded(e) => saga(e.order_id, Input::PaymentRefunded),
    }
}

fn of_notification(event: NotificationEvent) -> Fact {
    match event {
        NotificationEvent::NotificationSent(e) => {
            saga(e.order_id, Input::NotificationSent { kind: e.kind })
        }
        NotificationEvent::NotificationFailed(e) => saga(
            e.order_id,
            Input::NotificationFailed {
                kind: e.kind,
                error: e.error,
            },
        ),
    }
}
