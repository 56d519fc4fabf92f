//! What the writers report at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug)]
pub struct WriterMetrics {
    service: &'static str,
    /// Commands answered, by outcome (accepted, rejected, conflict, duplicate, failed).
    pub commands: Family<Labels, Counter>,
    /// Events appended and confirmed.
    pub appended: Family<Labels, Counter>,
    /// Commands per batch.
    pub batch_size: Family<Labels, Histogram>,
    /// Records the reader rule dropped while the writer read its partition, by reason.
    pub dropped: Family<Labels, Counter>,
    /// Times an append found another writer's records before its own.
    pub fenced: Family<Labels, Counter>,
    /// Partitions served by this instance.
    pub owned_partitions: Family<Labels, Gauge>,
    /// Seconds from assignment to serving, per takeover.
    pub takeover_seconds: Family<Labels, Histogram>,
    /// Seconds per step of a batch's transaction, by stage: `produce` (begin until every
    /// record is acknowledged) and `commit` (until the broker committed it).
    pub transaction_seconds: Family<Labels, Histogram>,
    /// Aggregates whose state a partition's writer holds in memory.
    pub aggregates_held: Family<Labels, Gauge>,
    /// Command outcomes a partition's writer holds in memory (its idempotency window).
    pub outcomes_held: Family<Labels, Gauge>,
    /// Aggregates and outcomes read back from the snapshot store, by kind: what the memory
    /// budget costs in lookups.
    pub recalled: Family<Labels, Counter>,
}

impl WriterMetrics {
    pub fn register(registry: &mut Registry, service: &'static str) -> Self {
        let metrics = Self::new(service);
        registry.register(
            "writer_commands",
            "Commands answered by outcome",
            metrics.commands.clone(),
        );
        registry.register(
            "writer_appended_events",
            "Events appended and confirmed",
            metrics.appended.clone(),
        );
        registry.register(
            "writer_batch_size",
            "Commands per writer batch",
            metrics.batch_size.clone(),
        );
        registry.register(
            "writer_dropped_records",
            "Records the reader rule dropped while a writer read its partition",
            metrics.dropped.clone(),
        );
        registry.register(
            "writer_fenced_appends",
            "Appends that found another writer's records first",
            metrics.fenced.clone(),
        );
        registry.register(
            "writer_owned_partitions",
            "Partitions this instance writes",
            metrics.owned_partitions.clone(),
        );
        registry.register(
            "writer_takeover_seconds",
            "Time from partition assignment to serving",
            metrics.takeover_seconds.clone(),
        );
        registry.register(
            "writer_transaction_seconds",
            "Seconds per stage of a writer batch's transaction (produce, commit)",
            metrics.transaction_seconds.clone(),
        );
        registry.register(
            "writer_aggregates_held",
            "Aggregates whose state a partition's writer holds in memory",
            metrics.aggregates_held.clone(),
        );
        registry.register(
            "writer_outcomes_held",
            "Command outcomes a partition's writer holds in memory (the recent part of the idempotency window)",
            metrics.outcomes_held.clone(),
        );
        registry.register(
            "writer_recalled",
            "Aggregates and outcomes a writer read back from the snapshot store, by kind",
            metrics.recalled.clone(),
        );
        metrics
    }

    /// The families, registered nowhere yet.
    fn new(service: &'static str) -> Self {
        Self {
            service,
            commands: Family::default(),
            appended: Family::default(),
            batch_size: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 10))
            }),
            dropped: Family::default(),
            fenced: Family::default(),
            owned_partitions: Family::default(),
            takeover_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 14))
            }),
            transaction_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
            aggregates_held: Family::default(),
            outcomes_held: Family::default(),
            recalled: Family::default(),
        }
    }

    /// The same metric families, labelled for another service (one registry per process).
    pub fn for_service(&self, service: &'static str) -> Self {
        Self {
            service,
            ..self.clone()
        }
    }

    /// Metrics that go nowhere, for writers run outside a service (tests, tools).
    pub fn unregistered(service: &'static str) -> Self {
        Self::register(&mut Registry::default(), service)
    }

    pub(crate) fn labels(&self) -> Labels {
        vec![("service", self.service.to_owned())]
    }

    /// What the writer of `partition` holds in memory: `(aggregates, outcomes)`.
    pub(crate) fn held(&self, partition: i32, (aggregates, outcomes): (usize, usize)) {
        let labels = self.with("partition", &partition.to_string());
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.aggregates_held
            .get_or_create(&labels)
            .set(count(aggregates));
        self.outcomes_held
            .get_or_create(&labels)
            .set(count(outcomes));
    }

    /// Aggregates and outcomes read back from the snapshot store.
    pub(crate) fn recalled(&self, aggregates: usize, outcomes: usize) {
        for (kind, n) in [("aggregate", aggregates), ("outcome", outcomes)] {
            if n > 0 {
                self.recalled
                    .get_or_create(&self.with("kind", kind))
                    .inc_by(n as u64);
            }
        }
    }

    pub(crate) fn with(&self, key: &'static str, value: &str) -> Labels {
        vec![
            ("service", self.service.to_owned()),
            (key, value.to_owned()),
        ]
    }
}
