//! The command API over HTTP, behind the shared API-key gate
//! ([`service_runtime::api_keys`]: 401 without a key, 429 past its rate). Layout:
//! - [`body`] and [`fields`]: the JSON body (415, 413, 400) and its fields (422, all at once);
//! - [`context`]: correlation id and trace context on every request and command;
//! - [`idempotency`]: `Idempotency-Key` and `If-Match`;
//! - [`users`], [`orders`]: the handlers;
//! - [`error`]: the one mapping of failures to problem+json;
//! - [`openapi`]: the OpenAPI document, generated from the handlers' annotations;
//! - [`peer`]: what instances ask of each other (commands for partitions written there).

pub mod body;
pub mod context;
pub mod error;
pub mod fields;
pub mod idempotency;
pub mod openapi;
pub mod orders;
pub mod peer;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use event_store::aggregate::Aggregate;
use event_store::outcome::Outcome;
use event_store::position::Position;
use event_store::writer::host::WriteModel;
use schemas::{Command, CommandMeta, MessageFamily};
use serde::Serialize;
use service_runtime::api_keys::Principal;
use service_runtime::personal_data::{EmailIndex, KeyStore};
use tower::ServiceBuilder;
use utoipa::ToSchema;

use crate::config::Config;
use crate::write_models::WriteModels;
use context::RequestContext;
use error::ApiError;
use idempotency::CommandIds;
use idempotency::answers::KeyedRuns;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub models: Arc<WriteModels>,
    /// Runs each keyed request once (see [`idempotency::answers`]).
    pub keyed_runs: KeyedRuns,
    /// The longest a command may take; past it, 503.
    pub command_timeout: Duration,
    /// The users' keys, which seal their personal fields.
    pub keys: KeyStore,
    /// The blind index giving each email address its claim id.
    pub email_index: EmailIndex,
}

impl AppState {
    /// The issuer of a request: its commands get ids derived from its `Idempotency-Key`,
    /// or fresh ones.
    pub fn issuer(
        &self,
        context: RequestContext,
        principal: &Principal,
        headers: &axum::http::HeaderMap,
    ) -> Result<Issuer, ApiError> {
        let ids = CommandIds::of(principal, headers)?;
        Ok(Issuer::new(context, ids, self.command_timeout))
    }
}

/// The answer to an accepted command.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The aggregate's id.
    pub id: String,
    /// Its version after the command.
    pub version: u64,
    /// Where its last event is in the log: pass it as `min_position` to queries to read
    /// your own write.
    pub position: Option<String>,
}

impl Accepted {
    fn from_outcome(id: String, version: u64, position: Option<Position>) -> Self {
        Self {
            id,
            version,
            position: position.map(|p| p.to_string()),
        }
    }

    /// 200 with the body.
    pub fn ok(self) -> Response {
        (StatusCode::OK, axum::Json(self)).into_response()
    }

    /// 201 with the body and `Location: <collection>/<id>`.
    pub fn created(self, collection: &str) -> Response {
        let location = HeaderValue::from_str(&format!("{collection}/{}", self.id));
        let mut response = (StatusCode::CREATED, axum::Json(self)).into_response();
        if let Ok(location) = location {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

/// Builds and runs the commands of one request.
#[derive(Clone, Debug)]
pub struct Issuer {
    context: RequestContext,
    ids: CommandIds,
    timeout: Duration,
}

impl Issuer {
    pub fn new(context: RequestContext, ids: CommandIds, timeout: Duration) -> Self {
        Self {
            context,
            ids,
            timeout,
        }
    }

    pub fn ids(&self) -> &CommandIds {
        &self.ids
    }

    /// Step `step` of the request, as a command.
    pub fn command<C: MessageFamily>(
        &self,
        step: &str,
        payload: C,
        expected: Option<u64>,
    ) -> Command<C> {
        let id = self.ids.command(step);
        Command {
            meta: CommandMeta {
                id,
                issuer: schemas::envelope::source_of("command-api"),
                expected_version: expected,
                issued_at: chrono::Utc::now(),
                correlation_id: self.context.correlation_id,
                causation_id: id.as_uuid(),
                traceparent: self.context.traceparent,
            },
            payload,
        }
    }

    /// Runs `command` on `model`, bounded by the request's timeout.
    pub async fn run<A: Aggregate>(
        &self,
        model: &WriteModel<A>,
        command: Command<A::Command>,
    ) -> Result<Outcome<A::Rejection>, ApiError> {
        let kind = command.payload.type_name();
        tracing::debug!(command = kind, id = %command.meta.id, "executing");
        match tokio::time::timeout(self.timeout, model.execute(command)).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(ApiError::from_store(e)),
            Err(_) => Err(ApiError::Unavailable(format!(
                "{kind} not decided within {:?}",
                self.timeout
            ))),
        }
    }

    /// An aggregate's current version and state, from its writer.
    pub async fn state_of<A: Aggregate>(
        &self,
        model: &WriteModel<A>,
        id: &str,
    ) -> Result<(u64, A::State), ApiError> {
        match tokio::time::timeout(self.timeout, model.state_of(id)).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => Err(ApiError::from_store(e)),
            Err(_) => Err(ApiError::Unavailable(format!(
                "state of {id} not read within {:?}",
                self.timeout
            ))),
        }
    }
}

/// The outcome of the command a request is about, as its answer (or error).
pub fn accepted<R: Serialize>(
    outcome: Outcome<R>,
    not_found: &'static str,
) -> Result<Accepted, ApiError> {
    match outcome {
        Outcome::Accepted {
            aggregate_id,
            version,
            position,
        } => Ok(Accepted::from_outcome(aggregate_id, version, position)),
        Outcome::Conflict {
            aggregate_id,
            current: 0,
            ..
        } => Err(ApiError::NotFound {
            what: not_found,
            id: aggregate_id,
        }),
        Outcome::Conflict {
            expected, current, ..
        } => Err(ApiError::VersionConflict { expected, current }),
        Outcome::Rejected {
            aggregate_id,
            reason,
            ..
        } => {
            let error = ApiError::rejected(&reason);
            match &error {
                ApiError::Rejected { rejection }
                    if rejection["code"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("unknown-")) =>
                {
                    Err(ApiError::NotFound {
                        what: not_found,
                        id: aggregate_id,
                    })
                }
                _ => Err(error),
            }
        }
    }
}

/// The command API's OpenAPI document, as `GET /openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    service_runtime::openapi::documented(openapi::routes()).1
}

/// The command API's routes, behind the API-key gate, and the peers' routes, behind
/// theirs; both with body and in-flight limits.
pub fn router(state: AppState, config: &Config) -> Router {
    let (api, document) = service_runtime::openapi::documented(openapi::routes());
    let api = api.layer(axum::middleware::from_fn_with_state(
        state.keyed_runs.clone(),
        idempotency::answers::run_once,
    ));
    let api = config
        .gate
        .guard(api)
        .merge(peer::routes(&config.peer_key))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::Overloaded
                }))
                .load_shed()
                .concurrency_limit(config.max_in_flight),
        )
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(context::correlate))
        .with_state(state);
    api.merge(service_runtime::openapi::document_route(document))
}
