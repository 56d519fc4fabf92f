//! Payments of orders, as the query API shows them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::EventDocument;
use schemas::payments::PaymentEvent;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use super::{cents, decode, load_by_id, out_of_order, stored_version, time_of};
use crate::projector::{Applied, CopyRows, DbFuture, ReadModel, Schema};

/// The columns of a row, in the order `store` and `copy_new` give them.
const COLUMNS: &str = "payment_id, order_id, status, amount_cents, currency, provider_reference, decline_reason, refund_reason, refund_reference, created_at, updated_at, version";

/// A payment as the query API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PaymentRow {
    #[serde(rename = "id")]
    pub payment_id: Uuid,
    pub order_id: Uuid,
    /// `authorized`, `declined` or `refunded`.
    pub status: String,
    pub amount_cents: i64,
    pub currency: String,
    pub provider_reference: Option<String>,
    pub decline_reason: Option<String>,
    pub refund_reason: Option<String>,
    pub refund_reference: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug)]
pub struct Payments;

impl ReadModel for Payments {
    const NAME: &'static str = "payments";
    const SERVICES: &'static [&'static str] = &["payments"];
    const TABLE: &'static str = "payments";
    type Row = PaymentRow;

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/payments")
    }

    fn fold(
        row: Option<&PaymentRow>,
        document: &EventDocument,
    ) -> Result<Option<PaymentRow>, String> {
        fold_row(row, document).map(Some)
    }

    fn version_of(row: &PaymentRow) -> u64 {
        row.version.unsigned_abs()
    }
    fn load<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        keys: &'a [String],
    ) -> DbFuture<'a, HashMap<String, PaymentRow>> {
        load_by_id(
            conn,
            schema,
            ("payments", "payment_id"),
            keys,
            |r: &PaymentRow| r.payment_id,
        )
    }

    fn store<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        rows: Vec<(String, PaymentRow)>,
        _applied: &'a [Applied<'a>],
    ) -> DbFuture<'a, ()> {
        Box::pin(async move {
            if rows.is_empty() {
                return Ok(());
            }
            let mut c = Columns::default();
            for (_, r) in rows {
                c.id.push(r.payment_id);
                c.order.push(r.order_id);
                c.status.push(r.status);
                c.amount.push(r.amount_cents);
                c.currency.push(r.currency);
                c.provider_reference.push(r.provider_reference);
                c.decline_reason.push(r.decline_reason);
                c.refund_reason.push(r.refund_reason);
                c.refund_reference.push(r.refund_reference);
                c.created.push(r.created_at);
                c.updated.push(r.updated_at);
                c.version.push(r.version);
            }
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} ({COLUMNS})
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                                      $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
                                      $12::bigint[])
                 ON CONFLICT (payment_id) DO UPDATE SET status = EXCLUDED.status,
                   refund_reason = EXCLUDED.refund_reason, refund_reference = EXCLUDED.refund_reference,
                   updated_at = EXCLUDED.updated_at, version = EXCLUDED.version",
                schema.table("payments")
            )))
            .bind(c.id)
            .bind(c.order)
            .bind(c.status)
            .bind(c.amount)
            .bind(c.currency)
            .bind(c.provider_reference)
            .bind(c.decline_reason)
            .bind(c.refund_reason)
            .bind(c.refund_reference)
            .bind(c.created)
            .bind(c.updated)
            .bind(c.version)
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    fn copy_new(schema: &Schema, rows: Vec<(String, PaymentRow)>, _: &[Applied<'_>]) -> CopyRows {
        let mut copy = CopyRows::new(schema.table("payments"), COLUMNS);
        for (_, r) in &rows {
            copy.row(12)
                .uuid(r.payment_id)
                .uuid(r.order_id)
                .text(&r.status)
                .int8(r.amount_cents)
                .text(&r.currency)
                .optional_text(r.provider_reference.as_deref())
                .optional_text(r.decline_reason.as_deref())
                .optional_text(r.refund_reason.as_deref())
                .optional_text(r.refund_reference.as_deref())
                .timestamptz(r.created_at)
                .timestamptz(r.updated_at)
                .int8(r.version);
        }
        copy
    }
}

/// The row after one event (every event of this model leaves a row).
fn fold_row(row: Option<&PaymentRow>, document: &EventDocument) -> Result<PaymentRow, String> {
    let event = decode::<PaymentEvent>(document)?;
    let (at, version) = (time_of(document), stored_version(event.meta.version));
    let new =
        |payment_id: Uuid, order_id: Uuid, amount: &schemas::Money, status: &str| PaymentRow {
            payment_id,
            order_id,
            status: status.to_owned(),
            amount_cents: cents(amount.amount_cents),
            currency: amount.currency.code().to_owned(),
            provider_reference: None,
            decline_reason: None,
            refund_reason: None,
            refund_reference: None,
            created_at: at,
            updated_at: at,
            version,
        };
    match (row, event.payload) {
        (None, PaymentEvent::PaymentAuthorized(e)) => Ok(PaymentRow {
            provider_reference: Some(e.provider_reference),
            ..new(
                e.payment_id.as_uuid(),
                e.order_id.as_uuid(),
                &e.amount,
                "authorized",
            )
        }),
        (None, PaymentEvent::PaymentDeclined(e)) => Ok(PaymentRow {
            decline_reason: Some(e.reason),
            ..new(
                e.payment_id.as_uuid(),
                e.order_id.as_uuid(),
                &e.amount,
                "declined",
            )
        }),
        (Some(row), PaymentEvent::PaymentRefunded(e)) => Ok(PaymentRow {
            status: "refunded".into(),
            refund_reason: Some(e.reason),
            refund_reference: Some(e.refund_reference),
            updated_at: at,
            version,
            ..row.clone()
        }),
        (Some(_), _) => Err(out_of_order(document, "existing payment")),
        (None, _) => Err(out_of_order(document, "unknown payment")),
    }
}

#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    order: Vec<Uuid>,
    status: Vec<String>,
    amount: Vec<i64>,
    currency: Vec<String>,
    provider_reference: Vec<Option<String>>,
    decline_reason: Vec<Option<String>>,
    refund_reason: Vec<Option<String>>,
    refund_reference: Vec<Option<String>>,
    created: Vec<DateTime<Utc>>,
    updated: Vec<DateTime<Utc>>,
    version: Vec<i64>,
}
