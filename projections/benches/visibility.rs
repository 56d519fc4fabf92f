//! Read-your-writes latency: from a command's 201 to the order being visible in a query,
//! at moderate load, against the raw floor of the same broker: from a record's produce
//! acknowledgement to a plain consumer receiving it. Same broker, same run.
//!
//!     ./dev bench
//!
//! The broker is a private Apache Kafka node, so that nothing else loads it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use projections::projector::metrics::STAGES;
use serde_json::{Value, json};
use service_runtime::Env;
use test_support::load::{Run, drive};
use test_support::metrics::observed;

const PARTITIONS: i32 = 8;
const USERS: usize = 50;
const ORDERS: usize = 2_000;
/// Moderate load: a few callers, each waiting for its order to show before the next.
const CONCURRENCY: usize = 4;

fn percentiles(latencies: Vec<Duration>) -> (f64, f64) {
    Run {
        per_second: 0.0,
        latencies,
    }
    .percentiles()
}

/// Acknowledged -> consumed, per record, with a consumer at the end of the topic.
async fn raw_floor(settings: &KafkaSettings) -> anyhow::Result<(f64, f64)> {
    let run = test_support::floor::produce_to_consume(
        settings.producer().create()?,
        &settings.consumer("raw-visibility"),
        "raw.orders.events",
        PARTITIONS,
        (ORDERS, CONCURRENCY),
    )
    .await?;
    Ok(run.percentiles())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = test_support::TestEnv::new().await;
    let broker = test_support::PrivateBroker::start().await;
    let settings = KafkaSettings::new(&broker.brokers);
    TopicAdmin::new(&settings)?
        .create(&TopicNames::new("").all(PARTITIONS), 1)
        .await?;
    TopicAdmin::new(&settings)?
        .create(
            &TopicNames::new("raw.").for_services(&["orders"], PARTITIONS),
            1,
        )
        .await?;
    let partitions = PARTITIONS.to_string();
    let common = [
        ("KAFKA_BROKERS", broker.brokers.as_str()),
        ("DATABASE_URL", env.database_url.as_str()),
        ("EVENT_PARTITIONS", partitions.as_str()),
        ("RUST_LOG", "warn"),
        // Both services take the bench's key, and the 1 ms polling must not be throttled.
        ("API_KEYS", "bench"),
        ("RATE_LIMIT_PER_SECOND", "1000000"),
        ("RATE_LIMIT_BURST", "1000000"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        Env::from_pairs(common.iter().copied().chain(extra.iter().copied()))
    };
    let commands = command_api::build(command_api::Config::from_env(&with(&[(
        "COMMAND_API_ADDR",
        "127.0.0.1:0",
    )]))?)
    .await?;
    let queries = projections::build(projections::Config::from_env(&with(&[(
        "PROJECTIONS_ADDR",
        "127.0.0.1:0",
    )]))?)
    .await?;
    let command_base = format!("http://{}", commands.local_addr());
    let query_base = format!("http://{}", queries.local_addr());
    // Both stop before the broker goes: a consumer dropped after its broker died can wait
    // forever to leave its group, and the process with it.
    let stop = tokio_util::sync::CancellationToken::new();
    let services = [
        tokio::spawn(commands.run_until(stop.clone().cancelled_owned())),
        tokio::spawn(queries.run_until(stop.clone().cancelled_owned())),
    ];
    let client = test_support::client("bench");
    for base in [&command_base, &query_base] {
        while !client
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut users = Vec::new();
    for i in 0..USERS {
        loop {
            let response = client
                .post(format!("{command_base}/v1/users"))
                .bearer_auth("bench")
                .json(
                    &json!({"name": format!("User {i}"), "email": format!("user{i}@example.com")}),
                )
                .send()
                .await?;
            if response.status() == 201 {
                let body: Value = response.json().await?;
                users.push(body["id"].as_str().expect("id").to_owned());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let users = Arc::new(users);

    let raw = raw_floor(&settings).await?;

    let scrape = |base: String| {
        let client = reqwest::Client::new();
        async move {
            client
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        }
    };
    let before = (
        scrape(command_base.clone()).await?,
        scrape(query_base.clone()).await?,
    );
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let run = {
        let (command_base, query_base) = (command_base.clone(), query_base.clone());
        let latencies = Arc::clone(&latencies);
        drive(ORDERS, CONCURRENCY, move |i| {
            let (client, users, latencies) =
                (client.clone(), Arc::clone(&users), Arc::clone(&latencies));
            let (command_base, query_base) = (command_base.clone(), query_base.clone());
            async move {
                let order = json!({"user_id": users[i % USERS], "currency": "EUR",
                    "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 999}]});
                let Ok(response) = client
                    .post(format!("{command_base}/v1/orders"))
                    .bearer_auth("bench")
                    .json(&order)
                    .send()
                    .await
                else {
                    return;
                };
                if response.status() != 201 {
                    return;
                }
                let accepted = Instant::now();
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                let url = format!(
                    "{query_base}/v1/orders/{}",
                    body["id"].as_str().unwrap_or_default()
                );
                loop {
                    if client
                        .get(&url)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                    {
                        latencies.lock().expect("lock").push(accepted.elapsed());
                        return;
                    }
                    if accepted.elapsed() > Duration::from_secs(30) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
        .await
    };
    let measured = std::mem::take(&mut *latencies.lock().expect("lock"));
    let count = measured.len();
    let ours = percentiles(measured);
    println!("a private Apache Kafka node, {PARTITIONS} partitions");
    println!("| path | samples | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "| raw: produce acknowledged -> plain consumer receives | {ORDERS} | {:.2} | {:.2} |",
        raw.0, raw.1
    );
    println!(
        "| command 201 -> order visible in GET /v1/orders/{{id}} ({:.0} orders/s) | {count} | {:.2} | {:.2} |",
        run.per_second, ours.0, ours.1
    );
    println!(
        "p99 {:.2} ms (goal <= 25 ms); {:+.2} ms over the raw floor",
        ours.1,
        ours.1 - raw.1
    );
    let after = (
        scrape(command_base.clone()).await?,
        scrape(query_base.clone()).await?,
    );
    print_stages(&before, &after);
    stop.cancel();
    for service in services {
        tokio::time::timeout(Duration::from_secs(30), service).await???;
    }
    Ok(())
}

/// Where the time between the 201 and the order showing goes: the orders writer's commit
/// (the 201 waits for it; the commit markers that make the events readable are written
/// right after), and the orders projector's batches, from the services' own metrics.
fn print_stages(before: &(String, String), after: &(String, String)) {
    println!("where the time goes (over the run):");
    for stage in ["produce", "commit"] {
        let step = observed(
            &before.0,
            &after.0,
            "shop_writer_transaction_seconds",
            &[("service", "orders"), ("stage", stage)],
        );
        println!(
            "  orders writer, transaction {stage}: mean {:.2} ms, p99 <= {:.0} ms, over {} transactions",
            step.mean() * 1000.0,
            step.p99_bound * 1000.0,
            step.count
        );
    }
    let model = [("read_model", "orders")];
    let batch = observed(&before.1, &after.1, "shop_projector_batch_seconds", &model);
    let records = observed(&before.1, &after.1, "shop_projector_batch_size", &model);
    println!(
        "  orders projector, one batch (plan, write, checkpoint, commit): mean {:.2} ms, p99 <= {:.0} ms, over {} batches of {:.1} records",
        batch.mean() * 1000.0,
        batch.p99_bound * 1000.0,
        batch.count,
        records.mean()
    );
    // Every stage but `consume`: its waits are idle time at this load, not work.
    let stages: Vec<String> = STAGES[1..]
        .iter()
        .map(|stage| {
            let took = observed(
                &before.1,
                &after.1,
                "shop_projector_stage_seconds",
                &[("read_model", "orders"), ("stage", stage)],
            );
            format!("{stage} {:.2}", took.mean() * 1000.0)
        })
        .collect();
    println!("    its stages, mean ms: {}", stages.join(", "));
}
