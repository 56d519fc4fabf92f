//! Notifications sent (or failed) to users, as the query API shows them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::EventDocument;
use schemas::notifications::NotificationEvent;
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use super::{decode, load_by_id, out_of_order, stored_version, time_of};
use crate::projector::{Applied, CopyRows, DbFuture, ReadModel, Schema};

/// The columns of a row, in the order `store` and `copy_new` give them.
const COLUMNS: &str = "notification_id, order_id, user_id, kind, status, attempts, error, created_at, updated_at, version";

/// A notification as the query API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NotificationRow {
    #[serde(rename = "id")]
    pub notification_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub kind: String,
    /// `sent` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug)]
pub struct Notifications;

impl ReadModel for Notifications {
    const NAME: &'static str = "notifications";
    const SERVICES: &'static [&'static str] = &["notifications"];
    const TABLE: &'static str = "notifications";
    type Row = NotificationRow;

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/notifications")
    }

    fn fold(
        row: Option<&NotificationRow>,
        document: &EventDocument,
    ) -> Result<Option<NotificationRow>, String> {
        fold_row(row, document).map(Some)
    }

    fn version_of(row: &NotificationRow) -> u64 {
        row.version.unsigned_abs()
    }
    fn load<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        keys: &'a [String],
    ) -> DbFuture<'a, HashMap<String, NotificationRow>> {
        load_by_id(
            conn,
            schema,
            ("notifications", "notification_id"),
            keys,
            |r: &NotificationRow| r.notification_id,
        )
    }

    fn store<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        rows: Vec<(String, NotificationRow)>,
        _applied: &'a [Applied<'a>],
    ) -> DbFuture<'a, ()> {
        Box::pin(async move {
            if rows.is_empty() {
                return Ok(());
            }
            let mut c = Columns::default();
            for (_, r) in rows {
                c.id.push(r.notification_id);
                c.order.push(r.order_id);
                c.user.push(r.user_id);
                c.kind.push(r.kind);
                c.status.push(r.status);
                c.attempts.push(r.attempts);
                c.error.push(r.error);
                c.created.push(r.created_at);
                c.updated.push(r.updated_at);
                c.version.push(r.version);
            }
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} ({COLUMNS})
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int[],
                                      $7::text[], $8::timestamptz[], $9::timestamptz[], $10::bigint[])
                 ON CONFLICT (notification_id) DO UPDATE SET status = EXCLUDED.status,
                   attempts = EXCLUDED.attempts, error = EXCLUDED.error,
                   updated_at = EXCLUDED.updated_at, version = EXCLUDED.version",
                schema.table("notifications")
            )))
            .bind(c.id)
            .bind(c.order)
            .bind(c.user)
            .bind(c.kind)
            .bind(c.status)
            .bind(c.attempts)
            .bind(c.error)
            .bind(c.created)
            .bind(c.updated)
            .bind(c.version)
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    fn copy_new(
        schema: &Schema,
        rows: Vec<(String, NotificationRow)>,
        _: &[Applied<'_>],
    ) -> CopyRows {
        let mut copy = CopyRows::new(schema.table("notifications"), COLUMNS);
        for (_, r) in &rows {
            copy.row(10)
                .uuid(r.notification_id)
                .uuid(r.order_id)
                .uuid(r.user_id)
                .text(&r.kind)
                .text(&r.status)
                .int4(r.attempts)
                .optional_text(r.error.as_deref())
                .timestamptz(r.created_at)
                .timestamptz(r.updated_at)
                .int8(r.version);
        }
        copy
    }
}

/// The row after one event (every event of this model leaves a row).
fn fold_row(
    row: Option<&NotificationRow>,
    document: &EventDocument,
) -> Result<NotificationRow, String> {
    let event = decode::<NotificationEvent>(document)?;
    let (at, version) = (time_of(document), stored_version(event.meta.version));
    let (id, order, user, kind, status, attempts, error) = match event.payload {
        NotificationEvent::NotificationSent(e) => (
            e.notification_id,
            e.order_id,
            e.user_id,
            e.kind,
            "sent",
            e.attempts,
            None,
        ),
        NotificationEvent::NotificationFailed(e) => (
            e.notification_id,
            e.order_id,
            e.user_id,
            e.kind,
            "failed",
            e.attempts,
            Some(e.error),
        ),
    };
    if row.is_some() {
        return Err(out_of_order(document, "already delivered notification"));
    }
    Ok(NotificationRow {
        notification_id: id.as_uuid(),
        order_id: order.as_uuid(),
        user_id: user.as_uuid(),
        kind: kind.as_str().to_owned(),
        status: status.to_owned(),
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        error,
        created_at: at,
        updated_at: at,
        version,
    })
}

#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    order: Vec<Uuid>,
    user: Vec<Uuid>,
    kind: Vec<String>,
    status: Vec<String>,
    attempts: Vec<i32>,
    error: Vec<Option<String>>,
    created: Vec<DateTime<Utc>>,
    updated: Vec<DateTime<Utc>>,
    version: Vec<i64>,
}
