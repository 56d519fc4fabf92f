-- Every event of every aggregate and where it is in the log: history and time travel read
-- the events back from Kafka at these positions; `explain` follows correlation ids.
CREATE TABLE events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    version        bigint      NOT NULL,
    event_type     text        NOT NULL,
    event_id       uuid        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    occurred_at    timestamptz NOT NULL,
    correlation_id uuid        NOT NULL,
    causation_id   uuid        NOT NULL,
    command_id     uuid        NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, version)
);
CREATE INDEX events_by_correlation ON events (correlation_id);
CREATE INDEX events_by_time ON events (aggregate_type, aggregate_id, occurred_at);
