"""Shared fixtures.

Servers: tests that need one carry its marker (postgres, redis, kafka, clickhouse, network);
every other test is blocked from opening network connections, so a forgotten marker fails
loudly instead of silently depending on a server.

chDB runs one embedded server per process on one directory, so the whole session shares one
directory and each test gets its own database in it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant

SERVER_MARKERS = ("postgres", "redis", "kafka", "clickhouse", "network", "browser")
POSTGRES_URL = os.environ.get(
    "SENDFLOWR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
HASH_KEY = "test-hash-key-0123456789abcdef"
ADMIN_KEY = "test-operator-key-0123456789abcdef"  # settings.admin_api_key: the operator
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}

pytest_plugins = ["tests.kafka"]  # the session's Kafka broker (Tansu)


@pytest.fixture(autouse=True)
def _block_network(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if any(request.node.get_closest_marker(m) for m in SERVER_MARKERS):
        return
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(
                f"{request.node.nodeid} opened a network connection to {address!r}: mark it "
                f"with one of {SERVER_MARKERS}"
            )
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def chdb_url(chdb_dir: Path) -> str:
    return f"chdb://{chdb_dir}?database=t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(tmp_path: Path, chdb_url: str) -> Settings:
    return Settings(
        event_store_url=chdb_url,
        metadata_url=f"sqlite:///{tmp_path}/meta.db",
        data_dir=tmp_path / "var",
        hash_key=HASH_KEY,
        demo_profiles=0,
        admin_api_key=ADMIN_KEY,
        rate_limit_admin="1000000/minute",  # test_auth.py tests the limits themselves
    )


def keyed_settings(settings: Settings, **update: Any) -> Settings:
    """`settings` with a fresh credentials key and without the background backfill worker
    and trigger executor (tests drive those themselves), plus `update`."""
    from pydantic import SecretStr

    from sendflowr.secrets import generate_key

    base: dict[str, Any] = {
        "secret_key": SecretStr(generate_key()),
        "backfill_worker": False,
        "executor": False,
    }
    return settings.model_copy(update={**base, **update})


@contextmanager
def open_runtime(settings: Settings) -> Iterator[Runtime]:
    """A runtime over `settings`; afterwards its event-store database is dropped and every
    backend closed."""
    rt = Runtime.open(settings)
    try:
        yield rt
    finally:
        drop = getattr(rt.events, "drop_database", None)
        if drop is not None:
            drop()
        rt.close()


def klaviyo_webhook_tenant(
    rt: Runtime,
    tenant: str,
    name: str,
    secret: str,
    *,
    flow_secret: str | None = None,
    api_key: str = "pk_test",
) -> None:
    """A tenant with its Klaviyo account connected (a private key) and its webhook secret,
    and its flow-action secret when given: what the signed receivers need."""
    rt.metadata.create_tenant(Tenant(tenant, name, "UTC"))
    rt.accounts.connect(tenant, "klaviyo", "api_key", {"api_key": api_key})
    rt.accounts.set_webhook_secret(tenant, "klaviyo", secret)
    if flow_secret is not None:
        rt.accounts.set_webhook_secret(tenant, "klaviyo", flow_secret, flow=True)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    with open_runtime(settings) as rt:
        yield rt


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    from sendflowr.api import create_app

    with TestClient(create_app(runtime.settings, runtime=runtime), headers=ADMIN_HEADERS) as c:
        yield c


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy as sa

    admin = sa.create_engine(
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
    )
    name = f"sf_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
