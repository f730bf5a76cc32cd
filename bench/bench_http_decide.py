"""Benchmark: single timing decisions over HTTP (issue 5: p99 under 10 ms at 200 requests/s
from a second process).

The embedded deployment (chDB + SQLite, the app served by uvicorn in this process, as
`sendflowr run` does) with a realistic tenant: PEOPLE people with 30 events each of history,
loaded through the pipeline. A second process (plain asyncio HTTP/1.1) sends POST /timing/decide
open-loop at a fixed rate - each request at its scheduled instant whatever the previous ones
did, latency measured from that instant, so queueing counts - for DURATION seconds; 80% of the
requests name a known person (klaviyo_id), 20% a stranger. p50/p95/p99 per run, medians over
RUNS runs.

The server starts as `sendflowr serve` does: the feature cache is warmed from the event store
on a background thread (`feature_cache_warmup`, on by default) while it already serves, and
the start-up objects are frozen out of the cyclic GC. `--cold` skips the warm-up: then run 1
starts with an empty cache and every known person's first decision rebuilds them from chDB
(about 10 ms each), the worst case after a restart without it.

Breakdown (in process, no HTTP): the person-profile step of a decision on a feature-cache
miss (the person's events read from chDB and folded) and on a hit
(TimingService.person_profile), and the engine's decide() alone.
"""

from __future__ import annotations

import argparse
import json
import os
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
from sendflowr.cli import _warm_in_background
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.gcpause import freeze_startup_objects
from sendflowr.identity.identifiers import ESP_PREFIX, Identifier
from sendflowr.policy_facts import gather
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.engine import decide
from sendflowr.timing.window import Window

RUNS = 3
TENANT = "bench"
ZONE = ZoneInfo("America/New_York")
TARGET_P99_MS = 10.0

# The load generator: plain asyncio HTTP/1.1 over keep-alive connections (httpx spent more
# CPU per request than the server on this machine, and a slow client hides server latency).
# Open loop: request i is due at t0 + i / rate; it takes an idle connection or opens one, and
# its latency runs from the due instant, so time spent queueing anywhere counts.
LOADGEN = r"""
import asyncio, json, sys, time

host, port = sys.argv[1], int(sys.argv[2])
rate, duration = float(sys.argv[3]), float(sys.argv[4])
bodies = [json.dumps(b).encode() for b in json.load(open(sys.argv[5]))]
headers = "".join(f"{k}: {v}\r\n" for k, v in json.loads(sys.argv[6]).items())

def request(body):
    return (
        f"POST /timing/decide HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{headers}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

async def exchange(conn, payload):
    reader, writer = conn
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status

async def main():
    idle = []
    reopened = [0]
    last_used = {}
    async def connect():
        return await asyncio.open_connection(host, port)
    for i in range(20):  # warm up: connections and the tenant's audience curve
        conn = idle.pop() if idle else await connect()
        await exchange(conn, request(bodies[i % len(bodies)]))
        last_used[id(conn)] = time.perf_counter()
        idle.append(conn)
    lat, statuses = [], {}
    n = int(rate * duration)
    t0 = time.perf_counter() + 0.2

    async def one(i):
        due = t0 + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        try:
            conn = idle.pop() if idle else await connect()
            payload = request(bodies[i % len(bodies)])
            try:
                status = str(await asyncio.wait_for(exchange(conn, payload), 30))
            except (ConnectionResetError, asyncio.IncompleteReadError) as exc:
                # A kept-alive connection the server closed after its keep-alive timeout
                # (uvicorn: 5 s idle) before it read this request, as any HTTP client sees
                # now and then: nothing of a response came, so send it again on a new one.
                idle_s = time.perf_counter() - last_used.get(id(conn), time.perf_counter())
                if getattr(exc, "partial", b"") or idle_s < 4.5:
                    raise
                conn[1].close()
                reopened[0] += 1
                conn = await connect()
                status = str(await asyncio.wait_for(exchange(conn, payload), 30))
            last_used[id(conn)] = time.perf_counter()
            idle.append(conn)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            status = type(exc).__name__
        lat.append((time.perf_counter() - due) * 1000)
        statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    errors = sum(v for k, v in statuses.items() if k != "200")
    print(json.dumps({
        "latencies_ms": lat, "errors": errors, "statuses": statuses,
        "reopened_after_idle_close": reopened[0],
    }))

asyncio.run(main())
"""


ADMIN_KEY = "bench-http-admin-key-0123456789abcdef"


def _auth_settings() -> dict[str, Any]:
    """When the API authenticates: the bootstrap admin key, and rate limits above the load."""
    fields = Settings.model_fields
    out: dict[str, Any] = {}
    if "admin_api_key" in fields:
        out["admin_api_key"] = ADMIN_KEY
    for name in ("rate_limit_read", "rate_limit_write", "rate_limit_admin"):
        if name in fields:
            out[name] = "1000000/minute"
    return out


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
    store_ms, cached_ms, engine_ms, resolve_ms, facts_ms, service_ms = [], [], [], [], [], []
    window = Window(
        datetime.fromtimestamp(now + 3_600, UTC), datetime.fromtimestamp(now + 90_000, UTC)
    )
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
        policy = gather(
            rt.metadata, rt.events, rt.identity, TENANT, [uid], window.start, window.end,
            datetime.now(UTC),
        )  # fmt: skip
        t6 = time.perf_counter()
        rt.timing.decide(TENANT, uid, True, ZONE, window, 60, policy=policy)
        t7 = time.perf_counter()
        facts_ms.append((t6 - t5) * 1000)
        service_ms.append((t7 - t6) * 1000)
        resolve_ms.append((t1 - t0) * 1000)
        store_ms.append((t3 - t2) * 1000)
        cached_ms.append((t4 - t3) * 1000)
        engine_ms.append((t5 - t4) * 1000)
    return {
        "resolve_identifier_ms": round(statistics.median(resolve_ms), 3),
        "profile_from_store_ms": round(statistics.median(store_ms), 3),
        "profile_from_cache_ms": round(statistics.median(cached_ms), 3),
        "engine_decide_ms": round(statistics.median(engine_ms), 3),
        # policy_facts.gather for one person: policy row, ESP calls, breaker events (chDB)
        "policy_facts_ms": round(statistics.median(facts_ms), 3),
        # TimingService.decide with policies: profile (cached), engine, explanation queued
        "service_decide_ms": round(statistics.median(service_ms), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=int, default=3_000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=RUNS, help="0: the in-process breakdown only")
    ap.add_argument(
        "--cold", action="store_true", help="no feature-cache warm-up at start (serve's default)"
    )
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-http-"))
    try:
        settings = Settings(
            event_store_url=f"chdb://{root}/chdb?database=h_{uuid.uuid4().hex[:8]}",
            metadata_url=f"sqlite:///{root}/meta.db",
            data_dir=root,
            hash_key="bench-http-hash-key-0123456789abcdef",
            demo_profiles=0,
            **_auth_settings(),
        )
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"} if _auth_settings() else {}
        rt = Runtime.open(settings)
        try:
            rt.metadata.ensure_tenant(Tenant(TENANT, "Bench", ZONE.key))
            _load(rt, args.people)
            if not args.cold:  # as `sendflowr serve` starts
                _warm_in_background(rt)
            freeze_startup_objects()
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
            bodies = root / "bodies.json"
            bodies.write_text(json.dumps(ids))
            for _ in range(args.runs):
                load0, cpu0 = os.getloadavg()[0], time.process_time()
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        LOADGEN,
                        "127.0.0.1",
                        str(port),
                        str(args.rate),
                        str(args.duration),
                        str(bodies),
                        json.dumps(headers),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                got = json.loads(out.stdout)
                cpu = time.process_time() - cpu0  # the server process (app + this driver)
                runs.append(
                    {
                        "requests": len(got["latencies_ms"]),
                        "errors": got["errors"],
                        "statuses": got["statuses"],
                        "reopened_after_idle_close": got["reopened_after_idle_close"],
                        **_pcts(got["latencies_ms"]),
                        "server_cpu_ms_per_request": round(
                            cpu * 1000 / max(len(got["latencies_ms"]), 1), 3
                        ),
                        "loadavg_1m_before": round(load0, 2),
                        "loadavg_1m_after": round(os.getloadavg()[0], 2),
                    }
                )
            server.should_exit = True
            thread.join(timeout=10)
            if not runs:
                print(json.dumps(_breakdown(rt, args.people), indent=2))
                return
            p99 = median([r["p99"] for r in runs])
            write_result(
                "http_decide",
                {
                    "people_with_history": args.people,
                    "feature_cache_warmup": not args.cold,
                    "rate_per_s": args.rate,
                    "duration_s": args.duration,
                    "p50_ms_median": median([r["p50"] for r in runs]),
                    "p95_ms_median": median([r["p95"] for r in runs]),
                    "p99_ms_median": p99,
                    "server_cpu_ms_per_request_median": median(
                        [r["server_cpu_ms_per_request"] for r in runs]
                    ),
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
