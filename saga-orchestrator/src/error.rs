//! The one error of the saga orchestrator's library, named by outcome; what caused it
//! stays reachable as its source. `http.rs` maps it to problem+json.

use schemas::OrderId;

use crate::saga::SagaState;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// No saga for that order.
    #[error("no saga for order {0}")]
    NotFound(OrderId),
    /// The saga is not in a state the request applies to (only a failed saga is retried).
    #[error("the saga of order {order_id} is {}; only a failed saga can be retried", state.as_str())]
    Conflict { order_id: OrderId, state: SagaState },
    /// Postgres or the broker failed; the same request may succeed later.
    #[error("{what}: {source}")]
    Unavailable { what: &'static str, source: Cause },
}

impl From<sqlx::Error> for SagaError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable {
            what: "Postgres",
            source: Box::new(e),
        }
    }
}

impl From<event_store::EventStoreError> for SagaError {
    fn from(e: event_store::EventStoreError) -> Self {
        Self::Unavailable {
            what: "the log",
            source: Box::new(e),
        }
    }
}
