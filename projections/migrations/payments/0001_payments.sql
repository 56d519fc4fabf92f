CREATE TABLE payments (
    payment_id         uuid        PRIMARY KEY,
    order_id           uuid        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('authorized', 'declined', 'refunded')),
    amount_cents       bigint      NOT NULL,
    currency           text        NOT NULL,
    provider_reference text,
    decline_reason     text,
    refund_reason      text,
    refund_reference   text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            bigint      NOT NULL
);
CREATE INDEX payments_by_order ON payments (order_id, created_at DESC, payment_id DESC);
