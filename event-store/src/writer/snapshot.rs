//! Snapshots of partition writers in Postgres, so that a new owner of a partition loads its
//! state and replays only the tail of the log instead of its whole history.
//!
//! Snapshots are incremental: the writer hands over a [`SnapshotCut`] (the aggregates and
//! outcomes that changed since the previous cut, and the offsets they reflect), and the store
//! upserts them in one transaction. Every write only moves forward (a newer version, a later
//! offset), so a writer that lost its partition and writes late cannot roll a snapshot back.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use schemas::{CommandId, MessageFamily};
use sqlx::migrate::Migrator;
use sqlx::{PgPool, Row};

use crate::aggregate::Aggregate;
use crate::error::EventStoreError;
use crate::outcome::Outcome;
use crate::position::Position;
use crate::writer::core::{IdempotencyWindow, PartitionCore, Slot};

/// The Postgres schema of the snapshot tables.
pub const SCHEMA: &str = "event_store";

/// Outcomes per stored chunk: small enough to write in one statement, few enough rows
/// that loading a million of them is a handful of reads.
const OUTCOMES_PER_CHUNK: usize = 50_000;

/// What changed in one partition since the previous cut, as of its offsets.
#[derive(Debug)]
pub struct SnapshotCut<A: Aggregate> {
    pub partition: i32,
    pub events_offset: i64,
    pub outcomes_offset: i64,
    pub aggregates: Vec<(String, Slot<A>)>,
    pub outcomes: Vec<(CommandId, Outcome<A::Rejection>, DateTime<Utc>)>,
    /// Outcomes decided before this are out of the idempotency window: delete them.
    pub forget_before: DateTime<Utc>,
}

/// Where snapshots live.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    pool: PgPool,
}

fn unavailable(operation: &'static str) -> impl Fn(sqlx::Error) -> EventStoreError {
    move |e| EventStoreError::Unavailable {
        operation,
        reason: e.to_string(),
    }
}

impl SnapshotStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The snapshot tables' migrations, kept with their bookkeeping in [`SCHEMA`], so they
    /// never mix with the migrations of the service that hosts the writers.
    pub fn migrator() -> Migrator {
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.dangerous_set_table_name(format!("{SCHEMA}._sqlx_migrations"));
        migrator.create_schema(SCHEMA);
        migrator
    }

    /// The partition's state as of its last snapshot, or `None` when it has none.
    pub async fn load<A: Aggregate>(
        &self,
        partition: i32,
        window: IdempotencyWindow,
    ) -> Result<Option<PartitionCore<A>>, EventStoreError> {
        let service = A::Event::SERVICE;
        let Some(mark) = sqlx::query(
            "SELECT events_offset, outcomes_offset FROM event_store.snapshots \
             WHERE service = $1 AND partition = $2",
        )
        .bind(service)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable("load snapshot"))?
        else {
            return Ok(None);
        };
        let mut core = PartitionCore::<A>::new(partition, window);
        core.next_offset = mark.get("events_offset");
        core.outcomes_next_offset = mark.get("outcomes_offset");

        let aggregates = sqlx::query(
            "SELECT aggregate_id, version, last_offset, state::text AS state \
             FROM event_store.snapshot_aggregates WHERE service = $1 AND partition = $2",
        )
        .bind(service)
        .bind(partition)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable("load snapshot"))?;
        for row in aggregates {
            let state: String = row.get("state");
            let last_offset: Option<i64> = row.get("last_offset");
            let slot = Slot::<A> {
                version: u64::try_from(row.get::<i64, _>("version")).unwrap_or_default(),
                state: serde_json::from_str(&state).map_err(corrupt)?,
                last_position: last_offset.map(|offset| Position {
                    service: service.to_owned(),
                    partition,
                    offset,
                }),
            };
            core.restore(row.get("aggregate_id"), slot);
        }

        let chunks = sqlx::query(
            "SELECT outcomes FROM event_store.snapshot_outcome_chunks \
             WHERE service = $1 AND partition = $2 ORDER BY chunk",
        )
        .bind(service)
        .bind(partition)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable("load snapshot"))?;
        for row in chunks {
            let bytes: Vec<u8> = row.get("outcomes");
            let outcomes: Vec<(CommandId, Outcome<A::Rejection>, DateTime<Utc>)> =
                serde_json::from_slice(&bytes).map_err(corrupt)?;
            for (command, outcome, at) in outcomes {
                core.remember(command, outcome, at);
            }
        }
        core.mark_clean();
        Ok(Some(core))
    }

    /// Writes a cut in one transaction; rows move only forward.
    pub async fn save<A: Aggregate>(&self, cut: &SnapshotCut<A>) -> Result<(), EventStoreError> {
        let service = A::Event::SERVICE;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(unavailable("save snapshot"))?;
        let ids: Vec<&str> = cut.aggregates.iter().map(|(id, _)| id.as_str()).collect();
        let versions: Vec<i64> = cut
            .aggregates
            .iter()
            .map(|(_, s)| i64::try_from(s.version).unwrap_or(i64::MAX))
            .collect();
        let offsets: Vec<Option<i64>> = cut
            .aggregates
            .iter()
            .map(|(_, s)| s.last_position.as_ref().map(|p| p.offset))
            .collect();
        let states = cut
            .aggregates
            .iter()
            .map(|(_, s)| serde_json::to_string(&s.state))
            .collect::<Result<Vec<String>, _>>()
            .map_err(corrupt)?;
        sqlx::query(
            "INSERT INTO event_store.snapshot_aggregates \
               (service, partition, aggregate_id, version, last_offset, state) \
             SELECT $1, $2, a.id, a.version, a.last_offset, a.state::jsonb \
             FROM UNNEST($3::text[], $4::bigint[], $5::bigint[], $6::text[]) \
               AS a(id, version, last_offset, state) \
             ON CONFLICT (service, partition, aggregate_id) DO UPDATE \
             SET version = excluded.version, last_offset = excluded.last_offset, state = excluded.state \
             WHERE excluded.version > snapshot_aggregates.version",
        )
        .bind(service)
        .bind(cut.partition)
        .bind(&ids)
        .bind(&versions)
        .bind(&offsets)
        .bind(&states)
        .execute(&mut *tx)
        .await
        .map_err(unavailable("save snapshot"))?;

        for chunk in cut.outcomes.chunks(OUTCOMES_PER_CHUNK) {
            let newest = chunk.iter().map(|(_, _, at)| *at).max();
            let bytes = serde_json::to_vec(chunk).map_err(corrupt)?;
            sqlx::query(
                "INSERT INTO event_store.snapshot_outcome_chunks \
                   (service, partition, newest, outcomes) VALUES ($1, $2, $3, $4)",
            )
            .bind(service)
            .bind(cut.partition)
            .bind(newest)
            .bind(bytes)
            .execute(&mut *tx)
            .await
            .map_err(unavailable("save snapshot"))?;
        }
        sqlx::query(
            "DELETE FROM event_store.snapshot_outcome_chunks \
             WHERE service = $1 AND partition = $2 AND newest < $3",
        )
        .bind(service)
        .bind(cut.partition)
        .bind(cut.forget_before)
        .execute(&mut *tx)
        .await
        .map_err(unavailable("save snapshot"))?;

        sqlx::query(
            "INSERT INTO event_store.snapshots (service, partition, events_offset, outcomes_offset, taken_at) \
             VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (service, partition) DO UPDATE \
             SET events_offset = excluded.events_offset, outcomes_offset = excluded.outcomes_offset, \
                 taken_at = excluded.taken_at \
             WHERE excluded.events_offset >= snapshots.events_offset \
               AND excluded.outcomes_offset >= snapshots.outcomes_offset",
        )
        .bind(service)
        .bind(cut.partition)
        .bind(cut.events_offset)
        .bind(cut.outcomes_offset)
        .execute(&mut *tx)
        .await
        .map_err(unavailable("save snapshot"))?;
        tx.commit().await.map_err(unavailable("save snapshot"))
    }
}

fn corrupt(e: serde_json::Error) -> EventStoreError {
    EventStoreError::Refused {
        operation: "snapshot",
        reason: format!("state does not (de)serialize: {e}"),
    }
}

/// A shared handle, as the writers hold it.
pub type Snapshots = Option<Arc<SnapshotStore>>;
