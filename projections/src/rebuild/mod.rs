//! Rebuilding a read model from the log, by the same engine that projects it live
//! ([`crate::projector::runner::Projector::apply`]), so a rebuilt model is what the live
//! projector would have built.
//!
//! - **Blue/green** (the default): the model is built into a shadow schema
//!   (`read_<model>_next`) from offset zero while the live one keeps serving, up to where
//!   the live model is. Then the live model is held still (its lock, taken exclusively:
//!   the live projector's next batch waits), the shadow catches up the last records, both
//!   are checksummed at the same positions, and the schemas are renamed in one
//!   transaction: queries and the live projector go on with the new one at once (a rename
//!   invalidates Postgres' cached plans, so prepared statements resolve the name again).
//!   An interrupted build resumes from the shadow's checkpoints.
//! - **In place**: one transaction holding the model's lock deletes the rows and builds
//!   them again up to the log's end. The live projector waits (stop-the-world); queries
//!   keep reading the old rows until the commit; a crash rolls everything back.
//!
//! Rebuilds send nothing anywhere: no dead letters (the live model sent them when it met
//! the records; the rebuilt model parks them again), no commands, no webhooks. One write
//! outside the model stays, also after `--compare-only`: the users' model destroys the key
//! of every user the log says was forgotten (again: the command API destroyed it first).
//!
//! - [`checksum`]: the ordered row checksum both modes report.

pub mod checksum;

use std::collections::BTreeMap;
use std::time::Instant;

use event_store::scan::{self, LogScan, Range};
use event_store::subscription::TopicPartition;
use event_store::{EventStoreError, KafkaSettings, TopicNames};
use prometheus_client::registry::Registry;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use crate::ProjectionError;
use crate::projector::metrics::ProjectorMetrics;
use crate::projector::runner::{Projector, ProjectorConfig};
use crate::projector::{ReadModel, Schema};
use crate::read_models::event_index::EventIndex;
use crate::read_models::notifications::Notifications;
use crate::read_models::orders::Orders;
use crate::read_models::payments::Payments;
use crate::read_models::users::Users;
use checksum::Checksum;
use event_store::reader::bookkeeping;
use event_store::reader::record::record_of_scanned;

/// Catch-up rounds before the live model is held still: each round reads what the live
/// model applied during the previous one.
const CATCH_UP_ROUNDS: usize = 5;

/// Records left between shadow and live below which the live model is held still.
const HOLD_BELOW: u64 = 2_000;

/// How a rebuild proceeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Build a shadow and swap it in; with `swap: false`, build and compare only.
    BlueGreen { swap: bool },
    /// Stop the live projector and rebuild the live schema in one transaction.
    InPlace,
}

/// What a rebuild needs to reach.
#[derive(Clone, Debug)]
pub struct Rebuild {
    pub pool: PgPool,
    pub kafka: KafkaSettings,
    pub topics: TopicNames,
    /// Partitions of every event topic.
    pub partitions: i32,
    /// Records per transaction (blue/green) or per statement group (in place).
    pub batch_max: usize,
    /// Blue/green: throw away an interrupted shadow instead of resuming it.
    pub restart: bool,
}

/// Told how far a rebuild got, for progress bars.
pub trait Progress: Send + Sync {
    /// A phase begins that will read about `records` records.
    fn phase(&self, name: &str, records: u64);
    /// `records` more were read.
    fn advance(&self, records: u64);
}

/// Reports nothing.
#[derive(Debug)]
pub struct Silent;

impl Progress for Silent {
    fn phase(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// What a rebuild did.
#[derive(Clone, Debug, Serialize)]
pub struct RebuildReport {
    pub read_model: String,
    /// `blue-green` or `in-place`.
    pub mode: &'static str,
    /// Records the shadow already held when this run began (an interrupted rebuild).
    pub resumed_from: u64,
    /// Records read and applied (or dropped by the reader rule) by this run.
    pub records: u64,
    pub seconds: f64,
    pub records_per_second: f64,
    /// Next offset per `topic/partition` of the rebuilt model.
    pub positions: BTreeMap<String, i64>,
    /// The model before: the live schema (blue/green: at the same positions).
    pub live: Option<Checksum>,
    pub rebuilt: Checksum,
    /// Whether rebuilt and live rows are equal; `None` when they stand at different
    /// positions (in place, when the live model was behind the log).
    pub identical: Option<bool>,
    /// Tables whose rows differ.
    pub differing_tables: Vec<String>,
    /// Whether the rebuilt model is now the live one.
    pub swapped: bool,
}

/// Rebuilds read model `name`.
pub async fn run(
    name: &str,
    rebuild: &Rebuild,
    mode: Mode,
    progress: &dyn Progress,
) -> Result<RebuildReport, ProjectionError> {
    match name {
        Users::NAME => rebuild_model::<Users>(rebuild, mode, progress).await,
        Orders::NAME => rebuild_model::<Orders>(rebuild, mode, progress).await,
        Payments::NAME => rebuild_model::<Payments>(rebuild, mode, progress).await,
        Notifications::NAME => rebuild_model::<Notifications>(rebuild, mode, progress).await,
        EventIndex::NAME => rebuild_model::<EventIndex>(rebuild, mode, progress).await,
        other => Err(ProjectionError::unknown_model(other)),
    }
}

async fn rebuild_model<M: ReadModel>(
    rebuild: &Rebuild,
    mode: Mode,
    progress: &dyn Progress,
) -> Result<RebuildReport, ProjectionError> {
    // One rebuild per model at a time: a session lock on a connection held throughout.
    let mut guard = rebuild.pool.acquire().await?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('rebuild:' || $1))")
        .bind(M::NAME)
        .fetch_one(&mut *guard)
        .await?;
    if !free {
        return Err(ProjectionError::Conflict(format!(
            "a rebuild of {} is already running",
            M::NAME
        )));
    }
    let report = match mode {
        Mode::BlueGreen { swap } => blue_green::<M>(rebuild, swap, progress).await,
        Mode::InPlace => in_place::<M>(rebuild, progress).await,
    };
    // Closing the connection would release the lock as well; unlocking keeps it usable.
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('rebuild:' || $1))")
        .bind(M::NAME)
        .execute(&mut *guard)
        .await;
    report
}

/// The shadow schema a blue/green rebuild of `live` builds.
pub fn shadow_of(live: &Schema) -> Schema {
    Schema::named(&format!("{}_next", live.name())).expect("a live name plus _next is valid")
}

/// Where a swapped-out live schema goes until it is dropped.
fn retired_of(live: &Schema) -> Schema {
    Schema::named(&format!("{}_prev", live.name())).expect("a live name plus _prev is valid")
}

async fn blue_green<M: ReadModel>(
    rebuild: &Rebuild,
    swap: bool,
    progress: &dyn Progress,
) -> Result<RebuildReport, ProjectionError> {
    let started = Instant::now();
    let pool = &rebuild.pool;
    let (live, shadow, retired) = (
        Schema::live(M::NAME),
        shadow_of(&Schema::live(M::NAME)),
        retired_of(&Schema::live(M::NAME)),
    );
    if !schema_exists(pool, &live).await? {
        return Err(ProjectionError::Conflict(format!(
            "{} has no live schema yet (the projections service creates it); nothing to swap with",
            M::NAME
        )));
    }
    drop_schema(pool, &retired).await?;
    if rebuild.restart {
        drop_schema(pool, &shadow).await?;
    }
    shadow
        .migrate(&pool.connect_options(), M::migrator())
        .await?;
    let projector = projector::<M>(rebuild, &shadow);
    let resumed_from = sum(&positions(&mut *pool.acquire().await?, &shadow).await?);
    let mut records = follow_live::<M>(rebuild, &projector, &live, progress).await?;

    // Hold the live model still: the last records, the comparison, the swap.
    let mut tx = pool.begin().await?;
    bookkeeping::lock_alone(&mut tx, &live).await?;
    let targets = positions(&mut tx, &live).await?;
    let behind = distance(&positions(&mut tx, &shadow).await?, &targets);
    progress.phase("final catch-up, live model held", behind);
    records += build_to::<M>(
        rebuild,
        &projector,
        &targets,
        Applier::OwnTransactions,
        progress,
    )
    .await?;
    let built = positions(&mut tx, &shadow).await?;
    progress.phase("comparing", 0);
    let live_sum = checksum::of(&mut tx, &live).await?;
    let rebuilt = checksum::of(&mut tx, &shadow).await?;
    let comparable = same_positions(&built, &targets);
    swap_or_drop(tx, pool, [&live, &shadow, &retired], swap).await?;
    Ok(report::<M>(
        "blue-green",
        (resumed_from, records, started),
        &built,
        (Some(live_sum), rebuilt, comparable),
        swap,
    ))
}

/// With `swap`, renames the live schema to `retired` and the shadow to live, commits and
/// drops the retired one; otherwise rolls back and drops the shadow.
async fn swap_or_drop(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pool: &PgPool,
    [live, shadow, retired]: [&Schema; 3],
    swap: bool,
) -> Result<(), ProjectionError> {
    if swap {
        rename(&mut tx, live, retired).await?;
        rename(&mut tx, shadow, live).await?;
        tx.commit().await?;
        drop_retired(pool, retired).await;
    } else {
        tx.rollback().await?;
        drop_schema(pool, shadow).await?;
    }
    Ok(())
}

/// Builds the shadow up to where the live model is, while it moves on: a round per pass,
/// until the shadow is close enough to hold the live model for the rest (or the rounds run
/// out); the records applied.
async fn follow_live<M: ReadModel>(
    rebuild: &Rebuild,
    projector: &Projector<M>,
    live: &Schema,
    progress: &dyn Progress,
) -> Result<u64, ProjectionError> {
    let pool = &rebuild.pool;
    let mut records = 0;
    for round in 0..CATCH_UP_ROUNDS {
        let targets = positions(&mut *pool.acquire().await?, live).await?;
        let behind = distance(
            &positions(&mut *pool.acquire().await?, projector.schema()).await?,
            &targets,
        );
        if round > 0 && behind < HOLD_BELOW {
            break;
        }
        let phase = if round == 0 {
            "building"
        } else {
            "catching up"
        };
        progress.phase(phase, behind);
        records += build_to::<M>(
            rebuild,
            projector,
            &targets,
            Applier::OwnTransactions,
            progress,
        )
        .await?;
    }
    Ok(records)
}

async fn in_place<M: ReadModel>(
    rebuild: &Rebuild,
    progress: &dyn Progress,
) -> Result<RebuildReport, ProjectionError> {
    let started = Instant::now();
    let live = Schema::live(M::NAME);
    live.migrate(&rebuild.pool.connect_options(), M::migrator())
        .await?;
    let projector = projector::<M>(rebuild, &live);
    let mut tx = rebuild.pool.begin().await?;
    bookkeeping::lock_alone(&mut tx, &live).await?;
    let before = positions(&mut tx, &live).await?;
    let live_sum = checksum::of(&mut tx, &live).await?;
    clear(&mut tx, &live).await?;
    // The log's end now, read while the live projector is held: never short of it.
    let targets = log_ends::<M>(rebuild).await?;
    progress.phase("rebuilding in place, live projector held", sum(&targets));
    let records = build_to::<M>(
        rebuild,
        &projector,
        &targets,
        Applier::Within(&mut tx),
        progress,
    )
    .await?;
    let built = positions(&mut tx, &live).await?;
    let rebuilt = checksum::of(&mut tx, &live).await?;
    tx.commit().await?;
    Ok(report::<M>(
        "in-place",
        (0, records, started),
        &built,
        (Some(live_sum), rebuilt, same_positions(&before, &built)),
        true,
    ))
}

fn report<M: ReadModel>(
    mode: &'static str,
    (resumed_from, records, started): (u64, u64, Instant),
    built: &Positions,
    (live, rebuilt, comparable): (Option<Checksum>, Checksum, bool),
    swapped: bool,
) -> RebuildReport {
    let seconds = started.elapsed().as_secs_f64();
    let differing_tables = live
        .as_ref()
        .map(|live| live.differences(&rebuilt))
        .unwrap_or_default();
    RebuildReport {
        read_model: M::NAME.to_owned(),
        mode,
        resumed_from,
        records,
        seconds,
        records_per_second: if seconds > 0.0 {
            records as f64 / seconds
        } else {
            0.0
        },
        positions: built
            .iter()
            .map(|((topic, partition), next)| (format!("{topic}/{partition}"), *next))
            .collect(),
        identical: comparable.then_some(differing_tables.is_empty()),
        live,
        rebuilt,
        differing_tables,
        swapped,
    }
}

fn projector<M: ReadModel>(rebuild: &Rebuild, schema: &Schema) -> Projector<M> {
    let metrics = ProjectorMetrics::register(&mut Registry::default());
    let config = ProjectorConfig {
        kafka: rebuild.kafka.clone(),
        topics: rebuild.topics.clone(),
        batch_max: rebuild.batch_max,
    };
    Projector::new(rebuild.pool.clone(), schema.clone(), config, metrics)
}

/// Next offset per partition.
type Positions = BTreeMap<TopicPartition, i64>;

/// Where `schema` stands in the log (its checkpoints).
async fn positions(conn: &mut PgConnection, schema: &Schema) -> Result<Positions, sqlx::Error> {
    Ok(bookkeeping::checkpoints(conn, schema)
        .await?
        .into_iter()
        .map(|c| ((c.topic, c.partition), c.next_offset))
        .collect())
}

/// The end of every partition of the model's topics.
async fn log_ends<M: ReadModel>(rebuild: &Rebuild) -> Result<Positions, EventStoreError> {
    let mut ends = Positions::new();
    for topic in Projector::<M>::topics(&rebuild.topics) {
        for (partition, end) in scan::ends(&rebuild.kafka, &topic, rebuild.partitions).await? {
            ends.insert((topic.clone(), partition), end);
        }
    }
    Ok(ends)
}

/// Whether `a` and `b` stand at the same place (a partition absent from one is at 0).
fn same_positions(a: &Positions, b: &Positions) -> bool {
    let at = |p: &Positions, key: &TopicPartition| p.get(key).copied().unwrap_or(0);
    a.keys().chain(b.keys()).all(|key| at(a, key) == at(b, key))
}

fn sum(positions: &Positions) -> u64 {
    positions.values().map(|o| o.unsigned_abs()).sum()
}

/// Records between `from` and `to`, over the partitions of `to`.
fn distance(from: &Positions, to: &Positions) -> u64 {
    to.iter()
        .map(|(key, end)| {
            (end - from.get(key).copied().unwrap_or(0))
                .max(0)
                .unsigned_abs()
        })
        .sum()
}

/// Where the batches of a build go.
enum Applier<'c> {
    /// Each batch its own transaction (blue/green: resumable, the shadow is nobody's).
    OwnTransactions,
    /// Every batch inside the caller's transaction (in place).
    Within(&'c mut PgConnection),
}

/// Applies the model's records from where `projector`'s schema stands up to `targets`,
/// then marks every target reached (a partition may end in offsets no record fills).
async fn build_to<M: ReadModel>(
    rebuild: &Rebuild,
    projector: &Projector<M>,
    targets: &Positions,
    mut applier: Applier<'_>,
    progress: &dyn Progress,
) -> Result<u64, ProjectionError> {
    let from = applier.positions(&rebuild.pool, projector.schema()).await?;
    let mut records_read = 0u64;
    for topic in Projector::<M>::topics(&rebuild.topics) {
        let ranges = ranges_of(&topic, &from, targets);
        let log = LogScan::open(&rebuild.kafka, &topic, &ranges)?;
        // While one batch is written, the next is fetched and decoded in a task of its
        // own (as the live reader does when behind); batches still apply in log order.
        let mut fetching = (!log.is_done()).then(|| tokio::spawn(scan(log, rebuild.batch_max)));
        while let Some(task) = fetching.take() {
            let (log, scanned) = match task.await {
                Ok(done) => done,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            let (mut records, next_offsets) = scanned?;
            if !log.is_done() {
                fetching = Some(tokio::spawn(scan(log, rebuild.batch_max)));
            }
            if records.is_empty() {
                continue;
            }
            let read = records.len() as u64;
            applier
                .apply(projector, &mut records, &next_offsets)
                .await?;
            records_read += read;
            progress.advance(read);
        }
        let reached: Positions = ranges
            .iter()
            .filter_map(|(p, r)| {
                r.to.filter(|to| *to > 0)
                    .map(|to| ((topic.clone(), *p), to))
            })
            .collect();
        applier
            .mark_reached(&rebuild.pool, projector.schema(), &reached)
            .await?;
    }
    Ok(records_read)
}

/// A batch of the scan, decoded, with the next offset of each partition it read.
type Scanned = Result<(Vec<event_store::reader::Record>, Positions), EventStoreError>;

/// The next batch of `log` (at most `max` records), and the scan back: it owns the scan
/// so that it can run as a task of its own while the previous batch is written.
async fn scan(mut log: LogScan, max: usize) -> (LogScan, Scanned) {
    let batch = log
        .next_batch(max, std::time::Duration::from_millis(500))
        .await;
    let scanned = batch.map(|batch| {
        let mut next_offsets = BTreeMap::new();
        for record in &batch {
            next_offsets.insert((record.topic.clone(), record.partition), record.offset + 1);
        }
        let records = batch.into_iter().map(record_of_scanned).collect();
        (records, next_offsets)
    });
    (log, scanned)
}

/// The offsets of `topic`'s partitions to read: from where the build stands to its
/// target.
fn ranges_of(topic: &str, from: &Positions, targets: &Positions) -> BTreeMap<i32, Range> {
    targets
        .iter()
        .filter(|((t, _), _)| t == topic)
        .map(|((_, partition), to)| {
            let start = from
                .get(&(topic.to_owned(), *partition))
                .copied()
                .unwrap_or(0);
            (
                *partition,
                Range {
                    from: start,
                    to: Some(*to),
                },
            )
        })
        .collect()
}

impl Applier<'_> {
    /// Where `schema` stands, read where the batches go.
    async fn positions(
        &mut self,
        pool: &PgPool,
        schema: &Schema,
    ) -> Result<Positions, sqlx::Error> {
        match self {
            Self::OwnTransactions => positions(&mut *pool.acquire().await?, schema).await,
            Self::Within(tx) => positions(tx, schema).await,
        }
    }

    async fn apply<M: ReadModel>(
        &mut self,
        projector: &Projector<M>,
        records: &mut Vec<event_store::reader::Record>,
        next_offsets: &Positions,
    ) -> Result<(), ProjectionError> {
        match self {
            Self::OwnTransactions => projector.apply(None, records, next_offsets).await?,
            Self::Within(tx) => projector.apply_in(tx, None, records, next_offsets).await?,
        };
        Ok(())
    }

    /// Marks every partition of `reached` read up to its offset (the last offsets of a
    /// partition may be ones no record fills).
    async fn mark_reached(
        &mut self,
        pool: &PgPool,
        schema: &Schema,
        reached: &Positions,
    ) -> Result<(), sqlx::Error> {
        let reached_at = std::collections::HashMap::new();
        match self {
            Self::OwnTransactions => {
                let mut conn = pool.acquire().await?;
                bookkeeping::store_checkpoints(&mut conn, schema, reached, &reached_at).await
            }
            Self::Within(tx) => {
                bookkeeping::store_checkpoints(tx, schema, reached, &reached_at).await
            }
        }
    }
}

/// Deletes everything the model holds in `schema`, inside the caller's transaction:
/// readers see the old rows until it commits (rows are deleted, not truncated, for that).
async fn clear(tx: &mut PgConnection, schema: &Schema) -> Result<(), sqlx::Error> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = $1 AND table_type = 'BASE TABLE'
           AND table_name NOT IN ('_sqlx_migrations', '_bookkeeping_migrations')",
    )
    .bind(schema.name())
    .fetch_all(&mut *tx)
    .await?;
    for table in tables {
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {}.\"{}\"",
            schema.name(),
            table.replace('"', "\"\"")
        )))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

async fn schema_exists(pool: &PgPool, schema: &Schema) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema.name())
        .fetch_one(pool)
        .await
}

async fn drop_schema(pool: &PgPool, schema: &Schema) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        schema.name()
    )))
    .execute(pool)
    .await?;
    Ok(())
}

async fn rename(tx: &mut PgConnection, from: &Schema, to: &Schema) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER SCHEMA {} RENAME TO {}",
        from.name(),
        to.name()
    )))
    .execute(tx)
    .await?;
    Ok(())
}

/// Drops the swapped-out schema once the queries still reading it are done; waits a
/// bounded time for them, and otherwise leaves it to the next rebuild.
async fn drop_retired(pool: &PgPool, retired: &Schema) {
    for _ in 0..10 {
        let dropped = async {
            let mut tx = pool.begin().await?;
            sqlx::query("SET LOCAL lock_timeout = '2s'")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                retired.name()
            )))
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await;
        match dropped {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(schema = %retired, error = %e, "retired schema not dropped yet")
            }
        }
    }
    tracing::warn!(schema = %retired, "retired schema left in place; the next rebuild drops it");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(entries: &[(&str, i32, i64)]) -> Positions {
        entries
            .iter()
            .map(|(t, p, o)| (((*t).to_owned(), *p), *o))
            .collect()
    }

    #[test]
    fn a_partition_missing_on_one_side_stands_at_zero() {
        let live = at(&[("orders.events", 0, 5)]);
        assert!(same_positions(
            &live,
            &at(&[("orders.events", 0, 5), ("orders.events", 1, 0)])
        ));
        assert!(!same_positions(
            &live,
            &at(&[("orders.events", 0, 5), ("orders.events", 1, 2)])
        ));
        assert!(!same_positions(&live, &at(&[("orders.events", 0, 4)])));
        assert_eq!(
            distance(&at(&[("t", 0, 3)]), &at(&[("t", 0, 5), ("t", 1, 2)])),
            4
        );
    }
}
