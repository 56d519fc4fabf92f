//! Orders with their status timeline, as the query API shows them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::EventDocument;
use schemas::orders::{CancelledBy, OrderEvent, OrderLine};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use super::{cents, decode, load_by_id, out_of_order, stored_version, time_of};
use crate::projector::{Applied, CopyRows, DbFuture, ReadModel, Schema};

/// The columns of a row, in the order `store` and `copy_new` give them.
const COLUMNS: &str = "order_id, user_id, status, currency, lines, total_cents, payment_id, reason, cancelled_by, placed_at, updated_at, version, timeline";

/// One status the order went through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    pub status: String,
    /// The event that set it.
    pub event: String,
    pub version: i64,
    pub at: DateTime<Utc>,
}

/// An order as the query API shows it, with its status timeline.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OrderRow {
    #[serde(rename = "id")]
    pub order_id: Uuid,
    pub user_id: Uuid,
    /// `pending`, `confirmed`, `rejected` or `cancelled`.
    pub status: String,
    pub currency: String,
    #[sqlx(json)]
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    pub payment_id: Option<Uuid>,
    /// Why it was rejected or cancelled.
    pub reason: Option<String>,
    pub cancelled_by: Option<String>,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    #[sqlx(json)]
    pub timeline: Vec<TimelineEntry>,
}

impl OrderRow {
    fn moved(&self, status: &str, document: &EventDocument) -> Self {
        let mut next = self.clone();
        next.status = status.to_owned();
        next.updated_at = time_of(document);
        next.version = stored_version(document.aggregateversion);
        next.timeline.push(TimelineEntry {
            status: status.to_owned(),
            event: document.event_type.clone(),
            version: next.version,
            at: time_of(document),
        });
        next
    }
}

#[derive(Debug)]
pub struct Orders;

fn cancelled_by(by: CancelledBy) -> &'static str {
    match by {
        CancelledBy::Customer => "customer",
        CancelledBy::Saga => "saga",
    }
}

impl ReadModel for Orders {
    const NAME: &'static str = "orders";
    const SERVICES: &'static [&'static str] = &["orders"];
    const TABLE: &'static str = "orders";
    type Row = OrderRow;

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/orders")
    }

    fn fold(row: Option<&OrderRow>, document: &EventDocument) -> Result<Option<OrderRow>, String> {
        fold_row(row, document).map(Some)
    }

    fn version_of(row: &OrderRow) -> u64 {
        row.version.unsigned_abs()
    }
    fn load<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        keys: &'a [String],
    ) -> DbFuture<'a, HashMap<String, OrderRow>> {
        load_by_id(
            conn,
            schema,
            ("orders", "order_id"),
            keys,
            |r: &OrderRow| r.order_id,
        )
    }

    fn store<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        rows: Vec<(String, OrderRow)>,
        _applied: &'a [Applied<'a>],
    ) -> DbFuture<'a, ()> {
        Box::pin(async move {
            if rows.is_empty() {
                return Ok(());
            }
            let mut c = Columns::default();
            for (_, r) in rows {
                c.id.push(r.order_id);
                c.user.push(r.user_id);
                c.status.push(r.status);
                c.currency.push(r.currency);
                c.lines
                    .push(serde_json::to_value(&r.lines).unwrap_or_default());
                c.total.push(r.total_cents);
                c.payment.push(r.payment_id);
                c.reason.push(r.reason);
                c.cancelled_by.push(r.cancelled_by);
                c.placed.push(r.placed_at);
                c.updated.push(r.updated_at);
                c.version.push(r.version);
                c.timeline
                    .push(serde_json::to_value(&r.timeline).unwrap_or_default());
            }
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} ({COLUMNS})
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::bigint[],
                                      $7::uuid[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
                                      $12::bigint[], $13::jsonb[])
                 ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, payment_id = EXCLUDED.payment_id,
                   reason = EXCLUDED.reason, cancelled_by = EXCLUDED.cancelled_by,
                   updated_at = EXCLUDED.updated_at, version = EXCLUDED.version, timeline = EXCLUDED.timeline",
                schema.table("orders")
            )))
            .bind(c.id)
            .bind(c.user)
            .bind(c.status)
            .bind(c.currency)
            .bind(c.lines)
            .bind(c.total)
            .bind(c.payment)
            .bind(c.reason)
            .bind(c.cancelled_by)
            .bind(c.placed)
            .bind(c.updated)
            .bind(c.version)
            .bind(c.timeline)
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    fn copy_new(schema: &Schema, rows: Vec<(String, OrderRow)>, _: &[Applied<'_>]) -> CopyRows {
        let mut copy = CopyRows::new(schema.table("orders"), COLUMNS);
        for (_, r) in &rows {
            copy.row(13)
                .uuid(r.order_id)
                .uuid(r.user_id)
                .text(&r.status)
                .text(&r.currency)
                .jsonb(&r.lines)
                .int8(r.total_cents)
                .optional_uuid(r.payment_id)
                .optional_text(r.reason.as_deref())
                .optional_text(r.cancelled_by.as_deref())
                .timestamptz(r.placed_at)
                .timestamptz(r.updated_at)
                .int8(r.version)
                .jsonb(&r.timeline);
        }
        copy
    }
}

/// The row after one event (every event of this model leaves a row).
fn fold_row(row: Option<&OrderRow>, document: &EventDocument) -> Result<OrderRow, String> {
    let event = decode::<OrderEvent>(document)?;
    match (row, event.payload) {
        (None, OrderEvent::OrderPlaced(e)) => {
            let version = stored_version(event.meta.version);
            Ok(OrderRow {
                order_id: e.order_id.as_uuid(),
                user_id: e.user_id.as_uuid(),
                status: "pending".into(),
                currency: e.currency.code().to_owned(),
                lines: e.lines,
                total_cents: cents(e.total_cents),
                payment_id: None,
                reason: None,
                cancelled_by: None,
                placed_at: time_of(document),
                updated_at: time_of(document),
                version,
                timeline: vec![TimelineEntry {
                    status: "pending".into(),
                    event: document.event_type.clone(),
                    version,
                    at: time_of(document),
                }],
            })
        }
        (Some(row), OrderEvent::OrderConfirmed(e)) => {
            let mut next = row.moved("confirmed", document);
            next.payment_id = Some(e.payment_id.as_uuid());
            Ok(next)
        }
        (Some(row), OrderEvent::OrderRejected(e)) => {
            let mut next = row.moved("rejected", document);
            next.reason = Some(e.reason);
            Ok(next)
        }
        (Some(row), OrderEvent::OrderCancelled(e)) => {
            let mut next = row.moved("cancelled", document);
            next.reason = Some(e.reason);
            next.cancelled_by = Some(cancelled_by(e.cancelled_by).to_owned());
            Ok(next)
        }
        (Some(_), OrderEvent::OrderPlaced(_)) => Err(out_of_order(document, "existing order")),
        (None, _) => Err(out_of_order(document, "unknown order")),
    }
}

#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    user: Vec<Uuid>,
    status: Vec<String>,
    currency: Vec<String>,
    lines: Vec<serde_json::Value>,
    total: Vec<i64>,
    payment: Vec<Option<Uuid>>,
    reason: Vec<Option<String>>,
    cancelled_by: Vec<Option<String>>,
    placed: Vec<DateTime<Utc>>,
    updated: Vec<DateTime<Utc>>,
    version: Vec<i64>,
    timeline: Vec<serde_json::Value>,
}
