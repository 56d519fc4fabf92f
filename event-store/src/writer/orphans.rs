//! Whether the writers' group left partitions with nobody.
//!
//! tansu 0.6.0 keeps a crashed member in the group until its session expires, then evicts
//! it without making the survivors rebalance; an instance restarted before that (or every
//! member after a broker restart) may end up holding only some partitions, and the others
//! stay unserved: HTTP commands for them get 503 and the saga's commands on the command
//! topic wait, indefinitely. The projectors and the saga have the same rule for their
//! groups (`projections::projector::coverage`).
//!
//! A partition counts as demanded when, during one check interval, a caller here asked for
//! it and was told "not owner", or its command topic partition has records past the
//! group's committed offset that did not move since the previous check, or (with peers)
//! the instance the directory names for it failed the last call for it and nobody else
//! announced it since: that last one holds between calls, so a dead instance's partitions
//! are found even under a trickle of requests. A partition not
//! held here and demanded at every check for three session timeouts is held by nobody
//! alive, and so is every partition when this instance held none for that long: the
//! runtime then leaves the group and joins again, which makes the group rebalance. On
//! Apache Kafka the group rebalances by itself and nothing is flagged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Session timeouts a partition may be demanded, unheld, before the runtime rejoins.
const PATIENCE_SESSIONS: u32 = 3;

/// Watches one writers' group for partitions nobody holds.
#[derive(Debug)]
pub struct Orphans {
    patience: Duration,
    /// How often demand is judged.
    pub interval: Duration,
    /// Since when this instance has held no partition at all.
    empty_since: Option<Instant>,
    /// Unheld partitions demanded at every check, and since when.
    waiting: HashMap<i32, Instant>,
    /// The group's committed offsets on the command topic at the previous check.
    committed: BTreeMap<i32, Option<i64>>,
}

impl Orphans {
    pub fn new(session_timeout: Duration) -> Self {
        Self {
            patience: session_timeout * PATIENCE_SESSIONS,
            interval: session_timeout,
            empty_since: None,
            waiting: HashMap::new(),
            committed: BTreeMap::new(),
        }
    }

    /// Command topic partitions with records past a committed offset that has not moved
    /// since the previous call.
    pub fn commands_waiting(
        &mut self,
        ends: &BTreeMap<i32, i64>,
        committed: BTreeMap<i32, Option<i64>>,
    ) -> BTreeSet<i32> {
        let waiting = ends
            .iter()
            .filter(|(p, end)| {
                let now = committed.get(p).copied().flatten();
                **end > now.unwrap_or(0) && self.committed.get(p).copied().flatten() == now
            })
            .map(|(p, _)| *p)
            .collect();
        self.committed = committed;
        waiting
    }

    /// Whether to leave the group and join again, given the partitions `held` here and
    /// those `demanded` since the previous check.
    pub fn judge(&mut self, now: Instant, held: &BTreeSet<i32>, demanded: &BTreeSet<i32>) -> bool {
        if held.is_empty() {
            self.empty_since.get_or_insert(now);
        } else {
            self.empty_since = None;
        }
        self.waiting = demanded
            .difference(held)
            .map(|p| (*p, self.waiting.get(p).copied().unwrap_or(now)))
            .collect();
        let stuck = self
            .waiting
            .values()
            .any(|since| now - *since >= self.patience);
        let empty = self
            .empty_since
            .is_some_and(|since| now - since >= self.patience);
        stuck || empty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(1);

    fn set(partitions: &[i32]) -> BTreeSet<i32> {
        partitions.iter().copied().collect()
    }

    #[test]
    fn given_an_unheld_partition_demanded_at_every_check_when_patience_runs_out_then_rejoin() {
        let mut orphans = Orphans::new(SESSION);
        let start = Instant::now();
        let (held, demanded) = (set(&[0, 1]), set(&[2]));
        assert!(!orphans.judge(start, &held, &demanded));
        assert!(!orphans.judge(start + SESSION * 2, &held, &demanded));
        assert!(orphans.judge(start + SESSION * 3, &held, &demanded));
    }

    #[test]
    fn given_demand_that_pauses_when_judged_then_the_wait_starts_over() {
        let mut orphans = Orphans::new(SESSION);
        let start = Instant::now();
        let held = set(&[0]);
        assert!(!orphans.judge(start, &held, &set(&[1])));
        assert!(!orphans.judge(start + SESSION * 2, &held, &set(&[])));
        assert!(!orphans.judge(start + SESSION * 3, &held, &set(&[1])));
        assert!(!orphans.judge(start + SESSION * 5, &held, &set(&[1])));
        assert!(orphans.judge(start + SESSION * 6, &held, &set(&[1])));
    }

    #[test]
    fn given_demand_only_for_held_partitions_when_judged_then_stay() {
        let mut orphans = Orphans::new(SESSION);
        let start = Instant::now();
        for step in 0..10u32 {
            assert!(!orphans.judge(start + SESSION * step, &set(&[0, 1]), &set(&[0, 1])));
        }
    }

    #[test]
    fn given_no_partition_at_all_for_the_patience_when_judged_then_rejoin_even_without_demand() {
        let mut orphans = Orphans::new(SESSION);
        let start = Instant::now();
        assert!(!orphans.judge(start, &set(&[]), &set(&[])));
        assert!(orphans.judge(start + SESSION * 3, &set(&[]), &set(&[])));
    }

    #[test]
    fn given_commands_past_an_unmoving_committed_offset_when_checked_twice_then_they_wait() {
        let mut orphans = Orphans::new(SESSION);
        let ends: BTreeMap<i32, i64> = [(0, 10), (1, 10), (2, 0)].into();
        let committed: BTreeMap<i32, Option<i64>> = [(0, Some(10)), (1, Some(4)), (2, None)].into();
        // The first look has nothing to compare with.
        assert!(
            orphans
                .commands_waiting(&ends, committed.clone())
                .is_empty()
        );
        assert_eq!(orphans.commands_waiting(&ends, committed), set(&[1]));
        // A moving offset is someone's work.
        let moved: BTreeMap<i32, Option<i64>> = [(0, Some(10)), (1, Some(6)), (2, None)].into();
        assert!(orphans.commands_waiting(&ends, moved).is_empty());
    }
}
