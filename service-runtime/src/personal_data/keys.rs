//! The users' keys, in Postgres (`personal_data.subject_keys`), apart from the log they
//! protect. A key is made with the user's first sealed field and destroyed when the user
//! is forgotten; its row stays (key NULL), so that no key is ever made for that user again.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use schemas::personal::{FORGOTTEN, SealedText};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

use super::sealing::SubjectKey;

/// The schema of the keys' table.
pub const SCHEMA: &str = "personal_data";

/// What a reader shows in place of a sealed field that its key does not open (altered).
pub const UNREADABLE: &str = "[unreadable]";

/// The keys' table.
#[derive(Clone, Debug)]
pub struct KeyStore {
    pool: PgPool,
}

impl KeyStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The keys' table, migrated by every service that seals or opens.
    pub fn migrator() -> Arc<Migrator> {
        crate::probes::schema_migrator(sqlx::migrate!("./migrations/personal_data"), SCHEMA)
    }

    /// The key to seal `subject`'s fields with, made on first use; `None` once the subject
    /// was forgotten.
    pub async fn for_writing(&self, subject: Uuid) -> Result<Option<SubjectKey>, sqlx::Error> {
        // Two statements: the second sees a row a concurrent first use committed while the
        // insert waited on it, which a single statement's snapshot would not.
        sqlx::query(
            "INSERT INTO personal_data.subject_keys (subject, key) VALUES ($1, $2)
             ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subject)
        .bind(SubjectKey::generate().as_bytes())
        .execute(&self.pool)
        .await?;
        let key: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT key FROM personal_data.subject_keys WHERE subject = $1")
                .bind(subject)
                .fetch_one(&self.pool)
                .await?;
        Ok(key.as_deref().and_then(SubjectKey::from_bytes))
    }

    /// The keys of `subjects` that still exist, in one round trip.
    pub async fn for_reading(
        &self,
        subjects: impl IntoIterator<Item = Uuid>,
    ) -> Result<Keyring, sqlx::Error> {
        let subjects: Vec<Uuid> = subjects
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if subjects.is_empty() {
            return Ok(Keyring::default());
        }
        let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT subject, key FROM personal_data.subject_keys
             WHERE subject = ANY($1) AND key IS NOT NULL",
        )
        .bind(&subjects)
        .fetch_all(&self.pool)
        .await?;
        let keys = rows
            .into_iter()
            .filter_map(|(subject, key)| Some((subject, SubjectKey::from_bytes(&key)?)))
            .collect();
        Ok(Keyring { keys })
    }

    /// The keys of every subject whose sealed fields appear in `values`.
    pub async fn for_values<'v>(
        &self,
        values: impl IntoIterator<Item = &'v Value>,
    ) -> Result<Keyring, sqlx::Error> {
        let mut subjects = BTreeSet::new();
        for value in values {
            subjects_in(value, &mut subjects);
        }
        self.for_reading(subjects).await
    }

    /// Destroys `subject`'s key (and makes sure none is made later), then vacuums the
    /// table so that the old row version is reclaimed as soon as no open transaction still
    /// sees it. Copies in backups and write-ahead log archives last as long as those.
    pub async fn forget(&self, subject: Uuid) -> Result<(), sqlx::Error> {
        destroy(&self.pool, &[subject]).await?;
        if let Err(e) = sqlx::query("VACUUM personal_data.subject_keys")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "the keys' table was not vacuumed after forgetting a user; autovacuum will");
        }
        Ok(())
    }
}

/// Destroys the keys of `subjects` on `executor` (in its transaction, if it is one): each
/// row is kept with no key, so that none is made again.
pub async fn destroy(
    executor: impl sqlx::PgExecutor<'_>,
    subjects: &[Uuid],
) -> Result<(), sqlx::Error> {
    if subjects.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO personal_data.subject_keys AS k (subject, key, forgotten_at)
         SELECT subject, NULL, now() FROM UNNEST($1::uuid[]) AS s(subject)
         ON CONFLICT (subject) DO UPDATE SET key = NULL, forgotten_at = COALESCE(k.forgotten_at, now())",
    )
    .bind(subjects)
    .execute(executor)
    .await?;
    Ok(())
}

/// Adds the subject of every sealed text in `value` (at any depth) to `into`.
pub fn subjects_in(value: &Value, into: &mut BTreeSet<Uuid>) {
    match value {
        Value::String(text) => {
            if let Some(sealed) = SealedText::parse(text) {
                into.insert(sealed.subject);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| subjects_in(v, into)),
        Value::Object(fields) => fields.values().for_each(|v| subjects_in(v, into)),
        _ => {}
    }
}

/// The keys a reader holds for one answer: sealed fields of those subjects open, the rest
/// read as `[forgotten]`.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    keys: HashMap<Uuid, SubjectKey>,
}

impl Keyring {
    /// A keyring holding `key` for `subject` only.
    pub fn single(subject: Uuid, key: SubjectKey) -> Self {
        Self {
            keys: HashMap::from([(subject, key)]),
        }
    }

    /// `text` opened: the clear text of a sealed field, `[forgotten]` when its key is gone,
    /// anything else as it is.
    pub fn open<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(sealed) = SealedText::parse(text) else {
            return Cow::Borrowed(text);
        };
        match self.keys.get(&sealed.subject) {
            None => Cow::Borrowed(FORGOTTEN),
            Some(key) => key
                .open(&sealed)
                .map_or(Cow::Borrowed(UNREADABLE), Cow::Owned),
        }
    }

    /// Opens every sealed text in `value`, at any depth.
    pub fn open_json(&self, value: &mut Value) {
        match value {
            Value::String(text) => {
                let opened = self.open(text);
                if opened.as_ref() != text.as_str() {
                    let opened = opened.into_owned();
                    *text = opened;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.open_json(v)),
            Value::Object(fields) => fields.values_mut().for_each(|v| self.open_json(v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_keyring_opens_what_it_holds_keys_for_and_redacts_the_rest() {
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let (ada_key, bob_key) = (SubjectKey::generate(), SubjectKey::generate());
        let mut data = json!({
            "user_id": ada.to_string(),
            "name": ada_key.seal(ada, "Ada"),
            "others": [{"email": bob_key.seal(bob, "bob@example.com")}],
            "count": 3,
        });
        let mut subjects = BTreeSet::new();
        subjects_in(&data, &mut subjects);
        assert_eq!(subjects, BTreeSet::from([ada, bob]));

        Keyring::single(ada, ada_key).open_json(&mut data);
        assert_eq!(
            data,
            json!({
                "user_id": ada.to_string(),
                "name": "Ada",
                "others": [{"email": FORGOTTEN}],
                "count": 3,
            })
        );
    }

    #[test]
    fn a_sealed_field_under_another_key_is_unreadable() {
        let user = Uuid::now_v7();
        let sealed = SubjectKey::generate().seal(user, "Ada");
        let keyring = Keyring::single(user, SubjectKey::generate());
        assert_eq!(keyring.open(&sealed), UNREADABLE);
        assert_eq!(keyring.open("plain text"), "plain text");
    }
}
