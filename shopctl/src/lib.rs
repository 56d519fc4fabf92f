//! `shopctl`, the operator's command line, as a library: each command is a module with
//! its arguments (clap) and its `run`, so the binary only parses and dispatches, and the
//! pure parts (filters, record views) are tested without I/O. What it shows that the web
//! console shows too (the causal tree, the lag, the topics, records as JSON) is read by
//! the `inspection` crate; this crate prints it.
//!
//! It reads the same environment variables as the services (`KAFKA_BROKERS`,
//! `DATABASE_URL`, `TOPIC_PREFIX`, `EVENT_PARTITIONS`, ...), so it acts on what they use.
//!
//! - [`topics`]: create, check and list the topics;
//! - [`rebuild`]: rebuild a read model, blue/green or in place;
//! - [`replay`]: a slice of the log as JSON lines, filtered;
//! - [`explain`]: the causal tree of one correlation id;
//! - [`lag`]: how far behind every reader is;
//! - [`dead_letters`]: list, retry and skip parked records;
//! - [`api_key`]: new API keys, and the digests to configure for them;
//! - [`openapi`]: the merged OpenAPI document the gateway serves;
//! - [`inspect`]: `tail` a topic, `read` one aggregate, for people at a console;
//! - [`view`]: how records are shown; [`connect`]: reaching Postgres and the broker.

pub mod api_key;
pub mod connect;
pub mod dead_letters;
pub mod explain;
pub mod inspect;
pub mod lag;
pub mod openapi;
pub mod rebuild;
pub mod replay;
pub mod topics;
pub mod view;
