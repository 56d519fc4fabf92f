//! Configuration of the command API, from the environment.

use std::time::Duration;

use event_store::writer::core::MemoryBudget;
use service_runtime::ServiceConfig;
use service_runtime::api_keys::{self, Gate};
use service_runtime::personal_data::EmailIndex;
use service_runtime::personal_data::email_index::EMAIL_INDEX_KEY;
use service_runtime::settings::{Env, Setting, SettingError, common};

pub const COMMAND_API_ADDR: Setting = Setting {
    name: "COMMAND_API_ADDR",
    default: Some("127.0.0.1:8080"),
    help: "address the command API listens on",
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
pub const WRITER_AGGREGATES_HELD: Setting = Setting {
    name: "WRITER_AGGREGATES_HELD",
    default: Some("2000"),
    help: "aggregates a partition writer keeps in memory; the least recently used others are read back from the snapshot tables when a command needs them",
};
pub const WRITER_OUTCOMES_HELD: Setting = Setting {
    name: "WRITER_OUTCOMES_HELD",
    default: Some("2000"),
    help: "command outcomes a partition writer keeps in memory; older ones in the 24-hour idempotency window are looked up in the snapshot tables",
};
pub const WRITER_IDLE_SECONDS: Setting = Setting {
    name: "WRITER_IDLE_SECONDS",
    default: Some("120"),
    help: "an aggregate no command used, or an outcome decided, this long ago leaves a partition writer's memory (it stays in the snapshot tables)",
};

pub const PEER_KEY: Setting = Setting {
    name: "PEER_KEY",
    default: Some(""),
    help: "key instances send each other when one hands a command to the instance writing its partition (empty: derived from the whole API_KEYS list); the same on every instance",
};
pub const ADVERTISED_URL: Setting = Setting {
    name: "ADVERTISED_URL",
    default: Some(""),
    help: "base URL other instances reach this one at (empty: http:// and the bound address, or the host name when listening on 0.0.0.0)",
};

/// Every variable the command API reads.
pub fn settings() -> Vec<Setting> {
    let mut own = vec![
        COMMAND_API_ADDR,
        MAX_IN_FLIGHT,
        COMMAND_TIMEOUT_MS,
        WRITER_AGGREGATES_HELD,
        WRITER_OUTCOMES_HELD,
        WRITER_IDLE_SECONDS,
        PEER_KEY,
        ADVERTISED_URL,
    ];
    own.extend(api_keys::SETTINGS);
    own.push(EMAIL_INDEX_KEY);
    common::with(&own)
}

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    /// Who may call, and how fast.
    pub gate: Gate,
    pub max_in_flight: usize,
    pub command_timeout: Duration,
    /// What each partition writer keeps in memory.
    pub writer_memory: MemoryBudget,
    /// The key instances authenticate to each other with.
    pub peer_key: String,
    /// How peers reach this instance; `None`: from the bound address.
    pub advertised_url: Option<String>,
    /// The blind index of email addresses (`EMAIL_INDEX_KEY`).
    pub email_index: EmailIndex,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        Ok(Self {
            service: ServiceConfig::from_env(env, &COMMAND_API_ADDR)?,
            gate: Gate::from_env(env)?,
            max_in_flight: env.positive(&MAX_IN_FLIGHT)? as usize,
            command_timeout: Duration::from_millis(env.positive(&COMMAND_TIMEOUT_MS)?),
            writer_memory: MemoryBudget {
                aggregates: env.positive(&WRITER_AGGREGATES_HELD)? as usize,
                outcomes: env.positive(&WRITER_OUTCOMES_HELD)? as usize,
                idle: i64::try_from(env.positive(&WRITER_IDLE_SECONDS)?)
                    .ok()
                    .and_then(chrono::TimeDelta::try_seconds)
                    .unwrap_or(chrono::TimeDelta::MAX),
            },
            peer_key: match env.text(&PEER_KEY)?.trim() {
                "" => derived_peer_key(env)?,
                key => key.to_owned(),
            },
            advertised_url: advertised_url(env)?,
            email_index: EmailIndex::from_env(env)?,
        })
    }

    /// Broker, database, logs and traces (for `run_binary`).
    pub fn infrastructure(&self) -> &service_runtime::Infrastructure {
        &self.service.infrastructure
    }
}

/// The peers' key when `PEER_KEY` is not set: a digest of the whole `API_KEYS` list, the
/// same on every instance that shares it, and not known to a client that holds one key of
/// several. A client holding the only key could derive it: set `PEER_KEY` then. Required
/// when the list holds digests (`sha256:`), which anyone reading the configuration knows.
fn derived_peer_key(env: &Env) -> Result<String, SettingError> {
    use sha2::{Digest, Sha256};
    let keys = env.text(&api_keys::API_KEYS)?;
    let mut keys: Vec<&str> = keys
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    if keys.iter().any(|k| api_keys::is_digest_entry(k)) {
        return Err(SettingError::Invalid {
            name: PEER_KEY.name,
            value: String::new(),
            reason: "must be set when API_KEYS holds digests (sha256:...): a key derived from them would be known to whoever reads the configuration".into(),
        });
    }
    keys.sort_unstable();
    Ok(hex::encode(Sha256::digest(format!(
        "shop peers\n{}",
        keys.join("\n")
    ))))
}

fn advertised_url(env: &Env) -> Result<Option<String>, SettingError> {
    let url = env
        .text(&ADVERTISED_URL)?
        .trim()
        .trim_end_matches('/')
        .to_owned();
    if url.is_empty() {
        return Ok(None);
    }
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match host {
        Some(host) if !host.is_empty() && !host.contains('/') => Ok(Some(url)),
        _ => Err(SettingError::Invalid {
            name: ADVERTISED_URL.name,
            value: url,
            reason: "expected http://host:port (no path)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&'static str, &'static str)]) -> Result<Config, SettingError> {
        Config::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn the_peers_key_is_derived_from_keys_but_never_from_digests() {
        let first = config(&[("API_KEYS", "a, b")]).expect("valid");
        let same = config(&[("API_KEYS", "b,a")]).expect("valid");
        assert_eq!(first.peer_key, same.peer_key, "order does not matter");
        assert_ne!(first.peer_key, "a");
        let digests = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let Err(refused) = config(&[("API_KEYS", digests)]) else {
            panic!("accepted without PEER_KEY");
        };
        assert!(refused.to_string().contains("PEER_KEY"), "{refused}");
        let given = config(&[("API_KEYS", digests), ("PEER_KEY", "p")]).expect("valid");
        assert_eq!(given.peer_key, "p");
    }
}
