-- Who inside a customer usage is for (README, "Rules"): stored with an event and a hold, never
-- sent to BillaBear.
ALTER TABLE outbox ADD COLUMN subject TEXT;
ALTER TABLE reservations ADD COLUMN subject TEXT;

-- What usage-gate's rules counted: per customer, rule and subject ('' for a rule that counts the
-- whole customer) and bucket (a calendar or billing window's start, or a sixtieth of a rolling
-- window). Written by the statement that stores the events (`outbox::store`), so a duplicate
-- `event_id` counts once; read under the customer's lock by enforced writes and copied by every
-- replica for checks (`rules::counts`). `expires_at`: when the bucket stops counting, after
-- which retention prunes it.
CREATE TABLE rule_usage (
    customer_id  UUID NOT NULL,
    rule_id      UUID NOT NULL,
    subject      TEXT NOT NULL,
    bucket_start TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    amount       NUMERIC NOT NULL,
    PRIMARY KEY (customer_id, rule_id, subject, bucket_start)
);
CREATE INDEX rule_usage_expires ON rule_usage (expires_at);
CREATE INDEX rule_usage_rule ON rule_usage (rule_id);

-- Tells every replica which customers' rule counts changed (sent at commit): 200 ids of 36
-- characters fit in a payload's 8000 bytes. Returns how many notifications it sent.
CREATE FUNCTION rule_usage_notify(changed TEXT[]) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    i INT := 1;
    sent INT := 0;
BEGIN
    WHILE i <= coalesce(array_length(changed, 1), 0) LOOP
        PERFORM pg_notify('usage_gate_rule_usage', array_to_string(changed[i:i + 199], ','));
        i := i + 200;
        sent := sent + 1;
    END LOOP;
    RETURN sent;
END $$;
