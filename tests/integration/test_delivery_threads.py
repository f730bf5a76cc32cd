"""Webhook deliveries wait for their durable write on threads of their own (api/threads.py),
so the API's worker threads stay free for decisions and reads meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.api.threads import delivery_limiter
from sendflowr.connectors.klaviyo.webhooks import sign
from sendflowr.intake import Accepted
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from tests.conftest import ADMIN_HEADERS, keyed_settings, klaviyo_webhook_tenant, open_runtime
from tests.factories import klaviyo_webhook_item

TENANT = "acme"
SECRET = "whsec_threads_0123456789abcdef"


@pytest.fixture
def app_rt(settings: Settings) -> Iterator[tuple[TestClient, Runtime]]:
    configured = keyed_settings(
        settings,
        api_worker_threads=1,  # one: a delivery holding it would stall every read
        api_delivery_threads=3,
    )
    with open_runtime(configured) as rt:
        klaviyo_webhook_tenant(rt, TENANT, "Acme", SECRET)
        with TestClient(create_app(configured, runtime=rt), headers=ADMIN_HEADERS) as client:
            yield client, rt


def _delivery(n: int) -> tuple[bytes, dict[str, str]]:
    at = datetime.now(UTC) - timedelta(minutes=5)
    item = klaviyo_webhook_item(f"evt{n}", f"prof{n}", {"email": f"p{n}@example.com"}, at)
    body = orjson.dumps({"data": [item]})
    ts = str(int(time.time()))
    return body, {
        "Content-Type": "application/json",
        "Klaviyo-Timestamp": ts,
        "Klaviyo-Signature": sign(SECRET, body, ts),
        "Klaviyo-Webhook-Id": f"hook{n}",
    }


def test_deliveries_waiting_for_their_write_leave_the_worker_threads_free(
    app_rt: tuple[TestClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rt = app_rt
    assert client.portal is not None
    assert client.portal.call(lambda: delivery_limiter().total_tokens) == 3
    release = threading.Event()
    waiting = threading.Semaphore(0)
    keep = rt.intake.keep

    def slow_keep(accepted: Accepted) -> None:  # a group write that takes its time
        waiting.release()
        assert release.wait(30)
        keep(accepted)

    monkeypatch.setattr(rt.intake, "keep", slow_keep)
    answers: list[Any] = []

    def deliver(n: int) -> None:
        body, headers = _delivery(n)
        answers.append(client.post(f"/api/webhook/klaviyo/{TENANT}", content=body, headers=headers))

    senders = [threading.Thread(target=deliver, args=(n,)) for n in (1, 2)]
    for t in senders:
        t.start()
    try:
        for _ in senders:  # both deliveries are waiting for their write, each on a thread
            assert waiting.acquire(timeout=30)
        read: list[int] = []
        reader = threading.Thread(
            target=lambda: read.append(client.get("/api/tenants").status_code)
        )
        reader.start()
        reader.join(20)
        assert read == [200]  # answered on the one worker thread while the deliveries wait
    finally:
        release.set()
        for t in senders:
            t.join(30)
    assert sorted(a.status_code for a in answers) == [200, 200]
    assert [a.json()["accepted"] for a in answers] == [1, 1]
    assert rt.events.count_events() == 2
