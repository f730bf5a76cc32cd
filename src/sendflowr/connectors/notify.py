"""Tell a tenant's notification URL (a Slack incoming webhook, say) that a backfill ended."""

from __future__ import annotations

import logging

import httpx

from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.backfill import Job

log = logging.getLogger("sendflowr.notify")
TIMEOUT = httpx.Timeout(5.0)


def job_message(job: Job) -> str:
    what = "Backfill" if job.kind == "backfill" else "Incremental sync"
    span = f"{job.range_start:%Y-%m-%d} to {job.range_end:%Y-%m-%d}"
    if job.status == "completed":
        return f"SendFlowr: {what} for {job.tenant} completed ({span}): {job.events:,} events."
    reason = f": {job.error}" if job.error else ""
    return f"SendFlowr: {what} for {job.tenant} {job.status} ({span}){reason}"


async def notify_job(
    runtime: Runtime, job: Job, *, transport: httpx.AsyncBaseTransport | None = None
) -> bool:
    """POST {"text": ...} (Slack's incoming-webhook shape) when the job completed or failed.

    Best effort: a notification that cannot be delivered is logged, never raised.
    """
    if job.status not in ("completed", "failed"):
        return False
    tenant = runtime.metadata.find_tenant(job.tenant)
    url = (tenant.settings.get("notification_url") if tenant else None) or None
    if not isinstance(url, str):
        return False
    payload = {
        "text": job_message(job),
        "tenant": job.tenant,
        "job_id": job.id,
        "status": job.status,
        "events": job.events,
    }
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT, transport=transport) as client:
            response = await client.post(url, json=payload)
        if response.status_code >= 400:
            log.warning("notification for %s answered HTTP %s", job.tenant, response.status_code)
            return False
    except httpx.HTTPError as exc:
        log.warning("notification for %s failed: %s", job.tenant, type(exc).__name__)
        return False
    return True
