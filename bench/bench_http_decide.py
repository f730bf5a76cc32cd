"""Benchmark: single timing decisions over HTTP (issue 5: p99 under 10 ms at 200 requests/s
from a second process).

The embedded deployment (chDB + SQLite, the app served by uvicorn in this process, as
`sendflowr run` does) with a realistic tenant: PEOPLE people with 30 events each of history,
loaded through the pipeline. A second process (httpx + asyncio) sends POST /timing/decide
open-loop at a fixed rate - each request at its scheduled instant whatever the previous ones
did, latency measured from that instant, so queueing counts - for DURATION seconds; 80% of the
requests name a known person (klaviyo_id), 20% a stranger. p50/p95/p99 per run, medians over
RUNS runs.

Breakdown (in process, no HTTP): the person-profile step of a decision on a feature-cache
miss (the person's events read from chDB and folded) and on a hit
(TimingService.person_profile), and the engine's decide() alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, write_result
from sendflowr.api import create_app
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.identifiers import ESP_PREFIX, Identifier
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.engine import decide

RUNS = 3
TENANT = "bench"
ZONE = ZoneInfo("America/New_York")
TARGET_P99_MS = 10.0

LOADGEN = r"""
import asyncio, json, sys, time
import httpx

url, rate, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ids = json.loads(sys.argv[4])

async def main():
    lat, errors = [], 0
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0) as client:
        for i in range(20):  # warm up: connections and the tenant's audience curve
            await client.post("/timing/decide", json=ids[i % len(ids)])
        n = int(rate * duration)
        t0 = time.perf_counter() + 0.2

        async def one(i):
            nonlocal errors
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                r = await client.post("/timing/decide", json=ids[i % len(ids)])
                ok = r.status_code == 200
            except httpx.HTTPError:  # a timeout counts, at the time it gave up
                ok = False
            lat.append((time.perf_counter() - due) * 1000)
            errors += not ok

        await asyncio.gather(*(one(i) for i in range(n)))
    print(json.dumps({"latencies_ms": lat, "errors": errors}))

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load(rt: Runtime, people: int) -> None:
    rng = np.random.default_rng(5)
    kinds = [EventType.RECEIVED, EventType.OPENED, EventType.CLICKED, EventType.OPENED]
    base = datetime.now(UTC) - timedelta(days=120)
    batch: list[CanonicalEvent] = []
    for p in range(people):
        hour = int(rng.integers(6, 22))
        for i in range(30):
            at = base + timedelta(
                days=int(rng.integers(0, 119)), hours=hour, minutes=int(rng.integers(0, 60))
            )
            batch.append(
                CanonicalEvent(
                    tenant=TENANT,
                    esp="klaviyo",
                    esp_event_id=f"e{p}-{i}",
                    event_type=kinds[i % 4],
                    occurred_at=at,
                    identifiers=Identifiers(esp_profile_id=f"K{p}"),
                )
            )
        if len(batch) >= 20_000:
            rt.pipeline.process(batch)
            batch = []
    rt.pipeline.process(batch)


def _pcts(lat: list[float]) -> dict[str, float]:
    a = np.asarray(lat)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)}


def _breakdown(rt: Runtime, people: int) -> dict[str, float]:
    """Per-decision costs in process (ms, medians over 300 people)."""
    now = int(time.time())
    uids = []
    for p in range(300):
        uid = rt.identity.owner(TENANT, Identifier(ESP_PREFIX + "klaviyo", f"K{p % people}"))
        assert uid is not None
        uids.append(uid)
    store_ms, cached_ms, engine_ms, resolve_ms = [], [], [], []
    audience = rt.timing.audience(TENANT, ZONE, now)
    start, end = now + 3_600, now + 3_600 + 86_400
    for uid in uids:
        t0 = time.perf_counter()
        rt.identity.owner(TENANT, Identifier(ESP_PREFIX + "klaviyo", "K1"))
        t1 = time.perf_counter()
        rt.features.invalidate(TENANT, [uid])
        t2 = time.perf_counter()
        rt.timing.person_profile(TENANT, uid, ZONE, now)  # a miss: rebuilt from the store
        t3 = time.perf_counter()
        feats = rt.timing.person_profile(TENANT, uid, ZONE, now)  # a hit
        t4 = time.perf_counter()
        decide(feats.activity, audience, rt.timing._prior, start, end, ZONE, 60, now)
        t5 = time.perf_counter()
        resolve_ms.append((t1 - t0) * 1000)
        store_ms.append((t3 - t2) * 1000)
        cached_ms.append((t4 - t3) * 1000)
        engine_ms.append((t5 - t4) * 1000)
    return {
        "resolve_identifier_ms": round(statistics.median(resolve_ms), 3),
        "profile_from_store_ms": round(statistics.median(store_ms), 3),
        "profile_from_cache_ms": round(statistics.median(cached_ms), 3),
        "engine_decide_ms": round(statistics.median(engine_ms), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=int, default=3_000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-http-"))
    try:
        settings = Settings(
            event_store_url=f"chdb://{root}/chdb?database=h_{uuid.uuid4().hex[:8]}",
            metadata_url=f"sqlite:///{root}/meta.db",
            data_dir=root,
            hash_key="bench-http-hash-key-0123456789abcdef",
            demo_profiles=0,
        )
        rt = Runtime.open(settings)
        try:
            rt.metadata.ensure_tenant(Tenant(TENANT, "Bench", ZONE.key))
            _load(rt, args.people)
            port = _free_port()
            config = uvicorn.Config(
                create_app(settings, runtime=rt), host="127.0.0.1", port=port, log_level="warning"
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            while not server.started:
                time.sleep(0.05)
            ids: list[dict[str, Any]] = []
            for i in range(1_000):
                known = i % 5 != 4
                value = f"K{(i * 7) % args.people}" if known else f"stranger-{i}"
                ids.append({"tenant": TENANT, "identifier": {"type": "klaviyo_id", "value": value}})
            runs = []
            for _ in range(RUNS):
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        LOADGEN,
                        f"http://127.0.0.1:{port}",
                        str(args.rate),
                        str(args.duration),
                        json.dumps(ids),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                got = json.loads(out.stdout)
                runs.append(
                    {
                        "requests": len(got["latencies_ms"]),
                        "errors": got["errors"],
                        **_pcts(got["latencies_ms"]),
                    }
                )
            server.should_exit = True
            thread.join(timeout=10)
            p99 = median([r["p99"] for r in runs])
            write_result(
                "http_decide",
                {
                    "people_with_history": args.people,
                    "rate_per_s": args.rate,
                    "duration_s": args.duration,
                    "p50_ms_median": median([r["p50"] for r in runs]),
                    "p95_ms_median": median([r["p95"] for r in runs]),
                    "p99_ms_median": p99,
                    "target_p99_ms": TARGET_P99_MS,
                    "ratio_to_target": round(TARGET_P99_MS / p99, 3),
                    "runs": runs,
                    "breakdown_in_process": _breakdown(rt, args.people),
                },
            )
        finally:
            rt.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
