//! The read models: one per service, each with its own schema, consumer group and
//! migrations, plus the index of every event. Each folds events onto rows without I/O
//! ([`crate::projector::ReadModel::fold`]) and loads and stores rows in bulk.

pub mod event_index;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod users;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::{Event, EventDocument, MessageFamily};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::projector::{DbFuture, Schema};

/// The typed event of a document (upcast on the way); an error makes it poison.
pub fn decode<E: MessageFamily>(document: &EventDocument) -> Result<Event<E>, String> {
    document.clone().decode::<E>().map_err(|e| e.to_string())
}

/// The keys that can be row ids (others have no row).
pub fn uuids(keys: &[String]) -> Vec<Uuid> {
    keys.iter().filter_map(|k| k.parse().ok()).collect()
}

/// Cents as Postgres stores them.
pub fn cents(amount: u64) -> i64 {
    i64::try_from(amount).unwrap_or(i64::MAX)
}

/// A version as Postgres stores it.
pub fn stored_version(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// An event of `what` that needs a row which is not there (or one that must not be).
pub fn out_of_order(event: &EventDocument, what: &str) -> String {
    format!(
        "{} (version {}) cannot apply to {what} {}",
        event.event_type, event.aggregateversion, event.subject
    )
}

/// When an event happened, at the precision Postgres keeps (microseconds), so that a row
/// folded in memory (time travel) equals the stored one.
pub fn time_of(event: &EventDocument) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(event.time.timestamp_micros()).unwrap_or(event.time)
}

/// The rows of `table` whose `id` column is one of `keys`, by key: every model's `load`.
pub fn load_by_id<'a, R>(
    conn: &'a mut PgConnection,
    schema: &'a Schema,
    (table, id): (&'static str, &'static str),
    keys: &'a [String],
    id_of: fn(&R) -> Uuid,
) -> DbFuture<'a, HashMap<String, R>>
where
    R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin + 'a,
{
    Box::pin(async move {
        let rows: Vec<R> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT * FROM {} WHERE {id} = ANY($1)",
            schema.table(table)
        )))
        .bind(uuids(keys))
        .fetch_all(conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (id_of(&r).to_string(), r))
            .collect())
    })
}
