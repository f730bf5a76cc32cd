"""Embedded event store: chDB, the ClickHouse engine in-process, persisting to a directory."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from chdb import session as chdb_session

from sendflowr.storage.events.base import EventStore, EventStoreError, _short

# chDB runs one embedded server per process, bound to one data directory: stores opened on the
# same directory share it, and asking for a second directory is refused with a clear error.
_lock = threading.Lock()
_open: dict[Path, tuple[Any, int]] = {}
# A chDB session is not safe for concurrent queries: two threads querying at once swap each
# other's query parameters (a wrong answer, or "Substitution `x` is not set") and can hang.
# The API serves requests from a thread pool, so every query goes through this lock (each
# query still runs multi-threaded inside ClickHouse).
_query_lock = threading.RLock()
# events_by_person: per (path, database) a generation, bumped after every write of a watched
# event type and every command (deletes, DDL); one process owns a chDB directory, so every
# write goes through here and a cached answer of the current generation is exact.
_generation: dict[tuple[Path, str], int] = {}
_watched: set[str] = set()
_by_person: dict[tuple[Path, str, str, tuple[str, ...]], tuple[int, dict[str, list[Any]]]] = {}
BY_PERSON_MAX_ROWS = 200_000  # beyond this many events a tenant is queried, not cached
_EVER = datetime(2000, 1, 1, tzinfo=UTC)


def _acquire(path: Path) -> Any:
    with _lock:
        if path in _open:
            sess, refs = _open[path]
            _open[path] = (sess, refs + 1)
            return sess
        if _open:
            other = next(iter(_open))
            raise EventStoreError(
                f"chDB can open one data directory per process; {other} is open, not {path}"
            )
        path.mkdir(parents=True, exist_ok=True)
        try:
            sess = chdb_session.Session(str(path))  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise EventStoreError(f"cannot open chDB at {path}: {_short(exc)}") from exc
        _open[path] = (sess, 1)
        return sess


# Two ways into chDB, by size. Small tables go as an Arrow IPC stream through its streaming
# insert: its Python() table function costs about 20 ms a call whatever the size (measured on a
# Null engine), twice the whole insert of a few hundred rows, which every small write paid (a
# webhook delivery group, a flush of single decisions' explanations). Large tables go through
# Python(), which reads the Arrow buffers in place: the stream is serialised, copied and parsed,
# and a schedule's 1,000,000 explanation rows took 6.9-8.1 s that way against 1.1 s
# (bench_schedule.py, alternating runs). In between it is about even: 10,000-100,000
# explanation rows within 20% either way (medians of 7), the consumer's batches of 20,000
# events 3-5% faster as a stream (bench_kafka.py, two alternating pairs).
STREAM_INSERT_MAX_ROWS = 50_000


def _ipc_stream(data: pa.Table) -> bytes:
    """`data` in the Arrow IPC stream format (ClickHouse's ArrowStream input)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    out: bytes = sink.getvalue().to_pybytes()
    return out


def _release(path: Path) -> None:
    with _lock:
        if path not in _open:
            return
        sess, refs = _open[path]
        if refs > 1:
            _open[path] = (sess, refs - 1)
            return
        del _open[path]
        sess.close()


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    return str(value)


def _params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """chDB passes parameter values as text; arrays need ClickHouse's literal syntax
    (clickhouse-connect does this itself for the server backend)."""
    return {k: _literal(v) if isinstance(v, list | tuple) else v for k, v in (params or {}).items()}


class ChdbEventStore(EventStore):
    backend = "chdb"

    def __init__(self, path: Path, database: str = "sendflowr") -> None:
        super().__init__(database)
        self.path = path.resolve()
        self._session = _acquire(self.path)
        self._closed = False

    def _rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        self._check_open()
        try:
            with _query_lock:
                res = self._session.query(sql, "JSONCompact", params=_params(params))
        except Exception as exc:
            raise EventStoreError(_short(exc)) from exc
        raw = res.bytes()
        if not raw:
            return []
        data: list[list[Any]] = orjson.loads(raw)["data"]
        return data

    def _arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        self._check_open()
        try:
            with _query_lock:
                out = self._session.query(sql, "ArrowTable", params=_params(params))
        except Exception as exc:
            raise EventStoreError(_short(exc)) from exc
        if not isinstance(out, pa.Table):
            raise EventStoreError(f"chDB answered {type(out).__name__}, not an Arrow table")
        return out

    def _command(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._check_open()
        try:
            with _query_lock:
                self._session.query(sql, "Null", params=_params(params))
        except Exception as exc:
            raise EventStoreError(_short(exc)) from exc
        finally:
            self._bump()

    def _bump(self) -> None:
        with _lock:
            key = (self.path, self.database)
            _generation[key] = _generation.get(key, 0) + 1
            for stale in [k for k in _by_person if k[:2] == key]:  # never served again
                del _by_person[stale]

    def events_by_person(
        self, tenant: str, types: Sequence[str]
    ) -> Mapping[str, list[tuple[int, str]]] | None:
        kinds = tuple(sorted(types))
        key = (self.path, self.database, tenant, kinds)
        with _lock:
            _watched.update(kinds)  # before the read: a write from now on bumps
            gen = _generation.get((self.path, self.database), 0)
            hit = _by_person.get(key)
            if hit is not None and hit[0] == gen:
                return hit[1]
        uids, utc, got, _ = self.engagement_history(tenant, kinds, _EVER)
        if len(uids) > BY_PERSON_MAX_ROWS:
            return None
        out: dict[str, list[tuple[int, str]]] = {}
        for u, t, k in zip(uids, utc, got, strict=True):  # person, then time
            out.setdefault(u, []).append((t, k))
        with _lock:
            if _generation.get((self.path, self.database), 0) == gen:  # no write meanwhile
                _by_person[key] = (gen, out)
        return out

    def _insert_arrow(self, table: str, data: pa.Table) -> None:
        self._check_open()
        columns = ", ".join(f"`{n}`" for n in data.column_names)
        sql = f"INSERT INTO `{self.database}`.`{table}` ({columns})"
        stream = _ipc_stream(data) if data.num_rows <= STREAM_INSERT_MAX_ROWS else None
        try:
            with _query_lock:
                if stream is not None:
                    inserter = self._session.send_insert(sql, "ArrowStream")
                    try:
                        inserter.append(stream)
                    except BaseException:
                        inserter.cancel()
                        raise
                    inserter.finish()
                else:
                    # chDB's Python() table function reads this frame's local `data`.
                    self._session.query(f"{sql} SELECT * FROM Python(data)", "Null")
        except Exception as exc:
            raise EventStoreError(f"insert into {table} failed: {_short(exc)}") from exc
        finally:
            if table == "email_events" and self._writes_watched(data):
                self._bump()

    @staticmethod
    def _writes_watched(data: pa.Table) -> bool:
        with _lock:
            watched = sorted(_watched)
        if not watched:
            return False
        if "event_type" not in data.column_names:  # cannot tell: assume it did
            return True
        return bool(pc.any(pc.is_in(data.column("event_type"), pa.array(watched))).as_py())

    def _check_open(self) -> None:
        if self._closed:
            raise EventStoreError("the event store is closed")

    def close(self) -> None:
        if not self._closed:
            self._close_explanations()
            self._closed = True
            _release(self.path)

    def drop_database(self) -> None:
        """Tests and `sendflowr reset` only."""
        self._command(f"DROP DATABASE IF EXISTS `{self.database}`")
