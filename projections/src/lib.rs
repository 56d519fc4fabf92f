//! The read side: projectors consume the event topics into per-service read models in
//! Postgres (offsets in the same transaction as the rows), and the query API serves them.
//!
//! - [`config`]: settings from the environment;
//! - [`error`]: the crate's one error, by outcome;
//! - [`projector`]: the engine every read model runs on (reader rule, batching,
//!   checkpoints, parking, metrics, operator actions);
//! - [`read_models`]: users, orders, payments, notifications, and the event index;
//! - [`query`]: the HTTP query API;
//! - [`rebuild`]: rebuilding a read model from the log (blue/green or in place);
//! - [`build`]: assembles the service (workers, routes, readiness) ready to run.

pub mod config;
pub mod error;
pub mod projector;
pub mod query;
pub mod read_models;
pub mod rebuild;

use std::sync::Arc;
use std::time::Duration;

use projector::metrics::ProjectorMetrics;
use projector::runner::{Projector, ProjectorConfig};
use projector::{ReadModel, Schema};
use read_models::event_index::EventIndex;
use read_models::notifications::Notifications;
use read_models::orders::Orders;
use read_models::payments::Payments;
use read_models::users::Users;
use service_runtime::readiness::{Dependency, Probe};
use service_runtime::{BoundService, Service, ServiceError};
use sqlx::PgPool;

pub use config::Config;
pub use error::ProjectionError;
use query::{ModelView, QueryState};

/// The service name, in logs, metrics and `/health`.
pub const NAME: &str = "projections";

/// Every read model this service keeps, by name.
pub const READ_MODELS: [&str; 5] = [
    Users::NAME,
    Orders::NAME,
    Payments::NAME,
    Notifications::NAME,
    EventIndex::NAME,
];

/// The services whose event topics read model `name` reads.
pub fn services_read_by(name: &str) -> Option<&'static [&'static str]> {
    match name {
        Users::NAME => Some(Users::SERVICES),
        Orders::NAME => Some(Orders::SERVICES),
        Payments::NAME => Some(Payments::SERVICES),
        Notifications::NAME => Some(Notifications::SERVICES),
        EventIndex::NAME => Some(EventIndex::SERVICES),
        _ => None,
    }
}

/// Assembles the service: the projectors as workers, each with a readiness check on its
/// lag, and the query routes.
pub async fn build(config: Config) -> Result<BoundService, ServiceError> {
    let migrators = vec![service_runtime::personal_data::KeyStore::migrator()];
    let (mut service, pool) = Service::on_infrastructure(NAME, &config.service, migrators)?;
    let infra = &config.service.infrastructure;
    let projector_config = ProjectorConfig {
        kafka: infra.kafka.clone(),
        topics: infra.topics.clone(),
        batch_max: config.batch_max,
    };
    let metrics = ProjectorMetrics::register(service.registry());
    let objective =
        prometheus_client::metrics::gauge::Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    objective.set(config.lag_objective.as_secs_f64());
    service.registry().register(
        "projector_lag_objective_seconds",
        "PROJECTION_LAG_OBJECTIVE_SECONDS: the lag past which /ready answers 503",
        objective,
    );
    let mut views = Vec::new();
    let mut run = |service: Service, view: (ModelView, service_runtime::host::Worker)| {
        let (view, worker) = view;
        let probe = lag_probe(&view, config.lag_objective);
        views.push(view);
        service.worker(worker).depends_on(probe)
    };
    let setup = (&pool, &projector_config, &metrics);
    service = run(service, projector::<Users>(setup));
    service = run(service, projector::<Orders>(setup));
    service = run(service, projector::<Payments>(setup));
    service = run(service, projector::<Notifications>(setup));
    service = run(service, projector::<EventIndex>(setup));
    let census = DeadLetterCensus {
        pool: pool.clone(),
        models: views.iter().map(|v| (v.name, v.schema.clone())).collect(),
        gauge: metrics.dead_letters.clone(),
    };
    service = service.worker(Box::new(move |stop| Box::pin(census.run(stop))));
    let state = QueryState {
        pool,
        kafka: infra.kafka.clone(),
        topics: infra.topics.clone(),
        wait: config.query_wait,
        models: Arc::new(views),
    };
    let (routes, document) = query::router(state);
    service
        .routes(
            config
                .gate
                .guard(routes)
                .merge(service_runtime::openapi::document_route(document)),
        )
        .bind()
        .await
}

fn projector<M: ReadModel>(
    (pool, config, metrics): (&PgPool, &ProjectorConfig, &ProjectorMetrics),
) -> (ModelView, service_runtime::host::Worker) {
    let schema = Schema::live(M::NAME);
    let projector = Projector::<M>::new(
        pool.clone(),
        schema.clone(),
        config.clone(),
        metrics.clone(),
    );
    let view = ModelView {
        name: M::NAME,
        schema,
        services: M::SERVICES,
        progress: projector.progress(),
        lag: projector.lag(),
    };
    (view, Box::new(move |stop| Box::pin(projector.run(stop))))
}

/// `/ready` turns 503 while the model's lag in seconds is past the objective.
fn lag_probe(view: &ModelView, objective: Duration) -> Dependency {
    let (lag, name) = (view.lag.clone(), view.name);
    Dependency::new(name, Duration::from_secs(1), move || {
        let lag = lag.clone();
        async move {
            match lag.get() {
                None => Probe::NotReady(format!("{name}: lag not measured yet")),
                Some((events, seconds)) if seconds > objective.as_secs_f64() => {
                    Probe::NotReady(format!(
                        "{name}: {events} events behind, {seconds:.1} s > objective {} s",
                        objective.as_secs()
                    ))
                }
                Some(_) => Probe::Ready,
            }
        }
    })
}

/// What an operator asks of a read model's parked records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkedAction {
    Retry,
    Skip,
}

/// Who asks for an operator action, as every audit log line names them.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// `operator` for an operator key; shopctl acts as an operator too.
    pub role: &'a str,
    /// The key's fingerprint, or `shopctl`.
    pub principal: &'a str,
}

/// Retries or skips the parked records of `aggregate` in read model `model`; a skip also
/// returns the record it removed. Logs one audit line naming the caller.
pub async fn act_on_parked(
    pool: &PgPool,
    model: &str,
    aggregate: &str,
    action: ParkedAction,
    caller: Caller<'_>,
) -> Result<
    (
        Option<projector::operator::ParkedRecord>,
        projector::operator::RetryReport,
    ),
    ProjectionError,
> {
    let done = on_model(pool, model, aggregate, action).await;
    match &done {
        Ok((skipped, report)) => {
            let skipped = skipped
                .as_ref()
                .map(|s| format!("{}/{}@{}", s.topic, s.partition, s.offset));
            tracing::warn!(
                target: "audit",
                role = caller.role,
                principal = caller.principal,
                read_model = model,
                aggregate,
                action = ?action,
                skipped,
                applied = report.applied,
                still_parked = report.still_parked,
                "parked records acted on by an operator"
            );
        }
        Err(e) => tracing::warn!(
            target: "audit",
            role = caller.role,
            principal = caller.principal,
            read_model = model,
            aggregate,
            action = ?action,
            error = %e,
            "operator action on parked records failed"
        ),
    }
    done
}

async fn on_model(
    pool: &PgPool,
    model: &str,
    aggregate: &str,
    action: ParkedAction,
) -> Result<
    (
        Option<projector::operator::ParkedRecord>,
        projector::operator::RetryReport,
    ),
    ProjectionError,
> {
    async fn act<M: ReadModel>(
        pool: &PgPool,
        aggregate: &str,
        action: ParkedAction,
    ) -> Result<
        (
            Option<projector::operator::ParkedRecord>,
            projector::operator::RetryReport,
        ),
        ProjectionError,
    > {
        let schema = Schema::live(M::NAME);
        Ok(match action {
            ParkedAction::Retry => (
                None,
                projector::operator::retry::<M>(pool, &schema, aggregate).await?,
            ),
            ParkedAction::Skip => {
                let (skipped, report) =
                    projector::operator::skip::<M>(pool, &schema, aggregate).await?;
                (Some(skipped), report)
            }
        })
    }
    match model {
        Users::NAME => act::<Users>(pool, aggregate, action).await,
        Orders::NAME => act::<Orders>(pool, aggregate, action).await,
        Payments::NAME => act::<Payments>(pool, aggregate, action).await,
        Notifications::NAME => act::<Notifications>(pool, aggregate, action).await,
        EventIndex::NAME => act::<EventIndex>(pool, aggregate, action).await,
        other => Err(ProjectionError::unknown_model(other)),
    }
}

/// Counts each read model's parked records every few seconds into
/// `shop_projector_dead_letters`, so that an alert can say "a dead letter waits" and clear
/// when an operator dealt with it.
struct DeadLetterCensus {
    pool: sqlx::PgPool,
    models: Vec<(&'static str, projector::Schema)>,
    gauge: prometheus_client::metrics::family::Family<
        Vec<(&'static str, String)>,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

impl DeadLetterCensus {
    const EVERY: Duration = Duration::from_secs(5);

    async fn run(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            for (model, schema) in &self.models {
                let count = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {}",
                    schema.table("parked")
                )))
                .fetch_one(&self.pool)
                .await;
                match count {
                    Ok(count) => {
                        self.gauge
                            .get_or_create(&ProjectorMetrics::model(model))
                            .set(count);
                    }
                    // Not migrated yet, or Postgres is down: /ready says which.
                    Err(e) => tracing::debug!(model, error = %e, "cannot count dead letters"),
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Self::EVERY) => {}
            }
        }
    }
}
