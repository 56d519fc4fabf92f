//! The command side: HTTP commands for users and orders, validated by pure aggregates and
//! appended to the log by the event store's single writer per partition.
//!
//! - [`domain`]: the aggregates, pure decide / evolve;
//! - [`config`]: settings from the environment;
//! - [`build`]: assembles the service (routes, dependencies) ready to run.

pub mod config;
pub mod domain;

use service_runtime::{BoundService, Service, ServiceError};

pub use config::Config;

/// The service name, in logs, metrics and `/health`.
pub const NAME: &str = "command-api";

/// Assembles the command API: it depends on the broker (its topics) and on Postgres.
pub async fn build(config: Config) -> Result<BoundService, ServiceError> {
    let (service, _pool) = Service::on_infrastructure(NAME, &config.service, None)?;
    service.bind().await
}
