//! What an operator does with parked records (through `shopctl dead-letters`): list them,
//! retry an aggregate (apply its parked records in order, as far as they go: after a fix
//! was deployed, or once a missing record arrived), or skip the record at its head and
//! retry the rest. Each action is one transaction holding the model's lock, so no batch
//! of the running projector interleaves with it.

use chrono::{DateTime, Utc};
use event_store::gate::Admission;
use schemas::EventDocument;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use event_store::reader::bookkeeping;

use super::{Applied, ReadModel, Schema};
use crate::ProjectionError;

/// One parked record as listed.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ParkedRecord {
    pub aggregate_id: String,
    pub version: Option<i64>,
    pub event_type: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error: String,
    pub parked_at: DateTime<Utc>,
}

/// What a retry did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RetryReport {
    pub applied: usize,
    /// Records that turned out to be duplicates (an earlier copy was applied).
    pub dropped: usize,
    pub still_parked: usize,
    /// Why the first record still parked cannot be applied.
    pub blocked_by: Option<String>,
}

const COLUMNS: &str =
    "aggregate_id, version, event_type, topic, partition, \"offset\", error, parked_at";

/// Parked records, oldest first, optionally of one aggregate.
pub async fn list(
    pool: &PgPool,
    schema: &Schema,
    aggregate: Option<&str>,
    limit: i64,
) -> Result<Vec<ParkedRecord>, sqlx::Error> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM {} WHERE $1::text IS NULL OR aggregate_id = $1
         ORDER BY parked_at, topic, partition, \"offset\" LIMIT $2",
        schema.table("parked")
    )))
    .bind(aggregate)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Applies the parked records of `aggregate` in log order until one still fails.
pub async fn retry<M: ReadModel>(
    pool: &PgPool,
    schema: &Schema,
    aggregate: &str,
) -> Result<RetryReport, ProjectionError> {
    let mut tx = pool.begin().await?;
    bookkeeping::lock_alone(&mut tx, schema).await?;
    let parked = parked_of(&mut tx, schema, aggregate).await?;
    if parked.is_empty() {
        return Err(ProjectionError::NotFound(format!(
            "{aggregate} has no parked records in this read model"
        )));
    }
    let report = resume::<M>(&mut tx, schema, aggregate, parked).await?;
    tx.commit().await?;
    Ok(report)
}

/// Removes the record at the head of `aggregate`'s parked records without applying it,
/// then retries the rest. When the skipped record held the next version, the aggregate
/// moves past that version (the read model knowingly misses that one change).
pub async fn skip<M: ReadModel>(
    pool: &PgPool,
    schema: &Schema,
    aggregate: &str,
) -> Result<(ParkedRecord, RetryReport), ProjectionError> {
    let mut tx = pool.begin().await?;
    bookkeeping::lock_alone(&mut tx, schema).await?;
    let mut parked = parked_of(&mut tx, schema, aggregate).await?;
    if parked.is_empty() {
        return Err(ProjectionError::NotFound(format!(
            "{aggregate} has no parked records in this read model"
        )));
    }
    let (head, _) = parked.remove(0);
    delete(&mut tx, schema, &[&head]).await?;
    let (current, _) = standing::<M>(&mut tx, schema, aggregate).await?;
    let following = parked
        .first()
        .and_then(|(p, _)| p.version)
        .map(i64::unsigned_abs);
    let held_next = match head.version {
        Some(version) => version.unsigned_abs() == current + 1,
        // An unreadable record held the next version when the one after it needs it.
        None => following == Some(current + 2),
    };
    if held_next {
        let versions = [(aggregate.to_owned(), current + 1)].into_iter().collect();
        bookkeeping::store_versions(&mut tx, schema, &versions).await?;
    }
    let report = if parked.is_empty() {
        RetryReport::default()
    } else {
        resume::<M>(&mut tx, schema, aggregate, parked).await?
    };
    tx.commit().await?;
    Ok((head, report))
}

/// A parked record with the bytes a retry decodes.
#[derive(sqlx::FromRow)]
struct WithPayload {
    #[sqlx(flatten)]
    record: ParkedRecord,
    payload: Vec<u8>,
}

async fn parked_of(
    conn: &mut PgConnection,
    schema: &Schema,
    aggregate: &str,
) -> Result<Vec<(ParkedRecord, Vec<u8>)>, sqlx::Error> {
    let rows: Vec<WithPayload> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS}, payload FROM {} WHERE aggregate_id = $1
         ORDER BY topic, partition, \"offset\" FOR UPDATE",
        schema.table("parked")
    )))
    .bind(aggregate)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.record, r.payload)).collect())
}

async fn delete(
    conn: &mut PgConnection,
    schema: &Schema,
    records: &[&ParkedRecord],
) -> Result<(), sqlx::Error> {
    let (mut topics, mut partitions, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
    for r in records {
        topics.push(r.topic.as_str());
        partitions.push(r.partition);
        offsets.push(r.offset);
    }
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {} p USING UNNEST($1::text[], $2::int[], $3::bigint[]) AS u(t, n, o)
         WHERE p.topic = u.t AND p.partition = u.n AND p.\"offset\" = u.o",
        schema.table("parked")
    )))
    .bind(topics)
    .bind(partitions)
    .bind(offsets)
    .execute(conn)
    .await?;
    Ok(())
}

/// The last applied version of `aggregate` (the greater of its row's and the versions
/// table's: a row keeps its aggregate's version) and its row.
async fn standing<M: ReadModel>(
    conn: &mut PgConnection,
    schema: &Schema,
    aggregate: &str,
) -> Result<(u64, Option<M::Row>), sqlx::Error> {
    let keys = [aggregate.to_owned()];
    let stored = bookkeeping::versions(conn, schema, &keys)
        .await?
        .get(aggregate)
        .copied()
        .unwrap_or(0);
    let row = M::load(conn, schema, &keys).await?.remove(aggregate);
    let version = row.as_ref().map_or(0, M::version_of).max(stored);
    Ok((version, row))
}

/// Applies `parked` (in log order) onto the stored state of `aggregate` until one fails.
async fn resume<M: ReadModel>(
    conn: &mut PgConnection,
    schema: &Schema,
    aggregate: &str,
    parked: Vec<(ParkedRecord, Vec<u8>)>,
) -> Result<RetryReport, sqlx::Error> {
    let (version, row) = standing::<M>(conn, schema, aggregate).await?;
    let mut resumed = fold_parked::<M>(&parked, version, row);
    resumed.report.still_parked = parked.len() - resumed.done.len();
    if let Some(error) = &resumed.report.blocked_by {
        note_error(conn, schema, &parked[resumed.done.len()].0, error).await?;
    }
    if resumed.report.applied > 0 {
        let applied: Vec<Applied<'_>> = resumed
            .documents
            .iter()
            .map(|(record, document)| Applied {
                key: aggregate,
                document,
                topic: &record.topic,
                partition: record.partition,
                offset: record.offset,
                new: false,
            })
            .collect();
        let rows = resumed
            .row
            .map(|r| vec![(aggregate.to_owned(), r)])
            .unwrap_or_default();
        M::store(conn, schema, rows, &applied).await?;
        let versions = [(aggregate.to_owned(), resumed.version)]
            .into_iter()
            .collect();
        bookkeeping::store_versions(conn, schema, &versions).await?;
    }
    delete(conn, schema, &resumed.done).await?;
    Ok(resumed.report)
}

/// Parked records folded onto an aggregate, as far as they went.
struct Resumed<'p, R> {
    row: Option<R>,
    version: u64,
    report: RetryReport,
    /// The records dealt with (applied or dropped as duplicates), in order.
    done: Vec<&'p ParkedRecord>,
    /// The events applied, with their records.
    documents: Vec<(&'p ParkedRecord, EventDocument)>,
}

/// The reader rule and the fold over `parked`, from `row` at `version`, stopping at the
/// first record that cannot be decoded, leaves a gap, or fails to fold. No I/O.
fn fold_parked<M: ReadModel>(
    parked: &[(ParkedRecord, Vec<u8>)],
    mut version: u64,
    mut row: Option<M::Row>,
) -> Resumed<'_, M::Row> {
    let mut report = RetryReport::default();
    let mut done = Vec::new();
    let mut documents = Vec::new();
    for (record, payload) in parked {
        let document = match EventDocument::from_json(payload) {
            Ok(document) => document,
            Err(e) => {
                report.blocked_by = Some(e.to_string());
                break;
            }
        };
        match Admission::of(version, document.aggregateversion) {
            Admission::Duplicate { .. } => report.dropped += 1,
            Admission::Gap { last } => {
                report.blocked_by = Some(format!(
                    "gap: version {} follows version {last}",
                    document.aggregateversion
                ));
                break;
            }
            Admission::Next => match M::fold(row.as_ref(), &document) {
                Ok(next) => {
                    row = next.or(row);
                    version = document.aggregateversion;
                    report.applied += 1;
                    documents.push((record, document));
                }
                Err(error) => {
                    report.blocked_by = Some(error);
                    break;
                }
            },
        }
        done.push(record);
    }
    Resumed {
        row,
        version,
        report,
        done,
        documents,
    }
}

/// Records why the parked record `head` still cannot be applied.
async fn note_error(
    conn: &mut PgConnection,
    schema: &Schema,
    head: &ParkedRecord,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {} SET error = $4 WHERE topic = $1 AND partition = $2 AND \"offset\" = $3",
        schema.table("parked")
    )))
    .bind(&head.topic)
    .bind(head.partition)
    .bind(head.offset)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}
