//! One run per `Idempotency-Key`, and its answer for every duplicate.
//!
//! The first request with a key claims it (a row in `command_api.idempotency_keys` naming
//! it as owner, with a lease) and runs. A duplicate, concurrent or later, on this instance
//! or another, finds the row: a stored answer is replayed (status, the answer's own headers
//! and body, byte for byte); a run in progress is waited for, polling the row. The running
//! request renews its lease while it runs, so only a lease whose instance died runs out;
//! then a duplicate takes the key over and runs the request again. A run that ends in a
//! 5xx, or with an answer to a request that could not be read (400, 413, 415), or is
//! cancelled lets go of the key at once, so the next duplicate runs it again instead of
//! getting a stored "retry". Running again is safe: the commands keep ids derived from the
//! key, so the writers answer what they decided.
//!
//! Each step is its own statement, so each sees what other requests committed before it
//! (one statement that inserted and then read the row saw the snapshot taken before a
//! concurrent insert committed, found nothing, and answered 503).

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use service_runtime::api_keys::Principal;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::types::Json;
use tokio::time::Instant;
use uuid::Uuid;

use super::key_of;
use crate::http::body::bytes_rejection;
use crate::http::error::ApiError;

/// The headers that belong to an answer (not to the request that got it) and are replayed.
const ANSWER_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::ETAG];

/// The keys' table, and how long a run may hold its key before a duplicate takes over.
#[derive(Clone, Debug)]
pub struct KeyedRuns {
    pool: PgPool,
    lease: Duration,
}

/// What a request with a key does: run (it holds the key), or answer what the key's run
/// answered.
enum Claim {
    Run(Uuid),
    Replay(Response),
}

/// A key's row: the request it was first used for, its answer (status, headers, body) once
/// stored, and whether nobody holds it (let go, or its lease ran out).
type Stored = (
    String,
    Option<i16>,
    Option<Json<Vec<(String, String)>>>,
    Option<Vec<u8>>,
    Option<bool>,
);

impl KeyedRuns {
    /// A lease lasts three command timeouts and is renewed every command timeout while its
    /// request runs: a duplicate takes the key over only from an instance that stopped
    /// renewing (it died, or lost Postgres for that long).
    pub fn new(pool: PgPool, command_timeout: Duration) -> Self {
        Self {
            pool,
            lease: command_timeout * 3,
        }
    }

    /// Claims `key` for the request hashed `request_hash`, or waits for the run that holds
    /// it and answers what it answered.
    async fn claim(
        &self,
        principal: &str,
        key: &str,
        request_hash: &str,
    ) -> Result<Claim, ApiError> {
        let owner = Uuid::now_v7();
        let deadline = Instant::now() + self.lease + Duration::from_secs(1);
        let mut pause = Duration::from_millis(5);
        let mut free = true;
        loop {
            if free && self.take(principal, key, request_hash, owner).await? {
                return Ok(Claim::Run(owner));
            }
            let stored: Option<Stored> = sqlx::query_as(
                "SELECT request_hash, status, headers, body, \
                   owner IS NULL OR lease_until < now() \
                 FROM command_api.idempotency_keys WHERE principal = $1 AND key = $2",
            )
            .bind(principal)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            match stored {
                Some((hash, ..)) if hash != request_hash => {
                    return Err(ApiError::IdempotencyKeyReused);
                }
                Some((_, Some(status), headers, body, _)) => {
                    return Ok(Claim::Replay(replay(status, headers, body)));
                }
                // Running elsewhere (wait), or let go or gone meanwhile (take it).
                Some((.., held_by_nobody)) => free = held_by_nobody.unwrap_or(false),
                None => free = true,
            }
            if Instant::now() >= deadline {
                return Err(ApiError::IdempotencyKeyInProgress);
            }
            if free {
                continue;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Takes the key: a new one, or one nobody holds (let go, or its lease ran out) that was
    /// first used for this same request and has no answer yet.
    async fn take(
        &self,
        principal: &str,
        key: &str,
        request_hash: &str,
        owner: Uuid,
    ) -> Result<bool, ApiError> {
        let taken: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO command_api.idempotency_keys AS k \
               (principal, key, request_hash, owner, lease_until) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) \
             ON CONFLICT (principal, key) DO UPDATE \
               SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until \
               WHERE k.status IS NULL AND k.request_hash = EXCLUDED.request_hash \
                 AND (k.lease_until IS NULL OR k.lease_until < now()) \
             RETURNING k.owner",
        )
        .bind(principal)
        .bind(key)
        .bind(request_hash)
        .bind(owner)
        .bind(self.lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(taken.is_some())
    }

    /// Runs `run` while renewing the key's lease every third of it.
    async fn renewing(&self, held: &Held, run: impl Future<Output = Response>) -> Response {
        tokio::pin!(run);
        let every = self.lease / 3;
        let mut renew = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                response = &mut run => return response,
                _ = renew.tick() => self.renew(held).await,
            }
        }
    }

    async fn renew(&self, held: &Held) {
        let renewed = sqlx::query(
            "UPDATE command_api.idempotency_keys \
             SET lease_until = now() + make_interval(secs => $4) \
             WHERE principal = $1 AND key = $2 AND owner = $3",
        )
        .bind(&held.principal)
        .bind(&held.key)
        .bind(held.owner)
        .bind(self.lease.as_secs_f64())
        .execute(&self.pool)
        .await;
        if let Err(e) = renewed {
            tracing::warn!(key = %held.key, error = %e, "idempotency key's lease not renewed");
        }
    }

    /// Stores `response` as the key's answer (a 5xx lets go of the key instead) and
    /// returns it. If storing fails, the answer still goes out and the key is let go, so
    /// that a duplicate runs the request again.
    async fn settle(&self, held: &mut Held, response: Response) -> Response {
        if !is_the_answer(response.status()) {
            held.let_go().await;
            return response;
        }
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => bytes,
            Err(e) => {
                held.let_go().await;
                return ApiError::Internal(format!("answer body: {e}")).into_response();
            }
        };
        let headers: Vec<(String, String)> = ANSWER_HEADERS
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), value.to_owned()))
            })
            .collect();
        let stored = sqlx::query(
            "UPDATE command_api.idempotency_keys \
             SET status = $4, headers = $5, body = $6, answered_at = now(), \
                 owner = NULL, lease_until = NULL \
             WHERE principal = $1 AND key = $2 AND owner = $3",
        )
        .bind(&held.principal)
        .bind(&held.key)
        .bind(held.owner)
        .bind(i16::try_from(parts.status.as_u16()).unwrap_or(i16::MAX))
        .bind(Json(&headers))
        .bind(bytes.as_ref())
        .execute(&self.pool)
        .await;
        match stored {
            Ok(done) if done.rows_affected() == 1 => held.settled = true,
            Ok(_) => tracing::warn!(
                key = %held.key,
                "a request outlived its idempotency key's lease; a duplicate ran it again"
            ),
            Err(e) => tracing::warn!(key = %held.key, error = %e, "answer not stored"),
        }
        Response::from_parts(parts, Body::from(bytes))
    }

    async fn let_go(&self, principal: &str, key: &str, owner: Uuid) {
        let released = sqlx::query(
            "UPDATE command_api.idempotency_keys SET owner = NULL, lease_until = NULL \
             WHERE principal = $1 AND key = $2 AND owner = $3 AND status IS NULL",
        )
        .bind(principal)
        .bind(key)
        .bind(owner)
        .execute(&self.pool)
        .await;
        if let Err(e) = released {
            tracing::warn!(%key, error = %e, "key not let go; its lease will run out");
        }
    }
}

/// A key held by a running request. Dropped unsettled (the client went away and the
/// request was cancelled), it lets go of the key in the background.
struct Held {
    runs: KeyedRuns,
    principal: String,
    key: String,
    owner: Uuid,
    settled: bool,
}

impl Held {
    async fn let_go(&mut self) {
        self.runs
            .let_go(&self.principal, &self.key, self.owner)
            .await;
        self.settled = true;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (runs, principal, key, owner) = (
                self.runs.clone(),
                std::mem::take(&mut self.principal),
                std::mem::take(&mut self.key),
                self.owner,
            );
            runtime.spawn(async move { runs.let_go(&principal, &key, owner).await });
        }
    }
}

/// The middleware: requests without a key (or without a caller) pass through; a keyed
/// one runs once per key.
pub async fn run_once(State(runs): State<KeyedRuns>, request: Request, next: Next) -> Response {
    keyed(runs, request, next)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn keyed(runs: KeyedRuns, request: Request, next: Next) -> Result<Response, ApiError> {
    let key = key_of(request.headers())?.map(str::to_owned);
    let principal = request
        .extensions()
        .get::<Principal>()
        .map(|p| p.fingerprint.clone());
    let (Some(key), Some(principal)) = (key, principal) else {
        return Ok(next.run(request).await);
    };
    let (parts, body) = request.into_parts();
    let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), &())
        .await
        .map_err(bytes_rejection)?;
    let if_match = parts
        .headers
        .get(header::IF_MATCH)
        .map_or(&[][..], HeaderValue::as_bytes);
    let hash = request_hash(parts.method.as_str(), parts.uri.path(), if_match, &bytes);
    match runs.claim(&principal, &key, &hash).await? {
        Claim::Replay(answer) => Ok(answer),
        Claim::Run(owner) => {
            let mut held = Held {
                runs: runs.clone(),
                principal,
                key,
                owner,
                settled: false,
            };
            let run = next.run(Request::from_parts(parts, Body::from(bytes)));
            let response = runs.renewing(&held, run).await;
            Ok(runs.settle(&mut held, response).await)
        }
    }
}

/// Whether `status` is the key's answer for good: not a 5xx (retry), and not an answer to a
/// request that could not be read (400, 413, 415: a client fixes those and retries).
fn is_the_answer(status: StatusCode) -> bool {
    !status.is_server_error()
        && !matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNSUPPORTED_MEDIA_TYPE
        )
}

/// What makes two requests the same request: method, path, `If-Match` and body.
fn request_hash(method: &str, path: &str, if_match: &[u8], body: &[u8]) -> String {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), if_match, body] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(hash.finalize())
}

fn replay(
    status: i16,
    headers: Option<Json<Vec<(String, String)>>>,
    body: Option<Vec<u8>>,
) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body.unwrap_or_default()).into_response();
    for (name, value) in headers.map(|h| h.0).unwrap_or_default() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn unavailable(e: sqlx::Error) -> ApiError {
    ApiError::Unavailable(format!("idempotency keys: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_its_method_path_if_match_and_body() {
        let first = request_hash("POST", "/v1/users", b"", b"{}");
        assert_eq!(first, request_hash("POST", "/v1/users", b"", b"{}"));
        assert_ne!(first, request_hash("POST", "/v1/users", b"", b"{ }"));
        assert_ne!(first, request_hash("POST", "/v1/orders", b"", b"{}"));
        assert_ne!(first, request_hash("POST", "/v1/users", b"\"1\"", b"{}"));
        // Lengths are hashed too: the parts cannot slide into each other.
        assert_ne!(
            request_hash("POST", "/v1/users", b"", b"x"),
            request_hash("POST", "/v1/usersx", b"", b"")
        );
    }

    #[test]
    fn only_answers_to_requests_that_were_read_and_decided_are_kept() {
        for kept in [200, 201, 404, 409, 422] {
            assert!(
                is_the_answer(StatusCode::from_u16(kept).expect("a status")),
                "{kept}"
            );
        }
        for retried in [400, 413, 415, 500, 503] {
            assert!(
                !is_the_answer(StatusCode::from_u16(retried).expect("a status")),
                "{retried}"
            );
        }
    }

    #[test]
    fn a_stored_answer_replays_its_status_headers_and_body() {
        let headers = Json(vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("location".to_owned(), "/v1/users/1".to_owned()),
        ]);
        let answer = replay(201, Some(headers), Some(b"{\"id\":\"1\"}".to_vec()));
        assert_eq!(answer.status(), StatusCode::CREATED);
        assert_eq!(answer.headers()[header::LOCATION], "/v1/users/1");
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/json");
    }
}
