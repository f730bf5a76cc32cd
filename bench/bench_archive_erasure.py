"""Raw archive erasure benchmark (issue 9): how long `RawArchive.erase_rows` takes to take one
person out of a tenant's archive.

A tenant archive of Klaviyo webhook items (about 900 bytes each, a profile with address and
phone in `included`, 5,000 people) is written once per layout - the same rows in fewer, larger
files or in many small ones (a webhook delivery each) - on a local directory and on `memory://`
(an object store without the network). Each repeat erases a different person (20 rows of the
100,000, in 20 files); medians reported. `again` is a pass with nothing left to erase: the
cost of searching alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, timed, write_result
from sendflowr.archive.store import RawArchive
from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import EMAIL, ESP_PREFIX, PHONE, Identifier
from sendflowr.identity.matching import PersonMatcher

KEY = b"bench-hash-key"
PEOPLE = 5_000


def _item(n: int) -> str:
    p = n % PEOPLE
    profile = f"01HPROF{p:019d}"
    return orjson.dumps(
        {
            "external_id": f"evt{n}",
            "topic": "event:klaviyo.opened_email",
            "payload": {
                "data": {
                    "type": "event",
                    "id": f"evt{n}",
                    "attributes": {
                        "timestamp": 1_763_000_000 + n,
                        "datetime": "2026-11-20T10:00:00+00:00",
                        "uuid": str(uuid.uuid4()),
                        "event_properties": {"$message": "msg1", "Subject": "Hello", "$flow": "F1"},
                    },
                    "relationships": {
                        "profile": {"data": {"type": "profile", "id": profile}},
                        "metric": {"data": {"type": "metric", "id": "M1"}},
                    },
                },
                "included": [
                    {"type": "profile", "id": profile,
                     "attributes": {"email": f"person{p}@example.com",
                                    "phone_number": f"+1415555{p % 10_000:04d}"}},
                    {"type": "metric", "id": "M1", "attributes": {"name": "Opened Email"}},
                ],
            },
        }
    ).decode()  # fmt: skip


def _person(p: int) -> PersonMatcher:
    return PersonMatcher(
        [
            Identifier(EMAIL, hash_email(KEY, f"person{p}@example.com")),
            Identifier(ESP_PREFIX + "klaviyo", f"01HPROF{p:019d}"),
            Identifier(PHONE, f"+1415555{p % 10_000:04d}"),
        ],
        KEY,
    )


def _fill(archive: RawArchive, rows: int, per_file: int) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    for f, start in enumerate(range(0, rows, per_file)):
        payloads = [_item(n) for n in range(start, min(rows, start + per_file))]
        archive.write(
            tenant="t",
            esp="klaviyo",
            source="klaviyo-webhook",
            kind="klaviyo-webhook-item",
            payloads=payloads,
            event_ids=[str(uuid.uuid4()) for _ in payloads],
            received_at=t0 + timedelta(seconds=f),
        )


def run(rows: int, repeats: int, layouts: list[int]) -> dict[str, object]:
    out: dict[str, object] = {"rows": rows, "repeats": repeats, "people": PEOPLE}
    for backend in ("local", "memory"):
        for per_file in layouts:
            with tempfile.TemporaryDirectory() as tmp:
                url = (
                    str(Path(tmp) / "archive")
                    if backend == "local"
                    else f"memory://bench-erase-{uuid.uuid4().hex[:8]}/raw"
                )
                archive = RawArchive(url)
                _fill(archive, rows, per_file)
                erase: list[float] = []
                again: list[float] = []
                removed = 0
                for r in range(repeats):
                    person = _person(7 + r)
                    start = time.perf_counter()
                    removed = archive.erase_rows("t", person).rows_removed
                    erase.append(time.perf_counter() - start)
                    again.append(timed(lambda: archive.erase_rows("t", person)))  # noqa: B023
                if backend == "memory":
                    archive.fs.rm(archive.root, recursive=True)
            files = -(-rows // per_file)
            out[f"{backend}_{files}_files"] = {
                "rows_per_file": per_file,
                "rows_removed_each": removed,
                "erase_s": round(median(erase), 3),
                "again_s": round(median(again), 3),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows-per-file", type=int, nargs="+", default=[1_000, 100, 10])
    args = parser.parse_args()
    write_result("archive_erasure", run(args.rows, args.repeats, args.rows_per_file))


if __name__ == "__main__":
    main()
