-- The operator console (README, "Operator console").

-- Sessions, shared by replicas so any of them serves an operator. The browser holds only the
-- session id; this table holds its SHA-256 (a leaked table opens no session) and the digest of
-- the API key that started it, which is looked up in the configuration on every request: a key
-- removed from the configuration ends its sessions.
CREATE TABLE console_sessions (
    id_digest    BYTEA PRIMARY KEY,
    key_digest   BYTEA NOT NULL,
    csrf_token   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A message for the next page shown (the outcome of a form), then cleared.
    flash        JSONB
);
CREATE INDEX console_sessions_last_seen ON console_sessions (last_seen_at);

-- What the customers page lists: the projected estimate and what it is judged against, as of
-- each customer's last recorded observation (a status change, or the estimate moving into
-- another band of its lowest DISABLE limit; see policy::band).
ALTER TABLE customer_decisions
    ADD COLUMN estimate BIGINT,
    ADD COLUMN currency TEXT,
    ADD COLUMN disable_limit BIGINT,
    ADD COLUMN reasons TEXT[] NOT NULL DEFAULT '{}';
CREATE INDEX customer_decisions_status_changed ON customer_decisions (status, changed_at DESC);

-- The same observations over time, for the customer's usage plot; deleted after
-- console.history_days.
CREATE TABLE usage_samples (
    customer_id   UUID NOT NULL,
    observed_at   TIMESTAMPTZ NOT NULL,
    status        TEXT NOT NULL,
    estimate      BIGINT NOT NULL,
    currency      TEXT NOT NULL,
    disable_limit BIGINT,
    PRIMARY KEY (customer_id, observed_at)
);
CREATE INDEX usage_samples_observed ON usage_samples (observed_at);
