//! Message families: all events of one aggregate type form one enum, and so do all its
//! commands. A family knows each member's type name and current schema version, how to
//! turn a member into the envelope's `data` and back, and which aggregate it belongs to.

use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

use crate::DecodeError;

/// Whether a message is a command (a request that may be rejected) or an event (a fact).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Command,
    Event,
}

impl MessageKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Event => "event",
        }
    }
}

/// One row of the type catalog: a message type at one schema version.
#[derive(Clone, Copy, Debug)]
pub struct MessageType {
    pub name: &'static str,
    pub version: u32,
    pub kind: MessageKind,
    /// The owning service (`users`, `orders`, ...), which names its topics.
    pub service: &'static str,
    pub aggregate_type: &'static str,
    pub schema: fn(&mut SchemaGenerator) -> Schema,
}

/// The members of one family, as an enum over their payload structs.
pub trait MessageFamily: Sized + Clone + std::fmt::Debug + PartialEq {
    /// `user`, `order`, `payment` or `notification`.
    const AGGREGATE_TYPE: &'static str;
    /// The service owning the aggregate: `users`, `orders`, `payments` or `notifications`.
    const SERVICE: &'static str;
    const KIND: MessageKind;
    /// Every member at its current version.
    const TYPES: &'static [MessageType];

    fn type_name(&self) -> &'static str;
    fn schema_version(&self) -> u32;
    fn aggregate_id(&self) -> String;
    fn to_data(&self) -> Value;
    /// Decodes `data` that is already at the current version of `type_name`.
    fn from_data(type_name: &str, data: Value) -> Result<Self, DecodeError>;
}

/// Declares a family enum over payload structs, all of which carry the aggregate id in the
/// same field: `message_family!(UserEvent, Event, "user", "users", user_id, [UserRegistered = 1, ...])`.
/// Attributes before the name (docs, derives) are put on the enum. The calling crate needs
/// `serde_json` and `schemars` as dependencies.
#[macro_export]
macro_rules! message_family {
    (
        $(#[$doc:meta])*
        $family:ident, $kind:ident, $aggregate:literal, $service:literal, $id:ident,
        [$($member:ident = $version:literal),+ $(,)?]
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $family {
            $($member($member),)+
        }

        $(
            impl From<$member> for $family {
                fn from(m: $member) -> Self {
                    Self::$member(m)
                }
            }
        )+

        impl $crate::message::MessageFamily for $family {
            const AGGREGATE_TYPE: &'static str = $aggregate;
            const SERVICE: &'static str = $service;
            const KIND: $crate::message::MessageKind = $crate::message::MessageKind::$kind;
            const TYPES: &'static [$crate::message::MessageType] = &[$(
                $crate::message::MessageType {
                    name: stringify!($member),
                    version: $version,
                    kind: $crate::message::MessageKind::$kind,
                    service: $service,
                    aggregate_type: $aggregate,
                    schema: <$member as schemars::JsonSchema>::json_schema,
                },
            )+];

            fn type_name(&self) -> &'static str {
                match self {
                    $(Self::$member(_) => stringify!($member),)+
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    $(Self::$member(_) => $version,)+
                }
            }

            fn aggregate_id(&self) -> String {
                match self {
                    $(Self::$member(m) => m.$id.to_string(),)+
                }
            }

            fn to_data(&self) -> serde_json::Value {
                let data = match self {
                    $(Self::$member(m) => serde_json::to_value(m),)+
                };
                data.expect("payload structs serialize to JSON infallibly")
            }

            fn from_data(
                type_name: &str,
                data: serde_json::Value,
            ) -> Result<Self, $crate::DecodeError> {
                let invalid = |e: serde_json::Error| $crate::DecodeError::InvalidData {
                    type_name: type_name.to_owned(),
                    reason: e.to_string(),
                };
                match type_name {
                    $(stringify!($member) => serde_json::from_value::<$member>(data)
                        .map(Self::$member)
                        .map_err(invalid),)+
                    other => Err($crate::DecodeError::UnknownType {
                        type_name: other.to_owned(),
                        aggregate_type: $aggregate,
                    }),
                }
            }
        }
    };
}
