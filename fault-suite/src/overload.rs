//! Overload: the command API's capacity is measured first (a closed loop of 64 callers
//! placing orders), then orders are offered at ten times that rate, open loop, whatever
//! the answers. What must hold: every request gets an answer, and only 2xx, 429 or 503
//! (load is shed, not queued); admitted requests answer within the command timeout; the
//! services' memory stays bounded (peak RSS reported per service).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use crate::fleet::ServiceName;
use crate::load::random_below;
use crate::stand::{API_KEY, Stand};

/// The command API's bound on one command (its `COMMAND_TIMEOUT_MS` default).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The ceiling the report holds each service's peak memory to.
const RSS_CEILING_MIB: u64 = 1024;

/// How hard and how long.
#[derive(Clone, Copy, Debug)]
pub struct Overload {
    pub factor: f64,
    pub seconds: u64,
    pub measure_seconds: u64,
}

/// One answer: its status (0 when none came) and how long it took.
type Answer = (u16, Duration);

fn order_body(users: &[String]) -> serde_json::Value {
    let n = u64::try_from(users.len()).unwrap_or(1);
    let user = usize::try_from(random_below(n))
        .ok()
        .and_then(|i| users.get(i))
        .cloned()
        .unwrap_or_default();
    json!({"user_id": user, "currency": "EUR",
           "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1250}]})
}

async fn place(client: &reqwest::Client, url: &str, users: &[String]) -> Answer {
    let started = Instant::now();
    let status = client
        .post(url)
        .json(&order_body(users))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16());
    (status, started.elapsed())
}

async fn register_users(client: &reqwest::Client, api: &str) -> anyhow::Result<Vec<String>> {
    let mut users = Vec::new();
    for i in 0..50 {
        let body = json!({"name": format!("Overload {i}"), "email": format!("overload-{i}-{}@example.com", uuid::Uuid::new_v4().simple())});
        let answer: serde_json::Value = client
            .post(format!("{api}/v1/users"))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        users.push(answer["id"].as_str().unwrap_or_default().to_owned());
    }
    Ok(users)
}

/// Accepted orders per second with 64 callers, each sending its next order on an answer.
async fn capacity(
    client: &reqwest::Client,
    url: &str,
    users: &Arc<Vec<String>>,
    seconds: u64,
) -> f64 {
    let (client, url, users) = (client.clone(), url.to_owned(), Arc::clone(users));
    closed_loop(seconds, 64, move |_| {
        let (client, url, users) = (client.clone(), url.clone(), Arc::clone(&users));
        async move { (200..300).contains(&place(&client, &url, &users).await.0) }
    })
    .await
}

/// Successful calls per second of `callers` callers, each making its next call as soon
/// as it has the answer to the previous one; `call` gets the caller's number.
pub async fn closed_loop<F, Fut>(seconds: u64, callers: usize, call: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = JoinSet::new();
    for caller in 0..callers {
        let call = call.clone();
        tasks.spawn(async move {
            let mut succeeded = 0u64;
            while Instant::now() < until {
                if call(caller).await {
                    succeeded += 1;
                }
            }
            succeeded
        });
    }
    let succeeded: u64 = tasks.join_all().await.into_iter().sum();
    succeeded as f64 / seconds as f64
}

/// Offers `rate` orders per second for `seconds`, each on its own task.
async fn offer(
    client: &reqwest::Client,
    url: &str,
    users: &Arc<Vec<String>>,
    rate: f64,
    seconds: u64,
) -> Vec<Answer> {
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let mut requests = JoinSet::new();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let (client, url, users, answers) = (
                client.clone(),
                url.to_owned(),
                Arc::clone(users),
                Arc::clone(&answers),
            );
            requests.spawn(async move {
                let answer = place(&client, &url, &users).await;
                answers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(answer);
            });
        }
    }
    while requests.join_next().await.is_some() {}
    answers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// `VmHWM` (peak resident set) of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The answers to an overload, sorted by kind: latencies of the admitted (2xx) and the
/// shed (429, 503), and how many were anything else.
struct Answers {
    by_status: BTreeMap<u16, usize>,
    admitted: Vec<Duration>,
    shed: Vec<Duration>,
    others: usize,
}

impl Answers {
    fn of(answers: &[Answer]) -> Self {
        let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
        for (status, _) in answers {
            *by_status.entry(*status).or_default() += 1;
        }
        let latencies = |keep: fn(u16) -> bool| {
            let mut took: Vec<Duration> = answers
                .iter()
                .filter(|(s, _)| keep(*s))
                .map(|(_, t)| *t)
                .collect();
            took.sort_unstable();
            took
        };
        let others = by_status
            .iter()
            .filter(|(s, _)| !matches!(s, 200..=299 | 429 | 503))
            .map(|(_, n)| n)
            .sum();
        Self {
            admitted: latencies(|s| (200..300).contains(&s)),
            shed: latencies(|s| matches!(s, 429 | 503)),
            by_status,
            others,
        }
    }

    fn print(&self, capacity: f64, seconds: u64) {
        let goodput = self.admitted.len() as f64 / seconds as f64;
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(s, n)| {
                if *s == 0 {
                    format!("no answer {n}")
                } else {
                    format!("{s} {n}")
                }
            })
            .collect();
        println!("  answers: {}", statuses.join(", "));
        println!(
            "  admitted: {goodput:.0}/s ({:.2} of capacity); latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (bound {} ms)",
            goodput / capacity.max(1.0),
            quantile(&self.admitted, 0.5).as_secs_f64() * 1e3,
            quantile(&self.admitted, 0.99).as_secs_f64() * 1e3,
            self.admitted
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            COMMAND_TIMEOUT.as_millis()
        );
        println!(
            "  shed (429/503): p50 {:.0} ms, p99 {:.0} ms",
            quantile(&self.shed, 0.5).as_secs_f64() * 1e3,
            quantile(&self.shed, 0.99).as_secs_f64() * 1e3
        );
    }
}

/// Runs the overload against `stand`; whether everything held.
pub async fn run(stand: &Stand, overload: Overload) -> anyhow::Result<bool> {
    let client = test_support::client(API_KEY);
    let api = stand.url(ServiceName::CommandApi);
    let url = format!("{api}/v1/orders");
    let users = Arc::new(register_users(&client, &api).await?);
    let capacity = capacity(&client, &url, &users, overload.measure_seconds).await;
    let rate = capacity * overload.factor;
    println!(
        "  capacity: {capacity:.0} accepted orders/s (64 callers, {} s)",
        overload.measure_seconds
    );
    println!(
        "  offering {rate:.0} orders/s ({}x) for {} s",
        overload.factor, overload.seconds
    );
    let answers = offer(&client, &url, &users, rate, overload.seconds).await;
    let sorted = Answers::of(&answers);
    sorted.print(capacity, overload.seconds);
    let mut memory_ok = true;
    for (instance, pid) in stand.fleet.pids() {
        let peak = peak_rss_mib(pid);
        memory_ok &= peak.is_some_and(|p| p <= RSS_CEILING_MIB);
        println!(
            "  peak RSS {:<18} {} MiB",
            crate::fleet::label(instance),
            peak.map_or("?".into(), |p| p.to_string())
        );
    }
    let checks = [
        ("every answer is 2xx, 429 or 503", sorted.others == 0),
        (
            "admitted requests answer within the command timeout",
            sorted.admitted.last().copied().unwrap_or_default()
                <= COMMAND_TIMEOUT + Duration::from_secs(1),
        ),
        (
            "some requests are admitted throughout",
            !sorted.admitted.is_empty(),
        ),
        ("every service's peak RSS stays under 1 GiB", memory_ok),
    ];
    for (name, ok) in checks {
        println!("  {}  {name}", if ok { "PASS" } else { "FAIL" });
    }
    Ok(checks.iter().all(|(_, ok)| *ok))
}
