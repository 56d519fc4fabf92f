//! A reader's Postgres schema. Its migrations use unqualified names and run with the
//! schema as `search_path`, so the same migrations can build the live schema or a shadow
//! one (a rebuild), and each schema carries its own migration history.

use std::fmt;

use sqlx::Connection;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// A validated schema name: lowercase ASCII letters, digits and `_`, so it can be put
/// into SQL text as is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Schema(String);

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a schema name (lowercase letters, digits and _, at most 63)")]
pub struct InvalidSchema(pub String);

impl Schema {
    pub fn named(name: &str) -> Result<Self, InvalidSchema> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidSchema(name.to_owned()))
        }
    }

    /// The schema the service reads and writes for model `name`.
    pub fn live(name: &str) -> Self {
        Self::named(&format!("read_{name}")).expect("model names are valid schema names")
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// `schema.table`, for SQL text.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.0)
    }

    /// Creates the schema when missing and applies the reader's bookkeeping migrations
    /// (checkpoints, versions, parked records) and then `own` inside it, on a connection
    /// of its own.
    pub async fn migrate(
        &self,
        options: &PgConnectOptions,
        own: Migrator,
    ) -> Result<(), MigrateError> {
        let mut conn = PgConnection::connect_with(options).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {0}; SET search_path TO {0}",
            self.0
        )))
        .execute(&mut conn)
        .await?;
        // `run_direct`: `run(&mut conn)` does not make a `Send` future (sqlx's `Acquire`
        // is not general enough), and readers run on spawned tasks.
        self.scoped(
            sqlx::migrate!("./migrations/reader"),
            "_bookkeeping_migrations",
        )
        .run_direct(None, &mut conn, false)
        .await?;
        self.scoped(own, "_sqlx_migrations")
            .run_direct(None, &mut conn, false)
            .await?;
        conn.close().await?;
        Ok(())
    }

    fn scoped(&self, mut migrator: Migrator, table: &str) -> Migrator {
        migrator.dangerous_set_table_name(self.table(table));
        migrator
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_lowercase_names_are_schemas() {
        assert_eq!(Schema::live("orders").table("orders"), "read_orders.orders");
        for bad in ["", "Orders", "1x", "a-b", "a;drop", "a b", &"x".repeat(64)] {
            assert!(Schema::named(bad).is_err(), "{bad}");
        }
    }
}
