"""The verified-credential cache: a PAP re-auth of a hashed password without a bcrypt.

After radiusd accepted a PAP login against a hashed password (rlm_pap, in C),
post-auth remembers a keyed hash of (tenant, user, password, stored hash) for
``credential_cache_ttl_s``; authorize then accepts the same credential itself.
The key never leaves this process, and a changed stored hash (a new password)
never matches an old entry.
"""

from __future__ import annotations

import hashlib
import os
import time

from wificore.profile import Profile
from wificore.settings import Settings

#: Past this many entries the cache is emptied (a bound; entries are re-made by logins).
MAX_VERIFIED = 1_000_000


class VerifiedCredentials:
    """Keyed digests of credentials radiusd verified, each with an expiry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # HMAC under a key that never leaves this process.
        self._key = os.urandom(32)
        self._verified: dict[bytes, float] = {}

    def _digest(self, tenant_id: int, username: str, password: str, stored: str) -> bytes:
        msg = f"{tenant_id}\0{username}\0{password}\0{stored}".encode("utf-8", "surrogateescape")
        # Keyed BLAKE2b is a MAC in one C call (hmac.new costs twice as much).
        return hashlib.blake2b(msg, key=self._key, digest_size=32).digest()

    def is_verified(self, tenant_id: int, username: str, password: str, stored: str) -> bool:
        """Whether this credential was accepted by radiusd within the cache's lifetime."""
        if self.settings.credential_cache_ttl_s <= 0:
            return False
        digest = self._digest(tenant_id, username, password, stored)
        expires = self._verified.get(digest)
        if expires is None:
            return False
        if expires < time.monotonic():
            self._verified.pop(digest, None)
            return False
        return True

    def remember(self, tenant_id: int, username: str, password: str,
                 profile: Profile | None) -> None:
        """Keep an accepted PAP credential of a hashed password (cleartext ones need none)."""
        if self.settings.credential_cache_ttl_s <= 0:
            return
        if profile and profile.password_type != "cleartext":
            digest = self._digest(tenant_id, username, password, profile.password)
            if len(self._verified) > MAX_VERIFIED:
                self._verified.clear()
            self._verified[digest] = time.monotonic() + self.settings.credential_cache_ttl_s

    def __len__(self) -> int:
        return len(self._verified)
