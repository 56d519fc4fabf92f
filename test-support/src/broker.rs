//! An Apache Kafka node of one harness's own, for tests that kill or restart the broker
//! (which they must not do to the shared one), for benchmarks, and for the fault suite.
//!
//! It runs the same jars and the same configuration as `./dev` (`kafka/broker.properties`,
//! `kafka/jvm.options`, `kafka/log4j2.properties`): one KRaft node, broker and controller in
//! one JVM, its storage formatted into a temporary folder. The jars are the ones `./dev`
//! fetched from Maven Central; it exports their folder as `SHOP_KAFKA_LIBS`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;

use crate::watchdog::{Watchdog, shell_quote};
use rdkafka::consumer::{BaseConsumer, Consumer};
use uuid::Uuid;

/// The folder of the broker's jars (`./dev` sets it).
pub const KAFKA_LIBS_ENV: &str = "SHOP_KAFKA_LIBS";

const BROKER_PROPERTIES: &str = include_str!("../../kafka/broker.properties");
const JVM_OPTIONS: &str = include_str!("../../kafka/jvm.options");
const LOG4J2: &str = include_str!("../../kafka/log4j2.properties");

/// Longest a start may take before the harness gives up on the broker.
const START_WITHIN: Duration = Duration::from_secs(90);

/// What a private broker serves over TLS besides its plaintext listener.
#[derive(Clone, Debug)]
pub struct BrokerTls {
    /// Key and certificate (one PEM file, key first) of a SASL_SSL listener that takes
    /// SCRAM-SHA-256 logins.
    pub sasl_ssl_keystore: PathBuf,
    /// Key and certificate of a second listener, TLS without login (say an expired one).
    pub ssl_keystore: PathBuf,
    /// The one SCRAM-SHA-256 user, created when the storage is formatted.
    pub user: String,
    pub password: String,
}

/// Where a private broker's TLS listeners are (`host:port`).
#[derive(Clone, Debug)]
pub struct TlsListeners {
    pub sasl_ssl: String,
    pub ssl: String,
}

/// A private Kafka node on free ports with its data in a fresh folder; killed and removed
/// when dropped.
#[derive(Debug)]
pub struct PrivateBroker {
    /// `host:port` of its client listener.
    pub brokers: String,
    /// Its TLS listeners, when started with [`PrivateBroker::start_with_tls`].
    pub tls: Option<TlsListeners>,
    tls_config: Option<BrokerTls>,
    controller_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Kills the broker and removes its folder should this process end without `Drop`.
    _watchdog: Watchdog,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn libs() -> String {
    let libs = std::env::var(KAFKA_LIBS_ENV).unwrap_or_else(|_| {
        panic!("{KAFKA_LIBS_ENV} is not set: private brokers run through ./dev (test, bench, faults), which fetches Kafka's jars")
    });
    assert!(
        Path::new(&libs).join(".complete").exists(),
        "{KAFKA_LIBS_ENV}={libs} holds no complete set of Kafka jars"
    );
    format!("{libs}/*")
}

/// The heap of private brokers: `KAFKA_HEAP_OPTS` as for `./dev`, else a small one.
fn heap_options() -> Vec<String> {
    std::env::var("KAFKA_HEAP_OPTS")
        .unwrap_or_else(|_| "-Xms128m -Xmx384m".to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

impl PrivateBroker {
    /// Formats a fresh node and starts it; returns once it answers a metadata request.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Like [`Self::start`], with a SASL_SSL and an SSL listener next to the plaintext one
    /// (which the harness keeps using for its own checks).
    pub async fn start_with_tls(tls: BrokerTls) -> Self {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls_config: Option<BrokerTls>) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("shop-kafka-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a broker folder");
        let config = dir.join("server.properties").display().to_string();
        let running = format!("-f -- {}", shell_quote(&config));
        let watchdog = Watchdog::arm(&format!(
            "pkill -KILL {running}; while pgrep {running} >/dev/null; do sleep 0.2; done; rm -rf {}",
            shell_quote(&dir.display().to_string())
        ));
        let tls = tls_config.as_ref().map(|_| TlsListeners {
            sasl_ssl: format!("127.0.0.1:{}", free_port()),
            ssl: format!("127.0.0.1:{}", free_port()),
        });
        let broker = Self {
            brokers: format!("127.0.0.1:{port}"),
            tls,
            tls_config,
            controller_port: free_port(),
            dir,
            child: None,
            _watchdog: watchdog,
        };
        broker.write_config(port);
        broker.format();
        let mut broker = broker;
        broker.spawn().await;
        broker
    }

    fn write_config(&self, port: u16) {
        let properties = BROKER_PROPERTIES
            .replace("${KAFKA_PORT}", &port.to_string())
            .replace(
                "${KAFKA_CONTROLLER_PORT}",
                &self.controller_port.to_string(),
            )
            .replace(
                "${KAFKA_DATA}",
                &self.dir.join("data").display().to_string(),
            );
        let properties = match (&self.tls, &self.tls_config) {
            (Some(listeners), Some(tls)) => properties + &self.tls_properties(port, listeners, tls),
            _ => properties,
        };
        std::fs::write(self.dir.join("server.properties"), properties).expect("write the config");
        std::fs::write(self.dir.join("log4j2.properties"), LOG4J2).expect("write the log config");
    }

    /// Appended to the template: Java's properties take the last value of a key.
    fn tls_properties(&self, port: u16, listeners: &TlsListeners, tls: &BrokerTls) -> String {
        let controller = self.controller_port;
        format!(
            "
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},SASL_SSL://{sasl_ssl},SSL://{ssl}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://{sasl_ssl},SSL://{ssl}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={sasl_ssl_keystore}
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location={ssl_keystore}
",
            sasl_ssl = listeners.sasl_ssl,
            ssl = listeners.ssl,
            sasl_ssl_keystore = tls.sasl_ssl_keystore.display(),
            ssl_keystore = tls.ssl_keystore.display(),
        )
    }

    fn java(&self) -> Command {
        let mut java = Command::new("java");
        java.arg(format!(
            "-Dlog4j2.configurationFile={}",
            self.dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(libs())
        .current_dir(&self.dir)
        .stdin(Stdio::null());
        java
    }

    fn format(&self) {
        let run = |args: &[&str]| {
            let output = self
                .java()
                .arg("kafka.tools.StorageTool")
                .args(args)
                .output()
                .expect("java on PATH (./dev installs a JDK)");
            assert!(
                output.status.success(),
                "kafka-storage {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        };
        let cluster_id = run(&["random-uuid"]);
        let config = self.dir.join("server.properties").display().to_string();
        let mut format = vec!["format", "--standalone", "-t", &cluster_id, "-c", &config];
        let scram = self.tls_config.as_ref().map(|tls| {
            format!(
                "SCRAM-SHA-256=[name={},password={}]",
                tls.user, tls.password
            )
        });
        if let Some(scram) = &scram {
            format.extend(["--add-scram", scram]);
        }
        run(&format);
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kafka.log"))
            .expect("the broker's log file");
        let child = self
            .java()
            .args(heap_options())
            .args(
                JVM_OPTIONS
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#')),
            )
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("java on PATH (./dev installs a JDK)");
        self.child = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        while Instant::now() < deadline {
            if self.answers_metadata().await {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "private Kafka exited ({status}) on {}: {}",
                    self.brokers,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "private Kafka did not answer on {} within {START_WITHIN:?}: {}",
            self.brokers,
            self.log_tail()
        );
    }

    /// A metadata request answered by the broker: it serves clients.
    async fn answers_metadata(&self) -> bool {
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = match ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("log_level", "0")
                .create()
            {
                Ok(c) => c,
                Err(_) => return false,
            };
            consumer
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok_and(|m| !m.brokers().is_empty())
        })
        .await
        .unwrap_or(false)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("kafka.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the broker the hard way (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL, then start again on the same ports and storage.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts a killed broker again on the same ports and storage.
    pub async fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn().await;
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
