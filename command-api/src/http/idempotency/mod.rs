//! `Idempotency-Key`: a retried request with the same key and body gets the same answer
//! and appends nothing; the same key with another body is refused (422).
//!
//! Two layers make that hold. [`answers`] runs a keyed request once: the first request
//! with a key claims it in Postgres, duplicates (concurrent ones too, on any instance) wait
//! for its answer and get exactly it. And every command of a keyed request has an id
//! derived from (caller, key, step), so a request run again after a crash, a 5xx or a lost
//! lease appends nothing twice: the writers answer a known command id with its first
//! outcome.

pub mod answers;

use axum::http::HeaderMap;
use schemas::{CommandId, OrderId, UserId};

use super::error::{ApiError, FieldError};
use service_runtime::api_keys::Principal;

pub const HEADER: &str = "idempotency-key";

/// The ids a request's commands (and new aggregates) get.
#[derive(Clone, Debug)]
pub enum CommandIds {
    /// Derived from the caller and its key: a retry repeats them.
    Keyed { principal: String, key: String },
    /// No key: fresh ids.
    Fresh,
}

impl CommandIds {
    pub fn command(&self, step: &str) -> CommandId {
        match self {
            Self::Keyed { principal, key } => CommandId::derived(&["api", principal, key, step]),
            Self::Fresh => CommandId::new(),
        }
    }

    pub fn new_user(&self) -> UserId {
        match self {
            Self::Keyed { principal, key } => UserId::derived(&["api", principal, key, "user"]),
            Self::Fresh => UserId::new(),
        }
    }

    pub fn new_order(&self) -> OrderId {
        match self {
            Self::Keyed { principal, key } => OrderId::derived(&["api", principal, key, "order"]),
            Self::Fresh => OrderId::new(),
        }
    }

    /// The ids of a request from `principal`: keyed when it has an `Idempotency-Key`.
    pub fn of(principal: &Principal, headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(match key_of(headers)? {
            Some(key) => Self::Keyed {
                principal: principal.fingerprint.clone(),
                key: key.to_owned(),
            },
            None => Self::Fresh,
        })
    }
}

/// The request's `Idempotency-Key`, if it has one: 1 to 255 printable ASCII characters.
pub fn key_of(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(raw) = headers.get(HEADER) else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(Some)
        .ok_or_else(|| {
            ApiError::Validation(vec![FieldError::new(
                "Idempotency-Key",
                "must be 1 to 255 printable ASCII characters",
            )])
        })
}

/// `If-Match: "3"` (or `3`, or `W/"3"`) as an expected version.
pub fn expected_version(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get("if-match") else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::Validation(vec![FieldError::new(
                "If-Match",
                "must be the version to expect, such as \"3\"",
            )])
        })
}
