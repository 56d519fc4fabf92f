//! W3C Trace Context (`traceparent`), carried on every command and event so that a trace
//! started at the HTTP edge continues through the log, the saga and back.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A version-00 `traceparent`: `00-<trace id: 32 hex>-<parent id: 16 hex>-<flags: 2 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")]
pub struct InvalidTraceParent(pub String);

impl TraceParent {
    /// Starts a new trace, sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: Uuid::new_v4().as_u128(),
            parent_id: random_span_id(),
            flags: 0x01,
        }
    }

    /// The same trace, with a new span as parent: what a hop (a command becoming events,
    /// an event becoming a saga command) passes on.
    pub fn child(&self) -> Self {
        Self {
            parent_id: random_span_id(),
            ..*self
        }
    }

    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// Trace id, parent (span) id and flags, as numbers.
    pub fn parts(&self) -> (u128, u64, u8) {
        (self.trace_id, self.parent_id, self.flags)
    }

    /// From [`Self::parts`]; an all-zero id (invalid in W3C Trace Context) starts a new
    /// trace instead.
    pub fn from_parts(trace_id: u128, parent_id: u64, flags: u8) -> Self {
        if trace_id == 0 || parent_id == 0 {
            return Self::new_root();
        }
        Self {
            trace_id,
            parent_id,
            flags,
        }
    }
}

fn random_span_id() -> u64 {
    // A span id must not be all zeroes; the low half of a v4 UUID is random enough.
    (Uuid::new_v4().as_u128() as u64).max(1)
}

impl FromStr for TraceParent {
    type Err = InvalidTraceParent;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidTraceParent(s.to_owned());
        let parts: Vec<&str> = s.split('-').collect();
        let [version, trace, parent, flags] = parts.as_slice() else {
            return Err(invalid());
        };
        let hex = |p: &str, len: usize| {
            (p.len() == len && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .then_some(())
                .ok_or_else(invalid)
        };
        hex(version, 2)?;
        hex(trace, 32)?;
        hex(parent, 16)?;
        hex(flags, 2)?;
        let parsed = Self {
            trace_id: u128::from_str_radix(trace, 16).map_err(|_| invalid())?,
            parent_id: u64::from_str_radix(parent, 16).map_err(|_| invalid())?,
            flags: u8::from_str_radix(flags, 16).map_err(|_| invalid())?,
        };
        // Version ff is forbidden, and all-zero ids are invalid by the spec.
        if *version == "ff" || parsed.trace_id == 0 || parsed.parent_id == 0 {
            return Err(invalid());
        }
        Ok(parsed)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cow::<'de, str>::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for TraceParent {
    fn schema_name() -> Cow<'static, str> {
        "TraceParent".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "W3C Trace Context traceparent",
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
        })
    }
}

#[cfg(test)]
impl proptest::arbitrary::Arbitrary for TraceParent {
    type Parameters = ();
    type Strategy = proptest::strategy::BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        use proptest::prelude::*;
        (1..=u128::MAX, 1..=u64::MAX, any::<u8>())
            .prop_map(|(trace_id, parent_id, flags)| Self {
                trace_id,
                parent_id,
                flags,
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example_and_prints_it_back() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp: TraceParent = text.parse().unwrap();
        assert_eq!(tp.to_string(), text);
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = TraceParent::new_root();
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.to_string(), root.to_string());
    }
}
