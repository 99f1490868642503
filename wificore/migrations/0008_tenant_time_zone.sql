-- Each tenant's time zone (issue 16): an IANA name (Europe/Berlin, UTC).
--
-- wificore-admin reads the dates an operator gives (subscriber add/set/import
-- --expires-at) in it, and prints instants in it (subscriber show, subscriber
-- why); wificore-admin checks the name against Python's zoneinfo, the check
-- here keeps out what can be no such name. Existing tenants get UTC: their
-- dates were read as UTC until now.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS time_zone text NOT NULL DEFAULT 'UTC'
    CHECK (time_zone ~ '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$' AND length(time_zone) <= 64);

-- subscriber why: a subscriber's last logins, newest first, without reading the
-- tenant's whole auth log (one more index entry per auth-log row the writer inserts).
CREATE INDEX IF NOT EXISTS auth_log_by_user ON auth_log (tenant_id, username, logged_at);
