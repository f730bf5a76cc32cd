"""Benchmark: soak (issue 9) - mixed load on the embedded deployment for minutes.

The service runs as `sendflowr run --no-demo` in its own process (uvicorn, chDB + SQLite, the
inline bus) on a free port, with an operator key generated for this run
(SENDFLOWR_ADMIN_API_KEY) and rate limits above the load. A tenant with a connected Klaviyo
account, a webhook secret and PEOPLE people with history is prepared first. A second process
then sends, open loop for --seconds:

- signed Klaviyo webhook deliveries carrying --events-per-s events a second (--batch items
  per delivery, every item a new event of a known person), and
- --decisions-per-s POST /timing/decide with the operator key (80% known people).

Reported: errors (any non-2xx or failed request; must be 0), events accepted by the receivers
against events counted in the store afterwards (must be equal), achieved rates, decision
latency p50/p99 (from each request's scheduled instant, so queueing counts), and the server
process's resident memory (VmRSS from /proc, sampled every 2 s) over the measured span, with
the growth in percent (target: under 10%), and the CPU seconds the server and the load
generator spent per second of offered load (how many cores the target rate needs, whatever
the neighbours do).
JSON to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, cpu_seconds, write_result
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.runtime import Runtime
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant

TENANT = "soak"
WEBHOOK_SECRET = "whsec_soak_" + "0123456789abcdef"
TARGET_RSS_GROWTH_PCT = 10.0

# The load generator (its own process): plain asyncio HTTP/1.1 over keep-alive connections,
# open loop - request i of a stream is due at t0 + i / rate whatever earlier ones did.
LOADGEN = r"""
import asyncio, json, sys, time
from sendflowr.connectors.klaviyo.webhooks import sign

cfg = json.loads(sys.argv[1])
host, port = "127.0.0.1", cfg["port"]
auth = f"Authorization: Bearer {cfg['admin_key']}\r\n"

def item(n, person):
    at = time.time() - 60
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(at))
    return {
        "external_id": f"soak{n}",
        "topic": "event:klaviyo.opened_email",
        "payload": {
            "data": {
                "type": "event", "id": f"soak{n}",
                "attributes": {"timestamp": int(at), "datetime": iso, "uuid": f"soak-{n}",
                               "event_properties": {"$message": "m1"}},
                "relationships": {
                    "profile": {"data": {"type": "profile", "id": f"K{person}"}},
                    "metric": {"data": {"type": "metric", "id": "M1"}},
                },
            },
            "included": [
                {"type": "profile", "id": f"K{person}",
                 "attributes": {"email": f"person{person}@example.com"}},
                {"type": "metric", "id": "M1", "attributes": {"name": "Opened Email"}},
            ],
        },
    }

async def exchange(conn, payload):
    reader, writer = conn
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)

async def main():
    stats = {"hook": {}, "decide": {}}
    accepted = [0]
    decide_lat = []
    sent_events = [0]
    # A fixed pool of keep-alive connections per stream: a request due while all are busy
    # waits for one (the wait counts in its latency), so a slow server sees a bounded number
    # of connections instead of a connection storm.
    async def run_stream(kind, rate, duration, make, conns):
        idle = asyncio.LifoQueue()  # the most recently used first: fewer idle closes
        for _ in range(conns):
            idle.put_nowait(None)  # opened on first use
        n = int(rate * duration)
        t0 = time.perf_counter() + 0.2
        async def one(i):
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            conn = await idle.get()
            try:
                payload = make(i)
                if conn is not None:
                    try:  # a kept-alive connection the server closed while idle: reconnect
                        status, body = await asyncio.wait_for(exchange(conn, payload), 120)
                    except (ConnectionResetError, asyncio.IncompleteReadError) as exc:
                        if getattr(exc, "partial", b""):
                            raise  # part of a response came: not an idle close
                        conn[1].close()
                        conn = None
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                    status, body = await asyncio.wait_for(exchange(conn, payload), 120)
                key = str(status)
                if kind == "hook" and status == 200:
                    accepted[0] += json.loads(body)["accepted"]
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                key = type(exc).__name__
                if conn is not None:
                    conn[1].close()
                conn = None
            idle.put_nowait(conn)
            if kind == "decide":
                decide_lat.append((time.perf_counter() - due) * 1000)
            stats[kind][key] = stats[kind].get(key, 0) + 1
        await asyncio.gather(*(one(i) for i in range(n)))

    batch = cfg["batch"]
    people = cfg["people"]

    def hook(i):
        items = [item(i * batch + j, (i * batch + j) % people) for j in range(batch)]
        sent_events[0] += batch
        body = json.dumps({"data": items, "meta": {}}).encode()
        ts = str(int(time.time()))
        head = (
            f"POST /api/webhook/klaviyo/{cfg['tenant']} HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nKlaviyo-Timestamp: {ts}\r\n"
            f"Klaviyo-Signature: {sign(cfg['secret'], body, ts)}\r\nKlaviyo-Webhook-Id: soak\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def decide(i):
        known = i % 5 != 4
        value = f"K{(i * 7) % people}" if known else f"stranger{i}"
        body = json.dumps({"tenant": cfg["tenant"],
                           "identifier": {"type": "klaviyo_id", "value": value}}).encode()
        head = (
            f"POST /timing/decide HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    started = time.time()
    await asyncio.gather(
        run_stream("hook", cfg["deliveries_per_s"], cfg["seconds"], hook, cfg["connections"]),
        run_stream("decide", cfg["decisions_per_s"], cfg["seconds"], decide, cfg["connections"]),
    )
    print(json.dumps({
        "wall_s": time.time() - started, "hook_statuses": stats["hook"],
        "decide_statuses": stats["decide"], "events_sent": sent_events[0],
        "events_accepted": accepted[0], "decide_latencies_ms": decide_lat,
    }))

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _env(root: Path, admin_key: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SENDFLOWR_EVENT_STORE_URL": f"chdb://{root}/chdb?database=soak_{uuid.uuid4().hex[:8]}",
            "SENDFLOWR_METADATA_URL": f"sqlite:///{root}/meta.db",
            "SENDFLOWR_DATA_DIR": str(root / "var"),
            "SENDFLOWR_HASH_KEY": "bench-soak-hash-key-0123456789abcdef",
            "SENDFLOWR_SECRET_KEY": generate_key(),
            "SENDFLOWR_DEMO_PROFILES": "0",
            "SENDFLOWR_EXECUTOR": "false",
            "SENDFLOWR_BACKFILL_WORKER": "false",
            "SENDFLOWR_LOG_LEVEL": "warning",
            "SENDFLOWR_HOST": "127.0.0.1",
            "SENDFLOWR_PORT": str(port),
        }
    )
    fields = Settings.model_fields
    if "admin_api_key" in fields:
        env["SENDFLOWR_ADMIN_API_KEY"] = admin_key
    for name in ("rate_limit_read", "rate_limit_write", "rate_limit_admin"):
        if name in fields:
            env[f"SENDFLOWR_{name.upper()}"] = "10000000/minute"
    return env


def _rss_growth(samples: list[tuple[float, int]], start: float, end: float) -> dict[str, Any]:
    """Resident memory over the measured span [start, end] (seconds of load): the median of
    its first and of its last 30 s of samples (one sample is noisy: RSS swings by ~100 MiB as
    chDB merges parts), their growth in percent, the single samples at both ends, and the
    least-squares trend over the whole span in percent per 5 minutes."""
    span = [(t, kib) for t, kib in samples if start <= t <= end] or samples[-1:]
    first = [kib for t, kib in span if t <= span[0][0] + 30]
    last = [kib for t, kib in span if t >= span[-1][0] - 30]
    base, final = float(np.median(first)), float(np.median(last))
    t = np.array([p[0] for p in span])
    k = np.array([p[1] for p in span], dtype=np.float64)
    slope = float(np.polyfit(t, k, 1)[0]) if len(span) > 2 else 0.0  # KiB per second
    return {
        "rss_mib_after_warmup": round(base / 1024, 1),
        "rss_mib_end": round(final / 1024, 1),
        "rss_growth_pct": round((final - base) * 100.0 / base, 2),
        "rss_growth_pct_single_samples": round((span[-1][1] - span[0][1]) * 100.0 / span[0][1], 2),
        "rss_trend_pct_per_5_min": round(slope * 300 * 100.0 / base, 2),
    }


def _prepare(env: dict[str, str], people: int) -> None:
    """The tenant, its Klaviyo account and webhook secret, and history for `people` people
    (in this process, closed again before the server opens the same stores)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    rt = Runtime.open(settings)
    try:
        rt.metadata.ensure_tenant(Tenant(TENANT, "Soak", "America/New_York"))
        rt.accounts.connect(TENANT, "klaviyo", "api_key", {"api_key": "pk_soak"})
        rt.accounts.set_webhook_secret(TENANT, "klaviyo", WEBHOOK_SECRET)
        rng = np.random.default_rng(9)
        base = datetime.now(UTC) - timedelta(days=60)
        kinds = [EventType.RECEIVED, EventType.OPENED, EventType.CLICKED]
        batch = [
            CanonicalEvent(
                tenant=TENANT,
                esp="klaviyo",
                esp_event_id=f"hist{p}-{i}",
                event_type=kinds[i % 3],
                occurred_at=base + timedelta(minutes=int(rng.integers(0, 59 * 24 * 60))),
                identifiers=Identifiers(esp_profile_id=f"K{p}"),
            )
            for p in range(people)
            for i in range(10)
        ]
        for i in range(0, len(batch), 10_000):
            rt.pipeline.process(batch[i : i + 10_000])
    finally:
        rt.close()


def _fetch(port: int, path: str, admin_key: str) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {admin_key}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body: bytes = resp.read()
        return body


def _get(port: int, path: str, admin_key: str) -> Any:
    return json.loads(_fetch(port, path, admin_key))


TIMELINE_S = 30.0
_COUNTERS = {
    "events_stored": ("sendflowr_events_stored_total", ""),
    "decisions": ("sendflowr_decision_latency_seconds_count", 'route="/timing/decide"'),
    "cache_hits": ("sendflowr_feature_cache_lookups_total", 'result="hit"'),
    "cache_misses": ("sendflowr_feature_cache_lookups_total", 'result="miss"'),
}


def _tick(pid: int, port: int, admin_key: str, at: float) -> dict[str, float]:
    """The server's cumulative CPU and a few /metrics counters at one instant (a scrape the
    busy server does not answer within 30 s leaves the counters out)."""
    row = {"t": at, "cpu_s": cpu_seconds(pid)}
    try:
        text = _fetch(port, "/metrics", admin_key).decode()
    except OSError:
        return row
    for name, (metric, label) in _COUNTERS.items():
        row[name] = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(metric) and label in line
        )
    return row


def _timeline(ticks: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per interval between ticks: the server's cores, and what it got done (rates)."""
    out = []
    for a, b in itertools.pairwise(ticks):
        span = b["t"] - a["t"]
        row = {"t": round(b["t"], 1), "server_cores": round((b["cpu_s"] - a["cpu_s"]) / span, 2)}
        for name in _COUNTERS:
            if name in a and name in b:
                row[f"{name}_per_s"] = round((b[name] - a[name]) / span, 1)
        out.append(row)
    return out


def _settled_count(port: int, admin_key: str, expected: int) -> tuple[int, float]:
    """The stored count once the server has worked through requests still queued when the
    load stopped: polled until it reaches `expected` or stops moving (at most 10 minutes)."""
    started = time.monotonic()
    last = -1
    while time.monotonic() - started < 600:
        try:
            count = int(_get(port, f"/api/events/{TENANT}/counts", admin_key)["total"])
        except OSError:
            continue  # still busy: ask again
        if count >= expected or count == last:
            return count, time.monotonic() - started
        last = count
        time.sleep(5)
    return last, time.monotonic() - started


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--seconds", type=float, default=300.0, help="measured load after the warm-up (300)"
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=120.0,
        help="load before the measured span, not counted in the memory growth (120: the "
        "server's resident memory climbs for about 100 s of load while its caches, chDB's "
        "parts and the allocator's arenas fill)",
    )
    ap.add_argument("--events-per-s", type=float, default=2_000.0)
    ap.add_argument("--batch", type=int, default=100, help="webhook items per delivery")
    ap.add_argument("--decisions-per-s", type=float, default=200.0)
    ap.add_argument("--people", type=int, default=2_000)
    ap.add_argument("--connections", type=int, default=32, help="per stream (keep-alive)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    admin_key = "sf_soak_admin_" + secrets.token_urlsafe(24)
    port = _free_port()
    env = _env(root, admin_key, port)
    proc: subprocess.Popen[bytes] | None = None
    try:
        _prepare(env, args.people)
        cli = "from sendflowr.cli import main; main()"
        RESULTS.mkdir(parents=True, exist_ok=True)
        server_log = (RESULTS / "soak_server.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-c", cli, "run", "--no-demo", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_log,  # a file: an unread pipe would stall a server that logs a lot
        )
        _wait_ready(port, proc)
        before = _get(port, f"/api/events/{TENANT}/counts", admin_key)["total"]

        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        t_start = time.monotonic()

        timeline: list[dict[str, float]] = []

        def sample() -> None:
            assert proc is not None
            last_tick = -TIMELINE_S
            while not stop.is_set():
                now = time.monotonic() - t_start
                samples.append((now, _rss_kib(proc.pid)))
                if now - last_tick >= TIMELINE_S:
                    last_tick = now
                    timeline.append(_tick(proc.pid, port, admin_key, now))
                stop.wait(2.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cfg = {
            "port": port,
            "admin_key": admin_key,
            "tenant": TENANT,
            "secret": WEBHOOK_SECRET,
            "batch": args.batch,
            "people": args.people,
            "seconds": args.warmup + args.seconds,
            "deliveries_per_s": args.events_per_s / args.batch,
            "decisions_per_s": args.decisions_per_s,
            "connections": args.connections,
        }
        load0 = os.getloadavg()[0]
        cpu0, gen0 = cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            [sys.executable, "-c", LOADGEN, json.dumps(cfg)],
            check=True,
            capture_output=True,
            text=True,
        )
        load1 = os.getloadavg()[0]
        server_cpu = cpu_seconds(proc.pid) - cpu0
        gen1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        loadgen_cpu = gen1.ru_utime + gen1.ru_stime - gen0.ru_utime - gen0.ru_stime
        stop.set()
        sampler.join()
        got = json.loads(out.stdout)
        summary = {k: v for k, v in got.items() if k != "decide_latencies_ms"}
        print(json.dumps(summary), file=sys.stderr)
        after, drain_s = _settled_count(port, admin_key, before + got["events_accepted"])
        rss_end = _rss_kib(proc.pid)
        rss = _rss_growth(samples, args.warmup, args.warmup + args.seconds)
        lat = np.asarray(got["decide_latencies_ms"])
        hook_ok = got["hook_statuses"].get("200", 0)
        decide_ok = got["decide_statuses"].get("200", 0)
        errors = sum(v for k, v in got["hook_statuses"].items() if k != "200") + sum(
            v for k, v in got["decide_statuses"].items() if k != "200"
        )
        stored = after - before
        wall = got["wall_s"]
        offered_s = args.warmup + args.seconds
        write_result(
            "soak",
            {
                "seconds": args.seconds,
                "warmup_s": args.warmup,
                "target": {
                    "events_per_s": args.events_per_s,
                    "decisions_per_s": args.decisions_per_s,
                    "rss_growth_pct_below": TARGET_RSS_GROWTH_PCT,
                },
                "errors": errors,
                "webhook_statuses": got["hook_statuses"],
                "decision_statuses": got["decide_statuses"],
                "events_sent": got["events_sent"],
                "events_accepted": got["events_accepted"],
                "events_counted_in_store": stored,
                "no_lost_events": stored == got["events_accepted"],
                "achieved_events_per_s": round(got["events_accepted"] / wall, 1),
                "achieved_deliveries_per_s": round(hook_ok / wall, 2),
                "achieved_decisions_per_s": round(decide_ok / wall, 1),
                "load_wall_s": round(wall, 1),
                "drain_s_after_load": round(drain_s, 1),
                "decision_p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                "decision_p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                # CPU the server spent on the whole load (however long it took), per second of
                # the offered load: the cores the target rate needs, less noisy than the rates
                "server_cpu_s": round(server_cpu, 1),
                "server_cores_per_offered_s": round(server_cpu / offered_s, 2),
                "loadgen_cores_per_offered_s": round(loadgen_cpu / offered_s, 2),
                **rss,
                "rss_mib_after_drain": round(rss_end / 1024, 1),
                "rss_growth_ok": rss["rss_growth_pct"] < TARGET_RSS_GROWTH_PCT,
                "rss_samples_mib": [(round(t, 1), round(k / 1024, 1)) for t, k in samples[::5]],
                "timeline": _timeline(timeline),
                "people_with_history": args.people,
                "connections_per_stream": args.connections,
                "server_log": str(RESULTS / "soak_server.log"),
                "server_log_errors": sum(
                    1
                    for line in (RESULTS / "soak_server.log")
                    .read_text(errors="replace")
                    .splitlines()
                    if line.startswith(("ERROR", "CRITICAL"))
                ),
                "loadavg_1m_before": round(load0, 2),
                "loadavg_1m_after": round(load1, 2),
            },
        )
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
