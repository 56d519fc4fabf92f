//! The stand every run of the suite builds: a private Postgres cluster and a private Apache
//! Kafka node (the suite kills them, so they are its own), the topics, the webhook
//! receiver, and the three services as processes on free ports, one or more instances of
//! each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use test_support::{PrivateBroker, PrivatePostgres};

use crate::fleet::{Fleet, Instance, ServiceName};
use crate::load;
use crate::webhooks::{self, Deliveries};

pub const API_KEY: &str = "fault-suite-key";
pub const WEBHOOK_SECRET: &str = "whsec_ZmF1bHQtc3VpdGUtd2ViaG9vay1zZWNyZXQ=";
pub const TOPIC_PREFIX: &str = "faults.";
/// A rate limit no run reaches.
pub const RATE_UNLIMITED: u32 = 1_000_000;

/// Everything a run acts on and looks at.
#[derive(Debug)]
pub struct Stand {
    pub postgres: Arc<PrivatePostgres>,
    pub broker: PrivateBroker,
    pub settings: KafkaSettings,
    pub topics: TopicNames,
    pub deliveries: Deliveries,
    pub fleet: Arc<Fleet>,
    pub addrs: BTreeMap<Instance, String>,
}

impl Stand {
    /// Starts it all with `partitions` per topic and `instances` of each service, logging
    /// into `logs` and allowing `rate_limit` requests per second per API key; returns once
    /// every instance is ready.
    pub async fn up(
        partitions: i32,
        instances: usize,
        logs: &Path,
        rate_limit: u32,
    ) -> anyhow::Result<Self> {
        let postgres = Arc::new(tokio::task::spawn_blocking(PrivatePostgres::start).await??);
        let broker = PrivateBroker::start().await;
        let settings = KafkaSettings::new(&broker.brokers);
        let topics = TopicNames::new(TOPIC_PREFIX);
        TopicAdmin::new(&settings)?
            .create(&topics.all(partitions), 1)
            .await?;
        let (webhook, deliveries) = webhooks::receiver(WEBHOOK_SECRET).await?;
        let addrs: BTreeMap<Instance, String> = ServiceName::ALL
            .into_iter()
            .flat_map(|s| (0..instances.max(1)).map(move |n| (s, n)))
            .map(|i| free_addr().map(|a| (i, a)))
            .collect::<anyhow::Result<_>>()?;
        let env = environment(
            (&broker.brokers, &postgres.url(), &webhook),
            partitions,
            rate_limit,
            &addrs,
        );
        let fleet = Arc::new(Fleet::start(env, logs.to_path_buf(), &addrs)?);
        wait_ready(&addrs).await?;
        Ok(Self {
            postgres,
            broker,
            settings,
            topics,
            deliveries,
            fleet,
            addrs,
        })
    }

    /// `http://host:port` of the first instance of `service`.
    pub fn url(&self, service: ServiceName) -> String {
        self.urls(service).into_iter().next().unwrap_or_default()
    }

    /// `http://host:port` of every instance of `service`.
    pub fn urls(&self, service: ServiceName) -> Vec<String> {
        self.addrs
            .iter()
            .filter(|((s, _), _)| *s == service)
            .map(|(_, a)| format!("http://{a}"))
            .collect()
    }

    /// The base URL of every instance of every service.
    pub fn all_urls(&self) -> Vec<String> {
        ServiceName::ALL
            .into_iter()
            .flat_map(|service| self.urls(service))
            .collect()
    }
}

fn free_addr() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string())
}

async fn wait_ready(addrs: &BTreeMap<Instance, String>) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (&instance, addr) in addrs {
        loop {
            let ready = client
                .get(format!("http://{addr}/ready"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} was not ready within 120 s",
                crate::fleet::label(instance)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Where a run's service logs go: a folder the caller named (kept), or a fresh one under
/// the temp dir, removed once the run passed and kept (and named) when it did not.
#[derive(Debug)]
pub struct LogFolder {
    pub path: PathBuf,
    fresh: bool,
}

impl LogFolder {
    pub fn new(kind: &str, given: Option<PathBuf>) -> anyhow::Result<Self> {
        let fresh = given.is_none();
        let path = given.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("shop-{kind}-{}", uuid::Uuid::new_v4().simple()))
        });
        std::fs::create_dir_all(&path)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
        println!("  service logs in {}", path.display());
        Ok(Self { path, fresh })
    }

    /// Removes a fresh folder of a run that passed; says where the logs are otherwise.
    pub fn finish(self, passed: bool) {
        if passed && self.fresh {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            println!("  service logs kept in {}", self.path.display());
        }
    }
}

/// The services' environment: where the broker, Postgres and the webhook receiver are,
/// the partitions, the API key and its rate, and short timings for the suite.
fn environment(
    (brokers, database_url, webhook): (&str, &str, &str),
    partitions: i32,
    rate_limit: u32,
    addrs: &BTreeMap<Instance, String>,
) -> Vec<(String, String)> {
    let addr_of = |service: ServiceName| addrs.get(&(service, 0)).cloned().unwrap_or_default();
    [
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("TOPIC_PREFIX", TOPIC_PREFIX.to_owned()),
        ("EVENT_PARTITIONS", partitions.to_string()),
        ("COMMAND_API_ADDR", addr_of(ServiceName::CommandApi)),
        ("PROJECTIONS_ADDR", addr_of(ServiceName::Projections)),
        (
            "SAGA_ORCHESTRATOR_ADDR",
            addr_of(ServiceName::SagaOrchestrator),
        ),
        ("API_KEYS", API_KEY.to_owned()),
        ("RATE_LIMIT_PER_SECOND", rate_limit.to_string()),
        ("RATE_LIMIT_BURST", rate_limit.to_string()),
        ("SAGA_STEP_LEASE_MS", "2000".to_owned()),
        ("PAYMENT_LATENCY_MS", "20".to_owned()),
        (
            "PAYMENT_DECLINE_ABOVE_CENTS",
            load::DECLINE_ABOVE_CENTS.to_string(),
        ),
        ("NOTIFICATION_WEBHOOK_URL", webhook.to_owned()),
        ("NOTIFICATION_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        (
            "RUST_LOG",
            std::env::var("FAULTS_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
