-- Every claim gets a new token, and a delivery's outcome is recorded only under the token it
-- was claimed with: a replica whose lease ran out cannot clear the lease of the one that took the
-- event over. attempts_since is when the current run of attempts began (acceptance, or an
-- operator's retry of a dead event): outbox.max_age is counted from it.
ALTER TABLE outbox ADD COLUMN claim_token UUID;
ALTER TABLE outbox ADD COLUMN attempts_since TIMESTAMPTZ NOT NULL DEFAULT now();
