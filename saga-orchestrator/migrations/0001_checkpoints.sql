-- Where the orchestrator is in each partition it reads. Written in the same transaction
-- as the saga state it covers.
CREATE TABLE saga.checkpoints (
    topic       text        NOT NULL,
    partition   integer     NOT NULL CHECK (partition >= 0),
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
