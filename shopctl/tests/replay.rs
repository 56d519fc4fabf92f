//! `shopctl replay`, `tail`, `read` and `explain` on the real broker and Postgres.
//!
//! Replay filters are checked against what the test wrote: each filter returns exactly
//! the matching records (as a set of positions), nothing more and nothing missing.
//! `explain` is checked on a real order's saga, through the real services.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{Log, json_lines, shopctl, shopctl_command, succeeded};
use schemas::orders::{
    CancelledBy, OrderCancelled, OrderConfirmed, OrderEvent, OrderLine, OrderPlaced,
};
use schemas::users::{UserEvent, UserRegistered};
use schemas::{
    CorrelationId, Currency, Event, EventDocument, EventMeta, OrderId, PaymentId, UserId,
};
use serde_json::{Value, json};
use system_tests::{create_topics, service_env, start_services, wait_for_200};
use test_support::TestEnv;

/// One record the test wrote: where it went and what it was.
#[derive(Clone, Debug)]
struct Written {
    topic: String,
    partition: i32,
    offset: i64,
    document: EventDocument,
}

type Positions = BTreeSet<(String, i32, i64)>;

fn positions<'a>(written: impl IntoIterator<Item = &'a Written>) -> Positions {
    written
        .into_iter()
        .map(|w| (w.topic.clone(), w.partition, w.offset))
        .collect()
}

fn replayed(lines: &[Value]) -> Positions {
    lines
        .iter()
        .map(|l| {
            (
                l["topic"].as_str().unwrap_or_default().to_owned(),
                l["partition"].as_i64().unwrap_or(-1) as i32,
                l["offset"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn minute(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0)
        .single()
        .expect("a time")
        + chrono::Duration::minutes(n)
}

fn document<E: schemas::MessageFamily>(
    version: u64,
    at: DateTime<Utc>,
    correlation: CorrelationId,
    payload: E,
) -> EventDocument
where
    Event<E>: Sized,
{
    let mut meta = EventMeta::new(version);
    meta.occurred_at = at;
    meta.correlation_id = correlation;
    Event { meta, payload }.to_document()
}

/// Six orders over six minutes (the first three in one correlation), some confirmed and
/// cancelled, and two users.
async fn write_history(env: &TestEnv) -> anyhow::Result<Vec<Written>> {
    create_topics(env).await?;
    let log = Log::new(env)?;
    let shared = CorrelationId::new();
    let user = UserId::new();
    let mut written = Vec::new();
    let mut record = |service: &str, document: EventDocument, at: (i32, i64)| {
        written.push(Written {
            topic: log.topics.events(service),
            partition: at.0,
            offset: at.1,
            document,
        });
    };
    for i in 0..6i64 {
        let order = OrderId::new();
        let correlation = if i < 3 { shared } else { CorrelationId::new() };
        let placed = document(
            1,
            minute(i),
            correlation,
            OrderEvent::from(OrderPlaced {
                order_id: order,
                user_id: user,
                currency: "EUR".parse::<Currency>()?,
                lines: vec![OrderLine {
                    sku: "SKU-1".into(),
                    quantity: 1,
                    unit_price_cents: 500,
                }],
                total_cents: 500,
            }),
        );
        record(
            "orders",
            placed.clone(),
            log.append("orders", &placed).await?,
        );
        if i % 2 == 0 {
            let confirmed = document(
                2,
                minute(i) + chrono::Duration::seconds(20),
                correlation,
                OrderEvent::from(OrderConfirmed {
                    order_id: order,
                    payment_id: PaymentId::for_order(order),
                }),
            );
            record(
                "orders",
                confirmed.clone(),
                log.append("orders", &confirmed).await?,
            );
        }
        if i % 3 == 0 {
            let version = if i % 2 == 0 { 3 } else { 2 };
            let cancelled = document(
                version,
                minute(i) + chrono::Duration::seconds(40),
                correlation,
                OrderEvent::from(OrderCancelled {
                    order_id: order,
                    reason: "changed my mind".into(),
                    cancelled_by: CancelledBy::Customer,
                }),
            );
            record(
                "orders",
                cancelled.clone(),
                log.append("orders", &cancelled).await?,
            );
        }
    }
    for i in 0..2i64 {
        let id = UserId::new();
        let registered = document(
            1,
            minute(i),
            CorrelationId::new(),
            UserEvent::from(UserRegistered {
                user_id: id,
                name: format!("User {i}"),
                email: format!("user{i}@example.com"),
                claim_id: None,
            }),
        );
        record(
            "users",
            registered.clone(),
            log.append("users", &registered).await?,
        );
    }
    Ok(written)
}

fn replay(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["replay"];
    all.extend_from_slice(args);
    json_lines(&succeeded(&shopctl(env, &all)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_filters_return_exactly_the_matching_events() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let written = write_history(&env).await?;
    let orders: Vec<&Written> = written
        .iter()
        .filter(|w| w.topic.ends_with("orders.events"))
        .collect();
    let of = |keep: &dyn Fn(&Written) -> bool| positions(written.iter().filter(|w| keep(w)));

    assert_eq!(
        replayed(&replay(&env, &[])),
        positions(&written),
        "no filter: every event"
    );
    assert_eq!(
        replayed(&replay(&env, &["--topic", "orders.events"])),
        positions(orders.iter().copied())
    );
    assert_eq!(
        replayed(&replay(&env, &["--topic", "users"])),
        of(&|w| w.topic.ends_with("users.events"))
    );

    let one = &orders[0].document.subject;
    let lines = replay(&env, &["--aggregate", one]);
    assert_eq!(replayed(&lines), of(&|w| &w.document.subject == one));
    let versions: Vec<i64> = lines
        .iter()
        .filter_map(|l| l["value"]["aggregateversion"].as_i64())
        .collect();
    assert_eq!(versions, [1, 2, 3], "an aggregate's events in log order");

    assert_eq!(
        replayed(&replay(
            &env,
            &["--type", "OrderConfirmed", "--type", "OrderCancelled"]
        )),
        of(&|w| ["OrderConfirmed", "OrderCancelled"].contains(&w.document.event_type.as_str()))
    );
    let (from, to) = (minute(2), minute(4));
    assert_eq!(
        replayed(&replay(
            &env,
            &["--from", &from.to_rfc3339(), "--to", &to.to_rfc3339()]
        )),
        of(&|w| w.document.time >= from && w.document.time < to)
    );
    let correlation = orders[0].document.correlationid.to_string();
    assert_eq!(
        replayed(&replay(&env, &["--correlation", &correlation])),
        of(&|w| w.document.correlationid.to_string() == correlation)
    );
    assert_eq!(
        replayed(&replay(
            &env,
            &[
                "--topic",
                "orders",
                "--type",
                "OrderPlaced",
                "--correlation",
                &correlation,
                "--from",
                &minute(1).to_rfc3339(),
            ]
        )),
        of(&|w| w.document.event_type == "OrderPlaced"
            && w.document.correlationid.to_string() == correlation
            && w.document.time >= minute(1))
    );
    assert_eq!(replay(&env, &["--limit", "3"]).len(), 3);
    let line = &replay(&env, &["--aggregate", one, "--limit", "1"])[0];
    assert_eq!(line["key"], json!(one));
    assert_eq!(line["headers"]["ce_type"], "OrderPlaced");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_follow_prints_events_written_after_it_started() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let written = write_history(&env).await?;
    let mut follower = shopctl_command(&env, &["replay", "--follow", "--type", "OrderRejected"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = follower.stdout.take().expect("stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let order = OrderId::new();
    let rejected = document(
        1,
        Utc::now(),
        CorrelationId::new(),
        OrderEvent::from(schemas::orders::OrderRejected {
            order_id: order,
            reason: "payment declined".into(),
        }),
    );
    Log::new(&env)?.append("orders", &rejected).await?;
    let line = received.recv_timeout(Duration::from_secs(20));
    follower.kill()?;
    follower.wait()?;
    let line: Value = serde_json::from_str(&line?)?;
    assert_eq!(line["value"]["subject"], json!(order.to_string()));
    assert!(written.len() > 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_read_show_keys_headers_and_pretty_json() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let written = write_history(&env).await?;
    let order = written[0].document.subject.clone();

    let text = succeeded(&shopctl(&env, &["read", "order", &order]));
    assert_eq!(text.matches(&format!("key: {order}")).count(), 3, "{text}");
    assert!(text.contains("  ce_type: OrderPlaced") && text.contains("  ce_type: OrderCancelled"));
    assert!(
        text.contains("  \"aggregateversion\": 2,"),
        "pretty JSON: {text}"
    );
    let lines = json_lines(&succeeded(&shopctl(
        &env,
        &["read", "order", &order, "--json"],
    )));
    let types: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["value"]["type"].as_str())
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderConfirmed", "OrderCancelled"]);
    let missing = shopctl(&env, &["read", "order", &OrderId::new().to_string()]);
    assert!(!missing.status.success());

    let all = json_lines(&succeeded(&shopctl(
        &env,
        &[
            "tail",
            "orders.events",
            "--from-beginning",
            "--no-follow",
            "--json",
        ],
    )));
    let orders = written
        .iter()
        .filter(|w| w.topic.ends_with("orders.events"));
    assert_eq!(replayed(&all), positions(orders));
    // `--last` counts back from the ends the broker reports (ListOffsets).
    let last = json_lines(&succeeded(&shopctl(
        &env,
        &["tail", "orders", "--last", "1", "--no-follow", "--json"],
    )));
    // The last record of each partition that holds any: the order ids are random, so now
    // and then every order lands in one partition.
    let mut newest: BTreeMap<i32, &Written> = BTreeMap::new();
    for w in written
        .iter()
        .filter(|w| w.topic.ends_with("orders.events"))
    {
        let entry = newest.entry(w.partition).or_insert(w);
        if w.offset > entry.offset {
            *entry = w;
        }
    }
    assert_eq!(
        replayed(&last),
        positions(newest.into_values()),
        "one record per partition"
    );
    Ok(())
}

/// Walks the first branch under `node`, collecting event types and saga step names.
fn first_branch(node: &Value, out: &mut Vec<String>) {
    match node["kind"].as_str() {
        Some("event" | "elsewhere") => {
            out.push(node["event_type"].as_str().unwrap_or("?").to_owned())
        }
        Some("saga_step") => out.push(format!("step {}", node["step"].as_str().unwrap_or("?"))),
        _ => {}
    }
    if let Some(child) = node["children"].as_array().and_then(|c| c.first()) {
        first_branch(child, out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explain_shows_what_one_request_caused_through_the_saga() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let services = start_services(&service_env(&env, &env.brokers, &env.database_url)).await?;
    for service in &services {
        wait_for_200(&service.url("/ready"), Duration::from_secs(60)).await?;
    }
    let client = test_support::client("test-key");
    let user: Value = client
        .post(services[0].url("/v1/users"))
        .header("Authorization", "Bearer test-key")
        .json(&json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .await?
        .json()
        .await?;
    let correlation = uuid::Uuid::new_v4().to_string();
    let order: Value = client
        .post(services[0].url("/v1/orders"))
        .header("Authorization", "Bearer test-key")
        .header("X-Correlation-Id", &correlation)
        .json(&json!({"user_id": user["id"], "currency": "EUR",
                      "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 700}]}))
        .send()
        .await?
        .json()
        .await?;
    let saga_url = services[2].url(&format!(
        "/v1/sagas/{}",
        order["id"].as_str().unwrap_or("?")
    ));
    let saga_in = async |state: &str| -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let saga: Value = client
                .get(&saga_url)
                .send()
                .await?
                .json()
                .await
                .unwrap_or_default();
            if saga["state"] == state {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "saga not {state}: {saga}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    saga_in("completed").await?;
    // The customer cancels in a request of their own: the saga's refund answers to it.
    let cancellation = uuid::Uuid::new_v4().to_string();
    let cancelled = client
        .post(services[0].url(&format!(
            "/v1/orders/{}/cancel",
            order["id"].as_str().unwrap_or("?")
        )))
        .header("Authorization", "Bearer test-key")
        .header("X-Correlation-Id", &cancellation)
        .json(&json!({"reason": "changed my mind"}))
        .send()
        .await?;
    anyhow::ensure!(
        cancelled.status().is_success(),
        "cancel: {}",
        cancelled.status()
    );
    saga_in("compensated").await?;
    let pool = env.pool().await;
    common::caught_up(&env, &pool, "event_index", Duration::from_secs(30)).await?;

    let report = &json_lines(&succeeded(&shopctl(
        &env,
        &["explain", &correlation, "--json"],
    )))[0];
    let tree = report["tree"].as_array().expect("a tree");
    assert_eq!(tree.len(), 2, "the request and the cancellation: {report}");
    assert_eq!(tree[0]["kind"], "request");
    let mut branch = Vec::new();
    first_branch(&tree[0], &mut branch);
    assert_eq!(
        branch,
        [
            "OrderPlaced",
            "step authorize_payment",
            "PaymentAuthorized",
            "step confirm_order",
            "OrderConfirmed",
            "step notify_order_confirmed",
            "NotificationSent",
        ],
        "{report}"
    );
    assert_eq!(
        (
            &tree[1]["kind"],
            &tree[1]["event_type"],
            &tree[1]["correlation_id"]
        ),
        (
            &json!("elsewhere"),
            &json!("OrderCancelled"),
            &json!(cancellation)
        ),
        "{report}"
    );
    let mut branch = Vec::new();
    first_branch(&tree[1], &mut branch);
    assert_eq!(
        branch,
        [
            "OrderCancelled",
            "step refund_payment",
            "PaymentRefunded",
            "step notify_order_cancelled",
            "NotificationSent",
        ],
        "{report}"
    );
    let text = succeeded(&shopctl(&env, &["explain", &correlation]));
    assert!(text.contains("└── OrderPlaced order"), "{text}");
    assert!(
        text.contains("orders.events/"),
        "positions are shown: {text}"
    );
    let unknown = shopctl(&env, &["explain", &uuid::Uuid::new_v4().to_string()]);
    assert!(!unknown.status.success());
    for service in services {
        service.stop().await?;
    }
    Ok(())
}
