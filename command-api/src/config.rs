//! Configuration of the command API, from the environment.

use std::time::Duration;

use service_runtime::ServiceConfig;
use service_runtime::api_keys::{self, Gate};
use service_runtime::settings::{Env, Setting, SettingError, common};

pub const COMMAND_API_ADDR: Setting = Setting {
    name: "COMMAND_API_ADDR",
    default: Some("127.0.0.1:8080"),
    help: "address the command API listens on",
};
pub const KAFKA_TRANSACTIONS: Setting = Setting {
    name: "KAFKA_TRANSACTIONS",
    default: Some("false"),
    help: "fence writers with Kafka transactions (true on Apache Kafka; tansu 0.6.0 cannot commit them)",
};
pub const MAX_IN_FLIGHT: Setting = Setting {
    name: "MAX_IN_FLIGHT",
    default: Some("512"),
    help: "commands processed at once; beyond, 503 (load is shed, not queued)",
};
pub const COMMAND_TIMEOUT_MS: Setting = Setting {
    name: "COMMAND_TIMEOUT_MS",
    default: Some("5000"),
    help: "longest a command may take before the answer is 503 (broker or writer unavailable)",
};

/// Every variable the command API reads.
pub fn settings() -> Vec<Setting> {
    let mut own = vec![
        COMMAND_API_ADDR,
        KAFKA_TRANSACTIONS,
        MAX_IN_FLIGHT,
        COMMAND_TIMEOUT_MS,
    ];
    own.extend(api_keys::SETTINGS);
    common::with(&own)
}

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    /// Who may call, and how fast.
    pub gate: Gate,
    pub transactions: bool,
    pub max_in_flight: usize,
    pub command_timeout: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        Ok(Self {
            service: ServiceConfig::from_env(env, &COMMAND_API_ADDR)?,
            gate: Gate::from_env(env)?,
            transactions: env.parse(&KAFKA_TRANSACTIONS)?,
            max_in_flight: env.positive(&MAX_IN_FLIGHT)? as usize,
            command_timeout: Duration::from_millis(env.positive(&COMMAND_TIMEOUT_MS)?),
        })
    }

    pub fn log_filter(&self) -> &str {
        &self.service.infrastructure.log_filter
    }
}
