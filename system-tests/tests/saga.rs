//! The order saga end to end, through the real gateway, writers, projections and a real
//! local HTTP server receiving the webhooks: the happy path and the compensations that
//! follow from what customers and providers do.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use schemas::notifications::NotificationKind;
use schemas::{NotificationId, OrderId};
use serde_json::{Value, json};
use system_tests::{
    Gateway, RunningService, create_topics, service_env_with, start_services, wait_for_200,
};
use test_support::TestEnv;

const KEY: &str = "test-key";
const OPERATOR_KEY: &str = system_tests::OPERATOR_KEY;
/// The webhook signing secret (Standard Webhooks: `whsec_` and base64).
const SECRET: &str = "whsec_d2ViaG9vay10ZXN0LXNpZ25pbmctc2VjcmV0";

/// One webhook request as received.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: i64,
    signature: String,
    /// The W3C `traceparent` the notice came with ("" without one).
    traceparent: String,
    body: Vec<u8>,
}

impl Received {
    /// Verified by the Standard Webhooks reference library, as a receiver would.
    fn signed_correctly(&self) -> bool {
        self.verifies_with(SECRET)
    }

    fn verifies_with(&self, secret: &str) -> bool {
        let mut headers = axum::http::HeaderMap::new();
        for (name, value) in [
            ("webhook-id", self.id.clone()),
            ("webhook-timestamp", self.timestamp.to_string()),
            ("webhook-signature", self.signature.clone()),
        ] {
            headers.insert(name, value.parse().expect("a header value"));
        }
        standardwebhooks::Webhook::new(secret)
            .and_then(|hook| hook.verify(&self.body, &headers))
            .is_ok()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// A webhook receiver on a free port; it answers with `status` (200 unless changed).
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    /// Orders whose notices are answered 500, whatever `status` says.
    failing: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let failing: Arc<Mutex<Vec<String>>> = Arc::default();
        let (log, answer, fail) = (
            Arc::clone(&received),
            Arc::clone(&status),
            Arc::clone(&failing),
        );
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (log, answer, fail) =
                    (Arc::clone(&log), Arc::clone(&answer), Arc::clone(&fail));
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    // As a real receiver does: verified with the Standard Webhooks library
                    // on arrival, refused when the signature does not hold. Every test that
                    // sees a notice delivered has had it verified.
                    let verified = standardwebhooks::Webhook::new(SECRET)
                        .and_then(|hook| hook.verify(&body, &headers))
                        .is_ok();
                    log.lock().expect("receiver lock").push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp").parse().unwrap_or(0),
                        signature: header("webhook-signature"),
                        traceparent: header("traceparent"),
                        body: body.to_vec(),
                    });
                    if !verified {
                        return StatusCode::UNAUTHORIZED;
                    }
                    let notice: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let order = notice["order_id"].as_str().unwrap_or_default().to_owned();
                    if fail.lock().expect("receiver lock").contains(&order) {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    StatusCode::from_u16(answer.load(Ordering::SeqCst)).expect("a status code")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            url,
            received,
            status,
            failing,
        })
    }

    fn of(&self, order: OrderId, kind: NotificationKind) -> Vec<Received> {
        let id = NotificationId::for_order(order, kind).to_string();
        self.received
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|r| r.id == id)
            .cloned()
            .collect()
    }
}

/// The three services behind the gateway, with the webhook pointed at `receiver`.
struct Shop {
    env: TestEnv,
    /// The settings the services started with, beyond the test environment's.
    extra: Vec<(String, String)>,
    settings: service_runtime::Env,
    services: Vec<RunningService>,
    gateway: Gateway,
    client: reqwest::Client,
    /// Where sagas are read: the gateway, or the orchestrator itself after a restart.
    sagas: String,
}

impl Shop {
    async fn start(receiver: &Receiver, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let env = TestEnv::new().await;
        create_topics(&env).await?;
        let mut settings = vec![
            ("NOTIFICATION_WEBHOOK_URL", receiver.url.as_str()),
            ("NOTIFICATION_WEBHOOK_SECRET", SECRET),
            ("NOTIFICATION_ATTEMPTS", "3"),
            ("PAYMENT_LATENCY_MS", "5"),
        ];
        settings.extend_from_slice(extra);
        let extra: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let settings = service_env_with(&env, &env.brokers, &env.database_url, &settings);
        let services = start_services(&settings).await?;
        let gateway = Gateway::start(services[0].addr, services[1].addr, services[2].addr).await?;
        for service in &services {
            wait_for_200(&service.url("/ready"), Duration::from_secs(60)).await?;
        }
        let sagas = gateway.url("");
        Ok(Self {
            env,
            extra,
            settings,
            services,
            gateway,
            client: test_support::client(KEY),
            sagas,
        })
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self
            .client
            .post(self.gateway.url(path))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {body}");
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self.client.get(self.gateway.url(path)).send().await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// A new user and an order of `cents` for them: the order id.
    async fn order(&self, cents: u64) -> anyhow::Result<OrderId> {
        Ok(self.user_and_order(cents).await?.1)
    }

    /// A new user (its id) and an order of `cents` for them.
    async fn user_and_order(&self, cents: u64) -> anyhow::Result<(String, OrderId)> {
        let n = uuid::Uuid::new_v4().simple().to_string();
        let user = self
            .post(
                "/v1/users",
                json!({"name": "Ada Lovelace", "email": format!("ada-{n}@example.com")}),
            )
            .await?;
        let order = self
            .post(
                "/v1/orders",
                json!({"user_id": user["id"], "currency": "EUR",
                       "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": cents}]}),
            )
            .await?;
        let user = user["id"].as_str().unwrap_or_default().to_owned();
        Ok((user, order["id"].as_str().unwrap_or_default().parse()?))
    }

    /// Polls the saga until it is in `state` (or fails after `within`).
    async fn saga_in(
        &self,
        order: OrderId,
        state: &str,
        within: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let response = self
                .client
                .get(format!("{}/v1/sagas/{order}", self.sagas))
                .send()
                .await?;
            let status = response.status().as_u16();
            let saga: Value = response.json().await?;
            if status == 200 && saga["state"] == state {
                return Ok(saga);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "saga of {order} not {state} within {within:?}: {status} {saga}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The order and its payments as the query side shows them once it caught up.
    async fn order_and_payment(
        &self,
        order: OrderId,
        status: &str,
    ) -> anyhow::Result<(Value, Value)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, row) = self.get(&format!("/v1/orders/{order}")).await?;
            let (_, payments) = self.get(&format!("/v1/payments?order_id={order}")).await?;
            let payment = payments["items"][0].clone();
            if row["status"] == status || tokio::time::Instant::now() > deadline {
                return Ok((row, payment));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the orchestrator; its successor starts with [`Self::start_orchestrator`].
    async fn stop_orchestrator(&mut self) -> anyhow::Result<()> {
        let orchestrator = self.services.pop().expect("three services");
        orchestrator.stop().await?;
        Ok(())
    }

    async fn start_orchestrator(&mut self) -> anyhow::Result<()> {
        let config = saga_orchestrator::Config::from_env(&self.settings)?;
        let bound = saga_orchestrator::build(config).await?;
        let orchestrator = RunningService::start(saga_orchestrator::NAME, bound);
        wait_for_200(&orchestrator.url("/ready"), Duration::from_secs(60)).await?;
        self.sagas = orchestrator.url("");
        self.services.push(orchestrator);
        Ok(())
    }

    /// Restarts the orchestrator with `changed` settings on top of the ones it had.
    async fn restart_orchestrator_with(&mut self, changed: &[(&str, &str)]) -> anyhow::Result<()> {
        self.stop_orchestrator().await?;
        let mut pairs: Vec<(&str, &str)> = self
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.extend_from_slice(changed);
        let env = &self.env;
        self.settings = service_env_with(env, &env.brokers, &env.database_url, &pairs);
        self.start_orchestrator().await
    }

    /// An operator's `POST /v1/sagas/{order}/retry`: status and body.
    async fn retry(&self, order: OrderId) -> anyhow::Result<(u16, Value)> {
        self.retry_as(order, OPERATOR_KEY).await
    }

    /// `POST /v1/sagas/{order}/retry` with `key`: status and body.
    async fn retry_as(&self, order: OrderId, key: &str) -> anyhow::Result<(u16, Value)> {
        let response = self
            .client
            .post(format!("{}/v1/sagas/{order}/retry", self.sagas))
            .bearer_auth(key)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// One line of the orchestrator's `/metrics`.
    async fn metric(&self, line_start: &str) -> anyhow::Result<Option<String>> {
        let text = test_support::metrics_text(&self.client, &self.services[2].url("")).await?;
        Ok(text
            .lines()
            .find(|l| l.starts_with(line_start))
            .map(str::to_owned))
    }

    async fn stop(self) -> anyhow::Result<()> {
        for service in self.services {
            service.stop().await?;
        }
        Ok(())
    }
}

fn step_names(saga: &Value) -> Vec<String> {
    saga["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    format!(
                        "{}:{}",
                        s["kind"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_order_is_paid_confirmed_and_the_customer_notified_with_a_signed_webhook()
-> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let shop = Shop::start(&receiver, &[]).await?;
    let order = shop.order(2500).await?;

    let saga = shop
        .saga_in(order, "completed", Duration::from_secs(60))
        .await?;
    assert_eq!(saga["current_step"], "done");
    assert_eq!(saga["failures"], json!([]));
    assert_eq!(
        step_names(&saga),
        [
            "event:order_placed",
            "command:authorize_payment",
            "event:payment_authorized",
            "command:confirm_order",
            "event:order_confirmed",
            "command:notify_order_confirmed",
            "event:notification_sent",
        ]
    );
    let (row, payment) = shop.order_and_payment(order, "confirmed").await?;
    assert_eq!(row["status"], "confirmed");
    assert_eq!(payment["status"], "authorized", "{payment}");

    let hooks = receiver.of(order, NotificationKind::OrderConfirmed);
    assert!(!hooks.is_empty(), "no webhook for {order}");
    assert!(hooks.iter().all(Received::signed_correctly), "{hooks:?}");
    assert_eq!(hooks[0].json()["kind"], "order_confirmed");
    assert_eq!(hooks[0].json()["order_id"], order.to_string());

    let (status, list) = shop.get("/v1/sagas?state=completed&limit=10").await?;
    assert_eq!(status, 200);
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["order_id"] == order.to_string())
    );
    let (status, problem) = shop.get("/v1/sagas?state=sleeping&limit=1000").await?;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(
        problem["errors"].as_array().map(Vec::len),
        Some(2),
        "{problem}"
    );
    shop.stop().await
}

/// The type and `traceparent` (from the record's header, and from the document) of every
/// event in the log that belongs to `correlation`.
async fn traced_events(
    env: &TestEnv,
    correlation: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    Ok(system_tests::events_in_log(env)
        .await?
        .into_iter()
        .filter(|(_, document)| document.correlationid.to_string() == correlation)
        .map(|(record, document)| {
            let header = record.header("traceparent").unwrap_or_default().to_owned();
            (
                document.event_type,
                header,
                document.traceparent.to_string(),
            )
        })
        .collect())
}

/// The W3C trace id of a `traceparent` (its second field).
fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

#[tokio::test]
async fn the_trace_of_the_request_that_placed_an_order_runs_through_its_saga_to_the_webhook()
-> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let mut shop = Shop::start(&receiver, &[]).await?;
    let user = shop
        .post(
            "/v1/users",
            json!({"name": "Ada Lovelace", "email": "ada-traced@example.com"}),
        )
        .await?;
    // The order is placed while the orchestrator is down: the saga starts after a restart,
    // from what the log and its outbox kept.
    shop.stop_orchestrator().await?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = shop
        .client
        .post(shop.gateway.url("/v1/orders"))
        .bearer_auth(KEY)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"user_id": user["id"], "currency": "EUR",
                      "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 900}]}))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let order: OrderId = response.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    shop.start_orchestrator().await?;
    let saga = shop
        .saga_in(order, "completed", Duration::from_secs(60))
        .await?;
    let correlation = saga["correlation_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let events = traced_events(&shop.env, &correlation).await?;
    let types: std::collections::BTreeSet<&str> =
        events.iter().map(|(t, _, _)| t.as_str()).collect();
    for expected in [
        "OrderPlaced",
        "PaymentAuthorized",
        "OrderConfirmed",
        "NotificationSent",
    ] {
        assert!(
            types.contains(expected),
            "{expected} missing from {events:?}"
        );
    }
    for (event_type, header, field) in &events {
        assert_eq!(
            trace_id(header),
            trace,
            "{event_type}'s traceparent header: {header}"
        );
        assert_eq!(header, field, "{event_type}: header and document disagree");
    }
    // Each hop is a span of its own: the events do not all name one parent.
    let parents: std::collections::BTreeSet<&str> =
        events.iter().map(|(_, h, _)| h.as_str()).collect();
    assert!(parents.len() > 1, "{events:?}");

    let hooks = receiver.of(order, NotificationKind::OrderConfirmed);
    assert!(!hooks.is_empty(), "no webhook for {order}");
    assert!(
        hooks.iter().all(|h| trace_id(&h.traceparent) == trace),
        "{hooks:?}"
    );
    // The outbox keeps each step's trace, for a step carried out after a restart.
    let stored: Vec<Option<String>> =
        sqlx::query_scalar("SELECT traceparent FROM saga.outbox WHERE order_id = $1")
            .bind(order.as_uuid())
            .fetch_all(&shop.env.pool().await)
            .await?;
    assert!(stored.len() >= 3, "{stored:?}");
    assert!(
        stored
            .iter()
            .all(|t| t.as_deref().map(trace_id) == Some(trace)),
        "{stored:?}"
    );
    shop.stop().await
}

/// What the Standard Webhooks package from PyPI (in `./dev test`'s virtual environment)
/// says of `hook` under `secret`: `None` when it verifies, else its complaint.
fn python_verdict(hook: &Received, secret: &str) -> anyhow::Result<Option<String>> {
    let python = std::env::var("SHOP_TEST_PYTHON").map_err(|_| {
        anyhow::anyhow!("SHOP_TEST_PYTHON is not set: run the tests through ./dev test")
    })?;
    let script = r#"
import sys
from standardwebhooks.webhooks import Webhook
secret, wid, ts, sig = sys.argv[1:5]
headers = {"webhook-id": wid, "webhook-timestamp": ts, "webhook-signature": sig}
try:
    Webhook(secret).verify(sys.stdin.buffer.read(), headers)
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(1)
"#;
    let mut child = std::process::Command::new(&python)
        .args([
            "-c",
            script,
            secret,
            &hook.id,
            &hook.timestamp.to_string(),
            &hook.signature,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &hook.body)?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success() || !output.stdout.is_empty(),
        "{python}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((!output.status.success())
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned()))
}

#[tokio::test]
async fn while_a_secret_is_rotated_each_notice_is_signed_with_both_as_the_standard_says()
-> anyhow::Result<()> {
    const NEXT: &str = "whsec_bmV4dC13ZWJob29rLXNpZ25pbmctc2VjcmV0LTI=";
    const RETIRED: &str = "whsec_cmV0aXJlZC13ZWJob29rLXNpZ25pbmctc2VjcmV0";
    let receiver = Receiver::start().await?;
    let both = format!("{SECRET} {NEXT}");
    let shop = Shop::start(&receiver, &[("NOTIFICATION_WEBHOOK_SECRET", both.as_str())]).await?;
    let order = shop.order(900).await?;
    shop.saga_in(order, "completed", Duration::from_secs(60))
        .await?;
    let hooks = receiver.of(order, NotificationKind::OrderConfirmed);
    assert!(!hooks.is_empty(), "no webhook for {order}");
    for hook in &hooks {
        assert_eq!(hook.signature.split(' ').count(), 2, "{}", hook.signature);
        assert!(hook.signature.split(' ').all(|s| s.starts_with("v1,")));
        assert!(
            hook.verifies_with(SECRET) && hook.verifies_with(NEXT),
            "{hook:?}"
        );
        assert!(!hook.verifies_with(RETIRED), "{hook:?}");
        assert_eq!(python_verdict(hook, SECRET)?, None);
        assert_eq!(python_verdict(hook, NEXT)?, None);
        let refused = python_verdict(hook, RETIRED)?.unwrap_or_default();
        assert!(refused.starts_with("WebhookVerificationError"), "{refused}");
    }
    shop.stop().await
}

#[tokio::test]
async fn a_declined_payment_rejects_the_order_and_tells_the_customer() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let shop = Shop::start(&receiver, &[("PAYMENT_DECLINE_ABOVE_CENTS", "10000")]).await?;
    let order = shop.order(20_000).await?;

    let saga = shop
        .saga_in(order, "compensated", Duration::from_secs(60))
        .await?;
    assert!(
        saga["compensating_because"]
            .as_str()
            .unwrap_or_default()
            .starts_with("payment declined"),
        "{saga}"
    );
    assert_eq!(
        compensations(&saga),
        ["reject_order", "notify_payment_declined"]
    );
    let (row, payment) = shop.order_and_payment(order, "rejected").await?;
    assert_eq!(row["status"], "rejected");
    assert_eq!(payment["status"], "declined", "{payment}");
    let hooks = receiver.of(order, NotificationKind::PaymentDeclined);
    assert!(!hooks.is_empty() && hooks.iter().all(Received::signed_correctly));
    shop.stop().await
}

#[tokio::test]
async fn a_customer_cancelling_a_confirmed_order_gets_a_refund_and_a_notice() -> anyhow::Result<()>
{
    let receiver = Receiver::start().await?;
    let shop = Shop::start(&receiver, &[]).await?;
    let order = shop.order(2500).await?;
    shop.saga_in(order, "completed", Duration::from_secs(60))
        .await?;

    shop.post(
        &format!("/v1/orders/{order}/cancel"),
        json!({"reason": "changed my mind"}),
    )
    .await?;
    let saga = shop
        .saga_in(order, "compensated", Duration::from_secs(60))
        .await?;
    assert_eq!(
        compensations(&saga),
        ["refund_payment", "notify_order_cancelled"],
        "reverse order"
    );
    let (row, _) = shop.order_and_payment(order, "cancelled").await?;
    assert_eq!(row["status"], "cancelled");
    let payment = payment_becomes(&shop, order, "refunded").await?;
    assert_eq!(payment["status"], "refunded", "{payment}");
    assert!(
        !receiver
            .of(order, NotificationKind::OrderCancelled)
            .is_empty()
    );
    shop.stop().await
}

#[tokio::test]
async fn a_refund_refused_for_good_fails_the_saga_until_an_operator_retries_it()
-> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let refused = [("PAYMENT_REFUSE_REFUNDS_OF_CENTS", "1313")];
    let mut shop = Shop::start(&receiver, &refused).await?;
    let order = shop.order(1313).await?;
    shop.saga_in(order, "completed", Duration::from_secs(60))
        .await?;
    shop.post(
        &format!("/v1/orders/{order}/cancel"),
        json!({"reason": "changed my mind"}),
    )
    .await?;

    let saga = shop
        .saga_in(order, "failed", Duration::from_secs(60))
        .await?;
    assert_eq!(saga["failures"][0]["step"], "refund_payment", "{saga}");
    let error = saga["failures"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("refused"), "{saga}");
    let payment = payment_becomes(&shop, order, "authorized").await?;
    assert_eq!(
        payment["status"], "authorized",
        "the money is not back: {payment}"
    );
    let (status, failed) = shop.get("/v1/sagas?state=failed").await?;
    assert_eq!(status, 200);
    assert!(
        failed["items"]
            .as_array()
            .is_some_and(|all| all.iter().any(|s| s["order_id"] == order.to_string())),
        "{failed}"
    );

    // A client key may read the saga but not retry it.
    let (status, problem) = shop.retry_as(order, KEY).await?;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["type"], "urn:shop:problem:operator-key-required");

    // A retry while the provider still refuses: compensating, then failed again.
    let (status, retried) = shop.retry(order).await?;
    assert_eq!(
        (status, retried["state"].as_str()),
        (200, Some("compensating")),
        "{retried}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let again = loop {
        let saga = shop
            .saga_in(order, "failed", Duration::from_secs(60))
            .await?;
        if saga["failures"].as_array().is_some_and(|f| f.len() == 2) {
            break saga;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not refused twice: {saga}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(again["failures"][1]["step"], "refund_payment", "{again}");

    // The operator deals with the cause (the provider takes the refund), then retries.
    shop.restart_orchestrator_with(&[("PAYMENT_REFUSE_REFUNDS_OF_CENTS", "0")])
        .await?;
    let (status, retried) = shop.retry(order).await?;
    assert_eq!(status, 200, "{retried}");
    assert!(
        step_names(&retried).contains(&"operator:operator_retry".to_owned()),
        "{retried}"
    );
    let saga = shop
        .saga_in(order, "compensated", Duration::from_secs(60))
        .await?;
    assert_eq!(
        compensations(&saga),
        ["refund_payment", "notify_order_cancelled"]
    );
    let payment = payment_becomes(&shop, order, "refunded").await?;
    assert_eq!(payment["status"], "refunded", "{payment}");
    assert!(
        !receiver
            .of(order, NotificationKind::OrderCancelled)
            .is_empty()
    );

    // Only a failed saga can be retried; an unknown order has none.
    let (status, problem) = shop.retry(order).await?;
    assert_eq!(
        (status, problem["state"].as_str()),
        (409, Some("compensated")),
        "{problem}"
    );
    assert_eq!(problem["type"], "urn:shop:problem:saga-not-failed");
    let (status, _) = shop.retry(OrderId::new()).await?;
    assert_eq!(status, 404);
    shop.stop().await
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_completes_the_saga_with_the_failure_recorded()
-> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.status.store(500, Ordering::SeqCst);
    let shop = Shop::start(&receiver, &[]).await?;
    let order = shop.order(2500).await?;

    let saga = shop
        .saga_in(order, "completed", Duration::from_secs(60))
        .await?;
    let failures = saga["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{saga}");
    assert_eq!(failures[0]["step"], "notify_order_confirmed");
    let hooks = receiver.of(order, NotificationKind::OrderConfirmed);
    assert_eq!(hooks.len(), 3, "NOTIFICATION_ATTEMPTS deliveries");
    assert!(
        hooks.iter().all(|h| h.id == hooks[0].id),
        "one idempotency id across retries"
    );
    let (row, _) = shop.order_and_payment(order, "confirmed").await?;
    assert_eq!(row["status"], "confirmed", "no business rollback");
    shop.stop().await
}

fn compensations(saga: &Value) -> Vec<String> {
    saga["compensations"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|c| c["step"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the payment of `order` reads `status` on the query side.
async fn payment_becomes(shop: &Shop, order: OrderId, status: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, payments) = shop.get(&format!("/v1/payments?order_id={order}")).await?;
        let payment = payments["items"][0].clone();
        if payment["status"] == status || tokio::time::Instant::now() > deadline {
            return Ok(payment);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_user_deactivated_before_confirmation_gets_the_payment_refunded_and_the_order_cancelled()
-> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    // The provider takes 1.5 s: the deactivation lands while the payment is out.
    let shop = Shop::start(&receiver, &[("PAYMENT_LATENCY_MS", "1500")]).await?;
    let (user, order) = shop.user_and_order(2500).await?;
    shop.post(
        &format!("/v1/users/{user}/deactivate"),
        json!({"reason": "fraud check"}),
    )
    .await?;

    let saga = shop
        .saga_in(order, "compensated", Duration::from_secs(60))
        .await?;
    assert!(
        saga["compensating_because"]
            .as_str()
            .unwrap_or_default()
            .contains("deactivated"),
        "{saga}"
    );
    assert_eq!(
        compensations(&saga),
        ["refund_payment", "cancel_order"],
        "reverse order"
    );
    let (row, _) = shop.order_and_payment(order, "cancelled").await?;
    assert_eq!(row["status"], "cancelled");
    assert_eq!(
        payment_becomes(&shop, order, "refunded").await?["status"],
        "refunded"
    );
    shop.stop().await
}

#[tokio::test]
async fn a_customer_cancelling_while_the_payment_is_out_gets_it_refunded_when_it_lands()
-> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let shop = Shop::start(&receiver, &[("PAYMENT_LATENCY_MS", "1500")]).await?;
    let order = shop.order(2500).await?;
    shop.post(
        &format!("/v1/orders/{order}/cancel"),
        json!({"reason": "too slow"}),
    )
    .await?;

    // Either the provider was asked before the cancellation landed (then the payment is
    // refunded when it lands) or not at all (then nothing was taken): never a kept payment.
    let saga = shop
        .saga_in(order, "compensated", Duration::from_secs(20))
        .await?;
    let (_, payments) = shop.get(&format!("/v1/payments?order_id={order}")).await?;
    if payments["items"] == json!([]) {
        assert_eq!(compensations(&saga), Vec::<String>::new(), "{saga}");
        assert_eq!(saga["payment"], "requested", "never asked: {saga}");
    } else {
        assert_eq!(compensations(&saga), ["refund_payment"]);
        assert_eq!(
            payment_becomes(&shop, order, "refunded").await?["status"],
            "refunded"
        );
    }
    let (row, _) = shop.order_and_payment(order, "cancelled").await?;
    assert_eq!(row["status"], "cancelled", "never confirmed");
    shop.stop().await
}

#[tokio::test]
async fn the_payment_deadline_fires_after_a_restart_and_rejects_the_order() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    // The provider never answers.
    let mut shop = Shop::start(
        &receiver,
        &[
            ("SAGA_PAYMENT_TIMEOUT_MS", "1500"),
            ("PAYMENT_FAILURE_RATE", "1"),
        ],
    )
    .await?;
    let order = shop.order(2500).await?;
    shop.saga_in(order, "running", Duration::from_secs(30))
        .await?;
    // The orchestrator goes away with the payment out; the deadline passes meanwhile and
    // lives only in Postgres.
    shop.stop_orchestrator().await?;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    shop.start_orchestrator().await?;

    let saga = shop
        .saga_in(order, "compensated", Duration::from_secs(60))
        .await?;
    assert_eq!(saga["failures"][0]["step"], "authorize_payment", "{saga}");
    assert!(
        saga["failures"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no answer"),
        "{saga}"
    );
    assert_eq!(
        compensations(&saga),
        ["reject_order", "notify_payment_declined"]
    );
    let (row, _) = shop.order_and_payment(order, "rejected").await?;
    assert_eq!(row["status"], "rejected");
    let (_, payments) = shop.get(&format!("/v1/payments?order_id={order}")).await?;
    assert_eq!(payments["items"], json!([]), "no payment was taken");
    assert!(
        !receiver
            .of(order, NotificationKind::PaymentDeclined)
            .is_empty()
    );
    shop.stop().await
}

#[tokio::test]
async fn the_webhook_breaker_opens_on_a_dead_receiver_and_closes_when_it_returns()
-> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    receiver.status.store(503, Ordering::SeqCst);
    let shop = Shop::start(
        &receiver,
        &[
            ("CIRCUIT_FAILURE_THRESHOLD", "2"),
            ("CIRCUIT_OPEN_MS", "1000"),
            ("NOTIFICATION_ATTEMPTS", "30"),
        ],
    )
    .await?;
    let gauge = r#"shop_saga_circuit_state{provider="notification-webhook"}"#;
    let first = shop.order(2500).await?;
    let second = shop.order(2500).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while shop.metric(gauge).await? != Some(format!("{gauge} 1")) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the breaker did not open: {:?}; {} calls",
            shop.metric("shop_saga_circuit").await?,
            receiver.received.lock().expect("receiver lock").len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls_when_open = receiver.received.lock().expect("receiver lock").len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        receiver.received.lock().expect("receiver lock").len(),
        calls_when_open,
        "an open circuit makes no calls"
    );

    receiver.status.store(200, Ordering::SeqCst);
    for order in [first, second] {
        let saga = shop
            .saga_in(order, "completed", Duration::from_secs(60))
            .await?;
        assert_eq!(saga["failures"], json!([]), "delivered in the end: {saga}");
    }
    assert_eq!(
        shop.metric(gauge).await?,
        Some(format!("{gauge} 0")),
        "closed again"
    );
    shop.stop().await
}

/// What the query side and the saga say about one order, checked for consistency: no
/// confirmed order without an authorized payment, no payment kept by an order that ended
/// rejected or cancelled, and the saga's end state agrees.
async fn assert_consistent(shop: &Shop, order: OrderId) -> anyhow::Result<(String, String)> {
    let saga_now: Value = shop
        .client
        .get(format!("{}/v1/sagas/{order}", shop.sagas))
        .send()
        .await?
        .json()
        .await?;
    let state = saga_now["state"].as_str().unwrap_or_default().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, row) = shop.get(&format!("/v1/orders/{order}")).await?;
        let (_, payments) = shop.get(&format!("/v1/payments?order_id={order}")).await?;
        let status = row["status"].as_str().unwrap_or_default().to_owned();
        let payment = payments["items"][0]["status"]
            .as_str()
            .unwrap_or("none")
            .to_owned();
        let consistent = match state.as_str() {
            "completed" => status == "confirmed" && payment == "authorized",
            "compensated" => {
                matches!(status.as_str(), "rejected" | "cancelled")
                    && matches!(payment.as_str(), "none" | "declined" | "refunded")
            }
            _ => false,
        };
        if consistent {
            return Ok((state, format!("{status}/{payment}")));
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{order}: saga {state}, order {status}, payment {payment}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_failure_injected_at_each_step_in_turn_always_ends_consistent() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    // The provider takes 1 s, so deactivations and cancellations land while it works.
    let shop = Shop::start(
        &receiver,
        &[
            ("PAYMENT_LATENCY_MS", "1000"),
            ("PAYMENT_DECLINE_ABOVE_CENTS", "10000"),
        ],
    )
    .await?;
    let (user, deactivated) = shop.user_and_order(2500).await?;
    shop.post(&format!("/v1/users/{user}/deactivate"), json!({}))
        .await?;
    let cancelled_early = shop.order(2500).await?;
    shop.post(
        &format!("/v1/orders/{cancelled_early}/cancel"),
        json!({"reason": "early"}),
    )
    .await?;
    let declined = shop.order(20_000).await?;
    let unnotified = shop.order(2500).await?;
    receiver
        .failing
        .lock()
        .expect("receiver lock")
        .push(unnotified.to_string());
    let cancelled_late = shop.order(2500).await?;
    let happy = shop.order(2500).await?;
    shop.saga_in(cancelled_late, "completed", Duration::from_secs(60))
        .await?;
    shop.post(
        &format!("/v1/orders/{cancelled_late}/cancel"),
        json!({"reason": "late"}),
    )
    .await?;

    let expected = [
        (deactivated, "user deactivated while paying", "compensated"),
        (cancelled_early, "cancelled while paying", "compensated"),
        (declined, "payment declined", "compensated"),
        (unnotified, "notification failing", "completed"),
        (
            cancelled_late,
            "cancelled after confirmation",
            "compensated",
        ),
        (happy, "no failure", "completed"),
    ];
    for (order, injected, end) in expected {
        shop.saga_in(order, end, Duration::from_secs(60)).await?;
        let (state, seen) = assert_consistent(&shop, order).await?;
        eprintln!("{injected}: saga {state}, order/payment {seen}");
    }
    shop.stop().await
}
