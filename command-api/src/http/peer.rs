//! The peer protocol: how instances of the command API hand each other commands. An
//! instance that does not write an aggregate's partition hands the command (or the read of
//! its state) to the instance that does ([`event_store::writer::peers`] finds it; the
//! [`HttpForward`] here carries it); the receiving routes execute it on a writer of their
//! own instance or refuse with 421, never passing it on again. Callers authenticate with
//! the peers' key (`PEER_KEY`), not with a client's API key, and are not rate limited:
//! the client's request was counted where it came in.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use event_store::aggregate::Aggregate;
use event_store::error::EventStoreError;
use event_store::writer::host::WriteModel;
use event_store::writer::peers::{Answer, Forward, PeerState};
use schemas::{CommandDocument, MessageFamily};
use service_runtime::api_keys::Gate;
use service_runtime::problem::Problem;

use super::AppState;
use crate::write_models::WriteModels;

/// Where an instance accepts commands from its peers: `{service}` is the write model's
/// service name (`users`, `orders`, ...).
pub const PEER_COMMANDS_PATH: &str = "/internal/writers/{service}/commands";
/// Where an instance answers its peers with an aggregate's current version and state.
pub const PEER_STATE_PATH: &str = "/internal/writers/{service}/aggregates/{aggregate_id}";

/// The status an instance answers a peer with when it does not write the partition.
pub const NOT_OWNER_STATUS: StatusCode = StatusCode::MISDIRECTED_REQUEST;

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

/// The store's error as the peer protocol answers it: the status is what the asking peer
/// turns back into the error ([`answer_of`], the other half of this mapping); the public
/// API's mapping is `http/error.rs`, where "not the owner" is a 503 to retry.
fn problem_of(error: EventStoreError) -> Problem {
    let status = match &error {
        EventStoreError::NotOwner { .. } => NOT_OWNER_STATUS,
        EventStoreError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Problem::new(status, error.to_string())
}

/// The way to the peers over HTTP, with the peers' shared key.
#[derive(Clone, Debug)]
pub struct HttpForward {
    key: String,
    client: reqwest::Client,
}

impl HttpForward {
    /// `key` authenticates instances to each other; every instance must have the same.
    /// Each call is bounded by `timeout`.
    pub fn new(key: String, timeout: Duration) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("a reqwest client with timeouts builds");
        Arc::new(Self { key, client })
    }
}

impl Forward for HttpForward {
    fn execute<'a>(
        &'a self,
        owner: &'a str,
        service: &'static str,
        partition: i32,
        command: &'a CommandDocument,
    ) -> Answer<'a> {
        let url = format!(
            "{owner}{}",
            PEER_COMMANDS_PATH.replace("{service}", service)
        );
        let request = self
            .client
            .post(url)
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(command.to_json());
        Box::pin(answer_of(request, service, partition))
    }

    fn state<'a>(
        &'a self,
        owner: &'a str,
        service: &'static str,
        partition: i32,
        aggregate_id: &'a str,
    ) -> Answer<'a> {
        let path = PEER_STATE_PATH
            .replace("{service}", service)
            .replace("{aggregate_id}", &encode_segment(aggregate_id));
        let request = self
            .client
            .get(format!("{owner}{path}"))
            .bearer_auth(&self.key);
        Box::pin(answer_of(request, service, partition))
    }
}

/// A peer's answer: the JSON body of a 200, or the error its status stands for.
async fn answer_of(
    request: reqwest::RequestBuilder,
    service: &'static str,
    partition: i32,
) -> Result<serde_json::Value, EventStoreError> {
    let unavailable = |reason: String| EventStoreError::Unavailable {
        operation: "forward to the partition's writer",
        reason,
    };
    let response = request.send().await.map_err(|e| {
        // Nobody listens there (the owner died, or moved away): as good as "not owner",
        // which makes the caller look again. Anything else may have reached the owner.
        if e.is_connect() {
            EventStoreError::NotOwner { service, partition }
        } else {
            unavailable(e.to_string())
        }
    })?;
    let status = response.status();
    match status {
        StatusCode::OK => response
            .json()
            .await
            .map_err(|e| unavailable(e.to_string())),
        NOT_OWNER_STATUS => Err(EventStoreError::NotOwner { service, partition }),
        _ => {
            let body = response.text().await.unwrap_or_default();
            let reason = format!("the owner answered {status}: {}", body.trim());
            if status.is_server_error() {
                Err(unavailable(reason))
            } else {
                Err(EventStoreError::Refused {
                    operation: "forward to the partition's writer",
                    reason,
                })
            }
        }
    }
}

/// `id` as one URL path segment.
fn encode_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregate_id_is_one_path_segment() {
        assert_eq!(encode_segment("a-b_c.d~9"), "a-b_c.d~9");
        assert_eq!(encode_segment("a/b c%"), "a%2Fb%20c%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }
}
