-- One key per user whose personal data is sealed (see service_runtime::personal_data).
-- Forgetting a user sets `key` to NULL: the row stays, so that the user's key is never
-- made again and every reader knows the data is gone, not missing.
CREATE TABLE personal_data.subject_keys (
    subject      uuid        PRIMARY KEY,
    key          bytea       CHECK (key IS NULL OR length(key) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    forgotten_at timestamptz,
    CHECK ((key IS NULL) = (forgotten_at IS NOT NULL))
);
