//! Correlation and tracing: every request gets a correlation id (from `X-Correlation-Id`,
//! or a new one, returned in that header) and a W3C trace context (from `traceparent`, or a
//! new trace). Both ride on every command the request causes, and every log line about the
//! request carries them.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use schemas::{CorrelationId, TraceParent};
use service_runtime::traces;
use tracing::Instrument;

pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// Who and what a request belongs to.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext {
    pub correlation_id: CorrelationId,
    pub traceparent: TraceParent,
}

impl RequestContext {
    /// The request's context; `span` (its HTTP span) continues the caller's trace, and what
    /// the request causes continues `span`. A malformed `traceparent` starts a new trace.
    fn from_headers(headers: &axum::http::HeaderMap, span: &tracing::Span) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let correlation_id = header(CORRELATION_HEADER)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_default();
        let caller = header("traceparent").and_then(|v| v.trim().parse::<TraceParent>().ok());
        let traceparent = match caller {
            Some(caller) => {
                traces::set_parent(span, &caller);
                traces::traceparent_of(span, &caller)
            }
            None => traces::traceparent_of(span, &TraceParent::new_root()),
        };
        Self {
            correlation_id,
            traceparent,
        }
    }
}

pub async fn correlate(mut request: Request, next: Next) -> Response {
    let http = tracing::trace_span!(
        target: traces::TARGET,
        "http",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
    );
    let context = RequestContext::from_headers(request.headers(), &http);
    request.extensions_mut().insert(context);
    let span = tracing::info_span!(
        "command",
        correlation_id = %context.correlation_id,
        trace_id = %context.traceparent.trace_id(),
    );
    let mut response = next.run(request).instrument(span).instrument(http).await;
    if let Ok(value) = HeaderValue::from_str(&context.correlation_id.to_string()) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&context.traceparent.to_string()) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}
