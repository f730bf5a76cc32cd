"""docker-compose.yml and the Dockerfile cannot run here (no Docker): hold them to their
rules instead. Every long-running service has a health check, every published port is bound
to 127.0.0.1, every SENDFLOWR_* variable names a real setting, and the backends are the
scale ones."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sendflowr.settings import Settings, parse_bus_url, parse_cache_url, parse_event_store_url

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the default; ${VAR:?message} with a stand-in value."""
    return re.sub(
        r"\$\{[A-Z0-9_]+(?::([-?])([^}]*))?\}",
        lambda m: m.group(2) if m.group(1) == "-" else "set-by-the-operator",
        value,
    )


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def test_the_whole_scale_deployment_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "clickhouse", "postgres", "redis", "api", "consumer", "worker"} <= set(
        services
    )
    kafka = _env(services["kafka"])
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    assert not any("zookeeper" in name for name in services)
    for name in ("api", "consumer", "worker"):
        assert services[name]["build"] == "."


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, name
        assert check.get("test"), name
        assert not check.get("disable"), name


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # the long form
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
            published += 1
    assert published >= 5


def test_every_sendflowr_variable_is_a_setting_and_the_urls_parse(
    compose: dict[str, Any],
) -> None:
    fields = set(Settings.model_fields)
    seen = 0
    for name, service in compose["services"].items():
        for key in _env(service):
            if not key.startswith("SENDFLOWR_"):
                continue
            seen += 1
            assert key.removeprefix("SENDFLOWR_").lower() in fields, (name, key)
    assert seen >= 10
    env = _env(compose["services"]["api"])
    store = parse_event_store_url(env["SENDFLOWR_EVENT_STORE_URL"])
    assert (store.kind, store.host, store.password) == ("clickhouse", "clickhouse", "sendflowr")
    assert env["SENDFLOWR_METADATA_URL"].startswith("postgresql://")
    assert parse_bus_url(env["SENDFLOWR_BUS_URL"]).kind == "kafka"
    assert parse_cache_url(env["SENDFLOWR_FEATURE_CACHE_URL"]).kind == "redis"


def test_consumer_and_worker_wait_for_a_healthy_api(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("consumer", "worker"):
        assert services[name]["depends_on"]["api"]["condition"] == "service_healthy"
    for backend in ("kafka", "clickhouse", "postgres", "redis"):
        assert services["api"]["depends_on"][backend]["condition"] == "service_healthy"


def test_the_image_installs_pinned_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "pip install -c constraints.txt ." in text
    assert "\nUSER sendflowr" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)
