//! The orchestrator as a real process, killed with SIGKILL at random moments 20 times while
//! 200 sagas run (with the real command API writing, a real local webhook receiver, and a
//! share of declined payments and customer cancellations). At the end: every saga is
//! completed or compensated; in the log, each command's effect happened exactly once (no
//! aggregate has two events of one kind); the end states agree with each other; every
//! notification reached the webhook at least once, always under its one id, signed.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use futures_util::StreamExt;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use saga_orchestrator::providers::webhook::signature;
use schemas::EventDocument;
use serde_json::{Value, json};
use service_runtime::Env;
use test_support::TestEnv;

const BIN: &str = env!("CARGO_BIN_EXE_saga-orchestrator");
const KILLS: usize = 20;
const SAGAS: usize = 200;
const PARTITIONS: i32 = 4;
const SECRET: &str = "whsec_Y3Jhc2gtdGVzdC13ZWJob29rLXNlY3JldA==";
const KEY: &str = "test-key";

/// The orchestrator process, killed when the test lets go of it.
struct Orchestrator(Child);

impl Drop for Orchestrator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(env: &TestEnv, webhook: &str) -> Orchestrator {
    Orchestrator(
        Command::new(BIN)
            .env("KAFKA_BROKERS", &env.brokers)
            .env("DATABASE_URL", &env.database_url)
            .env("TOPIC_PREFIX", &env.topic_prefix)
            .env("EVENT_PARTITIONS", PARTITIONS.to_string())
            .env("SAGA_ORCHESTRATOR_ADDR", "127.0.0.1:0")
            .env("API_KEYS", KEY)
            .env("SAGA_STEP_LEASE_MS", "2000")
            .env("SAGA_BATCH_MAX", "100")
            .env("PAYMENT_LATENCY_MS", "30")
            .env("PAYMENT_DECLINE_ABOVE_CENTS", "5000")
            .env("NOTIFICATION_WEBHOOK_URL", webhook)
            .env("NOTIFICATION_WEBHOOK_SECRET", SECRET)
            .env(
                "RUST_LOG",
                std::env::var("SAGA_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(match std::env::var("SAGA_LOG_FILE") {
                Ok(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_or_else(|_| Stdio::null(), Stdio::from),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .expect("start the saga-orchestrator binary"),
    )
}

fn random_below(n: u64) -> u64 {
    u64::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(n.max(1))).unwrap_or(0)
}

/// Every webhook request: (webhook-id, body, signed correctly).
type Deliveries = Arc<Mutex<Vec<(String, Value, bool)>>>;

async fn webhook_receiver() -> anyhow::Result<(String, Deliveries)> {
    let deliveries: Deliveries = Arc::default();
    let log = Arc::clone(&deliveries);
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let log = Arc::clone(&log);
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let id = header("webhook-id");
                let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
                let secret = SECRET.parse().expect("a whsec_ secret");
                let signed =
                    signature(&[secret], &id, timestamp, &body) == header("webhook-signature");
                let json = serde_json::from_slice(&body).unwrap_or_default();
                log.lock().expect("receiver lock").push((id, json, signed));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, deliveries))
}

/// The command API in this process: the writers the saga's commands go to.
async fn command_api(env: &TestEnv) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let partitions = PARTITIONS.to_string();
    let settings = Env::from_pairs([
        ("KAFKA_BROKERS", env.brokers.as_str()),
        ("DATABASE_URL", env.database_url.as_str()),
        ("TOPIC_PREFIX", env.topic_prefix.as_str()),
        ("EVENT_PARTITIONS", partitions.as_str()),
        ("COMMAND_API_ADDR", "127.0.0.1:0"),
        ("API_KEYS", KEY),
        ("RATE_LIMIT_PER_SECOND", "100000"),
        ("RATE_LIMIT_BURST", "100000"),
    ]);
    let bound = command_api::build(command_api::Config::from_env(&settings)?).await?;
    let url = format!("http://{}", bound.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.run_until(async move {
        let _ = stopped.await;
    }));
    test_support::wait_for_200(&format!("{url}/ready"), Duration::from_secs(30)).await?;
    Ok((url, stop))
}

async fn post_json(client: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    for _ in 0..50 {
        let response = client.post(url).bearer_auth(KEY).json(&body).send().await?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or_default();
        if status.is_success() {
            return Ok(answer);
        }
        if status.as_u16() != 503 {
            anyhow::bail!("POST {url}: {status} {answer}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("POST {url}: still 503")
}

/// Whether the orchestrator's checkpoints reached the last record of every partition of
/// the topics it reads.
async fn read_everything(
    pool: &sqlx::PgPool,
    settings: &KafkaSettings,
    topics: &TopicNames,
) -> anyhow::Result<bool> {
    let stored: Vec<(String, i32, i64)> =
        sqlx::query_as("SELECT topic, partition, next_offset FROM saga.checkpoints")
            .fetch_all(pool)
            .await?;
    for service in saga_orchestrator::runner::SERVICES {
        let topic = topics.events(service);
        let ends = event_store::scan::settled_ends(settings, &topic).await?;
        for (partition, end) in event_store::scan::record_ends(settings, &topic, &ends).await? {
            let next = stored
                .iter()
                .find(|(t, p, _)| *t == topic && *p == partition)
                .map_or(0, |(_, _, next)| *next);
            if next < end {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Every event of `topic`, decoded, in partition order.
async fn events_of(settings: &KafkaSettings, topic: &str) -> anyhow::Result<Vec<EventDocument>> {
    let mut all = Vec::new();
    for partition in 0..PARTITIONS {
        let reader = settings.partition_reader(topic, partition, 0)?;
        let mut stream = reader.stream();
        while let Some(message) =
            tokio::time::timeout(Duration::from_secs(30), stream.next()).await?
        {
            match message {
                Ok(m) => all.push(EventDocument::from_json(m.payload().unwrap_or_default())?),
                Err(KafkaError::PartitionEOF(_)) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(all)
}

/// Places the orders: a fifth above the decline limit; every tenth cancelled by its
/// customer after a random pause (some before confirmation, some after).
async fn place_orders(api: String) -> anyhow::Result<Vec<String>> {
    let client = test_support::client(KEY);
    let mut users = Vec::new();
    for i in 0..20 {
        let user = post_json(
            &client,
            &format!("{api}/v1/users"),
            json!({"name": format!("User {i}"), "email": format!("crash-{i}-{}@example.com", uuid::Uuid::new_v4().simple())}),
        )
        .await?;
        users.push(user["id"].as_str().unwrap_or_default().to_owned());
    }
    let placing = futures_util::stream::iter(0..SAGAS).map(|i| {
        let (client, api, user) = (client.clone(), api.clone(), users[i % users.len()].clone());
        async move {
            let cents = if i % 5 == 0 { 9_000 } else { 1_250 };
            let order = post_json(
                &client,
                &format!("{api}/v1/orders"),
                json!({"user_id": user, "currency": "EUR",
                       "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": cents}]}),
            )
            .await?;
            let id = order["id"].as_str().unwrap_or_default().to_owned();
            if i % 10 == 3 {
                tokio::time::sleep(Duration::from_millis(random_below(3000))).await;
                // A cancellation may come too late (the order was rejected): that is fine.
                let _ = client
                    .post(format!("{api}/v1/orders/{id}/cancel"))
                    .bearer_auth(KEY)
                    .json(&json!({"reason": "changed my mind"}))
                    .send()
                    .await;
            }
            anyhow::Ok(id)
        }
    });
    placing
        .buffer_unordered(20)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

#[tokio::test]
async fn every_saga_ends_and_every_effect_happens_once_through_20_sigkills() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let settings = KafkaSettings::new(&env.brokers);
    let topics = TopicNames::new(&env.topic_prefix);
    TopicAdmin::new(&settings)?
        .create(&topics.all(PARTITIONS), 1)
        .await?;
    let (webhook, deliveries) = webhook_receiver().await?;
    let (api, stop_api) = command_api(&env).await?;

    let mut orchestrator = spawn(&env, &webhook);
    let placing = tokio::spawn(place_orders(api));
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(300 + random_below(1200))).await;
        orchestrator.0.kill()?;
        orchestrator.0.wait()?;
        eprintln!("kill {} of {KILLS}", kill + 1);
        orchestrator = spawn(&env, &webhook);
    }
    let orders = placing.await??;
    assert_eq!(orders.len(), SAGAS);

    // Every saga ends.
    let pool = env.pool().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let states = loop {
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT order_id, state FROM saga.sagas")
                .fetch_all(&pool)
                .await?;
        let states: BTreeMap<String, String> = rows
            .into_iter()
            .map(|(id, state)| (id.to_string(), state))
            .collect();
        let done = orders
            .iter()
            .filter(|o| {
                matches!(
                    states.get(*o).map(String::as_str),
                    Some("completed" | "compensated")
                )
            })
            .count();
        // Final only once the orchestrator has taken in the whole log: after the last
        // kill its successor gets the partitions when the dead member's session expires,
        // and a customer's late cancellation may still be waiting for it.
        if done == SAGAS && read_everything(&pool, &settings, &topics).await? {
            break states;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{done} of {SAGAS} sagas ended; the others: {:?}",
            orders
                .iter()
                .filter_map(|o| states.get(o).map(|s| (o, s)))
                .filter(|(_, s)| !matches!(s.as_str(), "completed" | "compensated"))
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    drop(orchestrator);

    // Each effect once: no aggregate has two events of one kind.
    let mut kinds: HashMap<(String, String), usize> = HashMap::new();
    let mut last: HashMap<String, String> = HashMap::new();
    for service in ["orders", "payments", "notifications"] {
        for event in events_of(&settings, &topics.events(service)).await? {
            *kinds
                .entry((event.subject.clone(), event.event_type.clone()))
                .or_default() += 1;
            last.insert(
                format!(
                    "{}:{}",
                    event.aggregatetype,
                    event.data["order_id"].as_str().unwrap_or_default()
                ),
                event.event_type.clone(),
            );
            if event.aggregatetype == "payment" {
                last.insert(
                    format!(
                        "payment-of:{}",
                        event.data["order_id"].as_str().unwrap_or_default()
                    ),
                    event.event_type.clone(),
                );
            }
        }
    }
    let doubled: Vec<_> = kinds.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "effects that happened twice: {doubled:?}"
    );

    // End states agree: a completed saga has a confirmed order and a kept payment; a
    // compensated one has no kept payment and no confirmed order that stands.
    for order in &orders {
        let payment = last.get(&format!("payment-of:{order}")).map(String::as_str);
        let order_state = last.get(&format!("order:{order}")).map(String::as_str);
        match states[order].as_str() {
            "completed" => {
                assert_eq!(order_state, Some("OrderConfirmed"), "{order}");
                assert_eq!(payment, Some("PaymentAuthorized"), "{order}");
            }
            _ => {
                assert_ne!(
                    payment,
                    Some("PaymentAuthorized"),
                    "{order} keeps its payment"
                );
                assert!(
                    matches!(order_state, Some("OrderRejected" | "OrderCancelled")),
                    "{order}: {order_state:?}"
                );
            }
        }
    }

    // Every recorded notification reached the webhook, always under its own id, signed.
    let deliveries = deliveries.lock().expect("receiver lock").clone();
    assert!(
        deliveries.iter().all(|(_, _, signed)| *signed),
        "a bad signature"
    );
    for (id, body, _) in &deliveries {
        let order: schemas::OrderId = body["order_id"].as_str().unwrap_or_default().parse()?;
        let kind: schemas::notifications::NotificationKind =
            serde_json::from_value(body["kind"].clone())?;
        assert_eq!(
            *id,
            schemas::NotificationId::for_order(order, kind).to_string()
        );
    }
    let sent = kinds
        .keys()
        .filter(|(_, kind)| kind == "NotificationSent")
        .count();
    let delivered: std::collections::HashSet<&String> =
        deliveries.iter().map(|(id, _, _)| id).collect();
    assert!(
        delivered.len() >= sent,
        "{} notifications recorded sent, {} ids delivered",
        sent,
        delivered.len()
    );
    for (subject, kind) in kinds.keys() {
        if kind == "NotificationSent" {
            assert!(
                delivered.contains(subject),
                "notification {subject} recorded sent but never delivered"
            );
        }
    }
    eprintln!(
        "{SAGAS} sagas: {} completed, {} compensated; {} webhook requests for {} notifications",
        states.values().filter(|s| *s == "completed").count(),
        states.values().filter(|s| *s == "compensated").count(),
        deliveries.len(),
        delivered.len()
    );
    let _ = stop_api.send(());
    Ok(())
}
