//! API keys and their rate limits. Keys come from configuration; only their SHA-256 is
//! kept, and a key is known to the rest of the service by a short fingerprint (the
//! "principal"), which also scopes its idempotency keys.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The authenticated caller: a fingerprint of its API key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(pub String);

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
}

/// 401 without a valid key, 429 past the key's rate; otherwise the request goes on with
/// its `Principal`.
pub async fn authenticate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let Some(principal) = gate.principal(&request) else {
        return ApiError::Unauthorized.into_response();
    };
    if let Err(not_until) = gate.limiter.check_key(&principal.0) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let retry_after_secs = u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX);
        return ApiError::RateLimited { retry_after_secs }.into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}
