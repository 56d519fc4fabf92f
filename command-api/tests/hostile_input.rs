//! Random and hostile bodies at every endpoint: wrong types, huge strings, unicode, SQL and
//! JSON injection strings, missing fields. Every answer must be a documented 2xx or 4xx,
//! never a 5xx, and a refused request must append nothing.

use std::time::Duration;

use event_store::scan::{LogScan, Range};
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use reqwest::Client;
use serde_json::{Value, json};
use service_runtime::Env;
use test_support::TestEnv;
use test_support::hostile::NASTY_STRINGS as NASTY;

fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(NASTY).prop_map(str::to_owned),
        ".{0,40}",
        Just("x".repeat(5_000)),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies shaped like the real ones, with any field swapped for something hostile.
fn near_miss(template: Value) -> impl Strategy<Value = Value> {
    let keys: Vec<String> = template
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    (proptest::sample::select(keys), any_json(), any::<bool>()).prop_map(
        move |(key, value, remove)| {
            let mut body = template.clone();
            if let Some(object) = body.as_object_mut() {
                if remove {
                    object.remove(&key);
                } else {
                    object.insert(key, value);
                }
            }
            body
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_documented_4xx_never_5xx_and_append_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let topics = TopicNames::new(&env.topic_prefix);
    let settings = KafkaSettings::new(&env.brokers);
    TopicAdmin::new(&settings)?
        .create(&topics.all(2), 1)
        .await?;
    let config = command_api::Config::from_env(&Env::from_pairs([
        ("KAFKA_BROKERS", env.brokers.as_str()),
        ("DATABASE_URL", env.database_url.as_str()),
        ("TOPIC_PREFIX", env.topic_prefix.as_str()),
        ("EVENT_PARTITIONS", "2"),
        ("COMMAND_API_ADDR", "127.0.0.1:0"),
        ("API_KEYS", "k"),
        ("RATE_LIMIT_PER_SECOND", "100000"),
        ("RATE_LIMIT_BURST", "100000"),
    ]))?;
    let service = command_api::build(config).await?;
    let base = format!("http://{}", service.local_addr());
    let _server = tokio::spawn(service.run_until(std::future::pending()));
    let client = Client::new();
    for _ in 0..300 {
        if client
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let user = uuid::Uuid::new_v4().to_string();
    let endpoints: Vec<(String, Value)> = vec![
        (
            "/v1/users".into(),
            json!({"name": "Ada", "email": "ada@example.com"}),
        ),
        (
            format!("/v1/users/{user}/email"),
            json!({"email": "ada@example.org"}),
        ),
        (
            format!("/v1/users/{user}/deactivate"),
            json!({"reason": "asked"}),
        ),
        (
            "/v1/orders".into(),
            json!({"user_id": user, "currency": "EUR", "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}),
        ),
        (format!("/v1/orders/{user}/cancel"), json!({"reason": "no"})),
    ];
    let documented = [400, 404, 409, 413, 415, 422];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 60,
        ..ProptestConfig::default()
    });
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    for (path, template) in &endpoints {
        let strategy = prop_oneof![any_json(), near_miss(template.clone())];
        for _ in 0..60 {
            let body = strategy
                .new_tree(&mut runner)
                .map_err(|e| anyhow::anyhow!(e))?
                .current();
            let response = client
                .post(format!("{base}{path}"))
                .bearer_auth("k")
                .json(&body)
                .send()
                .await?;
            let status = response.status().as_u16();
            *seen.entry(status).or_default() += 1;
            let text = response.text().await?;
            assert!(status < 500, "{path} answered {status} to {body}: {text}");
            if status >= 400 {
                assert!(
                    documented.contains(&status),
                    "{path}: undocumented {status} for {body}"
                );
            }
        }
        // Raw bytes that are not JSON at all, or not UTF-8.
        for raw in [&b"\xff\xfe\x00"[..], b"{", b"[1,2", b"nul", b"{\"a\":1}}"] {
            let response = client
                .post(format!("{base}{path}"))
                .bearer_auth("k")
                .header("content-type", "application/json")
                .body(raw.to_vec())
                .send()
                .await?;
            assert_eq!(response.status(), 400, "{path} with {raw:?}");
        }
    }
    eprintln!("statuses seen: {seen:?}");

    // Only accepted commands may have appended: registrations that were valid, nothing else.
    let accepted = seen.get(&201).copied().unwrap_or(0) + seen.get(&200).copied().unwrap_or(0);
    let mut appended = 0;
    for service in ["users", "orders"] {
        let topic = topics.events(service);
        let ranges = event_store::scan::ends(&settings, &topic, 2)
            .await?
            .into_iter()
            .map(|(p, end)| {
                (
                    p,
                    Range {
                        from: 0,
                        to: Some(end),
                    },
                )
            })
            .collect();
        let mut scan = LogScan::open(&settings, &topic, &ranges)?;
        while !scan.is_done() {
            appended += scan
                .next_batch(1000, Duration::from_millis(100))
                .await?
                .len();
        }
    }
    assert!(
        appended <= accepted,
        "{appended} events for {accepted} accepted requests"
    );
    Ok(())
}
