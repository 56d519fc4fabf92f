//! What the shopctl tests share: the binary run against a test's broker and database,
//! the services running in-process, events written straight into the log, and the read
//! models folded from the log (what a rebuild must reach).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use event_store::partitioner::partition_for;
use event_store::record::to_kafka_headers;
use event_store::scan::{self, LogScan, Range};
use event_store::{KafkaSettings, TopicNames};
use projections::projector::{ReadModel, Schema};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::EventDocument;
use system_tests::PARTITIONS;
use test_support::TestEnv;

pub const BIN: &str = env!("CARGO_BIN_EXE_shopctl");

/// The variables shopctl reads, pointing at the test's broker, database and prefix.
pub fn shopctl_env(env: &TestEnv) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BROKERS", env.brokers.clone()),
        ("KAFKA_TIMEOUT_MS", "5000".into()),
        ("DATABASE_URL", env.database_url.clone()),
        ("TOPIC_PREFIX", env.topic_prefix.clone()),
        ("EVENT_PARTITIONS", PARTITIONS.to_string()),
    ]
}

/// `shopctl args...` against the test's infrastructure; its output.
pub fn shopctl(env: &TestEnv, args: &[&str]) -> Output {
    shopctl_command(env, args)
        .output()
        .expect("run the shopctl binary")
}

/// The command, not started (for tests that kill it).
pub fn shopctl_command(env: &TestEnv, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (name, value) in shopctl_env(env) {
        command.env(name, value);
    }
    command
}

/// stdout of a run that must have succeeded.
pub fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "shopctl failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stdout as JSON lines.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Client settings for the test broker.
pub fn kafka(env: &TestEnv) -> KafkaSettings {
    KafkaSettings::new(&env.brokers)
}

/// Writes event documents straight into the log, keyed and partitioned as writers do.
pub struct Log {
    pub topics: TopicNames,
    producer: FutureProducer,
}

impl Log {
    pub fn new(env: &TestEnv) -> anyhow::Result<Self> {
        Ok(Self {
            topics: TopicNames::new(&env.topic_prefix),
            producer: kafka(env).producer().create()?,
        })
    }

    /// Appends `document` to the events topic of `service`; its (partition, offset).
    pub async fn append(
        &self,
        service: &str,
        document: &EventDocument,
    ) -> anyhow::Result<(i32, i64)> {
        let topic = self.topics.events(service);
        let headers = to_kafka_headers(&document.headers());
        let payload = document.to_json();
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&topic)
                    .partition(partition_for(&document.subject, PARTITIONS))
                    .key(&document.subject)
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        Ok((delivery.partition, delivery.offset))
    }
}

/// Every event document of `service`'s topic, in log order per partition.
pub async fn log_of(env: &TestEnv, service: &str) -> anyhow::Result<Vec<EventDocument>> {
    let settings = kafka(env);
    let topic = TopicNames::new(&env.topic_prefix).events(service);
    let ends = scan::settled_ends(&settings, &topic).await?;
    let ranges = ends
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
    let mut log = LogScan::open(&settings, &topic, &ranges)?;
    let mut documents = Vec::new();
    while !log.is_done() {
        for record in log.next_batch(1000, Duration::from_millis(500)).await? {
            if let Some(document) = record
                .payload
                .as_deref()
                .and_then(|p| EventDocument::from_json(p).ok())
            {
                documents.push(document);
            }
        }
    }
    Ok(documents)
}

/// Model `M` as a fold of `documents` under the reader rule (next version applies, a
/// duplicate is dropped, a gap or a poison event parks the aggregate).
pub fn fold<M: ReadModel>(documents: &[EventDocument]) -> BTreeMap<String, M::Row> {
    let mut rows: BTreeMap<String, M::Row> = BTreeMap::new();
    let mut gate = event_store::gate::VersionGate::default();
    let mut parked = std::collections::HashSet::new();
    for document in documents {
        let key = M::key(document);
        if parked.contains(&key) {
            continue;
        }
        let last = gate.last(&key);
        if document.aggregateversion <= last {
            continue;
        }
        if document.aggregateversion > last + 1 {
            parked.insert(key);
            continue;
        }
        match M::fold(rows.get(&key), document) {
            Ok(row) => {
                gate.admit(&key, document.aggregateversion);
                rows.extend(row.map(|row| (key, row)));
            }
            Err(_) => {
                parked.insert(key);
            }
        }
    }
    rows
}

/// The rows model `M` holds in its live schema, by key.
pub async fn stored<M: ReadModel>(
    pool: &sqlx::PgPool,
    keys: &[String],
) -> anyhow::Result<BTreeMap<String, M::Row>> {
    let mut conn = pool.acquire().await?;
    Ok(M::load(&mut conn, &Schema::live(M::NAME), keys)
        .await?
        .into_iter()
        .collect())
}

/// Fails with the keys that differ (at most five shown) unless `stored == expected`.
pub fn assert_same_rows<R: PartialEq + std::fmt::Debug>(
    what: &str,
    stored: &BTreeMap<String, R>,
    expected: &BTreeMap<String, R>,
) {
    let differing: Vec<&String> = expected
        .keys()
        .chain(stored.keys())
        .filter(|k| stored.get(*k) != expected.get(*k))
        .collect();
    if let Some(first) = differing.first() {
        panic!(
            "{what}: {} of {} rows differ from the fold of the log ({} stored); first {first}:\n stored   {:?}\n expected {:?}\n others: {:?}",
            differing.len(),
            expected.len(),
            stored.len(),
            stored.get(*first),
            expected.get(*first),
            differing.iter().skip(1).take(4).collect::<Vec<_>>()
        );
    }
}

/// Rows of `table` in the live schema of `model`.
pub async fn count(pool: &sqlx::PgPool, model: &str, table: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        Schema::live(model).table(table)
    )))
    .fetch_one(pool)
    .await?)
}

/// Waits until the live model `model` has applied everything in its topics.
pub async fn caught_up(
    env: &TestEnv,
    pool: &sqlx::PgPool,
    model: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let settings = kafka(env);
    let topics = TopicNames::new(&env.topic_prefix);
    let services = projections::services_read_by(model).unwrap_or_default();
    let deadline = Instant::now() + within;
    loop {
        let mut behind = 0;
        for service in services {
            let topic = topics.events(service);
            let ends = scan::settled_ends(&settings, &topic).await?;
            for (partition, end) in scan::record_ends(&settings, &topic, &ends).await? {
                let next: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT next_offset FROM {} WHERE topic = $1 AND partition = $2",
                    Schema::live(model).table("checkpoints")
                )))
                .bind(&topic)
                .bind(partition)
                .fetch_optional(pool)
                .await
                .unwrap_or(None);
                behind += (end - next.unwrap_or(0)).max(0);
            }
        }
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{model} still {behind} records behind after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
