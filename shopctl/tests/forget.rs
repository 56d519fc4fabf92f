//! Forgetting a user (crypto-shredding) on the real broker and Postgres with the real
//! services: after `POST /v1/users/{id}/forget`, and after every read model is rebuilt
//! from offset zero, the user's name, addresses and deactivation reason are nowhere to be
//! read (a dump of the whole database, every API answer about them, the log itself,
//! shopctl's read, tail, replay and explain), while the log still replays and other users
//! read as before (the query API and shopctl open their sealed fields). A forgotten active
//! user's address is free again, and a key restored from a backup is destroyed again.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{log_of, shopctl, succeeded};
use serde_json::{Value, json};
use system_tests::{OPERATOR_KEY, RunningService, create_topics, service_env, start_services};
use test_support::{TestEnv, wait_for_200};

/// The three services in-process, ready.
async fn shop(env: &TestEnv) -> anyhow::Result<Vec<RunningService>> {
    create_topics(env).await?;
    let services = start_services(&service_env(env, &env.brokers, &env.database_url)).await?;
    for service in &services {
        wait_for_200(&service.url("/ready"), Duration::from_secs(60)).await?;
    }
    Ok(services)
}

/// A POST with `client`; its status and JSON body.
async fn post(client: &reqwest::Client, url: String, body: Value) -> anyhow::Result<(u16, Value)> {
    let response = client.post(url).json(&body).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// A GET of the query API, waiting for `position` (a position token: letters, digits,
/// `-`, `.` and `:`, nothing to escape).
async fn get(client: &reqwest::Client, url: String, position: &Value) -> anyhow::Result<Value> {
    let url = match position.as_str() {
        Some(position) => format!("{url}?min_position={position}"),
        None => url,
    };
    let response = client.get(&url).send().await?;
    anyhow::ensure!(response.status() == 200, "GET {url}: {}", response.status());
    Ok(response.json().await?)
}

/// The pg_dump of Debian's newest Postgres, or the one on PATH.
fn pg_dump() -> String {
    let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin/pg_dump"))
        .filter(|path| path.exists())
        .collect();
    found.sort();
    found
        .pop()
        .map_or_else(|| "pg_dump".into(), |p| p.display().to_string())
}

/// Fails naming where one of `secrets` shows in `text`.
fn shows_none(place: &str, text: &str, secrets: &[&str]) -> anyhow::Result<()> {
    for secret in secrets {
        anyhow::ensure!(!text.contains(secret), "{place} shows {secret:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forgotten_user_is_nowhere_to_be_read_and_everyone_else_reads_as_before()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let services = shop(&env).await?;
    let (commands, queries) = (&services[0], &services[1]);
    let client = test_support::client("test-key");
    let operator = test_support::client(OPERATOR_KEY);
    let n = &uuid::Uuid::new_v4().simple().to_string()[..12];

    // Ada: registered, an order, a new address, deactivated with a reason naming her.
    let ada_name = format!("Ada Lovelace {n}");
    let (ada_first, ada_second) = (
        format!("ada-{n}@example.com"),
        format!("countess-{n}@example.org"),
    );
    let ada_reason = format!("{ada_name} asked to leave");
    let (status, ada) = post(
        &client,
        commands.url("/v1/users"),
        json!({"name": ada_name, "email": ada_first}),
    )
    .await?;
    anyhow::ensure!(status == 201, "{status} {ada}");
    let ada_id = ada["id"].as_str().expect("an id").to_owned();
    let order = json!({"user_id": ada_id, "currency": "EUR",
        "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1200}]});
    let (status, placed) = post(&client, commands.url("/v1/orders"), order).await?;
    anyhow::ensure!(status == 201, "{status} {placed}");
    let change = json!({"email": ada_second});
    let url = commands.url(&format!("/v1/users/{ada_id}/email"));
    let (status, body) = post(&client, url, change).await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    let url = commands.url(&format!("/v1/users/{ada_id}/deactivate"));
    let (status, body) = post(&client, url, json!({"reason": ada_reason})).await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    // Ada as she was at each version, folded from the log and opened with her key.
    let deactivated = body["position"].as_str().unwrap_or_default().to_owned();
    let as_of = |version: u32| {
        queries.url(&format!(
            "/v1/users/{ada_id}?as_of_version={version}&min_position={deactivated}"
        ))
    };
    for (version, email, status, reason) in [
        (1, &ada_first, "active", Value::Null),
        (2, &ada_second, "active", Value::Null),
        (3, &ada_second, "deactivated", json!(ada_reason)),
    ] {
        let then: Value = client.get(as_of(version)).send().await?.json().await?;
        assert_eq!(
            (
                &then["name"],
                &then["email"],
                &then["status"],
                &then["deactivation_reason"],
                &then["version"]
            ),
            (
                &json!(ada_name),
                &json!(email),
                &json!(status),
                &reason,
                &json!(version)
            ),
            "as of version {version}: {then}"
        );
    }
    let beyond = client.get(as_of(4)).send().await?;
    assert_eq!(beyond.status(), 404);
    // Carol: active when forgotten. Bob: never forgotten.
    let (carol_name, carol_email) = (format!("Carol Shaw {n}"), format!("carol-{n}@example.com"));
    let (bob_name, bob_email) = (format!("Bob Babbage {n}"), format!("bob-{n}@example.com"));
    let mut ids = Vec::new();
    for (name, email) in [(&carol_name, &carol_email), (&bob_name, &bob_email)] {
        let body = json!({"name": name, "email": email});
        let (status, user) = post(&client, commands.url("/v1/users"), body).await?;
        anyhow::ensure!(status == 201, "{status} {user}");
        ids.push(user["id"].as_str().expect("an id").to_owned());
    }
    let (carol_id, bob_id) = (ids[0].clone(), ids[1].clone());

    // The log never held any of it in the clear, before forgetting either.
    let secrets = [
        ada_name.as_str(),
        ada_first.as_str(),
        ada_second.as_str(),
        ada_reason.as_str(),
        carol_name.as_str(),
        carol_email.as_str(),
    ];
    let mut clear = secrets.to_vec();
    clear.extend([bob_name.as_str(), bob_email.as_str()]);
    for service in ["users", "user-emails"] {
        let log = serde_json::to_string(&log_of(&env, service).await?)?;
        shows_none(&format!("the {service} log"), &log, &clear)?;
    }

    // Ada's key as a backup of Postgres taken now would hold it.
    let pool = env.pool().await;
    let ada_uuid: uuid::Uuid = ada_id.parse()?;
    let key_query = "SELECT key FROM personal_data.subject_keys WHERE subject = $1";
    let backed_up: Option<Vec<u8>> = sqlx::query_scalar(key_query)
        .bind(ada_uuid)
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(backed_up.is_some(), "Ada has a key");

    // Only an operator forgets; forgetting again answers the same; nobody is 404.
    let forget = |id: &str| commands.url(&format!("/v1/users/{id}/forget"));
    let (status, body) = post(&client, forget(&ada_id), Value::Null).await?;
    anyhow::ensure!(status == 403, "a client key: {status} {body}");
    let mut positions = Vec::new();
    for id in [&ada_id, &carol_id, &ada_id] {
        let (status, body) = post(&operator, forget(id), Value::Null).await?;
        anyhow::ensure!(status == 200, "{status} {body}");
        positions.push(body["position"].clone());
    }
    let unknown = forget(&uuid::Uuid::now_v7().to_string());
    let (status, body) = post(&operator, unknown, Value::Null).await?;
    anyhow::ensure!(status == 404, "{status} {body}");

    // The backup restored: the key is back, until the users' projector reads Ada's
    // `UserForgotten` again (here: in the rebuild below).
    sqlx::query(
        "UPDATE personal_data.subject_keys SET key = $2, forgotten_at = NULL WHERE subject = $1",
    )
    .bind(ada_uuid)
    .bind(&backed_up)
    .execute(&pool)
    .await?;

    // Every read model from offset zero, then what a reader gets.
    for model in projections::READ_MODELS {
        let env = env.clone();
        let output =
            tokio::task::spawn_blocking(move || shopctl(&env, &["rebuild", "--json", model]))
                .await?;
        succeeded(&output);
    }
    let key: Option<Vec<u8>> = sqlx::query_scalar(key_query)
        .bind(ada_uuid)
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        key.is_none(),
        "the rebuild destroyed the restored key again"
    );
    let user = |id: &str| queries.url(&format!("/v1/users/{id}"));
    for (id, position) in [(&ada_id, &positions[0]), (&carol_id, &positions[1])] {
        let answer = get(&client, user(id), position).await?;
        assert_eq!(answer["status"], "forgotten", "{answer}");
        assert_eq!(answer["name"], "[forgotten]", "{answer}");
        assert_eq!(answer["email"], "[forgotten]", "{answer}");
        shows_none("a user's answer", &answer.to_string(), &secrets)?;
    }
    // Her past states, folded from the log, open no more either.
    for version in 1..=3 {
        let then: Value = client.get(as_of(version)).send().await?.json().await?;
        assert_eq!(then["name"], "[forgotten]", "{then}");
        shows_none("a past state of Ada", &then.to_string(), &secrets)?;
    }
    let bob = get(&client, user(&bob_id), &Value::Null).await?;
    assert_eq!(
        (&bob["name"], &bob["email"], &bob["status"]),
        (&json!(bob_name), &json!(bob_email), &json!("active"))
    );
    let orders = get(&client, queries.url("/v1/orders"), &Value::Null).await?;
    let history = queries.url(&format!(
        "/v1/orders/{}/history",
        placed["id"].as_str().unwrap_or_default()
    ));
    let history = get(&client, history, &Value::Null).await?;
    assert!(
        history["events"].as_array().is_some_and(|e| !e.is_empty()),
        "Ada's order still replays: {history}"
    );
    shows_none("the orders", &format!("{orders}{history}"), &secrets)?;

    // The whole database.
    let dump = Command::new(pg_dump())
        .args(["--data-only", "--dbname", &env.database_url])
        .output()?;
    let dump = succeeded(&dump);
    anyhow::ensure!(dump.contains(&ada_id), "the dump holds the users' rows");
    shows_none("pg_dump", &dump, &secrets)?;

    // shopctl: the aggregate's events, the topic, a replay and what the request caused.
    let correlation = log_of(&env, "users")
        .await?
        .into_iter()
        .find(|e| e.subject == ada_id)
        .map(|e| e.correlationid.to_string())
        .expect("Ada's events are in the log");
    let users_topic = "users.events";
    let run = |args: Vec<&str>| {
        let env = env.clone();
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            succeeded(&shopctl(&env, &args))
        })
    };
    for args in [
        vec!["read", "user", ada_id.as_str()],
        vec!["tail", users_topic, "--from-beginning", "--no-follow"],
        vec!["replay", "--topic", users_topic],
        vec!["explain", correlation.as_str()],
    ] {
        let shown = args.join(" ");
        let out = run(args).await?;
        anyhow::ensure!(out.contains("UserRegistered"), "shopctl {shown}: {out}");
        shows_none(&format!("shopctl {shown}"), &out, &secrets)?;
    }
    // shopctl opens what it holds keys for: Ada's fields read as forgotten, Bob's as given.
    let ada = run(vec!["read", "user", ada_id.as_str()]).await?;
    anyhow::ensure!(ada.contains("\"name\": \"[forgotten]\""), "{ada}");
    let bob = run(vec!["read", "user", bob_id.as_str()]).await?;
    anyhow::ensure!(bob.contains(&bob_name) && bob.contains(&bob_email), "{bob}");

    // Last (it puts the address back in the log, for someone else): Carol's address is
    // free again; a forgotten user changes no more.
    let body = json!({"name": "Someone Else", "email": carol_email});
    let (status, body) = post(&client, commands.url("/v1/users"), body).await?;
    anyhow::ensure!(
        status == 201,
        "the forgotten user's address: {status} {body}"
    );
    let url = commands.url(&format!("/v1/users/{carol_id}/email"));
    let (status, body) = post(&client, url, json!({"email": format!("c-{n}@example.com")})).await?;
    anyhow::ensure!(
        status == 422 && body["code"] == "user-forgotten",
        "{status} {body}"
    );

    for service in services {
        service.stop().await?;
    }
    Ok(())
}
