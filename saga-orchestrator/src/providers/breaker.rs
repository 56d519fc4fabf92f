//! A circuit breaker per provider: after `threshold` failures in a row it opens and calls
//! fail at once (the provider gets time to recover, and callers do not pile up on it);
//! after `open_for` one probe call goes through (half-open): success closes it, failure
//! opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// The breaker's state, as `/metrics` shows it (0 closed, 1 open, 2 half-open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// Labels of the `saga_circuit_state` gauge.
pub type CircuitGauge = Family<Vec<(String, String)>, Gauge>;

#[derive(Debug)]
pub struct CircuitBreaker {
    provider: &'static str,
    threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
    gauge: CircuitGauge,
}

/// The call was not made: the circuit is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Open {
    /// How long until a probe may go through.
    pub retry_in: Duration,
}

impl CircuitBreaker {
    pub fn new(
        provider: &'static str,
        threshold: u32,
        open_for: Duration,
        gauge: CircuitGauge,
    ) -> Self {
        let breaker = Self {
            provider,
            threshold: threshold.max(1),
            open_for,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            gauge,
        };
        breaker.show(CircuitState::Closed);
        breaker
    }

    pub fn state(&self) -> CircuitState {
        match *self.inner.lock().expect("breaker lock") {
            Inner::Closed { .. } => CircuitState::Closed,
            Inner::Open { .. } => CircuitState::Open,
            Inner::HalfOpen => CircuitState::HalfOpen,
        }
    }

    /// May a call go out now? An open circuit past its time lets one probe through.
    pub fn admit(&self) -> Result<(), Open> {
        let mut inner = self.inner.lock().expect("breaker lock");
        match *inner {
            Inner::Closed { .. } => Ok(()),
            Inner::HalfOpen => Err(Open {
                retry_in: self.open_for / 4,
            }),
            Inner::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(Open {
                        retry_in: until - now,
                    });
                }
                *inner = Inner::HalfOpen;
                drop(inner);
                self.show(CircuitState::HalfOpen);
                Ok(())
            }
        }
    }

    /// Records how an admitted call ended.
    pub fn record(&self, success: bool) {
        let mut inner = self.inner.lock().expect("breaker lock");
        let next = match (&*inner, success) {
            (_, true) => Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, false) if failures + 1 < self.threshold => Inner::Closed {
                failures: failures + 1,
            },
            (_, false) => Inner::Open {
                until: Instant::now() + self.open_for,
            },
        };
        let (was, now) = (state_of(&inner), state_of(&next));
        *inner = next;
        drop(inner);
        if was != now {
            tracing::warn!(provider = self.provider, from = ?was, to = ?now, "circuit breaker changed state");
            self.show(now);
        }
    }

    fn show(&self, state: CircuitState) {
        self.gauge
            .get_or_create(&vec![("provider".to_owned(), self.provider.to_owned())])
            .set(state.gauge_value());
    }
}

fn state_of(inner: &Inner) -> CircuitState {
    match inner {
        Inner::Closed { .. } => CircuitState::Closed,
        Inner::Open { .. } => CircuitState::Open,
        Inner::HalfOpen => CircuitState::HalfOpen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> CircuitBreaker {
        CircuitBreaker::new("test", 3, open_for, CircuitGauge::default())
    }

    #[test]
    fn opens_after_the_threshold_of_failures_in_a_row() {
        let b = breaker(Duration::from_secs(60));
        b.record(false);
        b.record(false);
        b.record(true);
        b.record(false);
        b.record(false);
        assert_eq!(
            b.state(),
            CircuitState::Closed,
            "a success resets the count"
        );
        b.record(false);
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.admit().is_err(), "an open circuit makes no call");
    }

    #[test]
    fn half_open_lets_one_probe_through_which_closes_or_reopens_it() {
        let b = breaker(Duration::ZERO);
        for _ in 0..3 {
            b.record(false);
        }
        assert_eq!(b.admit(), Ok(()), "the probe");
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.admit().is_err(), "one probe at a time");
        b.record(false);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.admit(), Ok(()));
        b.record(true);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn the_gauge_shows_the_state() {
        let gauge = CircuitGauge::default();
        let b = CircuitBreaker::new("psp", 1, Duration::from_secs(60), gauge.clone());
        let value = || {
            gauge
                .get_or_create(&vec![("provider".to_owned(), "psp".to_owned())])
                .get()
        };
        assert_eq!(value(), 0);
        b.record(false);
        assert_eq!(value(), 1);
    }
}
