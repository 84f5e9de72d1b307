"""The gate that keeps readers off the RocksDB handle while it is reopened after a full disk."""

from __future__ import annotations

import threading
import time

from engramdb.storage.store import _Gate


def test_exclusive_waits_for_shared_holders_and_gives_up_after_its_timeout():
    g = _Gate()
    with g.shared(), g.shared():  # reentrant
        t0 = time.monotonic()
        with g.exclusive(timeout=0.2) as won:
            assert not won
        assert time.monotonic() - t0 >= 0.19
    with g.exclusive(timeout=0.2) as won:
        assert won


def test_readers_wait_while_exclusive_is_held_and_exclusive_gets_in_between_readers():
    g = _Gate()
    entered = threading.Event()
    order: list[str] = []

    def reader() -> None:
        with g.shared():
            order.append("reader")
        entered.set()

    with g.exclusive(timeout=1.0) as won:
        assert won
        t = threading.Thread(target=reader)
        t.start()
        assert not entered.wait(0.2)  # held back while the reopen runs
        order.append("exclusive")
    t.join(5)
    assert order == ["exclusive", "reader"]

    release = threading.Event()

    def long_reader() -> None:
        with g.shared():
            release.wait(5)

    t = threading.Thread(target=long_reader)
    t.start()
    time.sleep(0.05)
    threading.Timer(0.2, release.set).start()
    with g.exclusive(timeout=5.0) as won:  # gets in once the reader lets go
        assert won
    t.join(5)
