//! Prometheus metrics: one registry per service instance (so tests can run several in one
//! process), HTTP request counts and latencies per route, and the text exposition.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels as `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// The metrics every service has.
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    pub dependency_up: Family<Vec<(&'static str, &'static str)>, Gauge>,
    pub http_requests: Family<Labels, Counter>,
    pub http_latency: Family<Labels, Histogram>,
}

impl ServiceMetrics {
    pub fn register(registry: &mut Registry, service: &'static str) -> Self {
        let build_info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("service", service),
                ("version", env!("CARGO_PKG_VERSION")),
            ])
            .set(1);
        registry.register("build_info", "Service name and version", build_info);
        let metrics = Self {
            dependency_up: Family::default(),
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(|| {
                // 1 ms to ~8 s.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 2.0, 14,
                ))
            }),
        };
        registry.register(
            "dependency_up",
            "1 when the dependency answered its last probe",
            metrics.dependency_up.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans not exported: the export queue was full or the collector refused them",
            crate::traces::SPANS_DROPPED.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and method",
            metrics.http_latency.clone(),
        );
        metrics
    }
}

/// Middleware recording each request under its route template (`/v1/orders/{id}`), so
/// label cardinality stays bounded whatever the ids.
pub async fn track_http(
    State(metrics): State<ServiceMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let timing: Labels = vec![("route", route.clone()), ("method", method.clone())];
    metrics
        .http_latency
        .get_or_create(&timing)
        .observe(started.elapsed().as_secs_f64());
    let counted: Labels = vec![
        ("route", route),
        ("method", method),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics.http_requests.get_or_create(&counted).inc();
    response
}

/// The registry in Prometheus/OpenMetrics text format.
pub fn render(registry: &Arc<Registry>) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}
