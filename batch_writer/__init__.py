"""batch_writer: moves accounting and auth-log records from Redis Streams into the shards.

Modules, one noun each:

* ``config``   -- :class:`WriterConfig`, the writer's settings, parsed once from the environment.
* ``records``  -- stream payload -> checked record, and the in-batch collapse (pure).
* ``streams``  -- the Redis side: consumer group, reads, claims, acks, dead letters.
* ``merge``    -- the PostgreSQL side: COPY into staging, merge, close sessions.
* (retries use :mod:`wificore.backoff`, the retry vocabulary of the project)
* ``stats``    -- counters as plain data; ``metrics`` maps them to Prometheus.
* ``worker``   -- :class:`Writer`: ``run()`` loops ``run_once()`` until stopped.

See docs/batch-writer.md for the decisions behind it.
"""

from __future__ import annotations
