"""The identity port: every event's identifiers -> one universal id.

`HashedIdentityResolver` is the interim rule until the identity graph lands: the universal id is
derived from the event's most stable identifier, so it is deterministic and needs no storage.
The identity-graph resolver will implement the same interface.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
from collections.abc import Sequence

from sendflowr.events import Identifiers
from sendflowr.identity.hashing import universal_id_from_hash


class IdentityResolver(abc.ABC):
    @abc.abstractmethod
    def resolve_batch(self, tenant: str, identifiers: Sequence[Identifiers]) -> list[str]:
        """One universal id per item, in order."""


def _stable_key(ids: Identifiers) -> tuple[str, str] | None:
    # Most stable first: a hashed email outlives ESP and device ids.
    if ids.email_hash:
        return ("email_hash", ids.email_hash)
    if ids.esp_profile_id:
        return ("esp_profile_id", ids.esp_profile_id)
    if ids.phone:
        return ("phone", ids.phone)
    if ids.external_ids:
        name = min(ids.external_ids)
        return (f"external:{name}", ids.external_ids[name])
    if ids.anonymous_id:
        return ("anonymous_id", ids.anonymous_id)
    return None


class HashedIdentityResolver(IdentityResolver):
    def __init__(self, key: bytes, cache_size: int = 1_000_000) -> None:
        self._key = key
        self._cache: dict[tuple[str, str, str], str] = {}
        self._cache_size = cache_size
        self._by_email: dict[str, dict[str, str]] = {}

    def resolve_one(self, tenant: str, ids: Identifiers) -> str:
        stable = _stable_key(ids)
        if stable is None:
            raise ValueError("identifiers: at least one identifier is required")
        kind, value = stable
        cache_key = (tenant, kind, value)
        hit = self._cache.get(cache_key)
        if hit is not None:
            return hit
        if kind == "email_hash":
            # Already keyed; the tenant is mixed in so one address at two brands is two people.
            digest = hashlib.sha256(f"{tenant}:{value}".encode()).hexdigest()
        else:
            msg = f"{tenant}:{kind}:{value}".encode()
            digest = hmac.new(self._key, msg, hashlib.sha256).hexdigest()
        uid = universal_id_from_hash(digest)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[cache_key] = uid
        return uid

    def resolve_batch(self, tenant: str, identifiers: Sequence[Identifiers]) -> list[str]:
        # Hot path: most events carry an email hash already resolved for this tenant.
        by_email = self._by_email.setdefault(tenant, {})
        out = []
        for ids in identifiers:
            uid = by_email.get(ids.email_hash) if ids.email_hash else None
            if uid is None:
                uid = self.resolve_one(tenant, ids)
                if ids.email_hash:
                    if len(by_email) >= self._cache_size:
                        by_email.clear()
                    by_email[ids.email_hash] = uid
            out.append(uid)
        return out
