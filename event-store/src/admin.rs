//! Creating and describing topics through the Kafka admin API, with bounded waits.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::client::KafkaSettings;
use crate::error::EventStoreError;
use crate::topics::{self, ObservedTopic, TopicSpec};

/// What creating one topic did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    Created(String),
    AlreadyExisted(String),
}

/// A handle on the broker's admin API.
#[derive(Clone)]
pub struct TopicAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
    settings: KafkaSettings,
}

impl std::fmt::Debug for TopicAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicAdmin")
            .field("brokers", &self.settings.brokers)
            .finish()
    }
}

impl TopicAdmin {
    /// Creating the client does not contact the broker; the calls do, each bounded by
    /// the settings' timeout.
    pub fn new(settings: &KafkaSettings) -> Result<Self, EventStoreError> {
        let client = settings
            .admin()
            .create()
            .map_err(|e| EventStoreError::from_kafka("admin client", e))?;
        Ok(Self {
            client: Arc::new(client),
            settings: settings.clone(),
        })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.settings.timeout))
            .operation_timeout(Some(self.settings.timeout))
    }

    /// Creates the topics that do not exist yet, with their configs, and returns once the
    /// broker serves every one of them (the controller accepts a topic before the broker's
    /// metadata shows it). Existing topics are left as they are: [`Self::preflight`] says
    /// whether they are fit for use.
    pub async fn create(
        &self,
        specs: &[TopicSpec],
        replication_factor: i32,
    ) -> Result<Vec<Created>, EventStoreError> {
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|spec| {
                spec.configs.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(replication_factor),
                    ),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let results = self
            .client
            .create_topics(&new_topics, &self.options())
            .await
            .map_err(|e| EventStoreError::from_kafka("create topics", e))?;
        let created = results
            .into_iter()
            .map(|result| match result {
                Ok(name) => Ok(Created::Created(name)),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    Ok(Created::AlreadyExisted(name))
                }
                Err((name, code)) => Err(EventStoreError::Refused {
                    operation: "create topics",
                    reason: format!("{name}: {code}"),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.await_served(specs).await?;
        Ok(created)
    }

    /// Waits (bounded by the timeout) until the metadata shows every topic of `specs`.
    async fn await_served(&self, specs: &[TopicSpec]) -> Result<(), EventStoreError> {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        loop {
            let served = self.partition_counts().await?;
            let missing: Vec<&str> = specs
                .iter()
                .filter(|s| !served.contains_key(&s.name))
                .map(|s| s.name.as_str())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EventStoreError::Unavailable {
                    operation: "create topics",
                    reason: format!("created but not served yet: {}", missing.join(", ")),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Partition counts and configs of those of `names` that exist.
    pub async fn describe(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, ObservedTopic>, EventStoreError> {
        let partitions = self.partition_counts().await?;
        let existing: Vec<&String> = names
            .iter()
            .filter(|n| partitions.contains_key(*n))
            .collect();
        if existing.is_empty() {
            return Ok(BTreeMap::new());
        }
        let resources: Vec<ResourceSpecifier<'_>> = existing
            .iter()
            .map(|n| ResourceSpecifier::Topic(n.as_str()))
            .collect();
        let described = self
            .client
            .describe_configs(&resources, &self.options())
            .await
            .map_err(|e| EventStoreError::from_kafka("describe configs", e))?;
        let mut observed = BTreeMap::new();
        for (name, result) in existing.into_iter().zip(described) {
            let resource = result.map_err(|code| EventStoreError::Refused {
                operation: "describe configs",
                reason: format!("{name}: {code}"),
            })?;
            let configs = resource
                .entries
                .into_iter()
                .filter_map(|entry| entry.value.map(|v| (entry.name, v)))
                .collect();
            let partitions = partitions[name];
            observed.insert(
                name.clone(),
                ObservedTopic {
                    partitions,
                    configs,
                },
            );
        }
        Ok(observed)
    }

    /// Checks every spec against the broker: the first problem found, if any. A missing
    /// topic is reported as such (it may still be being created); anything else is fatal.
    pub async fn preflight(&self, specs: &[TopicSpec]) -> Result<(), EventStoreError> {
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let observed = self.describe(&names).await?;
        for spec in specs {
            topics::check(spec, observed.get(&spec.name))?;
        }
        Ok(())
    }

    /// Topic name -> partition count, from the cluster metadata.
    pub async fn partition_counts(&self) -> Result<BTreeMap<String, i32>, EventStoreError> {
        let client = Arc::clone(&self.client);
        let timeout = self.settings.timeout;
        // librdkafka's metadata call blocks its thread; keep it off the async workers.
        let metadata =
            tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, timeout))
                .await
                .map_err(|e| EventStoreError::Unavailable {
                    operation: "fetch metadata",
                    reason: e.to_string(),
                })?
                .map_err(|e| EventStoreError::from_kafka("fetch metadata", e))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    }
}
