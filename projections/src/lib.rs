//! The read side: projectors consume the event topics into per-service read models in
//! Postgres (offsets in the same transaction as the rows), and the query API serves them.
//!
//! - [`config`]: settings from the environment;
//! - [`build`]: assembles the service (routes, dependencies, migrations) ready to run.

pub mod config;

use std::sync::Arc;

use service_runtime::{BoundService, Service, ServiceError, probes};
use sqlx::migrate::Migrator;

pub use config::Config;

/// The service name, in logs, metrics and `/health`.
pub const NAME: &str = "projections";

/// The Postgres schema this service owns; its migrations and their history live there.
pub const SCHEMA: &str = "projections";

/// This service's migrations, applied into [`SCHEMA`] when Postgres is first reachable.
pub fn migrator() -> Arc<Migrator> {
    probes::schema_migrator(sqlx::migrate!("./migrations"), SCHEMA)
}

/// Assembles the service: it depends on the broker (its topics) and on Postgres.
pub async fn build(config: Config) -> Result<BoundService, ServiceError> {
    let (service, _pool) = Service::on_infrastructure(NAME, &config.service, vec![migrator()])?;
    service.bind().await
}
