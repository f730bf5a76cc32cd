"""Benchmark: the feature-cache backends, memory and Redis (issue 7), through the port.

For each backend: the bulk rebuild's write (`put_table`, PROFILES profiles), a decision's
lookup (`get_many` of one person, LOOKUPS times), an audience lookup (`get_many` of 1,000
people) and the pipeline's fold (a batch of FOLD_EVENTS events over FOLD_PEOPLE cached people:
one MGET round trip and one compare-and-set round trip on Redis). Medians over RUNS runs.

Redis: the server at --redis (default the local one on 127.0.0.1:6379) under a unique key
prefix, deleted afterwards (never FLUSHDB: the server may be shared).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, timed, write_result
from sendflowr.storage.features.base import FeatureCache
from sendflowr.storage.features.memory import MemoryFeatureCache
from sendflowr.storage.features.redis import RedisFeatureCache
from sendflowr.timing.activity import ActivityParams
from sendflowr.timing.features import (
    BatchColumns,
    FeatureTable,
    FoldContext,
    apply_batch,
    type_indexes,
    zone_tag,
)

RUNS = 5
ZONE = ZoneInfo("UTC")
NOW = 1_767_225_600  # 2026-01-01 UTC
TENANT = "bench"


def _batch(people: list[str], events: int, start_ms: int, rng: np.random.Generator) -> BatchColumns:
    idx = rng.integers(0, len(people), events).astype(np.int64)
    at = np.sort(start_ms + rng.integers(0, 3_600_000, events).astype(np.int64))
    return BatchColumns(
        profile_index=idx,
        profiles=people,
        type_index=type_indexes(["opened", "clicked", "received"])[np.arange(events) % 3],
        occurred_ms=at,
        is_machine_open=np.zeros(events, np.bool_),
    )


def run(
    cache: FeatureCache, profiles: int, lookups: int, fold_people: int, fold_events: int
) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    ctx = FoldContext(ZONE, NOW, ActivityParams())
    seed_people = [f"sf_{i:016x}" for i in range(fold_people)]
    seeded, _ = apply_batch(
        {}, _batch(seed_people, fold_people * 3, (NOW - 86_400 * 30) * 1000, rng), ctx
    )
    template = FeatureTable.empty(profiles, zone_tag(ZONE))
    row = next(iter(seeded.values()))
    for i in range(profiles):
        template.set_row(i, row)
    ids = [f"sf_{i:016x}" for i in range(profiles)]
    put, one, many, fold = [], [], [], []
    for r in range(RUNS):
        cache.clear_tenant(TENANT)
        put.append(timed(lambda: cache.put_table(TENANT, ids, template)))
        picks = rng.integers(0, profiles, lookups)
        t0 = time.perf_counter()
        for p in picks.tolist():
            cache.get_many(TENANT, [ids[p]])
        one.append((time.perf_counter() - t0) / lookups)
        chunk = [ids[p] for p in rng.integers(0, profiles, 1_000).tolist()]
        many.append(timed(partial(cache.get_many, TENANT, chunk)))
        cache.put_many(TENANT, seeded)
        batch = _batch(seed_people, fold_events, (NOW - 86_400 * (20 - r)) * 1000, rng)
        fold.append(timed(partial(cache.fold, TENANT, batch, ctx)))
    cache.clear_tenant(TENANT)
    return {
        "put_table_s": median(put),
        "put_table_profiles_per_s": profiles / median(put),
        "get_one_ms": 1000 * median(one),
        "get_1000_ms": 1000 * median(many),
        "fold_ms": 1000 * median(fold),
        "fold_events_per_s": fold_events / median(fold),
        "runs": RUNS,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--profiles", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=2_000)
    ap.add_argument("--fold-people", type=int, default=2_000)
    ap.add_argument("--fold-events", type=int, default=10_000)
    args = ap.parse_args()
    sizes = (args.profiles, args.lookups, args.fold_people, args.fold_events)
    results: dict[str, Any] = {"memory": run(MemoryFeatureCache(), *sizes)}
    prefix = f"sf:bench:{uuid.uuid4().hex[:8]}:"
    redis_cache = RedisFeatureCache(args.redis, prefix=prefix, socket_timeout=5)
    try:
        results["redis"] = run(redis_cache, *sizes)
    finally:
        keys = list(redis_cache.client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            redis_cache.client.unlink(*keys[i : i + 1000])
        redis_cache.close()
    write_result(
        "feature_cache",
        {
            "profiles": args.profiles,
            "lookups": args.lookups,
            "fold_people": args.fold_people,
            "fold_events": args.fold_events,
            "backends": results,
        },
    )


if __name__ == "__main__":
    main()
