//! How far behind each reader of the log is, in records and in seconds.
//!
//! The readers are the read models and the saga orchestrator, which keep their positions
//! in Postgres next to their state, and the writers of each service, whose consumer groups
//! commit their positions on the command topics in Kafka. "Seconds" is the age of the
//! oldest record a reader has not taken yet (the record at its position); 0 when it is
//! caught up. Read from Postgres and the broker, so it also tells the lag of a service
//! that is down.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use event_store::reader::{Schema, bookkeeping};
use event_store::scan::{self, LogScan, Range};
use event_store::subscription::TopicPartition;
use event_store::{KafkaSettings, TopicNames};
use projections::projector::runner;
use projections::{READ_MODELS, services_read_by};
use saga_orchestrator::runner::Runner;
use schemas::catalog::SERVICES;
use serde::Serialize;
use service_runtime::Infrastructure;
use sqlx::PgPool;

use crate::{InspectionError, Result};

/// One reader's lag.
#[derive(Clone, Debug, Serialize)]
pub struct ReaderLag {
    /// `read model orders`, `saga orchestrator`, `orders writers`.
    pub reader: String,
    /// Its consumer group.
    pub group: String,
    pub records_behind: u64,
    /// Age of the oldest record not taken yet; 0 when caught up, `None` when unknown.
    pub seconds_behind: Option<f64>,
    /// Per partition: next offset to take, and where its records end.
    pub partitions: Vec<PartitionLag>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
    /// The offset after the partition's last committed record (the high watermark can be
    /// past it: transaction markers take offsets too).
    pub end: i64,
}

/// The lag of every reader: each read model, the saga orchestrator, each service's writers.
pub async fn readers(infra: &Infrastructure, pool: &PgPool) -> Result<Vec<ReaderLag>> {
    let known = infra
        .admin()
        .map_err(|e| broker_unreachable(infra, e))?
        .partition_counts()
        .await
        .map_err(|e| broker_unreachable(infra, e))?;
    readers_of(infra, pool, &known).await
}

fn broker_unreachable(infra: &Infrastructure, e: event_store::EventStoreError) -> InspectionError {
    let what = format!(
        "cannot reach the broker (KAFKA_BROKERS={})",
        infra.kafka.brokers
    );
    InspectionError::unavailable(what, e)
}

/// [`readers`] over the topics `known` to the broker (name -> partitions).
pub async fn readers_of(
    infra: &Infrastructure,
    pool: &PgPool,
    known: &BTreeMap<String, i32>,
) -> Result<Vec<ReaderLag>> {
    let mut ends = Ends::new(&infra.kafka, known);
    let mut lags = Vec::new();
    for model in READ_MODELS {
        let services = services_read_by(model).unwrap_or_default();
        let schema = Schema::live(model);
        let positions = stored_positions(pool, &schema).await?;
        let topics: Vec<String> = services.iter().map(|s| infra.topics.events(s)).collect();
        lags.push(
            lag_of(
                format!("read model {model}"),
                runner::group(&infra.topics, &schema),
                &topics,
                &positions,
                &mut ends,
            )
            .await?,
        );
    }
    let saga_schema = Schema::named(saga_orchestrator::SCHEMA)
        .map_err(|e| InspectionError::unavailable("the saga's schema", e))?;
    let saga_topics: Vec<String> = saga_orchestrator::runner::SERVICES
        .iter()
        .map(|s| infra.topics.events(s))
        .collect();
    let positions = stored_positions(pool, &saga_schema).await?;
    lags.push(
        lag_of(
            "saga orchestrator".into(),
            Runner::group(&infra.topics),
            &saga_topics,
            &positions,
            &mut ends,
        )
        .await?,
    );
    for service in SERVICES {
        lags.push(writers_lag(&infra.kafka, &infra.topics, service, &mut ends).await?);
    }
    Ok(lags)
}

/// Where a reader that keeps its checkpoints in `schema` stands (nothing when the schema
/// does not exist yet: the reader has taken nothing).
async fn stored_positions(pool: &PgPool, schema: &Schema) -> Result<BTreeMap<TopicPartition, i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(schema.table("checkpoints"))
        .fetch_one(pool)
        .await
        .map_err(|e| checkpoints_unreadable(schema, e))?;
    if !exists {
        return Ok(BTreeMap::new());
    }
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| checkpoints_unreadable(schema, e))?;
    Ok(bookkeeping::checkpoints(&mut conn, schema)
        .await
        .map_err(|e| checkpoints_unreadable(schema, e))?
        .into_iter()
        .map(|c| ((c.topic, c.partition), c.next_offset))
        .collect())
}

fn checkpoints_unreadable(schema: &Schema, e: sqlx::Error) -> InspectionError {
    InspectionError::unavailable(format!("reading {}", schema.table("checkpoints")), e)
}

/// A failure reading `topic` (its ends, positions or records) from the broker.
fn topic_unreadable(topic: &str, e: event_store::EventStoreError) -> InspectionError {
    InspectionError::unavailable(format!("reading {topic} from the broker"), e)
}

async fn writers_lag(
    kafka: &KafkaSettings,
    topics: &TopicNames,
    service: &str,
    ends: &mut Ends<'_>,
) -> Result<ReaderLag> {
    let group = topics.writers_group(service);
    let topic = topics.commands(service);
    let partitions = ends.partitions(&topic)?;
    let committed = scan::committed(kafka, &group, &topic, partitions)
        .await
        .map_err(|e| topic_unreadable(&topic, e))?;
    let positions = committed
        .into_iter()
        .filter_map(|(p, offset)| offset.map(|o| ((topic.clone(), p), o)))
        .collect();
    lag_of(
        format!("{service} writers"),
        group,
        &[topic],
        &positions,
        ends,
    )
    .await
}

/// The lag of a reader at `positions` over `topics` (a partition it has no position in
/// counts from its first record).
async fn lag_of(
    reader: String,
    group: String,
    topics: &[String],
    positions: &BTreeMap<TopicPartition, i64>,
    ends: &mut Ends<'_>,
) -> Result<ReaderLag> {
    let mut partitions = Vec::new();
    let mut oldest: Option<f64> = Some(0.0);
    for topic in topics {
        let mut waiting = BTreeMap::new();
        for (partition, (low, end)) in ends.of(topic).await? {
            let next = positions
                .get(&(topic.clone(), partition))
                .copied()
                .unwrap_or(low)
                .max(low);
            if next < end {
                waiting.insert(
                    partition,
                    Range {
                        from: next,
                        to: Some(next + 1),
                    },
                );
            }
            partitions.push(PartitionLag {
                topic: topic.clone(),
                partition,
                next,
                end,
            });
        }
        match age_of_first(ends.kafka, topic, &waiting).await? {
            Some(age) => oldest = oldest.map(|o| o.max(age)),
            None if !waiting.is_empty() => oldest = None,
            None => {}
        }
    }
    Ok(ReaderLag {
        reader,
        group,
        records_behind: partitions
            .iter()
            .map(|p| (p.end - p.next).max(0).unsigned_abs())
            .sum(),
        seconds_behind: oldest,
        partitions,
    })
}

/// The age of the oldest of the records at the start of `waiting`'s ranges.
async fn age_of_first(
    kafka: &KafkaSettings,
    topic: &str,
    waiting: &BTreeMap<i32, Range>,
) -> Result<Option<f64>> {
    if waiting.is_empty() {
        return Ok(None);
    }
    let mut log = LogScan::open(kafka, topic, waiting).map_err(|e| topic_unreadable(topic, e))?;
    let mut oldest = None;
    while !log.is_done() {
        for record in log
            .next_batch(waiting.len(), Duration::from_millis(500))
            .await
            .map_err(|e| topic_unreadable(topic, e))?
        {
            if let Some(at) = record.timestamp {
                let age = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
                oldest = Some(oldest.map_or(age, |o: f64| o.max(age)));
            }
        }
    }
    Ok(oldest)
}

/// Partition ends, fetched once per topic.
struct Ends<'a> {
    kafka: &'a KafkaSettings,
    known: &'a BTreeMap<String, i32>,
    fetched: BTreeMap<String, BTreeMap<i32, (i64, i64)>>,
}

impl<'a> Ends<'a> {
    fn new(kafka: &'a KafkaSettings, known: &'a BTreeMap<String, i32>) -> Self {
        Self {
            kafka,
            known,
            fetched: BTreeMap::new(),
        }
    }

    fn partitions(&self, topic: &str) -> Result<i32> {
        self.known
            .get(topic)
            .copied()
            .ok_or_else(|| InspectionError::NotFound(format!("no topic {topic:?} on the broker")))
    }

    /// The first offset of each partition of `topic`, and where its records end.
    async fn of(&mut self, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>> {
        if let Some(found) = self.fetched.get(topic) {
            return Ok(found.clone());
        }
        let partitions = self.partitions(topic)?;
        let marks = scan::watermarks_of(self.kafka, topic, (0..partitions).collect())
            .await
            .map_err(|e| topic_unreadable(topic, e))?;
        let highs = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
        let record_ends = scan::record_ends(self.kafka, topic, &highs)
            .await
            .map_err(|e| topic_unreadable(topic, e))?;
        let found: BTreeMap<i32, (i64, i64)> = marks
            .into_iter()
            .map(|(p, (low, high))| (p, (low, record_ends.get(&p).copied().unwrap_or(high))))
            .collect();
        self.fetched.insert(topic.to_owned(), found.clone());
        Ok(found)
    }
}
