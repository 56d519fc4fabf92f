//! The query API over HTTP on the real broker and Postgres: read-your-writes through
//! `min_position` (never older data, 504 with the lag on timeout), history and time travel
//! equal to a fold of the log, keyset pages, and problem+json for bad requests.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Log, Service, cancelled, confirmed, event, eventually, placed};
use projections::projector::{ReadModel, Schema};
use projections::read_models::orders::{OrderRow, Orders};
use reqwest::StatusCode;
use schemas::{EventDocument, OrderId, UserId};
use serde_json::Value;
use test_support::TestEnv;

fn token(w: &common::Written) -> String {
    format!("orders:{}:{}", w.partition, w.offset)
}

/// The order as a fold of `documents`, as the API renders it.
fn folded(documents: &[EventDocument]) -> Value {
    let mut row: Option<OrderRow> = None;
    for d in documents {
        row = Orders::fold(row.as_ref(), d)
            .expect("a valid history")
            .or(row);
    }
    serde_json::to_value(row.expect("at least one event")).expect("json")
}

#[tokio::test]
async fn a_query_with_min_position_never_answers_older_data() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let mut log = Log::new(&env).await?;
    let service = Service::start(&env, &[]).await?;
    let client = test_support::client(common::API_KEY);
    let user = UserId::new();
    for _ in 0..15 {
        let order = OrderId::new();
        let steps = [
            (1, placed(order, user), "pending"),
            (2, confirmed(order), "confirmed"),
            (3, cancelled(order), "cancelled"),
        ];
        for (version, payload, status) in steps {
            let written = log.append(event(version, payload)).await?;
            let url = service.url(&format!(
                "/v1/orders/{order}?min_position={}",
                token(&written)
            ));
            let response = client.get(url).send().await?;
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await?;
            assert_eq!(body["version"], version, "{body}");
            assert_eq!(body["status"], status);
        }
    }
    // The user's orders, read right after the last write, are all there.
    let last = log.written.last().expect("written");
    let url = service.url(&format!(
        "/v1/orders?user_id={user}&status=cancelled&limit=100&min_position={}",
        token(last)
    ));
    let page: Value = client.get(url).send().await?.json().await?;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(15));
    assert_eq!(page["next_cursor"], Value::Null);
    service.stop().await
}

#[tokio::test]
async fn a_position_the_read_model_does_not_reach_in_time_answers_504_with_the_lag()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let mut log = Log::new(&env).await?;
    let service = Service::start(&env, &[("QUERY_WAIT_MS", "300")]).await?;
    // The orders read model is held back: its table is locked, so its projector cannot
    // apply what is written next.
    let pool = env.pool().await;
    let mut lock = pool.begin().await?;
    let table = Schema::live("orders").table("orders");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
    )))
    .execute(&mut *lock)
    .await?;
    let order = OrderId::new();
    let written = log.append(event(1, placed(order, UserId::new()))).await?;
    let started = std::time::Instant::now();
    let response = test_support::client(common::API_KEY)
        .get(service.url(&format!(
            "/v1/orders/{order}?min_position={}",
            token(&written)
        )))
        .send()
        .await?;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by QUERY_WAIT_MS"
    );
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await?;
    assert!(
        problem["lag"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|lag| lag["read_model"] == "orders" && lag["behind_events"] == 1),
        "{problem}"
    );
    lock.rollback().await?;

    // A position past the end of the log, or on a partition the topic does not have, was
    // returned by no command: 422 once the wait is over, not a 504 to retry forever.
    for far in [
        format!(
            "orders:{}:{}",
            written.partition,
            written.offset + 1_000_000
        ),
        "orders:999999:0".to_owned(),
    ] {
        let response = test_support::client(common::API_KEY)
            .get(service.url(&format!("/v1/orders/{order}?min_position={far}")))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{far}");
        let problem: Value = response.json().await?;
        assert_eq!(problem["errors"][0]["field"], "min_position", "{problem}");
    }
    service.stop().await
}

#[tokio::test]
async fn history_and_as_of_answers_equal_a_fold_of_the_first_events() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let mut log = Log::new(&env).await?;
    let service = Service::start(&env, &[]).await?;
    let client = test_support::client(common::API_KEY);
    let order = OrderId::new();
    let mut documents = Vec::new();
    let mut last = None;
    for (version, payload) in [
        (1, placed(order, UserId::new())),
        (2, confirmed(order)),
        (3, cancelled(order)),
    ] {
        let document = event(version, payload);
        documents.push(document.clone());
        last = Some(log.append(document).await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = token(&last.expect("written"));

    let history: Value = client
        .get(service.url(&format!("/v1/orders/{order}/history?min_position={at}")))
        .send()
        .await?
        .json()
        .await?;
    let events = history["events"].as_array().expect("events");
    assert_eq!(events.len(), 3);
    for (entry, (document, written)) in events.iter().zip(documents.iter().zip(&log.written)) {
        assert_eq!(entry["type"], document.event_type.as_str());
        assert_eq!(entry["version"], document.aggregateversion);
        assert_eq!(entry["data"], document.data);
        assert_eq!(entry["position"], token(written));
    }
    for n in 1..=3 {
        let url = service.url(&format!(
            "/v1/orders/{order}?as_of_version={n}&min_position={at}"
        ));
        let state: Value = client.get(url).send().await?.json().await?;
        assert_eq!(state, folded(&documents[..n]), "as of version {n}");
        // The same state by time: the moment the n-th event happened.
        let time = documents[n - 1]
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let url = service.url(&format!(
            "/v1/orders/{order}?as_of={}",
            time.replace('+', "%2B")
        ));
        let state: Value = client.get(url).send().await?.json().await?;
        assert_eq!(state, folded(&documents[..n]), "as of {time}");
    }
    // The live row is the fold of everything.
    let live: Value = client
        .get(service.url(&format!("/v1/orders/{order}?min_position={at}")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(live, folded(&documents));
    let before = client
        .get(service.url(&format!("/v1/orders/{order}?as_of=2000-01-01T00:00:00Z")))
        .send()
        .await?;
    assert_eq!(before.status(), StatusCode::NOT_FOUND);
    let beyond = client
        .get(service.url(&format!("/v1/orders/{order}?as_of_version=4")))
        .send()
        .await?;
    assert_eq!(beyond.status(), StatusCode::NOT_FOUND);
    service.stop().await
}

#[tokio::test]
async fn pages_cover_every_order_once_and_bad_requests_are_problems() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let mut log = Log::new(&env).await?;
    let service = Service::start(&env, &[]).await?;
    let client = test_support::client(common::API_KEY);
    let user = UserId::new();
    let mut placed_orders = HashSet::new();
    for _ in 0..7 {
        let order = OrderId::new();
        placed_orders.insert(order.to_string());
        log.append(event(1, placed(order, user))).await?;
    }
    let last = token(log.written.last().expect("written"));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    // The user never registered in this test: only their orders exist.
    let response = client
        .get(service.url(&format!("/v1/users/{user}/orders?min_position={last}")))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    loop {
        let mut url = service.url(&format!(
            "/v1/orders?user_id={user}&limit=3&min_position={last}"
        ));
        if let Some(c) = &cursor {
            url += &format!("&cursor={c}");
        }
        let page: Value = client.get(url).send().await?.json().await?;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "no order twice: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), placed_orders);

    for (path, status, field) in [
        ("/v1/orders/not-a-uuid", 422, Some("id")),
        ("/v1/orders?limit=0", 422, Some("limit")),
        ("/v1/orders?limit=101", 422, Some("limit")),
        ("/v1/orders?status=lost", 422, Some("status")),
        ("/v1/orders?cursor=zz", 422, Some("cursor")),
        ("/v1/orders?colour=red", 422, Some("colour")),
        ("/v1/orders?min_position=nowhere", 422, Some("min_position")),
        ("/v1/payments", 422, Some("order_id")),
        ("/v1/notifications?user_id=x", 422, Some("user_id")),
        ("/v1/orders/00000000-0000-0000-0000-000000000000", 404, None),
        ("/v1/users/00000000-0000-0000-0000-000000000000", 404, None),
        (
            "/v1/orders/00000000-0000-0000-0000-000000000000/history",
            404,
            None,
        ),
    ] {
        let response = client.get(service.url(path)).send().await?;
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let problem: Value = response.json().await?;
        if let Some(field) = field {
            let fields: Vec<&str> = problem["errors"]
                .as_array()
                .map(|e| e.iter().filter_map(|x| x["field"].as_str()).collect())
                .unwrap_or_default();
            assert!(fields.contains(&field), "{path}: {problem}");
        }
    }
    // Lag and apply rate are reported per read model.
    eventually(Duration::from_secs(10), "lag metrics", || async {
        let metrics = client
            .get(service.url("/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(
            metrics.contains(r#"projector_lag_events{read_model="orders"}"#)
                && metrics.contains(r#"projector_applied_events_total{read_model="event_index"}"#),
        )
    })
    .await?;
    service.stop().await
}
