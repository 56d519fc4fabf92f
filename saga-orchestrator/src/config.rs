//! Configuration of the saga-orchestrator service, from the environment.

use std::time::Duration;

use service_runtime::ServiceConfig;
use service_runtime::api_keys::{self, Gate};
use service_runtime::settings::{Env, Setting, SettingError, common};

use crate::dispatch::DispatchConfig;
use crate::providers::payments::SimulatorRules;
use crate::providers::webhook::WebhookSecret;

pub const SAGA_ORCHESTRATOR_ADDR: Setting = Setting {
    name: "SAGA_ORCHESTRATOR_ADDR",
    default: Some("127.0.0.1:8082"),
    help: "address the saga-orchestrator service listens on",
};

pub const SAGA_PAYMENT_TIMEOUT_MS: Setting = Setting {
    name: "SAGA_PAYMENT_TIMEOUT_MS",
    default: Some("30000"),
    help: "how long the payment may take before the saga compensates (a durable deadline)",
};

pub const SAGA_BATCH_MAX: Setting = Setting {
    name: "SAGA_BATCH_MAX",
    default: Some("500"),
    help: "most events the orchestrator takes in per Postgres transaction",
};

pub const PAYMENT_DECLINE_ABOVE_CENTS: Setting = Setting {
    name: "PAYMENT_DECLINE_ABOVE_CENTS",
    default: Some("100000"),
    help: "payment simulator: amounts above this (minor units) are declined",
};

pub const PAYMENT_REFUSE_REFUNDS_OF_CENTS: Setting = Setting {
    name: "PAYMENT_REFUSE_REFUNDS_OF_CENTS",
    default: Some("0"),
    help: "payment simulator: refunds of payments of exactly this amount (minor units) are refused for good, which fails the saga for an operator; 0: none",
};

pub const PAYMENT_LATENCY_MS: Setting = Setting {
    name: "PAYMENT_LATENCY_MS",
    default: Some("20"),
    help: "payment simulator: how long each call takes",
};

pub const PAYMENT_FAILURE_RATE: Setting = Setting {
    name: "PAYMENT_FAILURE_RATE",
    default: Some("0"),
    help: "payment simulator: share of calls (0 to 1) that fail as if it were unreachable",
};

pub const NOTIFICATION_WEBHOOK_URL: Setting = Setting {
    name: "NOTIFICATION_WEBHOOK_URL",
    default: Some(""),
    help: "where notifications are POSTed (signed); empty: notifications are only logged",
};

pub const NOTIFICATION_WEBHOOK_SECRET: Setting = Setting {
    name: "NOTIFICATION_WEBHOOK_SECRET",
    default: Some(""),
    help: "Standard Webhooks signing secret (whsec_ and base64; `shopctl webhook-secret` makes one), or two separated by a space while rotating; required with NOTIFICATION_WEBHOOK_URL",
};

pub const NOTIFICATION_WEBHOOK_CA_FILE: Setting = Setting {
    name: "NOTIFICATION_WEBHOOK_CA_FILE",
    default: Some(""),
    help: "PEM file of authorities trusted for an https:// webhook, besides the system's; the receiver's certificate is tried at start",
};

pub const NOTIFICATION_ATTEMPTS: Setting = Setting {
    name: "NOTIFICATION_ATTEMPTS",
    default: Some("5"),
    help: "delivery attempts of a notification before it is recorded as failed",
};

pub const PROVIDER_TIMEOUT_MS: Setting = Setting {
    name: "PROVIDER_TIMEOUT_MS",
    default: Some("2000"),
    help: "longest a call to the payment provider or the webhook may take",
};

pub const CIRCUIT_FAILURE_THRESHOLD: Setting = Setting {
    name: "CIRCUIT_FAILURE_THRESHOLD",
    default: Some("5"),
    help: "failures in a row that open a provider's circuit breaker",
};

pub const CIRCUIT_OPEN_MS: Setting = Setting {
    name: "CIRCUIT_OPEN_MS",
    default: Some("5000"),
    help: "how long an open circuit waits before letting one probe call through",
};

pub const SAGA_STEP_LEASE_MS: Setting = Setting {
    name: "SAGA_STEP_LEASE_MS",
    default: Some("15000"),
    help: "how long a step being carried out is hidden from other attempts (crash recovery delay)",
};

/// Every variable the saga-orchestrator service reads.
pub fn settings() -> Vec<Setting> {
    let mut own = vec![
        SAGA_ORCHESTRATOR_ADDR,
        SAGA_PAYMENT_TIMEOUT_MS,
        SAGA_BATCH_MAX,
        PAYMENT_DECLINE_ABOVE_CENTS,
        PAYMENT_REFUSE_REFUNDS_OF_CENTS,
        PAYMENT_LATENCY_MS,
        PAYMENT_FAILURE_RATE,
        NOTIFICATION_WEBHOOK_URL,
        NOTIFICATION_WEBHOOK_SECRET,
        NOTIFICATION_WEBHOOK_CA_FILE,
        NOTIFICATION_ATTEMPTS,
        PROVIDER_TIMEOUT_MS,
        CIRCUIT_FAILURE_THRESHOLD,
        CIRCUIT_OPEN_MS,
        SAGA_STEP_LEASE_MS,
    ];
    own.extend(api_keys::SETTINGS);
    common::with(&own)
}

/// The webhook, when one is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// Every notice is signed with each (two while one replaces the other).
    pub secrets: Vec<WebhookSecret>,
    /// Authorities trusted for an https URL besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    /// Who may read the sagas, and how fast.
    pub gate: Gate,
    pub payment_timeout: Duration,
    pub batch_max: usize,
    pub simulator: SimulatorRules,
    pub webhook: Option<WebhookConfig>,
    pub dispatch: DispatchConfig,
    pub circuit_threshold: u32,
    pub circuit_open: Duration,
}

/// The webhook notifications go to, signed with its secrets; none without a URL.
fn webhook(env: &Env) -> Result<Option<WebhookConfig>, SettingError> {
    let url = env.text(&NOTIFICATION_WEBHOOK_URL)?;
    let secret = env.text(&NOTIFICATION_WEBHOOK_SECRET)?;
    match (url.trim(), secret.trim()) {
        ("", _) => Ok(None),
        (url, "") => Err(invalid(
            &NOTIFICATION_WEBHOOK_SECRET,
            String::new(),
            &format!("must be set to sign notifications to {url}"),
        )),
        (url, secret) if url.starts_with("http://") || url.starts_with("https://") => {
            let secrets = WebhookSecret::parse_list(secret).map_err(|reason| {
                invalid(&NOTIFICATION_WEBHOOK_SECRET, "<redacted>".into(), &reason)
            })?;
            Ok(Some(WebhookConfig {
                url: url.to_owned(),
                secrets,
                ca_file: webhook_ca_file(env, url)?,
            }))
        }
        (url, _) => Err(invalid(
            &NOTIFICATION_WEBHOOK_URL,
            url.to_owned(),
            "must be an http:// or https:// URL",
        )),
    }
}

/// The webhook's extra authorities: checked now (readable, not expired), and only for an
/// https URL.
fn webhook_ca_file(env: &Env, url: &str) -> Result<Option<std::path::PathBuf>, SettingError> {
    let path = env.text(&NOTIFICATION_WEBHOOK_CA_FILE)?;
    let path = path.trim();
    if path.is_empty() {
        return Ok(None);
    }
    if !url.starts_with("https://") {
        return Err(invalid(
            &NOTIFICATION_WEBHOOK_CA_FILE,
            path.to_owned(),
            "is set, but NOTIFICATION_WEBHOOK_URL is not an https:// URL",
        ));
    }
    service_runtime::tls::certificate_file(
        &NOTIFICATION_WEBHOOK_CA_FILE,
        path,
        service_runtime::tls::Holds::Authorities,
    )
    .map(Some)
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let millis = |setting: &Setting| env.positive(setting).map(Duration::from_millis);
        let failure_rate: f64 = env.parse(&PAYMENT_FAILURE_RATE)?;
        if !(0.0..=1.0).contains(&failure_rate) {
            return Err(invalid(
                &PAYMENT_FAILURE_RATE,
                failure_rate.to_string(),
                "must be between 0 and 1",
            ));
        }
        let webhook = webhook(env)?;
        let dispatch = DispatchConfig {
            lease: millis(&SAGA_STEP_LEASE_MS)?,
            call_timeout: millis(&PROVIDER_TIMEOUT_MS)?,
            notify_attempts: i32::try_from(env.positive(&NOTIFICATION_ATTEMPTS)?)
                .unwrap_or(i32::MAX),
            ..DispatchConfig::default()
        };
        Ok(Self {
            service: ServiceConfig::from_env(env, &SAGA_ORCHESTRATOR_ADDR)?,
            gate: Gate::from_env(env)?,
            payment_timeout: millis(&SAGA_PAYMENT_TIMEOUT_MS)?,
            batch_max: usize::try_from(env.positive(&SAGA_BATCH_MAX)?).unwrap_or(usize::MAX),
            simulator: SimulatorRules {
                decline_above_cents: env.parse(&PAYMENT_DECLINE_ABOVE_CENTS)?,
                refuse_refunds_of_cents: Some(env.parse(&PAYMENT_REFUSE_REFUNDS_OF_CENTS)?)
                    .filter(|cents| *cents > 0),
                latency: Duration::from_millis(env.parse(&PAYMENT_LATENCY_MS)?),
                failure_rate,
                ..SimulatorRules::default()
            },
            webhook,
            dispatch,
            circuit_threshold: u32::try_from(env.positive(&CIRCUIT_FAILURE_THRESHOLD)?)
                .unwrap_or(u32::MAX),
            circuit_open: millis(&CIRCUIT_OPEN_MS)?,
        })
    }

    /// Broker, database, logs and traces (for `run_binary`).
    pub fn infrastructure(&self) -> &service_runtime::Infrastructure {
        &self.service.infrastructure
    }
}

fn invalid(setting: &Setting, value: String, reason: &str) -> SettingError {
    SettingError::Invalid {
        name: setting.name,
        value,
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// An environment with `pairs` and the one API key every service needs.
    fn keyed<const N: usize>(pairs: [(&'static str, &'static str); N]) -> Env {
        Env::from_pairs(pairs.into_iter().chain([("API_KEYS", "k")]))
    }

    #[test]
    fn a_webhook_needs_a_secret_and_an_http_url() {
        let url_only = keyed([("NOTIFICATION_WEBHOOK_URL", "http://127.0.0.1:9/hook")]);
        let err = Config::from_env(&url_only).unwrap_err().to_string();
        assert!(err.starts_with("NOTIFICATION_WEBHOOK_SECRET"), "{err}");
        let ftp = keyed([
            ("NOTIFICATION_WEBHOOK_URL", "ftp://x"),
            ("NOTIFICATION_WEBHOOK_SECRET", SECRET),
        ]);
        assert!(Config::from_env(&ftp).is_err());
        let both = keyed([
            ("NOTIFICATION_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
            ("NOTIFICATION_WEBHOOK_SECRET", SECRET),
        ]);
        assert!(Config::from_env(&both).unwrap().webhook.is_some());
        let plain = keyed([
            ("NOTIFICATION_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
            ("NOTIFICATION_WEBHOOK_SECRET", "plain-text-secret"),
        ]);
        let err = Config::from_env(&plain).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "NOTIFICATION_WEBHOOK_SECRET=\"<redacted>\" is invalid: a secret is whsec_"
            ),
            "{err}"
        );
        let rotating = keyed([
            ("NOTIFICATION_WEBHOOK_URL", "http://127.0.0.1:9/hook"),
            (
                "NOTIFICATION_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            ),
        ]);
        let webhook = Config::from_env(&rotating).unwrap().webhook.unwrap();
        assert_eq!(webhook.secrets.len(), 2);
        assert!(Config::from_env(&keyed([])).unwrap().webhook.is_none());
    }

    #[test]
    fn a_failure_rate_outside_0_to_1_is_refused() {
        let env = keyed([("PAYMENT_FAILURE_RATE", "1.5")]);
        assert!(
            Config::from_env(&env)
                .unwrap_err()
                .to_string()
                .starts_with("PAYMENT_FAILURE_RATE")
        );
    }
}
