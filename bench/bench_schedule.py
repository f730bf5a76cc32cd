"""Scheduling and dispatch benchmark (embedded deployment: chDB + SQLite).

1. Schedule: a 1,000,000-person audience for one intent bound to Klaviyo, end to end through
   `scheduling.service.schedule` (identifier hashing and resolution, candidate scores in
   chunks, the capacity-aware plan, one explanation row each in chDB, one trigger row each in
   SQLite). The people are strangers, so every one of them shares the audience's curve: the
   worst case for capacity, a whole audience peaking at one minute. Median of `--repeats`.
2. Dispatch: the simulator (`sendflowr klaviyo-sim`, Klaviyo's real limits) in its own process;
   `--minutes` minutes of triggers booked at the plannable capacity (95% of the bulk-create
   ceiling, 150 jobs x 1,000 events a minute), fired by one in-process executor. Measured:
   events accepted per busy minute against the ceiling, 429s, and every trigger's lateness
   (sent_at - trigger_at) with the count later than 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_backfill import simulator
from bench.common import median, write_result
from sendflowr.execution.executor import Executor, ExecutorOptions
from sendflowr.execution.klaviyo_esp import CEILING_PER_MINUTE
from sendflowr.execution.registry import dispatchers
from sendflowr.intents import Intent
from sendflowr.klaviyo_sim.brand import TRIGGER_METRIC
from sendflowr.runtime import Runtime
from sendflowr.scheduling import planner, service
from sendflowr.scheduling.audience import Recipient
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant

HASH_KEY = "bench-schedule-hash-key-0123456789abcdef"
TENANT = "bench"


def _settings(root: Path, chdb_dir: Path) -> Settings:
    return Settings(
        event_store_url=f"chdb://{chdb_dir}?database=s_{uuid.uuid4().hex[:10]}",
        metadata_url=f"sqlite:///{root}/meta.db",
        data_dir=root,
        secret_key=generate_key(),
        hash_key=HASH_KEY,
        backfill_worker=False,
        executor=False,
        demo_profiles=0,
    )


def _runtime(root: Path, chdb_dir: Path, api_url: str, api_key: str) -> Runtime:
    rt = Runtime.open(_settings(root, chdb_dir))
    rt.metadata.create_tenant(Tenant(TENANT, "Bench", "UTC"))
    rt.accounts.connect(TENANT, "klaviyo", "api_key", {"api_key": api_key}, api_url=api_url)
    return rt


def _intent() -> Intent:
    return Intent(TENANT, "letter", "Letter", "klaviyo", {"metric_name": TRIGGER_METRIC})


@contextlib.contextmanager
def _phases() -> Iterator[dict[str, float]]:
    """Wall seconds spent in each stage of `schedule` (wrapping its collaborators)."""
    spent: dict[str, float] = defaultdict(float)
    originals: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)
        originals.append((owner, name, fn))

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - began

        setattr(owner, name, timed)

    wrap(service, "resolve", "resolve_audience")
    wrap(planner, "top_minutes", "score_top_minutes")
    wrap(planner, "plan", "plan")
    wrap(service, "_explanations", "build_explanations")
    try:
        yield spent
    finally:
        for owner, name, fn in reversed(originals):
            setattr(owner, name, fn)


def schedule_run(root: Path, chdb_dir: Path, people: int) -> dict[str, Any]:
    rt = _runtime(root, chdb_dir, "http://127.0.0.1:9", "pk_unused")
    try:
        intent = _intent()
        rt.intents.create(intent, "bench")
        recipients = [Recipient("email", f"p{i}@bench.test") for i in range(people)]
        start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(hours=1)
        req = service.ScheduleRequest(
            intent, recipients, start, start + timedelta(hours=24), latency_seconds=60
        )
        stores: dict[str, float] = defaultdict(float)

        def timed_store(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def inner(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    stores[label] += time.perf_counter() - began

            return inner

        rt.events.insert_explanation_table = timed_store(  # type: ignore[method-assign]
            "write_explanations_chdb", rt.events.insert_explanation_table
        )
        rt.triggers.create_schedule = timed_store(  # type: ignore[method-assign]
            "write_triggers_sqlite", rt.triggers.create_schedule
        )
        with _phases() as spent:
            began = time.perf_counter()
            record = service.schedule(rt, req)
            wall = time.perf_counter() - began
        counts = rt.triggers.counts(record.id)
        per_minute = rt.triggers.booked(TENANT, "klaviyo", 0, 2**40)
        return {
            "wall_s": wall,
            "phases_s": {k: round(v, 2) for k, v in {**spent, **stores}.items()},
            "triggers": counts.get("scheduled", 0),
            "capacity_per_minute": record.capacity_per_minute,
            "busiest_minute": max(per_minute.values()),
            "minutes_used": len(per_minute),
            "moved": record.summary["moved"],
            "max_shift_seconds": record.summary["max_shift_seconds"],
        }
    finally:
        rt.close()


# --- dispatch ----------------------------------------------------------------------------------


def dispatch_run(root: Path, chdb_dir: Path, minutes: int) -> dict[str, Any]:
    with simulator(profiles=200, days=2, keys=1, log=root / "sim.log") as sim:
        url, key = sim.url, sim.keys[0]
        rt = _runtime(root, chdb_dir, url, key)
        try:
            intent = _intent()
            rt.intents.create(intent, "bench")
            capacity = int(CEILING_PER_MINUTE * rt.settings.esp_capacity_share)
            people = capacity * minutes
            recipients = [Recipient("email", f"p{i}@bench.test") for i in range(people)]
            # everyone prefers the window's first minutes: a window just long enough to hold
            # them, starting two minutes out (scheduling a large audience takes a while)
            now = datetime.now(UTC)
            start = now.replace(second=0, microsecond=0) + timedelta(minutes=3)
            began = time.perf_counter()
            record = service.schedule(
                rt,
                service.ScheduleRequest(
                    intent, recipients, start, start + timedelta(minutes=minutes),
                    latency_seconds=0,
                ),
            )  # fmt: skip
            schedule_s = time.perf_counter() - began
            executor = Executor(
                rt, dispatchers(rt), options=ExecutorOptions(poll_seconds=0.2, concurrency=16)
            )

            async def fire() -> None:
                stop = asyncio.Event()
                task = asyncio.create_task(executor.run(stop))
                deadline = time.monotonic() + 60 * (minutes + 10)
                while time.monotonic() < deadline:
                    counts = await asyncio.to_thread(rt.triggers.counts, record.id)
                    if counts.get("sent", 0) + counts.get("failed", 0) >= people:
                        break
                    await asyncio.sleep(1.0)
                stop.set()
                await task
                await executor.aclose()

            asyncio.run(fire())
            counts = rt.triggers.counts(record.id)
            late = rt.triggers.lateness(record.id)
            sent_per_minute = _sent_per_minute(rt, record.id)
            stats = httpx.get(f"{url}/_sim/stats", timeout=60).json()
        finally:
            rt.close()
    bulk = stats["operations"].get("POST /api/event-bulk-create-jobs", {})
    busy = sorted(sent_per_minute.values(), reverse=True)[:minutes]
    return {
        "people": people,
        "schedule_s": round(schedule_s, 1),
        "statuses": counts,
        "lateness": late,
        "sent_per_minute": {str(k): v for k, v in sorted(sent_per_minute.items())},
        "busy_minutes_median_events": median([float(b) for b in busy]) if busy else 0.0,
        "ceiling_per_minute": CEILING_PER_MINUTE,
        "ratio_of_ceiling": round(median([float(b) for b in busy]) / CEILING_PER_MINUTE, 3)
        if busy
        else 0.0,
        "sim_bulk_requests": bulk,
        "sim_created_unique": stats["created_events"]["unique"],
    }


def _sent_per_minute(rt: Runtime, schedule_id: str) -> dict[int, int]:
    """Sends per minute of their ESP call (one query, not a page at a time)."""
    import sqlalchemy as sa

    from sendflowr.storage.metadata.tables import triggers

    out: Counter[int] = Counter()
    with rt.metadata.engine.connect() as conn:
        rows = conn.execute(
            sa.select(triggers.c.sent_at).where(
                triggers.c.schedule_id == schedule_id, triggers.c.status == "sent"
            )
        )
        for (sent_at,) in rows:
            s = int(sent_at.replace(tzinfo=UTC).timestamp())
            out[s - s % 60] += 1
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--minutes", type=int, default=3, help="dispatch: minutes at capacity")
    parser.add_argument("--skip-dispatch", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sf-bench-schedule-"))
    chdb_dir = root / "chdb"
    runs = []
    for i in range(args.repeats):
        run_root = root / f"run{i}"
        run_root.mkdir()
        r = schedule_run(run_root, chdb_dir, args.people)
        print(f"schedule run {i}: {r['wall_s']:.1f} s {r['phases_s']}", flush=True)
        runs.append(r)
    result: dict[str, Any] = {
        "schedule": {
            "people": args.people,
            "median_wall_s": round(median([r["wall_s"] for r in runs]), 1),
            "target_s": 60,
            "runs": runs,
        }
    }
    if not args.skip_dispatch:
        d_root = root / "dispatch"
        d_root.mkdir()
        result["dispatch"] = dispatch_run(d_root, chdb_dir, args.minutes)
    write_result("schedule", result)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
