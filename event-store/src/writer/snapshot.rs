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
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::aggregate::Aggregate;
use crate::error::EventStoreError;
use crate::position::Position;
use crate::writer::core::{IdempotencyWindow, Missing, PartitionCore, Slot, SnapshotCut};

/// The Postgres schema of the snapshot tables.
pub const SCHEMA: &str = "event_store";

/// Outcomes per insert statement: a cut after a long replay holds a million of them.
const OUTCOMES_PER_STATEMENT: usize = 50_000;

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

    /// The partition as of its last snapshot, or `None` when it has none. Only the offsets
    /// are read: aggregates and outcomes stay in the store until a command or the tail of
    /// the log needs them ([`Self::recall`]).
    pub async fn load<A: Aggregate>(
        &self,
        partition: i32,
        window: IdempotencyWindow,
    ) -> Result<Option<PartitionCore<A>>, EventStoreError> {
        let mark: Option<(i64, i64)> = sqlx::query_as(
            "SELECT events_offset, outcomes_offset FROM event_store.snapshots \
             WHERE service = $1 AND partition = $2",
        )
        .bind(A::Event::SERVICE)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable("load snapshot"))?;
        Ok(mark
            .map(|(events, outcomes)| PartitionCore::resumed(partition, window, events, outcomes)))
    }

    /// Reads back into `core` what `missing` names, in one round trip: the aggregates the
    /// store holds (one it lacks does not exist yet) and the outcomes still in the window.
    /// How many of each it found: `(aggregates, outcomes)`.
    pub async fn recall<A: Aggregate>(
        &self,
        core: &mut PartitionCore<A>,
        missing: &Missing,
        now: DateTime<Utc>,
    ) -> Result<(usize, usize), EventStoreError> {
        let mut found = (0, 0);
        if missing.aggregates.is_empty() && missing.commands.is_empty() {
            return Ok(found);
        }
        let commands: Vec<uuid::Uuid> = missing.commands.iter().map(|c| c.as_uuid()).collect();
        let rows = sqlx::query(
            "SELECT aggregate_id AS key, version, last_offset, state::text AS body, \
                    NULL::timestamptz AS decided_at \
             FROM event_store.snapshot_aggregates \
             WHERE service = $1 AND partition = $2 AND aggregate_id = ANY($3) \
             UNION ALL \
             SELECT command_id::text, NULL, NULL, outcome::text, decided_at \
             FROM event_store.snapshot_outcomes \
             WHERE service = $1 AND partition = $2 AND command_id = ANY($4) AND decided_at >= $5",
        )
        .bind(A::Event::SERVICE)
        .bind(core.partition)
        .bind(&missing.aggregates)
        .bind(&commands)
        .bind(now - core.window().duration)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable("recall state"))?;
        for row in rows {
            let key: String = row.get("key");
            let body: String = row.get("body");
            match row.get::<Option<DateTime<Utc>>, _>("decided_at") {
                Some(at) => {
                    let command = key.parse::<uuid::Uuid>().map_err(|e| corrupt(&e))?;
                    let outcome = serde_json::from_str(&body).map_err(|e| corrupt(&e))?;
                    core.recall(CommandId(command), outcome, at);
                    found.1 += 1;
                }
                None => {
                    let slot = slot_of::<A>(&row, &body, core.partition)?;
                    core.restore(key, slot);
                    found.0 += 1;
                }
            }
        }
        Ok(found)
    }

    /// Writes a cut in one transaction; rows move only forward.
    pub async fn save<A: Aggregate>(&self, cut: &SnapshotCut<A>) -> Result<(), EventStoreError> {
        let failed = unavailable("save snapshot");
        let mut tx = self.pool.begin().await.map_err(&failed)?;
        save_aggregates(&mut tx, cut).await?;
        save_outcomes(&mut tx, cut).await?;
        sqlx::query(
            "INSERT INTO event_store.snapshots (service, partition, events_offset, outcomes_offset, taken_at) \
             VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (service, partition) DO UPDATE \
             SET events_offset = excluded.events_offset, outcomes_offset = excluded.outcomes_offset, \
                 taken_at = excluded.taken_at \
             WHERE excluded.events_offset >= snapshots.events_offset \
               AND excluded.outcomes_offset >= snapshots.outcomes_offset",
        )
        .bind(A::Event::SERVICE)
        .bind(cut.partition)
        .bind(cut.events_offset)
        .bind(cut.outcomes_offset)
        .execute(&mut *tx)
        .await
        .map_err(&failed)?;
        tx.commit().await.map_err(failed)
    }
}

/// An aggregate's row, as the writer holds it.
fn slot_of<A: Aggregate>(
    row: &PgRow,
    state: &str,
    partition: i32,
) -> Result<Slot<A>, EventStoreError> {
    let last_offset: Option<i64> = row.get("last_offset");
    Ok(Slot {
        version: u64::try_from(row.get::<i64, _>("version")).unwrap_or_default(),
        state: serde_json::from_str(state).map_err(|e| corrupt(&e))?,
        last_position: last_offset.map(|offset| Position {
            service: A::Event::SERVICE.to_owned(),
            partition,
            offset,
        }),
        used: 0,
    })
}

/// Upserts the cut's aggregates; a row only moves to a newer version.
async fn save_aggregates<A: Aggregate>(
    tx: &mut PgConnection,
    cut: &SnapshotCut<A>,
) -> Result<(), EventStoreError> {
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
        .map_err(|e| corrupt(&e))?;
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
    .bind(A::Event::SERVICE)
    .bind(cut.partition)
    .bind(&ids)
    .bind(&versions)
    .bind(&offsets)
    .bind(&states)
    .execute(tx)
    .await
    .map_err(unavailable("save snapshot"))?;
    Ok(())
}

/// Inserts the cut's outcomes (the first one of a command wins, as in memory) and deletes
/// those out of the idempotency window.
async fn save_outcomes<A: Aggregate>(
    tx: &mut PgConnection,
    cut: &SnapshotCut<A>,
) -> Result<(), EventStoreError> {
    for chunk in cut.outcomes.chunks(OUTCOMES_PER_STATEMENT) {
        let commands: Vec<uuid::Uuid> = chunk.iter().map(|(c, _, _)| c.as_uuid()).collect();
        let decided: Vec<DateTime<Utc>> = chunk.iter().map(|(_, _, at)| *at).collect();
        let outcomes = chunk
            .iter()
            .map(|(_, outcome, _)| serde_json::to_string(outcome))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| corrupt(&e))?;
        sqlx::query(
            "INSERT INTO event_store.snapshot_outcomes \
               (service, partition, command_id, decided_at, outcome) \
             SELECT $1, $2, o.command_id, o.decided_at, o.outcome::jsonb \
             FROM UNNEST($3::uuid[], $4::timestamptz[], $5::text[]) \
               AS o(command_id, decided_at, outcome) \
             ON CONFLICT DO NOTHING",
        )
        .bind(A::Event::SERVICE)
        .bind(cut.partition)
        .bind(&commands)
        .bind(&decided)
        .bind(&outcomes)
        .execute(&mut *tx)
        .await
        .map_err(unavailable("save snapshot"))?;
    }
    sqlx::query(
        "DELETE FROM event_store.snapshot_outcomes \
         WHERE service = $1 AND partition = $2 AND decided_at < $3",
    )
    .bind(A::Event::SERVICE)
    .bind(cut.partition)
    .bind(cut.forget_before)
    .execute(tx)
    .await
    .map_err(unavailable("save snapshot"))?;
    Ok(())
}

fn corrupt(e: &dyn std::fmt::Display) -> EventStoreError {
    EventStoreError::Refused {
        operation: "snapshot",
        reason: format!("a snapshot row does not (de)serialize: {e}"),
    }
}

/// A shared handle, as the writers hold it.
pub type Snapshots = Option<Arc<SnapshotStore>>;
