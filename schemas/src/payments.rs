//! The payments service: one authorization per order, declines and refunds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{OrderId, PaymentId, UserId};
use crate::money::Money;

/// What the payment provider answered. The provider is called before the command is
/// sent (by the saga, through its adapter), so that deciding stays free of I/O.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum ProviderVerdict {
    Approved {
        /// The provider's reference for the authorization.
        reference: String,
    },
    Declined {
        reason: String,
    },
}

/// Record the provider's answer to authorizing an order's payment. One authorization per
/// order, for exactly the order total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct AuthorizePayment {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub amount: Money,
    /// The order's total, which the amount must equal.
    pub order_total: Money,
    pub verdict: ProviderVerdict,
}

/// Record that an authorized payment was given back (a compensation step).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RefundPayment {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub reason: String,
    /// The provider's reference for the refund.
    pub refund_reference: String,
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
    pub refund_reference: String,
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
