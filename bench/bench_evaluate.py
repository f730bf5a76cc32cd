"""Benchmark: the EWH@60 replay of the three baselines on radoslaw_email (EVALUATION.md 1).

Times loading the KONECT file and the replay (windows, three policies, bootstraps) separately,
median of a few runs. Writes bench/results/evaluate.json with the figures it got.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, timed, write_result
from sendflowr.evaluate import baselines, run_evaluation
from sendflowr.evaluate.data import load_events

RUNS = 5
ZONE = "Europe/Warsaw"


def data_dir() -> Path:
    shared = os.environ.get("SENDFLOWR_SHARED_DIR")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return root / "data" / "radoslaw_email"


def main() -> None:
    path = data_dir()
    if not (path / "out.radoslaw_email").is_file():
        raise SystemExit(f"{path}/out.radoslaw_email not found (set SENDFLOWR_SHARED_DIR)")
    load_s = [timed(lambda: load_events(path, "konect")) for _ in range(RUNS)]
    events = load_events(path, "konect")
    report: dict[str, object] = {}

    def replay() -> None:
        report.update(run_evaluation(events, ZONE, baselines(), seed=0))

    replay_s = [timed(replay) for _ in range(RUNS)]
    policies = report["policies"]
    assert isinstance(policies, dict)
    write_result(
        "evaluate",
        {
            "data_set": "radoslaw_email",
            "runs": RUNS,
            "load_seconds_median": round(median(load_s), 3),
            "replay_seconds_median": round(median(replay_s), 3),
            "windows": report["windows"],
            "ewh": {
                name: {k: round(v, 4) for k, v in fig.items() if k in ("ewh", "ci_low", "ci_high")}
                for name, fig in policies.items()
            },
        },
    )


if __name__ == "__main__":
    main()
