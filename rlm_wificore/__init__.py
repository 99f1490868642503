"""rlm_wificore: the multi-tenant RADIUS data plane loaded by FreeRADIUS 3.2.

Only what radiusd loads lives here; :mod:`rlm_wificore.hooks` is the only module
that imports ``radiusd``. What the module shares with ``batch_writer`` and
``wificore-admin`` (settings, shard map, keys, wire format, errors, backoff,
logging) is the core package :mod:`wificore`.
"""

__version__ = "0.1.0"
