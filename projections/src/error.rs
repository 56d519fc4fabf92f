//! The one error of the read side's library, named by outcome; what caused it stays
//! reachable as its source. The query API maps it to problem+json in one place
//! (`impl From<ProjectionError> for QueryError`), shopctl prints it as one line.

use event_store::EventStoreError;
use service_runtime::query::QueryError;

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// What was asked for does not exist: a read model, parked records of an aggregate.
    #[error("{0}")]
    NotFound(String),
    /// The request collides with the state things are in: a rebuild already running, no
    /// live model to swap with.
    #[error("{0}")]
    Conflict(String),
    /// Postgres, its migrations or the broker failed; the same request may succeed later.
    #[error("{what}: {source}")]
    Unavailable { what: &'static str, source: Cause },
}

impl ProjectionError {
    /// A read model name that is none of [`crate::READ_MODELS`].
    pub fn unknown_model(name: &str) -> Self {
        Self::NotFound(format!(
            "no read model {name:?} (one of: {})",
            crate::READ_MODELS.join(", ")
        ))
    }
}

impl From<sqlx::Error> for ProjectionError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable {
            what: "Postgres",
            source: Box::new(e),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for ProjectionError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Unavailable {
            what: "migrations",
            source: Box::new(e),
        }
    }
}

impl From<EventStoreError> for ProjectionError {
    fn from(e: EventStoreError) -> Self {
        Self::Unavailable {
            what: "the log",
            source: Box::new(e),
        }
    }
}

impl From<ProjectionError> for QueryError {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::NotFound(detail) => Self::NotFound(detail),
            ProjectionError::Conflict(detail) => Self::Conflict(detail),
            unavailable @ ProjectionError::Unavailable { .. } => {
                Self::Unavailable(unavailable.to_string())
            }
        }
    }
}
