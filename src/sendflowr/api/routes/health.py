"""GET /health: every backend's state."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter, Response

from sendflowr import __version__
from sendflowr.api.deps import RuntimeDep
from sendflowr.api.schemas import BackendState, HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut)
def health(runtime: RuntimeDep, response: Response) -> HealthOut:
    """`ok` when every backend is; 503 when one is down so load balancers stop routing here.
    `degraded` (still 200) when one works in a lesser mode: e.g. the feature cache while Redis
    is down (decisions are served, their features rebuilt from the event store)."""
    states = [BackendState(**asdict(h)) for h in runtime.health()]
    overall: Literal["ok", "degraded", "down"] = "ok"
    if any(s.state == "down" for s in states):
        overall = "down"
        response.status_code = 503
    elif any(s.state == "degraded" for s in states):
        overall = "degraded"
    return HealthOut(status=overall, version=__version__, backends=states)
