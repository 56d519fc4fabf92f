//! The topic layout, and the preflight that refuses a broker whose event topics could lose
//! events.
//!
//! Every name starts with a configurable prefix, prepended verbatim (`TOPIC_PREFIX=t1.` gives
//! `t1.orders.events`), so tests and tenants can share one broker.
//!
//! | topic | partitions | retention | holds |
//! |---|---|---|---|
//! | `<prefix><service>.events` | configured | forever | the log of record |
//! | `<prefix><service>.commands` | configured | 7 days | commands routed to their writer |
//! | `<prefix><service>.outcomes` | configured | forever | outcomes of commands that appended no event |
//! | `<prefix>deadletters` | configured | forever | records a reader could not use |

use std::collections::BTreeMap;

use schemas::catalog::SERVICES;

/// `retention.ms` of topics kept forever: `-1`, Apache Kafka's "no time limit". Set
/// explicitly, since the broker's default is 7 days.
pub const FOREVER_MS: i64 = -1;

/// `retention.ms` values that also never delete by time, accepted on existing topics:
/// Long.MAX_VALUE (about 292 million years), which topics created by earlier versions carry.
const ALSO_FOREVER_MS: [i64; 1] = [i64::MAX];

/// How long routed commands are kept: long enough to diagnose, short enough not to grow.
pub const COMMAND_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// What a topic is for; decides its configuration and how strictly preflight checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicRole {
    /// The log of record: must never be deleted or compacted.
    Events,
    Commands,
    /// Rejections and conflicts: kept like events, since idempotency depends on them.
    Outcomes,
    DeadLetters,
}

/// A topic as it must exist on the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub role: TopicRole,
    pub partitions: i32,
    /// Topic-level configs set at creation and checked by preflight.
    pub configs: BTreeMap<&'static str, String>,
}

impl TopicSpec {
    fn new(name: String, role: TopicRole, partitions: i32) -> Self {
        let retention = match role {
            TopicRole::Events | TopicRole::Outcomes | TopicRole::DeadLetters => FOREVER_MS,
            TopicRole::Commands => COMMAND_RETENTION_MS,
        };
        let configs = BTreeMap::from([
            ("cleanup.policy", "delete".to_owned()),
            ("retention.ms", retention.to_string()),
            ("retention.bytes", "-1".to_owned()),
        ]);
        Self {
            name,
            role,
            partitions,
            configs,
        }
    }
}

/// The names of all topics under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix><service>.events`
    pub fn events(&self, service: &str) -> String {
        format!("{}{service}.events", self.prefix)
    }

    /// `<prefix><service>.commands`
    pub fn commands(&self, service: &str) -> String {
        format!("{}{service}.commands", self.prefix)
    }

    /// `<prefix><service>.outcomes`
    pub fn outcomes(&self, service: &str) -> String {
        format!("{}{service}.outcomes", self.prefix)
    }

    /// `<prefix><service>-writers`: the consumer group whose assignment of the command
    /// topic decides which instance writes which partition.
    pub fn writers_group(&self, service: &str) -> String {
        format!("{}{service}-writers", self.prefix)
    }

    /// `<prefix>deadletters`
    pub fn dead_letters(&self) -> String {
        format!("{}deadletters", self.prefix)
    }

    /// Every topic the shop uses, with `partitions` partitions each.
    pub fn all(&self, partitions: i32) -> Vec<TopicSpec> {
        self.for_services(&SERVICES, partitions)
    }

    /// The topics of `services` (and the dead letters), `partitions` partitions each.
    /// Command, outcome and event topics of a service have the same count: partition p of
    /// each is served by the writer that owns partition p of the events.
    pub fn for_services(&self, services: &[&str], partitions: i32) -> Vec<TopicSpec> {
        let mut specs = Vec::new();
        for service in services {
            specs.push(TopicSpec::new(
                self.events(service),
                TopicRole::Events,
                partitions,
            ));
            specs.push(TopicSpec::new(
                self.commands(service),
                TopicRole::Commands,
                partitions,
            ));
            specs.push(TopicSpec::new(
                self.outcomes(service),
                TopicRole::Outcomes,
                partitions,
            ));
        }
        specs.push(TopicSpec::new(
            self.dead_letters(),
            TopicRole::DeadLetters,
            partitions,
        ));
        specs
    }
}

/// A topic as the broker describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    pub configs: BTreeMap<String, String>,
}

/// Why a topic cannot be used as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicProblem {
    /// Not (yet) created: wait for it, something may be creating it.
    #[error("topic {0} does not exist")]
    Missing(String),
    #[error("topic {topic} has {found} partitions, configured {expected}")]
    PartitionCount {
        topic: String,
        expected: i32,
        found: i32,
    },
    #[error("topic {topic} has {key}={found}, {consequence}; it must be {expected}")]
    Config {
        topic: String,
        key: &'static str,
        expected: String,
        found: String,
        consequence: &'static str,
    },
}

impl TopicProblem {
    /// A misconfigured topic will not heal by waiting; a missing one may.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::Missing(_))
    }
}

/// Checks one topic against its spec. Event and dead-letter topics must keep everything
/// forever and never compact; a wrong partition count would route aggregates to the
/// wrong writer, so it is refused for every role.
pub fn check(spec: &TopicSpec, observed: Option<&ObservedTopic>) -> Result<(), TopicProblem> {
    let observed = observed.ok_or_else(|| TopicProblem::Missing(spec.name.clone()))?;
    if observed.partitions != spec.partitions {
        return Err(TopicProblem::PartitionCount {
            topic: spec.name.clone(),
            expected: spec.partitions,
            found: observed.partitions,
        });
    }
    if spec.role == TopicRole::Commands {
        return Ok(());
    }
    let found = |key: &str| observed.configs.get(key).cloned().unwrap_or_default();
    let policy = found("cleanup.policy");
    if policy != "delete" {
        return Err(TopicProblem::Config {
            topic: spec.name.clone(),
            key: "cleanup.policy",
            expected: "delete".into(),
            found: policy,
            consequence: "which would compact away events",
        });
    }
    let retention = found("retention.ms");
    let forever = retention
        .parse::<i64>()
        .is_ok_and(|ms| ms == FOREVER_MS || ALSO_FOREVER_MS.contains(&ms));
    if !forever {
        return Err(TopicProblem::Config {
            topic: spec.name.clone(),
            key: "retention.ms",
            expected: FOREVER_MS.to_string(),
            found: retention,
            consequence: "which would delete events after a while",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(partitions: i32, pairs: &[(&str, &str)]) -> ObservedTopic {
        ObservedTopic {
            partitions,
            configs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn orders_events() -> TopicSpec {
        TopicNames::new("t.")
            .all(8)
            .into_iter()
            .find(|s| s.name == "t.orders.events")
            .unwrap()
    }

    #[test]
    fn names_carry_the_prefix_verbatim() {
        let names = TopicNames::new("tenant-a.");
        assert_eq!(names.events("orders"), "tenant-a.orders.events");
        assert_eq!(names.commands("users"), "tenant-a.users.commands");
        assert_eq!(names.dead_letters(), "tenant-a.deadletters");
        assert_eq!(names.outcomes("orders"), "tenant-a.orders.outcomes");
        assert_eq!(TopicNames::new("").all(3).len(), 16);
    }

    #[test]
    fn event_topics_are_created_to_keep_everything() {
        let spec = orders_events();
        assert_eq!(spec.configs["cleanup.policy"], "delete");
        assert_eq!(spec.configs["retention.ms"], "-1");
    }

    #[test]
    fn preflight_accepts_a_good_topic_and_names_each_fault() {
        let spec = orders_events();
        let good = [("cleanup.policy", "delete"), ("retention.ms", "-1")];
        assert_eq!(check(&spec, Some(&observed(8, &good))), Ok(()));
        let long_max = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "9223372036854775807"),
        ];
        assert_eq!(check(&spec, Some(&observed(8, &long_max))), Ok(()));

        assert!(matches!(check(&spec, None), Err(TopicProblem::Missing(_))));
        let wrong_count = check(&spec, Some(&observed(4, &good))).unwrap_err();
        assert!(wrong_count.is_fatal());
        assert_eq!(
            wrong_count.to_string(),
            "topic t.orders.events has 4 partitions, configured 8"
        );

        let compacted = [("cleanup.policy", "compact"), ("retention.ms", "-1")];
        let err = check(&spec, Some(&observed(8, &compacted))).unwrap_err();
        assert!(err.to_string().contains("cleanup.policy=compact"), "{err}");

        let finite = [("cleanup.policy", "delete"), ("retention.ms", "604800000")];
        let err = check(&spec, Some(&observed(8, &finite))).unwrap_err();
        assert!(err.to_string().contains("retention.ms=604800000"), "{err}");

        let zero = [("cleanup.policy", "delete"), ("retention.ms", "0")];
        let err = check(&spec, Some(&observed(8, &zero))).unwrap_err();
        assert!(err.to_string().contains("retention.ms=0"), "{err}");

        let unreported = check(&spec, Some(&observed(8, &[]))).unwrap_err();
        assert!(unreported.is_fatal());
    }

    #[test]
    fn command_topics_may_expire() {
        let spec = TopicNames::new("")
            .all(2)
            .into_iter()
            .find(|s| s.role == TopicRole::Commands)
            .unwrap();
        let expiring = [("cleanup.policy", "delete"), ("retention.ms", "1000")];
        assert_eq!(check(&spec, Some(&observed(2, &expiring))), Ok(()));
    }
}
