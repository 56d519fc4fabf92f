//! The catalog of every message type and version, which drives JSON Schema generation
//! and lets tools list what the system speaks.

use crate::emails::{EmailCommand, EmailEvent};
use crate::message::{MessageFamily, MessageKind, MessageType};
use crate::notifications::{NotificationCommand, NotificationEvent};
use crate::orders::{OrderCommand, OrderEvent, legacy::OrderPlacedV1};
use crate::payments::{PaymentCommand, PaymentEvent};
use crate::users::{UserCommand, UserEvent};

/// Every command and event type at its current version.
pub fn current_types() -> Vec<MessageType> {
    [
        UserCommand::TYPES,
        UserEvent::TYPES,
        EmailCommand::TYPES,
        EmailEvent::TYPES,
        OrderCommand::TYPES,
        OrderEvent::TYPES,
        PaymentCommand::TYPES,
        PaymentEvent::TYPES,
        NotificationCommand::TYPES,
        NotificationEvent::TYPES,
    ]
    .concat()
}

/// Superseded versions that may still be found in the log.
pub fn legacy_types() -> Vec<MessageType> {
    vec![MessageType {
        name: "OrderPlaced",
        version: 1,
        kind: MessageKind::Event,
        service: "orders",
        aggregate_type: "order",
        schema: <OrderPlacedV1 as schemars::JsonSchema>::json_schema,
    }]
}

/// The current version of a type, if the type exists.
pub fn current_version(type_name: &str) -> Option<u32> {
    current_types()
        .into_iter()
        .find(|t| t.name == type_name)
        .map(|t| t.version)
}

/// The logs of the system, each owned by one aggregate type and naming its topics: the
/// four services', plus the users service's email claims.
pub const SERVICES: [&str; 5] = [
    "users",
    "user-emails",
    "orders",
    "payments",
    "notifications",
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn type_names_are_unique_and_every_service_has_commands_and_events() {
        let types = current_types();
        let names: HashSet<_> = types.iter().map(|t| t.name).collect();
        assert_eq!(names.len(), types.len());
        for service in SERVICES {
            for kind in [MessageKind::Command, MessageKind::Event] {
                assert!(types.iter().any(|t| t.service == service && t.kind == kind));
            }
        }
    }

    #[test]
    fn the_issue_list_of_types_is_covered() {
        let names: HashSet<_> = current_types().iter().map(|t| t.name).collect();
        for expected in [
            "RegisterUser",
            "ChangeUserEmail",
            "DeactivateUser",
            "UserRegistered",
            "UserEmailChanged",
            "UserDeactivated",
            "PlaceOrder",
            "CancelOrder",
            "ConfirmOrder",
            "RejectOrder",
            "OrderPlaced",
            "OrderCancelled",
            "OrderConfirmed",
            "OrderRejected",
            "AuthorizePayment",
            "PaymentAuthorized",
            "PaymentDeclined",
            "RefundPayment",
            "PaymentRefunded",
            "SendNotification",
            "NotificationSent",
            "NotificationFailed",
        ] {
            assert!(names.contains(expected), "{expected} missing");
        }
    }
}
