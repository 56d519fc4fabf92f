//! The operators' web console. The page (`web/`, TypeScript built with Vite) is static
//! and served by the gateway at `/console/`; it reads and acts through the public APIs
//! (orders, users, sagas, dead letters, each with its own key checks) and through this
//! service's API at `/console/api/`, which shows what only operators' tools read: the
//! topics and their ends, records found through the event index, live tails of a topic
//! (server-sent events), the causal tree of a correlation id, every reader's lag, the
//! sagas counted by state and the commands each saga issued. Every route needs an API key;
//! none of them changes anything.
//!
//! - [`streams`]: topics, event search, live tails;
//! - [`readers`]: lag, sagas by state, causal trees;
//! - [`config`].

pub mod config;
pub mod readers;
pub mod streams;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use service_runtime::{BoundService, Infrastructure, Service, ServiceError};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The service name, in logs, metrics and `/health`.
pub const NAME: &str = "web-console";

/// What the console's routes work with.
#[derive(Clone, Debug)]
pub struct Console {
    pub infra: Infrastructure,
    pub pool: PgPool,
    /// One permit per live tail.
    pub tails: Arc<Semaphore>,
    pub lag_objective: std::time::Duration,
    /// The last measure of the readers' lag, shared by every page asking.
    pub lag: readers::LagCache,
    /// Cancelled when the service stops: live tails end, so that stopping does not wait
    /// for pages to close them.
    pub stopping: CancellationToken,
}

/// Assembles the service: its API over the broker and Postgres, nothing running besides.
pub async fn build(config: Config) -> Result<BoundService, ServiceError> {
    let (service, pool) = Service::on_infrastructure(NAME, &config.service, Vec::new())?;
    let stopping = CancellationToken::new();
    let console = Console {
        infra: config.service.infrastructure.clone(),
        pool,
        tails: Arc::new(Semaphore::new(config.live_tails)),
        lag_objective: config.lag_objective,
        lag: readers::LagCache::default(),
        stopping: stopping.clone(),
    };
    service
        .worker(Box::new(move |stop| {
            Box::pin(async move {
                stop.cancelled().await;
                stopping.cancel();
            })
        }))
        .routes(config.gate.guard(router(console)))
        .bind()
        .await
}

/// The console's API; the caller puts it behind a key check.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/console/api/whoami", get(readers::whoami))
        .route("/console/api/topics", get(streams::topics))
        .route("/console/api/topics/{topic}/tail", get(streams::tail))
        .route("/console/api/events", get(streams::search))
        .route("/console/api/readers", get(readers::lag))
        .route("/console/api/sagas/counts", get(readers::saga_counts))
        .route(
            "/console/api/sagas/{order_id}/commands",
            get(readers::saga_commands),
        )
        .route(
            "/console/api/explain/{correlation_id}",
            get(readers::explain),
        )
        .with_state(console)
}
