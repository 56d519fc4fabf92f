-- `shopctl explain` and the console's causal tree find a request's saga steps by its
-- correlation id.
CREATE INDEX outbox_by_correlation ON saga.outbox (correlation_id);
