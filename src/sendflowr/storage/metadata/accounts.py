"""ESP accounts with encrypted credentials, OAuth states and the webhook replay guard.

Secrets (API keys, OAuth tokens, webhook secrets, PKCE verifiers) are encrypted with the
SecretBox before they reach the database and decrypted only when a connector needs them; the
`Account` record handed to the API never carries them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from sendflowr.errors import ConflictError, InvalidInputError, NotFoundError
from sendflowr.secrets import SecretBox
from sendflowr.storage.metadata.store import MetadataStore, aware
from sendflowr.storage.metadata.tables import esp_accounts, oauth_states, webhook_deliveries
from sendflowr.storage.metadata.upsert import insert_ignore, upsert

AuthKind = Literal["api_key", "oauth", "hmac"]  # hmac: the webhook ESP
AccountStatus = Literal["connected", "disconnected", "error"]


@dataclass(frozen=True, slots=True)
class Account:
    """What may be shown about a connected ESP account: never a secret."""

    tenant: str
    esp: str
    auth_kind: AuthKind
    status: AccountStatus
    api_url: str | None
    account_id: str | None
    last_error: str | None
    has_webhook_secret: bool
    has_flow_webhook_secret: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class OAuthState:
    tenant: str
    esp: str
    code_verifier: str
    redirect_uri: str


class OAuthStateError(InvalidInputError):
    """A callback's `state` is unknown, used already or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__([{"loc": ["query", "state"], "msg": reason, "type": "invalid_state"}])


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class AccountStore:
    def __init__(self, metadata: MetadataStore, box: SecretBox) -> None:
        self.metadata = metadata
        self.engine = metadata.engine
        self.box = box

    # -- accounts ---------------------------------------------------------------------------
    def connect(
        self,
        tenant: str,
        esp: str,
        auth_kind: AuthKind,
        credentials: dict[str, Any],
        *,
        api_url: str | None = None,
        account_id: str | None = None,
    ) -> Account:
        """Store (or replace) the tenant's account for `esp` with encrypted credentials."""
        self.metadata.get_tenant(tenant)
        token = self.box.encrypt(orjson.dumps(credentials).decode())
        now = datetime.now(UTC)
        with self.metadata._guard(), self.engine.begin() as conn:
            existing = conn.execute(
                sa.select(esp_accounts.c.created_at).where(
                    esp_accounts.c.tenant == tenant, esp_accounts.c.esp == esp
                )
            ).first()
            upsert(
                conn,
                esp_accounts,
                {
                    "tenant": tenant,
                    "esp": esp,
                    "auth_kind": auth_kind,
                    "credentials": token,
                    "api_url": api_url,
                    "status": "connected",
                    "last_error": None,
                    "account_id": account_id,
                    "created_at": existing.created_at if existing else now,
                    "updated_at": now,
                },
                keys=("tenant", "esp"),
                update=(
                    "auth_kind",
                    "credentials",
                    "api_url",
                    "status",
                    "last_error",
                    "account_id",
                    "updated_at",
                ),
            )
        return self.get(tenant, esp)

    def find(self, tenant: str, esp: str) -> Account | None:
        with self.metadata._guard(), self.engine.connect() as conn:
            row = conn.execute(
                esp_accounts.select().where(
                    esp_accounts.c.tenant == tenant, esp_accounts.c.esp == esp
                )
            ).first()
        return _account(row._mapping) if row is not None else None

    def get(self, tenant: str, esp: str) -> Account:
        found = self.find(tenant, esp)
        if found is None:
            raise NotFoundError(f"tenant {tenant!r} has no {esp} account connected", field="esp")
        return found

    def list(self, tenant: str | None = None) -> list[Account]:
        query = esp_accounts.select().order_by(esp_accounts.c.tenant, esp_accounts.c.esp)
        if tenant is not None:
            query = query.where(esp_accounts.c.tenant == tenant)
        with self.metadata._guard(), self.engine.connect() as conn:
            return [_account(r._mapping) for r in conn.execute(query)]

    def credentials(self, tenant: str, esp: str) -> dict[str, Any]:
        """The decrypted credentials; raises when the account is absent or disconnected."""
        with self.metadata._guard(), self.engine.connect() as conn:
            row = conn.execute(
                sa.select(esp_accounts.c.credentials, esp_accounts.c.status).where(
                    esp_accounts.c.tenant == tenant, esp_accounts.c.esp == esp
                )
            ).first()
        if row is None or row.credentials is None or row.status == "disconnected":
            raise ConflictError(f"tenant {tenant!r} has no connected {esp} account", field="tenant")
        creds: dict[str, Any] = orjson.loads(self.box.decrypt(row.credentials))
        return creds

    def update_credentials(self, tenant: str, esp: str, credentials: dict[str, Any]) -> None:
        token = self.box.encrypt(orjson.dumps(credentials).decode())
        self._update(tenant, esp, credentials=token)

    def set_status(
        self, tenant: str, esp: str, status: AccountStatus, error: str | None = None
    ) -> None:
        self._update(tenant, esp, status=status, last_error=error)

    def disconnect(self, tenant: str, esp: str) -> None:
        """Forget the credentials (the caller revokes OAuth tokens first)."""
        self._update(tenant, esp, status="disconnected", credentials=None, last_error=None)

    def delete(self, tenant: str, esp: str) -> None:
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(
                esp_accounts.delete().where(
                    esp_accounts.c.tenant == tenant, esp_accounts.c.esp == esp
                )
            )

    def set_webhook_secret(self, tenant: str, esp: str, secret: str, *, flow: bool = False) -> None:
        column = "flow_webhook_secret" if flow else "webhook_secret"
        self._update(tenant, esp, **{column: self.box.encrypt(secret)})

    def webhook_secret(self, tenant: str, esp: str, *, flow: bool = False) -> str | None:
        column = esp_accounts.c.flow_webhook_secret if flow else esp_accounts.c.webhook_secret
        with self.metadata._guard(), self.engine.connect() as conn:
            token = conn.execute(
                sa.select(column).where(esp_accounts.c.tenant == tenant, esp_accounts.c.esp == esp)
            ).scalar()
        return self.box.decrypt(token) if token else None

    def rotate_secrets(self) -> int:
        """Re-encrypt every stored secret under the newest key; returns values rewritten."""
        columns = ("credentials", "webhook_secret", "flow_webhook_secret")
        rewritten = 0
        with self.metadata._guard(), self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(esp_accounts.c.tenant, esp_accounts.c.esp, *esp_accounts.c[columns])
            ).all()
            for row in rows:
                values = {c: self.box.rotate(getattr(row, c)) for c in columns if getattr(row, c)}
                if values:
                    conn.execute(
                        esp_accounts.update()
                        .where(esp_accounts.c.tenant == row.tenant, esp_accounts.c.esp == row.esp)
                        .values(**values)
                    )
                    rewritten += len(values)
        return rewritten

    def _update(self, tenant: str, esp: str, **values: Any) -> None:
        values["updated_at"] = datetime.now(UTC)
        with self.metadata._guard(), self.engine.begin() as conn:
            result = conn.execute(
                esp_accounts.update()
                .where(esp_accounts.c.tenant == tenant, esp_accounts.c.esp == esp)
                .values(**values)
            )
        if not result.rowcount:
            raise NotFoundError(f"tenant {tenant!r} has no {esp} account", field="esp")

    # -- OAuth states -----------------------------------------------------------------------
    def create_oauth_state(
        self,
        tenant: str,
        esp: str,
        code_verifier: str,
        redirect_uri: str,
        ttl: timedelta = timedelta(minutes=10),
    ) -> str:
        """A fresh single-use `state`; only its hash is stored, the verifier encrypted."""
        self.metadata.get_tenant(tenant)
        state = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(
                oauth_states.delete().where(oauth_states.c.expires_at < now - timedelta(days=1))
            )
            conn.execute(
                oauth_states.insert().values(
                    state_hash=_hash(state),
                    tenant=tenant,
                    esp=esp,
                    code_verifier=self.box.encrypt(code_verifier),
                    redirect_uri=redirect_uri,
                    created_at=now,
                    expires_at=now + ttl,
                    used_at=None,
                )
            )
        return state

    def consume_oauth_state(self, state: str) -> OAuthState:
        """Mark `state` used (atomically: a second use fails) and return what it carried."""
        now = datetime.now(UTC)
        key = _hash(state)
        with self.metadata._guard(), self.engine.begin() as conn:
            row = conn.execute(
                oauth_states.select().where(oauth_states.c.state_hash == key)
            ).first()
            if row is None:
                raise OAuthStateError("unknown state: this link was not issued by SendFlowr")
            if row.used_at is not None:
                raise OAuthStateError("this state was used already: start the connection again")
            if aware(row.expires_at) < now:
                raise OAuthStateError("this state expired: start the connection again")
            claimed = conn.execute(
                oauth_states.update()
                .where(oauth_states.c.state_hash == key, oauth_states.c.used_at.is_(None))
                .values(used_at=now)
            )
            if not claimed.rowcount:
                raise OAuthStateError("this state was used already: start the connection again")
        return OAuthState(
            tenant=row.tenant,
            esp=row.esp,
            code_verifier=self.box.decrypt(row.code_verifier),
            redirect_uri=row.redirect_uri,
        )

    # -- webhook replay guard ---------------------------------------------------------------
    def record_delivery(self, tenant: str, signature: str, keep: timedelta) -> bool:
        """True the first time a (tenant, signature) is seen; False for a replay. Entries
        older than `keep` (beyond the timestamp tolerance, so never replayable) are pruned."""
        now = datetime.now(UTC)
        with self.metadata._guard(), self.engine.begin() as conn:
            inserted = insert_ignore(
                conn,
                webhook_deliveries,
                {"tenant": tenant, "signature": signature[:64], "received_at": now},
            )
            conn.execute(
                webhook_deliveries.delete().where(webhook_deliveries.c.received_at < now - keep)
            )
        return inserted == 1

    def forget_delivery(self, tenant: str, signature: str) -> None:
        """Undo record_delivery for a delivery that was not accepted after all."""
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(
                webhook_deliveries.delete().where(
                    webhook_deliveries.c.tenant == tenant,
                    webhook_deliveries.c.signature == signature[:64],
                )
            )


def _account(row: Any) -> Account:
    return Account(
        tenant=row["tenant"],
        esp=row["esp"],
        auth_kind=row["auth_kind"],
        status=row["status"],
        api_url=row["api_url"],
        account_id=row["account_id"],
        last_error=row["last_error"],
        has_webhook_secret=bool(row["webhook_secret"]),
        has_flow_webhook_secret=bool(row["flow_webhook_secret"]),
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
    )
