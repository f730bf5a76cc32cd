"""Pause Python's cyclic garbage collector around an allocation-heavy batch.

A 10,000-event batch allocates hundreds of thousands of short-lived objects, which triggers
full collections that walk every live object (a large history in memory, a big feature
cache) again and again: measured, this doubled the cost of an ingest batch. Nothing in a batch
creates reference cycles, so reference counting frees it all; the collector resumes when the
last concurrent batch ends and catches up then.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = True


@contextmanager
def gc_paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, the app, settings, stores) out of the collector's
    reach for good (`gc.freeze`): a long-running process's full collections then walk only
    what it allocated since. Measured under webhook load: full collections went from 0.3-0.5 s
    each over ~240,000 objects to 0.02-0.03 s. Call once, after start-up."""
    gc.collect()
    gc.freeze()
