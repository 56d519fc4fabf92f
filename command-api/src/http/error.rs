//! Every way a command request can fail, and its one mapping to HTTP: an RFC 9457 problem.
//! Internal errors reach the client as an opaque 500 with the request id; their cause is
//! logged here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use event_store::EventStoreError;
use serde::Serialize;
use serde_json::{Value, json};
use service_runtime::problem::{Problem, problem_type};

/// One failing field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer-like path: `email`, `lines[2].quantity`, or a header name.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug)]
pub enum ApiError {
    /// The body is not JSON at all.
    MalformedJson(String),
    UnsupportedMediaType,
    PayloadTooLarge {
        limit: usize,
    },
    /// Fields that fail validation, all of them.
    Validation(Vec<FieldError>),
    NotFound {
        what: &'static str,
        id: String,
    },
    /// `If-Match` named another version than the current one.
    VersionConflict {
        expected: u64,
        current: u64,
    },
    /// A business rule refused the command; `rejection` is its code and details.
    Rejected {
        rejection: Value,
    },
    IdempotencyKeyReused,
    /// A request with this key is still running (and outlived the wait for its answer).
    IdempotencyKeyInProgress,
    /// The broker, the database or a writer could not answer in time: retry.
    Unavailable(String),
    Overloaded,
    Internal(String),
}

impl ApiError {
    /// A refused command as a problem; `unknown-*` codes read as 404.
    pub fn rejected<R: Serialize>(rejection: &R) -> Self {
        let rejection =
            serde_json::to_value(rejection).unwrap_or_else(|_| json!({"code": "rejected"}));
        Self::Rejected { rejection }
    }

    pub fn from_store(error: EventStoreError) -> Self {
        match error {
            EventStoreError::Unavailable { .. } | EventStoreError::NotOwner { .. } => {
                Self::Unavailable(error.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}

impl ApiError {
    fn problem(self) -> Problem {
        match self {
            Self::MalformedJson(detail) => Problem::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {detail}"),
            )
            .typed(problem_type("malformed-json"), "Malformed JSON"),
            Self::UnsupportedMediaType => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as application/json",
            ),
            Self::PayloadTooLarge { limit } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {limit} bytes"),
            ),
            Self::Validation(errors) => Problem::validation(
                format!("{} field(s) are invalid", errors.len()),
                serde_json::to_value(errors).unwrap_or_default(),
            ),
            Self::NotFound { what, id } => Problem::not_found(format!("no {what} {id}")),
            Self::VersionConflict { expected, current } => Problem::new(
                StatusCode::CONFLICT,
                format!("If-Match expected version {expected}, the current version is {current}"),
            )
            .typed(problem_type("version-conflict"), "Version conflict")
            .with("current_version", current),
            Self::Rejected { rejection } => rejected(rejection),
            Self::IdempotencyKeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was used for a different request",
            )
            .typed(
                problem_type("idempotency-key-reused"),
                "Idempotency key reused",
            ),
            Self::IdempotencyKeyInProgress => Problem::new(
                StatusCode::CONFLICT,
                "a request with this Idempotency-Key is still running; retry to get its answer",
            )
            .typed(
                problem_type("idempotency-key-in-progress"),
                "Idempotency key in progress",
            )
            .retry_after(1),
            Self::Unavailable(reason) => unavailable(&reason),
            Self::Overloaded => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many commands in flight; retry",
            )
            .typed(problem_type("overloaded"), "Overloaded")
            .retry_after(1),
            Self::Internal(cause) => internal(&cause),
        }
    }
}

/// Logged with its reason; the client learns only to retry.
fn unavailable(reason: &str) -> Problem {
    tracing::warn!(%reason, "command not decided: unavailable");
    Problem::unavailable("the event store cannot take commands right now; retry")
}

/// Logged with its cause; the client gets an opaque 500 whose request id finds it.
fn internal(cause: &str) -> Problem {
    tracing::error!(%cause, "internal error");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "an internal error occurred; the request id identifies it in the logs",
    )
}

/// A refused command: its code names the problem type, its details are members. A detail
/// named like a standard member (an order's `status`) is the aggregate's current one:
/// `current_status`, beside the problem's own.
fn rejected(rejection: Value) -> Problem {
    let code = rejection["code"].as_str().unwrap_or("rejected").to_owned();
    let mut problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, format!("refused: {code}"))
        .typed(problem_type(&code), "Command refused")
        .with("code", code.as_str());
    if let Value::Object(details) = rejection {
        for (key, value) in details.into_iter().filter(|(k, _)| k != "code") {
            let key = if service_runtime::problem::STANDARD_MEMBERS.contains(&key.as_str()) {
                format!("current_{key}")
            } else {
                key
            };
            problem = problem.with(&key, value);
        }
    }
    problem
}
