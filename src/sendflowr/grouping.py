"""Group commit: jobs that callers submit while an earlier group is being written are written
together in the next group, so a fixed cost per write (a chDB part, an archive file and its
fsync, an identity transaction) is paid once per group instead of once per job.

A caller blocks until its own job is done and gets its own result or exception. A caller that
finds nothing running runs its group itself (no hand-off to another thread, so a lone request
waits for nothing). If a group fails, each of its jobs is run again alone, so one bad job
fails only its own caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


@dataclass(eq=False)
class _Slot(Generic[J, R]):
    job: J
    size: int
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


class GroupCommit(Generic[J, R]):
    """`run_many(jobs)` returns one result per job, in order. `max_size`: a group stops growing
    once the sizes of its jobs (`size(job)`, e.g. events) reach it; a single job larger than
    that still runs, alone."""

    def __init__(
        self,
        run_many: Callable[[Sequence[J]], Sequence[R]],
        *,
        max_size: int,
        size: Callable[[J], int] = lambda _job: 1,
    ) -> None:
        self._run_many = run_many
        self._max_size = max_size
        self._size = size
        self._cond = threading.Condition()
        self._queue: list[_Slot[J, R]] = []
        self._busy = False
        self.groups = 0  # groups written so far (observability and tests)
        self.jobs = 0

    def submit(self, job: J) -> R:
        slot: _Slot[J, R] = _Slot(job, self._size(job))
        with self._cond:
            self._queue.append(slot)
        while True:
            with self._cond:
                while self._busy and not slot.done:
                    self._cond.wait()
                if slot.done:
                    break
                self._busy = True
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
