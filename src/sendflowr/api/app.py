"""The FastAPI app factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from sendflowr import __version__
from sendflowr.api.auth import Authenticated, AuthFirstMiddleware
from sendflowr.api.errors import document_errors, install_error_handlers
from sendflowr.api.fast_decide import DecideFastPath
from sendflowr.api.limits import BodyLimitMiddleware
from sendflowr.api.routes import (
    accounts,
    backfill,
    catalog,
    data,
    decisions,
    events,
    health,
    identity,
    intents,
    keys,
    metrics,
    mock,
    oauth,
    operator_keys,
    policies,
    schedules,
    tenants,
    timing,
    webhook_esp,
    webhooks,
)
from sendflowr.api.threads import set_delivery_threads
from sendflowr.metrics import DecisionLatencyMiddleware
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings, load_settings

log = logging.getLogger("sendflowr")


@asynccontextmanager
async def _workers(runtime: Runtime) -> AsyncIterator[None]:
    """What lives as long as the app: its worker threads' number, and the background work
    (the backfill worker and the trigger executor, each when enabled; at scale they run as
    their own processes)."""
    from sendflowr.connectors.klaviyo.manager import BackfillManager

    # the threads run_in_threadpool (every sync route, the decisions) runs on
    anyio.to_thread.current_default_thread_limiter().total_tokens = (
        runtime.settings.api_worker_threads
    )
    # the webhook deliveries' own (api/threads.py)
    set_delivery_threads(runtime.settings.api_delivery_threads)
    manager = BackfillManager(runtime) if runtime.settings.backfill_worker else None
    if manager is not None:
        manager.start()
    executor_task: asyncio.Task[object] | None = None
    stop = asyncio.Event()
    executor = None
    if runtime.settings.executor:
        from sendflowr.execution.executor import Executor, ExecutorOptions
        from sendflowr.execution.registry import dispatchers

        executor = Executor(
            runtime,
            dispatchers(runtime),
            options=ExecutorOptions(poll_seconds=runtime.settings.executor_poll_seconds),
        )
        executor_task = asyncio.create_task(executor.run(stop), name="sendflowr-executor")
    try:
        yield
    finally:
        stop.set()
        if executor_task is not None and executor is not None:
            await executor_task
            await executor.aclose()
        if manager is not None:
            await manager.stop()


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. With `runtime` given, the caller owns it; otherwise the app opens every
    backend from `settings` at start-up and closes them at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            async with _workers(runtime):
                yield
            return
        owned = Runtime.open(settings or load_settings())
        app.state.runtime = owned
        try:
            async with _workers(owned):
                yield
        finally:
            owned.close()

    app = FastAPI(
        title="SendFlowr",
        version=__version__,
        description="Send-time intelligence for email service providers.",
        lifespan=lifespan,
    )
    if runtime is not None:
        app.state.runtime = runtime
    install_error_handlers(app)
    document_errors(app)  # every 4xx/503 a route can answer, in the OpenAPI document
    # Each add wraps the ones before: a request passes DecisionLatency, AuthFirst, BodyLimit,
    # DecideFastPath, then the routes. The key is checked before anything looks at the body
    # (size, type, JSON), so a caller without a valid one gets 401 whatever it sends.
    # POST /timing/decide answered without the framework's per-request work (fast_decide.py)
    app.add_middleware(DecideFastPath)
    app.add_middleware(BodyLimitMiddleware)  # body caps (413) and JSON only (422)
    app.add_middleware(AuthFirstMiddleware)  # api/auth.py: 401/403/429 before the body is read
    app.add_middleware(DecisionLatencyMiddleware)  # sendflowr_decision_latency_seconds
    # Open: /health, the signed webhook receivers; /metrics and the OAuth router guard their
    # own routes (an operator key unless metrics_public; the callback is single-use state).
    for module in (health, metrics, oauth, webhooks):
        app.include_router(module.router)
    # The operator dashboard: its pages check the session themselves (dashboard/routes.py);
    # its scripts and styles are public files.
    from sendflowr.dashboard.routes import STATIC_DIR
    from sendflowr.dashboard.routes import router as dashboard_router

    app.include_router(dashboard_router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    # Everything else needs an API key (api/auth.py; docs/security.md has the scope table).
    for module in (
        tenants,
        keys,
        operator_keys,
        accounts,
        events,
        identity,
        timing,
        mock,
        backfill,
        data,
        decisions,
        webhook_esp,
        intents,
        schedules,
        policies,
        catalog,
    ):
        app.include_router(module.router, dependencies=[Authenticated])
    return app
