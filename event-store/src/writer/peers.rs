//! Commands for partitions another instance writes: where that instance is, and how a
//! command reaches it.
//!
//! The consumer group of the command topic stays the lease (see [`super::host`]). When an
//! instance starts serving a partition it announces itself in Postgres
//! (`event_store.writer_owners`), and again once per session timeout, so the table heals
//! after a Postgres restart. An instance asked for an aggregate of a partition it does not
//! write looks the owner up (cached until it fails) and hands it the command through a
//! [`Forward`] (the command API's is HTTP, with the peers' shared key), returning its
//! outcome: one hop, never more, because the receiving side only executes locally. A
//! stale entry costs a retry: an instance that does not write the partition answers "not
//! owner", a dead one does not answer, and the caller looks again until its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use schemas::CommandDocument;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::error::EventStoreError;

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

/// A peer's answer on its way: the outcome, or a [`PeerState`], as JSON.
pub type Answer<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<serde_json::Value, EventStoreError>> + Send + 'a>>;

/// How a command, or the read of an aggregate's state, reaches the instance `owner` (its
/// base URL as announced) that writes its partition. Answers are the outcome, or a
/// [`PeerState`], as JSON; [`EventStoreError::NotOwner`] when that instance does not write
/// the partition or cannot be reached, which makes the caller look again.
pub trait Forward: std::fmt::Debug + Send + Sync {
    fn execute<'a>(
        &'a self,
        owner: &'a str,
        service: &'static str,
        partition: i32,
        command: &'a CommandDocument,
    ) -> Answer<'a>;

    fn state<'a>(
        &'a self,
        owner: &'a str,
        service: &'static str,
        partition: i32,
        aggregate_id: &'a str,
    ) -> Answer<'a>;
}

/// This instance's way to its peers: the directory, its own address, the way there.
#[derive(Clone, Debug)]
pub struct Peers {
    directory: OwnerDirectory,
    forward: Arc<dyn Forward>,
    /// This instance's base URL as peers reach it; known once its listener is bound.
    me: Arc<OnceLock<String>>,
    /// Owners looked up, per (group, partition), until a call to them fails.
    cache: Arc<Mutex<HashMap<(String, i32), String>>>,
}

impl Peers {
    pub fn new(directory: OwnerDirectory, forward: Arc<dyn Forward>) -> Self {
        Self {
            directory,
            forward,
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
        self.forward
            .execute(owner, service, partition, command)
            .await
    }

    /// The version and state of `aggregate_id` at `owner`, as JSON.
    pub(crate) async fn state(
        &self,
        owner: &str,
        service: &'static str,
        partition: i32,
        aggregate_id: &str,
    ) -> Result<serde_json::Value, EventStoreError> {
        self.forward
            .state(owner, service, partition, aggregate_id)
            .await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
