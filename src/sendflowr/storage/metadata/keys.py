"""API keys: per-tenant keys and operator keys (tenant NULL: every tenant).

A key is `sfk_<id>_<secret>`: the id (12 hex characters) is stored in clear to find the row, the
secret (256 random bits) only as HMAC-SHA256 under a key derived from the deployment's hash key.
A slow password hash (bcrypt, argon2) exists to make guessing a low-entropy password costly; a
256-bit random secret cannot be guessed, so one keyed hash is enough and keeps every request
cheap. The keyed hash also means a stolen database alone does not let anyone test candidates.
The plaintext is returned once, by `create`, and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from sendflowr.errors import ConflictError, InvalidInputError, NotFoundError
from sendflowr.storage.metadata.store import MetadataStore, aware, aware_or_none
from sendflowr.storage.metadata.tables import api_keys

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")  # each includes the ones before it
KEY_PREFIX = "sfk_"
_KEY = re.compile(r"^sfk_([0-9a-f]{12})_([A-Za-z0-9_-]{32,128})$")


def scope_allows(have: str, need: str) -> bool:
    """admin ⊃ write ⊃ read."""
    return have in SCOPES and need in SCOPES and SCOPES.index(have) >= SCOPES.index(need)


def check_scope(scope: str, loc: tuple[str, ...] = ("body", "scopes")) -> Scope:
    if scope not in SCOPES:
        raise InvalidInputError.at(loc, f"unknown scope {scope!r}; one of {list(SCOPES)}")
    return scope


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant: str | None  # None: an operator key (every tenant)
    name: str
    scope: Scope
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class NewKey:
    key: ApiKey
    plaintext: str  # shown once


def _row(r: RowMapping | Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        id=r["id"],
        tenant=r["tenant"],
        name=r["name"],
        scope=cast(Scope, r["scope"]),
        created_at=aware(r["created_at"]),
        last_used_at=aware_or_none(r["last_used_at"]),
        revoked_at=aware_or_none(r["revoked_at"]),
    )


class KeyStore:
    def __init__(self, metadata: MetadataStore, hash_key: bytes) -> None:
        self.metadata = metadata
        # A key of its own, derived from the hash key, so a hash of an API key secret can never
        # collide in meaning with a hashed identifier.
        self._key = hmac.new(hash_key, b"sendflowr api keys v1", hashlib.sha256).digest()

    def _hash(self, key_id: str, secret: str) -> str:
        msg = f"{key_id}\0{secret}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def create(self, tenant: str | None, name: str, scope: str) -> NewKey:
        """A new key for `tenant` (None: an operator key). The plaintext is in the result only."""
        checked = check_scope(scope)
        if tenant is not None:
            self.metadata.get_tenant(tenant)  # 404 for an unknown tenant
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.metadata._guard(), self.metadata.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    tenant=tenant,
                    name=name,
                    scope=checked,
                    secret_hash=self._hash(key_id, secret),
                    created_at=now,
                )
            )
        key = ApiKey(key_id, tenant, name, checked, now)
        return NewKey(key, f"{KEY_PREFIX}{key_id}_{secret}")

    def list(self, tenant: str | None = None, *, operators: bool = False) -> list[ApiKey]:
        """A tenant's keys; `operators`: the operator keys; neither: every key."""
        q = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if operators:
            q = q.where(api_keys.c.tenant.is_(None))
        elif tenant is not None:
            q = q.where(api_keys.c.tenant == tenant)
        with self.metadata._guard(), self.metadata.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q).mappings()]

    def get(self, key_id: str) -> ApiKey | None:
        with self.metadata._guard(), self.metadata.engine.connect() as conn:
            r = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        return None if r is None else _row(r)

    def revoke(self, key_id: str, tenant: str | None, *, any_tenant: bool = False) -> ApiKey:
        """Revoke a key of `tenant` (None: an operator key; `any_tenant`: whatever its tenant).
        404 for a key of another tenant, so ids cannot be probed. Revoking twice is a no-op."""
        key = self.get(key_id)
        if key is None or (not any_tenant and key.tenant != tenant):
            raise NotFoundError(f"no API key {key_id!r}", field="key_id")
        if key.revoked_at is not None:
            return key
        now = datetime.now(UTC)
        with self.metadata._guard(), self.metadata.engine.begin() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return ApiKey(
            key.id, key.tenant, key.name, key.scope, key.created_at, key.last_used_at, now
        )

    def revoke_operator(self, key_id: str, *, caller: str, outside_admins: int = 0) -> ApiKey:
        """Revoke an operator key (404 for a tenant's key or an unknown id), unless `caller` (the
        id of the key making the request) is that key and it is the last active admin operator
        key: ConflictError, so nobody locks themselves out. `outside_admins` counts admin
        operator keys that are not stored here (the settings key). The check and the update are
        one statement, with the active admin operator rows locked first on PostgreSQL, so two
        such keys revoking themselves at once cannot both succeed."""
        key = self.get(key_id)
        if key is None or key.tenant is not None:
            raise NotFoundError(f"no operator API key {key_id!r}", field="key_id")
        if key.revoked_at is not None:
            return key
        guarded = key_id == caller and key.scope == "admin" and outside_admins <= 0
        now = datetime.now(UTC)
        admins = sa.select(api_keys.c.id).where(
            api_keys.c.tenant.is_(None),
            api_keys.c.scope == "admin",
            api_keys.c.revoked_at.is_(None),
        )
        update = api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        if guarded:
            other = api_keys.alias("other")  # an alias: not correlated with the updated row
            update = update.where(
                sa.select(other.c.id)
                .where(
                    other.c.tenant.is_(None),
                    other.c.scope == "admin",
                    other.c.revoked_at.is_(None),
                    other.c.id != key_id,
                )
                .exists()
            )
        with self.metadata._guard(), self.metadata.engine.begin() as conn:
            if guarded:  # lock them all, in one order: rival self-revocations queue up here
                conn.execute(admins.order_by(api_keys.c.id).with_for_update()).all()
            done = conn.execute(update.values(revoked_at=now)).rowcount
        if not done:
            current = self.get(key_id)
            if current is not None and current.revoked_at is not None:
                return current  # revoked meanwhile by someone else
            raise ConflictError(
                "this is the last active admin operator key and the one making this request: "
                "revoking it would leave no key that can manage operator keys; create another "
                "admin operator key first",
                field="key_id",
            )
        return ApiKey(
            key.id, key.tenant, key.name, key.scope, key.created_at, key.last_used_at, now
        )

    def verify(self, plaintext: str) -> ApiKey | None:
        """The live key this plaintext is, or None (malformed, unknown, wrong or revoked)."""
        m = _KEY.match(plaintext)
        if m is None:
            return None
        key_id, secret = m.groups()
        with self.metadata._guard(), self.metadata.engine.connect() as conn:
            r = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if r is None or not hmac.compare_digest(r["secret_hash"], self._hash(key_id, secret)):
            return None
        key = _row(r)
        return None if key.revoked else key

    def touch(self, key_id: str, at: datetime) -> None:
        with self.metadata._guard(), self.metadata.engine.begin() as conn:
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=at))
