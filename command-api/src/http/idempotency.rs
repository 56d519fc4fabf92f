//! `Idempotency-Key`: a retried request with the same key and body gets the same answer
//! and appends nothing; the same key with another body is refused (422).
//!
//! The same answer comes from the write model: every command of a keyed request has an id
//! derived from (caller, key, step), and a command id the log has seen is answered with its
//! first outcome. This table only remembers which request a key was first used for.

use axum::http::HeaderMap;
use schemas::{CommandId, OrderId, UserId};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

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
}

#[derive(Clone, Debug)]
pub struct IdempotencyKeys {
    pool: PgPool,
}

impl IdempotencyKeys {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The ids for a request: keyed when it has an `Idempotency-Key`, after checking the
    /// key was not used for another request.
    pub async fn ids_for(
        &self,
        principal: &Principal,
        headers: &HeaderMap,
        request: (&str, &str, &[u8]),
    ) -> Result<CommandIds, ApiError> {
        let Some(raw) = headers.get(HEADER) else {
            return Ok(CommandIds::Fresh);
        };
        let key = raw
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::Validation(vec![FieldError::new(
                    "Idempotency-Key",
                    "must be 1 to 255 printable ASCII characters",
                )])
            })?;
        let (method, path, body) = request;
        let mut hash = Sha256::new();
        for part in [method.as_bytes(), path.as_bytes(), body] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        let request_hash = hex::encode(hash.finalize());
        let first: String = sqlx::query_scalar(
            "WITH inserted AS ( \
               INSERT INTO command_api.idempotency_keys (principal, key, request_hash) \
               VALUES ($1, $2, $3) ON CONFLICT (principal, key) DO NOTHING RETURNING request_hash) \
             SELECT request_hash FROM inserted \
             UNION ALL SELECT request_hash FROM command_api.idempotency_keys WHERE principal = $1 AND key = $2 \
             LIMIT 1",
        )
        .bind(&principal.0)
        .bind(key)
        .bind(&request_hash)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| ApiError::Unavailable(format!("idempotency keys: {e}")))?;
        if first != request_hash {
            return Err(ApiError::IdempotencyKeyReused);
        }
        Ok(CommandIds::Keyed {
            principal: principal.0.clone(),
            key: key.to_owned(),
        })
    }
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
