//! Driving load for benchmarks: a fixed number of operations from a fixed number of
//! concurrent callers, each waiting for its answer before the next; and latency percentiles.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a run measured.
#[derive(Debug)]
pub struct Run {
    pub per_second: f64,
    pub latencies: Vec<Duration>,
}

impl Run {
    /// p50 and p99, in milliseconds.
    pub fn percentiles(&self) -> (f64, f64) {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let at = |q: f64| {
            sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
        };
        (at(0.50), at(0.99))
    }
}

/// Runs `send(0..count)` from `concurrency` callers.
pub async fn drive<F, Fut>(count: usize, concurrency: usize, send: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let send = Arc::new(send);
    let started = Instant::now();
    let callers: Vec<_> = (0..concurrency)
        .map(|caller| {
            let send = Arc::clone(&send);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in (caller..count).step_by(concurrency) {
                    let t = Instant::now();
                    send(i).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for caller in callers {
        latencies.extend(caller.await.expect("a load caller panicked"));
    }
    Run {
        per_second: count as f64 / started.elapsed().as_secs_f64(),
        latencies,
    }
}
