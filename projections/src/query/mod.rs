//! The query API: the read models over HTTP, with read-your-writes through
//! `min_position` and time travel through the event index and the log.
//!
//! - [`reads`]: the handlers over the read models;
//! - [`history`]: an aggregate's events read back from the log, and states folded from them;
//! - [`dead_letters`]: the parked records, and the operators' retry and skip;
//!
//! Parameters, cursors, pages and the problem+json of a failed query are
//! [`service_runtime::query`]'s, shared with the saga's and the console's queries.

pub mod dead_letters;
pub mod history;
pub mod reads;

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use event_store::position::Position;
use event_store::{KafkaSettings, TopicNames};
use serde_json::json;
use service_runtime::openapi::BearerAuth;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::projector::Schema;
use crate::projector::metrics::Lag;
use event_store::reader::bookkeeping;
use service_runtime::query::QueryError;

/// What the query side knows of one read model.
#[derive(Clone, Debug)]
pub struct ModelView {
    pub name: &'static str,
    pub schema: Schema,
    pub services: &'static [&'static str],
    /// Woken when this instance's projector committed a batch.
    pub progress: Arc<Notify>,
    pub lag: Lag,
}

/// Shared by every handler.
#[derive(Clone, Debug)]
pub struct QueryState {
    pub pool: PgPool,
    pub kafka: KafkaSettings,
    pub topics: TopicNames,
    /// How long a query waits for `min_position`.
    pub wait: Duration,
    pub models: Arc<Vec<ModelView>>,
}

/// The longest a timed-out query spends asking the log where it ends.
const END_CHECK: Duration = Duration::from_millis(1000);

/// How often a waiting query looks at the checkpoints when no local batch wakes it (the
/// partition may be projected by another instance).
const POLL: Duration = Duration::from_millis(20);

impl QueryState {
    pub fn schema(&self, model: &str) -> &Schema {
        &self
            .models
            .iter()
            .find(|m| m.name == model)
            .expect("the query side names only models it runs")
            .schema
    }

    /// Waits until the read models a query `reads` have applied everything up to
    /// `position`. A position on a topic none of them reads is waited for by the models
    /// that do read it (the owning service's model), so that what the caller wrote is
    /// visible wherever it shows. On timeout: 422 when the position is past the end of the
    /// log (no command returned it), else 504 with each model's lag.
    pub async fn wait_for(
        &self,
        position: Option<&Position>,
        reads: &[&str],
    ) -> Result<(), QueryError> {
        let Some(position) = position else {
            return Ok(());
        };
        let readers = |m: &&ModelView| m.services.contains(&position.service.as_str());
        let mut targets: Vec<&ModelView> = self
            .models
            .iter()
            .filter(|m| reads.contains(&m.name))
            .filter(readers)
            .collect();
        if targets.is_empty() {
            targets = self.models.iter().filter(readers).collect();
        }
        let topic = self.topics.events(&position.service);
        let deadline = Instant::now() + self.wait;
        loop {
            let notified: Vec<_> = targets.iter().map(|m| m.progress.notified()).collect();
            let mut behind = Vec::new();
            let mut conn = self.pool.acquire().await?;
            for model in &targets {
                let next =
                    bookkeeping::next_offset(&mut conn, &model.schema, &topic, position.partition)
                        .await?;
                if next <= position.offset {
                    behind.push((*model, next));
                }
            }
            drop(conn);
            if behind.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                self.refuse_past_the_end(position, &topic).await?;
                return Err(not_yet(position, &topic, &behind));
            }
            let pause = POLL.min(deadline - now);
            tokio::select! {
                () = any_of(notified) => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The 504 of a wait that timed out: how far each model that is behind got.
fn not_yet(position: &Position, topic: &str, behind: &[(&ModelView, i64)]) -> QueryError {
    let lag: Vec<_> = behind
        .iter()
        .map(|(model, next)| {
            json!({
                "read_model": model.name,
                "topic": topic,
                "partition": position.partition,
                "min_offset": position.offset,
                "applied_up_to": next - 1,
                "behind_events": position.offset + 1 - next,
                "lag_seconds": model.lag.get().map(|(_, s)| s),
            })
        })
        .collect();
    QueryError::NotYet { lag: json!(lag) }
}

impl QueryState {
    /// 422 when `position` is at or past the end of its partition, or names a partition
    /// the topic does not have: no command returned it, so waiting longer would not help.
    /// Asked only once a wait timed out, within [`END_CHECK`]; a log that cannot be asked in
    /// time leaves the answer to the caller (the 504). The end is the committed one: a
    /// position a command returned is below it once the wait is over.
    async fn refuse_past_the_end(
        &self,
        position: &Position,
        topic: &str,
    ) -> Result<(), QueryError> {
        let ends = event_store::scan::topic_ends(&self.kafka, topic);
        let Ok(Ok(ends)) = tokio::time::timeout(END_CHECK, ends).await else {
            return Ok(());
        };
        match ends.get(&position.partition) {
            Some(end) if position.offset < *end => Ok(()),
            Some(end) => Err(QueryError::invalid(
                "min_position",
                format!(
                    "is past the end of {topic} partition {} (next offset {end}): no command returned it",
                    position.partition
                ),
            )),
            None => Err(QueryError::invalid(
                "min_position",
                format!(
                    "names partition {} of {topic}, which has {}",
                    position.partition,
                    ends.len()
                ),
            )),
        }
    }
}

/// Resolves when any of the notifications fires (never when there are none).
async fn any_of(notified: Vec<Notified<'_>>) {
    let mut waits: Vec<_> = notified.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        if waits.iter_mut().any(|w| w.as_mut().poll(cx).is_ready()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "shop query API", description = "Read models of the event-sourced shop. Every query takes `min_position` (read your writes). Errors are application/problem+json (RFC 9457)."),
    modifiers(&BearerAuth),
    tags((name = "users"), (name = "orders"), (name = "payments"), (name = "notifications"), (name = "dead letters"))
)]
struct ApiDoc;

/// The query routes (registered through their documentation) and the OpenAPI document.
pub fn router(state: QueryState) -> (Router, utoipa::openapi::OpenApi) {
    let (routes, document) = service_runtime::openapi::documented(api());
    (routes.with_state(state), document)
}

/// The query API's OpenAPI document, as `GET /openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    service_runtime::openapi::documented(api()).1
}

fn api() -> OpenApiRouter<QueryState> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(reads::user))
        .routes(routes!(reads::orders_of_user))
        .routes(routes!(reads::orders))
        .routes(routes!(reads::order))
        .routes(routes!(history::order_history))
        .routes(routes!(reads::payments))
        .routes(routes!(reads::notifications))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::retry))
        .routes(routes!(dead_letters::skip))
}
