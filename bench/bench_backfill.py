"""Klaviyo backfill benchmark: throughput against the simulator with Klaviyo's real limits.

The simulator (`sendflowr klaviyo-sim`, rate limits on, scale 1) runs as a separate process;
the backfill runs in this one with an embedded runtime (chDB + SQLite) in a temporary
directory, exactly as a tenant's backfill does: the tenant's account is connected with the
simulator's URL, one job covers the whole simulated history, and `BackfillRunner` plans it into
(metric, UTC day) units and runs them `concurrency` at a time with pages of 1,000 events.

Each run uses its own API key (the simulator limits per credential, over a sliding minute), so
a run never inherits the previous run's window. Measured per run:
- wall time of `BackfillRunner.run` (planning, catalogue and every unit);
- events stored (`count_events`), against the brand's events;
- GET /api/events requests and 429s, from the simulator's own counters (GET /_sim/stats);
- the request times as sent (a recording transport), for the busiest sliding 60 s and the
  rate over the middle 80% of the run (steady state, without the start and the tail);
- CPU seconds of the simulator process and of this process over the run, and where this
  process's time goes: worker-seconds in `events_page` and in the rate limiter (the fetchers,
  on the event loop), and in the runner's processing thread (batches of pages): time in
  `normalize_records`, the raw archive's writes, `bus.publish` (wall, and CPU of that thread) and
  the per-page checkpoints, CPU of the event loop's thread.
Figures: requests/minute and events/s, each as a ratio of the ceiling that Klaviyo's limit for
GET /api/events sets (steady requests/minute, and that times the page size). Each concurrency
level runs once; the fastest runs `--repeats` times in all and medians are reported.

Two fetch-only runs then separate the client's pacing from the cost of the pipeline: the same
client and limiter read the same (metric, day) units over and over for `--fetch-seconds`, and
throw the pages away; once with the backfill's page size, once with tiny pages (cheap enough
that the limit, not the CPU, binds). Accepted requests a minute over whole minutes, the busiest
sliding 60 s and every 429 are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import cProfile
import gc
import io
import itertools
import os
import pstats
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, median, write_result
from sendflowr.connectors.klaviyo import backfill as backfill_module
from sendflowr.connectors.klaviyo.backfill import (
    ENGAGEMENT_METRICS,
    BackfillRunner,
    RunnerOptions,
    day_range,
)
from sendflowr.connectors.klaviyo.backfill import days as backfill_days
from sendflowr.connectors.klaviyo.client import (
    EVENTS_PATH,
    ApiKeyAuth,
    EventsPage,
    KlaviyoClient,
    KlaviyoError,
)
from sendflowr.connectors.klaviyo.constants import RATE_LIMITS
from sendflowr.connectors.klaviyo.factory import account_auth, api_url
from sendflowr.connectors.klaviyo.normalize import EVENT_FIELDS, PROFILE_FIELDS
from sendflowr.connectors.klaviyo.normalize_wire import normalize_records
from sendflowr.connectors.klaviyo.ratelimit import RateLimiter
from sendflowr.runtime import Runtime
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant

TENANT = "bench"
ESP = "klaviyo"
OPERATION = "GET /api/events"
LIMIT = RATE_LIMITS[("GET", EVENTS_PATH)]
HASH_KEY = "bench-hash-key"


# --- the simulator, in its own process -----------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sim:
    url: str
    process: subprocess.Popen[bytes]
    keys: list[str]
    build_seconds: float
    brand: dict[str, Any]
    rss_mib: float

    def stats(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/_sim/stats", timeout=30)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def reset_stats(self) -> None:
        httpx.delete(f"{self.url}/_sim/stats", timeout=30).raise_for_status()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)


@contextlib.contextmanager
def simulator(profiles: int, days: int, keys: int, log: Path) -> Iterator[Sim]:
    port = _free_port()
    api_keys = [f"pk_sim_bench_{i}_{secrets.token_hex(8)}" for i in range(keys)]
    cmd = [sys.executable, "-m", "sendflowr", "klaviyo-sim", "--port", str(port)]
    cmd += ["--profiles", str(profiles), "--days", str(days)]
    for key in api_keys:
        cmd += ["--api-key", key]
    url = f"http://127.0.0.1:{port}"
    began = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the simulator exited ({process.returncode}): see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError("the simulator did not answer within 600 s")
            with contextlib.suppress(httpx.TransportError):
                r = httpx.get(f"{url}/_sim/brand", timeout=30)
                if r.status_code == 200:
                    brand = r.json()
                    break
            time.sleep(0.2)
        build = time.perf_counter() - began
        status = Path(f"/proc/{process.pid}/status").read_text()
        rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
        yield Sim(url, process, api_keys, build, brand, rss)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- one backfill ---------------------------------------------------------------------------


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The ordinary transport, noting when each GET /api/events is sent and its status."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[float, int]] = []  # (monotonic time sent, status)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        at = time.monotonic()
        response = await super().handle_async_request(request)
        if request.method == "GET" and request.url.path == EVENTS_PATH:
            self.sent.append((at, response.status_code))
        return response

    def times(self, ok_only: bool = False) -> list[float]:
        return sorted(t for t, status in self.sent if not ok_only or 200 <= status < 300)

    def statuses(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(s for _, s in self.sent).items())}


@dataclass
class Breakdown:
    """Where a backfill's time goes (measured around the runner's own calls)."""

    fetch_s: float = 0.0  # worker-seconds in client.events_page (limiter, network, JSON parse)
    limiter_wait_s: float = 0.0  # worker-seconds waiting for the client's rate limiter
    normalize_s: float = 0.0  # normalize_records, in the runner's processing thread, wall
    publish_s: float = 0.0  # bus.publish (identity, chDB insert, features), wall, in a thread
    publish_cpu_s: float = 0.0  # the same, CPU of the publishing thread
    loop_thread_cpu_s: float = 0.0  # CPU of the event loop's thread over the run
    gc_s: float = 0.0  # the cyclic GC's collections (any thread), wall
    gc_full: float = 0.0  # of which full (generation 2) collections: how many
    archive_s: float = 0.0  # the raw archive's writes (Parquet, fsync), wall
    checkpoint_s: float = 0.0  # page_done (the unit's checkpoint in the metadata store), wall

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in vars(self).items()}


class TimedLimiter(RateLimiter):
    def __init__(self, breakdown: Breakdown) -> None:
        super().__init__()
        self._breakdown = breakdown

    async def acquire(self, method: str, path: str) -> None:
        began = time.perf_counter()
        await super().acquire(method, path)
        self._breakdown.limiter_wait_s += time.perf_counter() - began


class TimedClient(KlaviyoClient):
    breakdown: Breakdown

    async def events_page(self, **kwargs: Any) -> EventsPage:
        began = time.perf_counter()
        try:
            return await super().events_page(**kwargs)
        finally:
            self.breakdown.fetch_s += time.perf_counter() - began


@contextlib.contextmanager
def gc_timed(breakdown: Breakdown) -> Iterator[None]:
    """Add the cyclic GC's collections to `breakdown` (gc.callbacks)."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            breakdown.gc_s += time.perf_counter() - started.pop()
            breakdown.gc_full += info["generation"] == 2

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)


@contextlib.contextmanager
def timed_calls(rt: Runtime, breakdown: Breakdown) -> Iterator[None]:
    """Time normalize_records (as the runner looks it up) and bus.publish, then restore them."""
    original_normalize = normalize_records
    original_publish = rt.bus.publish
    original_page_done = rt.backfills.page_done
    archive = rt.archive
    original_archive_write = archive.write if archive is not None else None

    def normalize(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original_normalize(*args, **kwargs)
        finally:
            breakdown.normalize_s += time.perf_counter() - began

    def publish(*args: Any, **kwargs: Any) -> Any:
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            return original_publish(*args, **kwargs)
        finally:
            breakdown.publish_s += time.perf_counter() - began
            breakdown.publish_cpu_s += time.thread_time() - cpu

    def page_done(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original_page_done(*args, **kwargs)
        finally:
            breakdown.checkpoint_s += time.perf_counter() - began

    def archive_write(*args: Any, **kwargs: Any) -> Any:
        assert original_archive_write is not None
        began = time.perf_counter()
        try:
            return original_archive_write(*args, **kwargs)
        finally:
            breakdown.archive_s += time.perf_counter() - began

    # The runner calls the name its module imported: replace it there.
    setattr(backfill_module, "normalize_records", normalize)  # noqa: B010
    setattr(rt.bus, "publish", publish)  # noqa: B010 - an instance attribute shadows the method
    setattr(rt.backfills, "page_done", page_done)  # noqa: B010
    if archive is not None:
        setattr(archive, "write", archive_write)  # noqa: B010
    try:
        yield
    finally:
        setattr(backfill_module, "normalize_records", original_normalize)  # noqa: B010
        delattr(rt.bus, "publish")
        delattr(rt.backfills, "page_done")
        if archive is not None:
            delattr(archive, "write")


@dataclass
class RunResult:
    concurrency: int
    seconds: float
    stored: int
    job_status: str
    requests: int
    rejected_429: int
    events_served: int
    busiest_60s: int
    steady_req_per_min: float
    sim_cpu_s: float
    backfill_cpu_s: float
    statuses: dict[str, int]
    breakdown: Breakdown

    @property
    def req_per_min(self) -> float:
        return self.requests / self.seconds * 60

    @property
    def events_per_s(self) -> float:
        return self.stored / self.seconds


def _busiest_window(times: list[float], window: float = 60.0) -> int:
    """The most requests sent within any `window` seconds (a sliding window, as the limit)."""
    return max(
        (bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)),
        default=0,
    )


def _rate(times: list[float], lo: float, hi: float) -> float:
    """Requests/minute sent in [lo, hi)."""
    n = bisect.bisect_left(times, hi) - bisect.bisect_left(times, lo)
    return n / (hi - lo) * 60 if hi > lo else 0.0


def _steady_rate(times: list[float], start: float, end: float) -> float:
    """Requests/minute over the middle 80% of the run."""
    return _rate(times, start + 0.1 * (end - start), start + 0.9 * (end - start))


def _settings(root: Path, chdb_dir: Path) -> Settings:
    # chDB opens one data directory per process: every run shares one, with its own database.
    return Settings(
        event_store_url=f"chdb://{chdb_dir}?database=b_{uuid.uuid4().hex[:10]}",
        metadata_url=f"sqlite:///{root}/meta.db",
        data_dir=root,
        secret_key=generate_key(),
        hash_key=HASH_KEY,
        backfill_worker=False,
        demo_profiles=0,
    )


def history_range(brand: dict[str, Any]) -> tuple[datetime, datetime]:
    """[start, end) covering every event of the brand: whole UTC days around its history."""
    first = datetime.fromisoformat(brand["first_datetime"]).astimezone(UTC)
    last = datetime.fromisoformat(brand["last_datetime"]).astimezone(UTC)
    start = first.replace(hour=0, minute=0, second=0, microsecond=0)
    end = last.replace(microsecond=0) + timedelta(seconds=1)
    return start, end


def run_once(
    sim: Sim,
    key: str,
    concurrency: int,
    page_size: int,
    chdb_dir: Path,
    profile: Path | None = None,
) -> RunResult:
    root = Path(tempfile.mkdtemp(prefix="sf-bench-backfill-"))
    rt = Runtime.open(_settings(root, chdb_dir))
    try:
        rt.metadata.create_tenant(Tenant(TENANT, "Bench", "UTC"))
        rt.accounts.connect(TENANT, ESP, "api_key", {"api_key": key}, api_url=sim.url)
        start, end = history_range(sim.brand)
        job = rt.backfills.create_job(TENANT, ESP, "backfill", start, end)
        transport = RecordingTransport()
        breakdown = Breakdown()

        def client(tenant: str) -> KlaviyoClient:
            made = TimedClient(
                account_auth(rt, tenant),
                base_url=api_url(rt, tenant),
                transport=transport,
                rate_limiter=TimedLimiter(breakdown),
            )
            made.breakdown = breakdown
            return made

        runner = BackfillRunner(
            rt,
            RunnerOptions(concurrency=concurrency, page_size=page_size),
            client_factory=client,
        )
        claimed = runner.claim(job.id)
        assert claimed is not None
        sim.reset_stats()
        sim_cpu, own_cpu = sim.cpu_seconds(), cpu_seconds(os.getpid())
        profiler = cProfile.Profile() if profile else None
        with timed_calls(rt, breakdown), gc_timed(breakdown):
            began, loop_cpu = time.monotonic(), time.thread_time()
            if profiler is not None:
                profiler.enable()
            final = asyncio.run(runner.run(claimed))
            if profiler is not None:
                profiler.disable()
            ended = time.monotonic()
            breakdown.loop_thread_cpu_s = time.thread_time() - loop_cpu
        sim_cpu, own_cpu = sim.cpu_seconds() - sim_cpu, cpu_seconds(os.getpid()) - own_cpu
        stats = sim.stats()
        if profiler is not None and profile is not None:
            profiler.dump_stats(profile)
        op = stats["operations"].get(OPERATION, {})
        return RunResult(
            concurrency=concurrency,
            seconds=ended - began,
            stored=rt.events.count_events(TENANT),
            job_status=final.status if final.error is None else f"{final.status}: {final.error}",
            requests=int(op.get("requests", 0)),
            rejected_429=int(op.get("429", 0)),
            events_served=int(stats["events_served"]),
            busiest_60s=_busiest_window(transport.times(ok_only=True)),
            steady_req_per_min=_steady_rate(transport.times(), began, ended),
            sim_cpu_s=sim_cpu,
            backfill_cpu_s=own_cpu,
            statuses=transport.statuses(),
            breakdown=breakdown,
        )
    finally:
        rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
        rt.close()
        shutil.rmtree(root, ignore_errors=True)


# --- fetch only: the client's pacing against the limit, without normalising or storing -------


async def _fetch_only(
    sim: Sim, key: str, concurrency: int, seconds: float, page_size: int
) -> dict[str, Any]:
    transport = RecordingTransport()
    failures: Counter[str] = Counter()
    pages = events = 0
    async with KlaviyoClient(ApiKeyAuth(key), base_url=sim.url, transport=transport) as client:
        metrics = [m for m in await client.list_metrics() if m.name in ENGAGEMENT_METRICS]
        start, end = history_range(sim.brand)
        units = itertools.cycle([(m.id, day) for day in backfill_days(start, end) for m in metrics])
        began = time.monotonic()
        deadline = began + seconds

        async def worker() -> None:
            nonlocal pages, events
            while time.monotonic() < deadline:
                metric_id, day = next(units)
                lo, hi = day_range(day, start, end)
                url: str | None = None
                while time.monotonic() < deadline:
                    try:
                        page = await client.events_page(
                            metric_id=metric_id,
                            start=lo,
                            end=hi,
                            cursor_url=url,
                            page_size=page_size,
                            event_fields=EVENT_FIELDS,  # as the backfill asks
                            profile_fields=PROFILE_FIELDS,
                        )
                    except KlaviyoError as exc:
                        failures[type(exc).__name__] += 1
                        break
                    pages += 1
                    events += len(page)
                    if page.next_url is None:
                        break
                    url = page.next_url

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        ended = time.monotonic()
    sent, ok = transport.times(), transport.times(ok_only=True)
    minutes = int((ended - began) // 60)
    return {
        "seconds": round(ended - began, 1),
        "pages": pages,
        "events_per_page": round(events / max(pages, 1)),
        "statuses": transport.statuses(),
        "failed_calls": dict(failures),
        "req_per_min": round(len(sent) / (ended - began) * 60),
        "ok_req_per_min": round(len(ok) / (ended - began) * 60),
        # The limit is a sliding minute: over whole minutes from the start, accepted requests
        # a minute can reach the steady limit however bursty the pacing within each minute.
        "whole_minutes": minutes,
        "ok_req_per_min_whole_minutes": round(
            bisect.bisect_left(ok, began + 60 * minutes) / minutes if minutes else 0.0
        ),
        "busiest_60s_accepted": _busiest_window(ok),
        "429_times_s": [round(t - began, 1) for t, s in transport.sent if s == 429][:50],
    }


def fetch_only(
    sim: Sim, key: str, concurrency: int, seconds: float, page_size: int
) -> dict[str, Any]:
    sim.reset_stats()
    sim_cpu, own_cpu = sim.cpu_seconds(), cpu_seconds(os.getpid())
    out = asyncio.run(_fetch_only(sim, key, concurrency, seconds, page_size))
    out["sim_cpu_s"] = round(sim.cpu_seconds() - sim_cpu, 1)
    out["client_cpu_s"] = round(cpu_seconds(os.getpid()) - own_cpu, 1)
    op = sim.stats()["operations"].get(OPERATION, {})
    out["sim_counted"] = {k: int(v) for k, v in op.items()}
    out["concurrency"] = concurrency
    out["page_size"] = page_size
    out["ratio_requests"] = round(out["ok_req_per_min_whole_minutes"] / LIMIT.steady_per_minute, 3)
    return out


def _profile_summary(path: Path, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --- main -----------------------------------------------------------------------------------


def summarise(runs: list[RunResult], page_size: int) -> dict[str, Any]:
    req_ceiling = LIMIT.steady_per_minute
    ev_ceiling = req_ceiling / 60 * page_size
    rpm = median([r.req_per_min for r in runs])
    eps = median([r.events_per_s for r in runs])
    return {
        "concurrency": runs[0].concurrency,
        "runs": len(runs),
        "seconds_median": round(median([r.seconds for r in runs]), 1),
        "events_per_s_median": round(eps),
        "req_per_min_median": round(rpm),
        "steady_req_per_min_median": round(median([r.steady_req_per_min for r in runs])),
        "busiest_60s_requests_max": max(r.busiest_60s for r in runs),
        "ratio_requests": round(rpm / req_ceiling, 3),
        "ratio_events": round(eps / ev_ceiling, 3),
        "events_per_request": round(median([r.events_served / max(r.requests, 1) for r in runs])),
        "rejected_429_total": sum(r.rejected_429 for r in runs),
        "cpu_cores_busy_median": round(
            median([(r.sim_cpu_s + r.backfill_cpu_s) / r.seconds for r in runs]), 2
        ),
        "each_run": [
            {
                "seconds": round(r.seconds, 1),
                "stored": r.stored,
                "status": r.job_status,
                "requests": r.requests,
                "rejected_429": r.rejected_429,
                "events_served": r.events_served,
                "busiest_60s_requests": r.busiest_60s,
                "steady_req_per_min": round(r.steady_req_per_min),
                "sim_cpu_s": round(r.sim_cpu_s, 1),
                "backfill_cpu_s": round(r.backfill_cpu_s, 1),
                "statuses": r.statuses,
                "time_breakdown_s": r.breakdown.as_dict(),
            }
            for r in runs
        ],
    }


def _print_run(r: RunResult) -> None:
    b = r.breakdown
    print(
        f"  concurrency {r.concurrency:>2}: {r.seconds:6.1f} s, {r.stored} stored "
        f"({r.job_status}), {r.requests} requests, {r.rejected_429} x 429, "
        f"{r.events_per_s:,.0f} events/s, {r.req_per_min:,.0f} req/min; CPU s: sim "
        f"{r.sim_cpu_s:.1f}, backfill {r.backfill_cpu_s:.1f} (loop thread "
        f"{b.loop_thread_cpu_s:.1f}: normalise {b.normalize_s:.1f}; publish thread "
        f"{b.publish_cpu_s:.1f}); wall s: fetch {b.fetch_s:.1f} (worker-s), publish "
        f"{b.publish_s:.1f}, archive {b.archive_s:.1f}, checkpoints {b.checkpoint_s:.1f}, "
        f"GC {b.gc_s:.1f} ({b.gc_full:.0f} full)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", type=int, default=30_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--concurrency", default="4,8,16", help="levels tried, comma-separated")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs at the best level (the sweep's included)"
    )
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument(
        "--fetch-seconds", type=float, default=125.0, help="fetch-only run length (0: skip)"
    )
    parser.add_argument(
        "--fetch-small-page",
        type=int,
        default=20,
        help="page size of the second fetch-only run (cheap pages: the limit, not the CPU, binds)",
    )
    parser.add_argument(
        "--cprofile", action="store_true", help="one more run under cProfile (this process)"
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    keys_needed = len(levels) + args.repeats + 3
    work = Path(tempfile.mkdtemp(prefix="sf-bench-sim-"))
    log, chdb_dir = work / "sim.log", work / "chdb"
    with simulator(args.profiles, args.days, keys_needed, log) as sim:
        keys = iter(sim.keys)
        print(
            f"simulator: {sim.brand['events']} events, {sim.brand['profiles']} profiles, "
            f"built and serving in {sim.build_seconds:.1f} s, RSS {sim.rss_mib:.0f} MiB"
        )
        by_level: dict[int, list[RunResult]] = {c: [] for c in levels}
        for c in levels:
            run = run_once(sim, next(keys), c, args.page_size, chdb_dir)
            by_level[c].append(run)
            _print_run(run)
        best = max(levels, key=lambda c: by_level[c][0].events_per_s)
        for _ in range(args.repeats - 1):
            run = run_once(sim, next(keys), best, args.page_size, chdb_dir)
            by_level[best].append(run)
            _print_run(run)
        fetch: list[dict[str, Any]] = []
        if args.fetch_seconds > 0:
            for size in (args.page_size, args.fetch_small_page):
                fetch.append(fetch_only(sim, next(keys), max(levels), args.fetch_seconds, size))
                print(f"  fetch only: {fetch[-1]}", flush=True)
        profile_text = None
        if args.cprofile:
            path = work / "backfill.prof"
            _print_run(run_once(sim, next(keys), best, args.page_size, chdb_dir, profile=path))
            profile_text = _profile_summary(path, 30)
            print(profile_text)
        brand = sim.brand
        build_seconds, rss = sim.build_seconds, sim.rss_mib
    shutil.rmtree(work, ignore_errors=True)  # kept (with sim.log) only when a run failed

    levels_out = [summarise(by_level[c], args.page_size) for c in levels]
    best_out = next(s for s in levels_out if s["concurrency"] == best)
    result: dict[str, Any] = {
        "brand": {
            "profiles": brand["profiles"],
            "days": args.days,
            "events": brand["events"],
            "events_by_metric": brand["events_by_metric"],
            "sim_build_seconds": round(build_seconds, 1),
            "sim_rss_mib": round(rss),
        },
        "page_size": args.page_size,
        "limit": {
            "operation": OPERATION,
            "burst_per_second": LIMIT.burst_per_second,
            "steady_per_minute": LIMIT.steady_per_minute,
            "events_per_s_ceiling": round(LIMIT.steady_per_minute / 60 * args.page_size),
        },
        "by_concurrency": levels_out,
        "best": {
            k: best_out[k]
            for k in (
                "concurrency",
                "runs",
                "events_per_s_median",
                "req_per_min_median",
                "ratio_requests",
                "ratio_events",
                "rejected_429_total",
            )
        },
        "fetch_only": fetch,
        "target": {"ratio": 0.90, "429": "none beyond transient"},
    }
    if profile_text is not None:
        result["cprofile_top"] = profile_text.splitlines()
    write_result("backfill", result)
    print()
    print("concurrency  runs  events/s  req/min  ratio_req  ratio_events  429s  ev/req  cores")
    for s in levels_out:
        print(
            f"{s['concurrency']:>11}  {s['runs']:>4}  {s['events_per_s_median']:>8,}  "
            f"{s['req_per_min_median']:>7,}  {s['ratio_requests']:>9.3f}  "
            f"{s['ratio_events']:>12.3f}  {s['rejected_429_total']:>4}  "
            f"{s['events_per_request']:>6}  {s['cpu_cores_busy_median']:>5.2f}"
        )
    for f in fetch:
        print(
            f"fetch only, page size {f['page_size']} ({f['events_per_page']} events a page), "
            f"concurrency {f['concurrency']}, {f['seconds']} s: "
            f"{f['ok_req_per_min_whole_minutes']:,} accepted req/min over whole minutes "
            f"(ratio {f['ratio_requests']:.3f}), busiest 60 s {f['busiest_60s_accepted']:,}, "
            f"statuses {f['statuses']}, failed calls {f['failed_calls']}"
        )


if __name__ == "__main__":
    main()
