"""Group commit: jobs that callers submit while an earlier group is being written are written
together in the next group, so a fixed cost per write (a chDB part, an archive file and its
fsync, an identity transaction) is paid once per group instead of once per job.

A caller blocks until its own job is done and gets its own result or exception. A caller that
finds nothing running runs its group itself (no hand-off to another thread, so a lone request
waits for nothing). If a group fails, each of its jobs is run again alone, so one bad job
fails only its own caller.

Linger (`linger_s`): under load, a group is written as soon as the previous one is done, so
at a steady trickle (say 20 jobs a second, each write 40 ms) nearly every group holds one job
and the fixed costs are paid per job anyway. With a linger, the caller about to write a group
first waits until its oldest job is `linger_s` old (or the group is full), so jobs arriving
meanwhile share the write. It lingers only under load: when the two latest jobs arrived
within `linger_s` of each other. A lone job after a quiet spell is written at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


@dataclass(eq=False)
class _Slot(Generic[J, R]):
    job: J
    size: int
    arrived: float = 0.0  # time.monotonic() at submit
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


class GroupCommit(Generic[J, R]):
    """`run_many(jobs)` returns one result per job, in order. `max_size`: a group stops growing
    once the sizes of its jobs (`size(job)`, e.g. events) reach it; a single job larger than
    that still runs, alone. `linger_s`: see the module notes (0: never wait)."""

    def __init__(
        self,
        run_many: Callable[[Sequence[J]], Sequence[R]],
        *,
        max_size: int,
        size: Callable[[J], int] = lambda _job: 1,
        linger_s: float = 0.0,
    ) -> None:
        self._run_many = run_many
        self._max_size = max_size
        self._size = size
        self._linger_s = linger_s
        self._cond = threading.Condition()
        self._queue: list[_Slot[J, R]] = []
        self._busy = False
        self._gap = float("inf")  # between the two latest submits
        self._last_arrival = float("-inf")
        self.groups = 0  # groups written so far (observability and tests)
        self.jobs = 0

    def submit(self, job: J) -> R:
        slot: _Slot[J, R] = _Slot(job, self._size(job), time.monotonic())
        with self._cond:
            self._gap = slot.arrived - self._last_arrival
            self._last_arrival = slot.arrived
            self._queue.append(slot)
            if self._busy and self._linger_s > 0:
                self._cond.notify_all()  # a lingering writer counts it
        while True:
            with self._cond:
                while self._busy and not slot.done:
                    self._cond.wait()
                if slot.done:
                    break
                self._busy = True
                self._linger()
                group = self._take()
            try:
                self._run(group)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set with done, error unset

    def _linger(self) -> None:
        """Under load, wait (under the condition's lock) until the oldest waiting job is
        linger_s old or the waiting jobs fill a group."""
        if self._linger_s <= 0 or self._gap >= self._linger_s or not self._queue:
            return
        deadline = self._queue[0].arrived + self._linger_s
        while sum(slot.size for slot in self._queue) < self._max_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _take(self) -> list[_Slot[J, R]]:
        """The oldest waiting jobs up to max_size (at least one). Under the condition's lock."""
        total, n = 0, 0
        for slot in self._queue:
            if n and total + slot.size > self._max_size:
                break
            total += slot.size
            n += 1
        group, self._queue = self._queue[:n], self._queue[n:]
        return group

    def _run(self, group: list[_Slot[J, R]]) -> None:
        """Run a group; every slot ends done with a result or an error, whatever happens."""
        self.groups += 1
        self.jobs += len(group)
        try:
            try:
                for slot, result in zip(group, self._call(group), strict=True):
                    slot.result = result
            except Exception:
                if len(group) == 1:
                    raise
                # one job may be the cause: each alone, so only its caller sees an error
                for slot in group:
                    try:
                        slot.result = self._call([slot])[0]
                    except Exception as alone:
                        slot.error = alone
        except BaseException as exc:
            for slot in group:
                slot.error = exc
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and the like: the leader stops too
        finally:
            with self._cond:
                for slot in group:
                    slot.done = True

    def _call(self, group: list[_Slot[J, R]]) -> list[R]:
        results = list(self._run_many([s.job for s in group]))
        if len(results) != len(group):
            raise RuntimeError(f"{len(results)} results for {len(group)} jobs")
        return results
