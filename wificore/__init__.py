"""wificore: the core that the radiusd module, batch_writer and wificore-admin share.

No ``radiusd`` and no I/O at import (tests/test_core_boundaries.py checks both):
settings, the shard map, the Redis key layout, the wire format of stream records
(and the one definition of their fields), cached profiles, errors, backoff and
logging. ``rlm_wificore`` (what radiusd loads) and ``batch_writer`` import it;
it never imports either.

* ``settings``  -- :class:`Settings`: the ``config { }`` block / environment, checked once.
* ``shardmap``  -- tenant ranges -> shards, read the same way by every process.
* ``keys``      -- every Redis key name (see docs/redis-keys.md).
* ``wire``      -- stream records, version 1 and 2; ``ACCT_FIELDS`` / ``AUTH_FIELDS``.
* ``profile``   -- subscriber profiles and plans as cached in Redis (msgpack).
* ``errors``    -- the exception hierarchy.
* ``backoff``   -- :class:`Backoff` and :class:`Breaker`, the retry vocabulary.
* ``log``       -- structlog set-up.
* ``histogram`` -- the one fixed-bucket histogram (hook latency, writer batches).
* ``md4``       -- NT hashes (OpenSSL 3 offers no MD4).
* ``admin``, ``migrate``, ``migrations/`` -- the ``wificore-admin`` CLI and the schema.
"""
