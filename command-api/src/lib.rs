//! The command side: HTTP commands for users and orders, validated by pure aggregates and
//! appended to the log by the event store's single writer per partition.
//!
//! - [`config`]: settings from the environment;
//! - [`build`]: assembles the service (routes, dependencies) ready to run.

pub mod config;

use service_runtime::{BoundService, Service, ServiceError, probes};

pub use config::Config;

/// The service name, in logs, metrics and `/health`.
pub const NAME: &str = "command-api";

/// Assembles the command API: it depends on the broker (its topics) and on Postgres.
pub async fn build(config: Config) -> Result<BoundService, ServiceError> {
    let infra = &config.service.infrastructure;
    let admin = infra
        .admin()
        .map_err(|e| ServiceError::Fatal(e.to_string()))?;
    Service::new(NAME, config.service.addr)
        .depends_on(probes::kafka(
            admin,
            infra.topic_specs(),
            infra.kafka.timeout,
        ))
        .depends_on(probes::postgres(infra.pool(), None))
        .bind()
        .await
}
