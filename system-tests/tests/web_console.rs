//! The operators' console at the gateway's `/console/`, in a real browser: Debian's
//! chromium driven by playwright-core (system-tests/browser/console.mjs) against the real
//! nginx gateway, the three services and the console's API. An order placed while the
//! page is open shows up and completes without a reload; its timeline, causal tree, events
//! and state as of version 1 are shown; a parked record is skipped from the page; a client
//! key cannot act; a live tail follows, pauses and resumes; bad input and a dead backend
//! each give a message. The page fetches nothing from elsewhere and breaks no policy.

use std::process::Stdio;
use std::time::Duration;

use event_store::record::to_kafka_headers;
use event_store::{KafkaSettings, TopicNames};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::orders::{OrderConfirmed, OrderEvent};
use schemas::{Event, EventMeta, OrderId, PaymentId};
use serde_json::{Value, json};
use system_tests::{
    Gateway, OPERATOR_KEY, create_topics, repo_root, service_env_with, start_console,
    start_services, wait_for_200,
};
use test_support::TestEnv;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const KEY: &str = "test-key";

/// A refund of exactly this amount is refused for good: cancelling a confirmed order of it
/// fails its saga (PAYMENT_REFUSE_REFUNDS_OF_CENTS).
const UNREFUNDABLE_CENTS: u64 = 4242;

async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await? {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not within 30 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A saga's state as the API shows it.
async fn saga_state(client: &reqwest::Client, gateway: &Gateway, order: &str) -> String {
    match answer(client.get(gateway.url(&format!("/v1/sagas/{order}")))).await {
        Ok((200, saga)) => saga["state"].as_str().unwrap_or_default().to_owned(),
        _ => String::new(),
    }
}

/// An order whose saga failed: confirmed, then cancelled, and its refund refused.
async fn failed_saga(
    client: &reqwest::Client,
    gateway: &Gateway,
    user: &str,
) -> anyhow::Result<String> {
    let (status, order) = answer(client.post(gateway.url("/v1/orders")).json(&json!({
        "user_id": user, "currency": "EUR",
        "lines": [{"sku": "SKU-9", "quantity": 1, "unit_price_cents": UNREFUNDABLE_CENTS}]
    })))
    .await?;
    anyhow::ensure!(status == 201, "{order}");
    let id = order["id"].as_str().unwrap_or_default().to_owned();
    eventually("the order's saga completes", || async {
        Ok(saga_state(client, gateway, &id).await == "completed")
    })
    .await?;
    let (status, cancelled) = answer(
        client
            .post(gateway.url(&format!("/v1/orders/{id}/cancel")))
            .json(&json!({"reason": "changed my mind"})),
    )
    .await?;
    anyhow::ensure!(status == 200, "{cancelled}");
    eventually("the refund fails the saga", || async {
        Ok(saga_state(client, gateway, &id).await == "failed")
    })
    .await?;
    Ok(id)
}

/// A record the orders read model cannot apply (a confirmation with a payment id that is
/// no id), as the first event of a new order: parked, with its aggregate id.
async fn poison(env: &TestEnv) -> anyhow::Result<String> {
    let order = OrderId::new();
    let mut document = Event {
        meta: EventMeta::new(1),
        payload: OrderEvent::from(OrderConfirmed {
            order_id: order,
            payment_id: PaymentId::for_order(order),
        }),
    }
    .to_document();
    document.data["payment_id"] = "not-a-payment-id".into();
    let producer: FutureProducer = KafkaSettings::new(&env.brokers).producer().create()?;
    let topic = TopicNames::new(&env.topic_prefix).events("orders");
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&document.subject)
                .payload(&document.to_json())
                .headers(to_kafka_headers(&document.headers())),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(order.to_string())
}

/// Runs console.mjs; when it asks ("dead?" on stderr), stops the console's API, then lets
/// it look once more. Returns what it saw.
async fn browse(
    gateway: &Gateway,
    fixtures: &Value,
    console: system_tests::RunningService,
) -> anyhow::Result<Value> {
    let chromium = std::env::var("SHOP_TEST_CHROMIUM").map_err(|_| {
        anyhow::anyhow!("SHOP_TEST_CHROMIUM is not set: run the tests through ./dev test")
    })?;
    let mut child = tokio::process::Command::new("node")
        .arg(repo_root().join("system-tests/browser/console.mjs"))
        .args([&gateway.url(""), KEY, OPERATOR_KEY, &fixtures.to_string()])
        .env("SHOP_TEST_CHROMIUM", chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("stdout"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("stderr"))?;
    let read_out = tokio::spawn(async move {
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.map(|_| out)
    });
    let run = async {
        let mut lines = BufReader::new(stderr).lines();
        let mut said = String::new();
        while let Some(line) = lines.next_line().await? {
            if line.trim() == "dead?" {
                let began = std::time::Instant::now();
                tokio::time::timeout(Duration::from_secs(15), console.stop())
                    .await
                    .map_err(|_| anyhow::anyhow!("the console's API did not stop within 15 s"))??;
                eprintln!(
                    "console.mjs: the console's API stopped in {:?}",
                    began.elapsed()
                );
                stdin.write_all(b"go\n").await?;
                stdin.flush().await?;
                drop(stdin);
                break;
            }
            eprintln!("console.mjs: {line}");
            said.push_str(&line);
            said.push('\n');
        }
        while let Some(line) = lines.next_line().await? {
            said.push_str(&line);
            said.push('\n');
        }
        let status = child.wait().await?;
        anyhow::Ok((status, said))
    };
    let (status, said) = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .map_err(|_| anyhow::anyhow!("the browser did not finish within 240 s"))??;
    let out = read_out.await??;
    anyhow::ensure!(status.success(), "console.mjs failed: {out}{said}");
    serde_json::from_str(out.trim()).map_err(|e| anyhow::anyhow!("{e}: {out}{said}"))
}

fn text(seen: &Value, field: &str) -> String {
    seen.pointer(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn operators_watch_orders_sagas_and_the_log_live_in_the_console() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let refused = UNREFUNDABLE_CENTS.to_string();
    let settings = service_env_with(
        &env,
        &env.brokers,
        &env.database_url,
        &[("PAYMENT_REFUSE_REFUNDS_OF_CENTS", refused.as_str())],
    );
    let services = start_services(&settings).await?;
    let console = start_console(&settings).await?;
    let gateway = Gateway::start_with_console(
        services[0].addr,
        services[1].addr,
        services[2].addr,
        console.addr,
    )
    .await?;
    for name in services.iter().map(|s| s.name).chain([console.name]) {
        wait_for_200(
            &gateway.url(&format!("/{name}/ready")),
            Duration::from_secs(30),
        )
        .await?;
    }

    // The page is served with its policy; its API needs a key and answers problems.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let response = plain.get(gateway.url("/console")).send().await?;
    assert_eq!(response.status(), 301);
    assert_eq!(response.headers()["location"], "/console/");
    let page = plain.get(gateway.url("/console/")).send().await?;
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"));
    let html = page.text().await?;
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default();
    assert!(script.starts_with("/console/assets/"), "{html}");
    let script = plain.get(gateway.url(script)).send().await?;
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()?
            .starts_with("text/javascript")
    );
    let (status, problem) = answer(plain.get(gateway.url("/console/api/topics"))).await?;
    assert_eq!(status, 401, "{problem}");
    let client = test_support::client(KEY);
    let (status, topics) = answer(client.get(gateway.url("/console/api/topics"))).await?;
    assert_eq!(status, 200, "{topics}");
    let (status, problem) = answer(client.get(gateway.url("/console/api/events"))).await?;
    assert_eq!(
        (status, problem["errors"][0]["field"].as_str()),
        (422, Some("q")),
        "{problem}"
    );

    // What the browser will find: a customer, a failed saga, a parked record.
    let (status, user) = answer(client.post(gateway.url("/v1/users")).json(&json!({
        "name": "Grace Hopper", "email": format!("grace-{}@example.com", uuid::Uuid::new_v4().simple())
    })))
    .await?;
    assert_eq!(status, 201, "{user}");
    let user = user["id"].as_str().unwrap_or_default().to_owned();
    let failed = failed_saga(&client, &gateway, &user).await?;
    let poisoned = poison(&env).await?;
    let operator = test_support::client(OPERATOR_KEY);
    let parked = gateway.url(&format!(
        "/v1/dead-letters?read_model=orders&aggregate={poisoned}"
    ));
    eventually("the poison is parked", || async {
        let (_, page) = answer(operator.get(&parked)).await?;
        Ok(page["items"].as_array().is_some_and(|i| !i.is_empty()))
    })
    .await?;
    let orders_topic = TopicNames::new(&env.topic_prefix).events("orders");
    let fixtures =
        json!({"user": user, "failed": failed, "poisoned": poisoned, "ordersTopic": orders_topic});

    let seen = browse(&gateway, &fixtures, console).await?;
    assert!(seen["failure"].is_null(), "the browser failed: {seen:#}");
    assert_eq!(seen["status"], 200);
    assert!(
        text(&seen, "/clientRole").starts_with("client key"),
        "{seen:#}"
    );
    assert!(
        text(&seen, "/operatorRole").starts_with("operator key"),
        "{seen:#}"
    );

    // A client key sees, and cannot act: the retry is disabled and nothing was posted;
    // the dead letters are an operator's.
    assert_eq!(seen["client"]["retryDisabled"], true, "{seen:#}");
    assert_eq!(seen["posts"]["client"], json!([]), "{seen:#}");
    assert!(
        text(&seen, "/client/deadLetters").contains("operator keys only"),
        "{seen:#}"
    );
    assert_eq!(seen["deadLetterCalls"]["client"], 0, "{seen:#}");
    assert_eq!(seen["client"]["skipButtons"], 0);

    // The order placed while the list was open completed there, without a reload.
    let order = text(&seen, "/order");
    assert!(!order.is_empty(), "{seen:#}");
    assert_eq!(seen["sameDocument"], true, "the page was reloaded");
    assert!(text(&seen, "/counts").contains("completed"), "{seen:#}");
    let timeline = text(&seen, "/timeline");
    for step in [
        "order_placed",
        "authorize_payment",
        "payment_authorized",
        "confirm_order",
        "order_confirmed",
        "notify_order_confirmed",
        "notification_sent",
    ] {
        assert!(timeline.contains(step), "timeline lacks {step}: {timeline}");
    }
    let commands = text(&seen, "/sagaCommands");
    for step in [
        "authorize_payment",
        "confirm_order",
        "notify_order_confirmed",
    ] {
        assert!(commands.contains(step), "commands lack {step}: {commands}");
    }
    let tree: Vec<&str> = seen["treeEvents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for event in [
        "OrderPlaced",
        "PaymentAuthorized",
        "OrderConfirmed",
        "NotificationSent",
    ] {
        assert!(tree.contains(&event), "tree lacks {event}: {tree:?}");
    }
    let kinds = seen["treeKinds"].to_string();
    assert!(
        kinds.contains("request") && kinds.contains("saga_step"),
        "{kinds}"
    );
    let opened = text(&seen, "/openedEvent");
    assert!(
        opened.contains("OrderPlaced") && opened.contains(&order),
        "{opened}"
    );
    assert_eq!(seen["orderEvents"], 2, "placed and confirmed: {seen:#}");
    let as_of = text(&seen, "/asOfOne");
    assert!(
        as_of.contains("\"version\": 1") && as_of.contains("\"status\": \"pending\""),
        "{as_of}"
    );

    // The operator retried the failed saga, saw the lag, and skipped the parked record.
    assert_eq!(seen["operatorRetryDisabled"], false);
    assert!(text(&seen, "/retried").contains("Retry issued"), "{seen:#}");
    assert!(
        seen["posts"]["operator"]
            .to_string()
            .contains(&format!("/v1/sagas/{failed}/retry"))
    );
    let lag = text(&seen, "/lag");
    for reader in [
        "read model orders",
        "read model event_index",
        "saga orchestrator",
        "orders writers",
    ] {
        assert!(lag.contains(reader), "lag lacks {reader}: {lag}");
    }
    assert!(
        text(&seen, "/skipped").starts_with("Skipped orders"),
        "{seen:#}"
    );
    let (_, page) = answer(operator.get(&parked)).await?;
    assert_eq!(page["items"], json!([]), "still parked: {page}");

    // The tail followed, held a record while paused and showed it on resume.
    assert_eq!(seen["whilePaused"]["shown"], false, "{seen:#}");
    assert!(
        text(&seen, "/whilePaused/status").contains("held"),
        "{seen:#}"
    );
    assert_eq!(seen["resumed"], true);
    let shown_topics = seen["topics"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(
        shown_topics,
        topics.as_array().map(Vec::len).unwrap_or(99),
        "{seen:#}"
    );

    // Bad input and a dead backend: a message each.
    let messages = &seen["messages"];
    for (case, expected) in [
        ("explainNotAnId", "must be a UUID"),
        ("unknownOrder", "No order"),
        ("notAnId", "is not an id"),
        ("searchTooLong", "1 to 200 characters"),
        ("nothingFound", "Nothing in the event index"),
        ("unknownSaga", "No saga for order"),
        ("noSuchPage", "There is no page"),
    ] {
        let shown = messages[case].as_str().unwrap_or_default();
        assert!(shown.contains(expected), "{case}: {shown:?}");
    }
    let dead = text(&seen, "/deadBackend");
    assert!(
        dead.contains("not answering") || dead.contains("down"),
        "{dead}"
    );

    // Nothing from elsewhere, no policy broken, no script error, the key kept out of URLs,
    // storage and cookies.
    let origin = gateway.url("/");
    for url in seen["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        assert!(url.starts_with(&origin), "the page fetched {url}");
        assert!(!url.contains(KEY) && !url.contains(OPERATOR_KEY), "{url}");
    }
    assert_eq!(seen["violations"], json!([]), "{seen:#}");
    assert_eq!(seen["errors"], json!([]), "{seen:#}");
    assert_eq!(seen["failedFiles"], json!([]), "{seen:#}");
    assert_eq!(seen["cookies"], json!([]));
    for storage in [text(&seen, "/storage"), text(&seen, "/client/storage")] {
        assert!(
            !storage.contains(KEY) && !storage.contains(OPERATOR_KEY),
            "{storage}"
        );
    }

    live_tails_are_bounded(&env, &orders_topic).await?;
    for service in services {
        service.stop().await?;
    }
    Ok(())
}

/// A console's API allowed one live tail: the first streams the topic's last records as a
/// `records` event, a second is refused with a problem naming the limit.
async fn live_tails_are_bounded(env: &TestEnv, topic: &str) -> anyhow::Result<()> {
    let settings = service_env_with(
        env,
        &env.brokers,
        &env.database_url,
        &[("CONSOLE_LIVE_TAILS", "1")],
    );
    let console = start_console(&settings).await?;
    wait_for_200(&console.url("/ready"), Duration::from_secs(30)).await?;
    let client = test_support::client(KEY);
    let tail = console.url(&format!("/console/api/topics/{topic}/tail?last=1"));
    let mut first = client.get(&tail).send().await?;
    assert_eq!(first.status(), 200);
    assert!(
        first.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    let mut streamed = String::new();
    while !streamed.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), first.chunk())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the tail ended: {streamed}"))?;
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        streamed.starts_with("event: records\ndata: ["),
        "{streamed}"
    );
    let (status, problem) = answer(client.get(&tail)).await?;
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("CONSOLE_LIVE_TAILS")),
        "{problem}"
    );
    drop(first);
    console.stop().await?;
    Ok(())
}
