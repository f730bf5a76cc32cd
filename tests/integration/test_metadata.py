"""The metadata port on SQLite and PostgreSQL: the same Alembic migrations, the same behaviour."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sendflowr.errors import ConflictError, NotFoundError, UnavailableError
from sendflowr.settings import parse_metadata_url
from sendflowr.storage.metadata.store import DeadLetter, MetadataStore, Tenant
from sendflowr.storage.metadata.tables import metadata as table_metadata


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def meta_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/meta.db"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def store(meta_url: str) -> Iterator[MetadataStore]:
    s = MetadataStore(parse_metadata_url(meta_url))
    s.migrate()
    yield s
    s.close()


def test_migrations_are_idempotent(meta_url: str) -> None:
    s = MetadataStore(parse_metadata_url(meta_url))
    try:
        assert s.current_revision() is None
        assert s.health().state == "degraded"
        assert s.migrate() == [f"{n:04d}" for n in range(1, 10)]  # 0001 ... 0009
        assert s.migrate() == []
        assert s.current_revision() == s.head_revision() == "0009"
        tables = set(sa.inspect(s.engine).get_table_names())
        assert {
            "tenants",
            "dead_letters",
            "alembic_version",
            "identity_profiles",
            "identity_identifiers",
            "identity_merges",
            "identity_versions",
            "esp_accounts",
            "oauth_states",
            "backfill_jobs",
            "backfill_units",
            "sync_checkpoints",
            "webhook_deliveries",
            "esp_catalog",
        } <= tables
        # The migrations build exactly the tables the code declares.
        with s.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), table_metadata)
        assert diff == []
        assert s.health().state == "ok"
    finally:
        s.close()


def test_tenants(store: MetadataStore) -> None:
    store.create_tenant(Tenant("acme", "Acme", "Europe/Warsaw", {"plan": "pro"}))
    with pytest.raises(ConflictError):
        store.create_tenant(Tenant("acme", "Again", "UTC"))
    assert store.ensure_tenant(Tenant("acme", "Ignored", "UTC")).name == "Acme"
    got = store.get_tenant("acme")
    assert (got.id, got.name, got.timezone, got.settings) == (
        "acme",
        "Acme",
        "Europe/Warsaw",
        {"plan": "pro"},
    )
    assert got.created_at.tzinfo is not None
    assert store.find_tenant("nope") is None
    with pytest.raises(NotFoundError):
        store.get_tenant("nope")
    store.ensure_tenant(Tenant("beta", "Beta", "UTC"))
    assert [t.id for t in store.list_tenants()] == ["acme", "beta"]


def test_dead_letters(store: MetadataStore) -> None:
    store.create_tenant(Tenant("acme", "Acme", "UTC"))
    store.add_dead_letters(
        [
            DeadLetter("api", '{"a": 1}', "tenant: bad", "acme"),
            DeadLetter("kafka", "xx", "malformed"),
        ]
    )
    mine = store.list_dead_letters("acme")
    assert [(d.source, d.reason) for d in mine] == [("api", "tenant: bad")]
    assert len(store.list_dead_letters()) == 2


def test_unreachable_database_is_unavailable_not_a_crash() -> None:
    s = MetadataStore(parse_metadata_url("postgresql://nobody@127.0.0.1:1/none"))
    try:
        with pytest.raises(UnavailableError):
            s.list_tenants()
        assert s.health().state == "down"
    finally:
        s.close()
