//! The routes instances of the command API call on each other. An instance that does not
//! write an aggregate's partition hands the command (or the read of its state) to the
//! instance that does ([`event_store::writer::peers`]); here it is executed by a writer of
//! this instance or refused with 421, never passed on again. Callers authenticate with
//! the peers' key (`PEER_KEY`), not with a client's API key, and are not rate limited:
//! the client's request was counted where it came in.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use event_store::aggregate::Aggregate;
use event_store::error::EventStoreError;
use event_store::writer::host::WriteModel;
use event_store::writer::peers::{
    NOT_OWNER_STATUS, PEER_COMMANDS_PATH, PEER_STATE_PATH, PeerState,
};
use schemas::{CommandDocument, MessageFamily};
use service_runtime::api_keys::Gate;
use service_runtime::problem::Problem;

use super::AppState;
use crate::write_models::WriteModels;

/// The peer routes, behind a gate that knows only the peers' key.
pub fn routes(peer_key: &str) -> Router<AppState> {
    let gate = Gate::for_key(peer_key);
    gate.guard(
        Router::new()
            .route(PEER_COMMANDS_PATH, axum::routing::post(execute))
            .route(PEER_STATE_PATH, axum::routing::get(state)),
    )
}

/// What a peer asks of one write model.
enum Ask {
    Execute(Box<CommandDocument>),
    State(String),
}

async fn execute(
    State(app): State<AppState>,
    Path(service): Path<String>,
    body: Bytes,
) -> Response {
    match CommandDocument::from_json(&body) {
        Ok(document) => answer(&app.models, &service, Ask::Execute(Box::new(document))).await,
        Err(e) => Problem::new(
            StatusCode::BAD_REQUEST,
            format!("not a command document: {e}"),
        )
        .into_response(),
    }
}

async fn state(
    State(app): State<AppState>,
    Path((service, aggregate_id)): Path<(String, String)>,
) -> Response {
    answer(&app.models, &service, Ask::State(aggregate_id)).await
}

async fn answer(models: &WriteModels, service: &str, ask: Ask) -> Response {
    let answer = if service == service_of(&models.users) {
        ask_model(&models.users, ask).await
    } else if service == service_of(&models.emails) {
        ask_model(&models.emails, ask).await
    } else if service == service_of(&models.orders) {
        ask_model(&models.orders, ask).await
    } else if service == service_of(&models.payments) {
        ask_model(&models.payments, ask).await
    } else if service == service_of(&models.notifications) {
        ask_model(&models.notifications, ask).await
    } else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            format!("no write model {service:?} here"),
        )
        .into_response();
    };
    match answer {
        Ok(body) => axum::Json(body).into_response(),
        Err(problem) => problem.into_response(),
    }
}

fn service_of<A: Aggregate>(_: &WriteModel<A>) -> &'static str {
    A::Event::SERVICE
}

async fn ask_model<A: Aggregate>(
    model: &WriteModel<A>,
    ask: Ask,
) -> Result<serde_json::Value, Problem> {
    let encoded = match ask {
        Ask::Execute(document) => {
            let command = (*document).decode::<A::Command>().map_err(|e| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!("not a command of {}: {e}", A::Event::SERVICE),
                )
            })?;
            let outcome = model.execute_here(command).await.map_err(problem_of)?;
            serde_json::to_value(outcome)
        }
        Ask::State(aggregate_id) => {
            let (version, state) = model.state_here(&aggregate_id).await.map_err(problem_of)?;
            serde_json::to_value(PeerState { version, state })
        }
    };
    encoded.map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The status a peer reads the error from (see `event_store::writer::peers`).
fn problem_of(error: EventStoreError) -> Problem {
    let status = match &error {
        EventStoreError::NotOwner { .. } => {
            StatusCode::from_u16(NOT_OWNER_STATUS).unwrap_or(StatusCode::MISDIRECTED_REQUEST)
        }
        EventStoreError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Problem::new(status, error.to_string())
}
