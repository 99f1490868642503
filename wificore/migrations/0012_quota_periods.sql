-- Quota periods (issue 16): a plan's data and time quotas count over its period,
-- 'none' (the lifetime, as before), 'daily', 'weekly' (ISO, from Monday 00:00) or
-- 'monthly' (from the 1st 00:00), on the calendar of the tenant's time zone
-- (tenants.time_zone, 0008). The arithmetic is wificore/quota.py's.
ALTER TABLE plans ADD COLUMN IF NOT EXISTS quota_period text NOT NULL DEFAULT 'none'
    CHECK (quota_period IN ('none', 'daily', 'weekly', 'monthly'));

-- A session's usage by local day: for each (session row, local day) the session's
-- totals (input + output octets, session time) after the last record counted on that
-- day, as live.lua counted them (the record's local_day, wire.LIVE_FIELDS live_day).
-- Kept by batch_writer with GREATEST, so a replayed batch changes nothing. The usage
-- of a subscriber over local days d1..d2 is, per session, its totals at the end of d2
-- minus its totals at the end of the last day before d1: wificore_usage() below, the
-- same sums live.lua keeps in Redis for the current day, week and month.
CREATE TABLE IF NOT EXISTS session_days (
    tenant_id    integer NOT NULL,
    session_key  text NOT NULL,
    day          date NOT NULL,
    username     text NOT NULL,
    octets       bigint NOT NULL CHECK (octets >= 0),
    time_s       bigint NOT NULL CHECK (time_s >= 0),
    PRIMARY KEY (tenant_id, session_key, day)
) PARTITION BY HASH (tenant_id);
DO $$
BEGIN
    FOR i IN 0..7 LOOP
        EXECUTE format('CREATE TABLE IF NOT EXISTS session_days_p%s PARTITION OF session_days '
                       'FOR VALUES WITH (MODULUS 8, REMAINDER %s)', i, i);
    END LOOP;
END $$;
CREATE INDEX IF NOT EXISTS session_days_by_user ON session_days (tenant_id, username, day);

-- A subscriber's usage over the local days first_day .. last_day (both included).
CREATE OR REPLACE FUNCTION wificore_usage(t integer, u text, first_day date, last_day date,
                                          OUT octets bigint, OUT time_s bigint)
LANGUAGE sql STABLE AS $$
    WITH touched AS (
        SELECT DISTINCT session_key FROM session_days
         WHERE tenant_id = t AND username = u AND day BETWEEN first_day AND last_day
    ), upto AS (
        SELECT d.session_key, max(d.octets) AS o, max(d.time_s) AS s
          FROM session_days d JOIN touched USING (session_key)
         WHERE d.tenant_id = t AND d.day <= last_day GROUP BY d.session_key
    ), before AS (
        SELECT d.session_key, max(d.octets) AS o, max(d.time_s) AS s
          FROM session_days d JOIN touched USING (session_key)
         WHERE d.tenant_id = t AND d.day < first_day GROUP BY d.session_key
    )
    SELECT COALESCE(sum(upto.o - COALESCE(before.o, 0)), 0)::bigint,
           COALESCE(sum(upto.s - COALESCE(before.s, 0)), 0)::bigint
      FROM upto LEFT JOIN before USING (session_key)
$$;

GRANT SELECT, INSERT, UPDATE ON session_days TO wificore_writer;
