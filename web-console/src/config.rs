//! Configuration of the console service, from the environment.

use std::time::Duration;

use projections::config::PROJECTION_LAG_OBJECTIVE_SECONDS;
use service_runtime::ServiceConfig;
use service_runtime::api_keys::{self, Gate};
use service_runtime::settings::{Env, Setting, SettingError, common};

pub const CONSOLE_ADDR: Setting = Setting {
    name: "CONSOLE_ADDR",
    default: Some("127.0.0.1:8083"),
    help: "address the console's API listens on (the page itself is served by the gateway)",
};

pub const CONSOLE_LIVE_TAILS: Setting = Setting {
    name: "CONSOLE_LIVE_TAILS",
    default: Some("16"),
    help: "most live tails of a topic the console streams at once (each holds a Kafka reader)",
};

/// Every variable the console service reads.
pub fn settings() -> Vec<Setting> {
    let mut own = vec![
        CONSOLE_ADDR,
        CONSOLE_LIVE_TAILS,
        PROJECTION_LAG_OBJECTIVE_SECONDS,
    ];
    own.extend(api_keys::SETTINGS);
    common::with(&own)
}

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    /// Who may look, and how fast; actions themselves are the APIs' (operator keys).
    pub gate: Gate,
    /// Most live tails at once.
    pub live_tails: usize,
    /// The read models' lag objective, marked in the console (the projections' /ready).
    pub lag_objective: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        Ok(Self {
            service: ServiceConfig::from_env(env, &CONSOLE_ADDR)?,
            gate: Gate::from_env(env)?,
            live_tails: usize::try_from(env.positive(&CONSOLE_LIVE_TAILS)?).unwrap_or(usize::MAX),
            lag_objective: Duration::from_secs(env.positive(&PROJECTION_LAG_OBJECTIVE_SECONDS)?),
        })
    }

    /// Broker, database, logs and traces (for `run_binary`).
    pub fn infrastructure(&self) -> &service_runtime::Infrastructure {
        &self.service.infrastructure
    }
}
