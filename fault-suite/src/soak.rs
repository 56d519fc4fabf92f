//! The soak: the shop under the suite's steady load at half its capacity for a long time
//! (30 minutes by default), with no faults. Every few seconds the resident memory of
//! every service is read from `/proc` and the open sagas are counted; afterwards the
//! answers' p99 is compared window by window, and the suite's whole audit runs. What must
//! hold: every service stays under 150 MiB and flat, the p99 does not rise, the sagas keep
//! up, no service stops on its own, and the audit finds nothing lost and nothing doubled.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::{self, Instance};
use crate::load::{Kind, Ledger, Load, Outcome, Request};
use crate::stand::{API_KEY, LogFolder, RATE_UNLIMITED, Stand};

/// The ceiling every service's resident memory is held to.
const RSS_CEILING_MIB: f64 = 150.0;
/// How much a service's memory may grow from the end of the first window to the end.
const RSS_GROWTH: f64 = 0.10;
/// How much the last window's p99 may exceed the best window's: a factor and a floor
/// (a few milliseconds of scheduling noise on a shared machine).
const P99_GROWTH: (f64, Duration) = (1.2, Duration::from_millis(5));
/// Open sagas allowed at any sample, in seconds of the offered rate: a saga takes a
/// fraction of a second, so a backlog past this means the sagas fall behind.
const OPEN_SAGAS_SECONDS: f64 = 5.0;

/// What to run.
#[derive(Clone, Debug)]
pub struct Soak {
    pub minutes: u64,
    pub orders_per_second: f64,
    pub partitions: i32,
    pub sample_seconds: u64,
    pub windows: u32,
    pub logs: Option<PathBuf>,
}

/// One reading of every service's memory and of the open sagas.
#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    rss_mib: BTreeMap<Instance, f64>,
    /// Sagas under way and sagas failed for good.
    open_sagas: Option<(i64, i64)>,
    /// Aggregates and outcomes the command API's writers hold in memory.
    held: Option<(f64, f64)>,
}

/// Runs it; whether every check passed.
pub async fn run(setup: Soak) -> anyhow::Result<bool> {
    let began = Instant::now();
    let duration = Duration::from_secs(setup.minutes * 60);
    println!(
        "soak: {} minutes at {} orders/s, {} partitions per topic, no faults",
        setup.minutes, setup.orders_per_second, setup.partitions
    );
    let logs = LogFolder::new("soak", setup.logs.clone())?;
    let stand = Stand::up(setup.partitions, 1, &logs.path, RATE_UNLIMITED).await?;
    let supervisor = crate::supervise(Arc::clone(&stand.fleet));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&stand.postgres.url())
        .await?;
    let ledger = Ledger::default();
    let loaded = Instant::now();
    let mut load = tokio::spawn(
        Load {
            command_api: stand.urls(crate::fleet::ServiceName::CommandApi),
            api_key: API_KEY.to_owned(),
            orders_per_second: setup.orders_per_second,
        }
        .run(ledger.clone(), tokio::time::sleep(duration)),
    );
    let samples = sample_until(&mut load, &stand, &pool, setup.sample_seconds, loaded).await?;
    let requests = ledger.requests();
    let windows = windows(&requests, loaded, duration, setup.windows.max(1));
    let mut checks = report(&samples, &windows, setup.orders_per_second);
    checks.push((
        "no service stopped on its own".into(),
        stand.fleet.tallies().values().all(|t| t.own_exits == 0),
    ));
    for (name, ok) in &checks {
        println!("  {}  {name}", if *ok { "PASS" } else { "FAIL" });
    }
    let audited = audit(&stand, &ledger, setup.partitions, began).await?;
    supervisor.abort();
    let passed = audited && checks.iter().all(|(_, ok)| *ok);
    drop(stand);
    logs.finish(passed);
    Ok(passed)
}

/// The fault suite's whole audit of what the load did.
async fn audit(
    stand: &Stand,
    ledger: &Ledger,
    partitions: i32,
    began: Instant,
) -> anyhow::Result<bool> {
    let Stand {
        postgres,
        settings,
        topics,
        deliveries,
        fleet,
        ..
    } = stand;
    crate::conclude(
        &crate::Finished {
            postgres,
            settings,
            topics,
            deliveries,
            ledger,
            fleet,
            partitions,
            broker_restarts: &[],
        },
        began,
    )
    .await
}

/// Samples every `every_seconds` until `load` is done.
async fn sample_until(
    load: &mut tokio::task::JoinHandle<()>,
    stand: &Stand,
    pool: &sqlx::PgPool,
    every_seconds: u64,
    loaded: Instant,
) -> anyhow::Result<Vec<Sample>> {
    let client = test_support::client(API_KEY);
    let command_api = stand.url(crate::fleet::ServiceName::CommandApi);
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(every_seconds.max(1)));
    loop {
        tokio::select! {
            done = &mut *load => { done?; return Ok(samples); }
            _ = tick.tick() => {}
        }
        samples.push(Sample {
            at: loaded.elapsed(),
            rss_mib: stand
                .fleet
                .pids()
                .into_iter()
                .filter_map(|(instance, pid)| rss_mib(pid).map(|m| (instance, m)))
                .collect(),
            open_sagas: open_sagas(pool).await.ok(),
            held: held(&client, &command_api).await.ok(),
        });
    }
}

/// `VmRSS` (resident set now) of process `pid`, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Aggregates and outcomes every writer of the command API holds in memory, summed.
async fn held(client: &reqwest::Client, command_api: &str) -> anyhow::Result<(f64, f64)> {
    Ok((
        test_support::metric_sum(client, command_api, "shop_writer_aggregates_held").await?,
        test_support::metric_sum(client, command_api, "shop_writer_outcomes_held").await?,
    ))
}

/// Sagas still under way (running or compensating), and sagas that failed for good.
async fn open_sagas(pool: &sqlx::PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state IN ('running', 'compensating')), \
                count(*) FILTER (WHERE state = 'failed') \
         FROM saga.sagas",
    )
    .fetch_one(pool)
    .await
}

/// The accepted orders of one stretch of the load.
#[derive(Clone, Debug, PartialEq)]
struct Window {
    from: Duration,
    to: Duration,
    orders: usize,
    p50: Duration,
    p99: Duration,
}

/// Splits the load's `duration` from `start` into `n` windows and takes each one's
/// accepted orders (by when they were sent) and their answer times.
fn windows(requests: &[Request], start: Instant, duration: Duration, n: u32) -> Vec<Window> {
    let width = duration / n;
    (0..n)
        .map(|i| {
            let (from, to) = (width * i, width * (i + 1));
            let mut took: Vec<Duration> = requests
                .iter()
                .filter(|r| r.kind == Kind::PlaceOrder)
                .filter(|r| matches!(r.outcome, Outcome::Accepted { .. }))
                .filter(|r| {
                    let at = r.sent_at.saturating_duration_since(start);
                    at >= from && at < to
                })
                .map(|r| r.took)
                .collect();
            took.sort_unstable();
            Window {
                from,
                to,
                orders: took.len(),
                p50: quantile(&took, 0.5),
                p99: quantile(&took, 0.99),
            }
        })
        .collect()
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Whether the last window's p99 stays within `P99_GROWTH` of the best window's.
fn p99_not_rising(windows: &[Window]) -> bool {
    let Some(last) = windows.last() else {
        return false;
    };
    let best = windows.iter().map(|w| w.p99).min().unwrap_or_default();
    last.p99 <= best.mul_f64(P99_GROWTH.0) + P99_GROWTH.1
}

/// A service's memory at the end of each window: the last sample taken before it ended.
fn rss_at_window_ends(samples: &[Sample], windows: &[Window], instance: Instance) -> Vec<f64> {
    windows
        .iter()
        .filter_map(|w| {
            samples
                .iter()
                .rev()
                .find(|s| s.at <= w.to)
                .and_then(|s| s.rss_mib.get(&instance).copied())
        })
        .collect()
}

/// Whether memory read at the ends of the windows stays within `RSS_GROWTH` of the first
/// (the first window is the warm-up: pools, caches and buffers fill there).
fn rss_flat(at_ends: &[f64]) -> bool {
    match (at_ends.first(), at_ends.last()) {
        (Some(first), Some(last)) => *last <= first * (1.0 + RSS_GROWTH),
        _ => false,
    }
}

/// Prints the windows and the memory, and returns the soak's own checks.
fn report(samples: &[Sample], windows: &[Window], rate: f64) -> Vec<(String, bool)> {
    print_windows(windows);
    let (under, flat) = report_memory(samples, windows);
    let (most_open, failed) = report_sagas(samples);
    let open_bound = (rate * OPEN_SAGAS_SECONDS).ceil() as i64;
    vec![
        (
            format!("every service's resident memory stays at most {RSS_CEILING_MIB:.0} MiB"),
            under,
        ),
        (
            format!(
                "every service's memory is flat (at most {:.0} % above the end of the first window)",
                RSS_GROWTH * 100.0
            ),
            flat,
        ),
        (
            format!(
                "the last window's p99 is at most {}x the best window's + {} ms",
                P99_GROWTH.0,
                P99_GROWTH.1.as_millis()
            ),
            p99_not_rising(windows),
        ),
        (
            format!("the sagas keep up (at most {open_bound} open at any sample)"),
            most_open.is_some_and(|open| open <= open_bound),
        ),
        (format!("no saga failed ({failed} failed)"), failed == 0),
        (
            "every window accepted orders".into(),
            windows.iter().all(|w| w.orders > 0),
        ),
    ]
}

fn print_windows(windows: &[Window]) {
    println!("  window          orders  orders/s  p50 ms  p99 ms");
    for w in windows {
        let seconds = (w.to - w.from).as_secs_f64();
        println!(
            "  {:>5.0}-{:<5.0} s  {:>7}  {:>8.1}  {:>6.1}  {:>6.1}",
            w.from.as_secs_f64(),
            w.to.as_secs_f64(),
            w.orders,
            w.orders as f64 / seconds,
            w.p50.as_secs_f64() * 1e3,
            w.p99.as_secs_f64() * 1e3,
        );
    }
}

/// Prints each service's memory at the window ends and what the writers hold; whether
/// every service stayed under the ceiling, and whether every one stayed flat.
fn report_memory(samples: &[Sample], windows: &[Window]) -> (bool, bool) {
    let instances: Vec<Instance> = samples
        .iter()
        .flat_map(|s| s.rss_mib.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    println!("  resident memory at the end of each window (MiB), and its peak over the samples");
    let (mut under, mut flat) = (!instances.is_empty(), !instances.is_empty());
    for instance in instances {
        let at_ends = rss_at_window_ends(samples, windows, instance);
        let peak = samples
            .iter()
            .filter_map(|s| s.rss_mib.get(&instance).copied())
            .fold(0.0, f64::max);
        under &= peak <= RSS_CEILING_MIB;
        flat &= rss_flat(&at_ends);
        let series: Vec<String> = at_ends.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "  {:<18} {}  peak {peak:.0}",
            fleet::label(instance),
            series.join(" ")
        );
    }
    let held: Vec<String> = windows
        .iter()
        .filter_map(|w| samples.iter().rev().find(|s| s.at <= w.to)?.held)
        .map(|(aggregates, outcomes)| format!("{aggregates:.0}/{outcomes:.0}"))
        .collect();
    println!(
        "  the command API's writers hold (aggregates/outcomes) {}",
        held.join(" ")
    );
    (under, flat)
}

/// Prints the open sagas over the samples; the most open at once (`None`: never read),
/// and the most that had failed.
fn report_sagas(samples: &[Sample]) -> (Option<i64>, i64) {
    let open: Vec<i64> = samples
        .iter()
        .filter_map(|s| s.open_sagas.map(|(open, _)| open))
        .collect();
    let failed = samples
        .iter()
        .filter_map(|s| s.open_sagas.map(|(_, failed)| failed))
        .max()
        .unwrap_or(0);
    let most_open = open.iter().copied().max();
    println!(
        "  open sagas over {} samples: at most {}, at the last {}",
        open.len(),
        most_open.unwrap_or(0),
        open.last().copied().unwrap_or(0)
    );
    (most_open, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::ServiceName;

    fn window(p99_ms: u64) -> Window {
        Window {
            from: Duration::ZERO,
            to: Duration::from_secs(60),
            orders: 1,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(p99_ms),
        }
    }

    fn order(sent_at: Instant, took_ms: u64) -> Request {
        Request {
            kind: Kind::PlaceOrder,
            correlation_id: uuid::Uuid::new_v4(),
            target: None,
            outcome: Outcome::Accepted {
                id: "o".into(),
                version: 1,
            },
            retries: 0,
            sent_at,
            took: Duration::from_millis(took_ms),
        }
    }

    #[test]
    fn a_p99_back_at_its_best_is_not_rising_but_one_that_climbs_is() {
        assert!(p99_not_rising(&[window(40), window(30), window(33)]));
        assert!(p99_not_rising(&[window(2), window(3), window(7)]));
        assert!(!p99_not_rising(&[window(30), window(35), window(45)]));
        assert!(!p99_not_rising(&[]));
    }

    #[test]
    fn memory_that_levels_off_after_the_warm_up_is_flat_and_memory_that_climbs_is_not() {
        assert!(rss_flat(&[80.0, 84.0, 82.0, 87.0]));
        assert!(!rss_flat(&[80.0, 85.0, 90.0, 95.0]));
        assert!(!rss_flat(&[]));
    }

    #[test]
    fn windows_take_the_accepted_orders_sent_within_them() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut refused = order(at(1), 900);
        refused.outcome = Outcome::Refused {
            status: 422,
            body: String::new(),
        };
        let requests = vec![
            order(at(1), 10),
            order(at(2), 30),
            refused,
            order(at(11), 50),
        ];
        let windows = windows(&requests, start, Duration::from_secs(20), 2);
        assert_eq!(windows.len(), 2);
        assert_eq!(
            (windows[0].orders, windows[0].p99),
            (2, Duration::from_millis(30))
        );
        assert_eq!(
            (windows[1].orders, windows[1].p99),
            (1, Duration::from_millis(50))
        );
    }

    #[test]
    fn memory_at_a_window_end_is_the_last_sample_before_it() {
        let instance = (ServiceName::CommandApi, 0);
        let sample = |s: u64, mib: f64| Sample {
            at: Duration::from_secs(s),
            rss_mib: BTreeMap::from([(instance, mib)]),
            open_sagas: Some((0, 0)),
            held: None,
        };
        let samples = [sample(5, 50.0), sample(9, 60.0), sample(15, 61.0)];
        let mut windows = vec![window(1), window(1)];
        windows[0].to = Duration::from_secs(10);
        windows[1].to = Duration::from_secs(20);
        assert_eq!(
            rss_at_window_ends(&samples, &windows, instance),
            vec![60.0, 61.0]
        );
    }
}
