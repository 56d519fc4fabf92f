//! The read side as operators watch it: every reader's lag beside the objective, the
//! sagas counted by state, the causal tree of a correlation id, and who the key is.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use inspection::explain::Explained;
use inspection::explain::tree::SagaStep;
use inspection::lag::ReaderLag;
use serde::Serialize;
use service_runtime::api_keys::Principal;
use service_runtime::query::QueryError;
use service_runtime::query::path_id;
use service_runtime::telemetry::one_line;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::Console;
use crate::streams::{bounded, within};

/// What the page needs to know of its key.
#[derive(Debug, Serialize)]
pub struct Caller {
    /// `client` or `operator`: only operators may press the actions.
    pub role: &'static str,
    /// The key's fingerprint, as the audit log names it.
    pub fingerprint: String,
}

/// `GET /console/api/whoami`
pub async fn whoami(Extension(caller): Extension<Principal>) -> Json<Caller> {
    Json(Caller {
        role: caller.role.as_str(),
        fingerprint: caller.fingerprint,
    })
}

/// Every reader's lag and the objective past which a read model is not ready.
#[derive(Debug, Serialize)]
pub struct Lag {
    pub objective_seconds: f64,
    pub readers: Vec<ReaderLag>,
}

/// How long one measure of the lag is shown to every page asking (it takes many broker
/// round trips; pages ask every few seconds).
const LAG_FRESH: Duration = Duration::from_secs(2);

/// Longest one measure may take: under the page's own 10 s.
const LAG_WITHIN: Duration = Duration::from_secs(8);

/// The last measure of the lag (or why it failed) and when it was taken; one measure at
/// a time.
pub type LagCache = Arc<Mutex<Option<(Instant, Measured)>>>;

type Measured = Result<Arc<Vec<ReaderLag>>, String>;

/// `GET /console/api/readers`
pub async fn lag(State(console): State<Console>) -> Result<Json<Lag>, QueryError> {
    // One bound for waiting on another page's measure and for taking one.
    let measured = within(LAG_WITHIN, "measuring the readers' lag", async {
        let mut last = console.lag.lock().await;
        if let Some((at, measured)) = last.as_ref()
            && at.elapsed() < LAG_FRESH
        {
            return Ok::<_, String>(measured.clone());
        }
        let measured = inspection::lag::readers(&console.infra, &console.pool)
            .await
            .map(Arc::new)
            .map_err(|e| one_line(&e));
        // A failure is kept too: the pages asking meanwhile get it, not a queue of
        // measures against a broker that is down.
        *last = Some((Instant::now(), measured.clone()));
        Ok(measured)
    })
    .await?
    .map_err(|reason| QueryError::Unavailable(format!("measuring the readers' lag: {reason}")))?;
    Ok(Json(Lag {
        objective_seconds: console.lag_objective.as_secs_f64(),
        readers: measured.as_ref().clone(),
    }))
}

/// How many sagas are in each state (every state named, zeros included).
#[derive(Debug, Serialize)]
pub struct SagaCounts {
    pub running: i64,
    pub compensating: i64,
    pub completed: i64,
    pub compensated: i64,
    pub failed: i64,
}

/// `GET /console/api/sagas/counts`
pub async fn saga_counts(State(console): State<Console>) -> Result<Json<SagaCounts>, QueryError> {
    let exists: bool = bounded(
        "counting the sagas",
        sqlx::query_scalar("SELECT to_regclass('saga.sagas') IS NOT NULL").fetch_one(&console.pool),
    )
    .await?;
    let rows: Vec<(String, i64)> = if exists {
        bounded(
            "counting the sagas",
            sqlx::query_as("SELECT state, count(*) FROM saga.sagas GROUP BY state")
                .fetch_all(&console.pool),
        )
        .await?
    } else {
        Vec::new()
    };
    let count = |state: &str| rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
    Ok(Json(SagaCounts {
        running: count("running"),
        compensating: count("compensating"),
        completed: count("completed"),
        compensated: count("compensated"),
        failed: count("failed"),
    }))
}

/// `GET /console/api/sagas/{order_id}/commands`: what the saga issued, with the ids of
/// its commands, their attempts and last errors (from its outbox).
pub async fn saga_commands(
    State(console): State<Console>,
    Path(order_id): Path<String>,
) -> Result<Json<Vec<SagaStep>>, QueryError> {
    let order_id = path_id(&order_id)?;
    let steps = bounded(
        "reading the saga's outbox",
        inspection::explain::steps_of_order(&console.pool, order_id),
    )
    .await?;
    Ok(Json(steps))
}

/// `GET /console/api/explain/{correlation_id}`
pub async fn explain(
    State(console): State<Console>,
    Path(correlation_id): Path<String>,
) -> Result<Json<Explained>, QueryError> {
    let correlation_id = path_id(&correlation_id)?;
    let explained = bounded(
        "following the correlation id",
        inspection::explain::explain(&console.pool, correlation_id),
    )
    .await?;
    explained.map(Json).ok_or_else(|| {
        QueryError::NotFound(format!(
            "nothing is indexed under correlation id {correlation_id}"
        ))
    })
}
