//! The order aggregate: placement rules and the status machine
//! Pending -> Confirmed | Rejected | Cancelled (cancel also from Confirmed).

use event_store::aggregate::Aggregate;
use schemas::orders::{
    OrderCancelled, OrderCommand, OrderConfirmed, OrderEvent, OrderLine, OrderPlaced, OrderRejected,
};
use schemas::{Currency, UserId};
use serde::{Deserialize, Serialize};

/// Limits of an order.
pub const MAX_LINES: usize = 100;
pub const MAX_QUANTITY: u32 = 1000;
pub const MAX_TOTAL_CENTS: u64 = 10_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub placed: Option<PlacedOrder>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedOrder {
    pub user_id: UserId,
    pub currency: Currency,
    pub total_cents: u64,
    pub status: OrderStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum OrderRejection {
    AlreadyPlaced,
    UnknownOrder,
    NoLines,
    TooManyLines {
        max: usize,
    },
    InvalidQuantity {
        line: usize,
        max: u32,
    },
    TotalTooLarge {
        max_cents: u64,
    },
    /// The transition is not allowed from the order's current status.
    InvalidTransition {
        status: OrderStatus,
    },
}

/// The sum of a set of lines, in minor units; `None` past the order maximum.
pub fn total_of(lines: &[OrderLine]) -> Option<u64> {
    lines
        .iter()
        .try_fold(0u64, |sum, l| {
            l.unit_price_cents
                .checked_mul(u64::from(l.quantity))
                .and_then(|line| sum.checked_add(line))
        })
        .filter(|total| *total <= MAX_TOTAL_CENTS)
}

/// The placement rules, shared with the HTTP layer's field validation.
pub fn check_lines(lines: &[OrderLine]) -> Result<u64, OrderRejection> {
    if lines.is_empty() {
        return Err(OrderRejection::NoLines);
    }
    if lines.len() > MAX_LINES {
        return Err(OrderRejection::TooManyLines { max: MAX_LINES });
    }
    if let Some(line) = lines
        .iter()
        .position(|l| l.quantity == 0 || l.quantity > MAX_QUANTITY)
    {
        return Err(OrderRejection::InvalidQuantity {
            line,
            max: MAX_QUANTITY,
        });
    }
    total_of(lines).ok_or(OrderRejection::TotalTooLarge {
        max_cents: MAX_TOTAL_CENTS,
    })
}

#[derive(Debug)]
pub struct Order;

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    type State = OrderState;
    type Rejection = OrderRejection;

    fn decide(
        state: &OrderState,
        command: &OrderCommand,
    ) -> Result<Vec<OrderEvent>, OrderRejection> {
        let status = state.placed.as_ref().map(|p| p.status);
        let event: OrderEvent = match (status, command) {
            (None, OrderCommand::PlaceOrder(c)) => OrderPlaced {
                order_id: c.order_id,
                user_id: c.user_id,
                currency: c.currency,
                total_cents: check_lines(&c.lines)?,
                lines: c.lines.clone(),
            }
            .into(),
            (Some(_), OrderCommand::PlaceOrder(_)) => return Err(OrderRejection::AlreadyPlaced),
            (None, _) => return Err(OrderRejection::UnknownOrder),
            (Some(OrderStatus::Pending | OrderStatus::Confirmed), OrderCommand::CancelOrder(c)) => {
                OrderCancelled {
                    order_id: c.order_id,
                    reason: c.reason.clone(),
                    cancelled_by: c.cancelled_by,
                }
                .into()
            }
            (Some(OrderStatus::Pending), OrderCommand::ConfirmOrder(c)) => OrderConfirmed {
                order_id: c.order_id,
                payment_id: c.payment_id,
            }
            .into(),
            (Some(OrderStatus::Pending), OrderCommand::RejectOrder(c)) => OrderRejected {
                order_id: c.order_id,
                reason: c.reason.clone(),
            }
            .into(),
            (Some(status), _) => return Err(OrderRejection::InvalidTransition { status }),
        };
        Ok(vec![event])
    }

    fn evolve(mut state: OrderState, event: &OrderEvent) -> OrderState {
        let status = match event {
            OrderEvent::OrderPlaced(e) => {
                state.placed = Some(PlacedOrder {
                    user_id: e.user_id,
                    currency: e.currency,
                    total_cents: e.total_cents,
                    status: OrderStatus::Pending,
                });
                return state;
            }
            OrderEvent::OrderConfirmed(_) => OrderStatus::Confirmed,
            OrderEvent::OrderRejected(_) => OrderStatus::Rejected,
            OrderEvent::OrderCancelled(_) => OrderStatus::Cancelled,
        };
        if let Some(placed) = state.placed.as_mut() {
            placed.status = status;
        }
        state
    }
}
