-- An admin change whose answer from BillaBear never came (a timeout, a dropped connection) is
-- recorded as `unknown` until usage-gate has looked at BillaBear to find out what happened.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_outcome_check;
ALTER TABLE audit_log ADD CONSTRAINT audit_log_outcome_check
    CHECK (outcome IN ('pending', 'success', 'rejected', 'failed', 'unknown'));
