//! The two dependencies every service has, as readiness probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use event_store::{EventStoreError, KafkaSettings, Login, TopicAdmin, TopicSpec};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::sync::OnceCell;

use crate::readiness::{Dependency, Probe};
use crate::tls;

/// Postgres: reachable, and this service's migrations applied (run on the first
/// successful probe, under sqlx's advisory lock, so concurrent instances are safe).
pub fn postgres(pool: PgPool, migrators: Vec<Arc<Migrator>>) -> Dependency {
    let migrated = Arc::new(OnceCell::new());
    let migrators = Arc::new(migrators);
    let was_ready = Arc::new(AtomicBool::new(false));
    Dependency::new("postgres", Duration::from_secs(10), move || {
        let (pool, migrators, migrated) =
            (pool.clone(), Arc::clone(&migrators), Arc::clone(&migrated));
        let was_ready = Arc::clone(&was_ready);
        async move {
            match sqlx::query("SELECT 1").execute(&pool).await {
                Ok(_) => {}
                // At start, a certificate that is not trusted or a server without TLS
                // where TLS is required stops the service: waiting will not fix either.
                // Later (a certificate that expired while running) it is reported here.
                Err(e @ sqlx::Error::Tls(_)) if refused_tls(&e) => {
                    let reason = format!("Postgres refused TLS: {e}");
                    return if was_ready.load(Ordering::Relaxed) {
                        Probe::NotReady(reason)
                    } else {
                        Probe::Fatal(reason)
                    };
                }
                Err(e) => return Probe::NotReady(format!("cannot reach Postgres: {e}")),
            }
            was_ready.store(true, Ordering::Relaxed);
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

/// A TLS failure that is a verdict on the certificate or the server, not a connection cut
/// short (a restart, a failover), which waiting may fix.
fn refused_tls(error: &sqlx::Error) -> bool {
    let text = error.to_string();
    text.contains("certificate verify failed") || text.contains("does not support TLS")
}

/// The broker: reachable, and every topic the service uses present and fit for use.
/// A misconfigured topic is fatal; a missing one is waited for (`./dev up` or
/// `shopctl topics create` may still be creating it). A broker that refuses this client's
/// TLS handshake or SASL login (see [`login`]) is fatal at start, and reported as not
/// ready once the service has been ready.
pub fn kafka(admin: TopicAdmin, topics: Vec<TopicSpec>, settings: KafkaSettings) -> Dependency {
    let topics = Arc::new(topics);
    let timeout = settings.timeout;
    let was_ready = Arc::new(AtomicBool::new(false));
    // Metadata and describe-configs each take up to `timeout`, the login check as long,
    // and the handshake naming a refused certificate twice that.
    Dependency::new("kafka", timeout * 5 + Duration::from_secs(1), move || {
        let (admin, topics, settings) = (admin.clone(), Arc::clone(&topics), settings.clone());
        let was_ready = Arc::clone(&was_ready);
        async move {
            match admin.preflight(&topics).await {
                Ok(()) => {
                    was_ready.store(true, Ordering::Relaxed);
                    Probe::Ready
                }
                Err(e) if e.is_unavailable() => match login(settings).await {
                    Login::Refused(reason) if was_ready.load(Ordering::Relaxed) => {
                        Probe::NotReady(reason)
                    }
                    Login::Refused(reason) => Probe::Fatal(reason),
                    Login::NoAnswer(Some(last)) => Probe::NotReady(format!("{e} (last: {last})")),
                    Login::Accepted | Login::NoAnswer(None) => Probe::NotReady(e.to_string()),
                },
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

/// Whether the brokers take this client's TLS handshake and SASL login. A refusal says
/// why: librdkafka's report, or, when the certificate was refused, OpenSSL's verdict on it
/// (expired, unknown authority, another name), which librdkafka does not give.
pub async fn login(settings: KafkaSettings) -> Login {
    tokio::task::spawn_blocking(move || {
        let refused = match settings.try_login(settings.timeout) {
            Ok(Login::Refused(reason)) => reason,
            Ok(other) => return other,
            Err(e) => e.to_string(),
        };
        let first = settings.brokers.split(',').next().unwrap_or_default();
        let verdict = match tls::host_and_port(first) {
            Some((host, port)) if settings.security.protocol.uses_tls() => {
                let ca = settings.security.ca_file.as_deref();
                match tls::handshake(&host, port, tls::Trust::Only(ca), settings.timeout) {
                    tls::Handshake::Refused(verdict) => Some(verdict),
                    _ => None,
                }
            }
            _ => None,
        };
        Login::Refused(format!(
            "Kafka refused the connection: {}",
            verdict.unwrap_or(refused)
        ))
    })
    .await
    .unwrap_or(Login::NoAnswer(None))
}

/// Puts a service's migrations and their bookkeeping table into the service's own schema,
/// so services sharing one database never see each other's migration history.
pub fn schema_migrator(mut migrator: Migrator, schema: &'static str) -> Arc<Migrator> {
    migrator.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
    migrator.create_schema(schema);
    Arc::new(migrator)
}
