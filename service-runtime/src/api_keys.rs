//! API keys and their rate limits, the same for every service's `/v1` routes. Keys come
//! from `API_KEYS`; only their SHA-256 is kept, and a key is known to the rest of a
//! service by a short fingerprint (the [`Principal`]), which also scopes the command
//! API's idempotency keys. `/health`, `/ready`, `/metrics` and `/openapi.json` stay open.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::{Digest, Sha256};

use crate::problem::Problem;
use crate::settings::{Env, Setting, SettingError};

pub const API_KEYS: Setting = Setting {
    name: "API_KEYS",
    default: None,
    help: "comma-separated API keys accepted as `Authorization: Bearer <key>`",
};
pub const RATE_LIMIT_PER_SECOND: Setting = Setting {
    name: "RATE_LIMIT_PER_SECOND",
    default: Some("500"),
    help: "sustained requests per second per API key and service; beyond, 429 with Retry-After",
};
pub const RATE_LIMIT_BURST: Setting = Setting {
    name: "RATE_LIMIT_BURST",
    default: Some("1000"),
    help: "requests an API key may send at once above its sustained rate",
};

/// The variables a service with API keys reads.
pub const SETTINGS: [Setting; 3] = [API_KEYS, RATE_LIMIT_PER_SECOND, RATE_LIMIT_BURST];

/// The authenticated caller: a fingerprint of its API key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(pub String);

/// Which keys are accepted, and how fast each may call.
#[derive(Clone, Debug)]
pub struct Gate {
    keys: Arc<HashSet<String>>,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Gate {
    pub fn new(keys: &[String], per_second: u32, burst: u32) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Self {
            keys: Arc::new(keys.iter().map(|k| digest(k)).collect()),
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
        }
    }

    /// The gate `API_KEYS` and the rate limits describe; at least one key is required.
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let keys: Vec<String> = env
            .text(&API_KEYS)?
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        if keys.is_empty() {
            return Err(SettingError::Invalid {
                name: API_KEYS.name,
                value: String::new(),
                reason: "at least one key is needed".into(),
            });
        }
        let per_second = u32::try_from(env.positive(&RATE_LIMIT_PER_SECOND)?).unwrap_or(u32::MAX);
        let burst = u32::try_from(env.positive(&RATE_LIMIT_BURST)?).unwrap_or(u32::MAX);
        Ok(Self::new(&keys, per_second, burst))
    }

    fn principal(&self, request: &Request) -> Option<Principal> {
        let value = request
            .headers()
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?;
        let (scheme, key) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let hashed = digest(key.trim());
        self.keys
            .contains(&hashed)
            .then(|| Principal(hashed[..16].to_owned()))
    }

    /// `routes` behind this gate.
    pub fn guard<S: Clone + Send + Sync + 'static>(&self, routes: Router<S>) -> Router<S> {
        routes.layer(axum::middleware::from_fn_with_state(
            self.clone(),
            authenticate,
        ))
    }
}

/// 401 without a valid key, 429 past the key's rate; otherwise the request goes on with
/// its [`Principal`].
pub async fn authenticate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let Some(principal) = gate.principal(&request) else {
        let mut response = Problem::new(
            StatusCode::UNAUTHORIZED,
            "send a valid API key as `Authorization: Bearer <key>`",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    if let Err(not_until) = gate.limiter.check_key(&principal.0) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let retry_after_secs = u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX);
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "this API key is over its rate limit",
        )
        .retry_after(retry_after_secs)
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}
