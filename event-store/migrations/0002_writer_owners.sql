-- Which instance writes which partition, so that an instance that does not own an
-- aggregate's partition can hand the command to the one that does. The consumer group of
-- the command topic stays the lease; this table only says where to find its holder, and
-- may be stale: a caller that reaches an instance which no longer writes the partition is
-- told so and looks again.

CREATE TABLE event_store.writer_owners (
    -- The writers' consumer group (it carries the topic prefix and the service).
    writers_group text        NOT NULL,
    partition     integer     NOT NULL CHECK (partition >= 0),
    -- Base URL of the instance's internal API, as its peers reach it.
    owner         text        NOT NULL,
    announced_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (writers_group, partition)
);
