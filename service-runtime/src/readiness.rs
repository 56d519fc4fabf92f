//! Readiness: each dependency (broker, Postgres) is probed in the background, with
//! backoff while it is down, so that a service starts without its dependencies, answers
//! `/ready` with 503 and the reason, and turns ready by itself when they appear.
//!
//! A probe can also find something waiting will not fix (an event topic that would lose
//! events): that is [`Probe::Fatal`], and the service stops with that one-line reason.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What one probe of a dependency found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Ready,
    /// Down or not yet usable; the reason is shown at `/ready`.
    NotReady(String),
    /// Unusable in a way that waiting will not fix.
    Fatal(String),
}

pub type ProbeFuture = Pin<Box<dyn Future<Output = Probe> + Send>>;

/// A named dependency and how to probe it.
#[derive(Clone)]
pub struct Dependency {
    pub name: &'static str,
    probe: Arc<dyn Fn() -> ProbeFuture + Send + Sync>,
    /// Longest a single probe may take before it counts as "not ready".
    timeout: Duration,
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency")
            .field("name", &self.name)
            .finish()
    }
}

impl Dependency {
    pub fn new<F, Fut>(name: &'static str, timeout: Duration, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Probe> + Send + 'static,
    {
        Self {
            name,
            probe: Arc::new(move || Box::pin(probe())),
            timeout,
        }
    }

    async fn probe_once(&self) -> Probe {
        match tokio::time::timeout(self.timeout, (self.probe)()).await {
            Ok(probe) => probe,
            Err(_) => Probe::NotReady(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// How a dependency looked at its last probe.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The shared view of all dependencies, read by `/ready`.
#[derive(Clone, Debug)]
pub struct Readiness {
    statuses: Arc<RwLock<BTreeMap<&'static str, Status>>>,
    fatal: watch::Sender<Option<String>>,
    up: Family<Vec<(&'static str, &'static str)>, Gauge>,
}

/// Probe intervals: every 5 s while healthy; while down, 250 ms doubling up to 5 s.
const HEALTHY_INTERVAL: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);

impl Readiness {
    pub fn new(
        dependencies: &[Dependency],
        up: Family<Vec<(&'static str, &'static str)>, Gauge>,
    ) -> Self {
        let statuses = dependencies
            .iter()
            .map(|d| {
                let status = Status {
                    ready: false,
                    reason: Some("not probed yet".into()),
                };
                (d.name, status)
            })
            .collect();
        Self {
            statuses: Arc::new(RwLock::new(statuses)),
            fatal: watch::channel(None).0,
            up,
        }
    }

    /// Every dependency ready, and each one's status.
    pub fn report(&self) -> (bool, BTreeMap<&'static str, Status>) {
        let statuses = self.statuses.read().expect("readiness lock").clone();
        (statuses.values().all(|s| s.ready), statuses)
    }

    /// Resolves with the reason once a probe found a fatal problem.
    pub async fn fatal(&self) -> String {
        let mut receiver = self.fatal.subscribe();
        let reason = receiver
            .wait_for(Option::is_some)
            .await
            .map(|r| r.clone().unwrap_or_default());
        reason.unwrap_or_default()
    }

    /// Probes `dependency` until `stop` is cancelled.
    pub async fn watch(self, dependency: Dependency, stop: CancellationToken) {
        let mut retry = FIRST_RETRY;
        loop {
            let probe = dependency.probe_once().await;
            let wait = if probe == Probe::Ready {
                retry = FIRST_RETRY;
                HEALTHY_INTERVAL
            } else {
                retry = (retry * 2).min(MAX_RETRY);
                retry
            };
            self.record(dependency.name, probe);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn record(&self, name: &'static str, probe: Probe) {
        let status = match probe {
            Probe::Ready => Status {
                ready: true,
                reason: None,
            },
            Probe::NotReady(reason) => Status {
                ready: false,
                reason: Some(reason),
            },
            Probe::Fatal(reason) => {
                tracing::error!(dependency = name, %reason, "dependency unusable, stopping");
                self.fatal.send_replace(Some(reason.clone()));
                Status {
                    ready: false,
                    reason: Some(reason),
                }
            }
        };
        self.up
            .get_or_create(&vec![("dependency", name)])
            .set(i64::from(status.ready));
        let previous = self
            .statuses
            .write()
            .expect("readiness lock")
            .insert(name, status.clone());
        log_transition(name, previous.as_ref(), &status);
    }
}

fn log_transition(name: &str, previous: Option<&Status>, now: &Status) {
    let was_ready = previous.is_some_and(|p| p.ready);
    match (was_ready, now.ready) {
        (false, true) => tracing::info!(dependency = name, "dependency ready"),
        (true, false) => tracing::warn!(
            dependency = name,
            reason = now.reason.as_deref().unwrap_or_default(),
            "dependency lost"
        ),
        (false, false) if previous.and_then(|p| p.reason.as_ref()) != now.reason.as_ref() => {
            tracing::warn!(
                dependency = name,
                reason = now.reason.as_deref().unwrap_or_default(),
                "dependency not ready"
            )
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_dependency_that_appears_later_turns_ready_without_a_restart() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let dependency = Dependency::new("db", Duration::from_secs(1), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Probe::NotReady("connection refused".into())
                } else {
                    Probe::Ready
                }
            }
        });
        let readiness = Readiness::new(std::slice::from_ref(&dependency), Family::default());
        assert!(!readiness.report().0);
        let stop = CancellationToken::new();
        let task = tokio::spawn(readiness.clone().watch(dependency, stop.clone()));

        tokio::time::sleep(Duration::from_millis(100)).await;
        let (ready, statuses) = readiness.report();
        assert!(!ready);
        assert_eq!(statuses["db"].reason.as_deref(), Some("connection refused"));

        // Backoff 500 ms, 1 s, 2 s: ready after the fourth probe, well under 5 s.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(readiness.report().0);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_counts_as_not_ready() {
        let dependency = Dependency::new("broker", Duration::from_secs(2), || {
            std::future::pending::<Probe>()
        });
        let readiness = Readiness::new(std::slice::from_ref(&dependency), Family::default());
        let stop = CancellationToken::new();
        tokio::spawn(readiness.clone().watch(dependency, stop.clone()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (ready, statuses) = readiness.report();
        assert!(!ready);
        assert_eq!(
            statuses["broker"].reason.as_deref(),
            Some("no answer within 2s")
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_probe_is_announced() {
        let dependency = Dependency::new("broker", Duration::from_secs(2), || async {
            Probe::Fatal("topic x is compacted".into())
        });
        let readiness = Readiness::new(std::slice::from_ref(&dependency), Family::default());
        let stop = CancellationToken::new();
        tokio::spawn(readiness.clone().watch(dependency, stop.clone()));
        assert_eq!(readiness.fatal().await, "topic x is compacted");
        stop.cancel();
    }
}
