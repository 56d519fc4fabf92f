//! The API page at the gateway's `/docs`, in a real browser: Debian's chromium driven by
//! playwright-core (system-tests/browser/docs.mjs) against the real nginx gateway and the
//! three services. It must show every operation of the merged document, try one through
//! the gateway with the key given under "Authorize", fetch nothing from anywhere else and
//! break none of the page's Content-Security-Policy.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use system_tests::{Gateway, create_topics, repo_root, service_env, start_services, wait_for_200};
use test_support::TestEnv;

/// What the browser saw (see docs.mjs for its fields). The services run on this test's
/// runtime, so the browser is awaited, never waited for by blocking.
async fn browse(gateway: &Gateway, key: &str, order: &str) -> anyhow::Result<Value> {
    let chromium = std::env::var("SHOP_TEST_CHROMIUM").map_err(|_| {
        anyhow::anyhow!("SHOP_TEST_CHROMIUM is not set: run the tests through ./dev test")
    })?;
    // docs.mjs bounds each of its steps (20 s); this bounds the whole run.
    let run = tokio::process::Command::new("node")
        .arg(repo_root().join("system-tests/browser/docs.mjs"))
        .args([&gateway.url(""), key, order])
        .env("SHOP_TEST_CHROMIUM", chromium)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .map_err(|_| anyhow::anyhow!("the browser did not finish within 120 s"))??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "docs.mjs failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_str(stdout.trim())?)
}

#[tokio::test]
async fn the_docs_page_shows_every_operation_and_tries_one_through_the_gateway()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let services = start_services(&service_env(&env, &env.brokers, &env.database_url)).await?;
    let gateway = Gateway::start(services[0].addr, services[1].addr, services[2].addr).await?;
    for service in &services {
        let ready = gateway.url(&format!("/{}/ready", service.name));
        wait_for_200(&ready, Duration::from_secs(30)).await?;
    }

    // The page itself, its script and its style: served by the gateway with their types
    // and the policy.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let response = client.get(gateway.url("/docs")).send().await?;
    assert_eq!(response.status(), 301);
    assert_eq!(response.headers()["location"], "/docs/");
    for (path, content_type) in [
        ("/docs/", "text/html"),
        ("/docs/docs.js", "text/javascript"),
        ("/docs/swagger-ui/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/swagger-ui/swagger-ui.css", "text/css"),
    ] {
        let response = client.get(gateway.url(path)).send().await?;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"].to_str()?.starts_with(content_type),
            "{path}: {:?}",
            headers["content-type"]
        );
        let policy = headers["content-security-policy"].to_str()?;
        assert!(policy.contains("default-src 'none'"), "{path}: {policy}");
        assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
    }
    // Only the two files the page uses are served from swagger-ui-dist.
    let other = client
        .get(gateway.url("/docs/swagger-ui/package.json"))
        .send()
        .await?;
    assert_eq!(other.status(), 404);

    let order = uuid::Uuid::new_v4().to_string();
    let seen = browse(&gateway, system_tests::OPERATOR_KEY, &order).await?;
    assert!(seen["failure"].is_null(), "the browser failed: {seen:#}");
    assert_eq!(seen["status"], 200, "{seen:#}");
    assert!(
        seen["url"].as_str().unwrap_or_default().ends_with("/docs/"),
        "{seen:#}"
    );
    assert_eq!(
        seen["title"].as_str().map(|t| t.starts_with("shop")),
        Some(true)
    );

    // Every operation of the merged document, under the document's tags.
    let document = serde_json::to_value(shopctl::openapi::merged()?)?;
    let mut expected = BTreeSet::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            expected.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let shown: BTreeSet<String> = seen["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str().map(str::to_owned))
        .collect();
    assert_eq!(shown, expected);
    let tags: BTreeSet<&str> = seen["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for tag in ["users", "orders", "sagas", "dead letters"] {
        assert!(tags.contains(tag), "tag {tag} missing from {tags:?}");
    }

    // "Try it out" reached the query API through the gateway with the key: its problem
    // names the order (without the key it would have been 401).
    assert_eq!(seen["tried"]["status"], 404, "{seen:#}");
    assert_eq!(seen["triedWithKey"], true, "{seen:#}");
    let body = seen["tried"]["body"].as_str().unwrap_or_default();
    assert!(body.contains(&format!("no order {order}")), "{body}");

    // Nothing fetched from elsewhere, no policy broken, no script error; the key is in no
    // URL, no storage and no cookie.
    let origin = gateway.url("/");
    for url in seen["requests"].as_array().into_iter().flatten() {
        let url = url.as_str().unwrap_or_default();
        assert!(
            url.starts_with(&origin) || url.starts_with("data:"),
            "the page fetched {url}"
        );
        assert!(!url.contains(system_tests::OPERATOR_KEY), "{url}");
    }
    assert_eq!(seen["violations"], serde_json::json!([]), "{seen:#}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen:#}");
    assert_eq!(seen["failedFiles"], serde_json::json!([]), "{seen:#}");
    assert!(
        !seen["storage"]
            .as_str()
            .unwrap_or_default()
            .contains(system_tests::OPERATOR_KEY)
    );
    assert_eq!(seen["cookies"], serde_json::json!([]));
    assert!(
        !seen["finalUrl"]
            .as_str()
            .unwrap_or_default()
            .contains(system_tests::OPERATOR_KEY)
    );

    for service in services {
        service.stop().await?;
    }
    Ok(())
}
