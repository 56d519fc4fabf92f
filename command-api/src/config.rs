//! Configuration of the command API, from the environment.

use std::time::Duration;

use service_runtime::ServiceConfig;
use service_runtime::settings::{Env, Setting, SettingError, common};

pub const COMMAND_API_ADDR: Setting = Setting {
    name: "COMMAND_API_ADDR",
    default: Some("127.0.0.1:8080"),
    help: "address the command API listens on",
};
pub const API_KEYS: Setting = Setting {
    name: "API_KEYS",
    default: None,
    help: "comma-separated API keys accepted as `Authorization: Bearer <key>`",
};
pub const KAFKA_TRANSACTIONS: Setting = Setting {
    name: "KAFKA_TRANSACTIONS",
    default: Some("false"),
    help: "fence writers with Kafka transactions (true on Apache Kafka; tansu 0.6.0 cannot commit them)",
};
pub const RATE_LIMIT_PER_SECOND: Setting = Setting {
    name: "RATE_LIMIT_PER_SECOND",
    default: Some("500"),
    help: "sustained requests per second per API key; beyond, 429 with Retry-After",
};
pub const RATE_LIMIT_BURST: Setting = Setting {
    name: "RATE_LIMIT_BURST",
    default: Some("1000"),
    help: "requests an API key may send at once above its sustained rate",
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
    common::with(&[
        COMMAND_API_ADDR,
        API_KEYS,
        KAFKA_TRANSACTIONS,
        RATE_LIMIT_PER_SECOND,
        RATE_LIMIT_BURST,
        MAX_IN_FLIGHT,
        COMMAND_TIMEOUT_MS,
    ])
}

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    pub api_keys: Vec<String>,
    pub transactions: bool,
    pub rate_per_second: u32,
    pub rate_burst: u32,
    pub max_in_flight: usize,
    pub command_timeout: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let api_keys: Vec<String> = env
            .text(&API_KEYS)?
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        if api_keys.is_empty() {
            return Err(SettingError::Invalid {
                name: API_KEYS.name,
                value: String::new(),
                reason: "at least one key is needed".into(),
            });
        }
        Ok(Self {
            service: ServiceConfig::from_env(env, &COMMAND_API_ADDR)?,
            api_keys,
            transactions: env.parse(&KAFKA_TRANSACTIONS)?,
            rate_per_second: env.positive(&RATE_LIMIT_PER_SECOND)? as u32,
            rate_burst: env.positive(&RATE_LIMIT_BURST)? as u32,
            max_in_flight: env.positive(&MAX_IN_FLIGHT)? as usize,
            command_timeout: Duration::from_millis(env.positive(&COMMAND_TIMEOUT_MS)?),
        })
    }

    pub fn log_filter(&self) -> &str {
        &self.service.infrastructure.log_filter
    }
}
