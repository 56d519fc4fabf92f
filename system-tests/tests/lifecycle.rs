//! How the services live: start without their dependencies and turn ready when they
//! appear, expose metrics, refuse a topic that could lose events, stop gracefully.

use std::time::Duration;

use event_store::topics::TopicRole;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use system_tests::{
    HeldBack, PARTITIONS, RunningService, create_topics, postgres_addr, service_env,
    start_services, wait_for_200,
};
use test_support::TestEnv;

#[tokio::test]
async fn services_start_without_broker_and_database_and_turn_ready_when_they_appear()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let broker = HeldBack::new(env.brokers.parse()?).await?;
    let database = HeldBack::new(postgres_addr(&env.database_url)?).await?;
    let database_url = env.database_url.replace(
        &postgres_addr(&env.database_url)?.to_string(),
        &database.addr.to_string(),
    );
    let services =
        start_services(&service_env(&env, &broker.addr.to_string(), &database_url)).await?;

    tokio::time::sleep(Duration::from_secs(3)).await;
    for service in &services {
        let health = reqwest::get(service.url("/health")).await?;
        assert_eq!(health.status(), 200, "{} not up", service.name);
        let ready = reqwest::get(service.url("/ready")).await?;
        assert_eq!(
            ready.status(),
            503,
            "{} ready without dependencies",
            service.name
        );
        let body: serde_json::Value = ready.json().await?;
        for dependency in ["kafka", "postgres"] {
            assert_eq!(body["checks"][dependency]["ready"], false, "{body}");
            assert!(body["checks"][dependency]["reason"].is_string(), "{body}");
        }
    }

    broker.open().await?;
    database.open().await?;
    for service in &services {
        // The longest backoff between probes is 5 s.
        wait_for_200(&service.url("/ready"), Duration::from_secs(20)).await?;
    }

    // Migrations ran when Postgres appeared, each service (each read model) in its own
    // schema; the projections service is ready only once its projectors run.
    let pool = env.pool().await;
    for table in [
        "read_orders.checkpoints",
        "read_users.users",
        "read_event_index.events",
        "saga.checkpoints",
    ] {
        let exists: Option<String> = sqlx_exists(&pool, table).await?;
        assert_eq!(exists.as_deref(), Some(table));
    }

    let metrics = reqwest::get(services[0].url("/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(r#"shop_dependency_up{dependency="kafka"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"shop_http_requests_total{route="/ready",method="GET",status="200"}"#)
    );

    for service in services {
        service.stop().await?;
    }
    Ok(())
}

async fn sqlx_exists(pool: &sqlx::PgPool, table: &str) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(table)
        .fetch_one(pool)
        .await?)
}

#[tokio::test]
async fn a_service_refuses_to_run_on_a_compacted_event_topic() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let admin = TopicAdmin::new(&KafkaSettings::new(&env.brokers))?;
    let mut specs = TopicNames::new(&env.topic_prefix).all(PARTITIONS);
    let events = specs
        .iter_mut()
        .find(|s| s.role == TopicRole::Events)
        .expect("an event topic");
    events.configs.insert("cleanup.policy", "compact".into());
    let compacted = events.name.clone();
    admin.create(&specs, 1).await?;

    let config =
        command_api::Config::from_env(&service_env(&env, &env.brokers, &env.database_url))?;
    let service = RunningService::start(command_api::NAME, command_api::build(config).await?);
    let outcome = tokio::time::timeout(Duration::from_secs(20), service.stop_on_its_own()).await?;
    let reason = outcome.expect_err("the service must stop").to_string();
    assert!(
        reason.contains(&compacted) && reason.contains("cleanup.policy=compact"),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "one line: {reason}");
    Ok(())
}
