//! The causal tree of one correlation id: request -> events -> saga steps -> commands'
//! events, with times, partitions and offsets. Read from the event index
//! (`read_event_index.events`, every event with its causation) and the saga's outbox
//! (`saga.outbox`, every step with the message that prompted it), so it answers from
//! Postgres without scanning topics.

pub mod tree;

use chrono::{DateTime, Utc};
use event_store::reader::Schema;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};
use tree::{Elsewhere, EventFact, Node, SagaStep};
use uuid::Uuid;

use crate::{InspectionError, Result};

/// What one correlation id caused: how many events and saga steps, and their tree.
#[derive(Clone, Debug, Serialize)]
pub struct Explained {
    pub correlation_id: Uuid,
    pub events: usize,
    pub saga_steps: usize,
    pub tree: Vec<Node>,
}

/// The tree of `correlation`, or `None` when nothing is indexed under it.
pub async fn explain(pool: &PgPool, correlation: Uuid) -> Result<Option<Explained>> {
    let events = events_of(pool, correlation).await?;
    let steps = steps_of(pool, correlation).await?;
    if events.is_empty() && steps.is_empty() {
        return Ok(None);
    }
    let elsewhere = causes_elsewhere(pool, &events, &steps).await?;
    Ok(Some(Explained {
        correlation_id: correlation,
        events: events.len(),
        saga_steps: steps.len(),
        tree: tree::build(&events, &steps, &elsewhere),
    }))
}

/// The columns of an indexed event as [`fact`] reads them.
const EVENT_COLUMNS: &str = "event_id, event_type, aggregate_type, aggregate_id, version, topic,
    partition, \"offset\", occurred_at, causation_id, correlation_id";

type EventRow = (
    Uuid,
    String,
    String,
    String,
    i64,
    String,
    i32,
    i64,
    DateTime<Utc>,
    Uuid,
    Uuid,
);

/// An indexed event and its correlation id.
fn fact(r: EventRow) -> (EventFact, Uuid) {
    let event = EventFact {
        event_id: r.0,
        event_type: r.1,
        aggregate_type: r.2,
        aggregate_id: r.3,
        version: r.4,
        topic: r.5,
        partition: r.6,
        offset: r.7,
        occurred_at: r.8,
        causation_id: r.9,
    };
    (event, r.10)
}

fn index_unreadable(index: &Schema, e: sqlx::Error) -> InspectionError {
    InspectionError::unavailable(
        format!("reading the event index ({})", index.table("events")),
        e,
    )
}

async fn events_of(pool: &PgPool, correlation: Uuid) -> Result<Vec<EventFact>> {
    let index = Schema::live("event_index");
    let rows: Vec<EventRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM {} WHERE correlation_id = $1
         ORDER BY occurred_at, topic, partition, \"offset\"",
        index.table("events")
    )))
    .bind(correlation)
    .fetch_all(pool)
    .await
    .map_err(|e| index_unreadable(&index, e))?;
    Ok(rows.into_iter().map(|r| fact(r).0).collect())
}

/// The events of other requests that made this correlation's saga issue a step, such as the
/// customer's cancellation of the order: looked up among the events of the steps' orders
/// (through the index's key, not a scan).
async fn causes_elsewhere(
    pool: &PgPool,
    events: &[EventFact],
    steps: &[SagaStep],
) -> Result<Vec<Elsewhere>> {
    let (orders, causes) = tree::unknown_causes(events, steps);
    if causes.is_empty() {
        return Ok(Vec::new());
    }
    let index = Schema::live("event_index");
    let rows: Vec<EventRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM {}
         WHERE aggregate_type = 'order' AND aggregate_id = ANY($1) AND event_id = ANY($2)",
        index.table("events")
    )))
    .bind(&orders)
    .bind(&causes)
    .fetch_all(pool)
    .await
    .map_err(|e| index_unreadable(&index, e))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let (event, correlation_id) = fact(r);
            Elsewhere {
                event,
                correlation_id,
            }
        })
        .collect())
}

/// The saga's steps of this correlation; none when no saga ever ran here.
async fn steps_of(pool: &PgPool, correlation: Uuid) -> Result<Vec<SagaStep>> {
    saga_steps(pool, "correlation_id", correlation).await
}

/// The steps the saga of `order` issued (its outbox), oldest first, with the ids of their
/// commands; none when no saga ever ran.
pub async fn steps_of_order(pool: &PgPool, order: Uuid) -> Result<Vec<SagaStep>> {
    saga_steps(pool, "order_id", order).await
}

/// The outbox's steps whose `column` (a name of ours, never input) is `id`.
async fn saga_steps(pool: &PgPool, column: &'static str, id: Uuid) -> Result<Vec<SagaStep>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('saga.outbox') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(outbox_unreadable)?;
    if !exists {
        return Ok(Vec::new());
    }
    type Row = (
        Uuid,
        Uuid,
        String,
        Option<Uuid>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        i32,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT command_id, order_id, step, causation_id, created_at, done_at, attempts, last_error
         FROM saga.outbox WHERE {column} = $1 ORDER BY created_at, command_id"
    )))
    .bind(id)
    .fetch_all(pool)
    .await
    .map_err(outbox_unreadable)?;
    Ok(rows
        .into_iter()
        .map(|r| SagaStep {
            command_id: r.0,
            order_id: r.1,
            step: r.2,
            causation_id: r.3,
            issued_at: r.4,
            done_at: r.5,
            attempts: r.6,
            last_error: r.7,
        })
        .collect())
}

fn outbox_unreadable(e: sqlx::Error) -> InspectionError {
    InspectionError::unavailable("reading the saga's outbox (saga.outbox)", e)
}
