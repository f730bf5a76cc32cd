"""The raw archive: every accepted raw ESP payload, kept as Parquet so the event store can be
rebuilt from it (`sendflowr replay`).

Layout (hive style, readable by ClickHouse's s3() and any Parquet tool):

    ROOT/tenant=<tenant>/date=<YYYY-MM-DD>/part-<HHMMSSffffff>-<random>.parquet

`date` is the UTC day the payloads were received. One file is written per accepted batch (a
webhook delivery, a backfill page, an events API request), and `write` returns only once the
file is durable: fsynced and renamed into place on a local disk, or fully uploaded (the
object store acknowledged the close) for an fsspec URL. The API answers 2xx after that, so
nothing it accepted is missing from the archive.

Data-subject erasure (`RawArchive.erase_rows`) rewrites the tenant's files without the rows
that name the person: same schema, zstd; on a local disk through a temporary file, fsynced and
renamed over the old one; on an fsspec URL the new part (same time prefix, new random suffix)
is uploaded before the old one is removed. A file left with no rows is deleted; files without
such rows are not touched. Erasures of one tenant take turns: a lock per tenant in the
process; across processes a lease in the metadata store every process shares
(`storage/metadata/leases.py`, `archive-erasure:<tenant>`), held for the whole pass, renewed
while it runs and expiring if its holder dies (a pass that finds its lease lost stops before
the next file); and on a local disk an flock as well. A pass waits up to `erase_wait_seconds`
for another to finish, then raises `LeaseBusyError` (503 with Retry-After). New parts a
webhook writes meanwhile are never touched by a pass that did not list them (see
`erase_rows`), so appends need no lock.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import uuid
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from sendflowr.errors import UnavailableError
from sendflowr.storage.metadata.leases import DEFAULT_WAIT_SECONDS, LeaseStore
from sendflowr.storage.metadata.store import MetadataStore

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


def _conformed(table: pa.Table) -> pa.Table:
    """`table` in ARCHIVE_SCHEMA, as pq.read_table(schema=ARCHIVE_SCHEMA) gives it: the
    schema's columns in its order and types, a column the file lacks as nulls, others
    dropped."""
    names = set(table.column_names)
    return pa.Table.from_arrays(
        [
            table.column(f.name).cast(f.type)
            if f.name in names
            else pa.nulls(table.num_rows, f.type)
            for f in ARCHIVE_SCHEMA
        ],
        schema=ARCHIVE_SCHEMA,
    )


_PART = re.compile(r"tenant=([^/]+)/date=(\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")
_STAMP = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/part-(\d{12})-[^/]*\.parquet$")
_SEARCHED = ["payload", "context", "event_id"]
_SEARCHED_SCHEMA = pa.schema([ARCHIVE_SCHEMA.field(name) for name in _SEARCHED])
_SEARCH_BATCH_ROWS = 50_000
_READERS = min(8, os.cpu_count() or 1)
_READ_CHUNK = 256


class ArchiveUnavailableError(UnavailableError):
    """The archive could not be written: the batch is not accepted (the sender retries)."""

    code = "archive_unavailable"


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    path: str
    tenant: str
    day: date


class RowMatcher(Protocol):
    """Who is being erased (`sendflowr.identity.matching.PersonMatcher`)."""

    def candidates(self, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """A cheap boolean over-approximation of `names` for a whole column."""
        ...

    def names(self, payload: str | None) -> bool: ...


@dataclass(frozen=True, slots=True)
class ArchiveErasure:
    files_rewritten: int = 0
    files_deleted: int = 0
    rows_removed: int = 0
    # Every file this pass listed or wrote: a later pass skips them (`erase_rows(skip=...)`).
    seen: frozenset[str] = field(default_factory=frozenset)

    @property
    def files(self) -> int:
        """Files rewritten or, left empty, deleted."""
        return self.files_rewritten + self.files_deleted


class HeldLease(Protocol):
    """A lease held across processes (`storage.metadata.leases.Lease`)."""

    @property
    def lost(self) -> bool: ...


class ErasureLeases(Protocol):
    """Named leases every process shares (`storage.metadata.leases.LeaseStore`)."""

    def hold(self, name: str, *, wait: float) -> AbstractContextManager[HeldLease]: ...


class RawArchive:
    """Writes and lists archive files on a local directory or any fsspec filesystem.

    `leases`: where erasures of one tenant take turns across processes (see the module
    docstring); without them only the in-process lock and, on a local disk, the flock do."""

    def __init__(
        self, url: str, *, leases: ErasureLeases | None = None, **storage_options: Any
    ) -> None:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.url = url
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = str(root).rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.leases = leases
        self.erase_wait_seconds = DEFAULT_WAIT_SECONDS  # for another process's erasure

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
        received_at: datetime | Sequence[datetime] | None = None,
    ) -> list[str]:
        """Archive one accepted batch; returns the files written, each durable already.
        `received_at`: one instant for the batch, or one per payload (batches written
        together, `sendflowr.intake`), all on one UTC day: the file's date partition."""
        if kind not in KINDS:
            raise ValueError(f"unknown archive kind {kind!r}")
        n = len(payloads)
        if not n:
            return []
        if received_at is None or isinstance(received_at, datetime):
            at = (received_at or datetime.now(UTC)).astimezone(UTC)
            received = [at] * n
        else:
            received = [r.astimezone(UTC) for r in received_at]
            at = min(received)
            if len(received) != n or max(received).date() != at.date():
                raise ValueError("received_at: one instant per payload, all on one UTC day")
        tenants = [tenant] * n if isinstance(tenant, str) else list(tenant)
        table = pa.table(
            {
                "tenant": tenants,
                "esp": [esp] * n if isinstance(esp, str) else list(esp),
                "source": [source] * n,
                "kind": [kind] * n,
                "received_at": pa.array(received, pa.timestamp("ms", tz="UTC")),
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
        _check_tenant(tenant)
        name = f"part-{at:%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"
        path = f"{self.root}/tenant={tenant}/date={at.date().isoformat()}/{name}"
        try:
            self._put(path, table)
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
            # ParquetFile on the calling thread, not pq.read_table: read_table goes through
            # the dataset scanner, whose pre-buffering reads this Python file object on
            # Arrow's IO threads and may still hold such a read when it returns. One that
            # ends while the interpreter exits takes the GIL during finalisation, and the
            # process aborts (SIGABRT, "terminate called without an active exception"):
            # seen in 3 of 40 erasure processes on a loaded machine.
            table = pq.ParquetFile(fh).read(use_threads=False)
        return _conformed(table)

    def rows(self, files: Sequence[ArchiveFile]) -> Iterator[dict[str, Any]]:
        for f in files:
            yield from self.read(f).to_pylist()

    # -- data-subject erasure -------------------------------------------------------------------
    def erase_rows(
        self,
        tenant: str,
        matcher: RowMatcher,
        *,
        event_ids: Collection[str] = (),
        skip: Collection[str] = (),
        received_before: datetime | None = None,
    ) -> ArchiveErasure:
        """Rewrite the tenant's files without the rows whose payload or context the matcher
        names, or whose `event_id` is one of `event_ids`.

        Only the files listed at the start are read, so a part a webhook writes meanwhile is
        never lost (nor searched: call again with `skip=` the first pass's `seen` and
        `received_before=` a cut-off to search the files that appeared since, received before
        it - a name's time prefix is when its payloads were received). Raises
        `ArchiveUnavailableError` when a file cannot be read or rewritten, or the erasure
        lease was lost; what was done stays done and a retry finishes it. Raises
        `LeaseBusyError` when another process's erasure of the tenant did not end within
        `erase_wait_seconds`."""
        _check_tenant(tenant)
        ids = pa.array(sorted(set(event_ids)), pa.string())
        skip = frozenset(skip)
        with self._erasing(tenant) as lease:
            try:
                listed = [
                    f.path
                    for f in self.files(tenant=tenant)
                    if f.path not in skip and _received_before(f.path, received_before)
                ]
            except FileNotFoundError:
                listed = []
            seen = set(listed)
            rewritten = deleted = removed = 0
            for path in self._naming(listed, matcher, ids):
                if lease is not None and lease.lost:
                    raise ArchiveUnavailableError(
                        f"the raw archive's erasure of {tenant!r} lost its lease (it stalled "
                        "past its time-to-live); retry to finish it"
                    )
                try:
                    table = self.read(path)
                    keep = table.filter(pc.invert(_doomed(table, matcher, ids)))
                    if keep.num_rows:
                        seen.add(self._replace(path, keep))
                        rewritten += 1
                    else:
                        self._remove(path)
                        deleted += 1
                    removed += table.num_rows - keep.num_rows
                except FileNotFoundError:  # removed by another hand since the listing
                    continue
                except Exception as exc:
                    name = path.removeprefix(self.root + "/")
                    raise ArchiveUnavailableError(
                        f"the raw archive could not be rewritten ({name}: "
                        f"{type(exc).__name__}: {exc})"
                    ) from exc
            return ArchiveErasure(rewritten, deleted, removed, frozenset(seen))

    def _naming(self, paths: Sequence[str], matcher: RowMatcher, ids: pa.Array) -> list[str]:
        """The files with a row to erase: the searched columns of many files at once (one pass
        of the vectorised matcher per ~50,000 rows, not per file)."""
        out: list[str] = []
        batch: list[tuple[str, pa.Table]] = []
        rows = 0

        def flush() -> None:
            nonlocal rows
            if not batch:
                return
            table = pa.concat_tables([t for _, t in batch])
            owner = pa.array(np.repeat(np.arange(len(batch)), [t.num_rows for _, t in batch]))
            hit = pc.unique(pc.filter(owner, _doomed(table, matcher, ids))).to_pylist()
            out.extend(batch[i][0] for i in sorted(hit))
            batch.clear()
            rows = 0

        def load(path: str) -> pa.Table | None:
            try:
                with self.fs.open(path, "rb") as fh:
                    table = pq.ParquetFile(fh).read(columns=_SEARCHED, use_threads=False)
            except FileNotFoundError:  # removed by another hand since the listing
                return None
            except Exception as exc:
                name = path.removeprefix(self.root + "/")
                raise ArchiveUnavailableError(
                    f"the raw archive could not be read ({name}: {type(exc).__name__}: {exc})"
                ) from exc
            return table.select(_SEARCHED).cast(_SEARCHED_SCHEMA)

        # Small files are read a few at a time (pyarrow releases the GIL), a chunk at a time
        # so memory holds one batch, not the archive.
        with ThreadPoolExecutor(_READERS) as pool:
            for start in range(0, len(paths), _READ_CHUNK):
                chunk = paths[start : start + _READ_CHUNK]
                for path, searched in zip(chunk, pool.map(load, chunk), strict=True):
                    if searched is None:
                        continue
                    batch.append((path, searched))
                    rows += searched.num_rows
                    if rows >= _SEARCH_BATCH_ROWS:
                        flush()
        flush()
        return out

    def _replace(self, path: str, table: pa.Table) -> str:
        """`table` in place of the file at `path`; returns where it now is."""
        if self._local:
            self._put(path, table)
            return path
        head, name = path.rsplit("/", 1)
        stamp = name[: len("part-HHMMSSffffff")] if name.startswith("part-") else "part-erased"
        new = f"{head}/{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        self._put(new, table)
        self.fs.rm(path)
        return new

    def _put(self, path: str, table: pa.Table) -> None:
        """One durable Parquet file (see the module docstring)."""
        if self._local:
            _write_local(Path(path), table)
        else:
            with self.fs.open(path, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")

    def _remove(self, path: str) -> None:
        if self._local:
            os.remove(path)
            _fsync_dir(Path(path).parent)
        else:
            self.fs.rm(path)

    @contextmanager
    def _erasing(self, tenant: str) -> Iterator[HeldLease | None]:
        """One erasure at a time per tenant: two rewriting one file would each put back the
        other's rows. In this process a lock; across processes the shared lease (when the
        archive has `leases`) and, on a local disk, an flock. Yields the lease (or None)."""
        with self._locks_guard:
            lock = self._locks.setdefault(tenant, threading.Lock())
        shared: AbstractContextManager[HeldLease | None] = (
            self.leases.hold(f"archive-erasure:{tenant}", wait=self.erase_wait_seconds)
            if self.leases is not None
            else nullcontext(None)
        )
        with lock, shared as lease:
            if not self._local:
                yield lease
                return
            directory = Path(self.root) / f"tenant={tenant}"
            if not directory.is_dir():
                yield lease  # nothing archived for the tenant (a later pass locks again)
                return
            fd = os.open(directory / ".erasure.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield lease
            finally:
                os.close(fd)  # releases the flock


def _check_tenant(tenant: str) -> None:
    if "/" in tenant or tenant in ("", ".", ".."):
        raise ValueError(f"tenant {tenant!r} cannot name an archive directory")


def _doomed(table: pa.Table, matcher: RowMatcher, event_ids: pa.Array) -> pa.Array:
    """A boolean per row: it names the person. Vectorised candidates, then `names` on those
    only."""
    n = table.num_rows
    if not n:
        return pa.array([], pa.bool_())
    payload, context = table.column("payload"), table.column("context")
    maybe = pc.or_(matcher.candidates(payload), matcher.candidates(context))
    by_id = pc.fill_null(pc.is_in(table.column("event_id"), value_set=event_ids), False)
    maybe = pc.or_(maybe, by_id)
    out = [False] * n
    hit = by_id.to_pylist()
    rows = pc.indices_nonzero(maybe)
    if not len(rows):
        return pa.array(out, pa.bool_())
    payloads = pc.take(payload, rows).to_pylist()
    contexts = pc.take(context, rows).to_pylist()
    for i, p, c in zip(rows.to_pylist(), payloads, contexts, strict=True):
        out[i] = bool(hit[i]) or matcher.names(p) or matcher.names(c)
    return pa.array(out, pa.bool_())


def _received_before(path: str, cutoff: datetime | None) -> bool:
    """A file received before the cut-off (by its name; a name without the time prefix, such
    as a compacted file, counts as received before)."""
    if cutoff is None:
        return True
    m = _STAMP.search(path)
    if m is None:
        return True
    try:
        at = datetime.strptime(m.group(1) + m.group(2), "%Y-%m-%d%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:
        return True
    return at < cutoff


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
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
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


def open_archive(
    raw: str | None, data_dir: Path, metadata: MetadataStore | None = None
) -> RawArchive | None:
    """The archive, its erasures taking turns through leases in `metadata` when given."""
    url = archive_url(raw, data_dir)
    if url is None:
        return None
    return RawArchive(url, leases=LeaseStore(metadata) if metadata is not None else None)
