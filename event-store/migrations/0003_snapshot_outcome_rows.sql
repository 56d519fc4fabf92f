-- Outcomes remembered for idempotency, a row each, so that a writer keeps only recent ones
-- in memory and looks the others up by command id when a command it does not remember
-- arrives. Replaces the chunks of 0001, which could only be loaded whole.

CREATE TABLE event_store.snapshot_outcomes (
    service    text        NOT NULL,
    partition  integer     NOT NULL,
    command_id uuid        NOT NULL,
    -- When the outcome was decided: it leaves the idempotency window with it.
    decided_at timestamptz NOT NULL,
    outcome    jsonb       NOT NULL,
    PRIMARY KEY (service, partition, command_id)
);

CREATE INDEX snapshot_outcomes_by_age
    ON event_store.snapshot_outcomes (service, partition, decided_at);

-- Each chunk is a JSON array of [command id, outcome, decided at]. A command with several
-- events appears once per event, and loading the chunks in order kept the last: so does this.
INSERT INTO event_store.snapshot_outcomes (service, partition, command_id, decided_at, outcome)
SELECT c.service, c.partition, (o.item ->> 0)::uuid, (o.item ->> 2)::timestamptz, o.item -> 1
FROM event_store.snapshot_outcome_chunks c
CROSS JOIN LATERAL jsonb_array_elements(convert_from(c.outcomes, 'UTF8')::jsonb)
    WITH ORDINALITY AS o(item, n)
ORDER BY c.chunk DESC, o.n DESC
ON CONFLICT DO NOTHING;

DROP TABLE event_store.snapshot_outcome_chunks;
