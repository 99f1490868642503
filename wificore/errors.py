"""The error hierarchy of rlm_wificore. Messages name the key, shard or stream."""

from __future__ import annotations


class WiFiCoreError(Exception):
    """Base class of every error raised by rlm_wificore."""


class ConfigError(WiFiCoreError, ValueError):
    """A setting or the shard map is invalid; the message names the key."""


class StoreUnavailable(WiFiCoreError):
    """Redis or a PostgreSQL shard did not answer in time."""


class UnknownTenant(WiFiCoreError, LookupError):
    """No shard of the shard map holds this tenant."""


class DecodeError(WiFiCoreError, ValueError):
    """A wire payload could not be decoded."""


class InputError(WiFiCoreError, ValueError):
    """A record, packet or CSV row is malformed; the message names the field."""
