-- The floor under holds (bench/README, "Issue 21, last runs"): the writes a durable hold and its
-- commit cannot do without, with no usage-gate in front: a transaction that inserts :batch holds
-- for one customer, then one that closes them and inserts their events into the outbox (firing
-- the pending ledger's trigger). No lock, audit record or read, so usage-gate's own figure can
-- only be lower. On a database with migrations/ applied:
--
--   pgbench -h 127.0.0.1 -U postgres -n -M prepared -c 4 -j 2 -T 10 \
--     -D customers=100 -D batch=17 -f bench/holds_floor.sql DATABASE
--
-- pairs a second = the outbox's rows afterwards / the duration. Clients closing one customer's holds at once each take rows the
-- others have not (SKIP LOCKED), as usage-gate's commits each close their own holds.
\set c random(1, :customers)
BEGIN;
INSERT INTO reservations (id, customer_id, amount, expires_at, created_by)
SELECT gen_random_uuid(), ('00000000-0000-4000-8000-' || lpad(:c::text, 12, '0'))::uuid, 10,
       now() + interval '5 minutes', 'bench'
FROM generate_series(1, :batch);
COMMIT;
BEGIN;
WITH closed AS (
  UPDATE reservations SET closed_at = now(), closed_as = 'committed'
  WHERE id IN (SELECT id FROM reservations
               WHERE customer_id = ('00000000-0000-4000-8000-' || lpad(:c::text, 12, '0'))::uuid
                 AND closed_at IS NULL LIMIT :batch FOR UPDATE SKIP LOCKED)
  RETURNING id, customer_id)
INSERT INTO outbox (event_id, customer_id, code, value, fingerprint)
SELECT 'floor-' || id, customer_id, 'api_calls', 1, '\x00'::bytea FROM closed;
COMMIT;
