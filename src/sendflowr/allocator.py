"""glibc malloc's mmap threshold, fixed for long-running processes (`run`, `worker`,
`consumer`).

glibc serves an allocation at or above its mmap threshold (128 KiB at start) with a mapping
of its own, returned to the system when freed. Its default is dynamic: freeing such a block
raises the threshold to that block's size (up to 32 MiB), so later numpy temporaries of that
size (the audience fold and archetype fit, the decision batches: tens to hundreds of MiB)
come from the heap arenas instead, which keep the pages after the free when anything smaller
still lives above them. In the soak (bench_soak.py, 1,200 webhook events/s + 120 decisions/s)
that retention was the memory growth: RSS rose by a step each time the audience was rebuilt
(+145 MiB at the 5-minute rebuild, +19% over the measured span) and stayed. Setting the
threshold explicitly (mallopt M_MMAP_THRESHOLD) also turns the adjustment off: large blocks
are always their own mappings and go back when freed (+1.2% with the same load and code).

Python has no binding for mallopt, hence ctypes; anything but glibc on Linux is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import sys

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # malloc.h


def fix_mmap_threshold(kib: int) -> bool:
    """Set glibc's mmap threshold to `kib` KiB (disabling its dynamic adjustment); 0 leaves
    the default. Returns whether it was set."""
    if kib <= 0 or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        ok = bool(ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, kib * 1024))
    except (OSError, AttributeError) as exc:
        log.warning("could not set malloc's mmap threshold: %s", exc)
        return False
    if not ok:
        log.warning("malloc refused an mmap threshold of %d KiB", kib)
    return ok
