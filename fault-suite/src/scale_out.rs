//! Scale-out: two instances of every service on one broker, 8 partitions per topic, under
//! the suite's steady load. It shows how the partitions split (the command API's
//! directory of writers; the events each projections and saga instance took in), measures
//! the command API's capacity with both instances and, after the second instance of every
//! service is killed for good, with one (registrations, which start no saga), times the
//! takeover, and ends with the suite's whole audit: nothing lost, nothing doubled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::scan;
use projections::projector::Schema;
use serde_json::json;
use sqlx::PgPool;

use crate::fleet::ServiceName;
use crate::load::{Ledger, Load};
use crate::overload::closed_loop;
use crate::stand::{API_KEY, RATE_UNLIMITED, Stand};

/// The event topics the projections and the saga read.
const EVENT_SERVICES: [&str; 4] = ["users", "orders", "payments", "notifications"];
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
    let logs =
        std::env::temp_dir().join(format!("shop-scale-out-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs)?;
    println!(
        "scale-out: 2 instances of each service, {} partitions per topic, {} orders/s of steady load",
        setup.partitions, setup.orders_per_second
    );
    println!("  service logs in {}", logs.display());
    let stand = Stand::up(setup.partitions, 2, &logs, RATE_UNLIMITED).await?;
    let supervisor = crate::supervise(Arc::clone(&stand.fleet));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&stand.postgres.url())
        .await?;
    let commands = stand.urls(ServiceName::CommandApi);
    let ledger = Ledger::default();
    let (stop_load, load_stopped) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(
        Load {
            command_api: commands.clone(),
            api_key: API_KEY.to_owned(),
            orders_per_second: setup.orders_per_second,
        }
        .run(ledger.clone(), async move {
            let _ = load_stopped.await;
        }),
    );
    let mut checks: Vec<(String, bool)> = Vec::new();

    println!("split");
    let groups = writers_groups(&stand);
    let owners = wait_for_owners(&pool, &groups, &commands).await;
    let split = match &owners {
        Ok(owners) => {
            for url in &commands {
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
    };
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
    for (service, metric) in [
        (ServiceName::Projections, "projector_applied_events_total"),
        (ServiceName::SagaOrchestrator, "saga_inputs_total"),
    ] {
        let mut took = Vec::new();
        for url in stand.urls(service) {
            let n = counter(&client, &url, metric).await.unwrap_or(0.0);
            println!("  {} at {url} took in {n:.0} events", service.as_str());
            took.push(n);
        }
        checks.push((
            format!("both {} instances take in events", service.as_str()),
            took.iter().all(|n| *n > 0.0),
        ));
    }

    let ends = event_ends(&stand).await?;
    let killed = Instant::now();
    for service in ServiceName::ALL {
        stand.fleet.kill_for_good((service, 1))?;
    }
    println!("takeover (SIGKILL of the second instance of every service, which stays down)");
    let survivor = &commands[..1];
    let taken = takeover(&pool, &groups, survivor, &ends, killed).await;
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
        },
        began,
    )
    .await?;
    supervisor.abort();
    for (name, ok) in &checks {
        println!("  {}  {name}", if *ok { "PASS" } else { "FAIL" });
    }
    Ok(passed && checks.iter().all(|(_, ok)| *ok))
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
    groups: &[String],
    expected: &[String],
) -> anyhow::Result<BTreeMap<(String, i32), String>> {
    let wanted: BTreeSet<&String> = expected.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = owners(pool, groups).await.unwrap_or_default();
        let seen: BTreeSet<&String> = now.values().collect();
        let every_partition = groups.iter().all(|g| now.keys().any(|(h, _)| h == g));
        if every_partition && seen == wanted {
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

/// The sum of a counter over its labels at `url`'s `/metrics`.
async fn counter(client: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<f64> {
    let text = client
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The end offset of every partition of the event topics, now.
async fn event_ends(stand: &Stand) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut ends = BTreeMap::new();
    for service in EVENT_SERVICES {
        let topic = stand.topics.events(service);
        for (partition, end) in scan::topic_ends(&stand.settings, &topic).await? {
            ends.insert((topic.clone(), partition), end);
        }
    }
    Ok(ends)
}

/// Seconds from `killed` until: the survivor writes every partition; each read model and
/// the saga stored checkpoints at or past `ends` (everything written before the kill is
/// in). `None` for what did not happen within [`TAKEOVER_WITHIN`].
async fn takeover(
    pool: &PgPool,
    groups: &[String],
    survivor: &[String],
    ends: &BTreeMap<(String, i32), i64>,
    killed: Instant,
) -> Vec<(String, Option<f64>)> {
    let mut waiting: BTreeMap<String, Option<f64>> = BTreeMap::new();
    waiting.insert("command-api writes every partition".into(), None);
    for model in projections::READ_MODELS {
        waiting.insert(format!("projections: {model} caught up"), None);
    }
    waiting.insert("saga-orchestrator caught up".into(), None);
    let wanted: BTreeSet<&String> = survivor.iter().collect();
    while killed.elapsed() < TAKEOVER_WITHIN && waiting.values().any(Option::is_none) {
        let at = killed.elapsed().as_secs_f64();
        let owners = owners(pool, groups).await.unwrap_or_default();
        if owners.values().collect::<BTreeSet<_>>() == wanted {
            waiting
                .entry("command-api writes every partition".into())
                .or_default()
                .get_or_insert(at);
        }
        for model in projections::READ_MODELS {
            let table = Schema::live(model).table("checkpoints");
            if caught_up(pool, &table, ends).await {
                waiting
                    .entry(format!("projections: {model} caught up"))
                    .or_default()
                    .get_or_insert(at);
            }
        }
        if caught_up(pool, "saga.checkpoints", ends).await {
            waiting
                .entry("saga-orchestrator caught up".into())
                .or_default()
                .get_or_insert(at);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    waiting.into_iter().collect()
}

/// Whether the checkpoints in `table` are at or past `ends` on every partition of the
/// topics the table has checkpoints for.
async fn caught_up(pool: &PgPool, table: &str, ends: &BTreeMap<(String, i32), i64>) -> bool {
    let query = format!("SELECT topic, partition, next_offset FROM {table}");
    let rows: Vec<(String, i32, i64)> = match sqlx::query_as(sqlx::AssertSqlSafe(query))
        .fetch_all(pool)
        .await
    {
        Ok(rows) => rows,
        Err(_) => return false,
    };
    let stored: BTreeMap<(String, i32), i64> =
        rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect();
    let topics: BTreeSet<&String> = stored.keys().map(|(t, _)| t).collect();
    ends.iter()
        .filter(|((t, _), end)| topics.contains(t) && **end > 0)
        .all(|(k, end)| stored.get(k).is_some_and(|o| o >= end))
}
