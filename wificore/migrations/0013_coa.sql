-- CoA / Disconnect (RFC 5176, issue 16). Each NAS's CoA port (3799 by default,
-- RFC 5176 §3.1), carried in its NAS directory entry; and every Disconnect-Request
-- and CoA-Request the CoA sidecar (coa_sender/) sends, one row per attempt, in the
-- tenant's shard: the NOC's record of who was cut off or re-rated, when, why, and
-- what the NAS answered.
ALTER TABLE nas ADD COLUMN IF NOT EXISTS coa_port integer NOT NULL DEFAULT 3799
    CHECK (coa_port BETWEEN 1 AND 65535);

CREATE TABLE IF NOT EXISTS coa_attempts (
    tenant_id       integer NOT NULL,
    attempted_at    timestamptz NOT NULL,
    job_id          text NOT NULL,
    username        text NOT NULL,
    session_key     text,
    acct_session_id text,
    nas_id          bigint,
    kind            text NOT NULL CHECK (kind IN ('disconnect', 'coa')),
    reason          text NOT NULL,
    attempt         integer NOT NULL CHECK (attempt >= 1),
    outcome         text NOT NULL CHECK (outcome IN ('ack', 'nak', 'timeout', 'error')),
    error_cause     integer,
    detail          text
);
CREATE INDEX IF NOT EXISTS coa_attempts_by_user ON coa_attempts (tenant_id, username, attempted_at);

-- The sidecar connects as the writer does (the shard map's writer_dsn): it writes
-- attempts and reads which plan a subscriber is on and the plan (never a password).
GRANT SELECT, INSERT ON coa_attempts TO wificore_writer;
GRANT SELECT (tenant_id, username, plan_id) ON subscribers TO wificore_writer;
GRANT SELECT ON plans TO wificore_writer;
