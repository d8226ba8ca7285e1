-- Admin changes are audited before BillaBear is called ("pending"), then marked with their
-- outcome, so a change is never made without a record, and a record never claims an outcome
-- that did not happen.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_outcome_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_outcome_check
    CHECK (outcome IN ('pending', 'success', 'rejected', 'failed'));

-- Pages are newest first by id: inserts are serialized (see src/audit.rs), so id order is commit
-- order and a page boundary never skips a record committed late.
DROP INDEX audit_log_customer_newest;
DROP INDEX audit_log_newest;
CREATE INDEX audit_log_customer ON audit_log (customer_id, id DESC) WHERE customer_id IS NOT NULL;
CREATE INDEX audit_log_occurred ON audit_log (occurred_at);

-- The last decision status seen for each customer, shared by replicas, so a transition is
-- audited once, by whichever replica records it first. observed_at is when the snapshot was
-- fetched: an older observation arriving late (a slow replica) never overwrites a newer one.
-- previous_status is set by each update from the row as it then is, to tell a change.
CREATE TABLE customer_decisions (
    customer_id     UUID PRIMARY KEY,
    status          TEXT NOT NULL CHECK (status IN ('ok', 'warning', 'blocked')),
    previous_status TEXT,
    observed_at     TIMESTAMPTZ NOT NULL,
    changed_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
