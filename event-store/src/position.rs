//! Positions in the log, and the token form the command API hands to callers so that a
//! later query can wait until the read side has passed it (read-your-writes).

use std::fmt;
use std::str::FromStr;

/// One record's place: the event topic of `service`, partition, offset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub service: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a position token (<service>:<partition>:<offset>)")]
pub struct InvalidPosition(pub String);

/// Token form: `orders:3:1042`. Opaque to callers; stable for the read side.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.service, self.partition, self.offset)
    }
}

impl FromStr for Position {
    type Err = InvalidPosition;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPosition(s.to_owned());
        let mut parts = s.split(':');
        let (Some(service), Some(partition), Some(offset), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let valid_service =
            !service.is_empty() && service.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
        let partition: i32 = partition.parse().map_err(|_| invalid())?;
        let offset: i64 = offset.parse().map_err(|_| invalid())?;
        if !valid_service || partition < 0 || offset < 0 {
            return Err(invalid());
        }
        Ok(Self {
            service: service.to_owned(),
            partition,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let p = Position {
            service: "orders".into(),
            partition: 3,
            offset: 1042,
        };
        assert_eq!(p.to_string(), "orders:3:1042");
        assert_eq!("orders:3:1042".parse::<Position>().unwrap(), p);
        for bad in [
            "",
            "orders",
            "orders:3",
            "orders:-1:5",
            "orders:1:x",
            "Or:1:1",
            "a:1:1:1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}
