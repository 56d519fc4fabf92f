//! The write models this service hosts: one per aggregate type, each owning the
//! partitions the consumer group gives this instance and handing commands for the others
//! to the instances that own them (their [`Peers`]).

use std::sync::Arc;

use event_store::writer::host::{WriteModel, WriterConfig};
use event_store::writer::metrics::WriterMetrics;
use event_store::writer::partition::PartitionSettings;
use event_store::writer::peers::{Forward, OwnerDirectory, Peers};
use event_store::writer::snapshot::SnapshotStore;
use prometheus_client::registry::Registry;
use schemas::MessageFamily;
use service_runtime::host::Worker;
use sqlx::PgPool;

use crate::config::Config;
use crate::domain::notifications::Notification;
use crate::domain::orders::Order;
use crate::domain::payments::Payment;
use crate::domain::users::{EmailClaim, User};

#[derive(Clone, Debug)]
pub struct WriteModels {
    pub users: WriteModel<User>,
    pub emails: WriteModel<EmailClaim>,
    pub orders: WriteModel<Order>,
    pub payments: WriteModel<Payment>,
    pub notifications: WriteModel<Notification>,
    /// The other instances of the command API.
    pub peers: Peers,
}

impl WriteModels {
    /// The models, and the workers that must run for them to serve; a command for a
    /// partition another instance writes goes to it through `forward`.
    pub fn new(
        config: &Config,
        pool: PgPool,
        forward: Arc<dyn Forward>,
        registry: &mut Registry,
    ) -> (Self, Vec<Worker>) {
        let infra = &config.service.infrastructure;
        let mut writer_config =
            WriterConfig::new(infra.kafka.clone(), infra.topics.clone(), infra.partitions);
        writer_config.ownership_wait = config.command_timeout / 2;
        writer_config.partition = PartitionSettings {
            snapshots: Some(Arc::new(SnapshotStore::new(pool.clone()))),
            memory: config.writer_memory,
            ..PartitionSettings::default()
        };
        let peers = Peers::new(OwnerDirectory::new(pool), forward);
        writer_config.peers = Some(peers.clone());
        let metrics = WriterMetrics::register(registry, "");
        let mut workers: Vec<Worker> = Vec::new();
        let users = host(&writer_config, &metrics, &mut workers);
        let emails = host(&writer_config, &metrics, &mut workers);
        let orders = host(&writer_config, &metrics, &mut workers);
        let payments = host(&writer_config, &metrics, &mut workers);
        let notifications = host(&writer_config, &metrics, &mut workers);
        let models = Self {
            users,
            emails,
            orders,
            payments,
            notifications,
            peers,
        };
        (models, workers)
    }
}

impl WriteModels {
    /// Why some write model cannot decide every command the group gave this instance yet
    /// (readiness); empty when all can.
    pub fn not_serving(&self) -> Vec<String> {
        [
            self.users.not_serving(),
            self.emails.not_serving(),
            self.orders.not_serving(),
            self.payments.not_serving(),
            self.notifications.not_serving(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

fn host<A: event_store::aggregate::Aggregate>(
    config: &WriterConfig,
    metrics: &WriterMetrics,
    workers: &mut Vec<Worker>,
) -> WriteModel<A> {
    let (model, runtime) =
        WriteModel::<A>::new(config.clone(), metrics.for_service(A::Event::SERVICE));
    workers.push(Box::new(move |stop| Box::pin(runtime.run(stop))));
    model
}
