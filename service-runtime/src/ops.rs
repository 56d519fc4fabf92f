//! The operational endpoints every service serves, open without an API key:
//! `/health` (the process is up), `/ready` (its dependencies are usable, or why not),
//! `/metrics` (Prometheus).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::metrics::render;
use crate::readiness::Readiness;

#[derive(Clone, Debug)]
pub(crate) struct OpsState {
    pub service: &'static str,
    pub readiness: Readiness,
    pub registry: Arc<Registry>,
}

pub(crate) fn router(state: OpsState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health(State(state): State<OpsState>) -> Json<serde_json::Value> {
    Json(json!({ "status": "up", "service": state.service }))
}

async fn ready(State(state): State<OpsState>) -> Response {
    let (ready, checks) = state.readiness.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "service": state.service,
        "checks": checks,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&state.registry),
    )
        .into_response()
}
