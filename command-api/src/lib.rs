//! The command side: HTTP commands for users and orders, validated by pure aggregates and
//! appended to the log by the event store's single writer per partition.
//!
//! - [`domain`]: the aggregates, pure decide / evolve;
//! - [`config`]: settings from the environment;
//! - [`build`]: assembles the service (routes, dependencies) ready to run.

pub mod config;
pub mod domain;
pub mod http;
pub mod write_models;

use std::sync::Arc;
use std::time::Duration;

use event_store::writer::snapshot::SnapshotStore;
use service_runtime::personal_data::KeyStore;
use service_runtime::readiness::{Dependency, Probe};
use service_runtime::{BoundService, Service, ServiceError, probes};

use http::peer::HttpForward;
use write_models::WriteModels;

pub use config::Config;

/// The service name, in logs, metrics and `/health`.
pub const NAME: &str = "command-api";

/// The Postgres schema of the command API's own tables (idempotency keys).
pub const SCHEMA: &str = "command_api";

/// Assembles the command API: the write models it hosts (as workers), their snapshot and
/// idempotency tables (migrated into their own schemas), and the HTTP routes.
pub async fn build(config: Config) -> Result<BoundService, ServiceError> {
    let migrators = vec![
        Arc::new(SnapshotStore::migrator()),
        probes::schema_migrator(sqlx::migrate!("./migrations"), SCHEMA),
        KeyStore::migrator(),
    ];
    if config.email_index.is_development() {
        tracing::warn!(
            "EMAIL_INDEX_KEY is not set: email claim ids use the public development key; set a secret of your own before the first registration"
        );
    }
    let (mut service, pool) = Service::on_infrastructure(NAME, &config.service, migrators)?;
    let forward = HttpForward::new(config.peer_key.clone(), config.command_timeout);
    let (models, workers) = WriteModels::new(&config, pool.clone(), forward, service.registry());
    for worker in workers {
        service = service.worker(worker);
    }
    service = service.depends_on(writers_serving(models.clone()));
    let peers = models.peers.clone();
    let state = http::AppState {
        models: Arc::new(models),
        keyed_runs: http::idempotency::answers::KeyedRuns::new(
            pool.clone(),
            config.command_timeout,
        ),
        command_timeout: config.command_timeout,
        keys: KeyStore::new(pool),
        email_index: config.email_index.clone(),
    };
    let bound = service.routes(http::router(state, &config)).bind().await?;
    let me = config
        .advertised_url
        .clone()
        .unwrap_or_else(|| advertised(bound.local_addr()));
    peers.set_me(me);
    Ok(bound)
}

/// Ready once every partition the writers' groups gave this instance is served here.
fn writers_serving(models: WriteModels) -> Dependency {
    Dependency::new("writers", Duration::from_secs(1), move || {
        let pending = models.not_serving();
        async move {
            if pending.is_empty() {
                Probe::Ready
            } else {
                Probe::NotReady(pending.join("; "))
            }
        }
    })
}

/// How peers reach an instance bound to `addr` when `ADVERTISED_URL` is not set: that
/// address, or on every interface the host's name (a container's name on its network).
fn advertised(addr: std::net::SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return format!("http://{addr}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        tracing::warn!(%addr, "no host name: peers on other hosts cannot forward commands here; set ADVERTISED_URL");
        return format!("http://127.0.0.1:{}", addr.port());
    }
    format!("http://{host}:{}", addr.port())
}
