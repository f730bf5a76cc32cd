"""GET /metrics: Prometheus exposition (unauthenticated, like /health: bind it to a private
network or let the scraper's network policy guard it; it holds counts, never event data)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from sendflowr.api.deps import RuntimeDep
from sendflowr.metrics import CONTENT_TYPE, render

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    """Counters (events accepted, stored, dead-lettered, archived; decision latency) and
    gauges read at scrape time (backfill progress, due and late triggers, consumer lag)."""
    body = await run_in_threadpool(render, runtime)
    return Response(body, media_type=CONTENT_TYPE)
