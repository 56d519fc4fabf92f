//! Configuration of the projections service, from the environment.

use std::time::Duration;

use service_runtime::ServiceConfig;
use service_runtime::api_keys::{self, Gate};
use service_runtime::settings::{Env, Setting, SettingError, common};

pub const PROJECTIONS_ADDR: Setting = Setting {
    name: "PROJECTIONS_ADDR",
    default: Some("127.0.0.1:8081"),
    help: "address the projections service listens on",
};

pub const QUERY_WAIT_MS: Setting = Setting {
    name: "QUERY_WAIT_MS",
    default: Some("2000"),
    help: "longest a query with min_position waits for the read model before answering 504",
};

pub const PROJECTION_LAG_OBJECTIVE_SECONDS: Setting = Setting {
    name: "PROJECTION_LAG_OBJECTIVE_SECONDS",
    default: Some("30"),
    help: "lag (seconds) past which a read model makes /ready answer 503",
};

pub const PROJECTION_BATCH_MAX: Setting = Setting {
    name: "PROJECTION_BATCH_MAX",
    default: Some("2000"),
    help: "most records a projector applies in one Postgres transaction",
};

/// Every variable the projections service reads.
pub fn settings() -> Vec<Setting> {
    let mut own = vec![
        PROJECTIONS_ADDR,
        QUERY_WAIT_MS,
        PROJECTION_LAG_OBJECTIVE_SECONDS,
        PROJECTION_BATCH_MAX,
    ];
    own.extend(api_keys::SETTINGS);
    common::with(&own)
}

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    /// Who may query, and how fast.
    pub gate: Gate,
    pub query_wait: Duration,
    pub lag_objective: Duration,
    pub batch_max: usize,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        Ok(Self {
            service: ServiceConfig::from_env(env, &PROJECTIONS_ADDR)?,
            gate: Gate::from_env(env)?,
            query_wait: Duration::from_millis(env.positive(&QUERY_WAIT_MS)?),
            lag_objective: Duration::from_secs(env.positive(&PROJECTION_LAG_OBJECTIVE_SECONDS)?),
            batch_max: usize::try_from(env.positive(&PROJECTION_BATCH_MAX)?).unwrap_or(usize::MAX),
        })
    }

    /// Broker, database, logs and traces (for `run_binary`).
    pub fn infrastructure(&self) -> &service_runtime::Infrastructure {
        &self.service.infrastructure
    }
}
