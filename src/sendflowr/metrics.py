"""Prometheus metrics, served at GET /metrics (to an operator key unless metrics_public).

Two kinds:
- counters and histograms updated where things happen (events accepted, stored, dead-lettered
  and archived, by source; decision latency by route), in this process's `REGISTRY`;
- gauges read from the stores at scrape time by collectors bound to a runtime (backfill
  progress, scheduler due/late triggers, consumer lag), so every replica reports the same
  shared state and nothing has to be kept in step.

Each process counts what it did itself: scrape the API and every consumer and worker.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from sendflowr.runtime import Runtime

log = logging.getLogger("sendflowr.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

EVENTS_ACCEPTED = Counter(
    "sendflowr_events_accepted",
    "Events (raw ESP items or canonical events) accepted from a source",
    ["source"],
    registry=REGISTRY,
)
EVENTS_STORED = Counter(
    "sendflowr_events_stored",
    "Events written to the event store by the pipeline (a re-delivered event counts again)",
    ["source"],
    registry=REGISTRY,
)
EVENTS_DEAD_LETTERED = Counter(
    "sendflowr_events_dead_lettered",
    "Items kept as dead letters (could not be normalised or validated)",
    ["source"],
    registry=REGISTRY,
)
ARCHIVE_ROWS = Counter(
    "sendflowr_archive_rows",
    "Raw payloads written to the raw archive",
    ["source"],
    registry=REGISTRY,
)
DECISION_LATENCY = Histogram(
    "sendflowr_decision_latency_seconds",
    "Time to answer a timing request, by route template and status",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)

FEATURE_CACHE_LOOKUPS = Counter(
    "sendflowr_feature_cache_lookups",
    "Profiles looked up in the feature cache: hit, miss (rebuilt from the event store) or "
    "unavailable (the cache was down: rebuilt from the event store, decision flagged degraded)",
    ["backend", "result"],
    registry=REGISTRY,
)
FEATURE_CACHE_FAILURES = Counter(
    "sendflowr_feature_cache_failures",
    "Feature-cache operations that failed or were skipped because the cache was down",
    ["backend", "operation"],
    registry=REGISTRY,
)


def observe_feature_lookups(backend: str, hits: int, misses: int, unavailable: int = 0) -> None:
    if hits:
        FEATURE_CACHE_LOOKUPS.labels(backend, "hit").inc(hits)
    if misses:
        FEATURE_CACHE_LOOKUPS.labels(backend, "miss").inc(misses)
    if unavailable:
        FEATURE_CACHE_LOOKUPS.labels(backend, "unavailable").inc(unavailable)


# Requests under these paths are timed into DECISION_LATENCY.
TIMED_PREFIXES = ("/timing",)


def observe_ingest(source: str, *, stored: int = 0, dead_lettered: int = 0) -> None:
    if stored:
        EVENTS_STORED.labels(source).inc(stored)
    if dead_lettered:
        EVENTS_DEAD_LETTERED.labels(source).inc(dead_lettered)


class DecisionLatencyMiddleware:
    """Pure ASGI (no per-request task, unlike BaseHTTPMiddleware): times /timing* requests and
    labels them by the matched route's template, so ids in paths do not explode the labels."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(TIMED_PREFIXES):
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            DECISION_LATENCY.labels(template, scope.get("method", "?"), str(status)).observe(
                time.perf_counter() - started
            )


class RuntimeCollector(Collector):
    """Gauges read from the shared stores when scraped. A store that cannot answer turns its
    `sendflowr_metrics_source_up` gauge to 0 instead of failing the scrape."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "sendflowr_metrics_source_up",
            "1 when the named source answered this scrape",
            labels=["source"],
        )
        for name, read in (
            ("backfill", self._backfill),
            ("scheduler", self._scheduler),
            ("consumer_lag", self._consumer_lag),
        ):
            try:
                families = list(read())
            except Exception as exc:  # a scrape must report, never fail
                log.warning("metrics: %s unavailable: %s", name, exc)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up

    def _backfill(self) -> Iterable[Metric]:
        import sqlalchemy as sa

        from sendflowr.storage.metadata.tables import backfill_jobs as j

        query = sa.select(
            j.c.status,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(j.c.total_units), 0),
            sa.func.coalesce(sa.func.sum(j.c.done_units), 0),
            sa.func.coalesce(sa.func.sum(j.c.failed_units), 0),
            sa.func.coalesce(sa.func.sum(j.c.events), 0),
        ).group_by(j.c.status)
        with self.runtime.metadata.engine.connect() as conn:
            rows = conn.execute(query).all()
        jobs = GaugeMetricFamily(
            "sendflowr_backfill_jobs", "Backfill jobs by status", labels=["status"]
        )
        total = GaugeMetricFamily(
            "sendflowr_backfill_units_total",
            "Units (metric x day) planned, over the jobs of a status",
            labels=["status"],
        )
        done = GaugeMetricFamily(
            "sendflowr_backfill_units_done",
            "Units finished successfully, over the jobs of a status",
            labels=["status"],
        )
        failed = GaugeMetricFamily(
            "sendflowr_backfill_units_failed", "Units that failed", labels=["status"]
        )
        events = GaugeMetricFamily(
            "sendflowr_backfill_events", "Events fetched and stored", labels=["status"]
        )
        for status, n, t, d, f, e in rows:
            jobs.add_metric([status], int(n))
            total.add_metric([status], int(t))
            done.add_metric([status], int(d))
            failed.add_metric([status], int(f))
            events.add_metric([status], int(e))
        return [jobs, total, done, failed, events]

    def _scheduler(self) -> Iterable[Metric]:
        import sqlalchemy as sa

        from sendflowr.storage.metadata.tables import triggers as t
        from sendflowr.storage.metadata.triggers import OPEN, minute_of

        now_minute = minute_of(datetime.now(UTC))
        late_before = now_minute - 60  # more than a minute past its trigger minute
        query = (
            sa.select(
                t.c.status,
                sa.func.count(),
                sa.func.coalesce(
                    sa.func.sum(sa.case((t.c.trigger_minute < late_before, 1), else_=0)), 0
                ),
            )
            .where(t.c.status.in_(OPEN), t.c.trigger_minute <= now_minute)
            .group_by(t.c.status)
        )
        with self.runtime.metadata.engine.connect() as conn:
            rows = conn.execute(query).all()
        counts = {str(s): (int(n), int(late)) for s, n, late in rows}
        due = GaugeMetricFamily(
            "sendflowr_scheduler_due_triggers",
            "Triggers whose minute has come and that are not sent yet",
            labels=["status"],
        )
        late = GaugeMetricFamily(
            "sendflowr_scheduler_late_triggers",
            "Triggers more than a minute past their trigger minute and not sent yet",
            labels=["status"],
        )
        for status in OPEN:
            n, overdue = counts.get(status, (0, 0))
            due.add_metric([status], n)
            late.add_metric([status], overdue)
        return [due, late]

    def _consumer_lag(self) -> Iterable[Metric]:
        """The bus's hook: a `consumer_lag()` method returning messages behind per
        (topic, partition) -- or one total -- for this deployment's consumer group; else the
        lag of the consumers running in this process (`sendflowr consumer`, whose module is
        loaded only there). The inline bus reports nothing."""
        read = getattr(self.runtime.bus, "consumer_lag", None)
        if read is None:
            consumers = sys.modules.get("sendflowr.consumer")
            read = getattr(consumers, "consumer_lag", None)
        if read is None:
            return []
        lag: Mapping[Any, int] | int = read()
        family = GaugeMetricFamily(
            "sendflowr_consumer_lag",
            "Messages the consumer group is behind the end of each partition",
            labels=["topic", "partition"],
        )
        if isinstance(lag, int):
            family.add_metric(["", ""], lag)
        else:
            for key, value in lag.items():
                topic, partition = key if isinstance(key, tuple) else (str(key), "")
                family.add_metric([str(topic), str(partition)], int(value))
        return [family]


def render(runtime: Runtime | None) -> bytes:
    """The exposition text: this process's counters plus the runtime's gauges."""
    out = generate_latest(REGISTRY)
    if runtime is not None:
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(RuntimeCollector(runtime))
        out += generate_latest(scrape)
    return out


def start_metrics_server(runtime: Runtime, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104
    """Serve /metrics from a process without the API (a consumer or worker), on a daemon
    thread: its own counters and, for a consumer, its partitions' lag."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(runtime))
    start_http_server(port, addr=host, registry=registry)


class _Merged(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()
        yield from RuntimeCollector(self.runtime).collect()
