//! The checkpointed log reader every read side runs (the projectors, the saga
//! orchestrator): it consumes event topics in batches and hands each batch to a
//! [`BatchHandler`] inside one Postgres transaction that also stores the aggregates'
//! versions and the partitions' next offsets. A crash at any point leaves Postgres at the
//! end of some batch, and the subscription starts there; nothing is applied twice.
//!
//! - [`schema`]: the reader's Postgres schema and its bookkeeping migrations;
//! - [`bookkeeping`]: checkpoints, versions and parked records in that schema;
//! - [`copy`]: rows in through binary COPY, for aggregates no reader has stored yet;
//! - [`record`]: a record of a batch, decoded or not;
//! - [`runner`]: the loop (subscribe from the stored offsets, claim, write, commit, store
//!   the offsets, measure the lag), with a bounded backoff when Postgres or the broker is
//!   down.

pub mod bookkeeping;
pub mod copy;
pub mod record;
pub mod runner;
pub mod schema;

pub use bookkeeping::{Checkpoint, Parked};
pub use record::Record;
pub use runner::{BatchHandler, Reader, ReaderSettings, Span, Stages, Written};
pub use schema::Schema;
