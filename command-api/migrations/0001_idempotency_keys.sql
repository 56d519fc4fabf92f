-- Idempotency keys seen by the command API: which request each key was first used for.
-- The outcome itself is not stored here: commands carry ids derived from the key, and the
-- write model answers a known command id with its first outcome. This table only tells a
-- reused key with a different request (422) from a retry (same answer).
CREATE TABLE command_api.idempotency_keys (
    principal    text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

CREATE INDEX idempotency_keys_by_age ON command_api.idempotency_keys (created_at);
