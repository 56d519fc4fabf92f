//! The real nginx gateway, from the repository's config, in front of the three services.

use std::time::Duration;

use system_tests::{Gateway, create_topics, service_env, start_services, wait_for_200};
use test_support::TestEnv;

async fn get(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<(u16, String, serde_json::Value)> {
    let response = client.get(url).send().await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = response.json().await.unwrap_or_default();
    Ok((status, content_type, body))
}

/// The gateway serves `gateway/openapi.json`: it must be what the services document now.
#[test]
fn the_gateway_document_is_the_services_documents_merged() -> anyhow::Result<()> {
    let committed =
        std::fs::read_to_string(system_tests::repo_root().join("gateway/openapi.json"))?;
    assert!(
        committed == shopctl::openapi::merged_text()?,
        "gateway/openapi.json is out of date: run `cargo run -q -p shopctl -- openapi --write gateway/openapi.json`"
    );
    let merged = serde_json::to_value(shopctl::openapi::merged()?)?;
    for document in [
        command_api::http::document(),
        projections::query::document(),
        saga_orchestrator::http::document(),
    ] {
        let document = serde_json::to_value(document)?;
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                assert!(
                    merged["paths"][path][method].is_object(),
                    "{method} {path} missing"
                );
            }
        }
    }
    assert_eq!(merged["openapi"], "3.1.0");
    // Every error answer is documented as the problem+json it is, and a tag is listed once.
    for (path, item) in merged["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"],
                        serde_json::json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    let tags: Vec<&str> = merged["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&str> = tags.iter().copied().collect();
    assert_eq!(tags.len(), unique.len(), "{tags:?}");
    // Valid OpenAPI 3.1, as openapi-spec-validator (PyPI, in ./dev test's environment)
    // checks it: the meta-schema, references, unique operation ids, path parameters.
    let python = std::env::var("SHOP_TEST_PYTHON").map_err(|_| {
        anyhow::anyhow!("SHOP_TEST_PYTHON is not set: run the tests through ./dev test")
    })?;
    let output = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys\nfrom openapi_spec_validator import validate\nfrom openapi_spec_validator.readers import read_from_filename\nvalidate(read_from_filename(sys.argv[1])[0])",
        ])
        .arg(system_tests::repo_root().join("gateway/openapi.json"))
        .output()?;
    assert!(
        output.status.success(),
        "gateway/openapi.json is not valid OpenAPI: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn routes_operations_queries_commands_and_sagas_to_their_service() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let mut services = start_services(&service_env(&env, &env.brokers, &env.database_url)).await?;
    let gateway = Gateway::start(services[0].addr, services[1].addr, services[2].addr).await?;

    let (anonymous, keyed) = (reqwest::Client::new(), test_support::client("test-key"));
    let (status, _, body) = get(&anonymous, &gateway.url("/health")).await?;
    assert_eq!((status, body["service"].as_str()), (200, Some("gateway")));
    for service in &services {
        let ready = gateway.url(&format!("/{}/ready", service.name));
        let body = wait_for_200(&ready, Duration::from_secs(30)).await?;
        assert_eq!(body["service"], service.name);
        let (status, _, body) = get(
            &anonymous,
            &gateway.url(&format!("/{}/health", service.name)),
        )
        .await?;
        assert_eq!(
            (status, body["service"].as_str()),
            (200, Some(service.name))
        );
    }

    // Reads of users and orders go to the query side (its problem+json names the missing
    // order), writes to the command side, sagas to the orchestrator; every /v1 route asks
    // for an API key.
    let client = anonymous.clone();
    let order = uuid::Uuid::new_v4();
    let url = gateway.url(&format!("/v1/orders/{order}"));
    for path in [format!("/v1/orders/{order}"), format!("/v1/sagas/{order}")] {
        let (status, content_type, _) = get(&anonymous, &gateway.url(&path)).await?;
        assert_eq!(
            (status, content_type.as_str()),
            (401, "application/problem+json"),
            "{path}"
        );
    }
    let (status, content_type, body) = get(&keyed, &url).await?;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
    );
    assert_eq!(body["detail"], format!("no order {order}"));
    let response = client
        .post(gateway.url("/v1/orders/42/cancel"))
        .json(&serde_json::json!({}))
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, content_type, body) =
        get(&keyed, &gateway.url(&format!("/v1/sagas/{order}"))).await?;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
    );
    assert_eq!(body["detail"], format!("no saga for order {order}"));

    // One document of every API at /openapi.json, and each of its operations reaches a
    // service that has it (a service's fallback answers "no route ..." otherwise).
    let (status, content_type, served) = get(&anonymous, &gateway.url("/openapi.json")).await?;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert_eq!(served, serde_json::to_value(shopctl::openapi::merged()?)?);
    let operator = test_support::client(system_tests::OPERATOR_KEY);
    let mut operations = 0;
    for (path, item) in served["paths"].as_object().into_iter().flatten() {
        let concrete = path
            .split('/')
            .map(|part| {
                if part.starts_with('{') {
                    "00000000-0000-0000-0000-000000000000"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            let method: reqwest::Method = method.to_uppercase().parse()?;
            let response = operator
                .request(method.clone(), gateway.url(&concrete))
                .json(&serde_json::json!({}))
                .send()
                .await?;
            // A service without the path answers "no route ...", one with the path but
            // not the method 405 (GET and POST /v1/orders go to two services).
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(
                !detail.starts_with("no route") && status != 405,
                "{method} {path} reached the wrong service: {status} {body}"
            );
            assert!(
                content_type.starts_with("application/json")
                    || content_type.starts_with("application/problem+json"),
                "{method} {path}: {status} {content_type}"
            );
            operations += 1;
        }
    }
    assert!(operations >= 18, "{operations} operations");

    // A body past the gateway's own limit: nginx answers, in problem+json like the services.
    let response = keyed
        .post(gateway.url("/v1/orders"))
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await?;
    assert_eq!(
        (
            response.status().as_u16(),
            response.headers()["content-type"].to_str()?
        ),
        (413, "application/problem+json")
    );
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["status"], 413);

    // What the command API's instances ask of each other is not reachable from outside,
    // whatever the key.
    let internal = gateway.url("/command-api/internal/writers/users/commands");
    let response = keyed.post(&internal).body("{}").send().await?;
    assert_eq!(
        (
            response.status().as_u16(),
            response.headers()["content-type"].to_str()?
        ),
        (404, "application/problem+json")
    );

    // A service that is down: a prompt 503 problem with Retry-After, not a hang or HTML.
    let saga = services.pop().expect("three services");
    saga.stop().await?;
    let response = client
        .get(gateway.url("/v1/sagas/42"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["retry-after"], "2");
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["status"], 503);

    for service in services {
        service.stop().await?;
    }
    Ok(())
}
