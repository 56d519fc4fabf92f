//! The command API end to end over HTTP, on the real broker and Postgres: every rule with
//! an accepted and a refused case, idempotency keys, If-Match, auth and limits, errors.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::TestEnv;
use uuid::Uuid;

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_register_change_email_and_deactivate_by_the_rules() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let app = App::start(&env, &[]).await?;

    let response = app
        .post("/v1/users")
        .json(&user_body(" Ada Lovelace ", "Ada@Example.com"))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str()?.to_owned();
    let body: Value = response.json().await?;
    let ada = body["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/v1/users/{ada}"));
    assert_eq!(body["version"], 1);
    assert!(
        body["position"]
            .as_str()
            .is_some_and(|p| p.starts_with("users:")),
        "{body}"
    );

    // The email is normalized, so another case is the same address.
    let (status, body) = app
        .send("/v1/users", user_body("Imposter", "ADA@example.COM"))
        .await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("email-taken")),
        "{body}"
    );

    let (status, body) = app
        .send(
            &format!("/v1/users/{ada}/email"),
            json!({"email": "ada@example.org"}),
        )
        .await?;
    assert_eq!(
        (status, body["version"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{body}"
    );
    // The old address is free again; the new one is taken.
    register(&app, "ada@example.com").await?;
    let (status, body) = app
        .send("/v1/users", user_body("B", "ada@example.org"))
        .await?;
    assert_eq!(body["code"], "email-taken", "{status} {body}");
    let (status, body) = app
        .send(
            &format!("/v1/users/{ada}/email"),
            json!({"email": "ada@example.org"}),
        )
        .await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("same-email"))
    );

    let stale = app
        .post(&format!("/v1/users/{ada}/deactivate"))
        .header("If-Match", "\"1\"")
        .json(&json!({}))
        .send()
        .await?;
    let (status, body) = answer(stale).await?;
    assert_eq!(
        (status, body["current_version"].as_u64()),
        (StatusCode::CONFLICT, Some(2)),
        "{body}"
    );
    let (status, _) = app
        .send(
            &format!("/v1/users/{ada}/deactivate"),
            json!({"reason": "asked"}),
        )
        .await?;
    assert_eq!(status, 200);
    let (status, body) = app
        .send(
            &format!("/v1/users/{ada}/email"),
            json!({"email": "x@example.net"}),
        )
        .await?;
    assert_eq!(body["code"], "user-deactivated", "{status} {body}");
    // A deactivated user's email is free for someone else.
    register(&app, "ada@example.org").await?;

    let (status, _) = app
        .send(
            &format!("/v1/users/{}/email", Uuid::new_v4()),
            json!({"email": "n@example.net"}),
        )
        .await?;
    assert_eq!(status, 404);
    let (status, body) = app.send("/v1/orders", order_body(&ada)).await?;
    assert_eq!(body["code"], "user-deactivated", "{status} {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_with_one_email_give_exactly_one_user() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let app = std::sync::Arc::new(App::start(&env, &[]).await?);
    let attempts: Vec<_> = (0..20)
        .map(|i| {
            let app = std::sync::Arc::clone(&app);
            tokio::spawn(async move {
                app.send(
                    "/v1/users",
                    user_body(&format!("User {i}"), "race@example.com"),
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        let (status, body) = attempt.await??;
        match status.as_u16() {
            201 => created += 1,
            422 => assert_eq!(body["code"], "email-taken", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(created, 1);
    let registered = app
        .events("users")
        .await?
        .iter()
        .filter(|e| e.event_type == "UserRegistered")
        .count();
    assert_eq!(registered, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_back_and_forth_never_free_the_address_the_user_holds()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    // A claim left behind lapses after three command timeouts.
    let app = std::sync::Arc::new(App::start(&env, &[("COMMAND_TIMEOUT_MS", "1000")]).await?);
    let (first, second) = ("back@example.com", "forth@example.com");
    let user = register(&app, first).await?;
    let changes: Vec<_> = (0..16)
        .map(|i| {
            let (app, user) = (std::sync::Arc::clone(&app), user.clone());
            let email = if i % 2 == 0 { second } else { first };
            tokio::spawn(async move {
                app.send(&format!("/v1/users/{user}/email"), json!({"email": email}))
                    .await
            })
        })
        .collect();
    for change in changes {
        let (status, body) = change.await??;
        assert!(
            // 409: the user kept changing through every internal retry.
            status == 200
                || status == 409
                || body["code"] == "same-email"
                || body["code"] == "email-taken",
            "{status} {body}"
        );
    }
    let changed: Vec<String> = app
        .events("users")
        .await?
        .iter()
        .filter(|e| e.subject == user && e.event_type != "EmailClaimLapsed")
        .map(|e| e.data["claim_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    // Events name the address by its claim id (the development key: no EMAIL_INDEX_KEY).
    let holds_claim = changed.last().expect("registered");
    let index = service_runtime::personal_data::EmailIndex::development();
    let (holds, other) = if *holds_claim == index.claim_id(first) {
        (first, second)
    } else {
        (second, first)
    };
    // The address the user holds stays theirs; the other one is free again, at the latest
    // once a claim left behind has lapsed.
    let (status, body) = app.send("/v1/users", user_body("B", holds)).await?;
    assert_eq!(body["code"], "email-taken", "{status} {body}");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    register(&app, other).await?;
    let (status, body) = app.send("/v1/users", user_body("C", holds)).await?;
    assert_eq!(body["code"], "email-taken", "{status} {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_placed_and_cancelled_by_the_rules() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let app = App::start(&env, &[]).await?;
    let user = register(&app, "buyer@example.com").await?;

    let response = app
        .post("/v1/orders")
        .json(&order_body(&user))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let order = response.json::<Value>().await?["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let placed = app.events("orders").await?;
    assert_eq!(placed[0].data["total_cents"], 2500);

    let invalid = [
        (
            json!({"user_id": user, "currency": "EUR", "lines": []}),
            "lines",
        ),
        (
            json!({"user_id": user, "currency": "EURO", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
            "currency",
        ),
        (
            json!({"user_id": user, "currency": "EUR", "lines": [{"sku": "A", "quantity": 0, "unit_price_cents": 1}]}),
            "lines[0].quantity",
        ),
        (
            json!({"user_id": user, "currency": "EUR", "lines": [{"sku": "A", "quantity": 1001, "unit_price_cents": 1}]}),
            "lines[0].quantity",
        ),
        (
            json!({"user_id": user, "currency": "EUR", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": -1}]}),
            "lines[0].unit_price_cents",
        ),
        (
            json!({"user_id": user, "currency": "EUR", "lines": vec![json!({"sku": "A", "quantity": 1, "unit_price_cents": 1}); 101]}),
            "lines",
        ),
        (
            json!({"user_id": user, "currency": "EUR", "lines": [{"sku": "A", "quantity": 1000, "unit_price_cents": 10001}]}),
            "lines",
        ),
        (
            json!({"user_id": "nope", "currency": "EUR", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
            "user_id",
        ),
    ];
    for (body, field) in invalid {
        let (status, problem) = app.send("/v1/orders", body).await?;
        assert_eq!(status, 422, "{problem}");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{field} not in {problem}");
    }
    // Exactly the maximum total is fine; an unknown user is refused by rule.
    let max = json!({"user_id": user, "currency": "JPY", "lines": [{"sku": "A", "quantity": 1000, "unit_price_cents": 10000}]});
    assert_eq!(app.send("/v1/orders", max).await?.0, 201);
    let (status, body) = app
        .send("/v1/orders", order_body(&Uuid::new_v4().to_string()))
        .await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown-user"))
    );

    let conflict = app
        .post(&format!("/v1/orders/{order}/cancel"))
        .header("If-Match", "\"7\"")
        .json(&json!({"reason": "no"}))
        .send()
        .await?;
    let (status, body) = answer(conflict).await?;
    assert_eq!(
        (status, body["current_version"].as_u64()),
        (StatusCode::CONFLICT, Some(1))
    );
    let (status, body) = app
        .send(
            &format!("/v1/orders/{order}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await?;
    assert_eq!(
        (status, body["version"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    let (status, body) = app
        .send(
            &format!("/v1/orders/{order}/cancel"),
            json!({"reason": "again"}),
        )
        .await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid-transition"))
    );
    // The order's status is beside the problem's own, not a second `status` member.
    assert_eq!(
        (body["status"].as_u64(), body["current_status"].as_str()),
        (Some(422), Some("cancelled"))
    );
    let (status, _) = app
        .send(
            &format!("/v1/orders/{}/cancel", Uuid::new_v4()),
            json!({"reason": "x"}),
        )
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_the_same_bytes_and_refuses_another_body() -> anyhow::Result<()>
{
    let env = TestEnv::new().await;
    let app = App::start(&env, &[]).await?;
    let body = user_body("Grace Hopper", "grace@example.com");
    let send = |body: &Value| {
        app.post("/v1/users")
            .header("Idempotency-Key", "register-grace-1")
            .json(body)
            .send()
    };
    let first = send(&body).await?;
    let (status, first_bytes) = (first.status(), first.bytes().await?);
    assert_eq!(status, 201);
    let again = send(&body).await?;
    assert_eq!(again.status(), 201);
    assert_eq!(again.bytes().await?, first_bytes, "byte-identical");

    let other = send(&user_body("Grace Hopper", "other@example.com")).await?;
    let (status, problem) = answer(other).await?;
    assert_eq!(
        (status, problem["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("urn:shop:problem:idempotency-key-reused")
        )
    );
    app.shutdown().await?;

    // After a restart (a new process, rebuilding from the log): still the same bytes.
    let restarted = App::start(&env, &[]).await?;
    let again = until_decided(|| {
        restarted
            .post("/v1/users")
            .header("Idempotency-Key", "register-grace-1")
            .json(&body)
    })
    .await?;
    assert_eq!(again.bytes().await?, first_bytes);
    assert_eq!(restarted.events("users").await?.len(), 1, "appended once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_after_a_burst_all_get_the_first_answer()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let app = App::start(&env, &[]).await?;
    let user = register(&app, "burst@example.com").await?;
    let path = format!("/v1/users/{user}/email");

    // A burst of 100 concurrent email changes on the user (unkeyed, all at once)...
    let burst: Vec<_> = (0..100)
        .map(|i| {
            let change = json!({"email": format!("burst-{i}@example.com")});
            tokio::spawn(app.post(&path).json(&change).send())
        })
        .collect();
    for change in burst {
        let status = change.await??.status();
        assert!(
            [200, 409, 422, 503].contains(&status.as_u16()),
            "burst: {status}"
        );
    }
    // ...then 20 copies of one keyed change at once: one runs, the others get its answer.
    let before = commands_answered(&app, "users").await?;
    let change = json!({"email": "keyed@example.com"});
    let answers = same_key_at_once(&[&app], &path, &change, "change-after-burst", 20).await?;
    let (status, _, _, body) = one_answer(&answers);
    assert_eq!(*status, 200, "{}", String::from_utf8_lossy(body));
    // And a later retry too.
    let later = same_key_at_once(&[&app], &path, &change, "change-after-burst", 1).await?;
    assert_eq!(
        commands_answered(&app, "users").await? - before,
        1,
        "the request ran once: one ChangeUserEmail reached the users' writer"
    );
    assert_eq!(
        &later[0], &answers[0],
        "a later retry gets the stored answer"
    );

    let changed = app
        .events("users")
        .await?
        .into_iter()
        .filter(|e| {
            let keyed = service_runtime::personal_data::EmailIndex::development()
                .claim_id("keyed@example.com");
            e.event_type == "UserEmailChanged" && e.data["claim_id"] == keyed.as_str()
        })
        .count();
    assert_eq!(changed, 1, "the keyed change appended once");

    // Keyed registrations at once: one user, one 201 with its Location, for every copy.
    let body = user_body("Katherine Johnson", "katherine@example.com");
    let answers = same_key_at_once(&[&app], "/v1/users", &body, "register-katherine", 20).await?;
    let (status, location, _, _) = one_answer(&answers);
    assert_eq!(*status, 201);
    assert!(
        location
            .as_deref()
            .is_some_and(|l| l.starts_with("/v1/users/"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_that_could_not_be_read_keeps_its_key_free_for_the_fixed_retry()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let app = App::start(&env, &[]).await?;
    let body = serde_json::to_string(&user_body("Mary Jackson", "mary@example.com"))?;
    let send = |content_type: &'static str| {
        app.post("/v1/users")
            .header("Idempotency-Key", "register-mary")
            .header("content-type", content_type)
            .body(body.clone())
            .send()
    };
    assert_eq!(send("text/plain").await?.status(), 415);
    let fixed = send("application/json").await?;
    assert_eq!(
        fixed.status(),
        201,
        "the 415 was not kept as the key's answer"
    );

    // A different If-Match is a different request: the key refuses it.
    let user = fixed.json::<Value>().await?["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let path = format!("/v1/users/{user}/deactivate");
    let deactivate = |version: &'static str| {
        app.post(&path)
            .header("Idempotency-Key", "deactivate-mary")
            .header("If-Match", version)
            .json(&json!({}))
            .send()
    };
    assert_eq!(deactivate("\"7\"").await?.status(), 409);
    let (status, problem) = answer(deactivate("\"1\"").await?).await?;
    assert_eq!(
        (status.as_u16(), problem["type"].as_str()),
        (422, Some("urn:shop:problem:idempotency-key-reused"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_documented_problem() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let app = App::start(&env, &[]).await?;
    let malformed = app
        .post("/v1/users")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await?;
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.headers()["content-type"],
        "application/problem+json"
    );
    let text = app
        .post("/v1/users")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await?;
    assert_eq!(text.status(), 415);
    let huge = json!({"name": "x".repeat(70 * 1024), "email": "a@b.co"});
    assert_eq!(
        app.post("/v1/users").json(&huge).send().await?.status(),
        413
    );
    let (status, problem) = app
        .send("/v1/users", json!({"name": "", "email": "nope", "id": 5}))
        .await?;
    assert_eq!(status, 422);
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["id", "name", "email"], "{problem}");
    let if_match = app
        .post(&format!("/v1/users/{}/deactivate", Uuid::new_v4()))
        .header("If-Match", "soon")
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(if_match.status(), 422);

    let anonymous = app
        .client
        .post(format!("{}/v1/users", app.base))
        .json(&user_body("A", "a@b.co"))
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401);
    let wrong = app
        .client
        .post(format!("{}/v1/users", app.base))
        .bearer_auth("guess")
        .json(&user_body("A", "a@b.co"))
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    for open in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(
            app.client
                .get(format!("{}{open}", app.base))
                .send()
                .await?
                .status(),
            200,
            "{open}"
        );
    }
    assert!(
        app.events("users").await?.is_empty(),
        "no refused request appended anything"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_is_limited_and_correlation_and_trace_ride_on_the_events() -> anyhow::Result<()>
{
    let env = TestEnv::new().await;
    let app = App::start(
        &env,
        &[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "3")],
    )
    .await?;
    let correlation = Uuid::now_v7().to_string();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app
        .post("/v1/users")
        .header("X-Correlation-Id", &correlation)
        .header("traceparent", traceparent)
        .json(&user_body("Ada", "traced@example.com"))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-correlation-id"], correlation.as_str());
    let events = app.events("users").await?;
    assert_eq!(events[0].correlationid.to_string(), correlation);
    assert_eq!(
        events[0].traceparent.trace_id(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let claims = app.events("user-emails").await?;
    assert_eq!(
        claims[0].correlationid.to_string(),
        correlation,
        "every event the request caused"
    );

    let mut limited = None;
    for _ in 0..5 {
        let response = app.post("/v1/users").json(&json!({})).send().await?;
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the key is limited past its burst");
    assert!(limited.headers()["retry-after"].to_str()?.parse::<u32>()? >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_gets_a_503_with_retry_after_within_5_seconds() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let mut broker = test_support::PrivateBroker::start().await;
    let app = App::start_on(
        &env,
        &broker.brokers.clone(),
        &[("COMMAND_TIMEOUT_MS", "4000")],
    )
    .await?;
    register(&app, "alive@example.com").await?;
    broker.kill();
    let started = Instant::now();
    let response = app
        .post("/v1/users")
        .json(&user_body("Late", "late@example.com"))
        .send()
        .await?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_that_exist() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let app = App::start(&env, &[]).await?;
    let document: Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("operations").keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "POST /v1/orders",
            "POST /v1/orders/{id}/cancel",
            "POST /v1/users",
            "POST /v1/users/{id}/deactivate",
            "POST /v1/users/{id}/email",
            "POST /v1/users/{id}/forget",
        ]
    );
    // Every documented route exists: anything else is a 404 from the router's fallback.
    for route in &documented {
        let (method, path) = route.split_once(' ').expect("method and path");
        let path = path.replace("{id}", &Uuid::new_v4().to_string());
        assert_eq!(method, "POST");
        let status = app
            .client
            .post(format!("{}{path}", app.base))
            .send()
            .await?
            .status();
        assert_eq!(status, 401, "{route} exists (and wants a key)");
    }
    let status = app
        .client
        .post(format!("{}/v1/nothing", app.base))
        .send()
        .await?
        .status();
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_limit_load_is_shed_with_503_not_queued() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let app = std::sync::Arc::new(App::start(&env, &[("MAX_IN_FLIGHT", "2")]).await?);
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let app = std::sync::Arc::clone(&app);
            tokio::spawn(async move {
                let response = app
                    .post("/v1/users")
                    .json(&user_body("Load", &format!("load{i}@example.com")))
                    .send()
                    .await?;
                let status = response.status();
                let retry_after = response.headers().get("retry-after").cloned();
                anyhow::Ok((status, retry_after))
            })
        })
        .collect();
    let mut shed = 0;
    let mut created = 0;
    for attempt in burst {
        let (status, retry_after) = attempt.await??;
        match status.as_u16() {
            201 => created += 1,
            503 => {
                shed += 1;
                assert!(retry_after.is_some(), "a shed request says when to retry");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed > 0 && created > 0, "{shed} shed, {created} created");
    let registered = app.events("users").await?.len();
    assert_eq!(registered, created, "a shed request appended nothing");
    Ok(())
}

/// A keyed retry of an order whose first answer was lost gets that answer even when the
/// customer was deactivated in between (the fault suite found it refused with 422 while
/// the order stood in the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_retry_of_a_placed_order_is_answered_as_placed_after_the_user_is_deactivated()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let app = App::start(&env, &[]).await?;
    let user = register(&app, "linus@example.com").await?;
    let place = || {
        app.post("/v1/orders")
            .header("Idempotency-Key", "order-linus-1")
            .json(&order_body(&user))
            .send()
    };
    let (status, first) = answer(place().await?).await?;
    assert_eq!(status, 201, "{first}");
    let (status, _) = app
        .send(&format!("/v1/users/{user}/deactivate"), json!({}))
        .await?;
    assert_eq!(status, 200);

    let (status, again) = answer(place().await?).await?;
    assert_eq!(status, 201, "{again}");
    assert_eq!(
        (&again["id"], &again["version"]),
        (&first["id"], &first["version"])
    );
    assert_eq!(app.events("orders").await?.len(), 1, "placed once");

    // A new request for the deactivated user is still refused.
    let (status, problem) = app.send("/v1/orders", order_body(&user)).await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("user-deactivated"))
    );
    app.shutdown().await?;
    Ok(())
}
