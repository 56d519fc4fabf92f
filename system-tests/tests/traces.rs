//! Spans over OTLP: the three services, in this process, export their spans to an OTLP/HTTP
//! receiver run by the test (protobuf `ExportTraceServiceRequest`s, decoded with
//! opentelemetry-proto). One order placed with a caller's `traceparent` must produce one
//! tree of spans in the caller's trace, from the HTTP request through decide and append,
//! each read model's projection, the saga's steps and provider calls, to the webhook, whose
//! `traceparent` names the provider call's span.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use serde_json::json;
use system_tests::{create_topics, service_env_with, start_services, wait_for_200};
use test_support::TestEnv;

/// One received span.
#[derive(Clone, Debug)]
struct Received {
    name: String,
    span_id: String,
    parent: String,
    /// The `event` attribute (the event type a `project` span projected).
    event: String,
}

/// Serves `route`, keeping what each request carried; its base URL.
async fn serve(route: &'static str, app: Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("{base}{route}"))
}

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

// Several threads: the collector answers while the test waits for a flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_makes_one_tree_of_spans_from_the_request_to_the_webhook() -> anyhow::Result<()> {
    // The collector: spans by trace id.
    let spans: Arc<Mutex<BTreeMap<String, Vec<Received>>>> = Arc::default();
    let seen = Arc::clone(&spans);
    let collector = serve(
        "",
        Router::new().route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let mut seen = seen.lock().expect("collector lock");
                    for span in request
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .flat_map(|s| &s.spans)
                    {
                        seen.entry(hex(&span.trace_id)).or_default().push(Received {
                            name: span.name.clone(),
                            span_id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                            event: span
                                .attributes
                                .iter()
                                .find(|a| a.key == "event")
                                .and_then(|a| a.value.as_ref())
                                .and_then(|v| match &v.value {
                                    Some(Value::StringValue(s)) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default(),
                        });
                    }
                    StatusCode::OK
                }
            }),
        ),
    )
    .await?;
    // The webhook receiver: the traceparent of each notice.
    let hooks: Arc<Mutex<Vec<String>>> = Arc::default();
    let heard = Arc::clone(&hooks);
    let webhook = serve(
        "/hook",
        Router::new().route(
            "/hook",
            post(move |headers: HeaderMap| {
                let heard = Arc::clone(&heard);
                async move {
                    let traceparent = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    heard.lock().expect("receiver lock").push(traceparent);
                    StatusCode::OK
                }
            }),
        ),
    )
    .await?;

    let export = service_runtime::traces::Export::start("shop-tests", &collector)
        .map_err(anyhow::Error::msg)?;
    service_runtime::telemetry::init("info", Some(&export));

    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let settings = service_env_with(
        &env,
        &env.brokers,
        &env.database_url,
        &[
            ("NOTIFICATION_WEBHOOK_URL", webhook.as_str()),
            (
                "NOTIFICATION_WEBHOOK_SECRET",
                "whsec_dHJhY2VzLXRlc3Qtc2lnbmluZy1zZWNyZXQ=",
            ),
            ("PAYMENT_LATENCY_MS", "5"),
        ],
    );
    let services = start_services(&settings).await?;
    for service in &services {
        wait_for_200(&service.url("/ready"), Duration::from_secs(60)).await?;
    }
    let client = test_support::client("test-key");
    let commands = services[0].url("");
    let user: serde_json::Value = client
        .post(format!("{commands}/v1/users"))
        .json(&json!({"name": "Ada Lovelace", "email": "ada-spans@example.com"}))
        .send()
        .await?
        .json()
        .await?;
    let response = client
        .post(format!("{commands}/v1/orders"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"user_id": user["id"], "currency": "EUR",
                      "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 700}]}))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    // The answer names the request's own span, in the caller's trace.
    let answered = response.headers()["traceparent"].to_str()?.to_owned();
    assert!(
        answered.starts_with(&format!("00-{CALLER_TRACE}-")),
        "{answered}"
    );
    let order: serde_json::Value = response.json().await?;
    let sagas = services[2].url("");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let saga: serde_json::Value = client
            .get(format!(
                "{sagas}/v1/sagas/{}",
                order["id"].as_str().unwrap_or_default()
            ))
            .send()
            .await?
            .json()
            .await?;
        if saga["state"] == "completed" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "saga not completed: {saga}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every hop's span arrives, in the caller's trace (the projections of the last events
    // may still be on their way: wait for them, flushing what is queued).
    let wanted = [
        "http",
        "decide",
        "append",
        "project",
        "saga step",
        "carry out",
        "provider call",
    ];
    let export = Arc::new(export);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let trace = loop {
        let flushing = Arc::clone(&export);
        tokio::task::spawn_blocking(move || flushing.flush()).await?;
        // A batch sent again after a lost answer arrives twice: one span per id.
        let trace: Vec<Received> = spans
            .lock()
            .expect("collector lock")
            .get(CALLER_TRACE)
            .into_iter()
            .flatten()
            .map(|s| (s.span_id.clone(), s.clone()))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        // OrderPlaced, PaymentAuthorized, OrderConfirmed and NotificationSent each
        // projected by at least one read model.
        let projected: std::collections::BTreeSet<&str> = trace
            .iter()
            .filter(|s| s.name == "project")
            .map(|s| s.event.as_str())
            .collect();
        let all_projected = [
            "OrderPlaced",
            "PaymentAuthorized",
            "OrderConfirmed",
            "NotificationSent",
        ]
        .iter()
        .all(|e| projected.contains(e));
        if wanted.iter().all(|w| names.contains(w)) && all_projected {
            break trace;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "spans of the trace so far: {names:?}; all: {:?}",
            spans.lock().expect("collector lock")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // One tree: the request's span is the caller's child, and every other span's parent
    // is a span of the trace.
    let ids: BTreeMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let http: Vec<&Received> = trace.iter().filter(|s| s.name == "http").collect();
    assert_eq!(http.len(), 1, "{trace:?}");
    assert_eq!(http[0].parent, CALLER_SPAN);
    assert_eq!(
        answered,
        format!("00-{CALLER_TRACE}-{}-01", http[0].span_id)
    );
    for span in &trace {
        if span.name != "http" {
            assert!(
                ids.contains_key(span.parent.as_str()),
                "{} has parent {} outside the trace: {trace:?}",
                span.name,
                span.parent
            );
        }
    }
    // The expected links along the way.
    let parent_of = |span: &Received| ids[span.parent.as_str()].name.clone();
    for span in &trace {
        let expected: &[&str] = match span.name.as_str() {
            "decide" => &["http", "carry out"],
            "append" => &["decide"],
            "project" | "saga step" => &["append"],
            "carry out" => &["saga step", "carry out"],
            "provider call" => &["carry out"],
            _ => continue,
        };
        assert!(
            expected.contains(&parent_of(span).as_str()),
            "{} under {}",
            span.name,
            parent_of(span)
        );
    }
    // The webhook names the provider call that sent it.
    let hooks = hooks.lock().expect("receiver lock").clone();
    assert!(!hooks.is_empty(), "no webhook received");
    for traceparent in &hooks {
        let parent = traceparent.split('-').nth(2).unwrap_or_default();
        assert_eq!(
            ids.get(parent).map(|s| s.name.as_str()),
            Some("provider call"),
            "{traceparent}"
        );
        assert!(traceparent.contains(CALLER_TRACE), "{traceparent}");
    }

    // Nothing was dropped on the way.
    let dropped = test_support::metric_sum(
        &client,
        &services[0].url(""),
        "shop_trace_spans_dropped_total",
    )
    .await?;
    assert_eq!(dropped, 0.0);
    for service in services {
        service.stop().await?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
