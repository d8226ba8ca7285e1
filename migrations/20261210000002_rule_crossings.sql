-- A rule's threshold crossed, once per rule, customer, subject ('' for the whole customer),
-- window and threshold: the `limit.threshold_crossed` webhook's dedupe record, inserted by the
-- statement that stores the events that crossed it (`outbox::store`, deciding on the totals
-- before and after them), and `reset_at` its `limit.window_reset`, queued once when the window
-- ends (`rules::crossings`). A rolling window's crossing is placed at its bucket and ends when
-- that bucket leaves the window.
CREATE TABLE rule_crossings (
    rule_id      UUID NOT NULL,
    customer_id  UUID NOT NULL,
    subject      TEXT NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    threshold    SMALLINT NOT NULL,
    window_end   TIMESTAMPTZ NOT NULL,
    used         NUMERIC NOT NULL,
    "limit"      BIGINT NOT NULL,
    crossed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    reset_at     TIMESTAMPTZ,
    PRIMARY KEY (rule_id, customer_id, subject, window_start, threshold)
);
CREATE INDEX rule_crossings_unreset ON rule_crossings (window_end) WHERE reset_at IS NULL;

-- A rule's window as it is written, for the webhooks' payloads.
CREATE FUNCTION rule_window_json(r rules) RETURNS JSONB LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE r.window_kind
        WHEN 'calendar' THEN jsonb_build_object('calendar', r.calendar, 'time_zone', r.time_zone)
        WHEN 'rolling' THEN jsonb_build_object('rolling_s', r.rolling_s)
        ELSE jsonb_build_object('billing_period', '{}'::jsonb)
    END
$$;
