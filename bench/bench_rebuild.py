"""Benchmark: bulk feature rebuild from the event store (issue 5: 10 million events into
features in under 60 s with chDB).

10,000,000 events of one tenant (200,000 people, a year, America/New_York; received, opened
(a fifth of them machine opens), clicked, ordered, site visits) are generated straight into
chDB with INSERT ... SELECT FROM numbers() - not through the API. Then `rebuild_tenant`, the
code behind `sendflowr features rebuild`: one columnar query (engagement_arrays, Arrow), the
vectorised fold through ActivityTable.observe in the tenant's local time, and the write into
the memory feature cache. Median of RUNS rebuilds, with the split between query, fold and
write; with the default activity parameters (deliveries folded for the send-time-bias
correction) and with the correction off (deliveries only counted).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import embedded_runtime, median, write_result
from sendflowr.runtime import Runtime
from sendflowr.storage.features.rebuild import rebuild_tenant
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.activity import ActivityParams

RUNS = 3
TENANT = "bench"
ZONE = ZoneInfo("America/New_York")
START_MS = 1_735_689_600_000  # 2025-01-01 UTC
YEAR_MS = 365 * 86_400_000
TARGET_S = 60.0


def generate(rt: Runtime, events: int, people: int) -> float:
    db = rt.events.database
    t0 = time.perf_counter()
    rt.events._command(
        f"INSERT INTO `{db}`.email_events (tenant, universal_id, occurred_at, event_id, esp, "
        "esp_event_id, event_type, is_machine_open, properties, schema_version) "
        f"SELECT '{TENANT}', concat('sf_', leftPad(lower(hex(number % {people})), 16, '0')), "
        f"fromUnixTimestamp64Milli(toInt64({START_MS} + intHash64(number) % {YEAR_MS}), 'UTC'), "
        "generateUUIDv4(number), 'klaviyo', toString(number), "
        "['received','opened','received','clicked','opened','received','ordered','site_visit']"
        "[number % 8 + 1] AS et, et = 'opened' AND intHash32(number) % 5 = 0, '{}', 1 "
        f"FROM numbers({events})"
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--people", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=RUNS)
    args = ap.parse_args()
    with embedded_runtime("rebuild") as rt:
        rt.metadata.ensure_tenant(Tenant(TENANT, "Bench", ZONE.key))
        gen_s = generate(rt, args.events, args.people)
        out: dict[str, Any] = {
            "events": args.events,
            "people": args.people,
            "generate_s": round(gen_s, 2),
            "target_s": TARGET_S,
        }
        configs = {
            "default": ActivityParams(),  # deliveries folded: send-time-bias exposure
            "no_send_time_correction": ActivityParams(correct_send_time=False),
        }
        for name, params in configs.items():
            runs: list[dict[str, Any]] = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                r = rebuild_tenant(rt.events, rt.features, rt.identity, TENANT, ZONE, params=params)
                total = time.perf_counter() - t0
                assert r.events == args.events, r
                assert r.profiles == args.people, r
                runs.append(
                    {
                        "seconds": round(total, 2),
                        "query_s": round(r.read_s, 2),
                        "fold_s": round(r.fold_s, 2),
                        "write_s": round(r.write_s, 2),
                    }
                )
            s = median([x["seconds"] for x in runs])
            out[name] = {
                "seconds_median": s,
                "events_per_s": round(args.events / s),
                "ratio_to_target": round(TARGET_S / s, 2),
                "runs": runs,
            }
        out["profiles_cached"] = rt.features.health().info["profiles"]
        write_result("rebuild", out)


if __name__ == "__main__":
    main()
