//! Scale-out: two instances of every service on one broker, 8 partitions per topic, under
//! the suite's steady load. It shows how the partitions split (the command API's
//! directory of writers; the events each projections and saga instance took in), measures
//! the command API's capacity with both instances and, after the second instance of every
//! service is killed for good, with one (registrations, which start no saga), times the
//! takeover, and ends with the suite's whole audit: nothing lost, nothing doubled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use crate::audit;
use crate::fleet::ServiceName;
use crate::load::{Ledger, Load};
use crate::overload::closed_loop;
use crate::stand::{API_KEY, RATE_UNLIMITED, Stand};

/// How long every instance of a reader may take, after the capacity phase, to have taken
/// in events.
const TAKE_IN_WITHIN: Duration = Duration::from_secs(60);

/// How long the survivors may take to hold every partition and catch up.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct ScaleOut {
    pub partitions: i32,
    pub measure_seconds: u64,
    pub orders_per_second: f64,
}

/// Runs it; whether every check passed.
pub async fn run(setup: ScaleOut) -> anyhow::Result<bool> {
    let began = Instant::now();
    println!(
        "scale-out: 2 instances of each service, {} partitions per topic, {} orders/s of steady load",
        setup.partitions, setup.orders_per_second
    );
    let logs = crate::stand::LogFolder::new("scale-out", None)?;
    let stand = Stand::up(setup.partitions, 2, &logs.path, RATE_UNLIMITED).await?;
    let supervisor = crate::supervise(Arc::clone(&stand.fleet));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&stand.postgres.url())
        .await?;
    let ledger = Ledger::default();
    let (stop_load, load_stopped) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(
        Load {
            command_api: stand.urls(ServiceName::CommandApi),
            api_key: API_KEY.to_owned(),
            orders_per_second: setup.orders_per_second,
        }
        .run(ledger.clone(), async move {
            let _ = load_stopped.await;
        }),
    );
    let checks = phases(&setup, &stand, &pool).await?;
    let _ = stop_load.send(());
    load.await?;
    let passed = crate::conclude(
        &crate::Finished {
            postgres: &stand.postgres,
            settings: &stand.settings,
            topics: &stand.topics,
            deliveries: &stand.deliveries,
            ledger: &ledger,
            fleet: &stand.fleet,
            partitions: setup.partitions,
            broker_restarts: &[],
        },
        began,
    )
    .await?;
    supervisor.abort();
    for (name, ok) in &checks {
        println!("  {}  {name}", if *ok { "PASS" } else { "FAIL" });
    }
    let passed = passed && checks.iter().all(|(_, ok)| *ok);
    drop(stand);
    logs.finish(passed);
    Ok(passed)
}

/// Under the steady load: the split of the writers' partitions, the capacity of two
/// instances, the takeover after a SIGKILL of every second instance, the capacity of
/// one; the checks they made.
async fn phases(
    setup: &ScaleOut,
    stand: &Stand,
    pool: &PgPool,
) -> anyhow::Result<Vec<(String, bool)>> {
    let commands = stand.urls(ServiceName::CommandApi);
    let mut checks: Vec<(String, bool)> = Vec::new();
    println!("split");
    let groups = writers_groups(stand);
    let partitions = usize::try_from(setup.partitions).unwrap_or(0);
    let split = split(pool, (&groups, partitions), &commands).await;
    checks.push((
        "the command API's instances split the writers' partitions".into(),
        split,
    ));

    println!("capacity");
    let client = test_support::client(API_KEY);
    let both = registrations_per_second(&client, &commands, setup.measure_seconds).await;
    println!(
        "  two instances: {both:.0} registrations/s (64 callers, {} s, round robin)",
        setup.measure_seconds
    );
    checks.extend(readers_take_in(stand, &client).await);

    let killed = Instant::now();
    for service in ServiceName::ALL {
        stand.fleet.kill_for_good((service, 1))?;
    }
    let at_kill = readers_at(pool, stand, setup.partitions).await?;
    println!("takeover (SIGKILL of the second instance of every service, which stays down)");
    let survivor = &commands[..1];
    let taken = takeover(pool, (&groups, &survivor[0]), &client, &at_kill, killed).await;
    for (what, seconds) in &taken {
        match seconds {
            Some(s) => println!("  {what}: {s:.1} s"),
            None => println!("  {what}: not within {} s", TAKEOVER_WITHIN.as_secs()),
        }
    }
    checks.push((
        "the survivors take every partition over and catch up".into(),
        taken.iter().all(|(_, s)| s.is_some()),
    ));

    let one = registrations_per_second(&client, survivor, setup.measure_seconds).await;
    println!(
        "  one instance: {one:.0} registrations/s; two against one: {:.2}",
        both / one.max(1.0)
    );
    Ok(checks)
}

/// Whether the command API's instances split the writers' partitions, with who writes
/// how many.
async fn split(pool: &PgPool, groups: (&[String], usize), commands: &[String]) -> bool {
    match wait_for_owners(pool, groups, commands).await {
        Ok(owners) => {
            for url in commands {
                let held = owners.values().filter(|o| *o == url).count();
                println!(
                    "  command-api at {url} writes {held} of {} partitions",
                    owners.len()
                );
            }
            true
        }
        Err(e) => {
            println!("  {e:#}");
            false
        }
    }
}

/// Whether every instance of each reader took in events (within [`TAKE_IN_WITHIN`]).
/// The registrations of the capacity phase crowd out the steady load's orders on a small
/// machine: the sagas may not have begun yet, so they get time.
async fn readers_take_in(stand: &Stand, client: &reqwest::Client) -> Vec<(String, bool)> {
    let started = Instant::now();
    let mut checks = Vec::new();
    for (service, metric) in [
        (
            ServiceName::Projections,
            "shop_projector_applied_events_total",
        ),
        (ServiceName::SagaOrchestrator, "shop_saga_inputs_total"),
    ] {
        let urls = stand.urls(service);
        let took = loop {
            let mut took = Vec::new();
            for url in &urls {
                took.push(
                    test_support::metric_sum(client, url, metric)
                        .await
                        .unwrap_or(0.0),
                );
            }
            if took.iter().all(|n| *n > 0.0) || started.elapsed() >= TAKE_IN_WITHIN {
                break took;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        for (url, n) in urls.iter().zip(&took) {
            println!("  {} at {url} took in {n:.0} events", service.as_str());
        }
        checks.push((
            format!("both {} instances take in events", service.as_str()),
            took.iter().all(|n| *n > 0.0),
        ));
    }
    checks
}

/// Where every reader stands on every partition it reads (0 where it stored nothing
/// yet), by its checkpoints table. Taken when the second instances die: from there only
/// the survivors move the checkpoints.
async fn readers_at(
    pool: &PgPool,
    stand: &Stand,
    partitions: i32,
) -> anyhow::Result<BTreeMap<String, BTreeMap<(String, i32), i64>>> {
    let mut at = BTreeMap::new();
    for reader in audit::readers() {
        let stored = audit::checkpoints(pool, &reader.checkpoints).await?;
        let every = reader.services.iter().flat_map(|service| {
            let topic = stand.topics.events(service);
            (0..partitions).map(move |p| (topic.clone(), p))
        });
        let stood = every
            .map(|key| {
                let at = stored.get(&key).copied().unwrap_or(0);
                (key, at)
            })
            .collect::<BTreeMap<_, _>>();
        at.insert(reader.checkpoints, stood);
    }
    Ok(at)
}

fn writers_groups(stand: &Stand) -> Vec<String> {
    schemas::catalog::SERVICES
        .iter()
        .map(|m| stand.topics.writers_group(m))
        .collect()
}

/// The announced owner of every (writers' group, partition).
async fn owners(
    pool: &PgPool,
    groups: &[String],
) -> anyhow::Result<BTreeMap<(String, i32), String>> {
    let rows: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT writers_group, partition, owner FROM event_store.writer_owners \
         WHERE writers_group = ANY($1)",
    )
    .bind(groups)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(g, p, o)| ((g, p), o)).collect())
}

/// Waits until every partition of every group is announced and the owners are exactly
/// `expected` (every one of them writes some).
async fn wait_for_owners(
    pool: &PgPool,
    (groups, partitions): (&[String], usize),
    expected: &[String],
) -> anyhow::Result<BTreeMap<(String, i32), String>> {
    let wanted: BTreeSet<&String> = expected.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = owners(pool, groups).await.unwrap_or_default();
        let seen: BTreeSet<&String> = now.values().collect();
        if now.len() == groups.len() * partitions && seen == wanted {
            return Ok(now);
        }
        if Instant::now() > deadline {
            anyhow::bail!("the owners did not settle on {expected:?} within 60 s: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registrations accepted per second by `urls` (caller i sends to `urls[i % n]`).
async fn registrations_per_second(client: &reqwest::Client, urls: &[String], seconds: u64) -> f64 {
    let (client, urls) = (client.clone(), Arc::new(urls.to_vec()));
    closed_loop(seconds, 64, move |caller| {
        let url = format!("{}/v1/users", urls[caller % urls.len()]);
        let client = client.clone();
        async move {
            let body = json!({"name": "Scale Out",
                              "email": format!("scale-{}@example.com", uuid::Uuid::new_v4().simple())});
            client
                .post(url)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
}

/// Seconds from `killed` until the survivor writes every partition (its directory entries
/// all name it), and until each read model and the saga have moved their checkpoint past
/// where it stood at the kill (`at_kill`, per table) on every partition: only a survivor
/// moves it. Meanwhile registrations go to the survivor so that every users partition gets
/// new events; the steady load covers the others. `None` for what did not happen within
/// [`TAKEOVER_WITHIN`].
async fn takeover(
    pool: &PgPool,
    (groups, survivor): (&[String], &str),
    client: &reqwest::Client,
    at_kill: &BTreeMap<String, BTreeMap<(String, i32), i64>>,
    killed: Instant,
) -> Vec<(String, Option<f64>)> {
    let probe = register_continuously(client.clone(), format!("{survivor}/v1/users"));
    let tables = reader_tables();
    let writers = "command-api writes every partition".to_owned();
    let mut done: BTreeMap<String, Option<f64>> = tables
        .iter()
        .map(|(what, _)| (what.clone(), None))
        .chain([(writers.clone(), None)])
        .collect();
    // Per table: when each partition's checkpoint first moved past where it was at the kill.
    let mut passed: BTreeMap<String, BTreeMap<(String, i32), f64>> = BTreeMap::new();
    let mut unreadable: BTreeMap<String, String> = BTreeMap::new();
    while killed.elapsed() < TAKEOVER_WITHIN {
        let at = killed.elapsed().as_secs_f64();
        let owners = owners(pool, groups).await.unwrap_or_default();
        if !owners.is_empty() && owners.values().all(|o| o == survivor) {
            done.entry(writers.clone()).or_default().get_or_insert(at);
        }
        for (what, table) in &tables {
            let stored = match audit::checkpoints(pool, table).await {
                Ok(stored) => stored,
                Err(e) => {
                    unreadable.insert(table.clone(), e.to_string());
                    continue;
                }
            };
            let before = at_kill.get(table).cloned().unwrap_or_default();
            let seen = passed.entry(table.clone()).or_default();
            if let Some(all) = moved_past(&before, &stored, seen, at) {
                done.insert(what.clone(), Some(all));
            }
        }
        if done.values().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What a reader that did not make it left behind.
    for (what, table) in &tables {
        if done.get(what).is_some_and(Option::is_some) {
            continue;
        }
        let before = at_kill.get(table).cloned().unwrap_or_default();
        let seen = passed.get(table).cloned().unwrap_or_default();
        print_left_behind(what, &before, &seen, unreadable.get(table));
    }
    probe.abort();
    done.into_iter().collect()
}

/// What to check of each reader, with its checkpoints table.
fn reader_tables() -> Vec<(String, String)> {
    audit::readers()
        .into_iter()
        .map(|r| {
            (
                format!("{} moved on every partition", r.name),
                r.checkpoints,
            )
        })
        .collect()
}

/// Notes, at `at`, the partitions whose checkpoint in `stored` passed where it stood
/// `before` (into `seen`, first time only); once all have, when the last one did.
fn moved_past(
    before: &BTreeMap<(String, i32), i64>,
    stored: &BTreeMap<(String, i32), i64>,
    seen: &mut BTreeMap<(String, i32), f64>,
    at: f64,
) -> Option<f64> {
    for (key, then) in before {
        if stored.get(key).is_some_and(|now| now > then) {
            seen.entry(key.clone()).or_insert(at);
        }
    }
    if before.is_empty() || seen.len() < before.len() {
        return None;
    }
    seen.values().copied().reduce(f64::max)
}

/// Registers a user at `url` every 50 ms until aborted, so that every users partition
/// gets new events.
fn register_continuously(client: reqwest::Client, url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let email = format!("probe-{}@example.com", uuid::Uuid::new_v4().simple());
            let body = json!({"name": "Takeover Probe", "email": email});
            let _ = client
                .post(&url)
                .json(&body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// The partitions a reader did not move past where they stood at the kill.
fn print_left_behind(
    what: &str,
    before: &BTreeMap<(String, i32), i64>,
    seen: &BTreeMap<(String, i32), f64>,
    unreadable: Option<&String>,
) {
    let still: Vec<String> = before
        .iter()
        .filter(|(key, _)| !seen.contains_key(*key))
        .map(|((topic, partition), at)| format!("{topic}[{partition}] at {at}"))
        .collect();
    println!(
        "  {what}: not moved since the kill: {}{}",
        if still.is_empty() {
            "none".to_owned()
        } else {
            still.join(", ")
        },
        unreadable
            .map(|e| format!("; last read failed: {e}"))
            .unwrap_or_default()
    );
}
