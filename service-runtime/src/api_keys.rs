//! API keys, their roles and their rate limits, the same for every service's `/v1` routes.
//! Client keys (`API_KEYS`) send commands and read; operator keys (`OPERATOR_API_KEYS`)
//! may also act on the system (retry a saga, retry or skip a dead letter): a route for
//! operators takes an [`Operator`] and answers 403 to a client key. A key is configured
//! either as itself or as `sha256:<hex>` of it, so configuration need not hold it; only
//! digests are kept in memory. Several keys of each role may be valid at once, which is how
//! keys rotate. A key is known to the rest of a service by a short fingerprint (the
//! [`Principal`]), which also scopes the command API's idempotency keys. `/health`,
//! `/ready`, `/metrics` and `/openapi.json` stay open.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
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
    help: "comma-separated client API keys (each the key or `sha256:<hex>` of it), accepted as `Authorization: Bearer <key>` for commands and queries",
};
pub const OPERATOR_API_KEYS: Setting = Setting {
    name: "OPERATOR_API_KEYS",
    default: Some(""),
    help: "comma-separated operator API keys (each the key or `sha256:<hex>` of it): everything a client key may do, plus the operators' actions (saga retry, dead letters)",
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
pub const SETTINGS: [Setting; 4] = [
    API_KEYS,
    OPERATOR_API_KEYS,
    RATE_LIMIT_PER_SECOND,
    RATE_LIMIT_BURST,
];

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Commands and queries.
    Client,
    /// Everything a client may do, and the operators' actions.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Operator => "operator",
        }
    }
}

/// The authenticated caller: a fingerprint of its API key, and the key's role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The first 16 hex digits of the key's SHA-256: safe to log.
    pub fingerprint: String,
    pub role: Role,
}

/// A caller with an operator key: the extractor of every operator action, which answers
/// 403 to a client key (and 401 when the route is not behind a [`Gate`]).
#[derive(Clone, Debug)]
pub struct Operator(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        match parts.extensions.get::<Principal>() {
            Some(p) if p.role == Role::Operator => Ok(Self(p.clone())),
            Some(p) => Err(refused(p, parts)),
            None => Err(unauthorized()),
        }
    }
}

/// 403 for a client key on an operator action, with an audit line.
fn refused(caller: &Principal, parts: &Parts) -> Response {
    tracing::warn!(target: "audit", role = caller.role.as_str(), principal = %caller.fingerprint, method = %parts.method, path = %parts.uri.path(), "operator action refused: a client key");
    Problem::new(
        StatusCode::FORBIDDEN,
        "this action needs an operator key (OPERATOR_API_KEYS); this key is a client key",
    )
    .typed(
        crate::problem::problem_type("operator-key-required"),
        "Operator key required",
    )
    .into_response()
}

/// Which keys are accepted, with which role, and how fast each may call.
#[derive(Clone, Debug)]
pub struct Gate {
    /// Role by the hex SHA-256 of the key.
    keys: Arc<HashMap<String, Role>>,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn is_hex_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a configured entry is a digest (`sha256:<hex>`, the prefix in any case).
pub fn is_digest_entry(entry: &str) -> bool {
    entry
        .get(..7)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("sha256:"))
}

/// The digest a configured entry stands for: `sha256:<hex>` as given, a key hashed. A bare
/// digest (64 hex digits) is refused: it would silently become a key of its own.
fn digest_of_entry(entry: &str) -> Result<String, String> {
    if is_digest_entry(entry) {
        let hex = &entry[7..];
        return if is_hex_digest(hex) {
            Ok(hex.to_ascii_lowercase())
        } else {
            Err("a `sha256:` entry needs 64 hex digits".into())
        };
    }
    if is_hex_digest(entry) {
        return Err(
            "an entry of 64 hex digits looks like a digest: write it as `sha256:<hex>`".into(),
        );
    }
    Ok(digest(entry))
}

/// The entry to configure for `key` so that configuration does not hold the key itself.
pub fn hashed_entry(key: &str) -> String {
    format!("sha256:{}", digest(key))
}

impl Gate {
    fn with_keys(keys: HashMap<String, Role>, per_second: u32, burst: u32) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Self {
            keys: Arc::new(keys),
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
        }
    }

    /// A gate that knows one key (the key itself, never a digest) and limits no rate.
    pub fn for_key(key: &str) -> Self {
        let keys = HashMap::from([(digest(key), Role::Client)]);
        Self::with_keys(keys, u32::MAX, u32::MAX)
    }

    /// The gate `API_KEYS`, `OPERATOR_API_KEYS` and the rate limits describe; at least
    /// one client key is required.
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let clients = digests(env, &API_KEYS)?;
        if clients.is_empty() {
            return Err(SettingError::Invalid {
                name: API_KEYS.name,
                value: String::new(),
                reason: "at least one key is needed".into(),
            });
        }
        let operators = digests(env, &OPERATOR_API_KEYS)?;
        let mut keys: HashMap<String, Role> =
            clients.into_iter().map(|d| (d, Role::Client)).collect();
        for digest in operators {
            if keys.insert(digest, Role::Operator).is_some() {
                return Err(SettingError::Invalid {
                    name: OPERATOR_API_KEYS.name,
                    value: "(not shown: it may hold keys)".into(),
                    reason: "a key is in API_KEYS too: give each key one role".into(),
                });
            }
        }
        let per_second = u32::try_from(env.positive(&RATE_LIMIT_PER_SECOND)?).unwrap_or(u32::MAX);
        let burst = u32::try_from(env.positive(&RATE_LIMIT_BURST)?).unwrap_or(u32::MAX);
        Ok(Self::with_keys(keys, per_second, burst))
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
        let role = *self.keys.get(&hashed)?;
        Some(Principal {
            fingerprint: hashed[..16].to_owned(),
            role,
        })
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
        return unauthorized();
    };
    if let Err(not_until) = gate.limiter.check_key(&principal.fingerprint) {
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

fn unauthorized() -> Response {
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "send a valid API key as `Authorization: Bearer <key>`",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The digests of the comma-separated entries of a key setting.
fn digests(env: &Env, setting: &Setting) -> Result<Vec<String>, SettingError> {
    env.text(setting)?
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|entry| {
            digest_of_entry(entry).map_err(|reason| SettingError::Invalid {
                name: setting.name,
                value: "(not shown: it may hold keys)".into(),
                reason,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn gate(clients: &str, operators: &str) -> Result<Gate, SettingError> {
        Gate::from_env(&Env::from_pairs([
            ("API_KEYS", clients),
            ("OPERATOR_API_KEYS", operators),
        ]))
    }

    fn role(gate: &Gate, key: &str) -> Option<Role> {
        let request = Request::builder()
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::empty())
            .expect("a request");
        gate.principal(&request).map(|p| p.role)
    }

    #[test]
    fn keys_given_as_themselves_or_as_digests_carry_their_role() {
        let hashed = hashed_entry("client-two");
        let gate = gate(&format!("client-one, {hashed}"), "operator-one").expect("valid");
        assert_eq!(role(&gate, "client-one"), Some(Role::Client));
        assert_eq!(role(&gate, "client-two"), Some(Role::Client));
        assert_eq!(role(&gate, "operator-one"), Some(Role::Operator));
        assert_eq!(role(&gate, "unknown"), None);
        assert_eq!(role(&gate, &hashed), None, "a digest is not a key");
        let upper = hashed.replacen("sha256:", "SHA256:", 1);
        let gate = Gate::from_env(&Env::from_pairs([("API_KEYS", upper.as_str())])).expect("valid");
        assert_eq!(role(&gate, "client-two"), Some(Role::Client), "any case");
    }

    #[test]
    fn a_malformed_digest_is_a_configuration_error_that_does_not_show_the_setting() {
        let error = gate("secret-key, sha256:abc", "").expect_err("malformed");
        let text = error.to_string();
        assert!(
            text.contains("API_KEYS") && text.contains("64 hex digits"),
            "{text}"
        );
        assert!(!text.contains("secret-key"), "{text}");
        let error = gate("k", "sha256:zz").expect_err("malformed");
        assert!(error.to_string().contains("OPERATOR_API_KEYS"), "{error}");
        assert!(gate(" , ", "o").is_err(), "a client key is required");
        let bare = "ab".repeat(32);
        assert!(gate(&bare, "").is_err(), "a digest without its prefix");
        let error = gate("both", "both").expect_err("one role per key");
        assert!(error.to_string().contains("one role"), "{error}");
    }

    #[test]
    fn one_fingerprint_per_key_whatever_its_entry() {
        let plain = gate("same-key", "").expect("valid");
        let hashed = gate(&hashed_entry("same-key"), "").expect("valid");
        let request = || {
            Request::builder()
                .header(header::AUTHORIZATION, "Bearer same-key")
                .body(Body::empty())
                .expect("a request")
        };
        let principal = plain.principal(&request());
        assert!(principal.is_some());
        assert_eq!(
            principal,
            hashed.principal(&request()),
            "idempotency keys stay scoped alike when a key's entry is hashed"
        );
    }
}
