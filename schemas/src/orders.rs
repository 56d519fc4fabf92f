//! The orders service: placing, confirming, rejecting and cancelling orders.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{OrderId, PaymentId, UserId};
use crate::money::Currency;

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OrderLine {
    pub sku: String,
    #[schemars(range(min = 1, max = 1000))]
    #[cfg_attr(test, proptest(strategy = "1u32..=1000"))]
    pub quantity: u32,
    /// Minor units of the order's currency; 0 or more.
    pub unit_price_cents: u64,
}

/// Who ended an order by cancelling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Customer,
    /// The saga, compensating a confirmation that could not stand.
    Saga,
}

/// Place an order for an existing, active user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub currency: Currency,
    pub lines: Vec<OrderLine>,
}

/// Cancel an order; allowed while it is pending or confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CancelOrder {
    pub order_id: OrderId,
    pub reason: String,
    pub cancelled_by: CancelledBy,
}

/// Confirm a pending order whose payment was authorized (sent by the saga).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ConfirmOrder {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
}

/// Reject a pending order, for example because its payment was declined (sent by the saga).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RejectOrder {
    pub order_id: OrderId,
    pub reason: String,
}

/// An order was placed. Version 2: multi-currency, with the total computed at placement
/// (version 1, euro-only, is upcast on read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub currency: Currency,
    pub lines: Vec<OrderLine>,
    /// Sum of quantity times unit price over all lines, in minor units.
    pub total_cents: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OrderConfirmed {
    pub order_id: OrderId,
    pub payment_id: PaymentId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OrderRejected {
    pub order_id: OrderId,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct OrderCancelled {
    pub order_id: OrderId,
    pub reason: String,
    pub cancelled_by: CancelledBy,
}

crate::message_family!(
    /// Commands handled by the order aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    OrderCommand, Command, "order", "orders", order_id,
    [PlaceOrder = 1, CancelOrder = 1, ConfirmOrder = 1, RejectOrder = 1]
);

crate::message_family!(
    /// Events of the order aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    OrderEvent, Event, "order", "orders", order_id,
    [OrderPlaced = 2, OrderConfirmed = 1, OrderRejected = 1, OrderCancelled = 1]
);

/// Superseded versions, kept so that the log written by older releases stays readable.
pub mod legacy {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use super::{OrderLine, OrderPlaced};
    use crate::ids::{OrderId, UserId};
    use crate::money::Currency;

    /// `OrderPlaced` version 1, from when the shop sold in euros only: no currency, no
    /// total, and lines spelled `qty` / `price_cents`.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct OrderPlacedV1 {
        pub order_id: OrderId,
        pub user_id: UserId,
        pub lines: Vec<OrderLineV1>,
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
    pub struct OrderLineV1 {
        pub sku: String,
        pub qty: u32,
        pub price_cents: u64,
    }

    /// The one currency of version 1.
    const V1_CURRENCY: &str = "EUR";

    impl OrderPlacedV1 {
        /// Version 1 to 2: currency EUR, fields renamed, total summed. `None` when the
        /// total does not fit in `u64`, which no accepted order could have produced.
        pub fn upcast(self) -> Option<OrderPlaced> {
            let lines: Vec<OrderLine> = self
                .lines
                .into_iter()
                .map(|l| OrderLine {
                    sku: l.sku,
                    quantity: l.qty,
                    unit_price_cents: l.price_cents,
                })
                .collect();
            let total_cents = lines.iter().try_fold(0u64, |sum, l| {
                l.unit_price_cents
                    .checked_mul(u64::from(l.quantity))
                    .and_then(|line| sum.checked_add(line))
            })?;
            Some(OrderPlaced {
                order_id: self.order_id,
                user_id: self.user_id,
                currency: V1_CURRENCY.parse::<Currency>().expect("EUR is ISO 4217"),
                lines,
                total_cents,
            })
        }
    }
}
