//! An aggregate's events read back from the log through the event index, and an order's or
//! a user's state at a version or a time, folded from them with the projector's own fold.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use event_store::lookup;
use event_store::position::Position;
use schemas::EventDocument;
use serde::Serialize;
use serde_json::Value;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::QueryState;
use schemas::MessageFamily;
use service_runtime::query::QueryError;
use service_runtime::query::{Params, path_id};

use crate::projector::ReadModel;
use crate::read_models::event_index::IndexedEvent;

/// How much of an aggregate's history.
#[derive(Clone, Copy, Debug)]
pub enum Upto {
    All,
    Version(u64),
    Time(DateTime<Utc>),
}

/// The indexed events of an aggregate up to `upto`, read from the log, in version order.
pub async fn events_of(
    state: &QueryState,
    aggregate_type: &str,
    id: &str,
    upto: Upto,
) -> Result<Vec<(IndexedEvent, EventDocument)>, QueryError> {
    let table = state.schema("event_index").table("events");
    let (version, time) = match upto {
        Upto::All => (None, None),
        Upto::Version(v) => (Some(i64::try_from(v).unwrap_or(i64::MAX)), None),
        Upto::Time(t) => (None, Some(t)),
    };
    let indexed: Vec<IndexedEvent> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT * FROM {table} WHERE aggregate_type = $1 AND aggregate_id = $2
           AND ($3::bigint IS NULL OR version <= $3)
           AND ($4::timestamptz IS NULL OR occurred_at <= $4)
         ORDER BY version"
    )))
    .bind(aggregate_type)
    .bind(id)
    .bind(version)
    .bind(time)
    .fetch_all(&state.pool)
    .await?;
    let positions: Vec<(String, i32, i64)> = indexed
        .iter()
        .map(|e| (e.topic.clone(), e.partition, e.offset))
        .collect();
    let mut found = lookup::read_at(&state.kafka, &positions).await?;
    indexed
        .into_iter()
        .map(|entry| {
            let key = (entry.topic.clone(), entry.partition, entry.offset);
            let bytes = found.remove(&key).unwrap_or_default();
            let document = EventDocument::from_json(&bytes).map_err(|e| {
                QueryError::Unavailable(format!(
                    "the record at {}/{}@{} is not an event: {e}",
                    entry.topic, entry.partition, entry.offset
                ))
            })?;
            Ok((entry, document))
        })
        .collect()
}

/// One event as history shows it: as it was written, with where it is in the log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub id: Uuid,
    pub time: DateTime<Utc>,
    pub schema_version: u32,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub command_id: Uuid,
    /// The token a query can wait for, and where a console finds the record.
    pub position: String,
    /// The event's payload, as its `type` and `schema_version` define it.
    pub data: Value,
}

/// An order's events, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    pub order_id: Uuid,
    pub events: Vec<HistoryEntry>,
}

/// `GET /v1/orders/{id}/history`
#[utoipa::path(
    get, path = "/v1/orders/{id}/history", tag = "orders",
    description = "The events of one order, in order.",
    params(("id" = Uuid, Path, description = "the order"), ("min_position" = Option<String>, Query, description = "a position a command returned, such as `orders:3:17`: wait until the read model has passed it", pattern = "^(users|user-emails|orders|payments|notifications):[0-9]{1,9}:[0-9]{1,18}$")),
    responses(
        (status = 200, description = "found", body = History),
        (status = 404, description = "unknown id"),
        (status = 401, description = "no valid API key"),
        (status = 422, description = "invalid parameters (problem+json lists every one)"),
        (status = 429, description = "rate limited"),
        (status = 503, description = "Postgres unavailable; retry"),
        (status = 504, description = "the read model did not reach `min_position` in time; the lag is in the problem"),
    ),
    security(("bearer" = []))
)]
pub async fn order_history(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<History>, QueryError> {
    let mut params = Params::new(pairs, &[]);
    let position = params.min_position();
    params.finish()?;
    let id = path_id(&id)?;
    state.wait_for(position.as_ref(), &["event_index"]).await?;
    let events = events_of(&state, "order", &id.to_string(), Upto::All).await?;
    if events.is_empty() {
        return Err(QueryError::NotFound(format!("no order {id}")));
    }
    let events = events
        .into_iter()
        .map(|(entry, document)| HistoryEntry {
            version: entry.version,
            event_type: document.event_type,
            id: entry.event_id,
            time: document.time,
            schema_version: document.schemaversion,
            correlation_id: entry.correlation_id,
            causation_id: entry.causation_id,
            command_id: entry.command_id,
            position: Position {
                service: schemas::orders::OrderEvent::SERVICE.to_owned(),
                partition: entry.partition,
                offset: entry.offset,
            }
            .to_string(),
            data: document.data,
        })
        .collect();
    Ok(Json(History {
        order_id: id,
        events,
    }))
}

/// An aggregate (`kind`: `order`, `user`) as it was at `upto`, folded from its first
/// events with the read model's own fold.
pub async fn as_of<M: ReadModel>(
    state: &QueryState,
    kind: &str,
    id: Uuid,
    upto: Upto,
) -> Result<M::Row, QueryError> {
    let events = events_of(state, kind, &id.to_string(), upto).await?;
    let latest = events.last().map_or(0, |(entry, _)| entry.version);
    let mut row: Option<M::Row> = None;
    for (_, document) in &events {
        if let Some(next) = M::fold(row.as_ref(), document).map_err(QueryError::Unavailable)? {
            row = Some(next);
        }
    }
    let row = row.ok_or_else(|| match upto {
        Upto::Time(t) => {
            QueryError::NotFound(format!("{kind} {id} did not exist at {}", t.to_rfc3339()))
        }
        _ => QueryError::NotFound(format!("no {kind} {id}")),
    })?;
    if let Upto::Version(v) = upto
        && u64::try_from(latest).unwrap_or(0) < v
    {
        return Err(QueryError::NotFound(format!(
            "{kind} {id} has no version {v} (its latest is {latest})"
        )));
    }
    Ok(row)
}
