//! The projections service as a real process, killed with SIGKILL mid-batch 20 times
//! while events flow: after every kill the stored offsets are never ahead of the rows
//! (the rows equal a fold of exactly the events below the offsets), and at the end the
//! read model equals a fold of the whole log.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{
    Log, PARTITIONS, cancelled, confirmed, event, eventually, fold_orders, placed, stored_orders,
};
use projections::projector::{Schema, bookkeeping};
use schemas::{OrderId, UserId};
use test_support::TestEnv;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_projections");
const KILLS: usize = 20;

/// The process, killed when the test lets go of it (also when an assertion fails).
struct Projections(Child);

impl Drop for Projections {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(env: &TestEnv) -> Projections {
    Projections(
        Command::new(BIN)
            .env("KAFKA_BROKERS", &env.brokers)
            .env("DATABASE_URL", &env.database_url)
            .env("TOPIC_PREFIX", &env.topic_prefix)
            .env("EVENT_PARTITIONS", PARTITIONS.to_string())
            .env("KAFKA_SESSION_TIMEOUT_MS", "3000")
            .env("PROJECTIONS_ADDR", "127.0.0.1:0")
            .env("PROJECTION_BATCH_MAX", "200")
            .env(
                "RUST_LOG",
                std::env::var("PROJECTIONS_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(match std::env::var("PROJECTIONS_LOG_FILE") {
                Ok(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_or_else(|_| Stdio::null(), Stdio::from),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .expect("start the projections binary"),
    )
}

fn random_below(n: u64) -> u64 {
    u64::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(n)).unwrap_or(0)
}

/// Appends `document`, again and again while the broker refuses it (tansu stalls under
/// load); a copy that landed unseen is a duplicate the reader rule drops.
async fn append(log: &Mutex<Log>, document: schemas::EventDocument) {
    loop {
        match log.lock().await.append(document.clone()).await {
            Ok(_) => return,
            Err(e) => {
                eprintln!("append failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Writes order lifecycles until stopped: place, then confirm, then cancel, interleaved.
async fn write_until(log: Arc<Mutex<Log>>, stop: CancellationToken) {
    let user = UserId::new();
    let mut open: Vec<(OrderId, u64)> = Vec::new();
    while !stop.is_cancelled() {
        for _ in 0..5 {
            let pick = random_below(3);
            if pick == 0 || open.is_empty() {
                let order = OrderId::new();
                append(&log, event(1, placed(order, user))).await;
                open.push((order, 1));
            } else {
                let at = usize::try_from(random_below(open.len() as u64)).unwrap_or(0);
                let (order, version) = open[at];
                let payload = if version == 1 {
                    confirmed(order)
                } else {
                    cancelled(order)
                };
                append(&log, event(version + 1, payload)).await;
                if version + 1 == 3 {
                    open.swap_remove(at);
                } else {
                    open[at].1 = version + 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checkpoints and rows read in one snapshot.
async fn snapshot(
    pool: &sqlx::PgPool,
    topic: &str,
) -> anyhow::Result<(
    BTreeMap<i32, i64>,
    BTreeMap<String, projections::read_models::orders::OrderRow>,
)> {
    let schema = Schema::live("orders");
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let checkpoints = bookkeeping::checkpoints(&mut tx, &schema).await?;
    let rows: Vec<projections::read_models::orders::OrderRow> = sqlx::query_as(
        sqlx::AssertSqlSafe(format!("SELECT * FROM {}", schema.table("orders"))),
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let offsets = checkpoints
        .into_iter()
        .filter(|c| c.topic == topic)
        .map(|c| (c.partition, c.next_offset))
        .collect();
    Ok((
        offsets,
        rows.into_iter()
            .map(|r| (r.order_id.to_string(), r))
            .collect(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_twenty_times_the_read_model_equals_a_fold_of_the_log()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    let log = Arc::new(Mutex::new(Log::new(&env).await?));
    let topic = log.lock().await.topics.events("orders");
    let stop = CancellationToken::new();
    let writer = tokio::spawn(write_until(Arc::clone(&log), stop.clone()));

    let mut applied_before_kill = 0;
    for round in 0..KILLS {
        let child = spawn(&env);
        // Kill only once this process is applying batches.
        let progressed_from = snapshot(&pool, &topic)
            .await
            .map(|(o, _)| o.values().sum::<i64>())
            .unwrap_or(0);
        eventually(
            Duration::from_secs(120),
            "the restarted projector to make progress",
            || async {
                Ok(snapshot(&pool, &topic).await?.0.values().sum::<i64>() > progressed_from)
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(random_below(400))).await;
        drop(child); // SIGKILL

        let (offsets, rows) = snapshot(&pool, &topic).await?;
        let written = log.lock().await.written.clone();
        let below: Vec<_> = written
            .iter()
            .filter(|w| {
                offsets
                    .get(&w.partition)
                    .is_some_and(|next| w.offset < *next)
            })
            .filter_map(|w| w.document.clone())
            .collect();
        let expected = fold_orders(&below);
        let differing: Vec<String> = expected
            .keys()
            .chain(rows.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| rows.get(*k) != expected.get(*k))
            .map(|k| {
                let show = |r: Option<&projections::read_models::orders::OrderRow>| {
                    r.map(|r| format!("{} v{}", r.status, r.version))
                };
                format!(
                    "{k}: stored {:?}, fold {:?}",
                    show(rows.get(k)),
                    show(expected.get(k))
                )
            })
            .collect();
        assert!(
            differing.is_empty(),
            "round {round} (offsets {offsets:?}): the rows must be exactly the fold of the events below the stored offsets: {differing:#?}"
        );
        applied_before_kill = below.len();
    }
    stop.cancel();
    writer.await?;

    let child = spawn(&env);
    let log = log.lock().await;
    let ends = log.ends();
    eventually(
        Duration::from_secs(120),
        "the last projector to catch up",
        || async {
            let (offsets, _) = snapshot(&pool, &topic).await?;
            Ok(ends
                .iter()
                .all(|(p, end)| offsets.get(p).is_some_and(|o| o >= end)))
        },
    )
    .await?;
    drop(child);
    let documents: Vec<_> = log
        .written
        .iter()
        .filter_map(|w| w.document.clone())
        .collect();
    let rows = stored_orders(&pool, &Schema::live("orders").table("orders")).await?;
    assert_eq!(rows, fold_orders(&documents));
    assert!(applied_before_kill > 0 && documents.len() > applied_before_kill);
    // The event index holds every event exactly once.
    let indexed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_event_index.events WHERE aggregate_type = 'order'",
    )
    .fetch_one(&pool)
    .await?;
    assert!(indexed <= documents.len() as i64);
    println!(
        "{} events written during {KILLS} kills; read model equals the fold",
        documents.len()
    );
    Ok(())
}
