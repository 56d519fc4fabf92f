//! Configuration of the projections service, from the environment.

use service_runtime::ServiceConfig;
use service_runtime::settings::{Env, Setting, SettingError, common};

pub const PROJECTIONS_ADDR: Setting = Setting {
    name: "PROJECTIONS_ADDR",
    default: Some("127.0.0.1:8081"),
    help: "address the projections service listens on",
};

/// Every variable the projections service reads.
pub fn settings() -> Vec<Setting> {
    common::with(&[PROJECTIONS_ADDR])
}

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        Ok(Self {
            service: ServiceConfig::from_env(env, &PROJECTIONS_ADDR)?,
        })
    }

    pub fn log_filter(&self) -> &str {
        &self.service.infrastructure.log_filter
    }
}
