-- Reservations (holds): money set aside under a customer's DISABLE limit for work whose cost
-- comes later (README, "Enforcement at the point of use"). A hold counts against the limit from
-- its creation until it is closed: committed (its events stored), released, or expired. Every
-- close sets `closed_at` once; the row stays for the audit trail and for a late commit.
CREATE TABLE reservations (
    id          UUID PRIMARY KEY,
    customer_id UUID NOT NULL,
    -- Minor units, tax included, as the check's estimate.
    amount      BIGINT NOT NULL CHECK (amount >= 0),
    -- What it was asked for: an amount, or an event's code and value priced at creation.
    code        TEXT,
    value       DOUBLE PRECISION,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL,
    closed_at   TIMESTAMPTZ,
    closed_as   TEXT CHECK (closed_as IN ('committed', 'released', 'expired')),
    CHECK ((closed_at IS NULL) = (closed_as IS NULL))
);

-- The open holds of a customer (enforcement sums them under the customer's lock) and the ones
-- to expire.
CREATE INDEX reservations_open ON reservations (customer_id) WHERE closed_at IS NULL;
CREATE INDEX reservations_expiry ON reservations (expires_at) WHERE closed_at IS NULL;

-- Every replica keeps a copy of the open holds for its checks: each change names its customer.
CREATE FUNCTION reservations_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed TEXT[];
    i INT;
BEGIN
    SELECT array_agg(DISTINCT customer_id::text) INTO changed FROM changed_rows;
    -- A payload holds at most 8000 bytes: 200 ids of 37 characters each.
    i := 1;
    WHILE i <= coalesce(array_length(changed, 1), 0) LOOP
        PERFORM pg_notify('usage_gate_reservations', array_to_string(changed[i:i + 199], ','));
        i := i + 200;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER reservations_notify_insert AFTER INSERT ON reservations
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION reservations_notify();
CREATE TRIGGER reservations_notify_update AFTER UPDATE ON reservations
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION reservations_notify();
CREATE TRIGGER reservations_notify_delete AFTER DELETE ON reservations
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION reservations_notify();
