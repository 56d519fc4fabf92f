//! The dead letters over HTTP, on the real broker and Postgres: only an operator key lists,
//! retries or skips what the read models parked (a client key gets 403); unknown
//! read models, aggregates with nothing parked and bad parameters get their problem.

mod common;

use std::time::Duration;

use common::{API_KEY, Log, Service, cancelled, confirmed, event, eventually, placed};
use schemas::{OrderId, UserId};
use serde_json::Value;
use test_support::TestEnv;

const OPERATOR_KEY: &str = "operator-key";

async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

#[tokio::test]
async fn dead_letters_are_listed_and_acted_on_only_with_an_operator_key() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let mut log = Log::new(&env).await?;
    let (poisoned, user) = (OrderId::new(), UserId::new());
    log.append(event(1, placed(poisoned, user))).await?;
    let mut poison = event(2, confirmed(poisoned));
    poison.data["payment_id"] = "not-a-payment-id".into();
    log.append(poison).await?;
    log.append(event(3, cancelled(poisoned))).await?;
    let service = Service::start(&env, &[("OPERATOR_API_KEYS", OPERATOR_KEY)]).await?;
    let (client, operator) = (
        test_support::client(API_KEY),
        test_support::client(OPERATOR_KEY),
    );

    let list = service.url(&format!(
        "/v1/dead-letters?read_model=orders&aggregate={poisoned}"
    ));
    eventually(Duration::from_secs(30), "two parked records", || async {
        let (_, page) = answer(operator.get(&list)).await?;
        Ok(page["items"].as_array().is_some_and(|i| i.len() == 2))
    })
    .await?;
    let (status, problem) = answer(client.get(&list)).await?;
    assert_eq!(status, 403, "{problem}");
    let (_, page) = answer(operator.get(&list)).await?;
    let head = &page["items"][0];
    assert_eq!(
        (
            head["read_model"].as_str(),
            head["record"]["version"].as_i64()
        ),
        (Some("orders"), Some(2)),
        "{page}"
    );
    assert!(
        head["record"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid OrderConfirmed")),
        "{page}"
    );

    let retry = service.url(&format!("/v1/dead-letters/orders/{poisoned}/retry"));
    let skip = service.url(&format!("/v1/dead-letters/orders/{poisoned}/skip"));
    for action in [&retry, &skip] {
        let (status, problem) = answer(client.post(action)).await?;
        assert_eq!(status, 403, "{problem}");
        assert_eq!(problem["type"], "urn:shop:problem:operator-key-required");
        let (status, _) = answer(reqwest::Client::new().post(action)).await?;
        assert_eq!(status, 401);
    }
    // Still parked: the refused actions did nothing.
    let (_, page) = answer(operator.get(&list)).await?;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{page}");

    let (status, retried) = answer(operator.post(&retry)).await?;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["report"]["still_parked"], 2, "{retried}");
    assert!(retried["report"]["blocked_by"].is_string(), "{retried}");
    let (status, skipped) = answer(operator.post(&skip)).await?;
    assert_eq!(status, 200, "{skipped}");
    assert_eq!(
        (
            skipped["skipped"]["version"].as_i64(),
            skipped["report"]["applied"].as_u64(),
            skipped["report"]["still_parked"].as_u64()
        ),
        (Some(2), Some(1), Some(0)),
        "{skipped}"
    );
    let (_, page) = answer(operator.get(&list)).await?;
    assert_eq!(page["items"], serde_json::json!([]), "{page}");

    let (status, problem) = answer(operator.post(&skip)).await?;
    assert_eq!(status, 404, "nothing parked any more: {problem}");
    let unknown = service.url(&format!("/v1/dead-letters/ledgers/{poisoned}/retry"));
    let (status, problem) = answer(operator.post(&unknown)).await?;
    assert_eq!(status, 404, "{problem}");
    let nul = service.url("/v1/dead-letters/orders/a%00b/skip");
    let (status, problem) = answer(operator.post(&nul)).await?;
    assert_eq!(status, 422, "{problem}");
    let bad = service.url("/v1/dead-letters?read_model=ledgers&limit=0&aggregate=%00");
    let (status, problem) = answer(operator.get(&bad)).await?;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["errors"].as_array().map(Vec::len),
        Some(3),
        "{problem}"
    );
    service.stop().await
}
