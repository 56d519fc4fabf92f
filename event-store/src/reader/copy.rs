//! Rows into a table through `COPY ... FROM STDIN (FORMAT binary)`: the fastest way
//! Postgres takes rows, used for rows no reader has stored yet (a catch-up or a rebuild
//! from offset zero), where an upsert would probe the table for every row first.
//!
//! A [`CopyRows`] encodes rows field by field in Postgres' binary COPY format (a header,
//! per row a field count and each field as length and bytes, a trailer); [`CopyRows::send`]
//! sends them in one COPY.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Microseconds between the Unix epoch and Postgres' (2000-01-01 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Rows for one table, encoded as binary COPY data.
#[derive(Debug)]
pub struct CopyRows {
    table: String,
    columns: &'static str,
    data: Vec<u8>,
    rows: usize,
}

impl CopyRows {
    /// Rows of `table` (already qualified), with `columns` in the order each row gives
    /// its fields (`"a, b, c"`).
    pub fn new(table: String, columns: &'static str) -> Self {
        let mut data = Vec::with_capacity(64 * 1024);
        data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        data.extend_from_slice(&0i32.to_be_bytes()); // flags
        data.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        Self {
            table,
            columns,
            data,
            rows: 0,
        }
    }

    /// Starts a row of `fields` fields; the next `fields` calls give them in order.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.data.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
        self
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        let length = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
        self.data.extend_from_slice(&length.to_be_bytes());
        self.data.extend_from_slice(bytes);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.data.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.field(value.as_bytes())
    }

    pub fn optional_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    pub fn uuid(&mut self, value: Uuid) -> &mut Self {
        self.field(value.as_bytes())
    }

    pub fn optional_uuid(&mut self, value: Option<Uuid>) -> &mut Self {
        match value {
            Some(value) => self.uuid(value),
            None => self.null(),
        }
    }

    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn int8(&mut self, value: i64) -> &mut Self {
        self.field(&value.to_be_bytes())
    }

    pub fn timestamptz(&mut self, value: DateTime<Utc>) -> &mut Self {
        let micros = value.timestamp_micros() - POSTGRES_EPOCH_MICROS;
        self.field(&micros.to_be_bytes())
    }

    /// A `jsonb` field: the format's version byte, then the document as text.
    pub fn jsonb(&mut self, value: &impl serde::Serialize) -> &mut Self {
        let mut bytes = vec![1u8];
        // Serializing plain data to a vector cannot fail; an empty document would be
        // refused by Postgres, not stored.
        let _ = serde_json::to_writer(&mut bytes, value);
        self.field(&bytes)
    }

    /// How many rows were given.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Sends the rows in one COPY through `conn` (nothing when there are none). A row that
    /// breaks a constraint fails the whole COPY, and the caller's transaction with it.
    pub async fn send(mut self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        if self.rows == 0 {
            return Ok(0);
        }
        self.data.extend_from_slice(&(-1i16).to_be_bytes()); // trailer
        let mut copy = conn
            .copy_in_raw(&format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                self.table, self.columns
            ))
            .await?;
        copy.send(self.data.as_slice()).await?;
        copy.finish().await
    }
}

/// Whether `error` is Postgres refusing a row whose key is already there.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("23505"))
}
