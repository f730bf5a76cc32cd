"""Explanation rows of single decisions, written to the event store in small batches.

A single decision over HTTP used to write its explanation with one synchronous INSERT, under
the embedded store's global query lock: at a few hundred decisions a second that one insert
per request was most of the latency and queued the other requests behind it. Rows handed to
`add` are written by a background thread, together, at most `max_delay_s` later (sooner when
`max_rows` are waiting).

What a caller can rely on (the event store enforces it, see EventStore):
- reads of `timing_explanations` (`get_explanation`), erasure and tenant deletion write the
  pending rows first, so an `explanation_ref` a response named is always retrievable from
  the process that answered, and an erased person's pending row cannot land afterwards;
- `close()` writes what is pending before the store closes (a clean shutdown loses nothing);
- a failed write keeps its rows for the next attempt (and the next read raises the error).
The trade-off: a crash of the process loses the rows of at most the last `max_delay_s`
(the decisions themselves are stateless answers; a batch decision or a schedule still writes
its explanations before it answers). docs/timing.md says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from sendflowr.timing.explanation import Explanation

log = logging.getLogger(__name__)


class ExplanationBuffer:
    def __init__(
        self,
        write: Callable[[Sequence[Explanation]], object],
        max_delay_s: float = 0.25,
        max_rows: int = 2_000,
    ) -> None:
        self._write = write
        self.max_delay_s = max_delay_s
        self.max_rows = max_rows
        self._pending: list[Explanation] = []
        self._writing = 0  # rows taken by a flush and not yet written
        self._first_at = 0.0
        self._cond = threading.Condition()
        self._flush_lock = threading.Lock()  # one write at a time, in order
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, rows: Sequence[Explanation]) -> None:
        if not rows:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("the explanation buffer is closed")
            first = not self._pending
            if first:
                self._first_at = time.monotonic()
            self._pending.extend(rows)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="explanation-writer", daemon=True
                )
                self._thread.start()
            if first or len(self._pending) >= self.max_rows:
                self._cond.notify()  # the writer waits for a first row, then for the delay

    def pending(self) -> int:
        """Rows not yet written: waiting, or in a write that has not finished."""
        with self._cond:
            return len(self._pending) + self._writing

    def flush(self) -> int:
        """Write every pending row now (the caller's thread); returns how many."""
        with self._flush_lock:
            with self._cond:
                rows, self._pending = self._pending, []
                self._writing = len(rows)
            if not rows:
                return 0
            try:
                self._write(rows)
            except BaseException:
                with self._cond:  # kept, in order, for the next attempt
                    self._pending[:0] = rows
                    self._writing = 0
                    self._first_at = time.monotonic()
                raise
            with self._cond:
                self._writing = 0
            return len(rows)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._pending:
                        due = self._first_at + self.max_delay_s - time.monotonic()
                        if due <= 0 or len(self._pending) >= self.max_rows:
                            break
                        self._cond.wait(due)
                    else:
                        self._cond.wait()
                if self._closed:
                    return
            try:
                self.flush()
            except Exception as exc:  # kept for the next attempt; a read will raise it
                log.warning("writing %d explanation rows failed: %s", self.pending(), exc)
                time.sleep(min(1.0, self.max_delay_s * 10))

    def close(self) -> None:
        """Stop the writer and write what is pending."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self.flush()
