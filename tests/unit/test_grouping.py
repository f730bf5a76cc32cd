"""Group commit (sendflowr.grouping): jobs submitted while a group is written share the next
group; each caller gets its own result or error."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from sendflowr.grouping import GroupCommit


class Recorder:
    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.threads: set[str] = set()

    def run_many(self, jobs: Sequence[int]) -> list[int]:
        self.groups.append(list(jobs))
        self.threads.add(threading.current_thread().name)
        if len(self.groups) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        if any(j < 0 for j in jobs):
            raise ValueError(f"bad job in {list(jobs)}")
        return [j * 10 for j in jobs]


def _join(threads: list[threading.Thread], out: dict[int, object]) -> dict[int, object]:
    for t in threads:
        t.join(10)
    return out


def _while_busy(rec: Recorder, g: GroupCommit[int, int], jobs: list[int]) -> dict[int, object]:
    """Submit `jobs` while a first job (0) is being written, then let it finish."""
    first: dict[int, object] = {}
    lead = threading.Thread(target=lambda: first.setdefault(0, g.submit(0)))
    lead.start()
    assert rec.first_started.wait(10)
    out: dict[int, object] = {}

    def one(j: int) -> None:
        try:
            out[j] = g.submit(j)
        except ValueError as exc:
            out[j] = exc

    threads = [threading.Thread(target=one, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    while len(g._queue) < len(jobs):  # all queued behind the first group
        threading.Event().wait(0.01)
    rec.release.set()
    lead.join(10)
    _join(threads, out)
    assert first == {0: 0}
    return out


def test_a_lone_job_runs_at_once_in_the_callers_thread() -> None:
    rec = Recorder()
    rec.release.set()
    g = GroupCommit(rec.run_many, max_size=100)
    assert g.submit(4) == 40
    assert rec.groups == [[4]]
    assert rec.threads == {threading.current_thread().name}


def test_jobs_arriving_during_a_write_share_the_next_group() -> None:
    rec = Recorder()
    g = GroupCommit(rec.run_many, max_size=100)
    out = _while_busy(rec, g, [1, 2, 3, 4, 5])
    assert out == {j: j * 10 for j in range(1, 6)}
    assert rec.groups[0] == [0]
    assert sorted(rec.groups[1]) == [1, 2, 3, 4, 5]
    assert (g.groups, g.jobs) == (2, 6)


def test_a_group_stops_at_max_size() -> None:
    rec = Recorder()
    g = GroupCommit(rec.run_many, max_size=5, size=lambda j: j)
    out = _while_busy(rec, g, [2, 3, 4, 9])
    assert out == {2: 20, 3: 30, 4: 40, 9: 90}
    later = rec.groups[1:]
    assert all(sum(grp) <= 5 or len(grp) == 1 for grp in later)
    assert sorted(j for grp in later for j in grp) == [2, 3, 4, 9]
    assert [9] in later  # larger than max_size: alone


def test_a_failing_job_fails_only_its_own_caller() -> None:
    rec = Recorder()
    g = GroupCommit(rec.run_many, max_size=100)
    out = _while_busy(rec, g, [1, -2, 3])
    assert out[1] == 10
    assert out[3] == 30
    assert isinstance(out[-2], ValueError)
    assert str(out[-2]) == "bad job in [-2]"  # from its own run, alone


def test_a_wrong_number_of_results_is_an_error_not_a_hang() -> None:
    g: GroupCommit[int, int] = GroupCommit(lambda jobs: [1, 2, 3], max_size=10)
    with pytest.raises(RuntimeError, match="3 results for 1 jobs"):
        g.submit(1)
    assert g._busy is False  # the next caller is not left waiting


def _simple(jobs: Sequence[int]) -> list[int]:
    return [j * 10 for j in jobs]


def test_a_lone_job_does_not_linger() -> None:
    g: GroupCommit[int, int] = GroupCommit(_simple, max_size=100, linger_s=0.5)
    started = time.monotonic()
    assert g.submit(1) == 10
    assert time.monotonic() - started < 0.25  # no earlier arrival: written at once
    time.sleep(0.05)
    t = time.monotonic()
    assert g.submit(2) == 20  # 50 ms after the first: under load, but nothing else comes
    assert 0.3 < time.monotonic() - t < 1.5  # it waited for company, and only its linger
    g2: GroupCommit[int, int] = GroupCommit(_simple, max_size=100, linger_s=0.2)
    g2.submit(1)
    time.sleep(0.3)  # longer apart than the linger: a quiet spell
    t = time.monotonic()
    assert g2.submit(2) == 20
    assert time.monotonic() - t < 0.15


def test_under_load_jobs_linger_to_share_a_write() -> None:
    groups: list[list[int]] = []

    def run_many(jobs: Sequence[int]) -> list[int]:
        groups.append(list(jobs))
        return _simple(jobs)

    g: GroupCommit[int, int] = GroupCommit(run_many, max_size=100, linger_s=0.5)
    out: dict[int, object] = {}

    def call(j: int) -> None:
        out[j] = g.submit(j)

    threads = []
    for j in range(10):  # 10 jobs 20 ms apart: a steady trickle
        t = threading.Thread(target=call, args=(j,))
        t.start()
        threads.append(t)
        time.sleep(0.02)
    _join(threads, out)
    assert out == {j: j * 10 for j in range(10)}
    assert sorted(j for grp in groups for j in grp) == list(range(10))
    # Without the linger each job would be its own group (each write is instant).
    assert len(groups) <= 3, groups


def test_a_full_group_stops_lingering() -> None:
    g: GroupCommit[int, int] = GroupCommit(_simple, max_size=3, size=lambda _j: 1, linger_s=30.0)
    out: dict[int, object] = {}
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda j=j: out.__setitem__(j, g.submit(j))) for j in range(7)
    ]
    for t in threads:
        t.start()
        time.sleep(0.01)
    _join(threads, out)
    assert out == {j: j * 10 for j in range(7)}
    # The first job (no earlier arrival) runs at once; the six others come 10 ms apart (under
    # load) and each group of 3 is written as soon as it is full, long before the 30 s linger.
    assert time.monotonic() - started < 10
