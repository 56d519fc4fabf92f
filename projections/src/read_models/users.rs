//! Users as the query API shows them. Name, email and deactivation reason are stored as
//! the log has them, sealed for their user; the query API opens them with the user's key
//! (see `service_runtime::personal_data`). A forgotten user's row keeps no sealed field,
//! and applying `UserForgotten` also destroys the user's key (again) in the same
//! transaction: the log decides who is forgotten, so a key brought back by restoring an
//! older backup of Postgres is destroyed once the projector reads the event, and a rebuild
//! from offset zero destroys it as well.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use schemas::EventDocument;
use schemas::personal::FORGOTTEN;
use schemas::users::UserEvent;
use serde::Serialize;
use service_runtime::personal_data::keys;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use super::{decode, load_by_id, out_of_order, stored_version, time_of};
use crate::projector::{Applied, CopyRows, DbFuture, ReadModel, Schema};

/// The columns of a row, in the order `store` and `copy_new` give them.
const COLUMNS: &str =
    "user_id, name, email, status, deactivation_reason, registered_at, updated_at, version";

/// A user as the query API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UserRow {
    #[serde(rename = "id")]
    pub user_id: Uuid,
    /// `[forgotten]` once the user was forgotten.
    pub name: String,
    /// `[forgotten]` once the user was forgotten.
    pub email: String,
    /// `active`, `deactivated` or `forgotten`.
    pub status: String,
    pub deactivation_reason: Option<String>,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug)]
pub struct Users;

impl ReadModel for Users {
    const NAME: &'static str = "users";
    const SERVICES: &'static [&'static str] = &["users"];
    const TABLE: &'static str = "users";
    type Row = UserRow;

    fn migrator() -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/users")
    }

    fn fold(row: Option<&UserRow>, document: &EventDocument) -> Result<Option<UserRow>, String> {
        let event = decode::<UserEvent>(document)?;
        let (at, version) = (time_of(document), stored_version(event.meta.version));
        let row = match (row, event.payload) {
            // A lapsed email claim changes nothing a reader sees; it may precede the
            // registration (whose request never finished).
            (None, UserEvent::EmailClaimLapsed(_)) => return Ok(None),
            (Some(row), UserEvent::EmailClaimLapsed(_)) => UserRow {
                version,
                ..row.clone()
            },
            (None, UserEvent::UserRegistered(e)) => UserRow {
                user_id: e.user_id.as_uuid(),
                name: e.name,
                email: e.email,
                status: "active".into(),
                deactivation_reason: None,
                registered_at: at,
                updated_at: at,
                version,
            },
            (Some(row), UserEvent::UserEmailChanged(e)) => UserRow {
                email: e.email,
                updated_at: at,
                version,
                ..row.clone()
            },
            (Some(row), UserEvent::UserDeactivated(e)) => UserRow {
                status: "deactivated".into(),
                deactivation_reason: e.reason,
                updated_at: at,
                version,
                ..row.clone()
            },
            (Some(row), UserEvent::UserForgotten(_)) => UserRow {
                name: FORGOTTEN.into(),
                email: FORGOTTEN.into(),
                status: "forgotten".into(),
                deactivation_reason: None,
                updated_at: at,
                version,
                ..row.clone()
            },
            (Some(_), _) => return Err(out_of_order(document, "existing user")),
            (None, _) => return Err(out_of_order(document, "unknown user")),
        };
        Ok(Some(row))
    }

    fn version_of(row: &UserRow) -> u64 {
        row.version.unsigned_abs()
    }
    fn load<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        keys: &'a [String],
    ) -> DbFuture<'a, HashMap<String, UserRow>> {
        load_by_id(conn, schema, ("users", "user_id"), keys, |r: &UserRow| {
            r.user_id
        })
    }

    fn store<'a>(
        conn: &'a mut PgConnection,
        schema: &'a Schema,
        rows: Vec<(String, UserRow)>,
        applied: &'a [Applied<'a>],
    ) -> DbFuture<'a, ()> {
        Box::pin(async move {
            // Sorted and without repeats: one statement may touch a row once.
            let forgotten: Vec<Uuid> = applied
                .iter()
                .filter(|a| a.document.event_type == "UserForgotten")
                .filter_map(|a| a.document.subject.parse().ok())
                .collect::<std::collections::BTreeSet<Uuid>>()
                .into_iter()
                .collect();
            keys::destroy(&mut *conn, &forgotten).await?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut c = Columns::default();
            for (_, r) in rows {
                c.id.push(r.user_id);
                c.name.push(r.name);
                c.email.push(r.email);
                c.status.push(r.status);
                c.reason.push(r.deactivation_reason);
                c.registered.push(r.registered_at);
                c.updated.push(r.updated_at);
                c.version.push(r.version);
            }
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} ({COLUMNS})
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[], $8::bigint[])
                 ON CONFLICT (user_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,
                   status = EXCLUDED.status, deactivation_reason = EXCLUDED.deactivation_reason,
                   updated_at = EXCLUDED.updated_at, version = EXCLUDED.version",
                schema.table("users")
            )))
            .bind(c.id)
            .bind(c.name)
            .bind(c.email)
            .bind(c.status)
            .bind(c.reason)
            .bind(c.registered)
            .bind(c.updated)
            .bind(c.version)
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    fn copy_new(schema: &Schema, rows: Vec<(String, UserRow)>, _: &[Applied<'_>]) -> CopyRows {
        let mut copy = CopyRows::new(schema.table("users"), COLUMNS);
        for (_, r) in &rows {
            copy.row(8)
                .uuid(r.user_id)
                .text(&r.name)
                .text(&r.email)
                .text(&r.status)
                .optional_text(r.deactivation_reason.as_deref())
                .timestamptz(r.registered_at)
                .timestamptz(r.updated_at)
                .int8(r.version);
        }
        copy
    }
}

#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    name: Vec<String>,
    email: Vec<String>,
    status: Vec<String>,
    reason: Vec<Option<String>>,
    registered: Vec<DateTime<Utc>>,
    updated: Vec<DateTime<Utc>>,
    version: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use schemas::users::{EmailClaimLapsed, UserDeactivated, UserForgotten, UserRegistered};
    use schemas::{EventMeta, UserId};

    use super::*;

    fn document(version: u64, payload: impl Into<UserEvent>) -> EventDocument {
        schemas::Event {
            meta: EventMeta::new(version),
            payload: payload.into(),
        }
        .to_document()
    }

    fn lapsed(user: UserId, version: u64) -> EventDocument {
        let lapse = EmailClaimLapsed {
            user_id: user,
            email: "a@b.co".into(),
            claim: 1,
        };
        document(version, lapse)
    }

    #[test]
    fn a_lapsed_claim_before_registration_leaves_no_row_and_after_it_only_a_version() {
        let user = UserId::new();
        assert_eq!(Users::fold(None, &lapsed(user, 1)), Ok(None));
        let registered = UserRegistered {
            user_id: user,
            name: "Ada".into(),
            email: "ada@b.co".into(),
            claim_id: None,
        };
        let row = Users::fold(None, &document(2, registered))
            .expect("registers")
            .expect("a row");
        let after = Users::fold(Some(&row), &lapsed(user, 3))
            .expect("applies")
            .expect("a row");
        assert_eq!(after.version, 3);
        assert_eq!(
            (after.email.as_str(), after.updated_at),
            ("ada@b.co", row.updated_at)
        );
    }

    #[test]
    fn a_forgotten_user_keeps_a_row_without_personal_fields() {
        let user = UserId::new();
        let registered = UserRegistered {
            user_id: user,
            name: format!("pii1:{user}:c2VhbGVk"),
            email: format!("pii1:{user}:c2VhbGVk"),
            claim_id: Some("ab".repeat(32)),
        };
        let deactivated = UserDeactivated {
            user_id: user,
            reason: Some(format!("pii1:{user}:c2VhbGVk")),
        };
        let mut row = None;
        for (version, event) in [
            (1, UserEvent::from(registered)),
            (2, deactivated.into()),
            (3, UserForgotten { user_id: user }.into()),
        ] {
            row = Users::fold(row.as_ref(), &document(version, event)).expect("applies");
        }
        let row = row.expect("a row");
        assert_eq!(
            (row.name.as_str(), row.email.as_str(), row.status.as_str()),
            (FORGOTTEN, FORGOTTEN, "forgotten")
        );
        assert_eq!((row.deactivation_reason, row.version), (None, 3));
    }
}
