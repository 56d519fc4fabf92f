//! Wire contracts of the shop: every command and event, the CloudEvents envelope they
//! travel in, their schema versions, and the upcasters that read old versions.
//!
//! Layout:
//! - [`ids`], [`money`], [`trace`]: value types shared by all messages;
//! - [`users`] (with [`emails`], its uniqueness log), [`orders`], [`payments`],
//!   [`notifications`]: one module per service, each
//!   declaring its command and event payloads and grouping them into families
//!   ([`message::MessageFamily`]);
//! - [`personal`]: how a field sealed for its user looks;
//! - [`envelope`]: the JSON document written to Kafka and its typed form;
//! - [`upcast`]: old versions to new, applied on read before decoding;
//! - [`catalog`] and [`json_schema`]: the list of every type and version, and the JSON Schema
//!   files generated from it into `schemas/json/` (checked in; a test fails when stale).
//!
//! This crate does no I/O: it is the vocabulary the other crates and outside tools share.

pub mod catalog;
pub mod emails;
pub mod envelope;
pub mod ids;
pub mod json_schema;
pub mod message;
pub mod money;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod personal;
pub mod trace;
pub mod upcast;
pub mod users;

pub use envelope::{
    Command, CommandDocument, CommandMeta, Event, EventDocument, EventMeta, OutcomeDocument,
};
pub use ids::{CommandId, CorrelationId, EventId, NotificationId, OrderId, PaymentId, UserId};
pub use message::{MessageFamily, MessageKind, MessageType};
pub use money::{Currency, Money};
pub use trace::TraceParent;

/// Why a record could not be turned into a typed message. Each variant is a reason to
/// dead-letter the record, never to guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a CloudEvents JSON document of ours: {0}")]
    Malformed(String),
    #[error("unknown type {type_name:?} for aggregate {aggregate_type}")]
    UnknownType {
        type_name: String,
        aggregate_type: &'static str,
    },
    #[error("aggregate type {found:?} where {expected:?} was expected")]
    WrongAggregate {
        expected: &'static str,
        found: String,
    },
    #[error("{type_name} v{version} is newer than this build knows (v{current})")]
    NewerVersion {
        type_name: String,
        version: u32,
        current: u32,
    },
    #[error("no upcaster for {type_name} from v{from_version}")]
    NoUpcaster {
        type_name: String,
        from_version: u32,
    },
    #[error("upcasting {type_name} from v{from_version} failed: {reason}")]
    UpcastFailed {
        type_name: String,
        from_version: u32,
        reason: String,
    },
    #[error("invalid {type_name} data: {reason}")]
    InvalidData { type_name: String, reason: String },
    #[error("subject {subject:?} differs from the payload's aggregate id {payload_id:?}")]
    SubjectMismatch { subject: String, payload_id: String },
}

#[cfg(test)]
mod tests;
