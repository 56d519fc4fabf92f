//! The README's console recipes ("Reading topics from a console"), run as written against
//! the test broker: Debian's kcat and Kafka's own tools (through `./dev`), on the topics of
//! a real order that went through its saga. Each recipe must succeed and show what its
//! comment promises; a recipe added to the README without an expectation here fails.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use system_tests::{RunningService, create_topics, repo_root, service_env, start_services};
use test_support::TestEnv;

const KEY: &str = "test-key";

/// The shell lines of the README's console block: one recipe per command, continuation
/// lines joined, trailing comments dropped.
fn recipes() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("## Reading topics from a console")
        .nth(1)
        .expect("the console section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("its first shell block");
    let mut recipes = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let code = line.split("  #").next().unwrap_or_default().trim_end();
        match code.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(code);
                recipes.push(std::mem::take(&mut current));
            }
        }
    }
    recipes.retain(|r| !r.trim().is_empty());
    recipes
}

/// Whether a recipe's output shows what it promises, for the order the test placed.
type Check = fn(&str, &Order) -> bool;

/// What a recipe's output must show, by the recipe's tool and flags.
fn expectation(recipe: &str) -> Option<Check> {
    let checks: [(&str, Check); 7] = [
        (" -L", |out, o| {
            out.contains(&format!("\"{}orders.events\"", o.prefix))
        }),
        ("%h", |out, o| {
            out.contains(&o.id)
                && out.contains("ce_type=OrderPlaced")
                && out.contains("traceparent=")
        }),
        ("-o -5", |out, o| out.contains(&format!("{} {{", o.id))),
        ("grep", |out, o| {
            !out.is_empty()
                && out.lines().all(|l| l.starts_with(&o.id))
                && out.contains("OrderConfirmed")
        }),
        ("-o s@", |out, o| out.contains(&o.id)),
        ("kafka-console-consumer", |out, o| {
            out.contains(&o.id) && out.contains("ce_type:OrderPlaced")
        }),
        ("kafka-consumer-groups", |out, o| {
            // Every partition of the orders topic listed, with a lag of 0 (an empty one
            // has no offset and no lag), and the order's partition not empty.
            let rows: Vec<Vec<&str>> = out
                .lines()
                .filter(|l| l.contains(&format!("{}orders.events", o.prefix)))
                .map(|l| l.split_whitespace().collect())
                .collect();
            let caught_up = |row: &Vec<&str>| {
                matches!(
                    (row.get(4), row.get(5)),
                    (Some(&"0"), Some(&"-")) | (Some(_), Some(&"0"))
                )
            };
            rows.len() == system_tests::PARTITIONS as usize
                && rows.iter().all(caught_up)
                && rows.iter().any(|row| row.get(5) == Some(&"0"))
        }),
    ];
    checks
        .into_iter()
        .find(|(marker, _)| recipe.contains(marker))
        .map(|(_, check)| check)
}

struct Order {
    id: String,
    prefix: String,
    placed_ms: i64,
}

/// The recipe as it runs against the test broker and the test's topics and ids.
fn localized(recipe: &str, env: &TestEnv, order: &Order) -> String {
    recipe
        .replace("localhost:9092", &env.brokers)
        .replace(
            "orders.events",
            &format!("{}orders.events", env.topic_prefix),
        )
        .replace(
            "projections.read_orders",
            &format!("{}projections.read_orders", env.topic_prefix),
        )
        .replace("<order-id>", &order.id)
        .replace("<epoch-ms>", &(order.placed_ms - 60_000).to_string())
}

/// Runs `command` with bash from the repository root; a recipe that follows the topic
/// (no `-e`) is stopped after a few seconds, which counts as success.
fn run(command: &str) -> (bool, String, String) {
    let follows = command.contains(" -C ") && !command.contains(" -e");
    let line = if follows {
        format!("timeout 8 {command}; test $? -eq 124")
    } else {
        command.to_owned()
    };
    let output = Command::new("bash")
        .args(["-o", "pipefail", "-c", &line])
        .current_dir(repo_root())
        .output()
        .expect("bash runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> anyhow::Result<Value> {
    let response = client.post(url).bearer_auth(KEY).json(&body).send().await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.text().await?);
    Ok(response.json().await?)
}

/// A user and an order that went through its saga, and every reader caught up.
async fn confirmed_order(env: &TestEnv, services: &[RunningService]) -> anyhow::Result<Order> {
    let client = reqwest::Client::new();
    let placed_ms = chrono::Utc::now().timestamp_millis();
    let user = post(
        &client,
        services[0].url("/v1/users"),
        json!({"name": "Console", "email": "console@example.com"}),
    )
    .await?;
    let order = post(
        &client,
        services[0].url("/v1/orders"),
        json!({"user_id": user["id"], "currency": "EUR",
               "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 500}]}),
    )
    .await?;
    let id = order["id"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read: Value = client
            .get(services[1].url(&format!("/v1/orders/{id}")))
            .bearer_auth(KEY)
            .send()
            .await?
            .json()
            .await?;
        if read["status"] == "confirmed" {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "order not confirmed: {read}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Order {
        id,
        prefix: env.topic_prefix.clone(),
        placed_ms,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_recipe_of_the_readme_works_on_the_broker() -> anyhow::Result<()> {
    let recipes = recipes();
    assert!(recipes.len() >= 7, "{recipes:?}");
    for recipe in &recipes {
        assert!(
            expectation(recipe).is_some(),
            "no expectation for the README recipe {recipe}"
        );
    }
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let services = start_services(&service_env(&env, &env.brokers, &env.database_url)).await?;
    for service in &services {
        system_tests::wait_for_200(&service.url("/ready"), Duration::from_secs(60)).await?;
    }
    let order = confirmed_order(&env, &services).await?;

    for recipe in &recipes {
        let command = localized(recipe, &env, &order);
        let check = expectation(recipe).expect("checked above");
        // The readers mirror their offsets to their groups in the background: the lag
        // recipe may need a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out, err) = run(&command);
            if ok && check(&out, &order) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "recipe failed: {command} (prefix {})\nstdout:\n{out}\nstderr:\n{err}",
                order.prefix
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    for service in services {
        service.stop().await?;
    }
    Ok(())
}
