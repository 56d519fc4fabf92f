//! Commands for partitions another instance writes: where that instance is, and how a
//! command reaches it.
//!
//! The consumer group of the command topic stays the lease (see [`super::host`]). When an
//! instance starts serving a partition it announces itself in Postgres
//! (`event_store.writer_owners`), and again once per session timeout, so the table heals
//! after a Postgres restart. An instance asked for an aggregate of a partition it does not
//! write looks the owner up (cached until it fails), sends it the command document over
//! HTTP ([`PEER_COMMANDS_PATH`]) with the peers' shared key, and returns its outcome: one
//! hop, never more, because the receiving side only executes locally. A stale entry costs
//! a retry: an instance that does not write the partition answers 421, a dead one does not
//! answer, and the caller looks again until its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use schemas::CommandDocument;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::error::EventStoreError;

/// Where an instance accepts commands from its peers: `{service}` is the write model's
/// service name (`users`, `orders`, ...).
pub const PEER_COMMANDS_PATH: &str = "/internal/writers/{service}/commands";
/// Where an instance answers its peers with an aggregate's current version and state.
pub const PEER_STATE_PATH: &str = "/internal/writers/{service}/aggregates/{aggregate_id}";

/// The status an instance answers a peer with when it does not write the partition.
pub const NOT_OWNER_STATUS: u16 = 421;

/// An aggregate's current version and state, as a peer sends it.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeerState<S> {
    pub version: u64,
    pub state: S,
}

/// The table of which instance writes which partition.
#[derive(Clone, Debug)]
pub struct OwnerDirectory {
    pool: PgPool,
}

impl OwnerDirectory {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Records that `owner` writes `partitions` of `group`.
    pub async fn announce(
        &self,
        group: &str,
        partitions: &[i32],
        owner: &str,
    ) -> Result<(), EventStoreError> {
        if partitions.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO event_store.writer_owners (writers_group, partition, owner) \
             SELECT $1, p, $3 FROM unnest($2::int[]) AS p \
             ON CONFLICT (writers_group, partition) DO UPDATE \
             SET owner = EXCLUDED.owner, announced_at = now() \
             WHERE writer_owners.owner <> EXCLUDED.owner",
        )
        .bind(group)
        .bind(partitions)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(|e| EventStoreError::Unavailable {
            operation: "announce partition owner",
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// The instance that last announced it writes `partition` of `group`.
    pub async fn owner(
        &self,
        group: &str,
        partition: i32,
    ) -> Result<Option<String>, EventStoreError> {
        sqlx::query_scalar(
            "SELECT owner FROM event_store.writer_owners \
             WHERE writers_group = $1 AND partition = $2",
        )
        .bind(group)
        .bind(partition)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| EventStoreError::Unavailable {
            operation: "look up partition owner",
            reason: e.to_string(),
        })
    }
}

/// This instance's way to its peers: the directory, its own address, the shared key.
#[derive(Clone, Debug)]
pub struct Peers {
    directory: OwnerDirectory,
    key: String,
    client: reqwest::Client,
    /// This instance's base URL as peers reach it; known once its listener is bound.
    me: Arc<OnceLock<String>>,
    /// Owners looked up, per (group, partition), until a call to them fails.
    cache: Arc<Mutex<HashMap<(String, i32), String>>>,
}

impl Peers {
    /// `key` authenticates instances to each other; every instance must have the same.
    pub fn new(directory: OwnerDirectory, key: String, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("a reqwest client with timeouts builds");
        Self {
            directory,
            key,
            client,
            me: Arc::default(),
            cache: Arc::default(),
        }
    }

    /// Sets this instance's base URL (`http://host:port`), once.
    pub fn set_me(&self, url: String) {
        let _ = self.me.set(url.trim_end_matches('/').to_owned());
    }

    pub fn me(&self) -> Option<&str> {
        self.me.get().map(String::as_str)
    }

    /// Announces that this instance writes `partitions` of `group`.
    pub async fn announce(&self, group: &str, partitions: &[i32]) -> Result<(), EventStoreError> {
        match self.me() {
            Some(me) => self.directory.announce(group, partitions, me).await,
            None => Ok(()),
        }
    }

    /// The instance writing `partition` of `group`, as far as the directory knows.
    pub(crate) async fn owner(
        &self,
        group: &str,
        partition: i32,
    ) -> Result<Option<String>, EventStoreError> {
        let key = (group.to_owned(), partition);
        if let Some(owner) = self.cache().get(&key) {
            return Ok(Some(owner.clone()));
        }
        let owner = self.directory.owner(group, partition).await?;
        if let Some(owner) = &owner {
            self.cache().insert(key, owner.clone());
        }
        Ok(owner)
    }

    /// Forgets the cached owner of `partition` of `group` (a call to it failed).
    pub(crate) fn forget(&self, group: &str, partition: i32) {
        self.cache().remove(&(group.to_owned(), partition));
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), String>> {
        lock(&self.cache)
    }

    /// Executes `command` at `owner`; its answer is the outcome as JSON.
    pub(crate) async fn execute(
        &self,
        owner: &str,
        service: &'static str,
        partition: i32,
        command: &CommandDocument,
    ) -> Result<serde_json::Value, EventStoreError> {
        let url = format!(
            "{owner}{}",
            PEER_COMMANDS_PATH.replace("{service}", service)
        );
        let request = self
            .client
            .post(url)
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(command.to_json());
        answer(request, service, partition).await
    }

    /// The version and state of `aggregate_id` at `owner`, as JSON.
    pub(crate) async fn state(
        &self,
        owner: &str,
        service: &'static str,
        partition: i32,
        aggregate_id: &str,
    ) -> Result<serde_json::Value, EventStoreError> {
        let path = PEER_STATE_PATH
            .replace("{service}", service)
            .replace("{aggregate_id}", &encode_segment(aggregate_id));
        let request = self
            .client
            .get(format!("{owner}{path}"))
            .bearer_auth(&self.key);
        answer(request, service, partition).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A peer's answer: the JSON body of a 200, or the error its status stands for.
async fn answer(
    request: reqwest::RequestBuilder,
    service: &'static str,
    partition: i32,
) -> Result<serde_json::Value, EventStoreError> {
    let unavailable = |reason: String| EventStoreError::Unavailable {
        operation: "forward to the partition's writer",
        reason,
    };
    let response = request.send().await.map_err(|e| {
        // Nobody listens there (the owner died, or moved away): as good as "not owner",
        // which makes the caller look again. Anything else may have reached the owner.
        if e.is_connect() {
            EventStoreError::NotOwner { service, partition }
        } else {
            unavailable(e.to_string())
        }
    })?;
    let status = response.status().as_u16();
    match status {
        200 => response
            .json()
            .await
            .map_err(|e| unavailable(e.to_string())),
        NOT_OWNER_STATUS => Err(EventStoreError::NotOwner { service, partition }),
        _ => {
            let body = response.text().await.unwrap_or_default();
            let reason = format!("the owner answered {status}: {}", body.trim());
            if status >= 500 {
                Err(unavailable(reason))
            } else {
                Err(EventStoreError::Refused {
                    operation: "forward to the partition's writer",
                    reason,
                })
            }
        }
    }
}

/// `id` as one URL path segment.
fn encode_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregate_id_is_one_path_segment() {
        assert_eq!(encode_segment("a-b_c.d~9"), "a-b_c.d~9");
        assert_eq!(encode_segment("a/b c%"), "a%2Fb%20c%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }
}
