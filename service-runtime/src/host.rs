//! Running a service: bind its HTTP listener, serve its routes next to the operational
//! ones, probe its dependencies in the background, run its workers, and stop gracefully.
//!
//! Shutdown follows mini-redis: the caller hands [`BoundService::run_until`] a future
//! (SIGTERM in the binaries, a channel in tests); when it resolves, one cancellation token
//! tells the HTTP server (which finishes in-flight requests), the probes and the workers to
//! stop, and `run_until` returns once they have.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::metrics::{ServiceMetrics, track_http};
use crate::ops::{OpsState, router as ops_router};
use crate::probes;
use crate::problem::Problem;
use crate::readiness::{Dependency, Readiness};

/// Background work of a service (consumers, schedulers): runs until the token is cancelled.
pub type Worker =
    Box<dyn FnOnce(CancellationToken) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// How long in-flight HTTP requests may run; a request never hangs longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A dependency is unusable in a way waiting will not fix.
    #[error("{0}")]
    Fatal(String),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// A service being assembled.
pub struct Service {
    name: &'static str,
    addr: SocketAddr,
    routes: Router,
    dependencies: Vec<Dependency>,
    workers: Vec<Worker>,
    registry: Registry,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("dependencies", &self.dependencies)
            .finish_non_exhaustive()
    }
}

impl Service {
    pub fn new(name: &'static str, addr: SocketAddr) -> Self {
        Self {
            name,
            addr,
            routes: Router::new(),
            dependencies: Vec::new(),
            workers: Vec::new(),
            registry: Registry::with_prefix("shop"),
        }
    }

    /// A service on the shop's infrastructure: it depends on the broker (every topic fit
    /// for use) and on Postgres (reachable, `migrators` applied). The pool is for its work.
    pub fn on_infrastructure(
        name: &'static str,
        config: &crate::ServiceConfig,
        migrators: Vec<Arc<sqlx::migrate::Migrator>>,
    ) -> Result<(Self, sqlx::PgPool), ServiceError> {
        let infra = &config.infrastructure;
        let admin = infra
            .admin()
            .map_err(|e| ServiceError::Fatal(e.to_string()))?;
        let pool = infra.pool();
        let service = Self::new(name, config.addr)
            .depends_on(probes::kafka(
                admin,
                infra.topic_specs(),
                infra.kafka.clone(),
            ))
            .depends_on(probes::postgres(pool.clone(), migrators));
        Ok((service, pool))
    }

    /// The registry to add the service's own metrics to.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    pub fn depends_on(mut self, dependency: Dependency) -> Self {
        self.dependencies.push(dependency);
        self
    }

    pub fn worker(mut self, worker: Worker) -> Self {
        self.workers.push(worker);
        self
    }

    /// Binds the listener; nothing runs yet.
    pub async fn bind(mut self) -> Result<BoundService, ServiceError> {
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(|source| ServiceError::Bind {
                addr: self.addr,
                source,
            })?;
        let metrics = ServiceMetrics::register(&mut self.registry, self.name);
        let readiness = Readiness::new(&self.dependencies, metrics.dependency_up.clone());
        let ops = OpsState {
            service: self.name,
            readiness: readiness.clone(),
            registry: Arc::new(self.registry),
        };
        let service = self.name;
        let router = self
            .routes
            .merge(ops_router(ops))
            .fallback(
                move |method: axum::http::Method, uri: axum::http::Uri| async move {
                    Problem::new(
                        axum::http::StatusCode::NOT_FOUND,
                        format!("no route {method} {} on {service}", uri.path()),
                    )
                },
            )
            .layer(TimeoutLayer::with_status_code(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                REQUEST_TIMEOUT,
            ))
            // Outside the timeout, so that a request that timed out counts as its 503.
            .layer(axum::middleware::from_fn_with_state(metrics, track_http))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(TraceLayer::new_for_http())
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
        Ok(BoundService {
            name: self.name,
            listener,
            router,
            readiness,
            dependencies: self.dependencies,
            workers: self.workers,
        })
    }
}

/// A service whose listener is bound: its address is known (port 0 in tests) and it can run.
pub struct BoundService {
    name: &'static str,
    listener: TcpListener,
    router: Router,
    readiness: Readiness,
    dependencies: Vec<Dependency>,
    workers: Vec<Worker>,
}

impl std::fmt::Debug for BoundService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundService")
            .field("name", &self.name)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl BoundService {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` resolves (graceful) or a dependency turns out unusable.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let addr = self.local_addr();
        let stop = CancellationToken::new();
        let mut background = JoinSet::new();
        for dependency in self.dependencies {
            background.spawn(self.readiness.clone().watch(dependency, stop.clone()));
        }
        for worker in self.workers {
            background.spawn(worker(stop.clone()));
        }
        tracing::info!(service = self.name, %addr, "listening");

        let server_stop = stop.clone();
        let server = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { server_stop.cancelled().await });
        let server = tokio::spawn(async move { server.await });
        let readiness = self.readiness.clone();
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            reason = readiness.fatal() => Err(ServiceError::Fatal(reason)),
        };
        stop.cancel();
        // The server stops accepting, finishes in-flight requests, then returns.
        let served = match server.await {
            Ok(result) => result.map_err(ServiceError::Serve),
            Err(join) => Err(ServiceError::Serve(std::io::Error::other(join))),
        };
        while background.join_next().await.is_some() {}
        tracing::info!(service = self.name, "stopped");
        outcome.and(served)
    }
}
