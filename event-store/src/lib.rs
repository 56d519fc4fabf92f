//! The event log on Kafka. Generic over aggregates: it knows envelopes and topics, nothing
//! of users or orders.
//!
//! - [`topics`]: the topic layout (names under a prefix, partition counts, retention) and the
//!   preflight rules that refuse a topic able to lose events;
//! - [`admin`]: creating and describing topics through the admin API, with bounded waits;
//! - [`client`]: the librdkafka configurations (idempotent producer, manual-offset consumer);
//! - [`commands`]: sending a command to the writer of its aggregate through the log;
//! - [`record`]: envelope <-> Kafka record (key, value, headers);
//! - [`aggregate`], [`writer`]: the write side: one writer per partition ([`writer::host`])
//!   deciding on its own state ([`writer::core`]), confirming appends ([`writer::partition`]),
//!   snapshots ([`writer::snapshot`]); [`partitioner`], [`position`], [`outcome`] describe it;
//! - [`lookup`]: reading records back by position (history, time travel);
//! - [`scan`]: reading partitions between offsets outside any group (rebuilds, replays);
//! - [`gate`]: the reader rule every reader applies (next contiguous version, first wins);
//! - [`subscription`]: the read side's consumer: decoded batches, reader-owned offsets,
//!   dead letters;
//! - [`reader`]: the checkpointed reader the projectors and the saga run on: one loop,
//!   offsets and versions stored in the handler's Postgres transaction;
//! - [`sample`]: a ledger aggregate that exercises the store without any shop domain;
//! - [`error`]: the one error type, whose variants are outcomes.

pub mod admin;
pub mod aggregate;
pub mod client;
pub mod commands;
pub mod error;
pub mod gate;
pub mod lookup;
pub mod outcome;
pub mod partitioner;
pub mod position;
pub mod reader;
pub mod record;
pub mod sample;
pub mod scan;
pub mod subscription;
pub mod topics;
pub mod trace;
pub mod writer;

pub use admin::TopicAdmin;
pub use client::{KafkaSecurity, KafkaSettings, Login, SaslLogin, SecurityProtocol};
pub use error::EventStoreError;
pub use topics::{TopicNames, TopicSpec};
