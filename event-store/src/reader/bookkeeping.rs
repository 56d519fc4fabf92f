//! A reader's tables in its schema: checkpoints (next offset per partition), versions
//! (last applied per aggregate) and parked records. Every write is one statement per
//! batch, whatever the batch size.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection};

use super::copy::CopyRows;
use super::schema::Schema;
use crate::subscription::{Offsets, TopicPartition};

/// A record set aside instead of applied: the row of the `parked` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Parked {
    pub key: String,
    pub version: Option<u64>,
    pub event_type: Option<String>,
    pub payload: Vec<u8>,
    pub error: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Where the reader is in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub last_event_at: Option<DateTime<Utc>>,
}

pub async fn checkpoints(
    conn: &mut PgConnection,
    schema: &Schema,
) -> Result<Vec<Checkpoint>, sqlx::Error> {
    let rows: Vec<(String, i32, i64, Option<DateTime<Utc>>)> =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT topic, partition, next_offset, last_event_at FROM {} ORDER BY topic, partition",
            schema.table("checkpoints")
        )))
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(topic, partition, next_offset, last_event_at)| Checkpoint {
                topic,
                partition,
                next_offset,
                last_event_at,
            },
        )
        .collect())
}

/// The stored checkpoints as the subscription's start offsets.
pub fn offsets(checkpoints: &[Checkpoint]) -> Offsets {
    checkpoints
        .iter()
        .map(|c| ((c.topic.clone(), c.partition), c.next_offset))
        .collect()
}

/// The next offset of one partition (0 when the reader has read nothing of it).
pub async fn next_offset(
    conn: &mut PgConnection,
    schema: &Schema,
    topic: &str,
    partition: i32,
) -> Result<i64, sqlx::Error> {
    let next: Option<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT next_offset FROM {} WHERE topic = $1 AND partition = $2",
        schema.table("checkpoints")
    )))
    .bind(topic)
    .bind(partition)
    .fetch_optional(conn)
    .await?;
    Ok(next.unwrap_or(0))
}

/// Locks the checkpoints of `partitions` for this transaction (creating missing ones at
/// 0) and returns their next offsets. Another instance that read the same partition (a
/// rebalance in flight) waits here, and then sees how far this one got: records below
/// the stored offset are already applied and must be left out.
///
/// One statement: an upsert that rewrites an existing row unchanged takes its row lock
/// (waiting for a transaction that holds it) and returns its latest committed offset, as
/// `SELECT ... FOR UPDATE` would, without a second round trip. Rows are taken in
/// (topic, partition) order, so two batches never wait for each other in a circle.
pub async fn claim(
    conn: &mut PgConnection,
    schema: &Schema,
    partitions: &[TopicPartition],
) -> Result<HashMap<TopicPartition, i64>, sqlx::Error> {
    let (topics, numbers): (Vec<&str>, Vec<i32>) =
        partitions.iter().map(|(t, p)| (t.as_str(), *p)).unzip();
    let table = schema.table("checkpoints");
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO {table} AS c (topic, partition, next_offset)
         SELECT t, p, 0 FROM UNNEST($1::text[], $2::int[]) AS u(t, p) ORDER BY t, p
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = c.next_offset
         RETURNING c.topic, c.partition, c.next_offset"
    )))
    .bind(&topics)
    .bind(&numbers)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(topic, partition, next)| ((topic, partition), next))
        .collect())
}

/// The checkpoint columns of `next_offsets`: topics, partitions, offsets and the time of
/// the last record applied from each.
type CheckpointColumns = (Vec<String>, Vec<i32>, Vec<i64>, Vec<Option<DateTime<Utc>>>);

fn checkpoint_columns(
    next_offsets: &BTreeMap<TopicPartition, i64>,
    last_event_at: &HashMap<TopicPartition, DateTime<Utc>>,
) -> CheckpointColumns {
    let mut columns: CheckpointColumns = Default::default();
    for (key, offset) in next_offsets {
        columns.0.push(key.0.clone());
        columns.1.push(key.1);
        columns.2.push(*offset);
        columns.3.push(last_event_at.get(key).copied());
    }
    columns
}

/// The upsert of checkpoints, its four arrays bound from parameter `$first` on; offsets
/// only move forward.
fn checkpoints_upsert(schema: &Schema, first: usize) -> String {
    let [t, p, o, e] = [first, first + 1, first + 2, first + 3];
    format!(
        "INSERT INTO {0} (topic, partition, next_offset, last_event_at, updated_at)
         SELECT t, p, o, e, now() FROM UNNEST(${t}::text[], ${p}::int[], ${o}::bigint[], ${e}::timestamptz[]) AS u(t, p, o, e)
         ON CONFLICT (topic, partition) DO UPDATE SET
           next_offset = GREATEST({0}.next_offset, EXCLUDED.next_offset),
           last_event_at = COALESCE(EXCLUDED.last_event_at, {0}.last_event_at),
           updated_at = now()",
        schema.table("checkpoints")
    )
}

/// The upsert of aggregates' versions, its two arrays bound from parameter `$first` on.
fn versions_upsert(schema: &Schema, first: usize) -> String {
    let [k, v] = [first, first + 1];
    format!(
        "INSERT INTO {} (aggregate_id, version) SELECT * FROM UNNEST(${k}::text[], ${v}::bigint[])
         ON CONFLICT (aggregate_id) DO UPDATE SET version = EXCLUDED.version",
        schema.table("versions")
    )
}

fn version_columns(versions: &HashMap<String, u64>) -> (Vec<&str>, Vec<i64>) {
    versions
        .iter()
        .map(|(k, v)| (k.as_str(), i64::try_from(*v).unwrap_or(i64::MAX)))
        .unzip()
}

pub async fn store_checkpoints(
    conn: &mut PgConnection,
    schema: &Schema,
    next_offsets: &BTreeMap<TopicPartition, i64>,
    last_event_at: &HashMap<TopicPartition, DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let (topics, partitions, offsets, times) = checkpoint_columns(next_offsets, last_event_at);
    sqlx::query(AssertSqlSafe(checkpoints_upsert(schema, 1)))
        .bind(topics)
        .bind(partitions)
        .bind(offsets)
        .bind(times)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn store_versions(
    conn: &mut PgConnection,
    schema: &Schema,
    versions: &HashMap<String, u64>,
) -> Result<(), sqlx::Error> {
    if versions.is_empty() {
        return Ok(());
    }
    let (keys, values) = version_columns(versions);
    sqlx::query(AssertSqlSafe(versions_upsert(schema, 1)))
        .bind(keys)
        .bind(values)
        .execute(conn)
        .await?;
    Ok(())
}

/// A batch's progress in one statement: the versions it applied and the next offsets
/// (what [`store_versions`] and [`store_checkpoints`] write, one round trip fewer).
pub async fn store_progress(
    conn: &mut PgConnection,
    schema: &Schema,
    versions: &HashMap<String, u64>,
    (next_offsets, last_event_at): (
        &BTreeMap<TopicPartition, i64>,
        &HashMap<TopicPartition, DateTime<Utc>>,
    ),
) -> Result<(), sqlx::Error> {
    let (keys, values) = version_columns(versions);
    let (topics, partitions, offsets, times) = checkpoint_columns(next_offsets, last_event_at);
    sqlx::query(AssertSqlSafe(format!(
        "WITH applied AS ({}) {}",
        versions_upsert(schema, 1),
        checkpoints_upsert(schema, 3)
    )))
    .bind(keys)
    .bind(values)
    .bind(topics)
    .bind(partitions)
    .bind(offsets)
    .bind(times)
    .execute(conn)
    .await?;
    Ok(())
}

/// The versions of aggregates no reader has applied anything of yet, in one COPY (an
/// aggregate already in the table fails it: see [`super::copy::is_unique_violation`]).
pub async fn copy_versions(
    conn: &mut PgConnection,
    schema: &Schema,
    versions: &HashMap<String, u64>,
) -> Result<(), sqlx::Error> {
    let mut rows = CopyRows::new(schema.table("versions"), "aggregate_id, version");
    for (key, version) in versions {
        rows.row(2)
            .text(key)
            .int8(i64::try_from(*version).unwrap_or(i64::MAX));
    }
    rows.send(conn).await?;
    Ok(())
}

pub async fn versions(
    conn: &mut PgConnection,
    schema: &Schema,
    keys: &[String],
) -> Result<HashMap<String, u64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT aggregate_id, version FROM {} WHERE aggregate_id = ANY($1)",
        schema.table("versions")
    )))
    .bind(keys)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, version)| (key, version.unsigned_abs()))
        .collect())
}

/// Where each of `keys` stands, in one round trip: its last applied version (for those
/// the reader has applied), and which have parked records.
pub async fn standing(
    conn: &mut PgConnection,
    schema: &Schema,
    keys: &[String],
) -> Result<(HashMap<String, u64>, HashSet<String>), sqlx::Error> {
    let rows: Vec<(String, Option<i64>, bool)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, version, parked FROM (
           SELECT k.id, v.version,
                  EXISTS (SELECT 1 FROM {parked} p WHERE p.aggregate_id = k.id) AS parked
           FROM UNNEST($1::text[]) AS k(id)
           LEFT JOIN {versions} v ON v.aggregate_id = k.id
         ) s WHERE version IS NOT NULL OR parked",
        parked = schema.table("parked"),
        versions = schema.table("versions"),
    )))
    .bind(keys)
    .fetch_all(conn)
    .await?;
    let mut versions = HashMap::new();
    let mut parked = HashSet::new();
    for (key, version, is_parked) in rows {
        if let Some(version) = version {
            versions.insert(key.clone(), version.unsigned_abs());
        }
        if is_parked {
            parked.insert(key);
        }
    }
    Ok((versions, parked))
}

pub async fn store_parked(
    conn: &mut PgConnection,
    schema: &Schema,
    parked: &[&Parked],
) -> Result<(), sqlx::Error> {
    let mut columns = ParkedColumns::default();
    for p in parked {
        columns.topic.push(p.topic.as_str());
        columns.partition.push(p.partition);
        columns.offset.push(p.offset);
        columns.key.push(p.key.as_str());
        columns
            .version
            .push(p.version.map(|v| i64::try_from(v).unwrap_or(i64::MAX)));
        columns.event_type.push(p.event_type.as_deref());
        columns.payload.push(p.payload.as_slice());
        columns.error.push(p.error.as_str());
    }
    if columns.topic.is_empty() {
        return Ok(());
    }
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {} (topic, partition, \"offset\", aggregate_id, version, event_type, payload, error)
         SELECT * FROM UNNEST($1::text[], $2::int[], $3::bigint[], $4::text[], $5::bigint[], $6::text[], $7::bytea[], $8::text[])
         ON CONFLICT (topic, partition, \"offset\") DO NOTHING",
        schema.table("parked")
    )))
    .bind(columns.topic)
    .bind(columns.partition)
    .bind(columns.offset)
    .bind(columns.key)
    .bind(columns.version)
    .bind(columns.event_type)
    .bind(columns.payload)
    .bind(columns.error)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Default)]
struct ParkedColumns<'a> {
    topic: Vec<&'a str>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    key: Vec<&'a str>,
    version: Vec<Option<i64>>,
    event_type: Vec<Option<&'a str>>,
    payload: Vec<&'a [u8]>,
    error: Vec<&'a str>,
}

/// Begins a batch's transaction holding the schema's lock shared (see [`lock_alone`]).
/// Two statements, not one `BEGIN; SELECT ...`: sqlx counts a transaction begun only once
/// its begin statement succeeded, so a lock wait that failed or was cancelled there would
/// leave the pooled connection inside an aborted transaction nobody rolls back.
pub async fn begin_locked(
    pool: &sqlx::PgPool,
    schema: &Schema,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtext('projector:' || $1))")
        .bind(schema.name())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Serializes an operator's retry or skip, or a rebuild's swap, against the schema's
/// batches: batches share the lock ([`begin_locked`]), this takes it alone.
pub async fn lock_alone(conn: &mut PgConnection, schema: &Schema) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('projector:' || $1))")
        .bind(schema.name())
        .execute(conn)
        .await?;
    Ok(())
}
