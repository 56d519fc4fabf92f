//! The projector engine on the real broker and Postgres: rows equal a fold of the log
//! (new aggregates COPYed in during a catch-up, the others upserted), duplicates and gaps
//! change nothing and are counted, a poison event parks only its aggregate, and an
//! operator can retry and skip what is parked.

mod common;

use std::time::Duration;

use common::{Log, cancelled, confirmed, event, eventually, fold_orders, placed, stored_orders};
use event_store::KafkaSettings;
use event_store::reader::{Record, Schema, bookkeeping};
use projections::projector::metrics::ProjectorMetrics;
use projections::projector::runner::{Projector, ProjectorConfig};
use projections::projector::{ReadModel, operator};
use projections::read_models::orders::Orders;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::{OrderId, UserId};
use test_support::TestEnv;
use tokio_util::sync::CancellationToken;

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    registry: Registry,
}

fn start(env: &TestEnv, log: &Log, pool: &sqlx::PgPool, batch_max: usize) -> Running {
    let mut registry = Registry::default();
    let metrics = ProjectorMetrics::register(&mut registry);
    let config = ProjectorConfig {
        kafka: KafkaSettings::new(&env.brokers),
        topics: log.topics.clone(),
        batch_max,
    };
    let projector = Projector::<Orders>::new(pool.clone(), Schema::live("orders"), config, metrics);
    let stop = CancellationToken::new();
    let task = tokio::spawn(projector.run(stop.clone()));
    Running {
        stop,
        task,
        registry,
    }
}

impl Running {
    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode");
        text
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Waits until the projector's checkpoints reach the end of everything written.
async fn caught_up(pool: &sqlx::PgPool, log: &Log) -> anyhow::Result<()> {
    let schema = Schema::live("orders");
    let topic = log.topics.events("orders");
    let ends = log.ends();
    eventually(
        Duration::from_secs(60),
        "the projector to catch up",
        || async {
            let mut conn = pool.acquire().await?;
            for (partition, end) in &ends {
                if bookkeeping::next_offset(&mut conn, &schema, &topic, *partition).await? < *end {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await
}

#[tokio::test]
async fn duplicates_and_gaps_leave_the_rows_unchanged_and_raise_the_metric() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    let mut log = Log::new(&env).await?;
    let orders: Vec<OrderId> = (0..10).map(|_| OrderId::new()).collect();
    let user = UserId::new();
    for (i, order) in orders.iter().enumerate() {
        log.append(event(1, placed(*order, user))).await?;
        log.append(event(2, confirmed(*order))).await?;
        if i % 2 == 0 {
            log.append(event(3, cancelled(*order))).await?;
        }
    }
    let legit: Vec<_> = log
        .written
        .iter()
        .filter_map(|w| w.document.clone())
        .collect();
    let running = start(&env, &log, &pool, 500);
    caught_up(&pool, &log).await?;
    let table = Schema::live("orders").table("orders");
    let before = stored_orders(&pool, &table).await?;
    assert_eq!(before, fold_orders(&legit));
    assert_eq!(before.len(), 10);

    // A second version 2 of a confirmed order (a losing writer's record), and version 7
    // of an order at version 2.
    log.append(event(2, cancelled(orders[0]))).await?;
    log.append(event(7, cancelled(orders[1]))).await?;
    caught_up(&pool, &log).await?;
    let after = stored_orders(&pool, &table).await?;
    assert_eq!(after, before, "neither record may change a row");
    let metrics = running.metrics();
    for line in [
        r#"projector_dropped_records_total{read_model="orders",reason="duplicate"} 1"#,
        r#"projector_dropped_records_total{read_model="orders",reason="gap"} 1"#,
        r#"projector_parked_records_total{read_model="orders",reason="gap"} 1"#,
        r#"projector_applied_events_total{read_model="orders"} 25"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    // The gap parked its aggregate: the next real version waits behind it.
    log.append(event(3, cancelled(orders[1]))).await?;
    caught_up(&pool, &log).await?;
    assert_eq!(stored_orders(&pool, &table).await?, before);
    let parked = operator::list(
        &pool,
        &Schema::live("orders"),
        Some(&orders[1].to_string()),
        10,
    )
    .await?;
    let versions: Vec<_> = parked.iter().map(|p| p.version).collect();
    assert_eq!(versions, [Some(7), Some(3)]);
    assert!(parked[0].error.contains("gap"), "{}", parked[0].error);

    // The operator drops the stray version 7; version 3 then applies.
    let (skipped, report) =
        operator::skip::<Orders>(&pool, &Schema::live("orders"), &orders[1].to_string()).await?;
    assert_eq!(
        (skipped.version, report.applied, report.still_parked),
        (Some(7), 1, 0)
    );
    let row = &stored_orders(&pool, &table).await?[&orders[1].to_string()];
    assert_eq!((row.status.as_str(), row.version), ("cancelled", 3));
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_poison_event_parks_only_its_aggregate_until_an_operator_acts() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    let mut log = Log::new(&env).await?;
    let (poisoned, healthy, user) = (OrderId::new(), OrderId::new(), UserId::new());
    log.append(event(1, placed(poisoned, user))).await?;
    let mut poison = event(2, confirmed(poisoned));
    poison.data["payment_id"] = "not-a-payment-id".into();
    log.append(poison).await?;
    log.append(event(3, cancelled(poisoned))).await?;
    log.append(event(1, placed(healthy, user))).await?;
    log.append(event(2, confirmed(healthy))).await?;
    // An unreadable record keyed by a third order, and that order's first event after it.
    let unreadable = OrderId::new();
    log.append_raw(&unreadable.to_string(), b"{ not an event", None)
        .await?;
    log.append(event(1, placed(unreadable, user))).await?;

    let running = start(&env, &log, &pool, 500);
    caught_up(&pool, &log).await?;
    let schema = Schema::live("orders");
    let rows = stored_orders(&pool, &schema.table("orders")).await?;
    let stuck = &rows[&poisoned.to_string()];
    assert_eq!((stuck.status.as_str(), stuck.version), ("pending", 1));
    let flowing = &rows[&healthy.to_string()];
    assert_eq!((flowing.status.as_str(), flowing.version), ("confirmed", 2));
    assert!(
        !rows.contains_key(&unreadable.to_string()),
        "parked behind the unreadable record"
    );

    let parked = operator::list(&pool, &schema, Some(&poisoned.to_string()), 10).await?;
    let versions: Vec<_> = parked.iter().map(|p| p.version).collect();
    assert_eq!(versions, [Some(2), Some(3)]);
    assert!(
        parked[0].error.contains("invalid OrderConfirmed"),
        "{}",
        parked[0].error
    );
    assert!(
        parked[1].error.contains("parked behind"),
        "{}",
        parked[1].error
    );

    // The poison record is in the dead letters with why and where.
    let dlq = log.topics.dead_letters();
    let consumer: StreamConsumer = log
        .settings
        .consumer(&format!("{}dlq-reader", env.topic_prefix))
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for partition in 0..common::PARTITIONS {
        tpl.add_partition_offset(&dlq, partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut keys = Vec::new();
    while keys.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await??;
        let headers = message.headers().expect("dead letters carry headers");
        let error = headers
            .iter()
            .find(|h| h.key == "dlq_error")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        assert!(!error.is_empty(), "a dead letter says why");
        keys.push(String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned());
    }
    keys.sort();
    let mut expected = vec![poisoned.to_string(), unreadable.to_string()];
    expected.sort();
    assert_eq!(keys, expected);

    // Retrying changes nothing while the poison is still poison.
    let report = operator::retry::<Orders>(&pool, &schema, &poisoned.to_string()).await?;
    assert_eq!((report.applied, report.still_parked), (0, 2));
    assert!(report.blocked_by.is_some());
    // Skipping it moves the order past version 2 and applies version 3.
    let (skipped, report) = operator::skip::<Orders>(&pool, &schema, &poisoned.to_string()).await?;
    assert_eq!(
        (skipped.version, report.applied, report.still_parked),
        (Some(2), 1, 0)
    );
    let row = &stored_orders(&pool, &schema.table("orders")).await?[&poisoned.to_string()];
    assert_eq!((row.status.as_str(), row.version), ("cancelled", 3));
    // Skipping the unreadable record lets the order's first event through.
    let (skipped, report) =
        operator::skip::<Orders>(&pool, &schema, &unreadable.to_string()).await?;
    assert_eq!((skipped.version, report.applied), (None, 1));
    assert!(operator::list(&pool, &schema, None, 10).await?.is_empty());
    assert!(
        operator::retry::<Orders>(&pool, &schema, &healthy.to_string())
            .await
            .is_err(),
        "nothing parked to retry"
    );
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_catch_up_copies_new_orders_in_and_a_replay_over_stored_rows_only_adds_the_new()
-> anyhow::Result<()> {
    // Given orders placed, then some confirmed and some of those cancelled, read in
    // batches of 40: most batches mix orders new to the model with orders it has met
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    let mut log = Log::new(&env).await?;
    let orders: Vec<OrderId> = (0..200).map(|_| OrderId::new()).collect();
    let user = UserId::new();
    for order in &orders {
        log.append(event(1, placed(*order, user))).await?;
    }
    for order in &orders[..100] {
        log.append(event(2, confirmed(*order))).await?;
    }
    for order in &orders[..50] {
        log.append(event(3, cancelled(*order))).await?;
    }
    let schema = Schema::live("orders");
    let table = schema.table("orders");
    let running = start(&env, &log, &pool, 40);
    caught_up(&pool, &log).await?;
    let documents = |log: &Log| -> Vec<_> {
        log.written
            .iter()
            .filter_map(|w| w.document.clone())
            .collect()
    };
    // Then the rows are the fold of the log
    assert_eq!(
        stored_orders(&pool, &table).await?,
        fold_orders(&documents(&log))
    );
    running.stop().await;

    // When the checkpoints are gone (rows and versions kept) and the log grows
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {}",
        schema.table("checkpoints")
    )))
    .execute(&pool)
    .await?;
    for order in &orders[100..120] {
        log.append(event(2, confirmed(*order))).await?;
    }
    let running = start(&env, &log, &pool, 40);
    caught_up(&pool, &log).await?;
    // Then the replay from offset zero looks the stored orders up (the model holds rows, so
    // no aggregate passes for new): the old events are duplicates, the new ones apply
    assert_eq!(
        stored_orders(&pool, &table).await?,
        fold_orders(&documents(&log))
    );
    let metrics = running.metrics();
    for line in [
        r#"projector_dropped_records_total{read_model="orders",reason="duplicate"} 350"#,
        r#"projector_applied_events_total{read_model="orders"} 20"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    running.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_new_aggregate_that_was_stored_already_fails_its_batch_once_and_is_looked_up_after()
-> anyhow::Result<()> {
    // Given an order stored by one projector from partition 0
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    let topics = event_store::TopicNames::new(&env.topic_prefix);
    let schema = Schema::live("orders");
    schema
        .migrate(&pool.connect_options(), <Orders as ReadModel>::migrator())
        .await?;
    let projector = |pool: &sqlx::PgPool| {
        let config = ProjectorConfig {
            kafka: KafkaSettings::new(&env.brokers),
            topics: topics.clone(),
            batch_max: 500,
        };
        let metrics = ProjectorMetrics::register(&mut Registry::default());
        Projector::<Orders>::new(pool.clone(), schema.clone(), config, metrics)
    };
    let order = OrderId::new();
    let placed = event(1, placed(order, UserId::new()));
    let topic = topics.events("orders");
    let record = |partition: i32| Record::Decoded {
        document: placed.clone(),
        topic: topic.clone(),
        partition,
        offset: 0,
    };
    let next = |partition: i32| [((topic.clone(), partition), 1)].into();
    projector(&pool)
        .apply(None, &mut vec![record(0)], &next(0))
        .await?;
    // When another projector, knowing nothing stored in partition 1, meets it there
    let other = projector(&pool);
    let refused = other.apply(None, &mut vec![record(1)], &next(1)).await;
    // Then its COPY is refused, and the batch, retried, looks the order up: a duplicate
    let error = refused
        .expect_err("the COPY meets the stored order")
        .to_string();
    assert!(error.contains("duplicate key"), "{error}");
    let report = other.apply(None, &mut vec![record(1)], &next(1)).await?;
    assert_eq!((report.applied, report.duplicates), (0, 1));
    let rows = stored_orders(&pool, &schema.table("orders")).await?;
    assert_eq!(rows, fold_orders([&placed]));
    Ok(())
}
