//! What the query and saga APIs answer is what their OpenAPI documents say: every
//! operation's documented 200 body, fetched for real data (a user, and an order that went
//! through its saga, was cancelled, and whose refund the payment simulator refuses, so the
//! saga fails and an operator retry answers 200 too, and an unreadable record that the
//! read models park, so the dead letters list it and an operator's retry and skip answer
//! 200), is validated against the schema of the document the service serves. Every
//! operation is called with an operator key, which may call them all.

use std::time::Duration;

use event_store::partitioner::partition_for;
use event_store::{KafkaSettings, TopicNames};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use system_tests::{
    OPERATOR_KEY, PARTITIONS, create_topics, service_env_with, start_services, wait_for_200,
};
use test_support::TestEnv;

const REFUSED_CENTS: &str = "4242";

/// The documented 200 body of `method path` as a standalone JSON Schema: its references
/// resolve inside the document's components, carried along.
fn body_schema(document: &Value, path: &str, method: &str) -> Value {
    let mut schema =
        document["paths"][path][method]["responses"]["200"]["content"]["application/json"]
            ["schema"]
            .clone();
    assert!(
        schema.is_object(),
        "{method} {path}: no documented 200 body"
    );
    schema["components"] = document["components"].clone();
    schema
}

/// The fields `schema` (or the component it refers to) requires of an object.
fn required_fields(document: &Value, schema: &Value) -> Vec<String> {
    let schema = match schema["$ref"].as_str() {
        Some(reference) => {
            &document["components"]["schemas"][reference.rsplit('/').next().unwrap_or_default()]
        }
        None => schema,
    };
    schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

/// The errors of `body` against `schema`, as text.
fn violations(schema: &Value, body: &Value) -> Vec<String> {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("not a valid schema: {e}\n{schema}"));
    validator.iter_errors(body).map(|e| e.to_string()).collect()
}

/// Polls `url` until `done` holds for its 200 body.
async fn until(
    client: &reqwest::Client,
    url: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let response = client.get(url).send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        if status == 200 && done(&body) {
            return Ok(body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{url}: not there within 60 s: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_200_body_matches_what_the_service_sends() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let settings = service_env_with(
        &env,
        &env.brokers,
        &env.database_url,
        &[("PAYMENT_REFUSE_REFUNDS_OF_CENTS", REFUSED_CENTS)],
    );
    let services = start_services(&settings).await?;
    for service in &services {
        wait_for_200(&service.url("/ready"), Duration::from_secs(60)).await?;
    }
    let (commands, queries, sagas) = (&services[0], &services[1], &services[2]);
    let client = test_support::client(OPERATOR_KEY);

    let user: Value = client
        .post(commands.url("/v1/users"))
        .json(&json!({"name": "Ada Lovelace", "email": "ada@example.com"}))
        .send()
        .await?
        .json()
        .await?;
    let user_id = user["id"].as_str().unwrap_or_default().to_owned();
    let order: Value = client
        .post(commands.url("/v1/orders"))
        .json(&json!({"user_id": user_id, "currency": "EUR",
                      "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 4242}]}))
        .send()
        .await?
        .json()
        .await?;
    let order_id = order["id"].as_str().unwrap_or_default().to_owned();
    let saga_url = sagas.url(&format!("/v1/sagas/{order_id}"));
    until(&client, &saga_url, |s| s["state"] == "completed").await?;
    let cancelled = client
        .post(commands.url(&format!("/v1/orders/{order_id}/cancel")))
        .json(&json!({"reason": "changed my mind"}))
        .send()
        .await?;
    anyhow::ensure!(
        cancelled.status().is_success(),
        "cancel: {}",
        cancelled.status()
    );
    until(&client, &saga_url, |s| s["state"] == "failed").await?;
    // Every list the query API has shows something before its body is checked.
    let non_empty = |page: &Value| page["items"].as_array().is_some_and(|i| !i.is_empty());
    let notifications = queries.url(&format!("/v1/notifications?user_id={user_id}"));
    until(&client, &notifications, non_empty).await?;
    let payments = queries.url(&format!("/v1/payments?order_id={order_id}"));
    until(&client, &payments, non_empty).await?;
    until(
        &client,
        &queries.url(&format!("/v1/orders/{order_id}")),
        |o| o["status"] == "cancelled",
    )
    .await?;

    // An unreadable record of an order of its own: parked by every model reading orders.
    let unreadable = uuid::Uuid::new_v4().to_string();
    let producer: FutureProducer = KafkaSettings::new(&env.brokers).producer().create()?;
    producer
        .send(
            FutureRecord::to(&TopicNames::new(&env.topic_prefix).events("orders"))
                .partition(partition_for(&unreadable, PARTITIONS))
                .key(&unreadable)
                .payload("{ not an event"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    let dead_letters = queries.url(&format!(
        "/v1/dead-letters?read_model=orders&aggregate={unreadable}"
    ));
    until(&client, &dead_letters, non_empty).await?;

    let mut checked = Vec::new();
    for service in [queries, sagas] {
        let document: Value = reqwest::get(service.url("/openapi.json"))
            .await?
            .json()
            .await?;
        let paths = document["paths"].as_object().cloned().unwrap_or_default();
        for (path, item) in paths {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                let operation = &item[method.as_str()];
                let required: Vec<String> = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "query" && p["required"] == true)
                    .map(|p| match p["name"].as_str() {
                        Some("user_id") => format!("user_id={user_id}"),
                        Some("order_id") => format!("order_id={order_id}"),
                        other => panic!("{path}: no value for the required {other:?}"),
                    })
                    .collect();
                let mut concrete = path
                    .replace("{read_model}", "orders")
                    .replace("{aggregate}", &unreadable)
                    .replace("/v1/users/{id}", &format!("/v1/users/{user_id}"))
                    .replace("{id}", &order_id)
                    .replace("{order_id}", &order_id);
                if !required.is_empty() {
                    concrete = format!("{concrete}?{}", required.join("&"));
                }
                let request = match method.as_str() {
                    "get" => client.get(service.url(&concrete)),
                    "post" => client.post(service.url(&concrete)),
                    other => panic!("{other} {path}: a method this test does not know"),
                };
                let response = request.send().await?;
                let status = response.status().as_u16();
                let body: Value = response.json().await?;
                assert_eq!(status, 200, "{method} {concrete}: {body}");
                let schema = body_schema(&document, &path, method);
                let errors = violations(&schema, &body);
                assert!(
                    errors.is_empty(),
                    "{method} {concrete} does not match its documented body: {errors:#?}\n{body}"
                );
                // The schema says something: each field it requires is in the answer, and a
                // wrong value there is caught.
                let required = required_fields(&document, &schema);
                assert!(!required.is_empty(), "{method} {path}: no required fields");
                for field in required {
                    assert!(
                        body.get(&field).is_some(),
                        "{method} {concrete}: no {field}"
                    );
                    let mut broken = body.clone();
                    broken[&field] = json!({"unexpected": true});
                    assert!(
                        !violations(&schema, &broken).is_empty(),
                        "{method} {path}: a wrong {field} passes its schema"
                    );
                }
                checked.push(format!("{method} {path}"));
            }
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "get /v1/dead-letters",
            "get /v1/notifications",
            "get /v1/orders",
            "get /v1/orders/{id}",
            "get /v1/orders/{id}/history",
            "get /v1/payments",
            "get /v1/sagas",
            "get /v1/sagas/{order_id}",
            "get /v1/users/{id}",
            "get /v1/users/{id}/orders",
            "post /v1/dead-letters/{read_model}/{aggregate}/retry",
            "post /v1/dead-letters/{read_model}/{aggregate}/skip",
            "post /v1/sagas/{order_id}/retry",
        ],
        "every operation of the two documents"
    );
    for service in services {
        service.stop().await?;
    }
    Ok(())
}
