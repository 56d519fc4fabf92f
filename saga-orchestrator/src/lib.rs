//! The saga orchestrator: drives order -> payment -> notification, compensates failed or
//! timed-out steps, and keeps each saga's state and consumed offsets in Postgres.
//!
//! - [`saga`]: the pure state machine, `(saga, input) -> (saga, steps)`;
//! - [`facts`]: what an event of the log means to it;
//! - [`runner`]: reads the log and stores sagas, deadlines, steps (the outbox) and offsets
//!   in one transaction per batch; fires durable deadlines;
//! - [`dispatch`]: carries out the outbox (provider calls, commands to the writers);
//! - [`providers`]: payment provider and notification channel, with circuit breakers;
//! - [`operator`]: an operator's retry of a failed saga;
//! - [`store`]: the `saga` schema; [`http`]: the saga API; [`config`], [`metrics`];
//! - [`error`]: the crate's one error, by outcome.

pub mod config;
pub mod dispatch;
pub mod error;
pub mod facts;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod providers;
pub mod runner;
pub mod saga;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use service_runtime::{BoundService, Service, ServiceError, probes};
use sqlx::migrate::Migrator;

pub use config::Config;
pub use error::SagaError;

use dispatch::{Dispatcher, Providers};
use event_store::commands::CommandSender;
use metrics::SagaMetrics;
use providers::breaker::CircuitBreaker;
use providers::payments::{PaymentProvider, Simulator};
use providers::webhook::{LogOnly, NotificationChannel, Webhook};
use runner::{DeadlinePoller, Runner, RunnerConfig};
use saga::Policy;

/// The service name, in logs, metrics and `/health`.
pub const NAME: &str = "saga-orchestrator";

/// The Postgres schema this service owns; its migrations and their history live there.
pub const SCHEMA: &str = "saga";

/// This service's migrations, applied into [`SCHEMA`] when Postgres is first reachable.
pub fn migrator() -> Arc<Migrator> {
    probes::schema_migrator(sqlx::migrate!("./migrations"), SCHEMA)
}

/// Assembles the service: the log reader, the deadline poller, the dispatcher and the
/// visibility API. It depends on the broker (its topics) and on Postgres.
pub async fn build(config: Config) -> Result<BoundService, ServiceError> {
    let (mut service, pool) = Service::on_infrastructure(NAME, &config.service, vec![migrator()])?;
    let infra = &config.service.infrastructure;
    let metrics = SagaMetrics::register(service.registry());
    let policy = Policy {
        payment_timeout: chrono::Duration::from_std(config.payment_timeout)
            .unwrap_or(chrono::Duration::seconds(30)),
    };
    let sender = CommandSender::new(&infra.kafka, infra.topics.clone(), infra.partitions)
        .map_err(|e| ServiceError::Fatal(e.to_string()))?;
    let dispatcher = Arc::new(Dispatcher::new(
        pool.clone(),
        sender,
        providers(&config, &metrics)
            .await
            .map_err(ServiceError::Fatal)?,
        config.dispatch.clone(),
        policy,
        metrics.clone(),
    ));
    let wake = dispatcher.wake();
    let runner = Runner::new(
        pool.clone(),
        RunnerConfig {
            kafka: infra.kafka.clone(),
            topics: infra.topics.clone(),
            batch_max: config.batch_max,
            policy,
        },
        Arc::clone(&wake),
        metrics.clone(),
    );
    let api = http::Api {
        pool: pool.clone(),
        policy,
        dispatch: Arc::clone(&wake),
        metrics: metrics.clone(),
    };
    let deadlines = DeadlinePoller {
        pool,
        policy,
        interval: Duration::from_millis(250),
        dispatch: wake,
        metrics,
    };
    service
        .worker(Box::new(move |stop| Box::pin(runner.run(stop))))
        .worker(Box::new(move |stop| Box::pin(deadlines.run(stop))))
        .worker(Box::new(move |stop| Box::pin(dispatcher.run(stop))))
        .routes({
            let (routes, document) = http::router(api);
            config
                .gate
                .guard(routes)
                .merge(service_runtime::openapi::document_route(document))
        })
        .bind()
        .await
}

/// The payment simulator and the configured notification channel, each with a breaker.
/// An https webhook's certificate is tried once here: an untrusted one stops the service.
async fn providers(config: &Config, metrics: &SagaMetrics) -> Result<Providers, String> {
    let payments: Arc<dyn PaymentProvider> = Arc::new(Simulator::new(config.simulator.clone()));
    let channel: Arc<dyn NotificationChannel> = match &config.webhook {
        Some(hook) => {
            let ca_file = hook.ca_file.as_deref();
            let timeout = config.dispatch.call_timeout;
            let webhook = Webhook::new(hook.url.clone(), hook.secrets.clone(), timeout, ca_file)
                .map_err(|e| format!("webhook client: {e}"))?;
            webhook.check_certificate(ca_file, timeout).await?;
            Arc::new(webhook)
        }
        None => Arc::new(LogOnly),
    };
    let breaker = |name| {
        CircuitBreaker::new(
            name,
            config.circuit_threshold,
            config.circuit_open,
            metrics.circuit.clone(),
        )
    };
    Ok(Providers {
        payments_breaker: breaker(payments.name()),
        channel_breaker: breaker(channel.name()),
        payments,
        channel,
    })
}
