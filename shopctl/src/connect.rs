//! Reaching what the operator acts on: the settings the services read, Postgres and the
//! broker, each with a bounded wait so that a dependency that is down gives one line of
//! error, never a hang.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use event_store::Login;
use service_runtime::Infrastructure;
use service_runtime::settings::Env;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The settings every service reads (`KAFKA_BROKERS`, `DATABASE_URL`, `TOPIC_PREFIX`, ...).
pub fn infrastructure() -> anyhow::Result<Infrastructure> {
    Ok(Infrastructure::from_env(&Env::from_process())?)
}

/// A pool of `connections` on `DATABASE_URL`, checked by one round trip.
pub async fn postgres(infra: &Infrastructure, connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(infra.database.clone())
        .await
        .context("cannot reach Postgres (DATABASE_URL)")?;
    Ok(pool)
}

/// Topic name -> partitions, as the broker reports them: also the check that it answers.
/// A broker that refuses the TLS handshake or the SASL login says so, rather than
/// "cannot reach".
pub async fn topic_partitions(infra: &Infrastructure) -> anyhow::Result<BTreeMap<String, i32>> {
    let e = match infra.admin()?.partition_counts().await {
        Ok(counts) => return Ok(counts),
        Err(e) => e,
    };
    let reach = format!(
        "cannot reach the broker (KAFKA_BROKERS={})",
        infra.kafka.brokers
    );
    match service_runtime::probes::login(infra.kafka.clone()).await {
        Login::Refused(reason) => Err(anyhow::anyhow!(reason)),
        Login::NoAnswer(Some(last)) => Err(e).context(format!("{reach}, last: {last}")),
        Login::Accepted | Login::NoAnswer(None) => Err(e).context(reach),
    }
}

/// The partitions of `topic` (a full name), or an error naming it when it does not exist.
pub fn partitions_of(known: &BTreeMap<String, i32>, topic: &str) -> anyhow::Result<i32> {
    known
        .get(topic)
        .copied()
        .with_context(|| format!("no topic {topic:?} on the broker"))
}
