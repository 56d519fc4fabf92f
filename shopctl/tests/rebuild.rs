//! `shopctl rebuild` on the real broker and Postgres, with the real services running:
//!
//! - blue/green rebuilds under a live command load with two projections instances: every
//!   query meanwhile answers without a 5xx on either, the rebuilt models equal the live
//!   ones at the swap, both live projectors go on with the swapped-in schema, and at the
//!   end each model equals a fold of the log;
//!   rebuilds fire nothing (no saga step, no command, no dead letter);
//! - determinism: a rebuild from offset zero, one killed at its midpoint and resumed, and
//!   one in place give the same checksum;
//! - `--compare-only` finds a tampered live model and leaves it; a rebuild repairs it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    Log, assert_same_rows, caught_up, count, fold, json_lines, log_of, shopctl, shopctl_command,
    stored, succeeded,
};
use event_store::TopicNames;
use event_store::scan;
use projections::read_models::orders::Orders;
use projections::read_models::users::Users;
use schemas::orders::{OrderConfirmed, OrderEvent, OrderLine, OrderPlaced};
use schemas::{Currency, Event, EventMeta, OrderId, PaymentId, UserId};
use serde_json::{Value, json};
use system_tests::{
    PARTITIONS, RunningService, create_topics, service_env, start_services, wait_for_200,
};
use test_support::TestEnv;
use tokio::sync::Mutex;

const KEY: &str = "Bearer test-key";

/// The three services in-process, ready, plus `more_projections` further instances of
/// the projections service (in the same consumer groups: they split the partitions).
async fn shop(env: &TestEnv, more_projections: usize) -> anyhow::Result<Vec<RunningService>> {
    create_topics(env).await?;
    let settings = service_env(env, &env.brokers, &env.database_url);
    let mut services = start_services(&settings).await?;
    for _ in 0..more_projections {
        let bound = projections::build(projections::Config::from_env(&settings)?).await?;
        services.push(RunningService::start(projections::NAME, bound));
    }
    for service in &services {
        wait_for_200(&service.url("/ready"), Duration::from_secs(60)).await?;
    }
    Ok(services)
}

/// Registers users and places orders for them until stopped; the placed order ids.
async fn command_load(
    base: String,
    stop: Arc<AtomicBool>,
    orders: Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<u64> {
    let client = test_support::client("test-key");
    let mut accepted = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let user: Value = client
            .post(format!("{base}/v1/users"))
            .header("Authorization", KEY)
            .json(&json!({"name": format!("User {n}"), "email": format!("u{n}-{}@example.com", uuid::Uuid::new_v4())}))
            .send()
            .await?
            .json()
            .await?;
        let Some(user_id) = user["id"].as_str() else {
            continue;
        };
        accepted += 1;
        for _ in 0..3 {
            let response = client
                .post(format!("{base}/v1/orders"))
                .header("Authorization", KEY)
                .json(&json!({"user_id": user_id, "currency": "EUR",
                              "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}]}))
                .send()
                .await?;
            if response.status() == 201 {
                let order: Value = response.json().await?;
                if let Some(id) = order["id"].as_str() {
                    orders.lock().await.push(id.to_owned());
                    accepted += 1;
                }
            }
        }
    }
    Ok(accepted)
}

/// Queries the read models until stopped, each query at the next of `bases` in turn;
/// counts answers, fails on any 5xx.
async fn query_load(
    bases: Vec<String>,
    stop: Arc<AtomicBool>,
    orders: Arc<Mutex<Vec<String>>>,
    answered: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let client = test_support::client("test-key");
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let some_order = {
            let known = orders.lock().await;
            (!known.is_empty()).then(|| known[i % known.len()].clone())
        };
        i += 1;
        let mut paths = vec!["/v1/orders?limit=20".to_owned()];
        if let Some(order) = some_order {
            paths.push(format!("/v1/orders/{order}"));
            paths.push(format!("/v1/orders/{order}/history"));
        }
        for path in paths {
            let base = &bases[i % bases.len()];
            let response = client.get(format!("{base}{path}")).send().await?;
            let status = response.status();
            anyhow::ensure!(
                !status.is_server_error(),
                "GET {path} answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
            answered.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Runs `shopctl rebuild <model> --json` off the async workers; its report.
async fn rebuild(env: &TestEnv, args: &[&str]) -> anyhow::Result<Value> {
    let env = env.clone();
    let args: Vec<String> = ["rebuild", "--json"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(args.iter().map(|s| (*s).to_owned()))
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        shopctl(&env, &refs)
    })
    .await?;
    let lines = json_lines(&succeeded(&output));
    Ok(lines.into_iter().next().expect("one report"))
}

/// What the saga and the readers have sent into the log: the saga's outbox, and the end
/// of every command topic and of the dead letters.
async fn side_effects(env: &TestEnv, pool: &sqlx::PgPool) -> anyhow::Result<(i64, Vec<i64>)> {
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM saga.outbox")
        .fetch_one(pool)
        .await?;
    let topics = TopicNames::new(&env.topic_prefix);
    let settings = common::kafka(env);
    let mut ends = Vec::new();
    for topic in schemas::catalog::SERVICES
        .iter()
        .map(|s| topics.commands(s))
        .chain([topics.dead_letters()])
    {
        ends.extend(
            scan::ends(&settings, &topic, PARTITIONS)
                .await?
                .into_values(),
        );
    }
    Ok((outbox, ends))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_rebuilds_under_live_load_fail_no_query_and_end_equal_to_the_log()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    // Two projections instances: the swap holds both live projectors, and both go on
    // with the swapped-in schema.
    let services = shop(&env, 1).await?;
    let commands = services[0].url("");
    let queries: Vec<String> = services
        .iter()
        .filter(|s| s.name == projections::NAME)
        .map(|s| s.url(""))
        .collect();
    assert_eq!(queries.len(), 2);
    let pool = env.pool().await;
    let stop = Arc::new(AtomicBool::new(false));
    let orders: Arc<Mutex<Vec<String>>> = Arc::default();
    let answered = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(command_load(
        commands,
        Arc::clone(&stop),
        Arc::clone(&orders),
    ));
    let reads = tokio::spawn(query_load(
        queries.clone(),
        Arc::clone(&stop),
        Arc::clone(&orders),
        Arc::clone(&answered),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while orders.lock().await.len() < 60 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the command load placed too few orders"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for model in ["orders", "users"] {
        let report = rebuild(&env, &[model]).await?;
        assert_eq!(report["swapped"], true, "{report}");
        assert_eq!(
            report["identical"], true,
            "rebuilt {model} differs: {report}"
        );
        assert_eq!(report["mode"], "blue-green");
        assert!(report["records"].as_u64().unwrap_or(0) > 0, "{report}");
    }
    // Both live projectors go on with the swapped-in schema.
    let applied_orders = async |base: &String| {
        let series = r#"shop_projector_applied_events_total{read_model="orders""#;
        test_support::metric_sum(&reqwest::Client::new(), base, series).await
    };
    let mut applied_at_swap = Vec::new();
    for base in &queries {
        applied_at_swap.push(applied_orders(base).await?);
    }
    let placed_at_swap = orders.lock().await.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while orders.lock().await.len() < placed_at_swap + 15 {
        anyhow::ensure!(Instant::now() < deadline, "no orders placed after the swap");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let accepted = load.await??;
    reads.await??;
    assert!(answered.load(Ordering::Relaxed) > 50, "too few queries ran");

    // The sagas go on confirming orders for a while; compare once nothing moves.
    let mut before = side_effects(&env, &pool).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = side_effects(&env, &pool).await?;
        if now == before {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the sagas did not settle");
        before = now;
    }
    for model in ["orders", "users"] {
        caught_up(&env, &pool, model, Duration::from_secs(60)).await?;
    }
    for (base, at_swap) in queries.iter().zip(applied_at_swap) {
        let now = applied_orders(base).await?;
        assert!(
            now > at_swap,
            "the projections instance at {base} applied no orders event after the swap ({at_swap} -> {now})"
        );
    }
    let expected_orders = fold::<Orders>(&log_of(&env, "orders").await?);
    let keys: Vec<String> = expected_orders.keys().cloned().collect();
    assert_same_rows(
        "orders",
        &stored::<Orders>(&pool, &keys).await?,
        &expected_orders,
    );
    assert_eq!(count(&pool, "orders", "orders").await?, keys.len() as i64);
    let expected_users = fold::<Users>(&log_of(&env, "users").await?);
    let keys: Vec<String> = expected_users.keys().cloned().collect();
    assert_same_rows(
        "users",
        &stored::<Users>(&pool, &keys).await?,
        &expected_users,
    );
    assert!(accepted as usize >= expected_orders.len());
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'read\\_%\\_next' OR nspname LIKE 'read\\_%\\_prev'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(leftovers, 0, "shadow or retired schemas left behind");

    // Rebuilding every model now sends nothing anywhere.
    for model in projections::READ_MODELS {
        let report = rebuild(&env, &[model]).await?;
        assert_eq!(report["identical"], true, "{report}");
    }
    assert_eq!(
        side_effects(&env, &pool).await?,
        before,
        "a rebuild fired something"
    );
    for service in services {
        service.stop().await?;
    }
    Ok(())
}

fn order_events(order: OrderId, user: UserId, confirm: bool) -> Vec<schemas::EventDocument> {
    let placed = OrderEvent::from(OrderPlaced {
        order_id: order,
        user_id: user,
        currency: "EUR".parse::<Currency>().expect("EUR"),
        lines: vec![OrderLine {
            sku: "SKU-1".into(),
            quantity: 1,
            unit_price_cents: 990,
        }],
        total_cents: 990,
    });
    let mut events = vec![placed];
    if confirm {
        events.push(OrderEvent::from(OrderConfirmed {
            order_id: order,
            payment_id: PaymentId::for_order(order),
        }));
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            Event {
                meta: EventMeta::new(i as u64 + 1),
                payload,
            }
            .to_document()
        })
        .collect()
}

/// The projections service alone, over orders written straight into the log.
async fn projected_orders(env: &TestEnv, orders: usize) -> anyhow::Result<RunningService> {
    create_topics(env).await?;
    let log = &Log::new(env)?;
    let user = UserId::new();
    for chunk in (0..orders).collect::<Vec<_>>().chunks(200) {
        let mut writes = Vec::new();
        for i in chunk {
            for document in order_events(OrderId::new(), user, i % 3 != 0) {
                writes.push(async move { log.append("orders", &document).await });
            }
        }
        for written in futures_util::future::join_all(writes).await {
            written?;
        }
    }
    let config = projections::Config::from_env(&service_env(env, &env.brokers, &env.database_url))?;
    let service = RunningService::start(projections::NAME, projections::build(config).await?);
    Ok(service)
}

async fn shadow_position(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM read_orders_next.checkpoints",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilding_from_zero_from_a_midpoint_and_in_place_gives_one_checksum() -> anyhow::Result<()>
{
    let env = TestEnv::new().await;
    let projections = projected_orders(&env, 4000).await?;
    let pool = env.pool().await;
    caught_up(&env, &pool, "orders", Duration::from_secs(120)).await?;
    let total: i64 =
        sqlx::query_scalar("SELECT sum(next_offset)::bigint FROM read_orders.checkpoints")
            .fetch_one(&pool)
            .await?;

    let from_zero = rebuild(&env, &["orders"]).await?;
    assert_eq!(from_zero["identical"], true, "{from_zero}");
    assert_eq!(from_zero["records"].as_i64(), Some(total));
    let digest = from_zero["rebuilt"]["digest"].clone();

    // Killed once the shadow holds half the log, then run again: it resumes there.
    let mut interrupted = shopctl_command(&env, &["rebuild", "orders", "--batch", "100"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while shadow_position(&pool).await < total / 2 {
        anyhow::ensure!(Instant::now() < deadline, "the rebuild made no progress");
        anyhow::ensure!(
            interrupted.try_wait()?.is_none(),
            "the rebuild ended before its midpoint"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    interrupted.kill()?;
    interrupted.wait()?;
    let held = shadow_position(&pool).await;
    assert!(
        held < total,
        "killed too late: the shadow held the whole log"
    );
    let resumed = rebuild(&env, &["orders"]).await?;
    let resumed_from = resumed["resumed_from"].as_i64().unwrap_or(0);
    assert!(
        resumed_from >= total / 2 && resumed_from < total,
        "resumed from {resumed_from} of {total}: {resumed}"
    );
    assert_eq!(resumed["records"].as_i64(), Some(total - resumed_from));
    assert_eq!(resumed["rebuilt"]["digest"], digest, "{resumed}");
    assert_eq!(resumed["identical"], true);

    let in_place = rebuild(&env, &["orders", "--in-place"]).await?;
    assert_eq!(in_place["mode"], "in-place");
    assert_eq!(in_place["rebuilt"]["digest"], digest, "{in_place}");
    assert_eq!(in_place["identical"], true);

    let expected = fold::<Orders>(&log_of(&env, "orders").await?);
    let keys: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(keys.len(), 4000);
    assert_same_rows("orders", &stored::<Orders>(&pool, &keys).await?, &expected);
    projections.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_only_finds_a_tampered_model_and_a_rebuild_repairs_it() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let projections = projected_orders(&env, 50).await?;
    let pool = env.pool().await;
    caught_up(&env, &pool, "orders", Duration::from_secs(60)).await?;
    projections.stop().await?;
    sqlx::query(
        "UPDATE read_orders.orders SET status = 'cancelled'
         WHERE order_id = (SELECT order_id FROM read_orders.orders ORDER BY order_id LIMIT 1)",
    )
    .execute(&pool)
    .await?;

    let output = shopctl(&env, &["rebuild", "orders", "--compare-only", "--json"]);
    assert!(
        !output.status.success(),
        "a difference must fail --compare-only"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("differs") && stderr.contains("orders"),
        "{stderr}"
    );
    let report = &json_lines(&String::from_utf8_lossy(&output.stdout))[0];
    assert_eq!(report["identical"], false);
    assert_eq!(report["swapped"], false);
    assert_eq!(report["differing_tables"], json!(["orders"]));
    let tampered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM read_orders.orders WHERE status = 'cancelled'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(
        tampered, 1,
        "--compare-only must leave the live model alone"
    );

    let repaired = rebuild(&env, &["orders"]).await?;
    assert_eq!(repaired["swapped"], true);
    let expected = fold::<Orders>(&log_of(&env, "orders").await?);
    let keys: Vec<String> = expected.keys().cloned().collect();
    assert_same_rows("orders", &stored::<Orders>(&pool, &keys).await?, &expected);
    Ok(())
}
