-- What made the saga issue a step: the event it reacted to, or the command of an earlier
-- step whose outcome it reacted to (NULL for a fired deadline, and for steps issued before
-- this column existed). It is the causation id of the step's command, which operators
-- follow with `shopctl explain`.
ALTER TABLE saga.outbox ADD COLUMN causation_id uuid;
