"""The one call every ingest entry point makes for a batch it accepts: count it, and keep its
raw payloads in the archive (durably) before the batch is handed to the bus."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sendflowr.metrics import ARCHIVE_ROWS, EVENTS_ACCEPTED

if TYPE_CHECKING:
    from sendflowr.runtime import Runtime


def keep_accepted(
    runtime: Runtime,
    *,
    tenant: str | Sequence[str],
    esp: str | Sequence[str],
    source: str,
    kind: str,
    payloads: Sequence[str],
    event_ids: Sequence[str | None] | None = None,
    contexts: Sequence[str | None] | None = None,
    received_at: datetime | Sequence[datetime] | None = None,
) -> None:
    """Raises `ArchiveUnavailableError` (503) when the archive cannot be written: the caller
    must then not acknowledge the batch, so its sender retries it."""
    if not payloads:
        return
    archive = runtime.archive
    if archive is not None:
        archive.write(
            tenant=tenant,
            esp=esp,
            source=source,
            kind=kind,
            payloads=payloads,
            event_ids=event_ids,
            contexts=contexts,
            received_at=received_at,
        )
        ARCHIVE_ROWS.labels(source).inc(len(payloads))
    EVENTS_ACCEPTED.labels(source).inc(len(payloads))
