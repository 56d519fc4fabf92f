//! The projector engine, generic over read models. A [`ReadModel`] says which topics it
//! reads, folds one event onto one row (pure), and loads and stores rows in bulk; the
//! engine does the rest the same way for every model, on the checkpointed reader of
//! [`event_store::reader`] (its schema, checkpoints, versions and parked records):
//!
//! - [`plan`]: the reader rule, parking and folding of one batch, without I/O;
//! - [`fresh`]: which aggregates are new, known without a look-up during a catch-up;
//! - [`runner`]: the reader's batch handler: load, plan, store rows + parked records;
//! - [`operator`]: list, retry and skip parked records;
//! - [`metrics`]: lag, batch sizes, apply rate, drops and parked records.

pub mod fresh;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod runner;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use schemas::EventDocument;
use sqlx::PgConnection;

pub use event_store::reader::copy::CopyRows;

pub use event_store::reader::Schema;

/// A boxed database future: the models' I/O, `Send` for the projector's task.
pub type DbFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'a>>;

/// An event the plan applied, with where it was in the log.
#[derive(Clone, Debug)]
pub struct Applied<'a> {
    pub key: &'a str,
    pub document: &'a EventDocument,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Its aggregate is new to the model (see [`fresh`]): its rows are COPYed in.
    pub new: bool,
}

/// One read model: rows folded from the events of some services.
pub trait ReadModel: Send + Sync + 'static {
    /// `users`, `orders`, ...: names the schema, the consumer group, the metrics.
    const NAME: &'static str;
    /// The services whose event topics the model reads.
    const SERVICES: &'static [&'static str];
    /// The table its rows are in (the event index: its events).
    const TABLE: &'static str;
    /// The state of one aggregate as the model keeps it.
    type Row: Clone + Send + Sync + std::fmt::Debug;

    /// The model's own migrations (unqualified names; they run inside its schema).
    fn migrator() -> sqlx::migrate::Migrator;

    /// The aggregate an event belongs to, as the model keys it.
    fn key(document: &EventDocument) -> String {
        document.subject.clone()
    }

    /// Folds one event (already admitted as the next version) onto the row: the same
    /// function serves the projector and the time-travel queries. `None`: nothing to store
    /// for this event (one that may come before the aggregate's first row); the row, if
    /// any, stays as it was, and the event's version counts all the same. An error makes the event poison: it is dead-lettered and its
    /// aggregate parked.
    fn fold(row: Option<&Self::Row>, document: &EventDocument)
    -> Result<Option<Self::Row>, String>;

    /// The last version of its aggregate a row has applied, for models whose rows keep it:
    /// the reader rule reads it from the row, and the reader's versions table holds only
    /// the aggregates whose last applied event left no row (see [`runner`]).
    fn version_of(row: &Self::Row) -> u64;

    /// The stored rows of `keys` (absent keys have no row).
    fn load<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        keys: &'a [String],
    ) -> DbFuture<'a, HashMap<String, Self::Row>>;

    /// Writes the rows a batch changed of aggregates the model may hold (upserts), and
    /// what every applied event does besides (models that keep events store those of
    /// aggregates that are not `new`), in as few statements as possible.
    fn store<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        rows: Vec<(String, Self::Row)>,
        applied: &'a [Applied<'a>],
    ) -> DbFuture<'a, ()>;

    /// The rows of aggregates new to the model (models that keep events: the events of
    /// `applied` that are `new`), to COPY into its table: nothing is there to update.
    fn copy_new(
        schema: &Schema,
        rows: Vec<(String, Self::Row)>,
        applied: &[Applied<'_>],
    ) -> CopyRows;
}
