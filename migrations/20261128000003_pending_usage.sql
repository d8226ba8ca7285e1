-- Pending usage: what usage-gate accepted that BillaBear's counter has not counted yet (README,
-- "Real-time enforcement"). An outbox row is pending usage from its acceptance until it is
-- retired: BillaBear's counter was seen to include it (`counted`), or it was delivered longer
-- ago than pending.max_age and never matched (`expired`). A dead row is not pending usage.

-- The subscription a delivered event went to (events sent by customer are resolved at delivery).
ALTER TABLE outbox ADD COLUMN delivered_to UUID;
ALTER TABLE outbox ADD COLUMN retired_at TIMESTAMPTZ;
ALTER TABLE outbox ADD COLUMN retired_as TEXT CHECK (retired_as IN ('counted', 'expired'));
UPDATE outbox SET delivered_to = subscription_id WHERE status = 'delivered';
-- Delivered before this migration: BillaBear's counter has long included them.
UPDATE outbox SET retired_at = now(), retired_as = 'counted' WHERE status = 'delivered';

-- Retirement takes a subscription's oldest delivered, unretired events. Expiry reads the same
-- index whole (it holds only what BillaBear has not counted yet: a minute's deliveries): an
-- index on delivered_at alone would tempt the planner into scanning every unretired row for
-- one subscription's retirement whenever its statistics lag.
CREATE INDEX outbox_unretired ON outbox (delivered_to, delivered_at, id)
    WHERE status = 'delivered' AND retired_at IS NULL;

-- Pending usage summed per target (what an event named: `kind` 'c' a customer, 's' a
-- subscription) and metric code: `pending_usage` plus the deltas in `pending_usage_deltas` not
-- yet folded into it. Kept equal to the outbox by the triggers below, whatever changes a row
-- (accept, dead, retry, retirement, pruning, an operator's SQL). Commits only append deltas, so
-- concurrent commits of one customer's events never wait on a shared row; usage-gate folds the
-- deltas in every second (`pending::store::fold`).
CREATE TABLE pending_usage (
    kind   CHAR(1) NOT NULL CHECK (kind IN ('c', 's')),
    target UUID NOT NULL,
    code   TEXT NOT NULL,
    -- NUMERIC: sums of the same values agree whatever order they were added in.
    units  NUMERIC NOT NULL,
    events BIGINT NOT NULL,
    PRIMARY KEY (target, kind, code)
);

CREATE TABLE pending_usage_deltas (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind   CHAR(1) NOT NULL,
    target UUID NOT NULL,
    code   TEXT NOT NULL,
    units  NUMERIC NOT NULL,
    events BIGINT NOT NULL
);
CREATE INDEX pending_usage_deltas_target ON pending_usage_deltas (target);

-- Appends the deltas and tells every replica which targets changed (NOTIFY is sent at commit).
CREATE FUNCTION pending_usage_merge(kinds CHAR(1)[], targets UUID[], codes TEXT[], units NUMERIC[], events BIGINT[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    changed TEXT[];
    i INT;
BEGIN
    IF coalesce(array_length(targets, 1), 0) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO pending_usage_deltas (kind, target, code, units, events)
    SELECT k, t, c, u, e FROM unnest(kinds, targets, codes, units, events) AS d(k, t, c, u, e);
    SELECT array_agg(DISTINCT k || t::text) INTO changed FROM unnest(kinds, targets) AS d(k, t);
    -- A payload holds at most 8000 bytes: 150 keys of 37 characters each.
    i := 1;
    WHILE i <= array_length(changed, 1) LOOP
        PERFORM pg_notify('usage_gate_pending', array_to_string(changed[i:i + 149], ','));
        i := i + 150;
    END LOOP;
END $$;

CREATE FUNCTION outbox_pending_usage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    k CHAR(1)[]; t UUID[]; c TEXT[]; u NUMERIC[]; e BIGINT[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(dk), array_agg(dt), array_agg(dc), array_agg(du), array_agg(de) INTO k, t, c, u, e
        FROM (SELECT CASE WHEN subscription_id IS NULL THEN 'c' ELSE 's' END AS dk,
                     coalesce(subscription_id, customer_id) AS dt, code AS dc, sum(value::numeric) AS du,
                     count(*) AS de
              FROM new_rows WHERE status <> 'dead' AND retired_at IS NULL GROUP BY 1, 2, 3) AS d;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(dk), array_agg(dt), array_agg(dc), array_agg(du), array_agg(de) INTO k, t, c, u, e
        FROM (SELECT CASE WHEN subscription_id IS NULL THEN 'c' ELSE 's' END AS dk,
                     coalesce(subscription_id, customer_id) AS dt, code AS dc, -sum(value::numeric) AS du,
                     -count(*) AS de
              FROM old_rows WHERE status <> 'dead' AND retired_at IS NULL GROUP BY 1, 2, 3) AS d;
    ELSE
        -- Most updates (claims, deliveries, retries) leave every row as pending as it was: their
        -- deltas cancel out and nothing is written.
        SELECT array_agg(dk), array_agg(dt), array_agg(dc), array_agg(du), array_agg(de) INTO k, t, c, u, e
        FROM (SELECT dk, dt, dc, sum(du) AS du, sum(de) AS de
              FROM (SELECT CASE WHEN subscription_id IS NULL THEN 'c' ELSE 's' END AS dk,
                           coalesce(subscription_id, customer_id) AS dt, code AS dc, value::numeric AS du,
                           1 AS de
                    FROM new_rows WHERE status <> 'dead' AND retired_at IS NULL
                    UNION ALL
                    SELECT CASE WHEN subscription_id IS NULL THEN 'c' ELSE 's' END,
                           coalesce(subscription_id, customer_id), code, -value::numeric, -1
                    FROM old_rows WHERE status <> 'dead' AND retired_at IS NULL) AS both_sides
              GROUP BY 1, 2, 3
              HAVING sum(de) <> 0 OR sum(du) <> 0) AS d;
    END IF;
    PERFORM pending_usage_merge(k, t, c, u, e);
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_pending_usage_insert AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_pending_usage();
CREATE TRIGGER outbox_pending_usage_update AFTER UPDATE ON outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_pending_usage();
CREATE TRIGGER outbox_pending_usage_delete AFTER DELETE ON outbox
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_pending_usage();

INSERT INTO pending_usage (kind, target, code, units, events)
SELECT CASE WHEN subscription_id IS NULL THEN 'c' ELSE 's' END, coalesce(subscription_id, customer_id), code,
       sum(value::numeric), count(*)
FROM outbox WHERE status <> 'dead' AND retired_at IS NULL GROUP BY 1, 2, 3;

-- BillaBear's counter per subscription as usage-gate last saw it (`usage` in the costs answer,
-- and the `amount` it was priced at), so every replica retires the growth it shows once.
CREATE TABLE billabear_counters (
    subscription_id UUID PRIMARY KEY,
    usage           DOUBLE PRECISION NOT NULL,
    amount          BIGINT NOT NULL,
    -- When the fetch that saw it started: an older observation never replaces a newer one.
    observed_at     TIMESTAMPTZ NOT NULL,
    -- The last figure before it that differs (a marginal rate for prices the API does not describe).
    prev_usage      DOUBLE PRECISION,
    prev_amount     BIGINT
);
