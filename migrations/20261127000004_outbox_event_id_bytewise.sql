-- event_id is an opaque key: compare it byte by byte ("C"), not by the database's locale. Every
-- accepted event probes the unique index on it, and locale-aware comparison costs far more.
ALTER TABLE outbox ALTER COLUMN event_id TYPE TEXT COLLATE "C";
