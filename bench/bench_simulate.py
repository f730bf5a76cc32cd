"""Benchmark: generate at least 1,000,000 canonical events with the ground-truth simulator.

Wall time includes building every CanonicalEvent object. Writes bench/results/simulate.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from sendflowr.simulate import config_for_event_count, simulate

TARGET = 1_000_000
RUNS = 3
RESULTS = Path(__file__).resolve().parent / "results" / "simulate.json"


def main() -> None:
    cfg = config_for_event_count(TARGET)
    seconds: list[float] = []
    events = 0
    for run in range(RUNS):
        started = time.perf_counter()
        sim = simulate(cfg)
        elapsed = time.perf_counter() - started
        events = len(sim.events)
        del sim
        seconds.append(elapsed)
        print(f"run {run + 1}: {events:,} events in {elapsed:.2f} s")
    if events < TARGET:
        raise SystemExit(f"only {events:,} events; expected at least {TARGET:,}")
    median = statistics.median(seconds)
    result = {
        "events": events,
        "profiles": cfg.profiles,
        "days": cfg.days,
        "runs": RUNS,
        "seconds": [round(s, 3) for s in seconds],
        "seconds_median": round(median, 3),
        "events_per_second_median": round(events / median),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
