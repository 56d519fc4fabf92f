//! The payments service: one authorization per order, declines and refunds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{OrderId, PaymentId, UserId};
use crate::money::Money;

/// Authorize the payment of an order, for exactly the order total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuthorizePayment {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub amount: Money,
}

/// Give back an authorized payment (a compensation step).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RefundPayment {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PaymentAuthorized {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub amount: Money,
    /// The provider's reference for the authorization.
    pub provider_reference: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PaymentDeclined {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub amount: Money,
    /// Why the provider declined, as it said it.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PaymentRefunded {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub amount: Money,
    pub reason: String,
}

crate::message_family!(
    /// Commands handled by the payment aggregate (sent by the saga).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    PaymentCommand, Command, "payment", "payments", payment_id,
    [AuthorizePayment = 1, RefundPayment = 1]
);

crate::message_family!(
    /// Events of the payment aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    PaymentEvent, Event, "payment", "payments", payment_id,
    [PaymentAuthorized = 1, PaymentDeclined = 1, PaymentRefunded = 1]
);
