CREATE TABLE orders (
    order_id     uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled')),
    currency     text        NOT NULL,
    lines        jsonb       NOT NULL,
    total_cents  bigint      NOT NULL,
    payment_id   uuid,
    reason       text,
    cancelled_by text,
    placed_at    timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      bigint      NOT NULL,
    -- Every status the order went through: [{"status", "event", "version", "at"}].
    timeline     jsonb       NOT NULL
);
-- Keyset pagination, newest first: by user, by status, by both.
CREATE INDEX orders_by_user ON orders (user_id, placed_at DESC, order_id DESC);
CREATE INDEX orders_by_status ON orders (status, placed_at DESC, order_id DESC);
CREATE INDEX orders_by_time ON orders (placed_at DESC, order_id DESC);
