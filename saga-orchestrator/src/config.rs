//! Configuration of the saga-orchestrator service, from the environment.

use service_runtime::ServiceConfig;
use service_runtime::settings::{Env, Setting, SettingError, common};

pub const SAGA_ORCHESTRATOR_ADDR: Setting = Setting {
    name: "SAGA_ORCHESTRATOR_ADDR",
    default: Some("127.0.0.1:8082"),
    help: "address the saga-orchestrator service listens on",
};

/// Every variable the saga-orchestrator service reads.
pub fn settings() -> Vec<Setting> {
    common::with(&[SAGA_ORCHESTRATOR_ADDR])
}

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        Ok(Self {
            service: ServiceConfig::from_env(env, &SAGA_ORCHESTRATOR_ADDR)?,
        })
    }

    pub fn log_filter(&self) -> &str {
        &self.service.infrastructure.log_filter
    }
}
