"""The collector pause nests across threads and restores the previous state."""

from __future__ import annotations

import gc

from sendflowr.gcpause import gc_paused, set_gen0_threshold


def test_pause_nests_and_restores() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer batch is still running
    assert gc.isenabled()


def test_pause_keeps_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_pause_restores_after_an_error() -> None:
    try:
        with gc_paused():
            raise ValueError("boom")
    except ValueError:
        pass
    assert gc.isenabled()


def test_freezing_start_up_objects_keeps_later_ones_collectable() -> None:
    from sendflowr.gcpause import freeze_startup_objects

    before: list[object] = [[]]  # a container the collector tracks
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        assert not any(o is before for o in gc.get_objects())  # frozen: not walked
        later: list[object] = []
        later.append(later)  # a cycle made after start-up
        assert any(o is later for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_gen0_threshold_is_set_and_zero_leaves_it() -> None:
    before = gc.get_threshold()
    try:
        set_gen0_threshold(0)
        assert gc.get_threshold() == before
        set_gen0_threshold(12_345)
        assert gc.get_threshold() == (12_345, before[1], before[2])
    finally:
        gc.set_threshold(*before)
