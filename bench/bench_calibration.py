"""Benchmark: what fitting a tenant's confidence map adds to building its audience.

The map (timing/calibration.py, tenant_calibration.py) is fitted whenever a tenant's audience
is built (at most every five minutes per tenant): one more query (the tenant's past decisions,
the most recent 200,000 at most) and a match against the events the audience build already
read. A tenant of PEOPLE people with EVENTS events over the last 180 days (received, opened,
a fifth of the opens machine opens, clicked, ordered, site visits) and DECISIONS past
decisions targeted over the same days is generated straight into chDB (INSERT ... SELECT FROM
numbers()). Reported: the median of RUNS audience builds (`TimingService._build_audience`)
with the map and with the fit switched off, alternating, and of RUNS fits alone (the query
and the match and the fit), with the decisions the map was fitted on.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any
from unittest.mock import patch
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import embedded_runtime, median, write_result
from sendflowr import decisions
from sendflowr.decisions import AUDIENCE_DAYS, HISTORY_TYPES
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.store import Tenant
from sendflowr.tenant_calibration import tenant_calibration

RUNS = 3
TENANT = "bench"
ZONE = ZoneInfo("America/New_York")
DAY_MS = 86_400_000


def generate(rt: Runtime, events: int, people: int, decided: int, now_ms: int) -> float:
    db = rt.events.database
    span = (AUDIENCE_DAYS - 1) * DAY_MS
    uid = f"concat('sf_', leftPad(lower(hex(number % {people})), 16, '0'))"
    t0 = time.perf_counter()
    rt.events._command(
        f"INSERT INTO `{db}`.email_events (tenant, universal_id, occurred_at, event_id, esp, "
        "esp_event_id, event_type, is_machine_open, properties, schema_version) "
        f"SELECT '{TENANT}', {uid}, "
        f"fromUnixTimestamp64Milli(toInt64({now_ms - span} + intHash64(number) % {span}), 'UTC'), "
        "generateUUIDv4(number), 'klaviyo', toString(number), "
        "['received','opened','received','clicked','opened','received','ordered','site_visit']"
        "[number % 8 + 1] AS et, et = 'opened' AND intHash32(number) % 5 = 0, '{}', 1 "
        f"FROM numbers({events})"
    )
    conf = "(intHash32(number) % 1000)"
    target = f"toInt64({now_ms - span} + intHash64(number + 7) % {span - DAY_MS})"
    rt.events._command(
        f"INSERT INTO `{db}`.timing_explanations (tenant, explanation_ref, decision_id, "
        "universal_id, intent_id, created_at, model_version, target_minute_utc, "
        "trigger_timestamp_utc, confidence_score, model_confidence, fallback_level, "
        "weight_personal, weight_audience, weight_global, evidence, machine_opens_excluded, "
        "policies, exploration, details) "
        f"SELECT '{TENANT}', concat('exp_', toString(number)), toString(number), {uid}, '', "
        f"fromUnixTimestamp64Milli({target} - 3600000, 'UTC'), 'bench', "
        f"fromUnixTimestamp64Milli({target}, 'UTC'), "
        f"fromUnixTimestamp64Milli({target} - 60000, 'UTC'), 0, "
        f"{conf} / 1000.0, 'personal', 1, 0, 0, '{{}}', 0, [], false, '{{}}' "
        f"FROM numbers({decided})"
    )
    # each decision's send: delivered 20 s after its target (4 in 5), and opened within two
    # hours in proportion to what the decision stated (so the map has something to fit)
    for kind, at, cond in (
        ("received", f"{target} + 20000", "number % 5 != 0"),
        ("opened", f"{target} + 20000 + intHash64(number + 3) % 7200000",
         f"number % 5 != 0 AND intHash32(number + 11) % 1000 < {conf} * 0.6"),
    ):  # fmt: skip
        rt.events._command(
            f"INSERT INTO `{db}`.email_events (tenant, universal_id, occurred_at, event_id, "
            "esp, esp_event_id, event_type, is_machine_open, properties, schema_version) "
            f"SELECT '{TENANT}', {uid}, fromUnixTimestamp64Milli({at}, 'UTC'), "
            f"generateUUIDv4(number + {events}), 'klaviyo', concat('{kind}-', toString(number)), "
            f"'{kind}', false, '{{}}', 1 FROM numbers({decided}) WHERE {cond}"
        )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--people", type=int, default=100_000)
    ap.add_argument("--decisions", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=RUNS)
    args = ap.parse_args()
    with embedded_runtime("calibration") as rt:
        rt.metadata.ensure_tenant(Tenant(TENANT, "Bench", ZONE.key))
        now = int(time.time())
        gen_s = generate(rt, args.events, args.people, args.decisions, now * 1000)
        service = rt.timing
        with_map: list[float] = []
        without: list[float] = []
        fitted = 0
        service._build_audience(TENANT, ZONE, now)  # warm-up: caches and the first read
        for run in range(args.runs):
            for mapped in (True, False) if run % 2 == 0 else (False, True):
                off = patch.object(decisions, "tenant_calibration", lambda *a, **k: None)
                with contextlib.nullcontext() if mapped else off:
                    t0 = time.perf_counter()
                    audience = service._build_audience(TENANT, ZONE, now)
                    (with_map if mapped else without).append(time.perf_counter() - t0)
                if mapped:
                    assert audience.calibration is not None
                    fitted = audience.calibration.decisions
        since = now - AUDIENCE_DAYS * 86_400
        arrays = rt.events.engagement_arrays(
            TENANT, HISTORY_TYPES, service.clock().fromtimestamp(since, ZONE)
        ).in_order()
        fit_only: list[float] = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            tenant_calibration(
                rt.events, rt.identity, TENANT, arrays, since, now, service.params.horizon_s,
                service.params.activity.machine_open_s,
            )  # fmt: skip
            fit_only.append(time.perf_counter() - t0)
        a, b, f = median(with_map), median(without), median(fit_only)
        out: dict[str, Any] = {
            "events": args.events,
            "people": args.people,
            "decisions": args.decisions,
            "decisions_fitted": fitted,
            "generate_s": round(gen_s, 2),
            "audience_build_s_median": round(a, 3),
            "audience_build_without_map_s_median": round(b, 3),
            "fit_s_median": round(f, 3),
            "build_ratio_with_to_without": round(a / b, 3),
            "runs": {
                "with_map_s": [round(x, 3) for x in with_map],
                "without_map_s": [round(x, 3) for x in without],
                "fit_s": [round(x, 3) for x in fit_only],
            },
        }
        write_result("calibration", out)


if __name__ == "__main__":
    main()
