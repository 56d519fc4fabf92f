//! The notifications service: messages to customers about their orders.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{NotificationId, OrderId, UserId};

/// What a notification tells the customer. At most one notification per (order, kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    OrderConfirmed,
    PaymentDeclined,
    OrderCancelled,
}

impl NotificationKind {
    /// The wire name (`order_confirmed`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::OrderConfirmed => "order_confirmed",
            Self::PaymentDeclined => "payment_declined",
            Self::OrderCancelled => "order_cancelled",
        }
    }
}

/// How delivering a notification went, after its retries. Delivery happens before the
/// command is sent (by the saga's channel adapter), so that deciding stays free of I/O.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(tag = "delivery", rename_all = "snake_case")]
pub enum DeliveryReport {
    Delivered { attempts: u32 },
    Failed { attempts: u32, error: String },
}

/// Record a notification's delivery (sent by the saga). At most one per (order, kind): the
/// notification id follows from them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SendNotification {
    pub notification_id: NotificationId,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub kind: NotificationKind,
    pub report: DeliveryReport,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct NotificationSent {
    pub notification_id: NotificationId,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub kind: NotificationKind,
    /// Delivery attempts it took, counting the successful one.
    pub attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct NotificationFailed {
    pub notification_id: NotificationId,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub kind: NotificationKind,
    pub attempts: u32,
    /// The last delivery error.
    pub error: String,
}

crate::message_family!(
    /// Commands handled by the notification aggregate (sent by the saga).
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    NotificationCommand, Command, "notification", "notifications", notification_id,
    [SendNotification = 1]
);

crate::message_family!(
    /// Events of the notification aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    NotificationEvent, Event, "notification", "notifications", notification_id,
    [NotificationSent = 1, NotificationFailed = 1]
);
