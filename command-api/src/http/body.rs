//! The JSON body of a command request: `application/json`, at most 64 KiB, syntactically
//! JSON. What the fields mean is checked afterwards, all at once (see `fields`), so that a
//! client learns every failing field in one answer.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde_json::Value;

use super::error::ApiError;

/// Largest command body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A parsed JSON body.
#[derive(Debug)]
pub struct JsonBody {
    pub value: Value,
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(bytes_rejection)?;
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        Ok(Self { value })
    }
}

/// Why a body could not be read: too large (413), or cut off (400).
pub fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }
    } else {
        ApiError::MalformedJson(rejection.body_text())
    }
}
