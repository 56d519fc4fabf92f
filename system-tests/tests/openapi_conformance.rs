//! The merged OpenAPI document tells the truth: schemathesis (PyPI, in `./dev test`'s
//! Python environment) generates requests from the gateway's `/openapi.json`, valid and
//! invalid, sends them through the real nginx gateway to the three services with an
//! operator key, and checks every answer against the document: no 5xx, no status code,
//! content type, header or body the document does not describe, and no operation that
//! answers without the key.

use std::time::Duration;

use system_tests::{Gateway, create_topics, service_env_with, start_services, wait_for_200};
use test_support::TestEnv;

/// Requests per operation and phase; the whole run stays within a few minutes.
const EXAMPLES: &str = "40";

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,ignored_auth";

#[tokio::test]
async fn schemathesis_finds_every_answer_through_the_gateway_documented() -> anyhow::Result<()> {
    let python = std::env::var("SHOP_TEST_PYTHON").map_err(|_| {
        anyhow::anyhow!("SHOP_TEST_PYTHON is not set: run the tests through ./dev test")
    })?;
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    // Generated positions are past the end of the log: each waits QUERY_WAIT_MS for its 422.
    let settings = service_env_with(
        &env,
        &env.brokers,
        &env.database_url,
        &[("QUERY_WAIT_MS", "100")],
    );
    let services = start_services(&settings).await?;
    let gateway = Gateway::start(services[0].addr, services[1].addr, services[2].addr).await?;
    for service in &services {
        let ready = gateway.url(&format!("/{}/ready", service.name));
        wait_for_200(&ready, Duration::from_secs(30)).await?;
    }

    let reports = tempfile::tempdir()?;
    let output = tokio::process::Command::new(&python)
        .args(["-m", "schemathesis.cli", "run", "--no-color"])
        .arg(gateway.url("/openapi.json"))
        .args([
            "--header",
            &format!("Authorization: Bearer {}", system_tests::OPERATOR_KEY),
        ])
        .args(["--checks", CHECKS])
        .args(["--max-examples", EXAMPLES, "--workers", "1"])
        .args(["--generation-database", "none", "--request-timeout", "30"])
        .arg("--report-dir")
        .arg(reports.path())
        // Its cache goes to the temporary folder, not into the checkout.
        .current_dir(reports.path())
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not describe:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It did test every operation (a document it could not read would test none).
    let document = serde_json::to_value(shopctl::openapi::merged()?)?;
    let operations: usize = document["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, item)| item.as_object().map_or(0, |m| m.len()))
        .sum();
    assert!(
        stdout.contains(&format!("Tested: {operations}")),
        "expected {operations} operations tested:\n{stdout}"
    );

    for service in services {
        service.stop().await?;
    }
    Ok(())
}
