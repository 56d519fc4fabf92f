CREATE TABLE notifications (
    notification_id uuid        PRIMARY KEY,
    order_id        uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    kind            text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('sent', 'failed')),
    attempts        integer     NOT NULL,
    error           text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL
);
CREATE INDEX notifications_by_user ON notifications (user_id, created_at DESC, notification_id DESC);
