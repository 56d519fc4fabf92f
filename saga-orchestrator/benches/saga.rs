//! Sagas per second, and order placed -> customer notified latency at half of the command
//! path's capacity, against the broker's raw floor measured in the same run.
//!
//!     ./dev bench          (BENCH_SAGAS, default 1000; BENCH_PARTITIONS, default 8)
//!
//! 1. Capacity of the command path: `POST /v1/orders` from 16 callers, orders/s.
//! 2. Orders placed at half that rate, open loop; each is timed from its POST to the
//!    moment a local webhook receiver gets its "order confirmed" notice.
//! 3. Raw floor: produce ack -> plain consumer, per record. Before the webhook fires, a
//!    saga crosses the broker five times (OrderPlaced, AuthorizePayment, PaymentAuthorized,
//!    ConfirmOrder, OrderConfirmed), so the floor of the path is five of these.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use serde_json::{Value, json};
use service_runtime::Env;
use test_support::load::{Run, drive};

const KEY: &str = "bench-key";

/// Arrival time of each order's first "order confirmed" notice, by order id.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver() -> anyhow::Result<(String, Arrivals)> {
    let arrivals: Arrivals = Arc::default();
    let log = Arc::clone(&arrivals);
    let app = Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let log = Arc::clone(&log);
            async move {
                let at = Instant::now();
                let notice: Value = serde_json::from_slice(&body).unwrap_or_default();
                if notice["kind"] == "order_confirmed" {
                    let order = notice["order_id"].as_str().unwrap_or_default().to_owned();
                    log.lock().expect("lock").entry(order).or_insert(at);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, arrivals))
}

/// The command API and the orchestrator in this process; the command API's base URL.
async fn start_services(
    env: &test_support::TestEnv,
    webhook: &str,
    partitions: i32,
) -> anyhow::Result<String> {
    let partitions = partitions.to_string();
    let settings = Env::from_pairs([
        ("KAFKA_BROKERS", env.brokers.as_str()),
        ("DATABASE_URL", env.database_url.as_str()),
        ("TOPIC_PREFIX", env.topic_prefix.as_str()),
        ("EVENT_PARTITIONS", partitions.as_str()),
        ("COMMAND_API_ADDR", "127.0.0.1:0"),
        ("SAGA_ORCHESTRATOR_ADDR", "127.0.0.1:0"),
        ("API_KEYS", KEY),
        ("RATE_LIMIT_PER_SECOND", "1000000"),
        ("RATE_LIMIT_BURST", "1000000"),
        ("PAYMENT_LATENCY_MS", "5"),
        ("NOTIFICATION_WEBHOOK_URL", webhook),
        (
            "NOTIFICATION_WEBHOOK_SECRET",
            "whsec_YmVuY2gtd2ViaG9vay1zaWduaW5nLXNlY3JldA==",
        ),
    ]);
    let api = command_api::build(command_api::Config::from_env(&settings)?).await?;
    let saga = saga_orchestrator::build(saga_orchestrator::Config::from_env(&settings)?).await?;
    let url = format!("http://{}", api.local_addr());
    let ready = [
        format!("{url}/ready"),
        format!("http://{}/ready", saga.local_addr()),
    ];
    tokio::spawn(api.run_until(std::future::pending::<()>()));
    tokio::spawn(saga.run_until(std::future::pending::<()>()));
    let client = test_support::client(KEY);
    for probe in ready {
        let started = Instant::now();
        while !client
            .get(&probe)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "{probe} not ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(url)
}

/// Places `count` orders at `rate` per second (open loop), each timed from its POST to its
/// notice: (sagas completed per second, p50 ms, p99 ms).
async fn open_loop(
    client: &reqwest::Client,
    api: &str,
    user: &str,
    arrivals: &Arrivals,
    rate: f64,
    count: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    arrivals.lock().expect("lock").clear();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        let (client, api, user, sent) = (
            client.clone(),
            api.to_owned(),
            user.to_owned(),
            Arc::clone(&sent),
        );
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            if let Some(order) = place(&client, &api, &user).await {
                sent.lock().expect("lock").insert(order, at);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let sent = sent.lock().expect("lock").clone();
    drained(arrivals, sent.len()).await?;
    let arrivals = arrivals.lock().expect("lock").clone();
    let latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(order, at)| {
            arrivals
                .get(order)
                .map(|n| n.saturating_duration_since(*at))
        })
        .collect();
    let last = arrivals.values().max().copied().unwrap_or(started);
    let per_second = sent.len() as f64 / last.duration_since(started).as_secs_f64();
    let (p50, p99) = Run {
        per_second: 0.0,
        latencies,
    }
    .percentiles();
    Ok((per_second, p50, p99))
}

async fn place(client: &reqwest::Client, api: &str, user: &str) -> Option<String> {
    let response = client
        .post(format!("{api}/v1/orders"))
        .bearer_auth(KEY)
        .json(&json!({"user_id": user, "currency": "EUR",
                      "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1250}]}))
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    body["id"].as_str().map(str::to_owned)
}

/// Waits until every order in `orders` got its notice (or 5 minutes passed).
async fn drained(arrivals: &Arrivals, orders: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    while arrivals.lock().expect("lock").len() < orders {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "sagas did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = test_support::bench_knob("BENCH_SAGAS", 1000);
    // Partitions per topic (the local stack's default).
    let partitions: i32 = test_support::bench_knob("BENCH_PARTITIONS", 8);
    let env = test_support::TestEnv::new().await;
    let settings = KafkaSettings::new(&env.brokers);
    let topics = TopicNames::new(&env.topic_prefix);
    let mut specs = topics.all(partitions);
    specs.extend(
        TopicNames::new(format!("{}raw.", env.topic_prefix)).for_services(&["orders"], partitions),
    );
    TopicAdmin::new(&settings)?.create(&specs, 1).await?;
    let (webhook, arrivals) = receiver().await?;
    let api = start_services(&env, &webhook, partitions).await?;
    let client = test_support::client(KEY);
    let user: Value = client
        .post(format!("{api}/v1/users"))
        .bearer_auth(KEY)
        .json(&json!({"name": "Bench", "email": "bench@example.com"}))
        .send()
        .await?
        .json()
        .await?;
    let user = user["id"].as_str().unwrap_or_default().to_owned();

    // 1. Capacity of the command path.
    let capacity = {
        let (client, api, user) = (client.clone(), api.clone(), user.clone());
        drive(count, 16, move |_| {
            let (client, api, user) = (client.clone(), api.clone(), user.clone());
            async move {
                place(&client, &api, &user).await;
            }
        })
        .await
        .per_second
    };
    drained(&arrivals, count).await?;

    // 2. Open loop at half the capacity; then at half of what the sagas sustained there.
    let half = capacity / 2.0;
    let at_half = open_loop(&client, &api, &user, &arrivals, half, count).await?;
    let gentle = at_half.0 / 2.0;
    let at_gentle = open_loop(&client, &api, &user, &arrivals, gentle, count / 2).await?;

    // 3. The broker's floor, same run.
    let raw = test_support::floor::produce_to_consume(
        settings.producer().create()?,
        &settings.consumer("raw-saga"),
        &TopicNames::new(format!("{}raw.", env.topic_prefix)).events("orders"),
        partitions,
        (count, 4),
    )
    .await?;
    let (raw50, raw99) = raw.percentiles();
    println!("partitions per topic: {partitions}");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| command path capacity (POST /v1/orders, 16 callers) | {capacity:.0} orders/s |");
    println!("| raw produce -> consume p50 / p99 (same broker) | {raw50:.1} / {raw99:.1} ms |");
    for (rate, (sagas_per_second, p50, p99)) in [(half, at_half), (gentle, at_gentle)] {
        println!(
            "| offered {rate:.0} orders/s (open loop): sagas completed per second | {sagas_per_second:.0} |"
        );
        println!(
            "| offered {rate:.0} orders/s: placed -> notified p50 / p99 | {p50:.1} / {p99:.1} ms |"
        );
        println!(
            "| offered {rate:.0} orders/s: p99 / (5 x raw p99) | {:.2} |",
            p99 / (5.0 * raw99)
        );
    }
    Ok(())
}
