//! What operators look at, read straight from Postgres and the broker, so it also answers
//! while a service is down. `shopctl` prints it; the web console serves it as JSON.
//!
//! - [`explain`]: the causal tree of one correlation id (request -> events -> saga steps);
//! - [`lag`]: how far behind every reader of the log is, in records and in seconds;
//! - [`topics`]: the shop's topics as the broker describes them;
//! - [`record`]: a record of the log as one JSON object.
//!
//! No command line and no HTTP here: each caller bounds the wait and words the failure
//! for its own users (a line on stderr, a 503 problem).

pub mod explain;
pub mod lag;
pub mod record;
pub mod topics;

/// Why a look failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectionError {
    /// Something asked for is not there, such as a topic the broker does not have.
    #[error("{0}")]
    NotFound(String),
    /// Postgres or the broker did not answer, or refused.
    #[error("{what}")]
    Unavailable {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl InspectionError {
    /// A failure of `what` (`"reading the event index (...)"`), caused by `source`.
    pub fn unavailable(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: source.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, InspectionError>;
