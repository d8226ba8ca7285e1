-- The console's fleet queries at 1,000,000 customers (issue 13; figures in bench/README.md):
--   psql -h 127.0.0.1 -U postgres -d postgres -f bench/console_queries.sql
-- A scratch database with `customer_decisions` as migrations 20261127000005 and 20261201000001
-- leave it (1% blocked, 4% warning, the rest ok), then the overview's counts and the customers
-- page's query (src/console/store.rs), prepared with a generic plan as sqlx's prepared
-- statements end up. Drops the database afterwards.
DROP DATABASE IF EXISTS ug_console_bench;
CREATE DATABASE ug_console_bench;
\c ug_console_bench
CREATE TABLE customer_decisions (
    customer_id UUID PRIMARY KEY, status TEXT NOT NULL, previous_status TEXT, observed_at TIMESTAMPTZ NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now(), estimate BIGINT, currency TEXT, disable_limit BIGINT,
    reasons TEXT[] NOT NULL DEFAULT '{}');
CREATE INDEX customer_decisions_status_changed ON customer_decisions (status, changed_at DESC);
INSERT INTO customer_decisions (customer_id, status, observed_at, changed_at, estimate, currency, disable_limit)
SELECT gen_random_uuid(), CASE WHEN i % 100 = 0 THEN 'blocked' WHEN i % 20 = 0 THEN 'warning' ELSE 'ok' END,
       now(), now() - (i || ' seconds')::interval, (random() * 20000)::bigint, 'USD', 10000
FROM generate_series(1, 1000000) i;
ANALYZE customer_decisions;
SET plan_cache_mode = force_generic_plan;
PREPARE customers(text, text, bigint, bigint) AS
    SELECT customer_id, status, estimate, currency, disable_limit, reasons, changed_at, observed_at
    FROM customer_decisions
    WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR customer_id::text LIKE $2 || '%')
    ORDER BY estimate::float8 / NULLIF(disable_limit, 0) DESC NULLS LAST, changed_at DESC, customer_id
    OFFSET $3 LIMIT $4;
\timing on
\echo the overview's counts by status
SELECT status, count(*) FROM customer_decisions GROUP BY status;
\echo the blocked customers, first page
EXPLAIN ANALYZE EXECUTE customers('blocked', NULL, 0, 51);
\echo every customer, first page
EXPLAIN ANALYZE EXECUTE customers(NULL, NULL, 0, 51);
\echo customers whose id starts with ab12
EXPLAIN ANALYZE EXECUTE customers(NULL, 'ab12', 0, 51);
\c postgres
DROP DATABASE ug_console_bench;
