//! Configuration of the command API, from the environment.

use service_runtime::ServiceConfig;
use service_runtime::settings::{Env, Setting, SettingError, common};

pub const COMMAND_API_ADDR: Setting = Setting {
    name: "COMMAND_API_ADDR",
    default: Some("127.0.0.1:8080"),
    help: "address the command API listens on",
};

/// Every variable the command API reads.
pub fn settings() -> Vec<Setting> {
    common::with(&[COMMAND_API_ADDR])
}

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        Ok(Self {
            service: ServiceConfig::from_env(env, &COMMAND_API_ADDR)?,
        })
    }

    pub fn log_filter(&self) -> &str {
        &self.service.infrastructure.log_filter
    }
}
