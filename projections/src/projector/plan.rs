//! What one batch does to a read model, decided without I/O: the reader rule per event
//! (apply the next version, drop a duplicate, park at a gap), parking behind a parked
//! aggregate, and the fold of what is applied. The runner loads the inputs and stores the
//! plan in one transaction.

use std::collections::{HashMap, HashSet};

use event_store::gate::Admission;
use event_store::reader::{Parked, Record};
use schemas::EventDocument;

/// Why a record was parked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkReason {
    /// It decoded but could not be applied: it goes to the dead letters too.
    Poison,
    /// Its envelope could not be read (already in the dead letters).
    Undecodable,
    /// A version beyond the next: something before it is missing.
    Gap,
    /// Its aggregate was already parked.
    Behind,
}

/// The outcome of one batch.
#[derive(Debug)]
pub struct Plan<R> {
    /// Rows changed by the batch, final state.
    pub rows: HashMap<String, R>,
    /// Last applied version of every aggregate the batch moved.
    pub versions: HashMap<String, u64>,
    /// Indexes into the batch of the applied records, in batch order.
    pub applied: Vec<usize>,
    /// Records set aside, each with the index of its record and why.
    pub parked: Vec<(usize, ParkReason, Parked)>,
    pub duplicates: usize,
    pub gaps: usize,
}

impl<R> Plan<R> {
    /// Records that decoded but could not be applied (to dead-letter), with the error.
    pub fn poison(&self) -> impl Iterator<Item = (usize, &str)> {
        self.parked
            .iter()
            .filter(|(_, reason, _)| *reason == ParkReason::Poison)
            .map(|(index, _, parked)| (*index, parked.error.as_str()))
    }
}

/// What the plan starts from: the stored state of the batch's aggregates.
#[derive(Debug)]
pub struct Loaded<R> {
    pub versions: HashMap<String, u64>,
    pub rows: HashMap<String, R>,
    pub parked: HashSet<String>,
}

/// Plans `records` over `loaded` with the model's `key` and `fold`.
pub fn plan<R: Clone>(
    records: &[Record],
    loaded: Loaded<R>,
    key: impl Fn(&EventDocument) -> String,
    fold: impl Fn(Option<&R>, &EventDocument) -> Result<Option<R>, String>,
) -> Plan<R> {
    let mut planner = Planner {
        last: loaded.versions,
        state: loaded.rows,
        parked: loaded.parked,
        changed: HashSet::new(),
        plan: Plan {
            rows: HashMap::new(),
            versions: HashMap::new(),
            applied: Vec::new(),
            parked: Vec::new(),
            duplicates: 0,
            gaps: 0,
        },
    };
    for (index, record) in records.iter().enumerate() {
        match record {
            Record::Undecodable {
                key: Some(key),
                error,
                ..
            } => planner.park(
                (index, record),
                key.clone(),
                ParkReason::Undecodable,
                error.clone(),
            ),
            // No key: nothing to park behind; the dead letter is all there is.
            Record::Undecodable { key: None, .. } => {}
            Record::Decoded { document, .. } => {
                planner.take((index, record), document, key(document), &fold);
            }
        }
    }
    planner.finish()
}

/// A plan being made: the state of the batch's aggregates so far.
struct Planner<R> {
    last: HashMap<String, u64>,
    state: HashMap<String, R>,
    parked: HashSet<String>,
    changed: HashSet<String>,
    plan: Plan<R>,
}

impl<R> Planner<R> {
    /// The reader rule for one decoded record of aggregate `key`: behind a parked record
    /// it parks, a duplicate is counted, a gap parks, the next version is folded.
    fn take(
        &mut self,
        at: (usize, &Record),
        document: &EventDocument,
        key: String,
        fold: impl Fn(Option<&R>, &EventDocument) -> Result<Option<R>, String>,
    ) {
        if self.parked.contains(&key) {
            let error = format!("parked behind an earlier record of {key}");
            self.park(at, key, ParkReason::Behind, error);
            return;
        }
        let current = self.last.get(&key).copied().unwrap_or(0);
        match Admission::of(current, document.aggregateversion) {
            Admission::Duplicate { .. } => self.plan.duplicates += 1,
            Admission::Gap { last } => {
                self.plan.gaps += 1;
                let error = format!(
                    "gap: version {} of {key} follows version {last}",
                    document.aggregateversion
                );
                self.park(at, key, ParkReason::Gap, error);
            }
            Admission::Next => match fold(self.state.get(&key), document) {
                Ok(row) => {
                    if let Some(row) = row {
                        self.state.insert(key.clone(), row);
                    }
                    self.last.insert(key.clone(), document.aggregateversion);
                    self.plan
                        .versions
                        .insert(key.clone(), document.aggregateversion);
                    self.changed.insert(key);
                    self.plan.applied.push(at.0);
                }
                Err(error) => self.park(at, key, ParkReason::Poison, error),
            },
        }
    }

    /// Sets the record at `index` aside, and parks its aggregate behind it.
    fn park(
        &mut self,
        (index, record): (usize, &Record),
        key: String,
        reason: ParkReason,
        error: String,
    ) {
        let (topic, partition, offset) = record.position();
        let (version, event_type, payload) = match record {
            Record::Decoded { document, .. } => (
                Some(document.aggregateversion),
                Some(document.event_type.clone()),
                document.to_json(),
            ),
            Record::Undecodable { payload, .. } => (None, None, payload.clone()),
        };
        let parked = Parked {
            key: key.clone(),
            version,
            event_type,
            payload,
            error,
            topic: topic.to_owned(),
            partition,
            offset,
        };
        self.plan.parked.push((index, reason, parked));
        self.parked.insert(key);
    }

    /// The plan, with the final row of every aggregate the batch changed.
    fn finish(mut self) -> Plan<R> {
        for key in self.changed {
            if let Some(row) = self.state.remove(&key) {
                self.plan.rows.insert(key, row);
            }
        }
        self.plan
    }
}

#[cfg(test)]
mod tests {
    use schemas::orders::{OrderEvent, OrderRejected};
    use schemas::{EventMeta, OrderId};

    use super::*;

    /// A model whose row counts the events applied and refuses a reason "poison".
    fn count(row: Option<&u64>, document: &EventDocument) -> Result<Option<u64>, String> {
        if document.data["reason"] == "poison" {
            return Err("cannot apply poison".into());
        }
        Ok(Some(row.copied().unwrap_or(0) + 1))
    }

    fn event(order: OrderId, version: u64, reason: &str, offset: i64) -> Record {
        let event = schemas::Event {
            meta: EventMeta::new(version),
            payload: OrderEvent::from(OrderRejected {
                order_id: order,
                reason: reason.into(),
            }),
        };
        Record::Decoded {
            document: event.to_document(),
            topic: "orders.events".into(),
            partition: 0,
            offset,
        }
    }

    fn given(versions: &[(OrderId, u64)], parked: &[OrderId]) -> Loaded<u64> {
        Loaded {
            versions: versions.iter().map(|(o, v)| (o.to_string(), *v)).collect(),
            rows: versions.iter().map(|(o, v)| (o.to_string(), *v)).collect(),
            parked: parked.iter().map(ToString::to_string).collect(),
        }
    }

    fn when(records: &[Record], loaded: Loaded<u64>) -> Plan<u64> {
        plan(records, loaded, |d| d.subject.clone(), count)
    }

    #[test]
    fn next_versions_apply_and_fold_in_order() {
        let a = OrderId::new();
        let records = [event(a, 3, "x", 10), event(a, 4, "x", 11)];
        let plan = when(&records, given(&[(a, 2)], &[]));
        assert_eq!(plan.applied, [0, 1]);
        assert_eq!(plan.rows[&a.to_string()], 4);
        assert_eq!(plan.versions[&a.to_string()], 4);
        assert!(plan.parked.is_empty());
    }

    #[test]
    fn a_duplicate_changes_nothing_and_is_counted() {
        let a = OrderId::new();
        let plan = when(&[event(a, 2, "x", 10)], given(&[(a, 2)], &[]));
        assert!(plan.applied.is_empty() && plan.rows.is_empty() && plan.versions.is_empty());
        assert_eq!((plan.duplicates, plan.gaps), (1, 0));
    }

    #[test]
    fn a_gap_parks_the_aggregate_and_what_follows_waits_behind_it() {
        let (a, b) = (OrderId::new(), OrderId::new());
        let records = [
            event(a, 5, "x", 10),
            event(b, 1, "x", 11),
            event(a, 3, "x", 12),
        ];
        let plan = when(&records, given(&[(a, 2)], &[]));
        assert_eq!(plan.gaps, 1);
        assert_eq!(plan.applied, [1]);
        let reasons: Vec<_> = plan.parked.iter().map(|(i, r, _)| (*i, *r)).collect();
        assert_eq!(reasons, [(0, ParkReason::Gap), (2, ParkReason::Behind)]);
        assert_eq!(plan.parked[0].2.version, Some(5));
        assert!(plan.parked[0].2.error.contains("follows version 2"));
        assert_eq!(plan.poison().count(), 0);
    }

    #[test]
    fn a_poison_event_parks_only_its_aggregate() {
        let (a, b) = (OrderId::new(), OrderId::new());
        let records = [
            event(a, 1, "poison", 10),
            event(b, 1, "x", 11),
            event(a, 2, "x", 12),
            event(b, 2, "x", 13),
        ];
        let plan = when(&records, given(&[], &[]));
        assert_eq!(plan.applied, [1, 3]);
        assert_eq!(plan.rows.get(&a.to_string()), None);
        assert_eq!(plan.rows[&b.to_string()], 2);
        let poison: Vec<_> = plan.poison().collect();
        assert_eq!(poison, [(0, "cannot apply poison")]);
        assert_eq!(plan.parked[1].1, ParkReason::Behind);
    }

    #[test]
    fn an_already_parked_aggregate_takes_nothing_and_undecodable_records_park_by_key() {
        let (a, b) = (OrderId::new(), OrderId::new());
        let records = [
            event(a, 3, "x", 10),
            Record::Undecodable {
                key: Some(b.to_string()),
                payload: b"{nope".to_vec(),
                error: "malformed".into(),
                topic: "orders.events".into(),
                partition: 0,
                offset: 11,
            },
            event(b, 1, "x", 12),
        ];
        let plan = when(&records, given(&[(a, 2)], &[a]));
        assert!(plan.applied.is_empty());
        let reasons: Vec<_> = plan.parked.iter().map(|(_, r, _)| *r).collect();
        assert_eq!(
            reasons,
            [
                ParkReason::Behind,
                ParkReason::Undecodable,
                ParkReason::Behind
            ]
        );
        assert_eq!(plan.parked[1].2.payload, b"{nope");
    }
}
