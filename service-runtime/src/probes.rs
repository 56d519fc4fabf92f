//! The two dependencies every service has, as readiness probes.

use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStoreError, TopicAdmin, TopicSpec};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::sync::OnceCell;

use crate::readiness::{Dependency, Probe};

/// Postgres: reachable, and this service's migrations applied (run on the first
/// successful probe, under sqlx's advisory lock, so concurrent instances are safe).
pub fn postgres(pool: PgPool, migrators: Vec<Arc<Migrator>>) -> Dependency {
    let migrated = Arc::new(OnceCell::new());
    let migrators = Arc::new(migrators);
    Dependency::new("postgres", Duration::from_secs(10), move || {
        let (pool, migrators, migrated) =
            (pool.clone(), Arc::clone(&migrators), Arc::clone(&migrated));
        async move {
            if let Err(e) = sqlx::query("SELECT 1").execute(&pool).await {
                return Probe::NotReady(format!("cannot reach Postgres: {e}"));
            }
            let applied = migrated
                .get_or_try_init(|| async {
                    for migrator in migrators.iter() {
                        migrator.run(&pool).await?;
                    }
                    tracing::info!(migrators = migrators.len(), "migrations applied");
                    Ok::<(), sqlx::migrate::MigrateError>(())
                })
                .await;
            match applied {
                Ok(()) => Probe::Ready,
                Err(e) => {
                    tracing::error!(error = %e, "migrations failed");
                    Probe::NotReady(format!("migrations failed: {e}"))
                }
            }
        }
    })
}

/// The broker: reachable, and every topic the service uses present and fit for use.
/// A misconfigured topic is fatal; a missing one is waited for (`./dev up` or
/// `shopctl topics create` may still be creating it).
pub fn kafka(admin: TopicAdmin, topics: Vec<TopicSpec>, timeout: Duration) -> Dependency {
    let topics = Arc::new(topics);
    // Metadata and describe-configs each take up to `timeout`.
    Dependency::new("kafka", timeout * 2 + Duration::from_secs(1), move || {
        let (admin, topics) = (admin.clone(), Arc::clone(&topics));
        async move {
            match admin.preflight(&topics).await {
                Ok(()) => Probe::Ready,
                Err(EventStoreError::Topic(problem)) if problem.is_fatal() => {
                    Probe::Fatal(problem.to_string())
                }
                Err(EventStoreError::Topic(problem)) => Probe::NotReady(format!(
                    "{problem} (create topics with `shopctl topics create`)"
                )),
                Err(e) => Probe::NotReady(e.to_string()),
            }
        }
    })
}

/// Puts a service's migrations and their bookkeeping table into the service's own schema,
/// so services sharing one database never see each other's migration history.
pub fn schema_migrator(mut migrator: Migrator, schema: &'static str) -> Arc<Migrator> {
    migrator.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
    migrator.create_schema(schema);
    Arc::new(migrator)
}
