"""The API's worker threads: as many as the settings say, whatever anyio's default."""

from __future__ import annotations

import anyio.to_thread
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.settings import Settings


def _tokens() -> float:
    return anyio.to_thread.current_default_thread_limiter().total_tokens


def test_the_app_runs_blocking_work_on_the_configured_threads(settings: Settings) -> None:
    for threads in (3, 17):
        configured = settings.model_copy(update={"api_worker_threads": threads})
        with TestClient(create_app(configured)) as client:
            assert client.portal is not None
            assert client.portal.call(_tokens) == threads
            assert client.get("/health").status_code == 200
