-- Moving one tenant between shards online (wificore-admin tenant move; issue 17).
--
-- tenants.moving: NULL, or why the tenant's rows must not change on this shard now
-- ('to shard3' on the source while its rows are copied and until they are removed,
-- 'from shard1' on the target until the map names the target). batch_writer leaves
-- such a tenant's records pending in its streams (they are written once the tenant
-- is writable on the shard the map names); wificore-admin refuses changes to it.
-- The fence is taken under pg_advisory_xact_lock(871017, tenant % 32): batch_writer
-- holds the shared form of that lock in every transaction that writes the tenant's
-- rows, so the fence waits for a write in flight, and a write after it sees the fence.
ALTER TABLE tenants ADD COLUMN moving text;

-- The journal of a move, one row per tenant on each of the two shards: the source's
-- row (role 'source') is kept after the move as a tombstone, so that a writer or
-- radiusd still on the old map defers instead of taking the tenant for unknown.
CREATE TABLE tenant_moves (
    tenant_id   integer PRIMARY KEY CHECK (tenant_id > 0),
    role        text NOT NULL CHECK (role IN ('source', 'target')),
    peer        text NOT NULL,
    step        text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT ON tenant_moves TO wificore_writer, wificore_radius;
