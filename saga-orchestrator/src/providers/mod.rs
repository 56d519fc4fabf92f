//! The outside world the saga talks to, behind traits so that a real provider can replace
//! a simulator: a payment provider and a notification channel. Every call goes through a
//! [`breaker::CircuitBreaker`] of its provider and has a timeout; retries are the
//! dispatcher's, spread out with jittered backoff and kept durable in the outbox.

pub mod breaker;
pub mod payments;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so provider traits stay object-safe.
pub type CallFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CallError>> + Send + 'a>>;

/// How a call to a provider failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Worth trying again later: a timeout, a refused connection, a 5xx, an open circuit.
    #[error("{0}")]
    Transient(String),
    /// Trying again cannot help: the provider refused the request itself.
    #[error("{0}")]
    Permanent(String),
}
