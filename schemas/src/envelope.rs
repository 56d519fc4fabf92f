//! The envelope: every record value on a topic is one CloudEvents 1.0 document in
//! structured JSON mode, readable in a console without our code.
//!
//! Two shapes share the CloudEvents core attributes: [`EventDocument`] (a fact in the log of
//! record, with its aggregate version and causing command) and [`CommandDocument`] (a request
//! routed to the single writer of its aggregate, with an optional expected version). The
//! typed forms [`Event`] and [`Command`] pair the metadata with a decoded payload; decoding
//! upcasts old schema versions first.
//!
//! Extension attribute names follow the CloudEvents rule (lower-case letters and digits only).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::DecodeError;
use crate::ids::{CommandId, CorrelationId, EventId};
use crate::message::MessageFamily;
use crate::trace::TraceParent;
use crate::upcast::upcast;

/// The CloudEvents version we write and accept.
pub const SPEC_VERSION: &str = "1.0";
/// `datacontenttype` of every document: `data` is JSON.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The Kafka `content-type` header of a structured-mode CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// The CloudEvents `source` of what `service` writes: `/shop/orders`.
pub fn source_of(service: &str) -> String {
    format!("/shop/{service}")
}

/// An event as stored: one JSON document per Kafka record value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventDocument {
    /// Always `1.0`.
    pub specversion: String,
    /// The event id, unique across the log.
    pub id: EventId,
    /// The service that wrote it: `/shop/<service>`.
    pub source: String,
    /// The event type, such as `OrderPlaced`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The aggregate id; also the Kafka record key.
    pub subject: String,
    /// When the event occurred (RFC 3339, UTC).
    pub time: DateTime<Utc>,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// Schema version of `data` for this `type`.
    pub schemaversion: u32,
    /// `user`, `order`, `payment` or `notification`.
    pub aggregatetype: String,
    /// 1, 2, 3, ... contiguous per aggregate.
    pub aggregateversion: u64,
    /// The command that caused this event.
    pub commandid: CommandId,
    pub correlationid: CorrelationId,
    /// The id of the message (command or event) that directly caused this one.
    pub causationid: Uuid,
    pub traceparent: TraceParent,
    /// The payload, shaped by the JSON Schema of `type` at `schemaversion`.
    pub data: Value,
}

/// A command as routed to its aggregate's writer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommandDocument {
    /// Always `1.0`.
    pub specversion: String,
    /// The command id; a command id already in the log is answered with its first outcome.
    pub id: CommandId,
    /// Who issued it: `/shop/command-api`, `/shop/saga-orchestrator`, ...
    pub source: String,
    /// The command type, such as `PlaceOrder`.
    #[serde(rename = "type")]
    pub command_type: String,
    /// The id of the aggregate the command addresses; also the Kafka record key.
    pub subject: String,
    /// When it was issued (RFC 3339, UTC).
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub schemaversion: u32,
    pub aggregatetype: String,
    /// When present, the command applies only if the aggregate is at exactly this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expectedversion: Option<u64>,
    pub correlationid: CorrelationId,
    pub causationid: Uuid,
    pub traceparent: TraceParent,
    pub data: Value,
}

/// The outcome of a command that appended no event (a rejection or a version conflict),
/// kept in `<service>.outcomes` so that the same command id gets the same answer after a
/// restart or a takeover. `data` is the outcome as the writer answered it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeDocument {
    /// Always `1.0`.
    pub specversion: String,
    /// The id of this record.
    pub id: Uuid,
    /// The service whose writer decided: `/shop/<service>`.
    pub source: String,
    /// `CommandRejected` or `CommandConflicted`.
    #[serde(rename = "type")]
    pub outcome_type: String,
    /// The aggregate id; also the Kafka record key.
    pub subject: String,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub aggregatetype: String,
    /// The command this is the outcome of.
    pub commandid: CommandId,
    /// The command's type, such as `PlaceOrder`.
    pub commandtype: String,
    pub correlationid: CorrelationId,
    pub traceparent: TraceParent,
    /// The outcome: `{"outcome": "rejected", "aggregate_id", "version", "reason"}` or
    /// `{"outcome": "conflict", "aggregate_id", "expected", "current"}`.
    pub data: Value,
}

impl OutcomeDocument {
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serializes to JSON infallibly")
    }

    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("content-type", CONTENT_TYPE.to_owned()),
            ("ce_id", self.id.to_string()),
            ("ce_source", self.source.clone()),
            ("ce_type", self.outcome_type.clone()),
            ("ce_subject", self.subject.clone()),
            ("ce_aggregatetype", self.aggregatetype.clone()),
            ("ce_commandid", self.commandid.to_string()),
            ("ce_commandtype", self.commandtype.clone()),
            ("ce_correlationid", self.correlationid.to_string()),
            ("traceparent", self.traceparent.to_string()),
        ]
    }
}

/// Metadata of a typed event.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EventMeta {
    pub id: EventId,
    pub version: u64,
    #[cfg_attr(test, proptest(strategy = "crate::tests::any_time()"))]
    pub occurred_at: DateTime<Utc>,
    pub command_id: CommandId,
    pub correlation_id: CorrelationId,
    #[cfg_attr(test, proptest(strategy = "crate::tests::any_uuid()"))]
    pub causation_id: Uuid,
    pub traceparent: TraceParent,
}

/// An event with its decoded, current-version payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Event<E> {
    pub meta: EventMeta,
    pub payload: E,
}

/// Metadata of a typed command.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CommandMeta {
    pub id: CommandId,
    /// Who issued it, as a CloudEvents source (`/shop/command-api`).
    pub issuer: String,
    pub expected_version: Option<u64>,
    #[cfg_attr(test, proptest(strategy = "crate::tests::any_time()"))]
    pub issued_at: DateTime<Utc>,
    pub correlation_id: CorrelationId,
    #[cfg_attr(test, proptest(strategy = "crate::tests::any_uuid()"))]
    pub causation_id: Uuid,
    pub traceparent: TraceParent,
}

impl EventMeta {
    /// Metadata of a new event at `version`: a fresh id, occurring now, caused by a fresh
    /// command in a new correlation and trace. Writers set those from the command instead;
    /// this is for tools, tests and benchmarks writing events directly.
    pub fn new(version: u64) -> Self {
        let command_id = CommandId::new();
        Self {
            id: EventId::new(),
            version,
            occurred_at: Utc::now(),
            command_id,
            correlation_id: CorrelationId::new(),
            causation_id: command_id.as_uuid(),
            traceparent: TraceParent::new_root(),
        }
    }
}

impl CommandMeta {
    /// Metadata of a new command from `issuer`: a fresh id (also its causation), issued now,
    /// a new correlation and a new trace. Callers continuing a request or a saga set those.
    pub fn new(issuer: &str) -> Self {
        let id = CommandId::new();
        Self {
            id,
            issuer: issuer.to_owned(),
            expected_version: None,
            issued_at: Utc::now(),
            correlation_id: CorrelationId::new(),
            causation_id: id.as_uuid(),
            traceparent: TraceParent::new_root(),
        }
    }
}

/// A command with its decoded payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Command<C> {
    pub meta: CommandMeta,
    pub payload: C,
}

impl<E: MessageFamily> Event<E> {
    pub fn aggregate_id(&self) -> String {
        self.payload.aggregate_id()
    }

    pub fn to_document(&self) -> EventDocument {
        let m = &self.meta;
        EventDocument {
            specversion: SPEC_VERSION.to_owned(),
            id: m.id,
            source: source_of(E::SERVICE),
            event_type: self.payload.type_name().to_owned(),
            subject: self.payload.aggregate_id(),
            time: m.occurred_at,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            schemaversion: self.payload.schema_version(),
            aggregatetype: E::AGGREGATE_TYPE.to_owned(),
            aggregateversion: m.version,
            commandid: m.command_id,
            correlationid: m.correlation_id,
            causationid: m.causation_id,
            traceparent: m.traceparent,
            data: self.payload.to_data(),
        }
    }
}

impl<C: MessageFamily> Command<C> {
    pub fn aggregate_id(&self) -> String {
        self.payload.aggregate_id()
    }

    pub fn to_document(&self) -> CommandDocument {
        let m = &self.meta;
        CommandDocument {
            specversion: SPEC_VERSION.to_owned(),
            id: m.id,
            source: m.issuer.clone(),
            command_type: self.payload.type_name().to_owned(),
            subject: self.payload.aggregate_id(),
            time: m.issued_at,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            schemaversion: self.payload.schema_version(),
            aggregatetype: C::AGGREGATE_TYPE.to_owned(),
            expectedversion: m.expected_version,
            correlationid: m.correlation_id,
            causationid: m.causation_id,
            traceparent: m.traceparent,
            data: self.payload.to_data(),
        }
    }
}

/// The CloudEvents attributes both document shapes share, for checks done once.
struct Core<'a> {
    specversion: &'a str,
    datacontenttype: &'a str,
    type_name: &'a str,
    schemaversion: u32,
    aggregatetype: &'a str,
    subject: &'a str,
}

/// Checks the shared attributes, upcasts `data` and decodes it as a member of `F`.
fn decode_payload<F: MessageFamily>(core: Core<'_>, data: Value) -> Result<F, DecodeError> {
    if core.specversion != SPEC_VERSION {
        return Err(DecodeError::Malformed(format!(
            "specversion {:?} is not {SPEC_VERSION}",
            core.specversion
        )));
    }
    if core.datacontenttype != DATA_CONTENT_TYPE {
        return Err(DecodeError::Malformed(format!(
            "datacontenttype {:?} is not {DATA_CONTENT_TYPE}",
            core.datacontenttype
        )));
    }
    if core.aggregatetype != F::AGGREGATE_TYPE {
        return Err(DecodeError::WrongAggregate {
            expected: F::AGGREGATE_TYPE,
            found: core.aggregatetype.to_owned(),
        });
    }
    let current = F::TYPES
        .iter()
        .find(|t| t.name == core.type_name)
        .ok_or_else(|| DecodeError::UnknownType {
            type_name: core.type_name.to_owned(),
            aggregate_type: F::AGGREGATE_TYPE,
        })?
        .version;
    let data = upcast(core.type_name, core.schemaversion, current, data)?;
    let payload = F::from_data(core.type_name, data)?;
    if payload.aggregate_id() != core.subject {
        return Err(DecodeError::SubjectMismatch {
            subject: core.subject.to_owned(),
            payload_id: payload.aggregate_id(),
        });
    }
    Ok(payload)
}

impl EventDocument {
    /// Parses a record value. Only the envelope is checked here; [`Self::decode`] does the rest.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serializes to JSON infallibly")
    }

    /// Upcasts and decodes the payload as a member of the event family `E`.
    pub fn decode<E: MessageFamily>(self) -> Result<Event<E>, DecodeError> {
        let core = Core {
            specversion: &self.specversion,
            datacontenttype: &self.datacontenttype,
            type_name: &self.event_type,
            schemaversion: self.schemaversion,
            aggregatetype: &self.aggregatetype,
            subject: &self.subject,
        };
        let payload = decode_payload::<E>(core, self.data)?;
        let meta = EventMeta {
            id: self.id,
            version: self.aggregateversion,
            occurred_at: self.time,
            command_id: self.commandid,
            correlation_id: self.correlationid,
            causation_id: self.causationid,
            traceparent: self.traceparent,
        };
        Ok(Event { meta, payload })
    }

    /// The Kafka headers of this event: a copy of the attributes tools filter on, so that
    /// a console can select by type or id without parsing the value.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("content-type", CONTENT_TYPE.to_owned()),
            ("ce_specversion", self.specversion.clone()),
            ("ce_id", self.id.to_string()),
            ("ce_source", self.source.clone()),
            ("ce_type", self.event_type.clone()),
            ("ce_subject", self.subject.clone()),
            ("ce_time", self.time.to_rfc3339()),
            ("ce_schemaversion", self.schemaversion.to_string()),
            ("ce_aggregatetype", self.aggregatetype.clone()),
            ("ce_aggregateversion", self.aggregateversion.to_string()),
            ("ce_commandid", self.commandid.to_string()),
            ("ce_correlationid", self.correlationid.to_string()),
            ("ce_causationid", self.causationid.to_string()),
            ("traceparent", self.traceparent.to_string()),
        ]
    }
}

impl CommandDocument {
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serializes to JSON infallibly")
    }

    /// Upcasts and decodes the payload as a member of the command family `C`.
    pub fn decode<C: MessageFamily>(self) -> Result<Command<C>, DecodeError> {
        let core = Core {
            specversion: &self.specversion,
            datacontenttype: &self.datacontenttype,
            type_name: &self.command_type,
            schemaversion: self.schemaversion,
            aggregatetype: &self.aggregatetype,
            subject: &self.subject,
        };
        let payload = decode_payload::<C>(core, self.data)?;
        let meta = CommandMeta {
            id: self.id,
            issuer: self.source,
            expected_version: self.expectedversion,
            issued_at: self.time,
            correlation_id: self.correlationid,
            causation_id: self.causationid,
            traceparent: self.traceparent,
        };
        Ok(Command { meta, payload })
    }

    /// Kafka headers of this command (see [`EventDocument::headers`]).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("content-type", CONTENT_TYPE.to_owned()),
            ("ce_specversion", self.specversion.clone()),
            ("ce_id", self.id.to_string()),
            ("ce_source", self.source.clone()),
            ("ce_type", self.command_type.clone()),
            ("ce_subject", self.subject.clone()),
            ("ce_time", self.time.to_rfc3339()),
            ("ce_schemaversion", self.schemaversion.to_string()),
            ("ce_aggregatetype", self.aggregatetype.clone()),
            ("ce_correlationid", self.correlationid.to_string()),
            ("ce_causationid", self.causationid.to_string()),
            ("traceparent", self.traceparent.to_string()),
        ];
        if let Some(v) = self.expectedversion {
            headers.push(("ce_expectedversion", v.to_string()));
        }
        headers
    }
}
