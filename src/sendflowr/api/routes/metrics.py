"""GET /metrics: Prometheus exposition. It needs an operator key (Prometheus sends it with
`authorization: {credentials: ...}` in the scrape config) unless `metrics_public` is set for a
private scrape network; it holds counts per tenant, never event data."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from sendflowr.api.auth import metrics_guard
from sendflowr.api.deps import RuntimeDep
from sendflowr.metrics import CONTENT_TYPE, render

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, dependencies=[Depends(metrics_guard)])
async def metrics(runtime: RuntimeDep) -> Response:
    """Counters (events accepted, stored, dead-lettered, archived; decision latency) and
    gauges read at scrape time (backfill progress, due and late triggers, consumer lag)."""
    body = await run_in_threadpool(render, runtime)
    return Response(body, media_type=CONTENT_TYPE)
