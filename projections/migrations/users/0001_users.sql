CREATE TABLE users (
    user_id             uuid        PRIMARY KEY,
    name                text        NOT NULL,
    email               text        NOT NULL,
    status              text        NOT NULL CHECK (status IN ('active', 'deactivated')),
    deactivation_reason text,
    registered_at       timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    version             bigint      NOT NULL
);
