-- auth_log day partitions in UTC, and a DEFAULT partition as a safety net.
--
-- 0001 bounded each day with d::timestamptz, i.e. midnight in the time zone of
-- the session that ran the migration, while the writer creates later days in
-- UTC. On a server not set to UTC (timezone = 'Asia/Jakarta': +07) the two sets
-- left a gap (07:00 of UTC day D+7 .. midnight of D+8): seven days after
-- migrating, an insert failed with "no partition of relation auth_log found
-- for row", and the writer held the shard's whole batch for ever.
--
-- From here on:
-- * wificore_auth_log_ensure() bounds day d as [d 00:00 UTC, d+1 00:00 UTC),
--   whatever the session's TimeZone (d::timestamp AT TIME ZONE 'UTC');
-- * auth_log_default takes any row no day partition covers (a day nobody
--   ensured, a clock far off): an insert never fails for want of a partition.
--   When the day's partition is created later, its rows are moved out of the
--   default partition into it (CREATE, move, ATTACH), so retention by day
--   (wificore_auth_log_drop_before) still sees them. The default partition
--   should stay empty; rows there mean a day was not ensured in time;
-- * existing day partitions whose bounds are not UTC midnights (created by
--   0001 on a non-UTC server) are detached, their rows re-inserted into the
--   UTC partitions, and dropped. On a UTC server there is nothing to do; on
--   another, this copies the auth log once, inside this migration's transaction.

CREATE TABLE IF NOT EXISTS auth_log_default PARTITION OF auth_log DEFAULT;

CREATE OR REPLACE FUNCTION wificore_auth_log_ensure(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    d date := first_day;
    made integer := 0;
    part text;
    lo timestamptz;
    hi timestamptz;
    in_default boolean;
BEGIN
    WHILE d <= last_day LOOP
        part := 'auth_log_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            lo := d::timestamp AT TIME ZONE 'UTC';
            hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
            in_default := false;
            IF to_regclass('auth_log_default') IS NOT NULL THEN
                EXECUTE 'SELECT EXISTS (SELECT 1 FROM auth_log_default WHERE logged_at >= $1 AND logged_at < $2)'
                    INTO in_default USING lo, hi;
            END IF;
            IF in_default THEN
                -- A partition cannot be created over rows the default partition holds:
                -- build it aside, move those rows into it, then attach it.
                EXECUTE format('CREATE TABLE %I (LIKE auth_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
                EXECUTE format('WITH moved AS (DELETE FROM auth_log_default WHERE logged_at >= %L AND logged_at < %L'
                               ' RETURNING *) INSERT INTO %I SELECT * FROM moved', lo, hi, part);
                EXECUTE format('ALTER TABLE auth_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               part, lo, hi);
            ELSE
                EXECUTE format('CREATE TABLE %I PARTITION OF auth_log FOR VALUES FROM (%L) TO (%L)',
                               part, lo, hi);
            END IF;
            made := made + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN made;
END $$;

DO $$
DECLARE
    r record;
    d date;
    first_d date;
    last_d date;
    moved text[] := '{}';
    old text;
BEGIN
    FOR r IN SELECT c.relname,
                    substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$FROM \('([^']+)'\)$re$) AS lower_bound
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'auth_log'::regclass AND c.relname ~ '^auth_log_[0-9]{8}$'
              ORDER BY c.relname LOOP
        d := to_date(substr(r.relname, 10), 'YYYYMMDD');
        IF r.lower_bound IS NULL OR r.lower_bound::timestamptz <> (d::timestamp AT TIME ZONE 'UTC') THEN
            EXECUTE format('ALTER TABLE auth_log DETACH PARTITION %I', r.relname);
            EXECUTE format('ALTER TABLE %I RENAME TO %I', r.relname, r.relname || '_local');
            moved := moved || (r.relname || '_local');
            first_d := LEAST(first_d, d);
            last_d := GREATEST(last_d, d);
        END IF;
    END LOOP;
    IF first_d IS NOT NULL THEN
        -- A local day overlaps the UTC day before or after it (east or west of UTC).
        PERFORM wificore_auth_log_ensure(first_d - 1, last_d + 1);
        FOREACH old IN ARRAY moved LOOP
            EXECUTE format('INSERT INTO auth_log SELECT * FROM %I ON CONFLICT DO NOTHING', old);
            EXECUTE format('DROP TABLE %I', old);
        END LOOP;
    END IF;
    PERFORM wificore_auth_log_ensure((now() AT TIME ZONE 'UTC')::date - 1, (now() AT TIME ZONE 'UTC')::date + 7);
END $$;
