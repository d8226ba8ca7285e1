-- The open holds' index covers what enforcement sums and the copies read (issue 34): the planner
-- then reads it with an index-only scan, which marks the entries of holds closed since the last
-- vacuum as dead as it passes them. A bitmap scan of the bare index visited every such hold's
-- heap page on every enforced write: at 3,000 closes a second that was 12,000 entries and 770
-- pages, 6 ms, under the customer's lock (bench/README, "Issue 34 runs").
DROP INDEX reservations_open;
CREATE INDEX reservations_open ON reservations (customer_id) INCLUDE (id, amount, expires_at)
    WHERE closed_at IS NULL;
