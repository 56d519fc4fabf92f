//! The saga visibility API: `GET /v1/sagas/{order_id}` and `GET /v1/sagas?state=&limit=&cursor=`.
//! Parameters and errors work as in the query API (one 422 with every invalid parameter,
//! 404 for an unknown order, 503 when Postgres cannot answer), so they share its types.

use axum::extract::{Path, Query, State};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use projections::query::error::QueryError;
use projections::query::params::{Cursor, Page, Params, path_id};
use serde::Serialize;
use service_runtime::openapi::BearerAuth;
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::saga::{Compensation, Failure, HistoryEntry, Saga, SagaState, Stage};
use crate::store;

type Pairs = Query<Vec<(String, String)>>;

/// A saga as the API shows it.
#[derive(Debug, Serialize)]
pub struct SagaView {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub correlation_id: Uuid,
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
pub fn router(pool: PgPool) -> (Router, utoipa::openapi::OpenApi) {
    let (routes, document) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(list))
        .routes(routes!(one))
        .split_for_parts();
    (routes.with_state(pool), document)
}

/// `GET /v1/sagas/{order_id}`
#[utoipa::path(
    get, path = "/v1/sagas/{order_id}", tag = "sagas",
    description = "The saga of one order.",
    params(("order_id" = Uuid, Path, description = "the order")),
    responses(
        (status = 200, description = "found", body = serde_json::Value),
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

const STATES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "failed",
];

/// `GET /v1/sagas?state=&limit=&cursor=`: newest first.
#[utoipa::path(
    get, path = "/v1/sagas", tag = "sagas",
    description = "Sagas, newest first, filtered by state (keyset pagination).",
    params(
        ("state" = Option<String>, Query, description = "running, compensating, completed, compensated or failed"),
        ("limit" = Option<u32>, Query, description = "1 to 100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "a page", body = serde_json::Value),
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
