//! Whether a reader's consumer group still covers every partition of its topics.
//!
//! tansu 0.6.0 evicts a member that stopped heartbeating (a crashed instance) but does not
//! make the others rebalance, so the partitions it held stay with nobody: a restarted
//! instance may get none of them, or only some. Asking the broker who holds what
//! (DescribeGroups) closes tansu's connection, so the answer comes from what readers keep
//! anyway: a partition this instance does not hold, with records past the group's stored
//! checkpoint, whose checkpoint has not moved for a while, is held by nobody alive. The
//! instance then leaves its group and joins again, which makes the group rebalance.
//! With several live instances a partition's owner moves its checkpoint, so nothing is
//! flagged; on Apache Kafka the group rebalances by itself and nothing is flagged either.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use event_store::KafkaSettings;
use event_store::scan;
use event_store::subscription::TopicPartition;
use sqlx::PgPool;

use super::{Schema, bookkeeping};

/// Session timeouts a partition may wait, unheld and unmoved, before the reader rejoins.
const PATIENCE_SESSIONS: u32 = 3;

/// Watches one reader's group for partitions nobody holds.
#[derive(Debug)]
pub struct Coverage {
    patience: Duration,
    /// How often the checkpoints and the partitions' ends are read.
    interval: Duration,
    checked: Option<Instant>,
    /// Since when this instance has held no partition at all.
    empty_since: Option<Instant>,
    /// Unheld partitions with records waiting: the checkpoint seen, and since when.
    waiting: HashMap<TopicPartition, (i64, Instant)>,
}

impl Coverage {
    pub fn new(session_timeout: Duration) -> Self {
        Self {
            patience: session_timeout * PATIENCE_SESSIONS,
            interval: session_timeout,
            checked: None,
            empty_since: None,
            waiting: HashMap::new(),
        }
    }

    /// Whether the reader should leave its group and join again. Reads the group's
    /// checkpoints in `schema` and the ends of `topics` at most once per session timeout.
    pub async fn rejoin_needed(
        &mut self,
        assignment: &[TopicPartition],
        (pool, schema): (&PgPool, &Schema),
        kafka: &KafkaSettings,
        topics: &[String],
    ) -> bool {
        let now = Instant::now();
        if self.checked.is_some_and(|at| now - at < self.interval) {
            return false;
        }
        self.checked = Some(now);
        let mut ends = BTreeMap::new();
        for topic in topics {
            match scan::topic_ends(kafka, topic).await {
                Ok(found) => ends.extend(found.into_iter().map(|(p, e)| ((topic.clone(), p), e))),
                Err(_) => return false, // The broker is the problem; rejoining will not help.
            }
        }
        let Ok(mut conn) = pool.acquire().await else {
            return false;
        };
        let Ok(stored) = bookkeeping::checkpoints(&mut conn, schema).await else {
            return false;
        };
        let stored = bookkeeping::offsets(&stored).into_iter().collect();
        let rejoin = self.judge(now, assignment, &stored, &ends);
        let waiting: Vec<String> = self
            .waiting
            .iter()
            .map(|((topic, partition), (at, since))| {
                let seconds = (now - *since).as_secs();
                format!("{topic}[{partition}] at {at} for {seconds} s")
            })
            .collect();
        tracing::debug!(%schema, held = assignment.len(), ?waiting, rejoin, "coverage judged");
        rejoin
    }

    /// The decision, from what was read at `now`.
    pub fn judge(
        &mut self,
        now: Instant,
        assignment: &[TopicPartition],
        stored: &BTreeMap<TopicPartition, i64>,
        ends: &BTreeMap<TopicPartition, i64>,
    ) -> bool {
        if assignment.is_empty() {
            self.empty_since.get_or_insert(now);
        } else {
            self.empty_since = None;
        }
        let held: HashSet<&TopicPartition> = assignment.iter().collect();
        let mut waiting = HashMap::new();
        for (key, end) in ends {
            let next = stored.get(key).copied().unwrap_or(0);
            if held.contains(key) || *end <= next {
                continue;
            }
            let since = match self.waiting.get(key) {
                Some((seen, since)) if *seen == next => *since,
                _ => now,
            };
            waiting.insert(key.clone(), (next, since));
        }
        self.waiting = waiting;
        let stuck = self
            .waiting
            .values()
            .any(|(_, since)| now - *since >= self.patience);
        let empty = self
            .empty_since
            .is_some_and(|since| now - since >= self.patience);
        stuck || empty
    }

    /// After a rejoin: start watching afresh.
    pub fn reset(&mut self) {
        *self = Self {
            patience: self.patience,
            interval: self.interval,
            checked: None,
            empty_since: None,
            waiting: HashMap::new(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("orders.events".to_owned(), p)
    }

    fn at(entries: &[(i32, i64)]) -> BTreeMap<TopicPartition, i64> {
        entries.iter().map(|(p, o)| (tp(*p), *o)).collect()
    }

    const SESSION: Duration = Duration::from_secs(1);

    #[test]
    fn given_an_unheld_partition_whose_checkpoint_does_not_move_when_patience_runs_out_then_rejoin()
    {
        let mut coverage = Coverage::new(SESSION);
        let start = Instant::now();
        let (held, ends) = ([tp(0)], at(&[(0, 10), (1, 10)]));
        let stored = at(&[(0, 10), (1, 4)]);
        assert!(!coverage.judge(start, &held, &stored, &ends));
        assert!(!coverage.judge(start + SESSION * 2, &held, &stored, &ends));
        assert!(coverage.judge(start + SESSION * 3, &held, &stored, &ends));
    }

    #[test]
    fn given_an_unheld_partition_that_another_instance_moves_when_judged_then_stay() {
        let mut coverage = Coverage::new(SESSION);
        let start = Instant::now();
        let held = [tp(0)];
        for step in 0..10u32 {
            let stored = at(&[(0, 10), (1, i64::from(step))]);
            let now = start + SESSION * step;
            assert!(!coverage.judge(now, &held, &stored, &at(&[(0, 10), (1, 100)])));
        }
    }

    #[test]
    fn given_unheld_partitions_with_nothing_waiting_when_judged_then_stay() {
        let mut coverage = Coverage::new(SESSION);
        let start = Instant::now();
        let stored = at(&[(1, 7)]);
        for step in 0..10u32 {
            let now = start + SESSION * step;
            assert!(!coverage.judge(now, &[tp(0)], &stored, &at(&[(0, 3), (1, 7), (2, 0)])));
        }
    }

    #[test]
    fn given_no_partition_at_all_for_the_patience_when_judged_then_rejoin_even_if_idle() {
        let mut coverage = Coverage::new(SESSION);
        let start = Instant::now();
        let ends = at(&[(0, 0)]);
        assert!(!coverage.judge(start, &[], &BTreeMap::new(), &ends));
        assert!(coverage.judge(start + SESSION * 3, &[], &BTreeMap::new(), &ends));
        coverage.reset();
        assert!(!coverage.judge(start + SESSION * 4, &[], &BTreeMap::new(), &ends));
    }
}
