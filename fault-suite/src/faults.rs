//! What goes wrong, and when: SIGKILLs of each service, broker restarts and Postgres
//! immediate shutdowns, spread over the load's duration (each kind evenly, each instance
//! at a random moment of its share), carried out one after the other.

use std::sync::Arc;
use std::time::Duration;

use test_support::{PrivateBroker, PrivatePostgres};

use crate::fleet::{Fleet, ServiceName};
use crate::load::random_below;

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill(ServiceName),
    /// SIGKILL of the broker, then a start on the same storage.
    RestartBroker,
    /// `pg_ctl stop -m immediate`, then a start (crash recovery).
    RestartPostgres,
}

/// How many of each.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub kills_per_service: u32,
    pub broker_restarts: u32,
    pub postgres_restarts: u32,
    pub duration: Duration,
}

/// The faults of `plan` with their moments from the start of the load, in order.
pub fn schedule(plan: &Plan) -> Vec<(Duration, Fault)> {
    let mut faults = Vec::new();
    let mut spread = |count: u32, fault: Fault| {
        let share = plan.duration.as_millis() / u128::from(count.max(1));
        for i in 0..count {
            let jitter = u128::from(random_below(u64::try_from(share).unwrap_or(1)));
            let at = share * u128::from(i) + jitter;
            faults.push((Duration::from_millis(u64::try_from(at).unwrap_or(0)), fault));
        }
    };
    for service in ServiceName::ALL {
        spread(plan.kills_per_service, Fault::Kill(service));
    }
    spread(plan.broker_restarts, Fault::RestartBroker);
    spread(plan.postgres_restarts, Fault::RestartPostgres);
    faults.sort_by_key(|(at, _)| *at);
    faults
}

/// What the faults act on.
#[derive(Debug)]
pub struct Targets {
    pub fleet: Arc<Fleet>,
    pub broker: PrivateBroker,
    pub postgres: Arc<PrivatePostgres>,
    /// Base URLs of every instance, whose `/ready` a broker restart watches.
    pub instances: Vec<String>,
    /// What each broker restart did to the services' readiness.
    pub broker_restarts: Vec<BrokerRestart>,
}

/// How the services' `/ready` followed one broker SIGKILL and restart.
#[derive(Clone, Debug, Default)]
pub struct BrokerRestart {
    /// From the SIGKILL until every instance answered 503 (`None`: not all within
    /// [`RED_WITHIN`]).
    pub red_after: Option<Duration>,
    /// From the restart until every instance answered 200 again (`None`: not all within
    /// [`GREEN_WITHIN`]).
    pub green_after: Option<Duration>,
}

/// How long the services may take to notice the broker is gone (a healthy dependency is
/// probed every 5 s).
pub const RED_WITHIN: Duration = Duration::from_secs(20);
/// How long the services may take to be ready again once the broker is back.
pub const GREEN_WITHIN: Duration = Duration::from_secs(60);

/// Carries out `faults` (moments counted from now); prints each as it happens.
pub async fn inflict(targets: &mut Targets, faults: &[(Duration, Fault)]) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    for (at, fault) in faults {
        tokio::time::sleep_until(start + *at).await;
        let t = start.elapsed().as_secs_f64();
        match fault {
            Fault::Kill(service) => {
                let n = targets.fleet.kill_and_restart(*service)?;
                println!(
                    "  {t:7.1} s  SIGKILL {}",
                    crate::fleet::label((*service, n))
                );
            }
            Fault::RestartBroker => {
                let restart = restart_broker(targets).await;
                println!(
                    "  {t:7.1} s  broker killed and restarted ({:.1} s): every /ready 503 after {}, 200 again {} after the restart",
                    start.elapsed().as_secs_f64() - t,
                    seconds(restart.red_after),
                    seconds(restart.green_after),
                );
                targets.broker_restarts.push(restart);
            }
            Fault::RestartPostgres => {
                let postgres = Arc::clone(&targets.postgres);
                tokio::task::spawn_blocking(move || postgres.crash_and_restart()).await??;
                println!(
                    "  {t:7.1} s  Postgres immediate shutdown and restart ({:.1} s)",
                    start.elapsed().as_secs_f64() - t
                );
            }
        }
    }
    Ok(())
}

/// SIGKILLs the broker, waits until every instance says it is not ready, starts the
/// broker again, and waits until every instance is ready.
async fn restart_broker(targets: &mut Targets) -> BrokerRestart {
    let client = reqwest::Client::new();
    targets.broker.kill();
    let killed = tokio::time::Instant::now();
    let red = every_ready_is(&client, &targets.instances, false, RED_WITHIN).await;
    let red_after = red.then(|| killed.elapsed());
    targets.broker.start_again().await;
    let restarted = tokio::time::Instant::now();
    let green = every_ready_is(&client, &targets.instances, true, GREEN_WITHIN).await;
    BrokerRestart {
        red_after,
        green_after: green.then(|| restarted.elapsed()),
    }
}

/// Polls every instance's `/ready` until each answers 200 (`ready`) or anything else,
/// for at most `within`; whether they all did.
async fn every_ready_is(
    client: &reqwest::Client,
    instances: &[String],
    ready: bool,
    within: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut pending: Vec<&String> = instances.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for base in pending {
            let answer = client
                .get(format!("{base}/ready"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            let is_ready = answer.is_ok_and(|r| r.status() == 200);
            if is_ready != ready {
                still.push(base);
            }
        }
        pending = still;
        if pending.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pending.is_empty()
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_is_scheduled_within_the_duration_and_in_order() {
        let plan = Plan {
            kills_per_service: 20,
            broker_restarts: 2,
            postgres_restarts: 3,
            duration: Duration::from_secs(600),
        };
        let faults = schedule(&plan);
        assert_eq!(faults.len(), 3 * 20 + 2 + 3);
        assert!(faults.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(faults.iter().all(|(at, _)| *at < plan.duration));
        for service in ServiceName::ALL {
            let kills: Vec<_> = faults
                .iter()
                .filter(|(_, f)| *f == Fault::Kill(service))
                .collect();
            assert_eq!(kills.len(), 20);
            // Evenly spread: the i-th kill falls in the i-th thirtieth of the run.
            for (i, (at, _)) in kills.iter().enumerate() {
                assert_eq!(at.as_secs() / 30, u64::try_from(i).unwrap_or(0));
            }
        }
    }
}
