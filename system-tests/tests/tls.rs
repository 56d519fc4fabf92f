//! TLS to every dependency, tested on: a private Kafka node with a SASL_SSL listener
//! (SCRAM-SHA-256) and an SSL listener whose certificate expired, a private Postgres that
//! takes TLS connections only, and an https webhook receiver, all with certificates of an
//! authority generated here. The shop runs an order through them; then each way of getting
//! TLS wrong (another authority, an expired certificate, a wrong password) stops a service
//! at start with one line, within a bounded time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use axum_server::tls_openssl::OpenSSLConfig;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use serde_json::Value;
use service_runtime::{BoundService, Env, ServiceError};
use system_tests::{PARTITIONS, RunningService, service_env_with, start_services, wait_for_200};
use test_support::pki::{ServerFiles, TestPki};
use test_support::{BrokerTls, PrivateBroker, PrivatePostgres, TestEnv};

const KEY: &str = "test-key";
const KAFKA_USER: &str = "shop";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const KAFKA_PASSWORD: &str = "kafka-test-password";

/// How long a misconfigured service may take to stop.
const STOPS_WITHIN: Duration = Duration::from_secs(15);

/// An https server that records the bodies POSTed to `/hook`.
struct HttpsReceiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    handle: axum_server::Handle<SocketAddr>,
}

impl HttpsReceiver {
    async fn start(server: &ServerFiles) -> anyhow::Result<Self> {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let log = Arc::clone(&bodies);
        let app = Router::new().route(
            "/hook",
            post(move |body: axum::body::Bytes| {
                let log = Arc::clone(&log);
                async move {
                    let body = serde_json::from_slice(&body).unwrap_or_default();
                    log.lock().expect("receiver lock").push(body);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let config = OpenSSLConfig::from_pem_file(&server.certificate, &server.key)?;
        let handle = axum_server::Handle::new();
        let serving = axum_server::bind_openssl(SocketAddr::from(([127, 0, 0, 1], 0)), config)
            .handle(handle.clone());
        tokio::spawn(serving.serve(app.into_make_service()));
        let addr = handle
            .listening()
            .await
            .ok_or_else(|| anyhow::anyhow!("the https receiver did not start"))?;
        Ok(Self {
            url: format!("https://{addr}/hook"),
            bodies,
            handle,
        })
    }

    fn kinds_for(&self, order: &str) -> Vec<String> {
        self.bodies
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|b| b["order_id"] == order)
            .filter_map(|b| b["kind"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// The broker, the database and the authority of one test.
struct Stand {
    pki: TestPki,
    broker: PrivateBroker,
    postgres: PrivatePostgres,
    env: TestEnv,
}

impl Stand {
    async fn start() -> anyhow::Result<Self> {
        let pki = TestPki::generate()?;
        let broker = PrivateBroker::start_with_tls(BrokerTls {
            sasl_ssl_keystore: pki.server.key_and_certificate.clone(),
            ssl_keystore: pki.expired.key_and_certificate.clone(),
            user: KAFKA_USER.into(),
            password: KAFKA_PASSWORD.into(),
        })
        .await;
        let postgres = PrivatePostgres::start_with_tls(&pki.server)?;
        let env = TestEnv::new().await;
        // Topics go in over the plaintext listener, as an operator's setup would.
        TopicAdmin::new(&KafkaSettings::new(&broker.brokers))?
            .create(&TopicNames::new(&env.topic_prefix).all(PARTITIONS), 1)
            .await?;
        Ok(Self {
            pki,
            broker,
            postgres,
            env,
        })
    }

    fn sasl_ssl(&self) -> String {
        self.broker
            .tls
            .as_ref()
            .expect("TLS listeners")
            .sasl_ssl
            .clone()
    }

    fn database_url(&self, ca: &Path) -> String {
        format!(
            "postgres://shop:shop@127.0.0.1:{}/shop?sslmode=verify-full&sslrootcert={}",
            self.postgres.port,
            ca.display()
        )
    }

    /// Every setting right (TLS and login to Kafka, verify-full to Postgres), then `changes`.
    fn settings(&self, changes: &[(&str, &str)]) -> Env {
        let ca = self.pki.ca.display().to_string();
        let mut pairs = vec![
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SSL_CA_FILE", ca.as_str()),
            ("KAFKA_SASL_USERNAME", KAFKA_USER),
            ("KAFKA_SASL_PASSWORD", KAFKA_PASSWORD),
            ("PAYMENT_LATENCY_MS", "5"),
        ];
        pairs.extend_from_slice(changes);
        let brokers = pairs
            .iter()
            .rev()
            .find(|(k, _)| *k == "KAFKA_BROKERS")
            .map_or_else(|| self.sasl_ssl(), |(_, v)| (*v).to_owned());
        let database = pairs
            .iter()
            .rev()
            .find(|(k, _)| *k == "DATABASE_URL")
            .map_or_else(|| self.database_url(&self.pki.ca), |(_, v)| (*v).to_owned());
        service_env_with(&self.env, &brokers, &database, &pairs)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_runs_over_tls_to_kafka_postgres_and_the_webhook() -> anyhow::Result<()> {
    let stand = Stand::start().await?;
    let receiver = HttpsReceiver::start(&stand.pki.server).await?;
    let ca = stand.pki.ca.display().to_string();
    let settings = stand.settings(&[
        ("NOTIFICATION_WEBHOOK_URL", receiver.url.as_str()),
        ("NOTIFICATION_WEBHOOK_SECRET", SECRET),
        ("NOTIFICATION_WEBHOOK_CA_FILE", ca.as_str()),
    ]);
    let services = start_services(&settings).await?;
    for service in &services {
        wait_for_200(&service.url("/ready"), Duration::from_secs(60)).await?;
    }
    let client = test_support::client(KEY);
    let order = system_tests::place_order(&client, &services[0].url("")).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !receiver
        .kinds_for(&order)
        .contains(&"order_confirmed".to_owned())
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no order_confirmed webhook over https for {order}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The read side saw it too: the projector read Kafka over TLS and wrote Postgres.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .get(services[1].url(&format!("/v1/orders/{order}")))
            .send()
            .await?;
        if response.status() == 200 && response.json::<Value>().await?["status"] == "confirmed" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "order {order} not confirmed on the read side"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The services are connected to Postgres, over TLS (the server takes no other).
    let pool = sqlx::PgPool::connect(&stand.database_url(&stand.pki.ca)).await?;
    let (all_tls, connections): (Option<bool>, i64) = sqlx::query_as(
        "SELECT bool_and(s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.datname = 'shop' AND a.backend_type = 'client backend'",
    )
    .fetch_one(&pool)
    .await?;
    assert!(connections > 1, "{connections} connections");
    assert_eq!(all_tls, Some(true));

    for service in services {
        service.stop().await?;
    }
    Ok(())
}

/// Builds a service from `settings` and waits for it to stop by itself: the one-line
/// reason. A service that builds with an error counts as stopping at start too.
async fn stops_with(
    build: impl Future<Output = Result<BoundService, ServiceError>>,
) -> anyhow::Result<String> {
    let stopped = tokio::time::timeout(STOPS_WITHIN, async {
        match build.await {
            Err(e) => Err(e),
            Ok(bound) => {
                RunningService::start("service", bound)
                    .stop_on_its_own()
                    .await
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("still running after {STOPS_WITHIN:?}"))?;
    let Err(ServiceError::Fatal(reason)) = stopped else {
        anyhow::bail!("expected a fatal stop, got {stopped:?}");
    };
    anyhow::ensure!(!reason.contains('\n'), "more than one line: {reason}");
    eprintln!("stopped at start: {reason}");
    Ok(reason)
}

async fn command_api_stops_with(settings: &Env) -> anyhow::Result<String> {
    stops_with(command_api::build(command_api::Config::from_env(settings)?)).await
}

async fn orchestrator_stops_with(settings: &Env) -> anyhow::Result<String> {
    stops_with(saga_orchestrator::build(
        saga_orchestrator::Config::from_env(settings)?,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_authority_an_expired_certificate_or_a_wrong_password_stops_a_service_in_one_line()
-> anyhow::Result<()> {
    let stand = Stand::start().await?;
    let stranger = stand.pki.stranger_ca.display().to_string();
    let expired_listener = stand
        .broker
        .tls
        .as_ref()
        .expect("TLS listeners")
        .ssl
        .clone();

    let reason =
        command_api_stops_with(&stand.settings(&[("KAFKA_SSL_CA_FILE", &stranger)])).await?;
    assert!(
        reason.contains("not trusted: unable to get local issuer certificate"),
        "{reason}"
    );

    let reason = command_api_stops_with(&stand.settings(&[
        ("KAFKA_BROKERS", &expired_listener),
        ("KAFKA_SECURITY_PROTOCOL", "ssl"),
        ("KAFKA_SASL_USERNAME", ""),
        ("KAFKA_SASL_PASSWORD", ""),
    ]))
    .await?;
    assert!(reason.contains("certificate has expired"), "{reason}");

    let reason =
        command_api_stops_with(&stand.settings(&[("KAFKA_SASL_PASSWORD", "not-the-password")]))
            .await?;
    assert!(reason.contains("SASL authentication error"), "{reason}");

    let wrong_ca_url = stand.database_url(&stand.pki.stranger_ca);
    let reason =
        command_api_stops_with(&stand.settings(&[("DATABASE_URL", &wrong_ca_url)])).await?;
    assert!(reason.starts_with("Postgres refused TLS"), "{reason}");
    assert!(
        reason.contains("(unable to get local issuer certificate)"),
        "{reason}"
    );

    let valid = HttpsReceiver::start(&stand.pki.server).await?;
    let reason = orchestrator_stops_with(&stand.settings(&[
        ("NOTIFICATION_WEBHOOK_URL", &valid.url),
        ("NOTIFICATION_WEBHOOK_SECRET", SECRET),
        ("NOTIFICATION_WEBHOOK_CA_FILE", &stranger),
    ]))
    .await?;
    assert!(
        reason.contains("not trusted: unable to get local issuer certificate"),
        "{reason}"
    );
    let expired = HttpsReceiver::start(&stand.pki.expired).await?;
    let ca = stand.pki.ca.display().to_string();
    let reason = orchestrator_stops_with(&stand.settings(&[
        ("NOTIFICATION_WEBHOOK_URL", &expired.url),
        ("NOTIFICATION_WEBHOOK_SECRET", SECRET),
        ("NOTIFICATION_WEBHOOK_CA_FILE", &ca),
    ]))
    .await?;
    assert!(reason.contains("certificate has expired"), "{reason}");

    let elsewhere = HttpsReceiver::start(&stand.pki.elsewhere).await?;
    let reason = orchestrator_stops_with(&stand.settings(&[
        ("NOTIFICATION_WEBHOOK_URL", &elsewhere.url),
        ("NOTIFICATION_WEBHOOK_SECRET", SECRET),
        ("NOTIFICATION_WEBHOOK_CA_FILE", &ca),
    ]))
    .await?;
    assert!(
        reason.contains("not trusted: IP address mismatch"),
        "{reason}"
    );

    // Last, as it changes the server: Postgres presenting an expired certificate, once a
    // new connection sees it (a reload is not instant).
    stand.postgres.replace_certificate(&stand.pki.expired)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match sqlx::PgPool::connect(&stand.database_url(&stand.pki.ca)).await {
            Err(e) if e.to_string().contains("certificate has expired") => break,
            _ if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("Postgres still serves its valid certificate")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let reason = command_api_stops_with(&stand.settings(&[])).await?;
    assert!(reason.starts_with("Postgres refused TLS"), "{reason}");
    assert!(reason.contains("(certificate has expired)"), "{reason}");
    Ok(())
}

#[test]
fn an_expired_or_unreadable_authority_file_is_a_configuration_error() -> anyhow::Result<()> {
    let pki = TestPki::generate()?;
    let expired = pki.expired.certificate.display().to_string();
    let env = Env::from_pairs([
        ("KAFKA_SECURITY_PROTOCOL", "ssl"),
        ("KAFKA_SSL_CA_FILE", expired.as_str()),
    ]);
    let err = command_api::Config::from_env(&env).unwrap_err().to_string();
    assert!(err.starts_with("KAFKA_SSL_CA_FILE="), "{err}");
    assert!(err.contains("expired on Feb  1 00:00:00 2020 GMT"), "{err}");
    let url = "postgres://shop:shop@127.0.0.1:1/shop?sslmode=verify-full&sslrootcert=/no/ca.pem";
    let err = command_api::Config::from_env(&Env::from_pairs([("DATABASE_URL", url)]))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("DATABASE_URL="), "{err}");
    let env = Env::from_pairs([
        ("NOTIFICATION_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
        ("NOTIFICATION_WEBHOOK_SECRET", SECRET),
        ("NOTIFICATION_WEBHOOK_CA_FILE", expired.as_str()),
    ]);
    let err = saga_orchestrator::Config::from_env(&env)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("NOTIFICATION_WEBHOOK_CA_FILE="), "{err}");
    Ok(())
}
