"""`sendflowr replay`: rebuild the event store from the raw archive.

Every archived payload goes through the same path as when it arrived: its ESP's normaliser (or
canonical validation), then the bus, identity resolution and the store. Event ids are
deterministic (uuid5 of esp:esp_event_id), so replaying what is stored already -- or replaying
twice -- stores nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from sendflowr.archive.klaviyo import (
    event_from_backfill_row,
    event_from_flow_action_row,
    event_from_webhook_row,
)
from sendflowr.archive.store import ArchiveFile, RawArchive
from sendflowr.events import CanonicalEvent, parse_events_json

if TYPE_CHECKING:
    from sendflowr.runtime import Runtime

log = logging.getLogger("sendflowr.replay")

SOURCE = "replay"
BATCH = 10_000
Progress = Callable[[int, int, int], None]  # (files done, files, rows so far)


@dataclass
class ReplayResult:
    files: int = 0
    rows: int = 0
    stored: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for the operator


def decode_rows(
    rows: Sequence[dict[str, Any]], hash_key: bytes
) -> tuple[list[CanonicalEvent], list[str]]:
    """Archived rows -> canonical events, and a reason for each row that no longer decodes."""
    events: list[CanonicalEvent] = []
    errors: list[str] = []
    canonical = [r for r in rows if r["kind"] == "canonical"]
    if canonical:
        parsed = parse_events_json([r["payload"].encode() for r in canonical])
        events.extend(parsed.events)
        errors.extend(f"{canonical[i]['event_id']}: {exc}" for i, exc in parsed.rejected)
    for r in rows:
        kind = r["kind"]
        try:
            match kind:
                case "canonical":
                    continue
                case "klaviyo-event":
                    event = event_from_backfill_row(
                        r["payload"], r["context"], tenant=r["tenant"], hash_key=hash_key
                    )
                case "klaviyo-webhook-item":
                    event = event_from_webhook_row(
                        r["payload"], tenant=r["tenant"], hash_key=hash_key
                    )
                case "klaviyo-flow-action":
                    event = event_from_flow_action_row(
                        r["payload"],
                        tenant=r["tenant"],
                        hash_key=hash_key,
                        received_at=r["received_at"],
                    )
                case _:
                    raise ValueError(f"unknown archive kind {kind!r}")
        except ValueError as exc:  # NormalizationError and pydantic's errors are ValueErrors
            errors.append(f"{r['event_id'] or kind}: {exc}")
            continue
        events.append(event)
    return events, errors


def replay(
    runtime: Runtime,
    archive: RawArchive,
    *,
    tenant: str | None = None,
    since: date | None = None,
    until: date | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    """Replay the archive's files (of `tenant`, received in [since, until]) oldest first."""
    files: list[ArchiveFile] = archive.files(tenant=tenant, since=since, until=until)
    result = ReplayResult()
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        events, errors = decode_rows(pending, runtime.hash_key)
        pending.clear()
        result.rejected += len(errors)
        result.errors.extend(errors[: max(0, 10 - len(result.errors))])
        for i in range(0, len(events), BATCH):
            ingest = runtime.bus.publish(events[i : i + BATCH], source=SOURCE)
            result.stored += ingest.stored
            result.rejected += len(ingest.rejected)

    for n, f in enumerate(files, 1):
        rows = archive.read(f).to_pylist()
        result.rows += len(rows)
        pending.extend(rows)
        if len(pending) >= BATCH:
            flush()
        result.files = n
        if progress is not None:
            progress(n, len(files), result.rows)
    if pending:
        flush()
    log.info(
        "replayed %s rows from %s files: %s stored, %s rejected",
        result.rows,
        result.files,
        result.stored,
        result.rejected,
    )
    return result
