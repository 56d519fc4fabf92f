//! RFC 9457 problem details: the one shape of every error answer the services give.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The members RFC 9457 defines; an extension member never takes one of these names.
pub const STANDARD_MEMBERS: [&str; 5] = ["type", "title", "status", "detail", "instance"];

/// A problem document. Extension members (`errors`, `current_version`, `lag`, ...) are
/// flattened next to the standard ones.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
    #[serde(skip)]
    retry_after_secs: Option<u32>,
}

/// What every problem type of the shop's own starts with (RFC 9457 `type`).
pub const TYPE_PREFIX: &str = "urn:shop:problem:";

/// The shop's problem type `code`: `urn:shop:problem:<code>`.
pub fn problem_type(code: &str) -> String {
    format!("{TYPE_PREFIX}{code}")
}

impl Problem {
    /// A problem identified by its status alone (`type` is `about:blank`).
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            problem_type: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            extensions: Map::new(),
            retry_after_secs: None,
        }
    }

    /// A problem with a machine-readable type, such as [`problem_type`]`("email-taken")`.
    pub fn typed(mut self, problem_type: impl Into<String>, title: impl Into<String>) -> Self {
        self.problem_type = problem_type.into();
        self.title = title.into();
        self
    }

    /// Adds the extension member `key`, which must not be a standard member's name (it would
    /// appear twice in the JSON).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        debug_assert!(
            !STANDARD_MEMBERS.contains(&key),
            "{key} is a standard problem member"
        );
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// 422 `validation`: the request's fields or parameters, `errors` listing each.
    pub fn validation(detail: impl Into<String>, errors: Value) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
            .typed(problem_type("validation"), "Invalid request")
            .with("errors", errors)
    }

    /// 404 `not-found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail).typed(problem_type("not-found"), "Not found")
    }

    /// 503 `unavailable`: a dependency cannot answer now; retry after a second.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
            .typed(problem_type("unavailable"), "Service unavailable")
            .retry_after(1)
    }

    /// Adds `Retry-After` (seconds) to the response.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after_secs;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_as_problem_json_with_extensions_and_retry_after() {
        let response = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "broker down")
            .with("lag", 12)
            .retry_after(2)
            .into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": "broker down",
                "lag": 12
            })
        );
    }
}
