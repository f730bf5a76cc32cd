"""The raw archive: every accepted raw ESP payload, kept as Parquet so the event store can be
rebuilt from it (`sendflowr replay`).

Layout (hive style, readable by ClickHouse's s3() and any Parquet tool):

    ROOT/tenant=<tenant>/date=<YYYY-MM-DD>/part-<HHMMSSffffff>-<random>.parquet

`date` is the UTC day the payloads were received. One file is written per accepted batch (a
webhook delivery, a backfill page, an events API request), and `write` returns only once the
file is durable: fsynced and renamed into place on a local disk, or fully uploaded (the
object store acknowledged the close) for an fsspec URL. The API answers 2xx after that, so
nothing it accepted is missing from the archive.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from sendflowr.errors import UnavailableError

# How a row's payload is turned back into canonical events on replay.
KINDS = ("canonical", "klaviyo-webhook-item", "klaviyo-flow-action", "klaviyo-event")

ARCHIVE_SCHEMA = pa.schema(
    [
        ("tenant", pa.string()),
        ("esp", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("received_at", pa.timestamp("ms", tz="UTC")),
        ("payload", pa.string()),
        ("event_id", pa.string()),
        ("context", pa.string()),
    ]
)

_PART = re.compile(r"tenant=([^/]+)/date=(\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")


class ArchiveUnavailableError(UnavailableError):
    """The archive could not be written: the batch is not accepted (the sender retries)."""

    code = "archive_unavailable"


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    path: str
    tenant: str
    day: date


class RawArchive:
    """Writes and lists archive files on a local directory or any fsspec filesystem."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.url = url
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = str(root).rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)

    # -- writing ----------------------------------------------------------------------------
    def write(
        self,
        *,
        tenant: str | Sequence[str],
        esp: str | Sequence[str],
        source: str,
        kind: str,
        payloads: Sequence[str],
        event_ids: Sequence[str | None] | None = None,
        contexts: Sequence[str | None] | None = None,
        received_at: datetime | None = None,
    ) -> list[str]:
        """Archive one accepted batch; returns the files written, each durable already."""
        if kind not in KINDS:
            raise ValueError(f"unknown archive kind {kind!r}")
        n = len(payloads)
        if not n:
            return []
        at = (received_at or datetime.now(UTC)).astimezone(UTC)
        tenants = [tenant] * n if isinstance(tenant, str) else list(tenant)
        table = pa.table(
            {
                "tenant": tenants,
                "esp": [esp] * n if isinstance(esp, str) else list(esp),
                "source": [source] * n,
                "kind": [kind] * n,
                "received_at": pa.array([at] * n, pa.timestamp("ms", tz="UTC")),
                "payload": list(payloads),
                "event_id": list(event_ids) if event_ids is not None else [None] * n,
                "context": list(contexts) if contexts is not None else [None] * n,
            },
            schema=ARCHIVE_SCHEMA,
        )
        names = list(dict.fromkeys(tenants))
        written = []
        for name in names:
            part = table if len(names) == 1 else table.filter(pc.equal(table["tenant"], name))
            written.append(self._write_part(name, at, part))
        return written

    def _write_part(self, tenant: str, at: datetime, table: pa.Table) -> str:
        if "/" in tenant or tenant in ("", ".", ".."):
            raise ValueError(f"tenant {tenant!r} cannot name an archive directory")
        name = f"part-{at:%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"
        path = f"{self.root}/tenant={tenant}/date={at.date().isoformat()}/{name}"
        try:
            if self._local:
                _write_local(Path(path), table)
            else:
                with self.fs.open(path, "wb") as fh:
                    pq.write_table(table, fh, compression="zstd")
        except Exception as exc:
            raise ArchiveUnavailableError(
                f"the raw archive could not be written ({type(exc).__name__}: {exc})"
            ) from exc
        return path

    # -- reading ----------------------------------------------------------------------------
    def files(
        self,
        tenant: str | None = None,
        since: date | None = None,
        until: date | None = None,
    ) -> list[ArchiveFile]:
        """Archive files, oldest day first (then by name: time received), within [since, until]
        (both inclusive) and of one tenant when given."""
        pattern = f"{self.root}/tenant={tenant or '*'}/date=*/*.parquet"
        out: list[ArchiveFile] = []
        for path in self.fs.glob(pattern):
            m = _PART.search(str(path))
            if m is None:
                continue
            day = date.fromisoformat(m.group(2))
            if (since is not None and day < since) or (until is not None and day > until):
                continue
            out.append(ArchiveFile(str(path), m.group(1), day))
        # By day, then time received (the name's prefix), then tenant.
        out.sort(key=lambda f: (f.day, f.path.rsplit("/", 1)[-1][:17], f.tenant, f.path))
        return out

    def read(self, file: ArchiveFile | str) -> pa.Table:
        path = file.path if isinstance(file, ArchiveFile) else file
        with self.fs.open(path, "rb") as fh:
            return pq.read_table(fh, schema=ARCHIVE_SCHEMA)

    def rows(self, files: Sequence[ArchiveFile]) -> Iterator[dict[str, Any]]:
        for f in files:
            yield from self.read(f).to_pylist()


def _write_local(path: Path, table: pa.Table) -> None:
    """Write, fsync, then rename into place and fsync the directory: a crash leaves either no
    file or the whole file (replay skips the temporary names: they do not end in .parquet)."""
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    # A new date (or tenant) directory must itself be recorded in its parent to survive.
    for directory in (path.parent, *(path.parents[1:3] if created else ())):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def archive_url(raw: str | None, data_dir: Path) -> str | None:
    """The archive location from the setting: unset means DATA_DIR/archive; '' or 'off', none."""
    if raw is None:
        return str((data_dir / "archive").resolve())
    if raw.strip().lower() in ("", "off", "none", "false"):
        return None
    return raw


def open_archive(raw: str | None, data_dir: Path) -> RawArchive | None:
    url = archive_url(raw, data_dir)
    return RawArchive(url) if url is not None else None
