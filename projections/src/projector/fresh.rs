//! Which aggregates of a batch the model cannot hold yet, known without asking Postgres:
//! while a projector reads partitions that nobody had applied anything of when it began
//! (a catch-up or a rebuild from offset zero), and nobody else has written since, every
//! aggregate it has not met yet is new. Their rows need no look-up before the fold and go
//! in through COPY instead of an upsert.
//!
//! Every aggregate lives in one partition (its events are keyed by it), so a partition's
//! claim tells whether anyone else wrote its aggregates: the claim finds the offset this
//! projector stored last, or else another instance (or an operator's reset) moved it, and
//! that partition is known no more. Keys are remembered as 64-bit hashes: two keys with
//! one hash only make a new aggregate look met, which costs a look-up, never a wrong row.
//!
//! A projector starts knowing only when its model holds nothing at all (no rows, versions,
//! parked records or checkpoints past zero: see `Projector::prepare`), so checkpoints
//! deleted under stored rows never pass for a fresh start. The knowledge ends once the
//! reader keeps up (two batches in a row less than full, or a poll with nothing: keeping
//! every key met would grow without end), or after [`KEYS_KEPT`] keys.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use event_store::reader::Span;
use event_store::subscription::TopicPartition;

/// At most this many keys are remembered (a hash set of `u64`: about 20 bytes each, so
/// about 40 MB at most, for the catch-up only).
pub const KEYS_KEPT: usize = 2_000_000;

/// A projector's knowledge of the aggregates it alone has written.
#[derive(Debug)]
pub struct Fresh {
    knowing: bool,
    /// Partitions written by this projector alone since offset zero: its next offset.
    alone: HashMap<TopicPartition, i64>,
    /// Partitions somebody else wrote: never known again.
    lost: HashSet<TopicPartition>,
    /// Hashes of the keys met in the partitions of `alone`.
    met: HashSet<u64>,
}

/// The partitions of one batch whose new aggregates are known.
#[derive(Debug, Default)]
pub struct Known(HashSet<TopicPartition>);

impl Default for Fresh {
    fn default() -> Self {
        Self {
            knowing: true,
            alone: HashMap::new(),
            lost: HashSet::new(),
            met: HashSet::new(),
        }
    }
}

impl Fresh {
    /// A projector that knows nothing (the live path for every aggregate).
    pub fn unknowing() -> Self {
        Self {
            knowing: false,
            ..Self::default()
        }
    }

    /// The batch's partitions this projector alone has written, as its claim found them
    /// (`span.before`); a partition somebody else moved is known no more.
    pub fn claim(&mut self, span: Span<'_>) -> Known {
        let mut known = HashSet::new();
        if !self.knowing {
            return Known(known);
        }
        for (partition, stored) in span.before {
            if self.lost.contains(partition) {
                continue;
            }
            let expected = self.alone.get(partition).copied().unwrap_or(0);
            if *stored == expected {
                known.insert(partition.clone());
            } else {
                self.alone.remove(partition);
                self.lost.insert(partition.clone());
            }
        }
        Known(known)
    }

    /// Whether the aggregate `key` of a record of `partition` is new: its partition is
    /// known and the key was not met before this batch.
    pub fn is_new(&self, known: &Known, partition: &TopicPartition, key: &str) -> bool {
        self.knowing && known.0.contains(partition) && !self.met.contains(&hash(key))
    }

    /// The batch was written (not yet committed: if it never is, the next claim finds the
    /// old offset and the partition is known no more): its keys are met, and its known
    /// partitions stand at `after`.
    pub fn wrote<'k>(
        &mut self,
        known: &Known,
        keys: impl Iterator<Item = &'k str>,
        after: &BTreeMap<TopicPartition, i64>,
    ) {
        if !self.knowing {
            return;
        }
        for (partition, next) in after {
            if known.0.contains(partition) {
                self.alone.insert(partition.clone(), *next);
            }
        }
        self.met.extend(keys.map(hash));
        if self.met.len() > KEYS_KEPT {
            self.forget();
        }
    }

    /// Stops knowing: every aggregate is looked up from now on.
    pub fn forget(&mut self) {
        *self = Self::unknowing();
    }

    pub fn is_knowing(&self) -> bool {
        self.knowing
    }
}

fn hash(key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> TopicPartition {
        ("t".into(), n)
    }

    fn span<'a>(
        before: &'a HashMap<TopicPartition, i64>,
        after: &'a BTreeMap<TopicPartition, i64>,
    ) -> Span<'a> {
        Span { before, after }
    }

    #[test]
    fn keys_of_partitions_read_alone_from_zero_are_new_until_met() {
        // Given a projector that claims partition 0 at offset 0
        let mut fresh = Fresh::default();
        let (before, after) = ([(p(0), 0)].into(), [(p(0), 10)].into());
        let known = fresh.claim(span(&before, &after));
        // Then every key of it is new
        assert!(fresh.is_new(&known, &p(0), "a"));
        // When it wrote key "a" up to offset 10
        fresh.wrote(&known, ["a"].into_iter(), &after);
        // Then, claiming the offset it stored, "a" is met and "b" still new
        let (before, after) = ([(p(0), 10)].into(), [(p(0), 20)].into());
        let known = fresh.claim(span(&before, &after));
        assert!(!fresh.is_new(&known, &p(0), "a"));
        assert!(fresh.is_new(&known, &p(0), "b"));
    }

    #[test]
    fn a_partition_somebody_else_moved_is_known_no_more() {
        let mut fresh = Fresh::default();
        let (before, after) = (
            [(p(0), 0), (p(1), 0)].into(),
            [(p(0), 10), (p(1), 5)].into(),
        );
        let known = fresh.claim(span(&before, &after));
        fresh.wrote(&known, std::iter::empty(), &after);
        // When another instance moved partition 1 on to 8 (and 0 is where this one left it)
        let (before, after) = (
            [(p(0), 10), (p(1), 8)].into(),
            [(p(0), 20), (p(1), 9)].into(),
        );
        let known = fresh.claim(span(&before, &after));
        // Then keys of partition 1 are looked up, now and later
        assert!(fresh.is_new(&known, &p(0), "x"));
        assert!(!fresh.is_new(&known, &p(1), "x"));
        fresh.wrote(&known, std::iter::empty(), &after);
        let (before, after) = ([(p(1), 9)].into(), [(p(1), 12)].into());
        let known = fresh.claim(span(&before, &after));
        assert!(!fresh.is_new(&known, &p(1), "y"));
    }

    #[test]
    fn a_partition_found_past_zero_or_a_batch_that_never_committed_is_not_known() {
        let mut fresh = Fresh::default();
        // A partition somebody had read before this projector began
        let (before, after) = ([(p(0), 7)].into(), [(p(0), 10)].into());
        let known = fresh.claim(span(&before, &after));
        assert!(!fresh.is_new(&known, &p(0), "a"));
        // A batch written, then rolled back: the retry's claim finds the old offset
        let (before, after) = ([(p(1), 0)].into(), [(p(1), 10)].into());
        let known = fresh.claim(span(&before, &after));
        fresh.wrote(&known, ["a"].into_iter(), &after);
        let before = [(p(1), 0)].into();
        let known = fresh.claim(span(&before, &after));
        assert!(!fresh.is_new(&known, &p(1), "b"));
    }

    #[test]
    fn once_forgotten_nothing_is_new() {
        let mut fresh = Fresh::default();
        fresh.forget();
        let (before, after) = ([(p(0), 0)].into(), [(p(0), 10)].into());
        let known = fresh.claim(span(&before, &after));
        assert!(!fresh.is_new(&known, &p(0), "a"));
        assert!(!fresh.is_knowing());
    }
}
