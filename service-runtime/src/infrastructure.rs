//! The broker and the database every service runs on: their settings, read once from the
//! environment, and the clients made from them. Making clients contacts nothing, so a
//! service starts while its dependencies are down.

use std::time::Duration;

use event_store::{KafkaSettings, TopicAdmin, TopicNames, TopicSpec};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::settings::{Env, SettingError, common};

#[derive(Clone, Debug)]
pub struct Infrastructure {
    pub kafka: KafkaSettings,
    pub topics: TopicNames,
    pub partitions: i32,
    pub database: PgConnectOptions,
    pub max_connections: u32,
    pub log_filter: String,
}

impl Infrastructure {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let mut kafka = KafkaSettings::new(env.text(&common::KAFKA_BROKERS)?);
        kafka.timeout = Duration::from_millis(env.parse(&common::KAFKA_TIMEOUT_MS)?);
        let session: u64 = env.parse(&common::KAFKA_SESSION_TIMEOUT_MS)?;
        // The broker's allowed range (group.min/max.session.timeout.ms) is checked when a
        // member joins; below 1 s heartbeats could not keep up, above 5 minutes a crash
        // would leave partitions unread that long.
        if !(1_000..=300_000).contains(&session) {
            return Err(SettingError::Invalid {
                name: common::KAFKA_SESSION_TIMEOUT_MS.name,
                value: session.to_string(),
                reason: "must be from 1000 to 300000 (milliseconds)".into(),
            });
        }
        kafka.session_timeout = Duration::from_millis(session);
        let partitions: i32 = env.parse(&common::EVENT_PARTITIONS)?;
        if partitions < 1 {
            return Err(SettingError::Invalid {
                name: common::EVENT_PARTITIONS.name,
                value: partitions.to_string(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            kafka,
            topics: TopicNames::new(env.text(&common::TOPIC_PREFIX)?),
            partitions,
            database: database_options(env)?,
            max_connections: env.parse(&common::DATABASE_MAX_CONNECTIONS)?,
            log_filter: env.text(&common::RUST_LOG)?,
        })
    }

    /// A pool that connects on first use; acquiring waits at most 2 s, so a request never
    /// hangs on a database that is down.
    pub fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(self.database.clone())
    }

    pub fn admin(&self) -> Result<TopicAdmin, event_store::EventStoreError> {
        TopicAdmin::new(&self.kafka)
    }

    /// Every topic of the shop at the configured partition count.
    pub fn topic_specs(&self) -> Vec<TopicSpec> {
        self.topics.all(self.partitions)
    }
}

/// sqlx accepts any scheme here; anything but Postgres is a configuration error.
fn database_options(env: &Env) -> Result<PgConnectOptions, SettingError> {
    let url = env.text(&common::DATABASE_URL)?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(SettingError::Invalid {
            name: common::DATABASE_URL.name,
            value: url,
            reason: "expected a postgres:// URL".into(),
        });
    }
    env.parse(&common::DATABASE_URL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_describe_the_local_stack() {
        let infra = Infrastructure::from_env(&Env::default()).unwrap();
        assert_eq!(infra.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(infra.partitions, 8);
        assert_eq!(infra.kafka.session_timeout, Duration::from_secs(6));
        assert_eq!(infra.database.get_port(), 55432);
        assert_eq!(infra.topics.events("orders"), "orders.events");
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        let env = Env::from_pairs([("EVENT_PARTITIONS", "0")]);
        let err = Infrastructure::from_env(&env).unwrap_err();
        assert!(err.to_string().starts_with("EVENT_PARTITIONS"), "{err}");
        for session in ["999", "300001"] {
            let env = Env::from_pairs([("KAFKA_SESSION_TIMEOUT_MS", session)]);
            let err = Infrastructure::from_env(&env).unwrap_err();
            assert!(
                err.to_string().starts_with("KAFKA_SESSION_TIMEOUT_MS"),
                "{err}"
            );
        }
        let env = Env::from_pairs([("DATABASE_URL", "mysql://nope")]);
        let err = Infrastructure::from_env(&env).unwrap_err();
        assert!(err.to_string().starts_with("DATABASE_URL"), "{err}");
    }
}

/// What every service's configuration starts with: where it listens, and what it runs on.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub addr: std::net::SocketAddr,
    pub infrastructure: Infrastructure,
}

impl ServiceConfig {
    /// Reads the listen address from `addr` and the rest from the common settings.
    pub fn from_env(env: &Env, addr: &crate::Setting) -> Result<Self, SettingError> {
        Ok(Self {
            addr: env.parse(addr)?,
            infrastructure: Infrastructure::from_env(env)?,
        })
    }
}
