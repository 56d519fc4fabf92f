//! Helpers for tests of the assembled system: run the three services in-process on the
//! test broker and Postgres, put the real nginx gateway in front of them, and hold a
//! dependency back to see how services behave until it appears.
//!
//! The tests themselves live in `tests/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use service_runtime::{BoundService, Env, ServiceError};
use test_support::TestEnv;
pub use test_support::wait_for_200;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Partitions per topic in these tests: small, so topic creation stays quick.
pub const PARTITIONS: i32 = 2;
/// The operator key every service started by [`service_env`] accepts (the client key is
/// `test-key`).
pub const OPERATOR_KEY: &str = "operator-key";

/// The repository root (for templates and files the tests read).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the repository")
        .to_path_buf()
}

/// Creates every topic under the test's prefix.
pub async fn create_topics(env: &TestEnv) -> anyhow::Result<()> {
    let admin = TopicAdmin::new(&KafkaSettings::new(&env.brokers))?;
    admin
        .create(&TopicNames::new(&env.topic_prefix).all(PARTITIONS), 1)
        .await?;
    Ok(())
}

/// The environment a service would get, pointing at `brokers` and `database_url`,
/// every service on an ephemeral port.
pub fn service_env(env: &TestEnv, brokers: &str, database_url: &str) -> Env {
    service_env_with(env, brokers, database_url, &[])
}

/// [`service_env`] plus (or overriding) `extra` settings.
pub fn service_env_with(
    env: &TestEnv,
    brokers: &str,
    database_url: &str,
    extra: &[(&str, &str)],
) -> Env {
    let partitions = PARTITIONS.to_string();
    let base = [
        ("KAFKA_BROKERS", brokers),
        ("KAFKA_TIMEOUT_MS", "2000"),
        ("DATABASE_URL", database_url),
        ("TOPIC_PREFIX", env.topic_prefix.as_str()),
        ("EVENT_PARTITIONS", partitions.as_str()),
        ("COMMAND_API_ADDR", "127.0.0.1:0"),
        ("API_KEYS", "test-key"),
        ("OPERATOR_API_KEYS", OPERATOR_KEY),
        ("PROJECTIONS_ADDR", "127.0.0.1:0"),
        ("SAGA_ORCHESTRATOR_ADDR", "127.0.0.1:0"),
        ("CONSOLE_ADDR", "127.0.0.1:0"),
    ];
    Env::from_pairs(base.into_iter().chain(extra.iter().copied()))
}

/// One service running in this process until [`RunningService::stop`].
#[derive(Debug)]
pub struct RunningService {
    pub name: &'static str,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl RunningService {
    pub fn start(name: &'static str, bound: BoundService) -> Self {
        let addr = bound.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            name,
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits for the service to stop by itself (a fatal dependency problem).
    pub async fn stop_on_its_own(self) -> Result<(), ServiceError> {
        self.task.await.expect("the service task does not panic")
    }

    /// Graceful stop; the service's own result.
    pub async fn stop(mut self) -> Result<(), ServiceError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("the service task does not panic")
    }
}

/// A new user and an order of theirs, through the command API at `base` (a URL without
/// path) with `client`'s key: the order's id.
pub async fn place_order(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let post = |path: &str, body: serde_json::Value| {
        let url = format!("{base}{path}");
        async move {
            let response = client.post(&url).json(&body).send().await?;
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            anyhow::ensure!(status.is_success(), "POST {url}: {status} {body}");
            Ok::<_, anyhow::Error>(body)
        }
    };
    let n = uuid::Uuid::new_v4().simple().to_string();
    let user = post(
        "/v1/users",
        serde_json::json!({"name": "Grace Hopper", "email": format!("grace-{n}@example.com")}),
    )
    .await?;
    let order = post(
        "/v1/orders",
        serde_json::json!({"user_id": user["id"], "currency": "EUR",
               "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1200}]}),
    )
    .await?;
    Ok(order["id"].as_str().unwrap_or_default().to_owned())
}

/// The three services, built from `env` and running.
pub async fn start_services(env: &Env) -> anyhow::Result<Vec<RunningService>> {
    let command_api = command_api::build(command_api::Config::from_env(env)?).await?;
    let projections = projections::build(projections::Config::from_env(env)?).await?;
    let saga = saga_orchestrator::build(saga_orchestrator::Config::from_env(env)?).await?;
    Ok(vec![
        RunningService::start(command_api::NAME, command_api),
        RunningService::start(projections::NAME, projections),
        RunningService::start(saga_orchestrator::NAME, saga),
    ])
}

/// The console's API, built from `env` and running.
pub async fn start_console(env: &Env) -> anyhow::Result<RunningService> {
    let console = web_console::build(web_console::Config::from_env(env)?).await?;
    Ok(RunningService::start(web_console::NAME, console))
}

/// The real nginx gateway, configured from the repository's templates, in front of the
/// given upstream addresses. Stopped when dropped.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// The gateway in front of the three APIs; its console's API is not there (503).
    pub async fn start(
        command_api: SocketAddr,
        projections: SocketAddr,
        saga_orchestrator: SocketAddr,
    ) -> anyhow::Result<Self> {
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 1));
        Self::start_with_console(command_api, projections, saga_orchestrator, nowhere).await
    }

    /// The gateway in front of the three APIs and the console's, serving the console's
    /// page as `./dev` built it (web-console/web/dist).
    pub async fn start_with_console(
        command_api: SocketAddr,
        projections: SocketAddr,
        saga_orchestrator: SocketAddr,
        console: SocketAddr,
    ) -> anyhow::Result<Self> {
        let nginx = std::env::var("SHOP_TEST_NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        let dir = tempfile::tempdir()?;
        let addr = free_port().await?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("tmp"))?;
        // nginx workers run as `nobody` when the tests run as root.
        set_mode(root, 0o755)?;
        set_mode(&root.join("tmp"), 0o777)?;
        let vars = [
            ("GATEWAY_DIR", root.display().to_string()),
            ("GATEWAY_LISTEN", addr.to_string()),
            (
                "GATEWAY_ACCESS_LOG",
                root.join("access.log").display().to_string(),
            ),
            ("COMMAND_API_UPSTREAM", command_api.to_string()),
            ("PROJECTIONS_UPSTREAM", projections.to_string()),
            ("SAGA_ORCHESTRATOR_UPSTREAM", saga_orchestrator.to_string()),
            ("WEB_CONSOLE_UPSTREAM", console.to_string()),
            // Copies: nginx's workers may run as another user than the checkout's.
            ("GATEWAY_DOCS", root.display().to_string()),
            (
                "GATEWAY_SWAGGER_UI",
                root.join("swagger-ui").display().to_string(),
            ),
            (
                "GATEWAY_CONSOLE",
                root.join("console").display().to_string(),
            ),
        ];
        let swagger_ui = repo_root().join("node_modules/swagger-ui-dist");
        let mut copies = vec![
            (
                repo_root().join("gateway/openapi.json"),
                "openapi.json".to_owned(),
            ),
            (
                swagger_ui.join("swagger-ui-bundle.js"),
                "swagger-ui/swagger-ui-bundle.js".to_owned(),
            ),
            (
                swagger_ui.join("swagger-ui.css"),
                "swagger-ui/swagger-ui.css".to_owned(),
            ),
        ];
        for page in std::fs::read_dir(repo_root().join("gateway/docs"))? {
            let page = page?;
            let name = format!("docs/{}", page.file_name().to_string_lossy());
            copies.push((page.path(), name));
        }
        copies.extend(console_page()?);
        for (from, to) in copies {
            let to = root.join(to);
            if let Some(folder) = to.parent() {
                std::fs::create_dir_all(folder)?;
                set_mode(folder, 0o755)?;
            }
            std::fs::copy(&from, &to).with_context(|| {
                format!(
                    "copying {} (npm's files come from `./dev test`, which runs `npm ci`)",
                    from.display()
                )
            })?;
        }
        for (template, target) in [
            ("gateway/shop.conf.template", "shop.conf"),
            ("gateway/nginx.local.conf.template", "nginx.conf"),
        ] {
            let text = std::fs::read_to_string(repo_root().join(template))?;
            std::fs::write(root.join(target), substitute(&text, &vars))?;
        }
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .arg("-e")
            .arg(root.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {nginx}"))?;
        let gateway = Self {
            addr,
            child,
            _dir: dir,
        };
        wait_for_200(&gateway.url("/health"), Duration::from_secs(10)).await?;
        Ok(gateway)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The files of the console's page as `./dev` builds it, each with its place under
/// `console/`; none when it was not built (the page then answers 404).
fn console_page() -> anyhow::Result<Vec<(std::path::PathBuf, String)>> {
    let dist = repo_root().join("web-console/web/dist");
    let mut files = Vec::new();
    let mut folders = vec![(dist.clone(), "console".to_owned())];
    while let Some((folder, name)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            let named = format!("{name}/{}", entry.file_name().to_string_lossy());
            if entry.file_type()?.is_dir() {
                folders.push((entry.path(), named));
            } else {
                files.push((entry.path(), named));
            }
        }
    }
    Ok(files)
}

impl Drop for Gateway {
    /// SIGTERM is nginx's fast shutdown: the master stops its workers, then exits. SIGKILL
    /// would orphan the workers, still listening, so it is only the last resort.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `${NAME}` placeholders replaced as envsubst would, for the given names only.
pub fn substitute(template: &str, vars: &[(&str, String)]) -> String {
    vars.iter()
        .fold(template.to_owned(), |text, (name, value)| {
            text.replace(&format!("${{{name}}}"), value)
        })
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// A loopback address nothing listens on (yet).
pub async fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0").await?.local_addr()
}

/// A dependency held back: connections to [`Self::addr`] are refused until [`Self::open`],
/// after which they are forwarded to the real target. Lets a test start a service while
/// its broker or database is "down" and then watch it appear.
#[derive(Debug)]
pub struct HeldBack {
    pub addr: SocketAddr,
    target: SocketAddr,
}

impl HeldBack {
    pub async fn new(target: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            addr: free_port().await?,
            target,
        })
    }

    /// Starts forwarding; runs until the test ends.
    pub async fn open(&self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        let target = self.target;
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(())
    }
}

/// `host:port` of a `postgres://user:pw@host:port/db` URL.
pub fn postgres_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .context("a postgres URL")?;
    let host_port = authority.rsplit('@').next().context("a host")?;
    Ok(host_port.parse()?)
}

/// Every event committed to the event topics of `env` when called, with the record that
/// carried it (headers, position).
pub async fn events_in_log(
    env: &TestEnv,
) -> anyhow::Result<Vec<(event_store::scan::ScannedRecord, schemas::EventDocument)>> {
    let settings = KafkaSettings::new(&env.brokers);
    let topics = TopicNames::new(&env.topic_prefix);
    let mut events = Vec::new();
    for service in schemas::catalog::SERVICES {
        let topic = topics.events(service);
        let ranges = event_store::scan::settled_ends(&settings, &topic)
            .await?
            .into_iter()
            .map(|(p, end)| {
                let range = event_store::scan::Range {
                    from: 0,
                    to: Some(end),
                };
                (p, range)
            })
            .collect();
        let mut scan = event_store::scan::LogScan::open(&settings, &topic, &ranges)?;
        while !scan.is_done() {
            for record in scan.next_batch(1_000, Duration::from_secs(1)).await? {
                let document = schemas::EventDocument::from_json(
                    record.payload.as_deref().unwrap_or_default(),
                )?;
                events.push((record, document));
            }
        }
    }
    Ok(events)
}
