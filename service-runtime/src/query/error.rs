//! Every way a query can fail, mapped once to an RFC 9457 problem.

use crate::problem::{Problem, problem_type};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

/// One invalid query parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParamError {
    pub field: String,
    pub message: String,
}

#[derive(Debug)]
pub enum QueryError {
    /// Invalid parameters, all of them.
    Invalid(Vec<ParamError>),
    NotFound(String),
    /// The request collides with the state things are in (a rebuild already running).
    Conflict(String),
    /// The read model did not reach `min_position` in time; `lag` says how far it is.
    NotYet {
        lag: Value,
    },
    /// Postgres or the broker cannot answer now.
    Unavailable(String),
}

impl QueryError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![ParamError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }
}

impl From<sqlx::Error> for QueryError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(format!("Postgres: {e}"))
    }
}

impl From<event_store::EventStoreError> for QueryError {
    fn from(e: event_store::EventStoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let problem = match self {
            Self::Invalid(errors) => Problem::validation(
                format!("{} parameter(s) are invalid", errors.len()),
                serde_json::to_value(errors).unwrap_or_default(),
            ),
            Self::NotFound(detail) => Problem::not_found(detail),
            Self::Conflict(detail) => Problem::new(StatusCode::CONFLICT, detail)
                .typed(problem_type("conflict"), "Conflict"),
            Self::NotYet { lag } => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the read model has not reached min_position yet; retry later",
            )
            .typed(problem_type("not-yet-visible"), "Not yet visible")
            .with("lag", lag)
            .retry_after(1),
            Self::Unavailable(reason) => {
                tracing::warn!(%reason, "query not answered: unavailable");
                Problem::unavailable("the read side cannot answer right now; retry")
            }
        };
        problem.into_response()
    }
}
