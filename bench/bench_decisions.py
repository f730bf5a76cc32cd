"""Benchmark: batch timing decisions with the features in memory (issue 5: at least 100,000
decisions a second on 2 cores, 1 million recipients in 10 s).

- engine: 1,000,000 recipients (70% with a history, drawn from a pool of POOL in-memory
  activity profiles folded from generated events - engagements and the deliveries before
  them, so the send-time-bias correction runs as in production - and an audience with its
  fitted archetypes), one 24-hour window in America/New_York, chunks of 20,000: `score_batch`
  + `choose` (the target minute, the confidence, five alternatives). Serial, and over the
  same chunks on two threads (numpy releases the GIL in the products and reductions). This
  is what the target refers to.
- engine_policies: the same plus what `POST /timing/decide/batch` adds in memory - the send
  policies (quiet hours, the person breakers), `choose_allowed` and the columnar explanation
  table (decisions.explanation_table) - on two threads.
- decide_many: the full path of `POST /timing/decide/batch` - the people's features from the
  feature cache (warmed by the bulk rebuild: "features in memory"), the engine, and one
  explanation row per decision written to chDB in one insert - for 100,000 recipients (the
  API's batch limit), HISTORY_PEOPLE of them with 20 events each over the last 90 days (the
  rest strangers). `--paths decide_many` runs only this part.

The process is pinned to 2 CPUs (os.sched_setaffinity); BLAS runs one thread per Python
thread (its own threads fought the workers for the two cores). Medians over RUNS runs. Every
figure also comes as decisions per CPU-second of this process (`per_cpu_s`): on a shared,
loaded machine wall-clock rates say as much about the neighbours as about the code.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

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
from sendflowr.decisions import decide_many, explanation_table, fold_history
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.ids import ordered_ids
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.features.rebuild import rebuild_tenant
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.activity import ActivityTable, global_prior, summed
from sendflowr.timing.engine import (
    EngineParams,
    audience_archetypes,
    choose,
    score_batch,
)
from sendflowr.timing.policy import Facts, PolicyConfig, Suppression, apply, choose_allowed
from sendflowr.timing.window import Window

RUNS = 3
CHUNK = 20_000
NOW = 1_767_225_600  # 2026-01-01 00:00 UTC
ZONE = ZoneInfo("America/New_York")
TARGET_PER_S = 100_000
POOL = 20_000
HISTORY_PEOPLE = 20_000
PATHS = ("engine_serial", "engine_two_threads", "engine_policies_two_threads", "decide_many")


def pin_two_cpus() -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, cpus)
    return cpus


def realistic_people(pool: int, rng: np.random.Generator) -> tuple[ActivityTable, ActivityTable]:
    """Profiles folded from 20 events each (deliveries, opens, clicks around a habitual hour,
    a few machine opens) and the audience they sum to, archetypes fitted."""
    params = EngineParams()
    per = 20
    n = pool * per
    rows = np.repeat(np.arange(pool), per)
    hour = rng.integers(6, 22, pool)[rows]
    utc = NOW - 90 * 86_400 + rng.integers(0, 90, n) * 86_400 + hour * 3_600
    utc = utc + rng.integers(0, 3_600, n)
    kinds = np.array(["received", "opened", "clicked", "opened"])[np.arange(n) % 4]
    utc = np.where(kinds == "received", utc - 600, utc)
    order = np.argsort(utc, kind="stable")
    people = ActivityTable.empty(pool)
    fold_history(
        people, rows[order], utc[order], kinds[order].tolist(),
        (rng.random(n) < 0.1)[order], ZONE, NOW, params.activity,
    )  # fmt: skip
    audience = summed(people, NOW, params.activity.half_life_s)
    audience.archetypes = audience_archetypes(people, ZONE, NOW, params)
    return people, audience


def _timed(fn: Any) -> tuple[float, float, Any]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def engine_path(
    people: ActivityTable,
    audience: ActivityTable,
    recipients: int,
    threads: int,
    policies: bool,
    runs: int = RUNS,
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    prior = global_prior()
    rows = rng.integers(0, len(people), recipients)
    rows[rng.random(recipients) < 0.3] = -1
    params = EngineParams()
    start, end = NOW + 3_600, NOW + 3_600 + 86_400
    config = PolicyConfig(quiet_start_minute=21 * 60, quiet_end_minute=8 * 60)
    created = datetime.fromtimestamp(NOW, UTC)

    def chunk(lo: int) -> int:
        scored = score_batch(
            people, rows[lo : lo + CHUNK], audience, prior, start, end, ZONE, NOW, params
        )
        if not policies:
            return len(choose(scored, 300, params).target)
        n = len(scored.prob)
        ids = ordered_ids(n)
        facts = Facts(n)
        facts.breaker = {r: Suppression("unsubscribed", "unsubscribed") for r in range(0, n, 50)}
        applied = apply(scored, config, facts, ZONE, ids)
        chosen = choose_allowed(applied, 300, params)
        uids = [f"sf_{lo + i:012d}" for i in range(n)]
        table = explanation_table(
            "bench", ids, ["exp_" + d.replace("-", "") for d in ids], uids, "", created,
            chosen.decisions, np.zeros(n, np.int64), np.zeros(n), (rows[lo : lo + n] >= 0).tolist(),
            300, chosen.policies, chosen.details, applied.exploration.tolist(),
        )  # fmt: skip
        return int(table.num_rows)

    chunk(0)  # warm up (and the window's cached operators)
    walls, cpus = [], []
    for _ in range(runs):

        def run() -> int:
            if threads == 1:
                return sum(chunk(lo) for lo in range(0, recipients, CHUNK))
            with ThreadPoolExecutor(threads) as pool:
                return sum(pool.map(chunk, range(0, recipients, CHUNK)))

        wall, cpu, done = _timed(run)
        assert done == recipients
        walls.append(wall)
        cpus.append(cpu)
    s, c = median(walls), median(cpus)
    return {
        "recipients": recipients,
        "threads": threads,
        "policies_and_explanations": policies,
        "seconds_median": round(s, 3),
        "seconds_runs": [round(x, 3) for x in walls],
        "cpu_seconds_median": round(c, 3),
        "decisions_per_s": round(recipients / s),
        "ratio_to_target": round(recipients / s / TARGET_PER_S, 3),
        "per_cpu_s": round(recipients / c),
        "per_cpu_s_times_two_cores": round(2 * recipients / c),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def _events(
    people: int, per_person: int, rng: np.random.Generator, now: datetime
) -> list[CanonicalEvent]:
    kinds = [EventType.RECEIVED, EventType.OPENED, EventType.CLICKED, EventType.OPENED]
    # the last 90 days before the decisions' `now` (older history would not count)
    base = now - timedelta(days=91)
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


def decide_many_path(recipients: int, history_people: int, runs: int) -> dict[str, Any]:
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
            events = _events(history_people, 20, rng, datetime.now(UTC))
            for lo in range(0, len(events), 20_000):
                rt.pipeline.process(events[lo : lo + 20_000])
            # features in memory: the bulk rebuild fills the cache from the store
            rebuild_tenant(rt.events, rt.features, rt.identity, "bench", ZONE)
            known_ids = sorted(set(rt.events.engagement_arrays("bench").universal_ids))
            uids = list(known_ids) + [
                f"sf_stranger{i:08d}" for i in range(recipients - len(known_ids))
            ]
            known = [i < len(known_ids) for i in range(recipients)]
            start = datetime.now(UTC) + timedelta(hours=1)
            window = Window(start, start + timedelta(hours=24))
            decide_many(rt.timing, "bench", uids, known, ZONE, window, 300)  # warm up
            secs, cpus = [], []
            for _ in range(runs):
                wall, cpu, rec = _timed(
                    lambda: decide_many(rt.timing, "bench", uids, known, ZONE, window, 300)
                )
                secs.append(wall)
                cpus.append(cpu)
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
                "cpu_seconds_median": round(median(cpus), 3),
                "per_cpu_s": round(recipients / median(cpus)),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        finally:
            rt.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--history-people", type=int, default=HISTORY_PEOPLE)
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated, of {', '.join(PATHS)} (default: all)",
    )
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    if unknown := set(paths) - set(PATHS):
        ap.error(f"unknown paths: {sorted(unknown)}")
    cpus = pin_two_cpus()
    load = os.getloadavg()
    result: dict[str, Any] = {
        "cpus": cpus,
        "loadavg_at_start": [round(x, 2) for x in load],
        "target": "engine path >= 100,000 decisions/s on 2 cores (1M in 10 s)",
        "profile_pool": POOL,
    }
    if set(paths) & {"engine_serial", "engine_two_threads", "engine_policies_two_threads"}:
        people, audience = realistic_people(POOL, np.random.default_rng(0))
        for name, threads, policies in (
            ("engine_serial", 1, False),
            ("engine_two_threads", 2, False),
            ("engine_policies_two_threads", 2, True),
        ):
            if name in paths:
                result[name] = engine_path(
                    people, audience, args.recipients, threads, policies, args.runs
                )
    if "decide_many" in paths:
        result["decide_many"] = decide_many_path(args.batch, args.history_people, args.runs)
    write_result("decisions" if len(paths) == len(PATHS) else "decisions_partial", result)


if __name__ == "__main__":
    main()
