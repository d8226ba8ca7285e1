-- Overrides: an operator's bounded exception to a customer's decision (README, "Overrides").
-- A customer has at most one open override: a new one ends the open one ('superseded'). An
-- override counts from its creation until `expires_at` or until it is ended, whichever comes
-- first; every close sets `ended_at` once (audited in the same transaction), and the row stays
-- for the record.
CREATE TABLE overrides (
    id          UUID PRIMARY KEY,
    customer_id UUID NOT NULL,
    effect      TEXT NOT NULL CHECK (effect IN ('allow', 'block', 'raise')),
    -- For 'raise': the DISABLE threshold used instead (minor units).
    amount      BIGINT CHECK (amount >= 0),
    reason      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by  TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    ended_at    TIMESTAMPTZ,
    ended_as    TEXT CHECK (ended_as IN ('ended', 'superseded', 'expired')),
    ended_by    TEXT,
    end_reason  TEXT,
    CHECK ((effect = 'raise') = (amount IS NOT NULL)),
    CHECK ((ended_at IS NULL) = (ended_as IS NULL))
);

CREATE UNIQUE INDEX overrides_open ON overrides (customer_id) WHERE ended_at IS NULL;
CREATE INDEX overrides_expiry ON overrides (expires_at) WHERE ended_at IS NULL;
CREATE INDEX overrides_customer ON overrides (customer_id, created_at DESC);

-- Every replica keeps a copy of the open overrides (and of the open holds) for its checks:
-- each change names its customers on the channel the trigger is given. One function for both
-- tables: the reservations' triggers move to it.
CREATE FUNCTION notify_customers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed TEXT[];
    i INT;
BEGIN
    SELECT array_agg(DISTINCT customer_id::text) INTO changed FROM changed_rows;
    -- A payload holds at most 8000 bytes: 200 ids of 37 characters each.
    i := 1;
    WHILE i <= coalesce(array_length(changed, 1), 0) LOOP
        PERFORM pg_notify(TG_ARGV[0], array_to_string(changed[i:i + 199], ','));
        i := i + 200;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER overrides_notify_insert AFTER INSERT ON overrides
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT
    EXECUTE FUNCTION notify_customers('usage_gate_overrides');
CREATE TRIGGER overrides_notify_update AFTER UPDATE ON overrides
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT
    EXECUTE FUNCTION notify_customers('usage_gate_overrides');

DROP TRIGGER reservations_notify_insert ON reservations;
DROP TRIGGER reservations_notify_update ON reservations;
DROP TRIGGER reservations_notify_delete ON reservations;
DROP FUNCTION reservations_notify();
CREATE TRIGGER reservations_notify_insert AFTER INSERT ON reservations
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT
    EXECUTE FUNCTION notify_customers('usage_gate_reservations');
CREATE TRIGGER reservations_notify_update AFTER UPDATE ON reservations
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT
    EXECUTE FUNCTION notify_customers('usage_gate_reservations');
CREATE TRIGGER reservations_notify_delete AFTER DELETE ON reservations
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT
    EXECUTE FUNCTION notify_customers('usage_gate_reservations');
