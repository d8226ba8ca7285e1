-- usage-gate's own limit rules (README, "Rules"): written by operators, audited in the
-- transaction that changes them, copied by every replica (the trigger names the change).
CREATE TABLE rules (
    id             UUID PRIMARY KEY,
    scope_kind     TEXT NOT NULL CHECK (scope_kind IN ('customer', 'plan', 'all')),
    -- The customer's or the plan's id; null for 'all'.
    scope_id       UUID,
    measure_kind   TEXT NOT NULL CHECK (measure_kind IN ('cost', 'metric')),
    metric         TEXT,
    -- Minor units for cost, units for a metric.
    "limit"        BIGINT NOT NULL CHECK ("limit" > 0),
    window_kind    TEXT NOT NULL CHECK (window_kind IN ('calendar', 'rolling', 'billing_period')),
    calendar       TEXT CHECK (calendar IN ('hour', 'day', 'week', 'month')),
    time_zone      TEXT,
    rolling_s      INTEGER CHECK (rolling_s BETWEEN 1 AND 2678400),
    mode           TEXT NOT NULL CHECK (mode IN ('hard', 'soft')),
    per_subject    BOOLEAN NOT NULL,
    -- {subject: limit}, only with per_subject.
    subject_limits JSONB NOT NULL DEFAULT '{}',
    -- Percents of the limit, ascending.
    thresholds     SMALLINT[] NOT NULL,
    description    TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by     TEXT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by     TEXT NOT NULL,
    CHECK ((scope_kind = 'all') = (scope_id IS NULL)),
    CHECK ((measure_kind = 'metric') = (metric IS NOT NULL)),
    CHECK ((window_kind = 'calendar') = (calendar IS NOT NULL AND time_zone IS NOT NULL)),
    CHECK ((window_kind = 'rolling') = (rolling_s IS NOT NULL)),
    CHECK (per_subject OR subject_limits = '{}')
);

CREATE INDEX rules_scope ON rules (scope_kind, scope_id);

CREATE FUNCTION notify_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('usage_gate_rules', '');
    RETURN NULL;
END $$;

CREATE TRIGGER rules_notify AFTER INSERT OR UPDATE OR DELETE ON rules
    FOR EACH STATEMENT EXECUTE FUNCTION notify_rules();
