//! The saga API: `GET /v1/sagas/{order_id}`, `GET /v1/sagas?state=&limit=&cursor=`, and
//! the operator's `POST /v1/sagas/{order_id}/retry` for a failed saga. Parameters and
//! errors work as in the query API (one 422 with every invalid parameter, 404 for an
//! unknown order, 503 when Postgres cannot answer), so they share its types.

use std::sync::Arc;

use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use schemas::OrderId;
use serde::Serialize;
use service_runtime::api_keys::Operator;
use service_runtime::openapi::BearerAuth;
use service_runtime::problem::{Problem, problem_type};
use service_runtime::query::QueryError;
use service_runtime::query::{Cursor, Page, Params, path_id};
use sqlx::PgPool;
use tokio::sync::Notify;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::SagaError;
use crate::metrics::SagaMetrics;
use crate::operator;
use crate::saga::{Compensation, Failure, HistoryEntry, Policy, Saga, SagaState, Stage};
use crate::store;

/// What the saga routes work with.
#[derive(Clone, Debug)]
pub struct Api {
    pub pool: PgPool,
    pub policy: Policy,
    /// Wakes the dispatcher when a retry put a step into the outbox.
    pub dispatch: Arc<Notify>,
    pub metrics: SagaMetrics,
}

impl FromRef<Api> for PgPool {
    fn from_ref(api: &Api) -> Self {
        api.pool.clone()
    }
}

type Pairs = Query<Vec<(String, String)>>;

/// A saga as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SagaView {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub correlation_id: Uuid,
    /// `running`, `compensating`, `completed`, `compensated` or `failed`.
    pub state: &'static str,
    /// Where the forward path is: `authorizing_payment`, `confirming_order`,
    /// `notifying_customer` or `done`.
    pub current_step: Stage,
    pub payment: crate::saga::PaymentState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensating_because: Option<String>,
    pub compensations: Vec<Compensation>,
    pub failures: Vec<Failure>,
    /// Every event the saga took and every command it issued, with times.
    pub steps: Vec<HistoryEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_deadline: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Saga> for SagaView {
    fn from(s: Saga) -> Self {
        Self {
            order_id: s.order_id.as_uuid(),
            user_id: s.user_id.as_uuid(),
            correlation_id: s.correlation_id.as_uuid(),
            state: s.state.as_str(),
            current_step: s.stage,
            payment: s.payment,
            compensating_because: s.compensating_because,
            compensations: s.compensations,
            failures: s.failures,
            steps: s.history,
            payment_deadline: s.payment_deadline,
            started_at: s.started_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "shop saga API", description = "The order sagas: current step, every step with its time, compensations, failures. Errors are application/problem+json (RFC 9457)."),
    modifiers(&BearerAuth),
    tags((name = "sagas"))
)]
struct ApiDoc;

/// The saga routes (registered through their documentation) and the OpenAPI document.
pub fn router(state: Api) -> (Router, utoipa::openapi::OpenApi) {
    let (routes, document) = service_runtime::openapi::documented(api());
    (routes.with_state(state), document)
}

/// The saga API's OpenAPI document, as `GET /openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    service_runtime::openapi::documented(api()).1
}

fn api() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(list))
        .routes(routes!(one))
        .routes(routes!(retry))
}

/// `GET /v1/sagas/{order_id}`
#[utoipa::path(
    get, path = "/v1/sagas/{order_id}", tag = "sagas",
    description = "The saga of one order.",
    params(("order_id" = Uuid, Path, description = "the order")),
    responses(
        (status = 200, description = "found", body = SagaView),
        (status = 404, description = "no saga for that order"),
        (status = 401, description = "no valid API key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
    ),
    security(("bearer" = []))
)]
async fn one(
    State(pool): State<PgPool>,
    Path(id): Path<String>,
    Query(pairs): Pairs,
) -> Result<Json<SagaView>, QueryError> {
    Params::new(pairs, &[]).finish()?;
    let id = path_id(&id)?;
    let mut conn = pool.acquire().await?;
    store::saga(&mut conn, id)
        .await?
        .map(|s| Json(SagaView::from(s)))
        .ok_or_else(|| QueryError::NotFound(format!("no saga for order {id}")))
}

/// `POST /v1/sagas/{order_id}/retry`
#[utoipa::path(
    post, path = "/v1/sagas/{order_id}/retry", tag = "sagas", operation_id = "retry_saga",
    description = "For operators (an operator key; a client key gets 403): retries a failed saga once what made it fail is dealt with. A saga fails when a compensation is given up on for good (a refund the provider refused); the retry issues that compensation again under its old command id, and the rest of the plan follows. Answers the saga as stored after the retry (state `compensating`).",
    params(("order_id" = Uuid, Path, description = "the order")),
    responses(
        (status = 200, description = "the saga compensates again", body = SagaView),
        (status = 404, description = "no saga for that order"),
        (status = 409, description = "the saga is not failed (problem+json with its `state`)"),
        (status = 401, description = "no valid API key"),
        (status = 403, description = "a client key: this needs an operator key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
    ),
    security(("bearer" = []))
)]
async fn retry(
    State(api): State<Api>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    Query(pairs): Pairs,
) -> Result<Json<SagaView>, Response> {
    let invalid = |e: QueryError| e.into_response();
    Params::new(pairs, &[]).finish().map_err(invalid)?;
    let order_id = OrderId::from(path_id(&id).map_err(invalid)?);
    match operator::retry(&api.pool, order_id, &api.policy).await {
        Ok(saga) => {
            api.metrics.observe_input("operator_retry", "applied");
            api.dispatch.notify_one();
            tracing::info!(target: "audit", %order_id, role = caller.role.as_str(), principal = %caller.fingerprint, "failed saga retried by an operator");
            Ok(Json(SagaView::from(saga)))
        }
        Err(SagaError::NotFound(_)) => {
            tracing::info!(target: "audit", %order_id, role = caller.role.as_str(), principal = %caller.fingerprint, "saga retry refused: no saga");
            Err(QueryError::NotFound(format!("no saga for order {order_id}")).into_response())
        }
        Err(refused @ SagaError::Conflict { state, .. }) => {
            api.metrics.observe_input("operator_retry", "ignored");
            tracing::info!(target: "audit", %order_id, role = caller.role.as_str(), principal = %caller.fingerprint, state = state.as_str(), "saga retry refused: not failed");
            Err(Problem::new(StatusCode::CONFLICT, refused.to_string())
                .typed(problem_type("saga-not-failed"), "Saga not failed")
                .with("state", state.as_str())
                .into_response())
        }
        Err(e @ SagaError::Unavailable { .. }) => {
            tracing::warn!(target: "audit", %order_id, role = caller.role.as_str(), principal = %caller.fingerprint, error = %e, "saga retry failed");
            Err(QueryError::Unavailable(e.to_string()).into_response())
        }
    }
}

const STATES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
];

/// `GET /v1/sagas?state=&limit=&cursor=`: newest first.
#[utoipa::path(
    get, path = "/v1/sagas", tag = "sagas", operation_id = "list_sagas",
    description = "Sagas, newest first, filtered by state (keyset pagination).",
    params(
        ("state" = Option<String>, Query, description = "running, compensating, completed, compensated or failed"),
        ("limit" = Option<u32>, Query, description = "1 to 100 (default 20)", minimum = 1, maximum = 100),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "a page", body = Page<SagaView>),
        (status = 401, description = "no valid API key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
    ),
    security(("bearer" = []))
)]
async fn list(
    State(pool): State<PgPool>,
    Query(pairs): Pairs,
) -> Result<Json<Page<SagaView>>, QueryError> {
    let mut params = Params::new(pairs, &["state", "limit", "cursor"]);
    let state = params
        .one_of("state", &STATES)
        .and_then(|s| SagaState::parse(&s));
    let limit = params.limit();
    let cursor = params.cursor();
    params.finish()?;
    let documents: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT document FROM saga.sagas
         WHERE ($1::text IS NULL OR state = $1)
           AND ($2::timestamptz IS NULL OR (started_at, order_id) < ($2, $3))
         ORDER BY started_at DESC, order_id DESC LIMIT $4",
    )
    .bind(state.map(|s| s.as_str()))
    .bind(cursor.as_ref().map(|c| c.time))
    .bind(cursor.as_ref().map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(&pool)
    .await?;
    let sagas = documents
        .into_iter()
        .map(|d| serde_json::from_value::<Saga>(d).map(SagaView::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| QueryError::Unavailable(format!("a stored saga cannot be read: {e}")))?;
    Ok(Json(Page::of(sagas, limit, |s| Cursor {
        time: s.started_at,
        id: s.order_id,
    })))
}
