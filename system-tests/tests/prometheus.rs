//! The Prometheus rules and the Grafana dashboard in `prometheus/` hold up: promtool finds
//! the rules valid and their unit tests pass, and a real Prometheus scraping the three
//! running services loads them, finds every metric they and the dashboard's panels use, and
//! evaluates every panel's query.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use system_tests::{create_topics, repo_root, service_env, start_services, wait_for_200};
use test_support::TestEnv;

fn promtool(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("prometheus"))
        .output()
        .map_err(|e| anyhow::anyhow!("promtool ({e}): ./dev installs Debian's prometheus"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "promtool {args:?}: {text}");
    Ok(text)
}

#[test]
fn the_rules_are_valid_and_their_unit_tests_pass() -> anyhow::Result<()> {
    let checked = promtool(&["check", "rules", "rules.yml"])?;
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "rules.test.yml"])?;
    assert!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

/// The queries of the dashboard's panels.
fn dashboard_queries() -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(repo_root().join("prometheus/grafana-dashboard.json"))?;
    let dashboard: Value = serde_json::from_str(&text)?;
    Ok(dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect())
}

/// Every metric name (`up`, `shop_...`) an expression of the rules or the dashboard uses.
fn metrics_the_rules_use() -> anyhow::Result<BTreeSet<String>> {
    let rules = std::fs::read_to_string(repo_root().join("prometheus/rules.yml"))?;
    let queries = dashboard_queries()?.join("\n");
    let mut names = BTreeSet::new();
    for line in rules
        .lines()
        .chain(queries.lines())
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        let mut rest = line;
        while let Some(at) = rest.find("shop_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
        if line.contains("expr: up{") {
            names.insert("up".to_owned());
        }
    }
    Ok(names)
}

/// A Prometheus server in a temporary folder, killed when dropped.
struct Prometheus {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, std::net::SocketAddr)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let rules = repo_root().join("prometheus/rules.yml");
        let mut config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n",
            rules.display()
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs: [{{ targets: [\"{addr}\"] }}]\n"
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config)?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("prometheus ({e}): ./dev installs Debian's prometheus"))?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        })
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> anyhow::Result<Value> {
        let body: Value = client
            .get(format!("{}{path}", self.url))
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(body["status"] == "success", "{path}: {body}");
        Ok(body["data"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scraping_the_services_finds_every_metric_the_rules_and_dashboard_use()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let services = start_services(&service_env(&env, &env.brokers, &env.database_url)).await?;
    for service in &services {
        wait_for_200(&service.url("/ready"), Duration::from_secs(60)).await?;
    }
    // An order, so that the writers and the saga have counted something.
    system_tests::place_order(&test_support::client("test-key"), &services[0].url("")).await?;
    let targets: Vec<(&str, std::net::SocketAddr)> =
        services.iter().map(|s| (s.name, s.addr)).collect();
    let prometheus = Prometheus::start(&targets)?;
    let client = reqwest::Client::new();
    let wanted = metrics_the_rules_use()?;
    assert!(wanted.len() >= 8, "{wanted:?}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let present: BTreeSet<String> = match prometheus
            .get(&client, "/api/v1/label/__name__/values")
            .await
        {
            Ok(Value::Array(names)) => names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
            _ => BTreeSet::new(),
        };
        let missing: Vec<&String> = wanted.difference(&present).collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(missing.is_empty(), "not scraped: {missing:?}");

    // Each service is a healthy target, and every rule loaded and evaluates.
    let up = prometheus.get(&client, "/api/v1/query?query=up").await?;
    let jobs: BTreeSet<&str> = up["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["value"][1] == "1")
        .filter_map(|r| r["metric"]["job"].as_str())
        .collect();
    assert_eq!(
        jobs,
        BTreeSet::from(["command-api", "projections", "saga-orchestrator"])
    );
    let groups = prometheus.get(&client, "/api/v1/rules").await?;
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(rules.len(), 12, "{groups}");
    assert!(rules.iter().all(|r| r["health"] != "err"), "{groups}");
    let queries = dashboard_queries()?;
    assert!(queries.len() >= 10, "{queries:?}");
    for query in queries {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", prometheus.url),
            [("query", query.as_str())],
        )?;
        let answer: Value = client.get(url).send().await?.json().await?;
        assert_eq!(answer["status"], "success", "{query}: {answer}");
    }
    // Nothing is wrong with a fresh shop: every rule evaluated, no alert even pending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let groups = prometheus.get(&client, "/api/v1/rules").await?;
        let healths: Vec<&Value> = groups["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .map(|r| &r["health"])
            .collect();
        if healths.iter().all(|h| *h == "ok") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{groups}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let alerts = prometheus.get(&client, "/api/v1/alerts").await?;
    assert_eq!(alerts["alerts"], serde_json::json!([]), "{alerts}");
    for service in services {
        service.stop().await?;
    }
    Ok(())
}
