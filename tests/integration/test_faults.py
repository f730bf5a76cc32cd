"""Infrastructure faults the API must ride out, on real servers.

Redis (the feature cache) stopped and restarted: a private redis-server on a free port (with an
append-only file, so the restarted server still holds the entries cached before the outage -
the case where a stale profile could be served). While it is down decisions are answered
(features rebuilt from the event store, the explanation flagged degraded), /health says
degraded and ingest is accepted and durable; once it is back the service recovers by itself
and no decision reads a profile that missed the events ingested during the outage.

PostgreSQL (the metadata store) connections dropped: the database refuses connections and its
backends are terminated; the API answers 503 with Retry-After (never 500) and recovers by
itself once connections are allowed again.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.identity.hashing import hash_email
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from tests.conftest import ADMIN_HEADERS, HASH_KEY, POSTGRES_URL

KEY = HASH_KEY.encode()
ANN = "ann@faults.test"
BOB = "bob@faults.test"
PREFIX = "sf:faults:"


def _wait(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def _events(
    start: int, n: int, event_type: str, hours_ago: int, email: str = ANN
) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    return {
        "events": [
            {
                "tenant": "acme",
                "esp": "klaviyo",
                "esp_event_id": f"fault-{start + i}",
                "event_type": event_type,
                "occurred_at": (at + timedelta(minutes=i)).isoformat(),
                "identifiers": {"email_hash": hash_email(KEY, email)},
            }
            for i in range(n)
        ]
    }


def _decide(api: TestClient, email: str = ANN) -> dict[str, Any]:
    """Decide for a person (Ann); returns the stored explanation (evidence and words)."""
    r = api.post(
        "/timing/decide", json={"tenant": "acme", "identifier": {"type": "email", "value": email}}
    )
    assert r.status_code == 200, r.text
    ref = r.json()["explanation_ref"]
    e = api.get(f"/timing/explanations/{ref}", params={"tenant": "acme"})
    assert e.status_code == 200, e.text
    out: dict[str, Any] = e.json()
    return out


# --- Redis ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server (never the shared one): an append-only file fsynced on every write,
    so what it held survives a SIGKILL and comes back on restart."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory),
             "--daemonize", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            _wait(up, 15, f"redis-server on port {self.port}")
        finally:
            client.close()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(_free_port(), tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.signal(signal.SIGCONT)  # in case a test left it stopped
        server.kill()


def _state(api: TestClient) -> tuple[int, str, str]:
    r = api.get("/health")
    cache = next(b for b in r.json()["backends"] if b["port"] == "feature_cache")
    return r.status_code, r.json()["status"], cache["state"]


def _on_redis(settings: Settings, server: RedisServer, *, rate_limits_in_redis: bool) -> Settings:
    update: dict[str, Any] = {
        "feature_cache_url": f"redis://127.0.0.1:{server.port}/0",
        "feature_cache_prefix": PREFIX,
        "feature_cache_retry_seconds": 0.2,
    }
    if not rate_limits_in_redis:
        # Rate-limit counters default to the feature cache's Redis; this test is about the
        # feature cache (see test_a_redis_outage_never_fails_authenticated_requests).
        update["rate_limit_storage_url"] = "memory://"
    return settings.model_copy(update=update)


@pytest.mark.redis
@pytest.mark.timeout(180)
def test_redis_stopped_and_restarted(settings: Settings, private_redis: RedisServer) -> None:
    import redis

    settings = _on_redis(settings, private_redis, rate_limits_in_redis=False)
    rt = Runtime.open(settings)
    rt.metadata.ensure_tenant(Tenant("acme", "Acme", "UTC"))
    raw = redis.Redis(port=private_redis.port, socket_timeout=1)
    try:
        with TestClient(create_app(settings, runtime=rt), headers=ADMIN_HEADERS) as api:
            r = api.post("/api/events", json=_events(0, 3, "opened", hours_ago=48))
            assert r.status_code < 300, r.text
            r = api.post("/api/events", json=_events(10, 2, "opened", 40, email=BOB))
            assert r.status_code < 300, r.text
            first = _decide(api)
            assert first["evidence"]["engagements"] == 3
            assert "degraded" not in first["evidence"]
            bob = _decide(api, BOB)["universal_id"]
            assert _state(api) == (200, "ok", "ok")
            ann_key = f"{PREFIX}acme:p:{first['universal_id']}".encode()
            bob_key = f"{PREFIX}acme:p:{bob}".encode()
            assert set(raw.scan_iter(match=PREFIX + "acme:p:*")) == {ann_key, bob_key}

            # -- Redis dies: decisions still answered, flagged; ingest accepted and durable --
            private_redis.kill()
            down = _decide(api)
            assert down["evidence"]["engagements"] == 3
            assert down["evidence"]["degraded"] == ["feature_cache"]
            assert "feature cache was unavailable" in down["summary"]
            assert _state(api) == (200, "degraded", "degraded")
            r = api.post("/api/events", json=_events(100, 5, "clicked", hours_ago=24))
            assert r.status_code < 300, r.text
            assert rt.events.count_events("acme") == 10  # Ann 3 + 5, Bob 2
            during = _decide(api)  # rebuilt from the store: the new clicks count already
            assert during["evidence"]["engagements"] == 8
            assert during["evidence"]["degraded"] == ["feature_cache"]
            erased = api.delete(f"/api/identity/{bob}", params={"tenant": "acme"})
            assert erased.status_code == 200, erased.text  # erasure works while Redis is down

            # -- Redis is back, with the profile cached before the outage (3 engagements) --
            private_redis.start()
            assert raw.get(ann_key) is not None  # the stale profile survived the restart
            _wait(lambda: _state(api) == (200, "ok", "ok"), 15, "the feature cache to recover")
            assert raw.get(bob_key) is None  # the skipped erasure was re-sent, not just hidden
            after = _decide(api)
            assert "degraded" not in after["evidence"]
            assert after["evidence"]["engagements"] == 8  # not the stale 3
            cached = rt.features.get_many("acme", [after["universal_id"]])
            assert cached[after["universal_id"]].engagements == 8
            assert not rt.features.degraded()

            # -- a hung Redis (timeouts, not refusals) is an outage too --
            private_redis.signal(signal.SIGSTOP)
            hung = _decide(api)
            assert hung["evidence"]["engagements"] == 8
            assert hung["evidence"]["degraded"] == ["feature_cache"]
            assert _state(api)[1:] == ("degraded", "degraded")
            private_redis.signal(signal.SIGCONT)
            _wait(lambda: _state(api) == (200, "ok", "ok"), 15, "recovery from the pause")
            assert "degraded" not in _decide(api)["evidence"]
    finally:
        raw.close()
        rt.events.drop_database()  # type: ignore[attr-defined]
        rt.close()


# --- PostgreSQL ----------------------------------------------------------------------------------


def _admin() -> sa.Engine:
    return sa.create_engine(
        POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
    )


def _cut(admin: sa.Engine, database: str, allow: bool) -> None:
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )


@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_postgres_connections_dropped(settings: Settings, postgres_url: str) -> None:
    settings = settings.model_copy(update={"metadata_url": postgres_url, "executor": False})
    database = postgres_url.rsplit("/", 1)[1]
    rt = Runtime.open(settings)
    rt.metadata.ensure_tenant(Tenant("acme", "Acme", "UTC"))
    admin = _admin()
    try:
        with TestClient(create_app(settings, runtime=rt), headers=ADMIN_HEADERS) as api:
            assert api.post("/api/events", json=_events(0, 3, "opened", 48)).status_code < 300
            assert _decide(api)["evidence"]["engagements"] == 3
            assert api.get("/api/tenants/acme").status_code == 200

            _cut(admin, database, allow=False)  # pooled connections die, new ones are refused
            for _ in range(3):
                for r in (
                    api.post("/timing/decide", json={
                        "tenant": "acme", "identifier": {"type": "email", "value": ANN}}),
                    api.post("/api/events", json=_events(50, 2, "clicked", 24)),
                    api.get("/api/tenants/acme"),
                ):  # fmt: skip
                    assert r.status_code == 503, (r.request.url, r.status_code, r.text)
                    assert int(r.headers["Retry-After"]) > 0
                    assert r.json()["detail"][0]["type"] == "unavailable"
                _cut(admin, database, allow=False)  # and again, while it is gone
            health = api.get("/health")
            assert health.status_code == 503
            meta = next(b for b in health.json()["backends"] if b["port"] == "metadata")
            assert meta["state"] == "down"

            _cut(admin, database, allow=True)  # back: the pool reconnects by itself
            assert api.get("/api/tenants/acme").status_code == 200
            assert api.post("/api/events", json=_events(50, 2, "clicked", 24)).status_code < 300
            assert _decide(api)["evidence"]["engagements"] == 5
            assert api.get("/health").json()["status"] == "ok"
    finally:
        _cut(admin, database, allow=True)
        admin.dispose()
        rt.events.drop_database()  # type: ignore[attr-defined]
        rt.close()


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_a_redis_outage_never_fails_authenticated_requests(
    settings: Settings, private_redis: RedisServer
) -> None:
    """The default configuration: nothing but the feature cache's URL points at Redis."""
    settings = _on_redis(settings, private_redis, rate_limits_in_redis=True)
    rt = Runtime.open(settings)
    rt.metadata.ensure_tenant(Tenant("acme", "Acme", "UTC"))
    try:
        with TestClient(
            create_app(settings, runtime=rt),
            headers=ADMIN_HEADERS,
            raise_server_exceptions=False,
        ) as api:
            assert api.post("/api/events", json=_events(0, 3, "opened", 48)).status_code < 300
            private_redis.kill()
            down = _decide(api)
            assert down["evidence"]["degraded"] == ["feature_cache"]
    finally:
        rt.events.drop_database()  # type: ignore[attr-defined]
        rt.close()


def test_a_lost_database_connection_that_escapes_a_store_is_a_503(runtime: Runtime) -> None:
    """The stores turn a lost connection into a 503 themselves; the API's last line catches one
    that escaped (raised here by routes added for the test), and only those: other database
    errors stay 500s."""
    import psycopg
    from sqlalchemy import exc as sa_exc

    app = create_app(runtime.settings, runtime=runtime)

    def lost() -> None:
        raise sa_exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed"))

    def invalidated() -> None:
        raise sa_exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)

    def raw_driver() -> None:
        raise psycopg.OperationalError("connection refused")

    def bug() -> None:
        raise sa_exc.ProgrammingError("SELEC 1", {}, Exception("syntax error"))

    for path, fn in (("/t/lost", lost), ("/t/inv", invalidated), ("/t/raw", raw_driver),
                     ("/t/bug", bug)):  # fmt: skip
        app.add_api_route(path, fn)
    with TestClient(app, raise_server_exceptions=False) as api:
        for path in ("/t/lost", "/t/inv", "/t/raw"):
            r = api.get(path)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["Retry-After"] == "5"
            assert r.json()["detail"][0]["type"] == "unavailable"
            assert "Traceback" not in r.text
        r = api.get("/t/bug")
        assert r.status_code == 500
        assert r.json()["detail"][0]["type"] == "internal_error"
