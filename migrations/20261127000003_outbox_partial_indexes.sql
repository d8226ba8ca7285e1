-- Every accepted event maintains each index on insert, so index only what queries need:
-- listing dead events (operators) and a customer's events (only events sent with `customer`
-- have one). Pending events are found through outbox_due.
DROP INDEX outbox_by_status;
DROP INDEX outbox_by_customer;
CREATE INDEX outbox_dead ON outbox (id) WHERE status = 'dead';
CREATE INDEX outbox_by_customer ON outbox (customer_id, status, id) WHERE customer_id IS NOT NULL;
