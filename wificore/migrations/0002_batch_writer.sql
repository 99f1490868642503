-- Schema additions for batch_writer.
--
-- stale_at: when an open session counts as silent, i.e. its last event time
-- plus twice the interim interval the NAS was told. The writer keeps it as the
-- greatest value seen (like every other time of the row), and closes open
-- sessions with stale_at < now() - grace, a range scan of the partial index
-- below. A per-row deadline is used rather than one global interval because
-- plans have different interim intervals (60 s .. hours).
ALTER TABLE sessions ADD COLUMN stale_at timestamptz;

-- Open sessions from before this migration: assume the default interim (300 s).
UPDATE sessions SET stale_at = updated_at + interval '600 seconds' WHERE stopped_at IS NULL;

CREATE INDEX sessions_open_by_stale ON sessions (stale_at) WHERE stopped_at IS NULL;
