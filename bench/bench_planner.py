"""Benchmark: the capacity-aware planner (sendflowr.scheduling.planner).

- top_minutes: 50,000 people x 100 candidates (a day on the engine's 15-minute grid) and
  20,000 x 1,345 (two weeks), k = 64; engine-like curves (a personal hump over a floor).
- plan: 1,000,000 people all preferring the same minute, capacity 142,500 a minute (so eight
  minutes fill), k = 16 and k = 64: deferred acceptance alone (budget=0), with the default
  polish budget and (k = 16) with an unlimited one; total loss, whether the polish proved the
  plan optimal, minutes used.

Medians over a few runs; one core (numpy's own threads are not involved in these kernels).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, timed, write_result
from sendflowr.scheduling.planner import POLISH_BUDGET, Candidates, Plan, plan, top_minutes

BASE = 1_767_225_600  # whole minute
RUNS = 3


def curves(n: int, c: int, rng: np.random.Generator) -> np.ndarray[Any, np.dtype[np.float64]]:
    x = np.arange(c)[None, :]
    peak = rng.uniform(0, c, (n, 1))
    width = rng.uniform(2, 20, (n, 1))
    bump = np.exp(-0.5 * ((x - peak) / width) ** 2)
    out: np.ndarray[Any, np.dtype[np.float64]] = 0.05 + 0.3 * bump + 0.02 * rng.random((n, 1))
    return out


def bench_top(n: int, c: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    cands = BASE + 15 * 60 * np.arange(c, dtype=np.int64)
    values = curves(n, c, rng)
    top_minutes(cands, values[:1000], 64)  # warm up
    secs = [timed(lambda: top_minutes(cands, values, 64)) for _ in range(RUNS)]
    return {"people": n, "candidates": c, "k": 64, "seconds_median": round(median(secs), 3)}


def one_peak(n: int, k: int) -> Candidates:
    rng = np.random.default_rng(1)
    offsets = np.zeros(k, np.int64)
    offsets[1::2] = -np.arange(1, k // 2 + 1)[: len(offsets[1::2])]
    offsets[2::2] = np.arange(1, k // 2 + 1)[: len(offsets[2::2])]
    width = rng.uniform(3, 60, n).astype(np.float32)[:, None]
    skew = rng.uniform(0.5, 2, n).astype(np.float32)[:, None]
    d = np.abs(offsets).astype(np.float32)[None, :] * np.where(offsets > 0, skew, np.float32(1))
    values = (0.5 * np.exp(-d / width)).astype(np.float32)
    order = np.argsort(-values, axis=1, kind="stable")
    peak = BASE + 600 * 60
    minutes = np.take_along_axis(np.broadcast_to(peak + 60 * offsets, (n, k)), order, 1)
    return Candidates(minutes.astype(np.int64), np.take_along_axis(values, order, 1))


def bench_plan(n: int, k: int, capacity: int) -> dict[str, Any]:
    cands = one_peak(n, k)
    out: dict[str, Any] = {"people": n, "k": k, "capacity": capacity}
    modes = [("deferred_acceptance_only", 0), ("default", POLISH_BUDGET)]
    if k == 16:
        modes.append(("until_optimal", 10**13))
    for name, budget in modes:
        last: list[Plan] = []
        secs = []
        for _ in range(RUNS):
            start = time.perf_counter()
            last[:] = [plan(cands, 60, capacity, {}, BASE, BASE + 1439 * 60, budget=budget)]
            secs.append(time.perf_counter() - start)
        p = last[0]
        out[name] = {
            "seconds_median": round(median(secs), 3),
            "total_loss": round(p.total_loss, 3),
            "optimal": p.optimal,
            "moved": p.moved_count,
            "minutes_used": len(p.load()),
            "max_load": max(p.load().values()),
        }
    return out


def main() -> None:
    write_result(
        "planner",
        {
            "runs": RUNS,
            "top_minutes": [bench_top(50_000, 100), bench_top(20_000, 1345)],
            "plan": [bench_plan(1_000_000, 16, 142_500), bench_plan(1_000_000, 64, 142_500)],
        },
    )


if __name__ == "__main__":
    main()
