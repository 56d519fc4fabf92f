//! The shop's topics as the broker describes them: partitions, cleanup policy, retention.

use serde::Serialize;

use crate::{InspectionError, Result};

/// A topic of the shop as the broker describes it; `None`s when it does not exist.
#[derive(Clone, Debug, Serialize)]
pub struct TopicView {
    pub topic: String,
    pub exists: bool,
    pub partitions: Option<i32>,
    pub cleanup_policy: Option<String>,
    pub retention_ms: Option<String>,
}

/// Every topic the services use, as the broker describes it.
pub async fn describe(
    admin: &event_store::TopicAdmin,
    specs: &[event_store::TopicSpec],
) -> Result<Vec<TopicView>> {
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let observed = admin
        .describe(&names)
        .await
        .map_err(|e| InspectionError::unavailable("describing the topics", e))?;
    Ok(names
        .into_iter()
        .map(|name| {
            let found = observed.get(&name);
            let config = |key: &str| found.and_then(|t| t.configs.get(key).cloned());
            TopicView {
                exists: found.is_some(),
                partitions: found.map(|t| t.partitions),
                cleanup_policy: config("cleanup.policy"),
                retention_ms: config("retention.ms"),
                topic: name,
            }
        })
        .collect())
}
