//! W3C trace context between `tracing` spans and the `traceparent` every command and event
//! carries: a hop's span continues the trace its input names, and what the hop sends on
//! names that span. The spans are `TRACE`-level spans of target [`TARGET`], exported when a
//! service installs an exporter (service-runtime's `traces`); without one they are
//! disabled at their call sites and the trace continues with a new span id per hop.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use schemas::TraceParent;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span of a hop.
pub const TARGET: &str = "shop::trace";

/// Makes `parent` the parent of `span` (nothing when spans are not exported).
pub fn set_parent(span: &tracing::Span, parent: &TraceParent) {
    if span.is_disabled() {
        return;
    }
    let (trace_id, parent_id, flags) = parent.parts();
    let context = SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(parent_id),
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
}

/// Makes `parent` (a span of another hop, still open or not) the parent of `span`.
pub fn set_parent_span(span: &tracing::Span, parent: &tracing::Span) {
    if span.is_disabled() || parent.is_disabled() {
        return;
    }
    let _ = span.set_parent(parent.context());
}

/// The `traceparent` naming `span` as parent, for what it sends on; when spans are not
/// exported, a new span id in `fallback`'s trace.
pub fn traceparent_of(span: &tracing::Span, fallback: &TraceParent) -> TraceParent {
    exported(span).unwrap_or_else(|| fallback.child())
}

/// The `traceparent` naming `span`, when it is exported.
pub fn exported(span: &tracing::Span) -> Option<TraceParent> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        TraceParent::from_parts(
            u128::from_be_bytes(span_context.trace_id().to_bytes()),
            u64::from_be_bytes(span_context.span_id().to_bytes()),
            span_context.trace_flags().to_u8(),
        )
    })
}

/// Whether spans of [`TARGET`] are made at all (an exporter is installed).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::TRACE)
}
