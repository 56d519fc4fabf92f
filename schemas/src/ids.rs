//! Identifiers. Every id is a UUID on the wire; each kind gets its own type so that an
//! order id can never be passed where a user id is expected.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        #[cfg(test)]
        impl proptest::arbitrary::Arbitrary for $name {
            type Parameters = ();
            type Strategy = proptest::strategy::Map<proptest::num::u128::Any, fn(u128) -> Self>;
            fn arbitrary_with(_: ()) -> Self::Strategy {
                use proptest::strategy::Strategy;
                proptest::num::u128::ANY.prop_map(|n| Self(Uuid::from_u128(n)))
            }
        }
    };
}

uuid_id!(
    /// A user (customer) of the shop.
    UserId
);
uuid_id!(
    /// An order placed by a user.
    OrderId
);
uuid_id!(
    /// The payment of one order.
    PaymentId
);
uuid_id!(
    /// One notification sent to a user.
    NotificationId
);
uuid_id!(
    /// One event in the log; unique across all topics.
    EventId
);
uuid_id!(
    /// One command. Taken from an `Idempotency-Key` (hashed into a UUID) or generated; a
    /// command id already in the log is answered with its original outcome.
    CommandId
);
uuid_id!(
    /// Ties together everything one request set in motion: the command, its events, the
    /// saga steps and the commands they emit.
    CorrelationId
);

/// Namespace for ids derived with UUIDv5, so that a derived id never collides with ids
/// of other systems that use v5 with the standard namespaces.
const SHOP_NAMESPACE: Uuid = Uuid::from_u128(0x6c1b_7f2e_4d0a_4c55_9a8e_2f3d_51b0_c0de);

impl CommandId {
    /// A command id derived from stable parts, for example `["saga", order_id, "authorize"]`
    /// or `["api-key", key_id, idempotency_key]`. The same parts always give the same id, so
    /// re-sending after a crash is recognised as a duplicate.
    pub fn derived(parts: &[&str]) -> Self {
        Self(Uuid::new_v5(
            &SHOP_NAMESPACE,
            parts.join("\u{1f}").as_bytes(),
        ))
    }
}

impl NotificationId {
    /// At most one notification per (order, kind): its id follows from them.
    pub fn for_order(order: OrderId, kind: crate::notifications::NotificationKind) -> Self {
        let name = format!("notification\u{1f}{order}\u{1f}{}", kind.as_str());
        Self(Uuid::new_v5(&SHOP_NAMESPACE, name.as_bytes()))
    }
}

impl UserId {
    /// A user id that follows from stable parts (an idempotency key), so a retried request
    /// registers the same user.
    pub fn derived(parts: &[&str]) -> Self {
        Self(CommandId::derived(parts).as_uuid())
    }
}

impl OrderId {
    /// An order id that follows from stable parts (an idempotency key).
    pub fn derived(parts: &[&str]) -> Self {
        Self(CommandId::derived(parts).as_uuid())
    }
}

impl PaymentId {
    /// One order has exactly one payment: its id follows from the order id.
    pub fn for_order(order: OrderId) -> Self {
        Self(Uuid::new_v5(
            &SHOP_NAMESPACE,
            format!("payment\u{1f}{order}").as_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_command_ids_are_stable_and_part_sensitive() {
        let a = CommandId::derived(&["saga", "o-1", "authorize"]);
        assert_eq!(a, CommandId::derived(&["saga", "o-1", "authorize"]));
        assert_ne!(a, CommandId::derived(&["saga", "o-1", "confirm"]));
        // The separator keeps ["ab", "c"] and ["a", "bc"] apart.
        assert_ne!(
            CommandId::derived(&["ab", "c"]),
            CommandId::derived(&["a", "bc"])
        );
    }

    #[test]
    fn payment_id_follows_from_the_order() {
        let order = OrderId::new();
        assert_eq!(PaymentId::for_order(order), PaymentId::for_order(order));
        assert_ne!(
            PaymentId::for_order(order),
            PaymentId::for_order(OrderId::new())
        );
    }

    #[test]
    fn ids_round_trip_through_text() {
        let id = UserId::new();
        assert_eq!(id.to_string().parse::<UserId>().unwrap(), id);
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }
}
