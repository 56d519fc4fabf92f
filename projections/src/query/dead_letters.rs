//! The records the read models parked, over HTTP, for operators (an operator key; a client
//! key gets 403): list them, retry an aggregate's parked records or skip the one at their
//! head (the same actions as `shopctl dead-letters`, each one transaction under the
//! model's lock).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Serialize;
use service_runtime::api_keys::Operator;
use utoipa::ToSchema;

use super::QueryState;
use crate::projector::operator::{self, ParkedRecord, RetryReport};
use crate::{Caller, ParkedAction, READ_MODELS};
use service_runtime::query::QueryError;
use service_runtime::query::{Params, is_plain_text};

type Pairs = Query<Vec<(String, String)>>;

/// A parked record and the read model that parked it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    pub read_model: &'static str,
    pub record: ParkedRecord,
}

/// Parked records, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetters {
    pub items: Vec<DeadLetter>,
}

/// What an operator's retry or skip did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterAction {
    pub read_model: String,
    pub aggregate: String,
    /// The record a skip removed.
    pub skipped: Option<ParkedRecord>,
    pub report: RetryReport,
}

/// `GET /v1/dead-letters?read_model=&aggregate=&limit=`
#[utoipa::path(
    get, path = "/v1/dead-letters", tag = "dead letters",
    description = "For operators (an operator key; a client key gets 403): records the read models parked (a poison event, an unreadable record, a version gap, and what waits behind it), oldest first per read model. No cursor: deal with the oldest, then list again.",
    params(
        ("read_model" = Option<String>, Query, description = "users, orders, payments, notifications or event_index"),
        ("aggregate" = Option<String>, Query, description = "only this aggregate"),
        ("limit" = Option<u32>, Query, description = "1 to 100 per read model (default 20)", minimum = 1, maximum = 100),
    ),
    responses(
        (status = 200, description = "the parked records", body = DeadLetters),
        (status = 401, description = "no valid API key"),
        (status = 403, description = "a client key: this needs an operator key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<QueryState>,
    _: Operator,
    Query(pairs): Pairs,
) -> Result<Json<DeadLetters>, QueryError> {
    let mut params = Params::new(pairs, &["read_model", "aggregate", "limit"]);
    let model = params.one_of("read_model", &READ_MODELS);
    let aggregate = params.text("aggregate");
    let limit = params.limit();
    params.finish()?;
    let mut items = Vec::new();
    for name in READ_MODELS {
        if model.as_deref().is_some_and(|m| m != name) {
            continue;
        }
        let parked =
            operator::list(&state.pool, state.schema(name), aggregate.as_deref(), limit).await?;
        items.extend(parked.into_iter().map(|record| DeadLetter {
            read_model: name,
            record,
        }));
    }
    Ok(Json(DeadLetters { items }))
}

/// `POST /v1/dead-letters/{read_model}/{aggregate}/retry`
#[utoipa::path(
    post, path = "/v1/dead-letters/{read_model}/{aggregate}/retry", tag = "dead letters",
    description = "For operators (an operator key; a client key gets 403): applies the aggregate's parked records in log order, as far as they now go (after a fix was deployed, or once a missing record arrived).",
    params(
        ("read_model" = String, Path, description = "users, orders, payments, notifications or event_index"),
        ("aggregate" = String, Path, description = "the parked aggregate, its `aggregate_id` as listed (percent-encode a `/`)"),
    ),
    responses(
        (status = 200, description = "what the retry did", body = DeadLetterAction),
        (status = 401, description = "no valid API key"),
        (status = 403, description = "a client key: this needs an operator key"),
        (status = 404, description = "no such read model, or nothing parked for that aggregate"),
        (status = 422, description = "an aggregate id that cannot be one (control characters, over 200 characters)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
    ),
    security(("bearer" = []))
)]
pub async fn retry(
    State(state): State<QueryState>,
    Operator(caller): Operator,
    Path((model, aggregate)): Path<(String, String)>,
) -> Result<Json<DeadLetterAction>, QueryError> {
    act(&state, &caller, model, aggregate, ParkedAction::Retry).await
}

/// `POST /v1/dead-letters/{read_model}/{aggregate}/skip`
#[utoipa::path(
    post, path = "/v1/dead-letters/{read_model}/{aggregate}/skip", tag = "dead letters",
    description = "For operators (an operator key; a client key gets 403): removes the record at the head of the aggregate's parked records without applying it, then retries the rest. The read model knowingly misses that record.",
    params(
        ("read_model" = String, Path, description = "users, orders, payments, notifications or event_index"),
        ("aggregate" = String, Path, description = "the parked aggregate, its `aggregate_id` as listed (percent-encode a `/`)"),
    ),
    responses(
        (status = 200, description = "the skipped record and what the retry of the rest did", body = DeadLetterAction),
        (status = 401, description = "no valid API key"),
        (status = 403, description = "a client key: this needs an operator key"),
        (status = 404, description = "no such read model, or nothing parked for that aggregate"),
        (status = 422, description = "an aggregate id that cannot be one (control characters, over 200 characters)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
    ),
    security(("bearer" = []))
)]
pub async fn skip(
    State(state): State<QueryState>,
    Operator(caller): Operator,
    Path((model, aggregate)): Path<(String, String)>,
) -> Result<Json<DeadLetterAction>, QueryError> {
    act(&state, &caller, model, aggregate, ParkedAction::Skip).await
}

async fn act(
    state: &QueryState,
    caller: &service_runtime::api_keys::Principal,
    model: String,
    aggregate: String,
    action: ParkedAction,
) -> Result<Json<DeadLetterAction>, QueryError> {
    if !is_plain_text(&aggregate) {
        return Err(QueryError::invalid(
            "aggregate",
            "must be 1 to 200 characters, no control characters",
        ));
    }
    let caller = Caller {
        role: caller.role.as_str(),
        principal: &caller.fingerprint,
    };
    match crate::act_on_parked(&state.pool, &model, &aggregate, action, caller).await {
        Ok((skipped, report)) => Ok(Json(DeadLetterAction {
            read_model: model,
            aggregate,
            skipped,
            report,
        })),
        Err(e) => Err(e.into()),
    }
}
