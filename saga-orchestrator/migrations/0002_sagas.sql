-- One row per order's saga. `document` is the whole saga (steps, compensations,
-- failures, history) as the pure state machine keeps it; `state` and `started_at` are
-- repeated as columns for filtering and keyset pages.
CREATE TABLE saga.sagas (
    order_id    uuid        PRIMARY KEY,
    state       text        NOT NULL CHECK (state IN ('running', 'compensating', 'completed', 'compensated', 'failed')),
    document    jsonb       NOT NULL,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX sagas_by_state ON saga.sagas (state, started_at, order_id);
CREATE INDEX sagas_by_start ON saga.sagas (started_at, order_id);

-- The orchestrator is a reader like a projector and keeps the same bookkeeping: when the
-- last record of each partition was written (lag in seconds), and the last version of
-- each aggregate it took in (a record at or below it is a duplicate: the first record of
-- a version in log order wins).
ALTER TABLE saga.checkpoints ADD COLUMN last_event_at timestamptz;
CREATE TABLE saga.versions (
    aggregate_id text   PRIMARY KEY,
    version      bigint NOT NULL CHECK (version > 0)
);

-- Users the orchestrator saw deactivated: their orders are not confirmed.
CREATE TABLE saga.deactivated_users (
    user_id        uuid        PRIMARY KEY,
    deactivated_at timestamptz NOT NULL
);

-- Durable deadlines: written with the saga, fired by a poller, still there after a crash.
CREATE TABLE saga.deadlines (
    order_id uuid        PRIMARY KEY REFERENCES saga.sagas (order_id),
    due_at   timestamptz NOT NULL
);
CREATE INDEX deadlines_by_due ON saga.deadlines (due_at);

-- Steps to carry out (the outbox): written in the transaction that decided them, then
-- carried out and marked done. `command_id` follows from (order, step), so carrying a
-- step out twice after a crash sends the same command id, which the writer drops.
CREATE TABLE saga.outbox (
    command_id  uuid        PRIMARY KEY,
    order_id    uuid        NOT NULL REFERENCES saga.sagas (order_id),
    correlation_id uuid     NOT NULL,
    step        text        NOT NULL,
    action      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    due_at      timestamptz NOT NULL DEFAULT now(),
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text,
    done_at     timestamptz,
    UNIQUE (order_id, step)
);
CREATE INDEX outbox_due ON saga.outbox (due_at) WHERE done_at IS NULL;
