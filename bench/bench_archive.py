"""Raw archive benchmark (issue 7): what keeping every accepted payload costs, and how fast
`sendflowr replay` rebuilds the event store.

Measured on simulated canonical events, repeated (default 5) on fresh databases and a fresh
archive directory, medians reported:
- api_archive_on / api_archive_off: POST /api/events (1,000 events a request, in process
  through Starlette's TestClient, inline bus into chDB) with the archive on and off;
- archive_write: RawArchive.write alone for the same 1,000-payload batches (one Parquet file
  each, fsynced and renamed: durable before the API would answer);
- replay: `replay()` of the whole archive into an emptied event store.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, timed, write_result
from sendflowr.archive.replay import replay
from sendflowr.archive.store import RawArchive
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.simulate import config_for_event_count, simulate
from sendflowr.storage.metadata.store import Tenant

REQUEST = 1_000
KEY = "bench-hash-key"


ADMIN_KEY = "bench-archive-admin-key-0123456789"


def _runtime(root: Path, chdb_dir: Path, archive: str) -> Runtime:
    settings = Settings(
        event_store_url=f"chdb://{chdb_dir}?database=b_{uuid.uuid4().hex[:10]}",
        metadata_url=f"sqlite:///{root}/meta-{uuid.uuid4().hex[:8]}.db",
        data_dir=root,
        hash_key=KEY,
        demo_profiles=0,
        executor=False,
        backfill_worker=False,
        raw_archive_url=archive,
        admin_api_key=ADMIN_KEY,
        rate_limit_admin="1000000/minute",  # the benchmark measures the archive, not limits
    )
    rt = Runtime.open(settings)
    rt.metadata.ensure_tenant(Tenant("bench", "bench", "UTC"))
    return rt


def _drop(rt: Runtime) -> None:
    rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
    rt.close()


def run(count: int, repeats: int) -> dict[str, object]:
    from fastapi.testclient import TestClient

    from sendflowr.api import create_app

    cfg = config_for_event_count(count, tenant="bench", seed=11)
    events = simulate(cfg).events[:count]
    bodies = [
        {"events": [msgspec.to_builtins(e) for e in events[i : i + REQUEST]]}
        for i in range(0, len(events), REQUEST)
    ]
    payloads = [[msgspec.json.encode(e).decode() for e in b["events"]] for b in bodies]
    times: dict[str, list[float]] = {k: [] for k in ("on", "off", "write", "replay")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        chdb_dir = root / "chdb"
        for r in range(repeats):
            for mode in ("on", "off"):
                archive = str(root / f"archive-{mode}-{r}") if mode == "on" else "off"
                rt = _runtime(root, chdb_dir, archive)
                app = create_app(rt.settings, runtime=rt)
                auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
                with TestClient(app, headers=auth) as client:

                    def post(client: TestClient = client) -> None:
                        for body in bodies:
                            assert client.post("/api/events", json=body).status_code == 200

                    times[mode].append(timed(post))
                    assert rt.events.count_events("bench") == len(events)
                    if mode == "on":
                        assert rt.archive is not None
                        source = rt.archive
                        rt.events._command(f"DROP DATABASE `{rt.events.database}`")
                        rt.events.migrate()

                        def again(rt: Runtime = rt, source: RawArchive = source) -> None:
                            replay(rt, source)

                        times["replay"].append(timed(again))
                        assert rt.events.count_events("bench") == len(events)
                _drop(rt)
            bare = RawArchive(str(root / f"bare-{r}"))

            def write(bare: RawArchive = bare) -> None:
                for batch in payloads:
                    bare.write(
                        tenant="bench", esp="klaviyo", source="api", kind="canonical",
                        payloads=batch,
                    )  # fmt: skip

            times["write"].append(timed(write))
    on, off = median(times["on"]), median(times["off"])
    return {
        "events": len(events),
        "events_per_request": REQUEST,
        "repeats": repeats,
        "api_archive_on_events_per_s": round(len(events) / on),
        "api_archive_off_events_per_s": round(len(events) / off),
        "archive_overhead_share": round(on / off - 1, 3),
        "archive_write_rows_per_s": round(len(events) / median(times["write"])),
        "archive_write_ms_per_1000_row_file": round(
            1000 * median(times["write"]) / len(payloads), 2
        ),
        "replay_events_per_s": round(len(events) / median(times["replay"])),
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    write_result("archive", run(args.events, args.repeats))


if __name__ == "__main__":
    main()
