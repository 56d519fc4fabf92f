//! What every shop service shares, so that each service crate holds only its own work.
//!
//! - [`settings`]: environment variables declared once with defaults and help;
//! - [`api_keys`]: who may call the `/v1` routes, and how fast;
//! - [`infrastructure`]: broker and database settings, and the clients made from them;
//! - [`readiness`] and [`probes`]: background probes with backoff behind `/ready`;
//! - [`ops`] and [`metrics`]: `/health`, `/ready`, `/metrics`, and HTTP metrics;
//! - [`openapi`]: the bearer scheme and `GET /openapi.json` of every service's document;
//! - [`problem`]: RFC 9457 problem details, the shape of every error answer;
//! - [`query`]: query parameters, cursors and pages, and the problem of a failed query;
//! - [`personal_data`]: sealing personal fields with per-user keys, and forgetting them;
//! - [`tls`]: certificate files and one handshake, checked at start;
//! - [`host`]: bind, serve, run workers, stop gracefully on a shutdown future;
//! - [`telemetry`], [`traces`] and [`shutdown`]: JSON logs, spans over OTLP, SIGTERM.

pub mod api_keys;
pub mod host;
pub mod infrastructure;
pub mod metrics;
pub mod openapi;
mod ops;
pub mod personal_data;
pub mod probes;
pub mod problem;
pub mod query;
pub mod readiness;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod traces;

pub use host::{BoundService, Service, ServiceError};
pub use infrastructure::{Infrastructure, ServiceConfig};
pub use settings::{Env, Setting, SettingError};

mod binary;
pub use binary::run_binary;
