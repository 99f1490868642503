"""rlm_wificore: the multi-tenant RADIUS data plane loaded by FreeRADIUS 3.2.

Only :mod:`rlm_wificore.hooks` imports ``radiusd``; everything else is plain
Python shared with ``batch_writer`` and ``wificore-admin``.
"""

__version__ = "0.1.0"
