//! What one batch does to a read model, decided without I/O: the reader rule per event
//! (apply the next version, drop a duplicate, park at a gap), parking behind a parked
//! aggregate, and the fold of what is applied. The runner loads the inputs and stores the
//! plan in one transaction.

use std::collections::{HashMap, HashSet};

use event_store::gate::Admission;
use schemas::EventDocument;

/// A record of the batch, in log order within its partition.
// Nearly every record is `Decoded`: boxing it would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Record {
    Decoded {
        document: EventDocument,
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// The envelope could not be read; the subscription already dead-lettered it.
    Undecodable {
        key: Option<String>,
        payload: Vec<u8>,
        error: String,
        topic: String,
        partition: i32,
        offset: i64,
    },
}

impl Record {
    pub fn position(&self) -> (&str, i32, i64) {
        match self {
            Self::Decoded {
                topic,
                partition,
                offset,
                ..
            }
            | Self::Undecodable {
                topic,
                partition,
                offset,
                ..
            } => (topic, *partition, *offset),
        }
    }
}

/// A record set aside instead of applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Parked {
    pub key: String,
    pub version: Option<u64>,
    pub event_type: Option<String>,
    pub payload: Vec<u8>,
    pub error: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

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
    let Loaded {
        versions: mut last,
        rows: mut state,
        mut parked,
    } = loaded;
    let mut plan = Plan {
        rows: HashMap::new(),
        versions: HashMap::new(),
        applied: Vec::new(),
        parked: Vec::new(),
        duplicates: 0,
        gaps: 0,
    };
    let mut changed = HashSet::new();
    for (index, record) in records.iter().enumerate() {
        let (topic, partition, offset) = record.position();
        let set_aside = |key: String, reason: ParkReason, error: String| {
            let (version, event_type, payload) = match record {
                Record::Decoded { document, .. } => (
                    Some(document.aggregateversion),
                    Some(document.event_type.clone()),
                    document.to_json(),
                ),
                Record::Undecodable { payload, .. } => (None, None, payload.clone()),
            };
            let parked = Parked {
                key,
                version,
                event_type,
                payload,
                error,
                topic: topic.to_owned(),
                partition,
                offset,
            };
            (index, reason, parked)
        };
        let document = match record {
            Record::Undecodable {
                key: Some(key),
                error,
                ..
            } => {
                plan.parked.push(set_aside(
                    key.clone(),
                    ParkReason::Undecodable,
                    error.clone(),
                ));
                parked.insert(key.clone());
                continue;
            }
            // No key: nothing to park behind; the dead letter is all there is.
            Record::Undecodable { key: None, .. } => continue,
            Record::Decoded { document, .. } => document,
        };
        let key = key(document);
        if parked.contains(&key) {
            let error = format!("parked behind an earlier record of {key}");
            plan.parked.push(set_aside(key, ParkReason::Behind, error));
            continue;
        }
        let current = last.get(&key).copied().unwrap_or(0);
        match Admission::of(current, document.aggregateversion) {
            Admission::Duplicate { .. } => plan.duplicates += 1,
            Admission::Gap { last } => {
                plan.gaps += 1;
                let error = format!(
                    "gap: version {} of {key} follows version {last}",
                    document.aggregateversion
                );
                plan.parked
                    .push(set_aside(key.clone(), ParkReason::Gap, error));
                parked.insert(key);
            }
            Admission::Next => match fold(state.get(&key), document) {
                Ok(row) => {
                    if let Some(row) = row {
                        state.insert(key.clone(), row);
                    }
                    last.insert(key.clone(), document.aggregateversion);
                    plan.versions.insert(key.clone(), document.aggregateversion);
                    changed.insert(key);
                    plan.applied.push(index);
                }
                Err(error) => {
                    plan.parked
                        .push(set_aside(key.clone(), ParkReason::Poison, error));
                    parked.insert(key);
                }
            },
        }
    }
    for key in changed {
        if let Some(row) = state.remove(&key) {
            plan.rows.insert(key, row);
        }
    }
    plan
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
