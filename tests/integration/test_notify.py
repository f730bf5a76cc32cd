"""A tenant's notification URL hears when a backfill completes or fails, never a crash."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import orjson

from sendflowr.connectors.notify import notify_job
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.store import Tenant


def test_notification_on_completed_and_failed_only(runtime: Runtime) -> None:
    runtime.metadata.create_tenant(
        Tenant("brand", "Brand", "UTC", settings={"notification_url": "https://hooks.test/x"})
    )
    received: list[dict[str, object]] = []

    def hook(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == "https://hooks.test/x"
        received.append(orjson.loads(request.content))
        return httpx.Response(200)

    transport = httpx.MockTransport(hook)
    now = datetime.now(UTC)
    job = runtime.backfills.create_job("brand", "klaviyo", "backfill", now - timedelta(days=1), now)
    done = runtime.backfills.finish_job(job.id, "completed")
    assert asyncio.run(notify_job(runtime, done, transport=transport))
    assert received[-1]["status"] == "completed"
    assert "completed" in str(received[-1]["text"])

    failed = runtime.backfills.finish_job(job.id, "failed", "Klaviyo: HTTP 500")
    assert asyncio.run(notify_job(runtime, failed, transport=transport))
    assert "Klaviyo: HTTP 500" in str(received[-1]["text"])

    cancelled = runtime.backfills.finish_job(job.id, "cancelled")
    assert not asyncio.run(notify_job(runtime, cancelled, transport=transport))
    assert len(received) == 2


def test_an_unreachable_notification_url_is_logged_not_raised(runtime: Runtime) -> None:
    runtime.metadata.create_tenant(
        Tenant("brand", "Brand", "UTC", settings={"notification_url": "https://hooks.test/x"})
    )

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    now = datetime.now(UTC)
    job = runtime.backfills.create_job("brand", "klaviyo", "backfill", now - timedelta(days=1), now)
    done = runtime.backfills.finish_job(job.id, "completed")
    assert not asyncio.run(notify_job(runtime, done, transport=httpx.MockTransport(down)))
    refused = httpx.MockTransport(lambda r: httpx.Response(500))
    assert not asyncio.run(notify_job(runtime, done, transport=refused))
