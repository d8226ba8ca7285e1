-- Usage events accepted from internal services, waiting for or done with delivery to BillaBear.
-- The row is also the dedupe record: event_id is unique, and pruning keeps delivered rows for
-- outbox.retention_days so retries within a billing period are still caught.
CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE CHECK (length(event_id) BETWEEN 1 AND 255),
    -- As sent: a subscription id, or a customer id whose usage subscription for `code` is
    -- resolved at delivery.
    subscription_id UUID,
    customer_id     UUID,
    code            TEXT NOT NULL,
    value           DOUBLE PRECISION NOT NULL,
    properties      JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- SHA-256 of the event's content: the same event_id with another fingerprint is a conflict.
    fingerprint     BYTEA NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A forwarder's claim; an expired lease (its replica died) may be taken over.
    lease_until     TIMESTAMPTZ,
    last_error      TEXT,
    upstream_status SMALLINT,
    -- BillaBear stamps events when it receives them; this is when usage-gate did.
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ,
    CHECK (subscription_id IS NOT NULL OR customer_id IS NOT NULL)
);

CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX outbox_by_status ON outbox (status, id);
CREATE INDEX outbox_by_customer ON outbox (customer_id, status, id);
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE status = 'delivered';
