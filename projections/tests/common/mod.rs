//! What the projection tests share: a log they write events into directly (with the
//! positions the broker gave), a fold of what they wrote, and the service run in-process.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::record::to_kafka_headers;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use projections::projector::ReadModel;
use projections::read_models::orders::{OrderRow, Orders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::orders::{
    CancelledBy, OrderCancelled, OrderConfirmed, OrderEvent, OrderLine, OrderPlaced,
};
use schemas::{Currency, Event, EventDocument, EventMeta, OrderId, PaymentId, UserId};
use service_runtime::Env;
use test_support::TestEnv;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub const PARTITIONS: i32 = 2;

/// The API key the services under test accept.
pub const API_KEY: &str = "test-key";

/// One record written, and where it went.
#[derive(Clone, Debug)]
pub struct Written {
    /// `None` for bytes that are not an event.
    pub document: Option<EventDocument>,
    pub partition: i32,
    pub offset: i64,
}

/// The test's side of the broker.
pub struct Log {
    pub settings: KafkaSettings,
    pub topics: TopicNames,
    producer: FutureProducer,
    pub written: Vec<Written>,
}

impl Log {
    pub async fn new(env: &TestEnv) -> anyhow::Result<Self> {
        let settings = KafkaSettings::new(&env.brokers);
        let topics = TopicNames::new(&env.topic_prefix);
        TopicAdmin::new(&settings)?
            .create(&topics.all(PARTITIONS), 1)
            .await?;
        let producer = settings.producer().create()?;
        Ok(Self {
            settings,
            topics,
            producer,
            written: Vec::new(),
        })
    }

    /// Appends a document to the orders topic as is (valid or not), keyed by its subject.
    pub async fn append(&mut self, document: EventDocument) -> anyhow::Result<Written> {
        let payload = document.to_json();
        self.append_raw(&document.subject.clone(), &payload, Some(document))
            .await
    }

    /// Appends bytes to the orders topic under `key`.
    pub async fn append_raw(
        &mut self,
        key: &str,
        payload: &[u8],
        document: Option<EventDocument>,
    ) -> anyhow::Result<Written> {
        let topic = self.topics.events("orders");
        let headers = document
            .as_ref()
            .map(|d| to_kafka_headers(&d.headers()))
            .unwrap_or_default();
        let rdkafka::producer::future_producer::Delivery {
            partition, offset, ..
        } = self
            .producer
            .send(
                FutureRecord::to(&topic)
                    .key(key)
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        let written = Written {
            document,
            partition,
            offset,
        };
        self.written.push(written.clone());
        Ok(written)
    }

    /// The next offset of every partition of the orders topic, after what was written.
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        let mut ends = BTreeMap::new();
        for w in &self.written {
            let end = ends.entry(w.partition).or_insert(0);
            *end = (*end).max(w.offset + 1);
        }
        ends
    }
}

/// An order event at `version`, written now.
pub fn event(version: u64, payload: OrderEvent) -> EventDocument {
    Event {
        meta: EventMeta::new(version),
        payload,
    }
    .to_document()
}

pub fn placed(order: OrderId, user: UserId) -> OrderEvent {
    OrderEvent::from(OrderPlaced {
        order_id: order,
        user_id: user,
        currency: "EUR".parse::<Currency>().expect("EUR"),
        lines: vec![OrderLine {
            sku: "SKU-1".into(),
            quantity: 2,
            unit_price_cents: 1250,
        }],
        total_cents: 2500,
    })
}

pub fn confirmed(order: OrderId) -> OrderEvent {
    OrderEvent::from(OrderConfirmed {
        order_id: order,
        payment_id: PaymentId::for_order(order),
    })
}

pub fn cancelled(order: OrderId) -> OrderEvent {
    OrderEvent::from(OrderCancelled {
        order_id: order,
        reason: "changed my mind".into(),
        cancelled_by: CancelledBy::Customer,
    })
}

/// The orders read model as a fold of `documents` (in log order) under the reader rule:
/// the state the projector must reach.
pub fn fold_orders<'a>(
    documents: impl IntoIterator<Item = &'a EventDocument>,
) -> BTreeMap<String, OrderRow> {
    let mut rows: BTreeMap<String, OrderRow> = BTreeMap::new();
    let mut gate = event_store::gate::VersionGate::default();
    let mut parked = std::collections::HashSet::new();
    for document in documents {
        if parked.contains(&document.subject) {
            continue;
        }
        match gate.last(&document.subject) {
            last if document.aggregateversion == last + 1 => {
                match Orders::fold(rows.get(&document.subject), document) {
                    Ok(row) => {
                        gate.admit(&document.subject, document.aggregateversion);
                        rows.extend(row.map(|row| (document.subject.clone(), row)));
                    }
                    Err(_) => {
                        parked.insert(document.subject.clone());
                    }
                }
            }
            last if document.aggregateversion <= last => {}
            _ => {
                parked.insert(document.subject.clone());
            }
        }
    }
    rows
}

/// The rows of the orders read model in `schema`.
pub async fn stored_orders(
    pool: &sqlx::PgPool,
    table: &str,
) -> anyhow::Result<BTreeMap<String, OrderRow>> {
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT * FROM {table}")))
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.order_id.to_string(), r))
        .collect())
}

/// Waits until `check` holds, polling (an error counts as "not yet"); fails after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The projections service in-process on the test's broker and database.
pub struct Service {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), service_runtime::ServiceError>>>,
}

impl Service {
    pub async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let partitions = PARTITIONS.to_string();
        let mut vars = vec![
            ("KAFKA_BROKERS", env.brokers.as_str()),
            ("KAFKA_TIMEOUT_MS", "3000"),
            ("DATABASE_URL", env.database_url.as_str()),
            ("TOPIC_PREFIX", env.topic_prefix.as_str()),
            ("EVENT_PARTITIONS", partitions.as_str()),
            ("PROJECTIONS_ADDR", "127.0.0.1:0"),
            ("API_KEYS", API_KEY),
        ];
        vars.extend_from_slice(extra);
        let config = projections::Config::from_env(&Env::from_pairs(vars))?;
        let service = projections::build(config).await?;
        let base = format!("http://{}", service.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run_until(async move {
            let _ = stopped.await;
        }));
        // Queries before the migrations ran answer 503, as they should; a caller waits
        // for /ready as a load balancer would.
        test_support::wait_for_200(&format!("{base}/ready"), Duration::from_secs(30)).await?;
        Ok(Self {
            base,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_projections");
/// The process, killed when the test lets go of it (also when an assertion fails).
pub struct Projections(pub Child);

impl Drop for Projections {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The consumer-group session timeout the spawned projections processes ask for.
pub const SESSION: Duration = Duration::from_secs(3);

/// The projections binary on the test's broker and database (session timeout
/// [`SESSION`]), its logs at `PROJECTIONS_LOG` level into `PROJECTIONS_LOG_FILE` when set.
pub fn spawn(env: &TestEnv) -> Projections {
    let level = std::env::var("PROJECTIONS_LOG").unwrap_or_else(|_| "error".into());
    let file = std::env::var("PROJECTIONS_LOG_FILE").ok();
    spawn_logging(env, &level, file.as_deref())
}

/// [`spawn`] with its JSON log lines at `level` appended to `file`.
pub fn spawn_logging(env: &TestEnv, level: &str, file: Option<&str>) -> Projections {
    Projections(
        Command::new(BIN)
            .env("KAFKA_BROKERS", &env.brokers)
            .env("DATABASE_URL", &env.database_url)
            .env("TOPIC_PREFIX", &env.topic_prefix)
            .env("EVENT_PARTITIONS", PARTITIONS.to_string())
            .env("KAFKA_SESSION_TIMEOUT_MS", SESSION.as_millis().to_string())
            .env("PROJECTIONS_ADDR", "127.0.0.1:0")
            .env("API_KEYS", API_KEY)
            .env("PROJECTION_BATCH_MAX", "200")
            .env("RUST_LOG", level)
            .stdout(match file {
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_or_else(|_| Stdio::null(), Stdio::from),
                None => Stdio::null(),
            })
            .spawn()
            .expect("start the projections binary"),
    )
}

pub fn random_below(n: u64) -> u64 {
    u64::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(n)).unwrap_or(0)
}

/// Appends `document`, again while the broker refuses it (it retries only an append whose
/// delivery failed; a copy that landed unseen is a duplicate the reader rule drops).
pub async fn append(log: &Mutex<Log>, document: schemas::EventDocument) {
    for _ in 0..10 {
        match log.lock().await.append(document.clone()).await {
            Ok(_) => return,
            Err(e) => {
                eprintln!("append failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    panic!("the broker refused an append ten times");
}

/// Writes order lifecycles until stopped: place, then confirm, then cancel, interleaved.
pub async fn write_until(log: Arc<Mutex<Log>>, stop: CancellationToken) {
    let user = UserId::new();
    let mut open: Vec<(OrderId, u64)> = Vec::new();
    while !stop.is_cancelled() {
        for _ in 0..5 {
            let pick = random_below(3);
            if pick == 0 || open.is_empty() {
                let order = OrderId::new();
                append(&log, event(1, placed(order, user))).await;
                open.push((order, 1));
            } else {
                let at = usize::try_from(random_below(open.len() as u64)).unwrap_or(0);
                let (order, version) = open[at];
                let payload = if version == 1 {
                    confirmed(order)
                } else {
                    cancelled(order)
                };
                append(&log, event(version + 1, payload)).await;
                if version + 1 == 3 {
                    open.swap_remove(at);
                } else {
                    open[at].1 = version + 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
