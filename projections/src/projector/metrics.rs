//! What the projectors report at `/metrics`, labelled by read model, and the lag the
//! readiness check compares with its objective.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The `stage` labels of `projector_stage_seconds`, in the order a batch goes through
/// them: waiting for records, then the batch transaction's stages.
pub const STAGES: [&str; 9] = [
    "consume",
    "lock",
    "claim",
    "load",
    "plan",
    "store",
    "copy",
    "bookkeeping",
    "commit",
];

#[derive(Clone, Debug)]
pub struct ProjectorMetrics {
    /// Records not yet applied, summed over the model's assigned partitions.
    pub lag_events: Family<Labels, Gauge>,
    /// How old the last applied record is while records wait; 0 when caught up.
    pub lag_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Records per batch.
    pub batch_size: Family<Labels, Histogram>,
    /// Seconds per batch transaction.
    pub batch_seconds: Family<Labels, Histogram>,
    /// Seconds per stage: waiting for records (`consume`), then the batch transaction's
    /// `lock`, `claim`, `load`, `plan`, `store` (the rows upserted), `copy` (rows and
    /// versions of new aggregates), `bookkeeping` (versions, parked, checkpoints) and
    /// `commit`.
    pub stage_seconds: Family<Labels, Histogram>,
    /// Events applied to the read model (its apply rate).
    pub applied: Family<Labels, Counter>,
    /// Records the reader rule dropped or stopped, by reason (duplicate, gap).
    pub dropped: Family<Labels, Counter>,
    /// Records parked, by reason (poison, undecodable, gap, behind).
    pub parked: Family<Labels, Counter>,
    /// Parked records waiting for an operator, per read model (counted every few seconds).
    pub dead_letters: Family<Labels, Gauge>,
}

impl ProjectorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::new();
        registry.register(
            "projector_lag_events",
            "Records of the read model's topics not applied yet",
            metrics.lag_events.clone(),
        );
        registry.register(
            "projector_lag_seconds",
            "Age of the last applied record while records wait (0 when caught up)",
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "projector_batch_size",
            "Records per projector batch",
            metrics.batch_size.clone(),
        );
        registry.register(
            "projector_batch_seconds",
            "Duration of one projector batch transaction",
            metrics.batch_seconds.clone(),
        );
        registry.register(
            "projector_stage_seconds",
            "Duration of one stage of a projector batch (consume, lock, claim, load, plan, store, bookkeeping, commit)",
            metrics.stage_seconds.clone(),
        );
        registry.register(
            "projector_applied_events",
            "Events applied to the read model",
            metrics.applied.clone(),
        );
        registry.register(
            "projector_dropped_records",
            "Records not applied by the reader rule, by reason",
            metrics.dropped.clone(),
        );
        registry.register(
            "projector_parked_records",
            "Records parked instead of applied, by reason",
            metrics.parked.clone(),
        );
        registry.register(
            "projector_dead_letters",
            "Parked records waiting for an operator's retry or skip",
            metrics.dead_letters.clone(),
        );
        metrics
    }

    /// The families, registered nowhere yet.
    fn new() -> Self {
        Self {
            lag_events: Family::default(),
            lag_seconds: Family::default(),
            batch_size: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 14))
            }),
            batch_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            stage_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            }),
            applied: Family::default(),
            dropped: Family::default(),
            parked: Family::default(),
            dead_letters: Family::default(),
        }
    }

    /// Metrics that go nowhere, for projectors run outside the service (tools, tests).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    pub fn model(model: &str) -> Labels {
        vec![("read_model", model.to_owned())]
    }

    pub fn with(model: &str, key: &'static str, value: &str) -> Labels {
        vec![("read_model", model.to_owned()), (key, value.to_owned())]
    }
}

/// A model's lag as last measured, shared with its readiness check.
#[derive(Clone, Debug, Default)]
pub struct Lag {
    events: Arc<AtomicU64>,
    millis: Arc<AtomicU64>,
    measured: Arc<std::sync::atomic::AtomicBool>,
}

impl Lag {
    pub fn set(&self, events: u64, seconds: f64) {
        self.events.store(events, Ordering::Relaxed);
        self.millis
            .store((seconds * 1000.0).round() as u64, Ordering::Relaxed);
        self.measured.store(true, Ordering::Relaxed);
    }

    /// `(events, seconds)`, or `None` before the first measurement.
    pub fn get(&self) -> Option<(u64, f64)> {
        self.measured.load(Ordering::Relaxed).then(|| {
            (
                self.events.load(Ordering::Relaxed),
                self.millis.load(Ordering::Relaxed) as f64 / 1000.0,
            )
        })
    }
}
