//! The saga orchestrator: drives order -> payment -> notification, compensates failed or
//! timed-out steps, and keeps each saga's state and consumed offsets in Postgres.
//!
//! - [`config`]: settings from the environment;
//! - [`build`]: assembles the service (routes, dependencies, migrations) ready to run.

pub mod config;

use std::sync::Arc;

use service_runtime::{BoundService, Service, ServiceError, probes};
use sqlx::migrate::Migrator;

pub use config::Config;

/// The service name, in logs, metrics and `/health`.
pub const NAME: &str = "saga-orchestrator";

/// The Postgres schema this service owns; its migrations and their history live there.
pub const SCHEMA: &str = "saga";

/// This service's migrations, applied into [`SCHEMA`] when Postgres is first reachable.
pub fn migrator() -> Arc<Migrator> {
    probes::schema_migrator(sqlx::migrate!("./migrations"), SCHEMA)
}

/// Assembles the service: it depends on the broker (its topics) and on Postgres.
pub async fn build(config: Config) -> Result<BoundService, ServiceError> {
    let (service, _pool) = Service::on_infrastructure(NAME, &config.service, vec![migrator()])?;
    service.bind().await
}
