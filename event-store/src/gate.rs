//! The reader rule that makes the log safe without transactions: of all records claiming
//! version `v` of an aggregate, the first in log order wins, and a record is accepted only
//! when it is the next contiguous version. Every reader applies it: the writer rebuilding
//! its state, the projectors and the saga, so they all see the same history even if a
//! fenced-off writer managed to append.

use std::collections::HashMap;

/// What a reader does with a record of `(aggregate, version)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The next version: apply it.
    Next,
    /// A version already applied (a re-delivery, or a losing writer's record): skip it.
    Duplicate { last: u64 },
    /// A version beyond the next: something before it is missing; do not apply.
    Gap { last: u64 },
}

impl Admission {
    /// Decides for a record of `version` when the last applied version is `last`
    /// (0 when none).
    pub fn of(last: u64, version: u64) -> Self {
        match version {
            v if v == last + 1 => Self::Next,
            v if v <= last => Self::Duplicate { last },
            _ => Self::Gap { last },
        }
    }

    /// The label under which a dropped record is counted.
    pub fn drop_reason(&self) -> Option<&'static str> {
        match self {
            Self::Next => None,
            Self::Duplicate { .. } => Some("duplicate"),
            Self::Gap { .. } => Some("gap"),
        }
    }
}

/// The rule over an in-memory map of last versions, for readers that keep them in memory.
#[derive(Clone, Debug, Default)]
pub struct VersionGate {
    last: HashMap<String, u64>,
}

impl VersionGate {
    /// Admits `(aggregate, version)`; a `Next` record is recorded as applied.
    pub fn admit(&mut self, aggregate: &str, version: u64) -> Admission {
        let last = self.last.get(aggregate).copied().unwrap_or(0);
        let admission = Admission::of(last, version);
        if admission == Admission::Next {
            self.last.insert(aggregate.to_owned(), version);
        }
        admission
    }

    pub fn last(&self, aggregate: &str) -> u64 {
        self.last.get(aggregate).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_in_log_order_wins_and_only_the_next_version_passes() {
        let mut gate = VersionGate::default();
        assert_eq!(gate.admit("a", 1), Admission::Next);
        // A second writer's record for the same version: dropped.
        assert_eq!(gate.admit("a", 1), Admission::Duplicate { last: 1 });
        assert_eq!(gate.admit("a", 3), Admission::Gap { last: 1 });
        assert_eq!(gate.admit("a", 2), Admission::Next);
        assert_eq!(gate.admit("b", 2), Admission::Gap { last: 0 });
        assert_eq!(gate.last("a"), 2);
        assert_eq!(Admission::of(2, 2).drop_reason(), Some("duplicate"));
    }
}
