//! Two projections processes share each read model's consumer group; one is killed with
//! SIGKILL while events flow. Once the dead member's session (3 s here) expires, the
//! broker rebalances the group and the survivor projects every partition: within the
//! session timeout plus 5 s. Nothing is lost: the read model ends equal to a fold of the
//! whole log. The takeover time (kill -> every partition moving again) is printed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Log, eventually, fold_orders, spawn_logging, stored_orders, write_until};
use event_store::reader::{Schema, bookkeeping};
use test_support::TestEnv;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The orders model's next offset per partition of its topic.
async fn checkpoints(
    pool: &sqlx::PgPool,
    topic: &str,
) -> anyhow::Result<std::collections::BTreeMap<i32, i64>> {
    let mut conn = pool.acquire().await?;
    Ok(bookkeeping::checkpoints(&mut conn, &Schema::live("orders"))
        .await?
        .into_iter()
        .filter(|c| c.topic == topic)
        .map(|c| (c.partition, c.next_offset))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_takes_over_the_partitions_of_a_killed_instance() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    let log = Arc::new(Mutex::new(Log::new(&env).await?));
    let topic = log.lock().await.topics.events("orders");
    let stop = CancellationToken::new();
    let writer = tokio::spawn(write_until(Arc::clone(&log), stop.clone()));

    let first = spawn_logging(&env, "warn", None);
    eventually(
        Duration::from_secs(60),
        "the first instance to project",
        || async { Ok(checkpoints(&pool, &topic).await?.values().sum::<i64>() > 0) },
    )
    .await?;
    let survivor = spawn_logging(&env, "warn", None);
    // Both in the group (each gets a share once the group rebalanced on the join).
    tokio::time::sleep(Duration::from_secs(8)).await;

    drop(first); // SIGKILL
    let killed_at = Instant::now();
    let at_kill = checkpoints(&pool, &topic).await?;
    eventually(
        Duration::from_secs(90),
        "every partition to move again after the kill",
        || async {
            let now = checkpoints(&pool, &topic).await?;
            Ok(at_kill
                .iter()
                .all(|(p, o)| now.get(p).is_some_and(|n| n > o)))
        },
    )
    .await?;
    let takeover = killed_at.elapsed();
    assert!(
        takeover <= common::SESSION + Duration::from_secs(5),
        "takeover took {takeover:?}, more than the session timeout plus 5 s"
    );

    stop.cancel();
    writer.await?;
    let log = log.lock().await;
    let ends = log.ends();
    eventually(
        Duration::from_secs(90),
        "the survivor to catch up",
        || async {
            let now = checkpoints(&pool, &topic).await?;
            Ok(ends
                .iter()
                .all(|(p, end)| now.get(p).is_some_and(|o| o >= end)))
        },
    )
    .await?;
    drop(survivor);
    let documents: Vec<_> = log
        .written
        .iter()
        .filter_map(|w| w.document.clone())
        .collect();
    let rows = stored_orders(&pool, &Schema::live("orders").table("orders")).await?;
    assert_eq!(
        rows,
        fold_orders(&documents),
        "nothing lost, nothing doubled"
    );
    println!(
        "takeover after SIGKILL: {:.1} s; {} events",
        takeover.as_secs_f64(),
        documents.len()
    );
    Ok(())
}
