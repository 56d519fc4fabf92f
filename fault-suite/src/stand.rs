//! The stand every run of the suite builds: a private Postgres cluster and a private tansu
//! (the suite kills them, so they are its own), the topics, the webhook receiver, and the
//! three services as processes on free ports.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use test_support::{PrivateBroker, PrivatePostgres};

use crate::fleet::{Fleet, ServiceName};
use crate::load;
use crate::webhooks::{self, Deliveries};

pub const API_KEY: &str = "fault-suite-key";
pub const WEBHOOK_SECRET: &str = "fault-suite-secret";
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
    pub addrs: Vec<(ServiceName, String)>,
}

impl Stand {
    /// Starts it all with `partitions` per topic, the services logging into `logs` and
    /// allowing `rate_limit` requests per second per API key; returns once every service
    /// is ready.
    pub async fn up(partitions: i32, logs: &Path, rate_limit: u32) -> anyhow::Result<Self> {
        let postgres = Arc::new(tokio::task::spawn_blocking(PrivatePostgres::start).await??);
        let broker = PrivateBroker::start().await;
        let settings = KafkaSettings::new(&broker.brokers);
        let topics = TopicNames::new(TOPIC_PREFIX);
        TopicAdmin::new(&settings)?
            .create(&topics.all(partitions), 1)
            .await?;
        let (webhook, deliveries) = webhooks::receiver(WEBHOOK_SECRET).await?;
        let addrs: Vec<(ServiceName, String)> = ServiceName::ALL
            .into_iter()
            .map(|s| free_addr().map(|a| (s, a)))
            .collect::<anyhow::Result<_>>()?;
        let addr_of = |service: ServiceName| {
            addrs
                .iter()
                .find(|(s, _)| *s == service)
                .map(|(_, a)| a.clone())
                .unwrap_or_default()
        };
        let env: Vec<(String, String)> = [
            ("KAFKA_BROKERS", broker.brokers.clone()),
            ("DATABASE_URL", postgres.url()),
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
            ("NOTIFICATION_WEBHOOK_URL", webhook),
            ("NOTIFICATION_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            (
                "RUST_LOG",
                std::env::var("FAULTS_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let fleet = Arc::new(Fleet::start(env, logs.to_path_buf())?);
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

    /// `http://host:port` of `service`.
    pub fn url(&self, service: ServiceName) -> String {
        self.addrs
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, a)| format!("http://{a}"))
            .unwrap_or_default()
    }
}

fn free_addr() -> anyhow::Result<String> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string())
}

async fn wait_ready(addrs: &[(ServiceName, String)]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for (service, addr) in addrs {
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
                service.as_str()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
