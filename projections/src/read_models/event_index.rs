//! The index of every event: (aggregate type, aggregate id, version) -> where the event is
//! in the log, when it happened and what caused it. History and time-travel queries read
//! the events back from the log at these positions; it needs nothing but the envelope, so
//! it indexes every service's events, whatever their payload.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::EventDocument;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use super::stored_version;
use crate::projector::{Applied, CopyRows, DbFuture, ReadModel, Schema};

/// The columns of an indexed event, in the order `store` and `copy_new` give them.
const COLUMNS: &str = "aggregate_type, aggregate_id, version, event_type, event_id, topic, partition, \"offset\", occurred_at, correlation_id, causation_id, command_id";

/// One indexed event.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct IndexedEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: i64,
    pub event_type: String,
    pub event_id: Uuid,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub command_id: Uuid,
}

#[derive(Debug)]
pub struct EventIndex;

impl ReadModel for EventIndex {
    const NAME: &'static str = "event_index";
    const SERVICES: &'static [&'static str] = &schemas::catalog::SERVICES;
    const TABLE: &'static str = "events";
    /// Per aggregate, the index needs only the last version it holds.
    type Row = u64;

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/event_index")
    }

    /// Aggregates of different types may share ids: the key names both.
    fn key(document: &EventDocument) -> String {
        format!("{}/{}", document.aggregatetype, document.subject)
    }

    fn fold(_: Option<&u64>, document: &EventDocument) -> Result<Option<u64>, String> {
        Ok(Some(document.aggregateversion))
    }

    fn version_of(row: &u64) -> u64 {
        *row
    }

    /// The last version indexed of each of `keys`, read from the events themselves.
    fn load<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        keys: &'a [String],
    ) -> DbFuture<'a, HashMap<String, u64>> {
        Box::pin(async move {
            let (types, ids): (Vec<&str>, Vec<&str>) =
                keys.iter().filter_map(|key| key.split_once('/')).unzip();
            let rows: Vec<(String, String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT e.aggregate_type, e.aggregate_id, max(e.version)
                 FROM UNNEST($1::text[], $2::text[]) AS k(t, i)
                 JOIN {} e ON e.aggregate_type = k.t AND e.aggregate_id = k.i
                 GROUP BY 1, 2",
                schema.table("events")
            )))
            .bind(types)
            .bind(ids)
            .fetch_all(conn)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(t, i, version)| (format!("{t}/{i}"), version.unsigned_abs()))
                .collect())
        })
    }

    fn store<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        _rows: Vec<(String, u64)>,
        applied: &'a [Applied<'a>],
    ) -> DbFuture<'a, ()> {
        Box::pin(async move {
            let mut c = Columns::default();
            for a in applied.iter().filter(|a| !a.new) {
                let d = a.document;
                c.aggregate_type.push(d.aggregatetype.as_str());
                c.aggregate_id.push(d.subject.as_str());
                c.version.push(stored_version(d.aggregateversion));
                c.event_type.push(d.event_type.as_str());
                c.event_id.push(d.id.as_uuid());
                c.topic.push(a.topic);
                c.partition.push(a.partition);
                c.offset.push(a.offset);
                c.occurred_at.push(d.time);
                c.correlation_id.push(d.correlationid.as_uuid());
                c.causation_id.push(d.causationid);
                c.command_id.push(d.commandid.as_uuid());
            }
            if c.event_id.is_empty() {
                return Ok(());
            }
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} ({COLUMNS})
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::uuid[], $6::text[],
                                      $7::int[], $8::bigint[], $9::timestamptz[], $10::uuid[], $11::uuid[], $12::uuid[])
                 ON CONFLICT DO NOTHING",
                schema.table("events")
            )))
            .bind(c.aggregate_type)
            .bind(c.aggregate_id)
            .bind(c.version)
            .bind(c.event_type)
            .bind(c.event_id)
            .bind(c.topic)
            .bind(c.partition)
            .bind(c.offset)
            .bind(c.occurred_at)
            .bind(c.correlation_id)
            .bind(c.causation_id)
            .bind(c.command_id)
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    fn copy_new(schema: &Schema, _: Vec<(String, u64)>, applied: &[Applied<'_>]) -> CopyRows {
        let mut copy = CopyRows::new(schema.table("events"), COLUMNS);
        for a in applied.iter().filter(|a| a.new) {
            let d = a.document;
            copy.row(12)
                .text(&d.aggregatetype)
                .text(&d.subject)
                .int8(stored_version(d.aggregateversion))
                .text(&d.event_type)
                .uuid(d.id.as_uuid())
                .text(a.topic)
                .int4(a.partition)
                .int8(a.offset)
                .timestamptz(d.time)
                .uuid(d.correlationid.as_uuid())
                .uuid(d.causationid)
                .uuid(d.commandid.as_uuid());
        }
        copy
    }
}

#[derive(Default)]
struct Columns<'a> {
    aggregate_type: Vec<&'a str>,
    aggregate_id: Vec<&'a str>,
    version: Vec<i64>,
    event_type: Vec<&'a str>,
    event_id: Vec<Uuid>,
    topic: Vec<&'a str>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    occurred_at: Vec<DateTime<Utc>>,
    correlation_id: Vec<Uuid>,
    causation_id: Vec<Uuid>,
    command_id: Vec<Uuid>,
}
