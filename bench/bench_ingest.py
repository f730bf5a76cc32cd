"""Ingest benchmark (issue: foundation): simulated events through the pipeline into chDB.

Measured in one run, on the same rows, in batches of 10,000:
- pipeline_objects: canonical event objects -> bus.publish (identity -> store -> features);
- pipeline_json: JSON documents -> decode + validate -> the same pipeline (what a bus consumer
  does with message values);
- raw_insert: a bare chDB INSERT of the very Arrow batches the pipeline writes.
Each is repeated (default 3) on a fresh database; medians are reported, with the ratio of the
pipeline to the raw insert. Peak memory is measured in a child process that streams 1 million
events from a JSON Lines file through the pipeline.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, timed, write_result
from sendflowr.events import CanonicalEvent, encode_events
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.simulate import config_for_event_count, simulate
from sendflowr.storage.events.rows import events_to_arrow
from sendflowr.storage.metadata.store import Tenant

BATCH = 10_000
KEY = b"bench-hash-key"


def _settings(root: Path, chdb_dir: Path) -> Settings:
    return Settings(
        event_store_url=f"chdb://{chdb_dir}?database=b_{uuid.uuid4().hex[:10]}",
        metadata_url=f"sqlite:///{root}/meta-{uuid.uuid4().hex[:8]}.db",
        data_dir=root,
        hash_key=KEY.decode(),
        demo_profiles=0,
    )


def _open(root: Path, chdb_dir: Path, tenant: str) -> Runtime:
    rt = Runtime.open(_settings(root, chdb_dir))
    rt.metadata.ensure_tenant(Tenant(tenant, tenant, "UTC"))
    return rt


def _close(rt: Runtime) -> None:
    rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
    rt.close()


def run(count: int, repeats: int) -> dict[str, object]:
    cfg = config_for_event_count(count, tenant="bench", seed=7)
    import dataclasses

    cfg = dataclasses.replace(cfg, hash_key=KEY)
    sim = simulate(cfg)
    events = sim.events[:count]
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    lines = [encode_events(b) for b in batches]
    root = Path(tempfile.mkdtemp(prefix="sf-bench-"))
    chdb_dir = root / "chdb"

    objects_s, json_s, raw_s, stored = [], [], [], []
    for _ in range(repeats):
        rt = _open(root, chdb_dir, "bench")
        objects_s.append(timed(lambda: [rt.bus.publish(b, "bench") for b in batches]))  # noqa: B023
        stored.append(rt.events.count_events("bench"))
        # The very rows the pipeline wrote, for the raw insert below.
        uids = [rt.identity.resolve_events("bench", b).universal_ids for b in batches]
        tables = [events_to_arrow(b, u) for b, u in zip(batches, uids, strict=True)]
        _close(rt)

        rt = _open(root, chdb_dir, "bench")

        def via_json(rt: Runtime = rt) -> None:
            for raw in lines:
                rt.pipeline.process_json("bench", raw.splitlines())

        json_s.append(timed(via_json))
        _close(rt)

        rt = _open(root, chdb_dir, "bench")
        raw_s.append(timed(lambda: [rt.events.insert_events(t) for t in tables]))  # noqa: B023
        _close(rt)

    n = len(events)
    obj_rate = n / median(objects_s)
    raw_rate = n / median(raw_s)
    return {
        "events": n,
        "batch_size": BATCH,
        "repeats": repeats,
        "stored_each_run": stored,
        "pipeline_objects_events_per_s_median": round(obj_rate),
        "pipeline_json_events_per_s_median": round(n / median(json_s)),
        "raw_chdb_insert_events_per_s_median": round(raw_rate),
        "pipeline_objects_over_raw_insert": round(obj_rate / raw_rate, 3),
        "pipeline_json_over_raw_insert": round((n / median(json_s)) / raw_rate, 3),
        "seconds": {"pipeline_objects": objects_s, "pipeline_json": json_s, "raw_insert": raw_s},
        "targets": {"events_per_s": 50_000, "ratio_to_raw_insert": 0.30},
    }


def child_memory(path: Path) -> None:
    """Stream a JSON Lines file through the pipeline; print peak RSS (MiB)."""
    root = Path(tempfile.mkdtemp(prefix="sf-bench-mem-"))
    rt = _open(root, root / "chdb", "bench")
    decoder = msgspec.json.Decoder(CanonicalEvent)
    batch: list[CanonicalEvent] = []
    total = 0
    with path.open("rb") as fh:
        for line in fh:
            batch.append(decoder.decode(line))
            if len(batch) == BATCH:
                total += rt.bus.publish(batch, "bench").stored
                batch = []
    if batch:
        total += rt.bus.publish(batch, "bench").stored
    stored = rt.events.count_events("bench")
    _close(rt)
    # VmHWM, not ru_maxrss: the latter can carry the parent's peak across fork + exec.
    status = Path("/proc/self/status").read_text()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    print(f"{total} {stored} {peak_kib / 1024:.1f}")


def memory(count: int) -> dict[str, object]:
    import dataclasses

    cfg = dataclasses.replace(config_for_event_count(count, tenant="bench", seed=11), hash_key=KEY)
    events = simulate(cfg).events[:count]
    path = Path(tempfile.mkdtemp(prefix="sf-bench-mem-")) / "events.jsonl"
    path.write_bytes(encode_events(events))
    del events
    out = subprocess.run(
        [sys.executable, __file__, "--child-memory", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return {
        "events": int(out[0]),
        "stored": int(out[1]),
        "peak_rss_mib": float(out[2]),
        "target_mib": 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child-memory", type=Path)
    args = parser.parse_args()
    if args.child_memory:
        child_memory(args.child_memory)
        return
    # Memory first, while this process is small (the child is measured on its own anyway).
    peak = memory(args.events)
    result = run(args.events, args.repeats)
    result["memory_streamed"] = peak
    write_result("ingest", result)


if __name__ == "__main__":
    main()
