-- What every read model keeps besides its rows, in its own schema (the connection's
-- search_path names it): where it is in the log, the last version applied per aggregate,
-- and the records parked behind a poison event or a gap.

-- Written in the same transaction as the rows they cover: the offset is never ahead of them.
CREATE TABLE checkpoints (
    topic         text        NOT NULL,
    partition     integer     NOT NULL CHECK (partition >= 0),
    next_offset   bigint      NOT NULL CHECK (next_offset >= 0),
    -- When the last record applied from this partition was written (for lag in seconds).
    last_event_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- The reader rule's memory: an event is applied only when it is version + 1.
CREATE TABLE versions (
    aggregate_id text   PRIMARY KEY,
    version      bigint NOT NULL CHECK (version > 0)
);

-- Records not applied: the first one failed (cannot be decoded or applied, or a gap), the
-- others of the same aggregate wait behind it, in log order, until an operator retries or
-- skips. The payload is the record as it was, so a retry needs nothing from the broker.
CREATE TABLE parked (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    aggregate_id text        NOT NULL,
    version      bigint,
    event_type   text,
    payload      bytea       NOT NULL,
    error        text        NOT NULL,
    parked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX parked_by_aggregate ON parked (aggregate_id, topic, partition, "offset");
