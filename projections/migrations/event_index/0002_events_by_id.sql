-- The console finds an event by its id.
CREATE INDEX events_by_id ON events (event_id);
