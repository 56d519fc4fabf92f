-- The W3C trace context the step continues: the traceparent of the event it reacted to or
-- of the step before it, so that the commands, events and webhooks an order's saga causes
-- belong to the trace of the request that placed the order. NULL for steps stored before
-- this column existed.
ALTER TABLE saga.outbox ADD COLUMN traceparent text;
