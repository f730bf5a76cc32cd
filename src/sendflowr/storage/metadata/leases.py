"""Leases: named locks shared by every process on one metadata store (SQLite or PostgreSQL).

A lease row (`name`, `holder`, `expires_at`, migration 0009) is taken with one conditional
upsert: inserted when there is none, taken over when the one there has expired (its holder
died or stalled) or is already ours, and left alone otherwise; `RETURNING` says which
happened, on both backends. While held, a daemon thread renews it every third of its
time-to-live; released, its row is deleted (only by its holder). A holder that dies leaves a
row that expires after at most `ttl` seconds.

Times: on PostgreSQL the server's clock decides (`clock_timestamp()`), so processes on several
hosts with skewed clocks agree; SQLite is one host's file, whose clock is the process's.

Used by the raw archive's data-subject erasure (archive/store.py): two processes rewriting one
tenant's files on an object store would each put back the rows the other removed.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sendflowr.errors import UnavailableError
from sendflowr.storage.metadata.store import MetadataStore, aware
from sendflowr.storage.metadata.tables import leases
from sendflowr.storage.metadata.upsert import _insert

DEFAULT_TTL_SECONDS = 60.0
DEFAULT_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.1

log = logging.getLogger(__name__)


class LeaseBusyError(UnavailableError):
    """Another process holds the lease: 503 with Retry-After; try again later."""

    code = "busy"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def new_holder() -> str:
    """A holder id naming this process (host, pid) and one acquisition."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lease:
    """A held lease. `lost` turns true when a renewal found it taken over (it had expired:
    this holder stalled longer than its time-to-live) or could not reach the store until it
    expired: the holder must then stop changing what the lease guards."""

    def __init__(self, store: LeaseStore, name: str, holder: str, ttl: float) -> None:
        self.store, self.name, self.holder, self.ttl = store, name, holder, ttl
        self._valid_until = time.monotonic() + ttl
        self._lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{name}", daemon=True)

    @property
    def lost(self) -> bool:
        return self._lost or time.monotonic() >= self._valid_until

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            started = time.monotonic()
            try:
                renewed = self.store.renew(self.name, self.holder, self.ttl)
            except Exception as exc:  # unreachable: try again; `lost` once expired
                log.warning("lease %s not renewed (%s); retrying", self.name, type(exc).__name__)
                continue
            if not renewed:
                self._lost = True
                return
            self._valid_until = started + self.ttl

    def _start(self) -> None:
        self._thread.start()

    def _end(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._lost:
            return
        try:
            self.store.release(self.name, self.holder)
        except Exception as exc:  # what it guarded is done either way: it expires in `ttl`
            log.warning("lease %s not released (%s); it expires", self.name, type(exc).__name__)


class LeaseStore:
    """Leases on one metadata store; see the module docstring."""

    def __init__(self, metadata: MetadataStore, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self.metadata = metadata
        self.ttl = ttl  # of the leases `hold` takes
        self._server_clock = metadata.backend == "postgresql"

    def _now(self) -> Any:
        return sa.func.clock_timestamp() if self._server_clock else datetime.now(UTC)

    def _until(self, ttl: float) -> Any:
        if self._server_clock:
            return sa.func.clock_timestamp() + sa.literal(timedelta(seconds=ttl), sa.Interval())
        return datetime.now(UTC) + timedelta(seconds=ttl)

    def try_acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Take the lease unless another holder's has not expired; True when taken."""
        with self.metadata._guard(), self.metadata.engine.begin() as conn:
            stmt = _insert(conn, leases).values(
                name=name, holder=holder, expires_at=self._until(ttl)
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[leases.c.name],
                set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
                where=sa.or_(leases.c.expires_at < self._now(), leases.c.holder == holder),
            ).returning(leases.c.name)
            return conn.execute(stmt).first() is not None

    def renew(self, name: str, holder: str, ttl: float) -> bool:
        """Extend a lease this holder still has; False when it is no longer theirs."""
        with self.metadata._guard(), self.metadata.engine.begin() as conn:
            stmt = (
                leases.update()
                .where(leases.c.name == name, leases.c.holder == holder)
                .values(expires_at=self._until(ttl))
                .returning(leases.c.name)
            )
            return conn.execute(stmt).first() is not None

    def release(self, name: str, holder: str) -> None:
        with self.metadata._guard(), self.metadata.engine.begin() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))

    def current(self, name: str) -> tuple[str, datetime] | None:
        """Who holds `name` and until when (an expired row too), or None."""
        with self.metadata._guard(), self.metadata.engine.connect() as conn:
            row = conn.execute(
                sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == name)
            ).first()
        return None if row is None else (str(row[0]), aware(row[1]))

    @contextmanager
    def hold(
        self,
        name: str,
        *,
        ttl: float | None = None,
        wait: float = DEFAULT_WAIT_SECONDS,
        holder: str | None = None,
    ) -> Iterator[Lease]:
        """Hold the lease for the block (`ttl`: the store's by default), renewed meanwhile,
        released after. Waits up to `wait` seconds for another holder to finish; then
        `LeaseBusyError` (503, Retry-After)."""
        ttl = self.ttl if ttl is None else ttl
        holder = holder or new_holder()
        deadline = time.monotonic() + wait
        while not self.try_acquire(name, holder, ttl):
            if time.monotonic() >= deadline:
                raise LeaseBusyError(
                    f"{name} is in progress in another process; retry shortly",
                    max(1, math.ceil(min(ttl, max(wait, POLL_SECONDS * 10)))),
                )
            time.sleep(POLL_SECONDS)
        lease = Lease(self, name, holder, ttl)
        lease._start()
        try:
            yield lease
        finally:
            lease._end()
