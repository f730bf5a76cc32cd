"""Benchmark: batch timing decisions with the features in memory (issue 5: at least 100,000
decisions a second on 2 cores, 1 million recipients in 10 s).

- engine: 1,000,000 recipients (70% with a history, drawn from a pool of 250,000 in-memory
  activity profiles - 2.7 GB of bins for a million would not change the per-row work), one
  24-hour window in America/New_York, chunks of 20,000: `score_batch` + `choose` (the target
  minute, the confidence, five alternatives). Serial, and over the same chunks on two threads
  (numpy releases the GIL in the products and reductions). This is what the target refers to.
- decide_many: the full path of `POST /timing/decide/batch` - history read from chDB, the
  engine, and one explanation row per decision written to chDB - for 100,000 recipients (the
  API's batch limit) of a tenant with a few thousand people's history. Reported separately.

The process is pinned to 2 CPUs (os.sched_setaffinity) and BLAS to 2 threads. Medians over
RUNS runs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, write_result
from sendflowr.decisions import decide_many
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.activity import BINS, ActivityTable, global_prior
from sendflowr.timing.engine import BatchDecisions, EngineParams, choose, score_batch
from sendflowr.timing.window import Window

RUNS = 3
CHUNK = 20_000
NOW = 1_767_225_600  # 2026-01-01 00:00 UTC
ZONE = ZoneInfo("America/New_York")
TARGET_PER_S = 100_000


def pin_two_cpus() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, cpus)
    return cpus


def synthetic_people(pool: int, rng: np.random.Generator) -> ActivityTable:
    """Engine-like profiles: ~30 engaged 15-minute bins each, decayed weights."""
    people = ActivityTable.empty(pool)
    for _ in range(30):
        people.bins[np.arange(pool), rng.integers(0, BINS, pool)] += rng.exponential(
            1.0, pool
        ).astype(np.float32)
    people.evidence[:] = rng.exponential(10.0, pool)
    people.active_days[:] = people.evidence / 2
    people.last_update[:] = NOW
    return people


def engine_path(recipients: int, threads: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    people = synthetic_people(250_000, rng)
    audience = ActivityTable.empty(1)
    audience.bins[0] = people.bins[:20_000].sum(axis=0)
    audience.evidence[0], audience.active_days[0], audience.last_update[0] = 2e5, 1e5, NOW
    prior = global_prior()
    rows = rng.integers(0, len(people), recipients)
    rows[rng.random(recipients) < 0.3] = -1
    params = EngineParams()
    start, end = NOW + 3_600, NOW + 3_600 + 86_400

    def chunk(lo: int) -> BatchDecisions:
        scored = score_batch(
            people, rows[lo : lo + CHUNK], audience, prior, start, end, ZONE, NOW, params
        )
        return choose(scored, 300, params)

    chunk(0)  # warm up
    secs = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        if threads == 1:
            done = sum(len(chunk(lo).target) for lo in range(0, recipients, CHUNK))
        else:
            with ThreadPoolExecutor(threads) as pool:
                done = sum(len(d.target) for d in pool.map(chunk, range(0, recipients, CHUNK)))
        secs.append(time.perf_counter() - t0)
        assert done == recipients
    s = median(secs)
    # where one chunk's time goes (serial)
    t0 = time.perf_counter()
    scored = score_batch(people, rows[:CHUNK], audience, prior, start, end, ZONE, NOW, params)
    t1 = time.perf_counter()
    choose(scored, 300, params)
    t2 = time.perf_counter()
    return {
        "recipients": recipients,
        "threads": threads,
        "candidates_per_window": len(scored.candidates),
        "seconds_median": round(s, 3),
        "seconds_runs": [round(x, 3) for x in secs],
        "decisions_per_s": round(recipients / s),
        "ratio_to_target": round(recipients / s / TARGET_PER_S, 3),
        "one_chunk_score_s": round(t1 - t0, 4),
        "one_chunk_choose_s": round(t2 - t1, 4),
    }


def _events(people: int, per_person: int, rng: np.random.Generator) -> list[CanonicalEvent]:
    kinds = [EventType.RECEIVED, EventType.OPENED, EventType.CLICKED, EventType.OPENED]
    base = datetime.fromtimestamp(NOW, UTC) - timedelta(days=90)
    out = []
    for p in range(people):
        hour = int(rng.integers(6, 22))
        for i in range(per_person):
            at = base + timedelta(
                days=int(rng.integers(0, 90)), hours=hour, minutes=int(rng.integers(0, 60))
            )
            out.append(
                CanonicalEvent(
                    tenant="bench",
                    esp="klaviyo",
                    esp_event_id=f"e{p}-{i}",
                    event_type=kinds[i % 4],
                    occurred_at=at,
                    identifiers=Identifiers(esp_profile_id=f"K{p}"),
                )
            )
    return out


def decide_many_path(recipients: int, history_people: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-decide-"))
    try:
        settings = Settings(
            event_store_url=f"chdb://{root}/chdb?database=d_{uuid.uuid4().hex[:8]}",
            metadata_url=f"sqlite:///{root}/meta.db",
            data_dir=root,
            hash_key="bench-decisions-hash-key-0123456789abcdef",
            demo_profiles=0,
        )
        rt = Runtime.open(settings)
        try:
            rt.metadata.ensure_tenant(Tenant("bench", "Bench", ZONE.key))
            rng = np.random.default_rng(1)
            events = _events(history_people, 20, rng)
            for lo in range(0, len(events), 20_000):
                rt.pipeline.process(events[lo : lo + 20_000])
            known_ids = sorted(set(rt.events.engagement_arrays("bench").universal_ids))
            uids = list(known_ids) + [
                f"sf_stranger{i:08d}" for i in range(recipients - len(known_ids))
            ]
            known = [i < len(known_ids) for i in range(recipients)]
            start = datetime.now(UTC) + timedelta(hours=1)
            window = Window(start, start + timedelta(hours=24))
            secs = []
            for _ in range(RUNS):
                t0 = time.perf_counter()
                rec = decide_many(rt.timing, "bench", uids, known, ZONE, window, 300)
                secs.append(time.perf_counter() - t0)
                assert len(rec.decision_ids) == recipients
            s = median(secs)
            return {
                "recipients": recipients,
                "with_history": len(known_ids),
                "history_events": len(events),
                "seconds_median": round(s, 3),
                "seconds_runs": [round(x, 3) for x in secs],
                "decisions_per_s": round(recipients / s),
                "ratio_to_target": round(recipients / s / TARGET_PER_S, 3),
            }
        finally:
            rt.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--history-people", type=int, default=3_000)
    args = ap.parse_args()
    cpus = pin_two_cpus()
    write_result(
        "decisions",
        {
            "cpus": cpus,
            "target": "engine path >= 100,000 decisions/s on 2 cores (1M in 10 s)",
            "engine_serial": engine_path(args.recipients, 1),
            "engine_two_threads": engine_path(args.recipients, 2),
            "decide_many": decide_many_path(args.batch, args.history_people),
        },
    )


if __name__ == "__main__":
    main()
