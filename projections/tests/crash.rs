//! The projections service as a real process, killed with SIGKILL mid-batch 20 times
//! while events flow: after every kill the stored offsets are never ahead of the rows
//! (the rows equal a fold of exactly the events below the offsets), and at the end the
//! read model equals a fold of the whole log.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Log, eventually, fold_orders, random_below, spawn, stored_orders, write_until};
use event_store::reader::{Schema, bookkeeping};
use test_support::TestEnv;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const KILLS: usize = 20;

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
    // The writer appends in bursts, and the last killed projector may have read all of it:
    // the successor must have events of its own to read.
    eventually(
        Duration::from_secs(30),
        "the writer to append past the last kill",
        || async {
            let log = log.lock().await;
            Ok(log.written.iter().filter(|w| w.document.is_some()).count() > applied_before_kill)
        },
    )
    .await?;
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
