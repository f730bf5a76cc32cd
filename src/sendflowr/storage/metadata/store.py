"""The metadata store over SQLAlchemy: SQLite embedded, PostgreSQL at scale (same code, same
Alembic migrations)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from sendflowr.errors import ConflictError, NotFoundError, UnavailableError
from sendflowr.settings import MetadataURL
from sendflowr.storage.health import BackendHealth
from sendflowr.storage.metadata.hot import HotReads
from sendflowr.storage.metadata.tables import dead_letters, tenants

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    timezone: str
    settings: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source: str
    payload: str
    reason: str
    tenant: str | None = None
    id: int | None = None
    created_at: datetime | None = None


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _engine(url: MetadataURL) -> Engine:
    if url.kind == "sqlite":
        path = url.sqlalchemy_url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A pool as deep as the API's busy worker threads: above pool_size every checkout
        # opens a connection (and runs the pragmas below) and closes it again on return.
        engine = sa.create_engine(
            url.sqlalchemy_url, connect_args={"timeout": 30}, pool_size=20, max_overflow=40
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL: readers never block the writer; durable once a commit returns.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return sa.create_engine(
        url.sqlalchemy_url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        connect_args={"connect_timeout": 5},
    )


class MetadataStore:
    def __init__(self, url: MetadataURL) -> None:
        self.url = url
        self.backend = url.kind
        self.engine = _engine(url)
        # the tenant and policy rows the decision path reads, for a few seconds (hot.py)
        self.hot = HotReads()

    # -- migrations -------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Upgrade to the newest revision; returns the revisions applied now."""
        before = self.current_revision()
        cfg = _alembic_config()
        with self._guard(), self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        script = ScriptDirectory.from_config(cfg)
        after = self.current_revision()
        if before == after:
            return []
        revs = [r.revision for r in script.iterate_revisions(after, before)]
        return list(reversed(revs))

    def current_revision(self) -> str | None:
        with self._guard(), self.engine.connect() as conn:
            rev: str | None = MigrationContext.configure(conn).get_current_revision()
            return rev

    def head_revision(self) -> str | None:
        head: str | None = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        return head

    # -- tenants ----------------------------------------------------------------------------
    def create_tenant(self, tenant: Tenant) -> Tenant:
        try:
            with self._guard(), self.engine.begin() as conn:
                conn.execute(
                    tenants.insert().values(
                        id=tenant.id,
                        name=tenant.name,
                        timezone=tenant.timezone,
                        settings=tenant.settings,
                        created_at=tenant.created_at,
                    )
                )
        except IntegrityError:
            raise ConflictError(f"tenant {tenant.id!r} exists already", field="id") from None
        return tenant

    def ensure_tenant(self, tenant: Tenant) -> Tenant:
        existing = self.find_tenant(tenant.id)
        if existing is not None:
            return existing
        try:
            return self.create_tenant(tenant)
        except ConflictError:  # created concurrently
            return self.get_tenant(tenant.id)

    def find_tenant(self, tenant_id: str) -> Tenant | None:
        with self._guard(), self.engine.connect() as conn:
            row = conn.execute(tenants.select().where(tenants.c.id == tenant_id)).first()
        return _tenant(dict(row._mapping)) if row is not None else None

    def get_tenant(self, tenant_id: str) -> Tenant:
        found = self.find_tenant(tenant_id)
        if found is None:
            raise NotFoundError(f"no tenant {tenant_id!r}", field="tenant")
        return found

    def hot_tenant(self, tenant_id: str) -> Tenant:
        """get_tenant for the decision path: a copy at most HOT_TTL_S old (see hot.py)."""
        return self.hot.get("tenant", tenant_id, lambda: self.get_tenant(tenant_id))

    def list_tenants(self) -> list[Tenant]:
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(tenants.select().order_by(tenants.c.id)).all()
        return [_tenant(dict(r._mapping)) for r in rows]

    def update_tenant(
        self,
        tenant_id: str,
        *,
        name: str | None = None,
        timezone: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Tenant:
        """Change a tenant's name, time zone and settings (merged key by key; a key given as
        None is removed) in one transaction; NotFoundError when there is no such tenant."""
        with self._guard(), self.engine.begin() as conn:
            row = conn.execute(
                tenants.select().where(tenants.c.id == tenant_id).with_for_update()
            ).first()
            if row is None:
                raise NotFoundError(f"no tenant {tenant_id!r}", field="tenant")
            values: dict[str, Any] = {}
            if name is not None:
                values["name"] = name
            if timezone is not None:
                values["timezone"] = timezone
            if settings is not None:
                merged = dict(row.settings or {})
                for key, value in settings.items():
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                values["settings"] = merged
            if values:
                conn.execute(tenants.update().where(tenants.c.id == tenant_id).values(**values))
        self.hot.forget(tenant_id)
        return self.get_tenant(tenant_id)

    def delete_tenant(self, tenant_id: str) -> None:
        """Delete a tenant; every metadata row that names it goes with it (ON DELETE CASCADE:
        identity graph, accounts, OAuth states, backfills, catalogue, dead letters)."""
        with self._guard(), self.engine.begin() as conn:
            result = conn.execute(tenants.delete().where(tenants.c.id == tenant_id))
        self.hot.forget(tenant_id)
        if not result.rowcount:
            raise NotFoundError(f"no tenant {tenant_id!r}", field="tenant")

    # -- dead letters -----------------------------------------------------------------------
    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        now = datetime.now(UTC)
        with self._guard(), self.engine.begin() as conn:
            conn.execute(
                dead_letters.insert(),
                [
                    {
                        "tenant": d.tenant,
                        "source": d.source,
                        "payload": d.payload,
                        "reason": d.reason,
                        "created_at": d.created_at or now,
                    }
                    for d in letters
                ],
            )

    def list_dead_letters(self, tenant: str | None = None, limit: int = 100) -> list[DeadLetter]:
        query = dead_letters.select().order_by(dead_letters.c.id.desc()).limit(limit)
        if tenant is not None:
            query = query.where(dead_letters.c.tenant == tenant)
        with self._guard(), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            DeadLetter(
                source=r.source,
                payload=r.payload,
                reason=r.reason,
                tenant=r.tenant,
                id=r.id,
                created_at=aware(r.created_at),
            )
            for r in rows
        ]

    # -- health -----------------------------------------------------------------------------
    def health(self) -> BackendHealth:
        try:
            current = self.current_revision()
        except UnavailableError as exc:
            return BackendHealth("metadata", self.backend, "down", exc.message)
        head = self.head_revision()
        if current != head:
            return BackendHealth(
                "metadata",
                self.backend,
                "degraded",
                f"migrations pending: at {current}, head {head}",
            )
        return BackendHealth("metadata", self.backend, "ok", info={"revision": current or ""})

    def close(self) -> None:
        self.engine.dispose()

    def _guard(self) -> _Guard:
        return _Guard(self.backend)


class _Guard:
    """Turn a lost database connection into UnavailableError (503 + Retry-After)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, OperationalError) or (
            isinstance(exc, SQLAlchemyError) and getattr(exc, "connection_invalidated", False)
        ):
            first = str(exc.orig if hasattr(exc, "orig") else exc).strip().splitlines()
            raise UnavailableError(
                f"metadata store ({self.backend}) unavailable: {first[0] if first else 'error'}"
            ) from exc


def aware(at: datetime) -> datetime:
    """A stored timestamp as UTC-aware (SQLite returns naive ones)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def aware_or_none(at: datetime | None) -> datetime | None:
    """`aware` for a nullable column."""
    return None if at is None else aware(at)


def _tenant(row: Mapping[str, Any]) -> Tenant:
    return Tenant(
        id=row["id"],
        name=row["name"],
        timezone=row["timezone"],
        settings=dict(row["settings"] or {}),
        created_at=aware(row["created_at"]),
    )


def open_metadata_store(url: MetadataURL) -> MetadataStore:
    return MetadataStore(url)
