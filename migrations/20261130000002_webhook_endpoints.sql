-- usage-gate's own outbound webhooks (README, "Outbound webhooks"): endpoints, the messages
-- queued for them and every delivery attempt. A message is queued in the transaction that makes
-- the change it tells of (queue_webhooks below), so it is sent at least once if and only if the
-- change committed.
CREATE TABLE webhook_endpoints (
    id                    UUID PRIMARY KEY,
    url                   TEXT NOT NULL,
    -- NULL: every type.
    event_types           TEXT[],
    description           TEXT,
    -- whsec_<base64>: kept so that deliveries can be signed. After a rotation the previous one
    -- signs too, until previous_secret_until.
    secret                TEXT NOT NULL,
    previous_secret       TEXT,
    previous_secret_until TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by            TEXT NOT NULL,
    -- Set when the receiver answered 410 Gone: nothing more is queued or sent.
    disabled_at           TIMESTAMPTZ,
    disabled_reason       TEXT
);

CREATE TABLE webhook_messages (
    -- The webhook-id header: the same on every attempt, so receivers can drop repeats.
    id              TEXT PRIMARY KEY,
    endpoint_id     UUID NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    event_type      TEXT NOT NULL,
    customer_id     UUID,
    -- Exactly the bytes sent and signed.
    body            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- When it is next due; a claim moves it past the attempt's timeout (a lease: if the replica
    -- dies mid-attempt, the message is due again then).
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ
);

CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_messages_endpoint ON webhook_messages (endpoint_id, created_at DESC);

CREATE TABLE webhook_attempts (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   TEXT NOT NULL REFERENCES webhook_messages ON DELETE CASCADE,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The receiver's status; NULL when none came (refused, timed out).
    status_code  SMALLINT,
    error        TEXT,
    duration_ms  INTEGER NOT NULL
);

CREATE INDEX webhook_attempts_message ON webhook_attempts (message_id, id);

-- Queues a message of type $1 about customer $2 (may be NULL) with data $3 for every enabled
-- endpoint that takes the type; returns how many. Called from the statement that makes the
-- change, so the messages commit with it.
CREATE FUNCTION queue_webhooks(TEXT, UUID, JSONB) RETURNS INTEGER LANGUAGE sql VOLATILE AS $$
    WITH queued AS (
        INSERT INTO webhook_messages (id, endpoint_id, event_type, customer_id, body)
        SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), e.id, $1, $2,
               jsonb_build_object(
                   'type', $1,
                   'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                   'data', $3)::text
        FROM webhook_endpoints e
        WHERE e.disabled_at IS NULL AND (e.event_types IS NULL OR $1 = ANY (e.event_types))
        RETURNING 1)
    SELECT count(*)::int FROM queued
$$;
