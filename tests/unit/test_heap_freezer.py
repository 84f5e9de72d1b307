"""The server's heap freezer (server/lifecycle.py): loaded data out of the full GC passes, garbage still found."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from engramdb.server.lifecycle import HeapFreezer, load_then_freeze


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session runs with a normal collector


class _Node:
    def __init__(self) -> None:
        self.other: Any = None


def test_start_freezes_what_is_alive() -> None:
    gc.unfreeze()
    freezer = HeapFreezer(interval=3600)
    freezer.start()
    try:
        assert gc.get_freeze_count() > 0
    finally:
        freezer.stop()


def test_refreeze_collects_cyclic_garbage_that_was_frozen() -> None:
    # A structure frozen while alive and dropped later (a dropped collection) must not leak for good.
    gc.unfreeze()
    ref = _cycle_kept_until_frozen()
    gc.collect()
    assert ref() is not None  # frozen: the ordinary collector skips it
    HeapFreezer(interval=3600).freeze()
    assert ref() is None


def _cycle_kept_until_frozen() -> weakref.ref[_Node]:
    holder = [_Node(), _Node()]
    holder[0].other, holder[1].other = holder[1], holder[0]
    gc.freeze()
    ref = weakref.ref(holder[0])
    del holder
    return ref


def test_refreezes_periodically_until_stopped() -> None:
    freezer = HeapFreezer(interval=0.02)
    freezer.start()
    deadline = time.monotonic() + 5
    while freezer.passes < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    freezer.stop()
    assert freezer.passes >= 3
    done = freezer.passes
    time.sleep(0.1)
    assert freezer.passes == done  # stopped


def test_loader_freezes_after_loading_and_after_a_failed_load() -> None:
    class Service:
        loaded = False

        def load_all(self) -> None:
            assert gc.get_freeze_count() == 0  # not before the data is in memory
            self.loaded = True

    gc.unfreeze()
    service = Service()
    freezer = HeapFreezer(interval=3600)
    load_then_freeze(service, freezer)  # type: ignore[arg-type]
    freezer.stop()
    assert service.loaded and gc.get_freeze_count() > 0

    class Failing:
        def load_all(self) -> None:
            raise RuntimeError("boom")

    gc.unfreeze()
    freezer = HeapFreezer(interval=3600)
    with pytest.raises(RuntimeError):
        load_then_freeze(Failing(), freezer)  # type: ignore[arg-type]
    freezer.stop()
    assert gc.get_freeze_count() > 0
