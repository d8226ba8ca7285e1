-- Feature limits counted by usage-gate (README, "The plan"): the `value` of accepted events summed
-- per target (what an event named: `kind` 'c' a customer, 's' a subscription), feature code and
-- window. Written by the statement that stores the events (`outbox::store`), so a duplicate
-- `event_id` counts once and a count is never ahead of or behind the outbox; unlike pending
-- usage, a count stays when the event is delivered, dead or pruned: the usage happened.
CREATE TABLE feature_usage (
    kind         CHAR(1) NOT NULL CHECK (kind IN ('c', 's')),
    target       UUID NOT NULL,
    code         TEXT NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    units        NUMERIC NOT NULL,
    -- Counted over the billing period before usage-gate knew the target's (never fetched):
    -- placed in the calendar month, read by nothing, and moved into the period by the
    -- target's next fetch (`feature_counts::store::record_period`).
    provisional  BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (target, kind, code, window_start, provisional)
);
-- Retention prunes ended windows.
CREATE INDEX feature_usage_window ON feature_usage (window_start);

-- Each known customer's billing period, as its last fetch computed it (`entitlements::Period`),
-- under the customer's id and each of its usage subscriptions' ids: where an event counted over
-- the billing period is placed, on any replica, by the same rule the check reads it with.
CREATE TABLE billing_periods (
    target      UUID PRIMARY KEY,
    starts_at   TIMESTAMPTZ NOT NULL,
    ends_at     TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Tells every replica which targets' counts changed (sent at commit). A payload holds at most
-- 8000 bytes: 150 keys of 37 characters each. Returns how many notifications it sent.
CREATE FUNCTION feature_usage_notify(changed TEXT[]) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    i INT := 1;
    sent INT := 0;
BEGIN
    WHILE i <= coalesce(array_length(changed, 1), 0) LOOP
        PERFORM pg_notify('usage_gate_feature_usage', array_to_string(changed[i:i + 149], ','));
        i := i + 150;
        sent := sent + 1;
    END LOOP;
    RETURN sent;
END $$;

-- A counted feature that reached its limit, once per customer, feature and window: the row is
-- the `feature_limit.reached` webhook's dedupe record across replicas (queued by the statement
-- that inserts it), and `reset_at` its `feature_limit.reset`, queued once when the window ends.
CREATE TABLE feature_limit_crossings (
    customer_id  UUID NOT NULL,
    code         TEXT NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    window_end   TIMESTAMPTZ NOT NULL,
    "limit"      BIGINT NOT NULL,
    reached_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    reset_at     TIMESTAMPTZ,
    PRIMARY KEY (customer_id, code, window_start)
);
CREATE INDEX feature_limit_crossings_unreset ON feature_limit_crossings (window_end) WHERE reset_at IS NULL;
