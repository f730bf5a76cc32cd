"""Fixtures for the Klaviyo simulator: one small brand per session, a fresh app per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from sendflowr.klaviyo_sim import Brand, SimServerConfig, build_brand, create_sim_app
from sendflowr.klaviyo_sim.app import SimApp

API_KEY = "pk_sim_test_key"
REVISION = "2026-07-15"
HEADERS = {"Authorization": f"Klaviyo-API-Key {API_KEY}", "revision": REVISION}
START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday


def pytest_configure(config: pytest.Config) -> None:
    # tests/conftest.py lets tests marked `network` open sockets; register the marker here
    # (pyproject's list does not name it yet).
    config.addinivalue_line("markers", "network: opens real sockets on 127.0.0.1")


class FakeClock:
    """Unix seconds that move only when told."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def small_config(**overrides: Any) -> SimServerConfig:
    values: dict[str, Any] = {
        "profiles": 200,
        "days": 14,
        "start": START,
        "api_keys": (API_KEY,),
        "rate_limits": False,
    }
    values.update(overrides)
    return SimServerConfig(**values)


@pytest.fixture(scope="session")
def brand() -> Brand:
    """Shared and never mutated: tests that add events build their own brand."""
    return build_brand(small_config().sim_config())


MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(brand: Brand) -> Iterator[MakeClient]:
    """A TestClient over a fresh app (shared brand unless `fresh_brand=True`)."""
    clients: list[TestClient] = []

    def make(
        *, fresh_brand: bool = False, clock: Callable[[], float] | None = None, **overrides: Any
    ) -> TestClient:
        cfg = small_config(**overrides)
        kwargs: dict[str, Any] = {}
        if clock is not None:
            kwargs["clock"] = clock
        app = create_sim_app(cfg, brand=None if fresh_brand else brand, **kwargs)
        client = TestClient(app, base_url="http://sim.test")
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    return make_client()


def sim_app(client: TestClient) -> SimApp:
    app = client.app
    assert isinstance(app, SimApp)
    return app
