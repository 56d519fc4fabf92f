//! Streams: the shop's topics with their partitions' ends and retention, events found
//! through the event index (by aggregate id, event id or correlation id) with their
//! records, and live tails of a topic as server-sent events.
//!
//! Records are shown as they are in the log: personal fields stay sealed here (a client
//! key may look), unlike `shopctl read`, which opens them for whoever holds the database.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use event_store::lookup;
use event_store::scan::{self, LogScan, Range, ScannedRecord};
use futures_util::Stream;
use inspection::record::{as_json, value_of};
use inspection::topics::TopicView;
use projections::projector::Schema;
use projections::read_models::event_index::IndexedEvent;
use serde::Serialize;
use serde_json::Value;
use service_runtime::problem::Problem;
use service_runtime::query::Params;
use service_runtime::query::QueryError;
use sqlx::AssertSqlSafe;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Console;

/// How long one look at the broker may take before the console answers 503.
pub const BROKER_WITHIN: Duration = Duration::from_secs(5);

/// Most events one search shows.
const SEARCH_MAX: i64 = 100;

/// Most records a live tail starts with, per partition.
const TAIL_LAST_MAX: usize = 100;

type Pairs = Query<Vec<(String, String)>>;

/// `what` within [`BROKER_WITHIN`], its failure (or its slowness) as a 503.
pub async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, QueryError> {
    within(BROKER_WITHIN, what, work).await
}

/// `what` within `limit`, its failure (or its slowness) as a 503.
pub async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, QueryError> {
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(QueryError::Unavailable(format!("{what}: {e}"))),
        Err(_) => Err(QueryError::Unavailable(format!(
            "{what}: no answer within {limit:?}"
        ))),
    }
}

/// A topic with its partitions' first offsets and ends.
#[derive(Debug, Serialize)]
pub struct TopicEnds {
    #[serde(flatten)]
    pub topic: TopicView,
    /// Per partition: `[first offset, end]` (the end is the high watermark).
    pub offsets: BTreeMap<i32, (i64, i64)>,
}

/// `GET /console/api/topics`
pub async fn topics(State(console): State<Console>) -> Result<Json<Vec<TopicEnds>>, QueryError> {
    let admin = console
        .infra
        .admin()
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    let specs = console.infra.topic_specs();
    let described = bounded(
        "describing the topics",
        inspection::topics::describe(&admin, &specs),
    )
    .await?;
    let mut listed = Vec::with_capacity(described.len());
    for topic in described {
        let offsets = match topic.partitions {
            Some(n) => bounded(
                "reading the topics' ends",
                scan::watermarks_of(&console.infra.kafka, &topic.topic, (0..n).collect()),
            )
            .await?
            .into_iter()
            .collect(),
            None => BTreeMap::new(),
        };
        listed.push(TopicEnds { topic, offsets });
    }
    Ok(Json(listed))
}

/// An indexed event and its record as the log holds it.
#[derive(Debug, Serialize)]
pub struct FoundEvent {
    #[serde(flatten)]
    pub indexed: IndexedEvent,
    /// Key, headers and value (`null` when the record could not be read).
    pub record: Option<Value>,
}

/// What a search found, oldest first.
#[derive(Debug, Serialize)]
pub struct Found {
    pub items: Vec<FoundEvent>,
    /// More events matched than are shown.
    pub more: bool,
}

/// `GET /console/api/events?q=<id>` (an aggregate id, an event id or a correlation id), or
/// `?aggregate_type=order&aggregate_id=<id>` for one aggregate's events in version order.
pub async fn search(
    State(console): State<Console>,
    Query(pairs): Pairs,
) -> Result<Json<Found>, QueryError> {
    let given = |name: &str| pairs.iter().any(|(k, _)| k == name);
    let shape = (given("q"), given("aggregate_type"), given("aggregate_id"));
    let mut params = Params::new(pairs, &["q", "aggregate_type", "aggregate_id"]);
    let q = params.text("q");
    let aggregate_type = params.one_of("aggregate_type", &AGGREGATE_TYPES);
    let aggregate_id = params.text("aggregate_id");
    match shape {
        (true, false, false) | (false, true, true) => {}
        (false, false, false) => {
            params.fail("q", "give an aggregate id, an event id or a correlation id")
        }
        _ => params.fail(
            "q",
            "give either q, or aggregate_type with aggregate_id, not a mix",
        ),
    }
    params.finish()?;
    let wanted = match (q, aggregate_type, aggregate_id) {
        (Some(q), _, _) => Wanted::Any(q),
        (None, Some(kind), Some(id)) => Wanted::Aggregate(kind, id),
        _ => return Err(QueryError::invalid("q", "is required")),
    };
    let mut indexed = indexed_events(&console, &wanted).await?;
    let more = indexed.len() > usize::try_from(SEARCH_MAX).unwrap_or(usize::MAX);
    indexed.truncate(usize::try_from(SEARCH_MAX).unwrap_or(usize::MAX));
    let positions: Vec<(String, i32, i64)> = indexed
        .iter()
        .map(|e| (e.topic.clone(), e.partition, e.offset))
        .collect();
    let mut records = bounded(
        "reading the events' records",
        lookup::records_found(&console.infra.kafka, &positions),
    )
    .await?;
    let items = indexed
        .into_iter()
        .map(|indexed| {
            let place = (indexed.topic.clone(), indexed.partition, indexed.offset);
            // A record at the place that is not this event (a topic re-created since
            // it was indexed) is not shown as if it were.
            let event_id = indexed.event_id.to_string();
            let record = records
                .remove(&place)
                .filter(|r| r.header("ce_id") == Some(event_id.as_str()))
                .map(|r| shown(&r));
            FoundEvent { indexed, record }
        })
        .collect();
    Ok(Json(Found { items, more }))
}

/// The aggregate types the event index holds.
const AGGREGATE_TYPES: [&str; 5] = ["user", "user-email", "order", "payment", "notification"];

#[derive(Debug)]
enum Wanted {
    /// An id of any kind.
    Any(String),
    /// One aggregate's events.
    Aggregate(String, String),
}

async fn indexed_events(
    console: &Console,
    wanted: &Wanted,
) -> Result<Vec<IndexedEvent>, QueryError> {
    let table = Schema::live("event_index").table("events");
    let limit = SEARCH_MAX + 1;
    let query = match wanted {
        Wanted::Aggregate(kind, id) => sqlx::query_as(AssertSqlSafe(format!(
            "SELECT * FROM {table} WHERE aggregate_type = $1 AND aggregate_id = $2
             ORDER BY version LIMIT {limit}"
        )))
        .bind(kind.clone())
        .bind(id.clone()),
        Wanted::Any(term) => sqlx::query_as(AssertSqlSafe(format!(
            "SELECT * FROM {table}
             WHERE (aggregate_type = ANY($1) AND aggregate_id = $2)
                OR event_id = $3 OR correlation_id = $3
             ORDER BY occurred_at, topic, partition, \"offset\" LIMIT {limit}"
        )))
        .bind(AGGREGATE_TYPES.map(str::to_owned).to_vec())
        .bind(term.clone())
        .bind(term.parse::<Uuid>().ok()),
    };
    bounded("searching the event index", query.fetch_all(&console.pool)).await
}

/// A record as the console shows it: place, time, key, headers, value (JSON when it is).
fn shown(record: &ScannedRecord) -> Value {
    as_json(record, value_of(record))
}

/// `GET /console/api/topics/{topic}/tail?last=N`: the last N records of each partition
/// (default 10), then every record as it is written, as server-sent events named
/// `records` (a JSON array each). The stream ends when the page closes it.
pub async fn tail(
    State(console): State<Console>,
    Path(topic): Path<String>,
    Query(pairs): Pairs,
) -> Result<Response, QueryError> {
    let mut params = Params::new(pairs, &["last"]);
    let last = params
        .text("last")
        .map(|v| v.parse::<usize>().ok().filter(|n| *n <= TAIL_LAST_MAX));
    if last == Some(None) {
        params.fail(
            "last",
            format!("must be a whole number from 0 to {TAIL_LAST_MAX}"),
        );
    }
    params.finish()?;
    let last = last.flatten().unwrap_or(10);
    let Some(partitions) = partitions_of(&console, &topic).await? else {
        return Err(QueryError::NotFound(format!(
            "no topic {topic:?} among the shop's topics"
        )));
    };
    let Ok(permit) = console.tails.clone().try_acquire_owned() else {
        return Ok(Problem::unavailable(
            "every live tail is taken (CONSOLE_LIVE_TAILS): close one, or retry later",
        )
        .retry_after(5)
        .into_response());
    };
    let ranges = tail_start(&console, &topic, partitions, last).await?;
    let log = LogScan::tail(&console.infra.kafka, &topic, &ranges)
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    let stream = records(log, permit, console.stopping.clone());
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response();
    // nginx hands each event on at once instead of filling its buffer first.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The partitions of `topic` when it is one of the shop's topics on the broker.
async fn partitions_of(console: &Console, topic: &str) -> Result<Option<i32>, QueryError> {
    if !console.infra.topic_specs().iter().any(|s| s.name == topic) {
        return Ok(None);
    }
    let admin = console
        .infra
        .admin()
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    let counts = bounded("listing the topics", admin.partition_counts()).await?;
    Ok(counts.get(topic).copied())
}

/// Where a tail starts in each partition: `last` records back from its end.
async fn tail_start(
    console: &Console,
    topic: &str,
    partitions: i32,
    last: usize,
) -> Result<BTreeMap<i32, Range>, QueryError> {
    let kafka = &console.infra.kafka;
    let marks = bounded(
        "reading the topic's ends",
        scan::watermarks_of(kafka, topic, (0..partitions).collect()),
    )
    .await?;
    let highs: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
    let starts = bounded(
        "reading the last records",
        scan::last_records(kafka, topic, &highs, last),
    )
    .await?;
    Ok(marks
        .into_iter()
        .map(|(partition, (low, _))| {
            let from = starts.get(&partition).copied().flatten().unwrap_or(low);
            (partition, Range { from, to: None })
        })
        .collect())
}

/// Each batch of records the scan hands out, as one event; a broker error ends the
/// stream with an `error` event, the service stopping without one.
fn records(
    log: LogScan,
    permit: OwnedSemaphorePermit,
    stopping: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(Some((log, permit)), move |open| {
        let stopping = stopping.clone();
        async move {
            let (log, permit) = open?;
            tokio::select! {
                () = stopping.cancelled() => None,
                next = next_event(log) => next.map(|(event, log)| (Ok(event), log.map(|log| (log, permit)))),
            }
        }
    })
}

/// The next batch as an event, and the scan when it can go on.
async fn next_event(mut log: LogScan) -> Option<(Event, Option<LogScan>)> {
    loop {
        match log.next_batch(500, Duration::from_millis(250)).await {
            Ok(batch) if batch.is_empty() => continue,
            Ok(batch) => {
                let shown: Vec<Value> = batch.iter().map(shown).collect();
                let event = Event::default()
                    .event("records")
                    .data(Value::Array(shown).to_string());
                return Some((event, Some(log)));
            }
            Err(e) => {
                // As a JSON string: an event's data cannot hold a line break.
                let reason = Value::String(e.to_string()).to_string();
                let event = Event::default().event("error").data(reason);
                return Some((event, None));
            }
        }
    }
}
