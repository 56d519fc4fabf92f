-- Snapshots of partition writers, so that taking over a partition does not replay its
-- whole history. A snapshot is incremental: aggregates and outcomes are upserted as they
-- change, and the watermark row says up to which offsets they reflect the log. Rows only
-- ever move forward (newer version, later offset), so a late write from a writer that lost
-- its partition cannot roll a snapshot back.

CREATE TABLE event_store.snapshots (
    service         text        NOT NULL,
    partition       integer     NOT NULL CHECK (partition >= 0),
    -- The state reflects the event partition up to this offset (exclusive).
    events_offset   bigint      NOT NULL CHECK (events_offset >= 0),
    -- And the outcome partition up to this offset (exclusive).
    outcomes_offset bigint      NOT NULL CHECK (outcomes_offset >= 0),
    taken_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, partition)
);

CREATE TABLE event_store.snapshot_aggregates (
    service      text    NOT NULL,
    partition    integer NOT NULL,
    aggregate_id text    NOT NULL,
    version      bigint  NOT NULL CHECK (version >= 0),
    -- Offset of the aggregate's last event, for its position token.
    last_offset  bigint,
    state        jsonb   NOT NULL,
    PRIMARY KEY (service, partition, aggregate_id)
);

-- Outcomes remembered for idempotency, in chunks: one row holds the outcomes a cut added
-- (as a JSON array of [command id, outcome, decided at]), because a busy partition has a
-- million of them in its window and a row each would make loading a snapshot slow.
CREATE TABLE event_store.snapshot_outcome_chunks (
    service   text        NOT NULL,
    partition integer     NOT NULL,
    chunk     bigserial,
    -- The newest decision in the chunk: the chunk expires with it.
    newest    timestamptz NOT NULL,
    outcomes  bytea       NOT NULL,
    PRIMARY KEY (service, partition, chunk)
);
