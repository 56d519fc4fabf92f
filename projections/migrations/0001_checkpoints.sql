-- Where each projector is in each partition it reads. Written in the same transaction as
-- the read-model rows it covers, so a crash can never leave the offset ahead of the rows.
CREATE TABLE projections.checkpoints (
    projector   text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL CHECK (partition >= 0),
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, topic, partition)
);
