//! HTTP commands per second and latency, against raw rdkafka idempotent produce of the same
//! event records to the same broker, at the same concurrency, in one run. Then the same for
//! registrations, with what sealing a user's personal data costs on their path (a key made
//! in Postgres, two fields sealed, the address hashed) measured alone.
//!
//!     ./dev bench            (or, with SHOP_TEST_DATABASE_URL set: cargo bench -p command-api)
//!
//! The load generator is this program (reqwest, one client, `CONCURRENCY` callers each
//! waiting for its answer). The broker is a private Apache Kafka node, as in the local stack.

use std::sync::Arc;
use std::time::Duration;

use event_store::partitioner::partition_for;
use event_store::record::to_kafka_headers;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::orders::{OrderEvent, OrderLine, OrderPlaced};
use schemas::users::{UserEvent, UserRegistered};
use schemas::{Event, EventMeta, OrderId, UserId};
use serde_json::json;
use service_runtime::Env;
use service_runtime::personal_data::{EmailIndex, KeyStore, SubjectKey};
use test_support::load::drive;
use test_support::metrics::observed;
use test_support::raw_transactions::{self, TransactionalSenders};

const PARTITIONS: i32 = 8;
const USERS: usize = 200;
const ORDERS: usize = 5_000;
const CONCURRENCY: usize = 32;
const REGISTRATIONS: usize = 2_000;

fn order_placed(user: UserId) -> Event<OrderEvent> {
    Event {
        meta: EventMeta::new(1),
        payload: OrderPlaced {
            order_id: OrderId::new(),
            user_id: user,
            currency: "EUR".parse().expect("EUR"),
            lines: vec![OrderLine {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_cents: 1250,
            }],
            total_cents: 2500,
        }
        .into(),
    }
}

/// A record as the raw baseline sends it: key, value, headers.
type RawRecord = (String, Vec<u8>, Vec<(&'static str, String)>);

fn record_of(document: &schemas::EventDocument) -> RawRecord {
    (
        document.subject.clone(),
        document.to_json(),
        document.headers(),
    )
}

/// The raw baseline: rdkafka idempotent produce of `records` to `topic`, `CONCURRENCY`
/// senders each waiting for its acknowledgement.
async fn raw_produce(
    producer: &FutureProducer,
    topic: &'static str,
    records: Vec<RawRecord>,
) -> test_support::load::Run {
    let (producer, records) = (producer.clone(), Arc::new(records));
    drive(records.len(), CONCURRENCY, move |i| {
        let (producer, records) = (producer.clone(), Arc::clone(&records));
        async move {
            let (key, value, headers) = &records[i];
            let record = FutureRecord::to(topic)
                .key(key)
                .payload(value)
                .headers(to_kafka_headers(headers));
            producer
                .send(record, Duration::from_secs(30))
                .await
                .expect("raw produce");
        }
    })
    .await
}

/// The transactional baseline: `records` committed by one transactional producer per
/// partition (group commit), `CONCURRENCY` senders each waiting for the commit.
async fn raw_transactional(
    senders: &TransactionalSenders,
    records: &[RawRecord],
) -> test_support::load::Run {
    let records = records
        .iter()
        .map(|(key, value, headers)| raw_transactions::RawRecord {
            partition: partition_for(key, PARTITIONS),
            key: key.clone(),
            value: value.clone(),
            headers: to_kafka_headers(headers),
        })
        .collect();
    senders.drive(records, CONCURRENCY).await
}

async fn metrics_text(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Where the orders' time went between two scrapes of the command API's metrics.
fn print_stages(before: &str, after: &str) {
    let orders = ("service", "orders");
    println!("where a command's time goes (over the run):");
    let request = observed(
        before,
        after,
        "shop_http_request_duration_seconds",
        &[("route", "/v1/orders"), ("method", "POST")],
    );
    println!(
        "  POST /v1/orders in the service: mean {:.2} ms, p99 <= {:.0} ms, over {} requests",
        request.mean() * 1000.0,
        request.p99_bound * 1000.0,
        request.count
    );
    let mut transactions = 0;
    for stage in ["produce", "commit"] {
        let step = observed(
            before,
            after,
            "shop_writer_transaction_seconds",
            &[orders, ("stage", stage)],
        );
        println!(
            "  orders transaction {stage}: mean {:.2} ms, p99 <= {:.0} ms, over {} transactions",
            step.mean() * 1000.0,
            step.p99_bound * 1000.0,
            step.count
        );
        transactions = step.count;
    }
    let commands = observed(before, after, "shop_writer_batch_size", &[orders]).sum;
    println!(
        "  orders commands per transaction: {:.1}",
        commands / transactions.max(1) as f64
    );
}

/// `count` POSTs of `body(i)` to `url`, `CONCURRENCY` callers each waiting for its 201.
async fn http_posts(
    client: &reqwest::Client,
    url: String,
    count: usize,
    body: impl Fn(usize) -> serde_json::Value + Send + Sync + 'static,
) -> test_support::load::Run {
    let (client, url, body) = (client.clone(), Arc::new(url), Arc::new(body));
    drive(count, CONCURRENCY, move |i| {
        let (client, url, body) = (client.clone(), Arc::clone(&url), Arc::clone(&body));
        async move {
            let response = client
                .post(url.as_str())
                .bearer_auth("bench")
                .json(&body(i))
                .send()
                .await
                .expect("an answer");
            assert_eq!(response.status(), 201);
        }
    })
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = test_support::TestEnv::new().await;
    let broker = test_support::PrivateBroker::start().await;
    let settings = KafkaSettings::new(&broker.brokers);
    let topics = TopicNames::new("");
    TopicAdmin::new(&settings)?
        .create(&topics.all(PARTITIONS), 1)
        .await?;
    TopicAdmin::new(&settings)?
        .create(
            &TopicNames::new("raw.").for_services(&["orders", "users"], PARTITIONS),
            1,
        )
        .await?;
    let partitions = PARTITIONS.to_string();
    let config = command_api::Config::from_env(&Env::from_pairs([
        ("KAFKA_BROKERS", broker.brokers.as_str()),
        ("DATABASE_URL", env.database_url.as_str()),
        ("EVENT_PARTITIONS", partitions.as_str()),
        ("COMMAND_API_ADDR", "127.0.0.1:0"),
        ("API_KEYS", "bench"),
        ("RATE_LIMIT_PER_SECOND", "1000000"),
        ("RATE_LIMIT_BURST", "1000000"),
        ("RUST_LOG", "warn"),
    ]))?;
    let service = command_api::build(config).await?;
    let base = format!("http://{}", service.local_addr());
    // Stopped before the broker goes: a consumer dropped after its broker died can wait
    // forever to leave its group, and the process with it.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    while !client
        .get(format!("{base}/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Users to order for (and a warm-up of the whole path).
    let mut users = Vec::new();
    for i in 0..USERS {
        loop {
            let response = client
                .post(format!("{base}/v1/users"))
                .bearer_auth("bench")
                .json(
                    &json!({"name": format!("User {i}"), "email": format!("user{i}@example.com")}),
                )
                .send()
                .await?;
            if response.status() == 201 {
                let body: serde_json::Value = response.json().await?;
                users.push(body["id"].as_str().expect("id").parse::<UserId>()?);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let users = Arc::new(users);

    let producer: FutureProducer = settings.producer().create()?;
    let records: Vec<RawRecord> = (0..ORDERS)
        .map(|i| record_of(&order_placed(users[i % USERS]).to_document()))
        .collect();
    let raw = raw_produce(&producer, "raw.orders.events", records.clone()).await;
    let senders = TransactionalSenders::start(
        &settings.producer(),
        "raw.orders.outcomes",
        PARTITIONS,
        "raw-tx-orders",
    )
    .await;
    let raw_tx = raw_transactional(&senders, &records).await;
    let before = metrics_text(&client, &base).await?;
    let http = {
        let users = Arc::clone(&users);
        http_posts(&client, format!("{base}/v1/orders"), ORDERS, move |i| {
            json!({"user_id": users[i % USERS], "currency": "EUR",
                   "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}]})
        })
        .await
    };
    let after = metrics_text(&client, &base).await?;
    let ((raw_p50, raw_p99), (http_p50, http_p99)) = (raw.percentiles(), http.percentiles());
    let (tx_p50, tx_p99) = raw_tx.percentiles();
    let (raw_rate, http_rate) = (raw.per_second, http.per_second);
    println!(
        "HTTP commands: {ORDERS} POST /v1/orders, {CONCURRENCY} concurrent, {PARTITIONS} partitions, a private Apache Kafka node"
    );
    println!("| path | per second | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "| raw rdkafka idempotent produce of the OrderPlaced records | {raw_rate:.0} | {raw_p50:.2} | {raw_p99:.2} |"
    );
    println!(
        "| raw rdkafka transactional produce of them (a producer per partition, group commit) | {:.0} | {tx_p50:.2} | {tx_p99:.2} |",
        raw_tx.per_second
    );
    println!(
        "| HTTP command (auth, validate, read user, decide, append, confirm) | {http_rate:.0} | {http_p50:.2} | {http_p99:.2} |"
    );
    println!();
    println!(
        "ratio: throughput {:.2} of raw transactional (goal >= 0.5); p99 {:+.2} ms vs raw transactional (goal <= +5 ms)",
        http_rate / raw_tx.per_second,
        http_p99 - tx_p99
    );
    println!(
        "against raw idempotent produce (no transactions): throughput {:.2}, p99 {:+.2} ms",
        http_rate / raw_rate,
        http_p99 - raw_p99
    );
    print_stages(&before, &after);
    println!();
    registrations(&base, &client, &producer, &env.database_url).await?;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), server).await???;
    Ok(())
}

/// Registrations over HTTP against raw produce of as many `UserRegistered` records, and the
/// sealing they include, alone: what forgetting costs on the command path.
async fn registrations(
    base: &str,
    client: &reqwest::Client,
    producer: &FutureProducer,
    database_url: &str,
) -> anyhow::Result<()> {
    let key = SubjectKey::generate();
    let records = (0..REGISTRATIONS)
        .map(|i| {
            let user = UserId::new();
            let registered = UserRegistered {
                user_id: user,
                name: key.seal(user.as_uuid(), &format!("Bench User {i}")),
                email: key.seal(user.as_uuid(), &format!("bench{i}@example.com")),
                claim_id: Some(EmailIndex::development().claim_id("bench@example.com")),
            };
            record_of(
                &Event::<UserEvent> {
                    meta: EventMeta::new(1),
                    payload: registered.into(),
                }
                .to_document(),
            )
        })
        .collect();
    let raw = raw_produce(producer, "raw.users.events", records).await;
    let http = http_posts(
        client,
        format!("{base}/v1/users"),
        REGISTRATIONS,
        |i| json!({"name": format!("Bench User {i}"), "email": format!("bench{i}@example.com")}),
    )
    .await;
    let keys = KeyStore::new(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(database_url)
            .await?,
    );
    let index = EmailIndex::development();
    let sealing = {
        let (keys, index) = (keys.clone(), index.clone());
        drive(REGISTRATIONS, CONCURRENCY, move |i| {
            let (keys, index) = (keys.clone(), index.clone());
            async move {
                let user = uuid::Uuid::now_v7();
                let key = keys
                    .for_writing(user)
                    .await
                    .expect("the key store")
                    .expect("a key");
                let email = format!("sealed{i}@example.com");
                std::hint::black_box((
                    key.seal(user, &format!("Bench User {i}")),
                    key.seal(user, &email),
                    index.claim_id(&email),
                ));
            }
        })
        .await
    };
    let (raw_p, http_p, sealing_p) = (raw.percentiles(), http.percentiles(), sealing.percentiles());
    println!(
        "Registrations: {REGISTRATIONS} POST /v1/users, {CONCURRENCY} concurrent (each claims the address, then registers: two writes)"
    );
    println!("| path | per second | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "| raw rdkafka idempotent produce of the UserRegistered records | {:.0} | {:.2} | {:.2} |",
        raw.per_second, raw_p.0, raw_p.1
    );
    println!(
        "| HTTP registration (claim, seal, register) | {:.0} | {:.2} | {:.2} |",
        http.per_second, http_p.0, http_p.1
    );
    println!(
        "| sealing alone (key made in Postgres, name and email sealed, address hashed) | {:.0} | {:.2} | {:.2} |",
        sealing.per_second, sealing_p.0, sealing_p.1
    );
    println!(
        "ratio: registration throughput {:.2} of raw; sealing is {:.0}% of a registration's p50",
        http.per_second / raw.per_second,
        100.0 * sealing_p.0 / http_p.0
    );
    Ok(())
}
