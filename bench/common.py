"""Helpers shared by the benchmarks: medians over repeats, JSON results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sendflowr.runtime import Runtime

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "machine": {"python": platform.python_version(), "cpu_count": _cpus()},
        "note": "shared, noisy machine: compare ratios and medians, not single runs",
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path


@contextlib.contextmanager
def embedded_runtime(name: str) -> Iterator[Runtime]:
    """A runtime on the embedded default (chDB, SQLite) in a fresh temporary directory, closed
    and deleted afterwards."""
    from sendflowr.runtime import Runtime
    from sendflowr.settings import Settings

    root = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        rt = Runtime.open(
            Settings(
                event_store_url=f"chdb://{root}/chdb?database=b_{uuid.uuid4().hex[:8]}",
                metadata_url=f"sqlite:///{root}/meta.db",
                data_dir=root,
                hash_key=f"bench-{name}-hash-key-0123456789abcdef",
                demo_profiles=0,
            )
        )
        try:
            yield rt
        finally:
            rt.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (every thread), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
