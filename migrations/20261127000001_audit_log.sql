-- Every administrative change and decision transition, successes and failures alike.
CREATE TABLE audit_log (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The API key's name (or "system" for usage-gate's own actions).
    actor           TEXT NOT NULL,
    -- e.g. usage_limit.create, usage_limit.delete, decision.transition, webhook.received
    action          TEXT NOT NULL,
    customer_id     UUID,
    -- What the action was about besides the customer (a limit id, an event id, ...).
    target_id       TEXT,
    outcome         TEXT NOT NULL CHECK (outcome IN ('success', 'rejected', 'failed')),
    -- BillaBear's HTTP status when it answered; NULL when it was not called or did not answer.
    upstream_status SMALLINT,
    request_id      TEXT,
    details         JSONB NOT NULL DEFAULT '{}'::jsonb
);

-- "Newest first by customer", and newest first overall; id breaks ties for keyset pagination.
CREATE INDEX audit_log_customer_newest ON audit_log (customer_id, occurred_at DESC, id DESC);
CREATE INDEX audit_log_newest ON audit_log (occurred_at DESC, id DESC);
