//! An ordered row checksum of a read model's schema: what a rebuild compares before it
//! swaps, and what the determinism check compares between two rebuilds.
//!
//! Every table of the schema counts (the model's rows, the reader rule's `versions`, the
//! `parked` records) except where the model is in the log (`checkpoints`, compared
//! separately as positions) and the migration history. Each row is hashed as Postgres
//! prints it, in primary-key order, so two schemas with equal checksums hold equal rows.
//! Columns that record when the rebuild ran (`parked.parked_at`) are left out.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection};

use crate::projector::Schema;

/// Tables that say where a model is, or how it was built, rather than what it holds.
const NOT_CONTENT: [&str; 3] = ["checkpoints", "_sqlx_migrations", "_bookkeeping_migrations"];

/// Columns that record when something happened to this copy, not in the log.
const WALL_CLOCK: [(&str, &str); 1] = [("parked", "parked_at")];

/// One table's share of a checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableSum {
    pub rows: i64,
    /// md5 over the md5 of every row, in primary-key order.
    pub md5: String,
}

/// The checksum of a schema: per table, and one digest over all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Checksum {
    pub digest: String,
    pub tables: BTreeMap<String, TableSum>,
}

impl Checksum {
    /// The tables whose rows differ between `self` and `other`.
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let names: std::collections::BTreeSet<&String> =
            self.tables.keys().chain(other.tables.keys()).collect();
        names
            .into_iter()
            .filter(|name| self.tables.get(*name) != other.tables.get(*name))
            .cloned()
            .collect()
    }
}

/// Computes the checksum of `schema` on `conn` (inside the caller's transaction, when
/// it holds one, so that it sees what the transaction sees).
pub async fn of(conn: &mut PgConnection, schema: &Schema) -> Result<Checksum, sqlx::Error> {
    // timestamptz prints in the session's time zone: fix it, so that two sessions agree.
    sqlx::query("SELECT set_config('TimeZone', 'UTC', false)")
        .execute(&mut *conn)
        .await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND NOT (table_name = ANY($2))
         ORDER BY table_name",
    )
    .bind(schema.name())
    .bind(NOT_CONTENT.as_slice())
    .fetch_all(&mut *conn)
    .await?;
    let mut sums = BTreeMap::new();
    for table in tables {
        let sum = table_sum(conn, schema, &table).await?;
        sums.insert(table, sum);
    }
    let listing: String = sums
        .iter()
        .map(|(name, sum)| format!("{name} {} {}\n", sum.rows, sum.md5))
        .collect();
    let digest: String = sqlx::query_scalar("SELECT md5($1)")
        .bind(listing)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Checksum {
        digest,
        tables: sums,
    })
}

async fn table_sum(
    conn: &mut PgConnection,
    schema: &Schema,
    table: &str,
) -> Result<TableSum, sqlx::Error> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
    )
    .bind(schema.name())
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let columns: Vec<String> = columns
        .into_iter()
        .filter(|c| !WALL_CLOCK.contains(&(table, c.as_str())))
        .map(|c| quoted(&c))
        .collect();
    let key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = to_regclass($1) AND i.indisprimary
         ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(format!("{}.{}", schema.name(), quoted(table)))
    .fetch_all(&mut *conn)
    .await?;
    let order = if key.is_empty() {
        columns.join(", ")
    } else {
        key.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", ")
    };
    // Names come from the catalog and are quoted; the schema name is validated.
    let (rows, md5): (i64, String) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), md5(coalesce(string_agg(md5(ROW({})::text), '' ORDER BY {order}), ''))
         FROM {}.{} t",
        columns.join(", "),
        schema.name(),
        quoted(table)
    )))
    .fetch_one(&mut *conn)
    .await?;
    Ok(TableSum { rows, md5 })
}

/// An identifier as SQL text, double-quoted.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(tables: &[(&str, i64, &str)]) -> Checksum {
        Checksum {
            digest: String::new(),
            tables: tables
                .iter()
                .map(|(n, rows, md5)| {
                    (
                        (*n).to_owned(),
                        TableSum {
                            rows: *rows,
                            md5: (*md5).to_owned(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn differences_name_tables_that_differ_or_exist_on_one_side() {
        let a = sum(&[("orders", 2, "x"), ("versions", 2, "y")]);
        let b = sum(&[("orders", 2, "z"), ("versions", 2, "y"), ("parked", 0, "e")]);
        assert_eq!(a.differences(&b), vec!["orders", "parked"]);
        assert!(a.differences(&a).is_empty());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quoted("offset"), "\"offset\"");
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
    }
}
