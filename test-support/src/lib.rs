//! Isolation for integration tests. `./dev test` starts a real broker (Apache Kafka) and a real
//! Postgres cluster and exports where they are; [`TestEnv::new`] gives each test its own
//! topic prefix and its own freshly created database on them, so tests run in parallel
//! without seeing each other.
//!
//! This crate depends on nothing of ours, so every crate can use it in its tests without
//! a dependency cycle. [`load`] drives benchmarks.

mod broker;
pub mod floor;
pub mod hostile;
pub mod load;
pub mod metrics;
pub mod pki;
mod postgres;
pub mod raw_transactions;
pub mod watchdog;

pub use broker::{BrokerTls, KAFKA_LIBS_ENV, PrivateBroker, TlsListeners};
pub use postgres::PrivatePostgres;

use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

/// Where the test command's broker listens (`host:port`).
pub const KAFKA_ENV: &str = "SHOP_TEST_KAFKA_BROKERS";
/// A URL of the test command's Postgres cluster with rights to create databases.
pub const DATABASE_ENV: &str = "SHOP_TEST_DATABASE_URL";

/// One test's private corner of the shared broker and Postgres.
#[derive(Clone, Debug)]
pub struct TestEnv {
    /// Bootstrap servers of the test broker.
    pub brokers: String,
    /// A prefix no other test uses, to put in front of every topic name.
    pub topic_prefix: String,
    /// A URL of a database created for this test only.
    pub database_url: String,
    /// The database's name.
    pub database: String,
}

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: integration tests run through `./dev test`, which starts the broker and Postgres")
    })
}

impl TestEnv {
    /// A fresh prefix and a fresh database. Panics with the reason when the test
    /// infrastructure is not there: a test that cannot reach it must fail, not pass.
    pub async fn new() -> Self {
        let brokers = required(KAFKA_ENV);
        let admin_url = required(DATABASE_ENV);
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("t_{}", &id[..16]);
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test Postgres at {admin_url}: {e}"));
        // The name is ours (hex from a UUID), never user input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{database}\""
        )))
        .execute(&mut admin)
        .await
        .expect("create the test database");
        Self {
            brokers,
            topic_prefix: format!("t{}.", &id[..12]),
            database_url: with_database(&admin_url, &database),
            database,
        }
    }

    /// A connection pool on this test's database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }
}

/// `url` with its database path replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// An HTTP client that sends `Authorization: Bearer <api_key>` with every request, as
/// every `/v1` route of the services requires.
pub fn client(api_key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {api_key}"))
        .expect("an API key is header-safe text");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// Polls `url` until it answers 200, up to `within`. Returns the last body either way.
pub async fn wait_for_200(url: &str, within: Duration) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        let response = client.get(url).timeout(Duration::from_secs(2)).send().await;
        if let Ok(response) = response {
            let ok = response.status() == 200;
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if ok {
                return Ok(body);
            }
            if Instant::now() > deadline {
                anyhow::bail!("{url} not 200 within {within:?}; last answer {body}");
            }
        } else if Instant::now() > deadline {
            anyhow::bail!("{url} not answering within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `base`'s `/metrics` page (Prometheus text).
pub async fn metrics_text(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?)
}

/// The sum over every sample at `base`'s `/metrics` whose line starts with `series` (a
/// metric name, or a name with the first of its labels, such as
/// `shop_projector_applied_events_total{read_model="orders"`): a counter over its labels.
pub async fn metric_sum(client: &reqwest::Client, base: &str, series: &str) -> anyhow::Result<f64> {
    Ok(metrics_text(client, base)
        .await?
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, n| sum + n))
}

/// A benchmark knob from the environment (`BENCH_SAGAS`, `BENCH_EVENTS`, ...), or
/// `default` when unset; a value that does not parse stops the benchmark with its name.
pub fn bench_knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text}: not a valid value")),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn swaps_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://a:b@127.0.0.1:5/postgres", "t_1"),
            "postgres://a:b@127.0.0.1:5/t_1"
        );
        assert_eq!(
            with_database("postgres://a@h:5/x?sslmode=disable", "t_2"),
            "postgres://a@h:5/t_2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5", "t_3"), "postgres://h:5/t_3");
    }
}
