-- A key now also holds the answer of the request that first used it, so that a duplicate
-- (concurrent, on any instance, or later) gets exactly that answer instead of running the
-- request again. While a request runs, `owner` names it and `lease_until` bounds how long
-- others wait for it; a run that ends in a 5xx, is cancelled or dies lets go of the key,
-- and the next duplicate runs the request again (its commands keep their derived ids, so
-- the writers answer what they decided the first time).
ALTER TABLE command_api.idempotency_keys
    ADD COLUMN owner       uuid,
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN status      smallint,
    ADD COLUMN headers     jsonb,
    ADD COLUMN body        bytea,
    ADD COLUMN answered_at timestamptz;
