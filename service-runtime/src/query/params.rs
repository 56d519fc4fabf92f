//! Query parameters, read one by one with every error collected, so that a 422 lists all
//! invalid parameters; and the opaque keyset cursor of list pages.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use event_store::position::Position;
use uuid::Uuid;

use super::error::{ParamError, QueryError};

/// Default and largest page size.
pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug)]
pub struct Params {
    values: HashMap<String, String>,
    errors: Vec<ParamError>,
}

impl Params {
    /// The request's parameters; any not in `allowed` (besides `min_position`) is an error.
    pub fn new(pairs: Vec<(String, String)>, allowed: &[&str]) -> Self {
        let mut params = Self {
            values: HashMap::new(),
            errors: Vec::new(),
        };
        for (name, value) in pairs {
            if name != "min_position" && !allowed.contains(&name.as_str()) {
                params.fail(&name, "is not a parameter of this query");
            } else if params.values.insert(name.clone(), value).is_some() {
                params.fail(&name, "is given more than once");
            }
        }
        params
    }

    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(ParamError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn parsed<T>(
        &mut self,
        name: &str,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let value = self.values.get(name)?.clone();
        let parsed = parse(value.trim());
        if parsed.is_none() {
            self.fail(name, format!("must be {what}"));
        }
        parsed
    }

    pub fn uuid(&mut self, name: &str) -> Option<Uuid> {
        self.parsed(name, "a UUID", |v| v.parse().ok())
    }

    pub fn required_uuid(&mut self, name: &str) -> Option<Uuid> {
        if !self.values.contains_key(name) {
            self.fail(name, "is required");
        }
        self.uuid(name)
    }

    pub fn one_of(&mut self, name: &str, allowed: &[&str]) -> Option<String> {
        let what = format!("one of {}", allowed.join(", "));
        self.parsed(name, &what, |v| allowed.contains(&v).then(|| v.to_owned()))
    }

    /// Text of 1 to 200 characters, none of them a control character.
    pub fn text(&mut self, name: &str) -> Option<String> {
        self.parsed(name, "1 to 200 characters, no control characters", |v| {
            is_plain_text(v).then(|| v.to_owned())
        })
    }

    pub fn version(&mut self, name: &str) -> Option<u64> {
        self.parsed(name, "a version of 1 or more", |v| {
            v.parse::<u64>().ok().filter(|n| *n >= 1)
        })
    }

    pub fn time(&mut self, name: &str) -> Option<DateTime<Utc>> {
        self.parsed(name, "an RFC 3339 time such as 2026-01-31T12:00:00Z", |v| {
            DateTime::parse_from_rfc3339(v)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
    }

    pub fn limit(&mut self) -> i64 {
        let what = format!("a whole number from 1 to {MAX_LIMIT}");
        self.parsed("limit", &what, |v| {
            v.parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
        })
        .unwrap_or(DEFAULT_LIMIT)
    }

    pub fn cursor(&mut self) -> Option<Cursor> {
        self.parsed("cursor", "a cursor from a previous page", Cursor::decode)
    }

    pub fn min_position(&mut self) -> Option<Position> {
        self.parsed(
            "min_position",
            "a position token from a command answer (<service>:<partition>:<offset>)",
            |v| {
                v.parse::<Position>()
                    .ok()
                    .filter(|p| schemas::catalog::SERVICES.contains(&p.service.as_str()))
            },
        )
    }

    /// Every error so far, as one 422.
    pub fn finish(self) -> Result<(), QueryError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(QueryError::Invalid(self.errors))
        }
    }
}

/// 1 to 200 characters, none of them a control character (Postgres refuses NUL).
pub fn is_plain_text(value: &str) -> bool {
    (1..=200).contains(&value.chars().count()) && !value.chars().any(char::is_control)
}

/// A path id, or a 422 naming it.
pub fn path_id(id: &str) -> Result<Uuid, QueryError> {
    id.parse()
        .map_err(|_| QueryError::invalid("id", "must be a UUID"))
}

/// Where a page ended: the sort key of its last item (time, then id, newest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub time: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to callers: hex of `<microseconds>:<id>`.
    pub fn encode(&self) -> String {
        hex::encode(format!("{}:{}", self.time.timestamp_micros(), self.id))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let raw = String::from_utf8(hex::decode(text).ok()?).ok()?;
        let (micros, id) = raw.split_once(':')?;
        Some(Self {
            time: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: id.parse().ok()?,
        })
    }
}

/// A page of a list: `{"items": [...], "next_cursor": ... | null}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `cursor` of the next page; null on the last one.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// `rows` holds up to `limit + 1` items; the extra one says there is a next page.
    pub fn of(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> Cursor) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = more
            .then(|| rows.last().map(|last| key(last).encode()))
            .flatten();
        Self {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)], allowed: &[&str]) -> Params {
        let pairs = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Params::new(pairs, allowed)
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let cursor = Cursor {
            time: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "zz", "00", &hex::encode("12:not-a-uuid")] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_invalid_parameter_is_listed() {
        let mut p = params(
            &[
                ("limit", "500"),
                ("status", "lost"),
                ("user_id", "x"),
                ("colour", "red"),
            ],
            &["limit", "status", "user_id"],
        );
        assert_eq!(p.limit(), DEFAULT_LIMIT);
        assert_eq!(p.one_of("status", &["pending", "confirmed"]), None);
        assert_eq!(p.uuid("user_id"), None);
        let Err(QueryError::Invalid(errors)) = p.finish() else {
            panic!("invalid parameters must fail");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["colour", "limit", "status", "user_id"]);
    }

    #[test]
    fn min_position_must_name_a_service_of_the_shop() {
        let mut p = params(&[("min_position", "orders:3:17")], &[]);
        assert_eq!(p.min_position().map(|p| p.offset), Some(17));
        assert!(p.finish().is_ok());
        let mut p = params(&[("min_position", "nothing:3:17")], &[]);
        assert_eq!(p.min_position(), None);
        assert!(p.finish().is_err());
    }
}
