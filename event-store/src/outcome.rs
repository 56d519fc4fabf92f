//! The outcome of a command, as its caller gets it. Outcomes are remembered per aggregate
//! (and recorded in the log when they append nothing), so the same command id always gets
//! the same outcome back.

use serde::{Deserialize, Serialize};

use crate::position::Position;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome<R> {
    /// The events are durable in Kafka; `position` is that of the last one (none when
    /// the command caused no event).
    Accepted {
        aggregate_id: String,
        version: u64,
        #[serde(with = "position_token")]
        position: Option<Position>,
    },
    /// A business rule refused the command; nothing was appended.
    Rejected {
        aggregate_id: String,
        version: u64,
        reason: R,
    },
    /// The command expected another version; nothing was appended.
    Conflict {
        aggregate_id: String,
        expected: u64,
        current: u64,
    },
}

impl<R> Outcome<R> {
    pub fn aggregate_id(&self) -> &str {
        match self {
            Self::Accepted { aggregate_id, .. }
            | Self::Rejected { aggregate_id, .. }
            | Self::Conflict { aggregate_id, .. } => aggregate_id,
        }
    }

    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted { .. })
    }
}

mod position_token {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::position::Position;

    pub fn serialize<S: Serializer>(p: &Option<Position>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.collect_str(p),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Position>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| t.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}
