"""glibc's mmap threshold fixed (sendflowr/allocator.py): freed large blocks go back to the
system even after glibc would have raised its threshold, so a long-running process does not
keep the peak of every numpy temporary it ever freed."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from sendflowr.allocator import fix_mmap_threshold

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)

# In a fresh process: free one 4 MiB block (glibc's dynamic threshold rises to 4 MiB), then
# allocate 200 blocks of 1 MiB each with a small one kept after it, free the big ones, and
# print how much of the 200 MiB the process still holds.
_PROBE = """
import sys
import numpy as np
from sendflowr.allocator import fix_mmap_threshold

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

print(fix_mmap_threshold(int(sys.argv[1])))
a = np.ones(4 << 20, np.uint8)
del a
base = rss_mib()
big, small = [], []
for _ in range(200):
    big.append(np.ones(1 << 20, np.uint8))
    small.append(np.ones(1000, np.uint8))
big.clear()
print(rss_mib() - base)
"""


def _held_after_free(kib: int) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(kib)], check=True, capture_output=True, text=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_large_blocks_go_back_with_the_threshold_fixed() -> None:
    fixed, held = _held_after_free(128)
    assert fixed
    assert held < 20  # MiB of the 200 freed


def test_glibc_default_keeps_them_which_is_what_the_setting_is_for() -> None:
    fixed, held = _held_after_free(0)
    assert not fixed
    assert held > 150


def test_zero_leaves_the_default() -> None:
    assert fix_mmap_threshold(0) is False
