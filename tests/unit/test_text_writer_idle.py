"""An idle text index gives its tantivy writer back (memory, threads) and opens one again on the next write."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

import engramdb
from engramdb.index.text import TextIndex


def _wait_idle(t: TextIndex, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (t._writer is None and t._idle) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert t._writer is None and t._idle


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _hits(t: TextIndex, q: str) -> list[int]:
    return [label for label, _ in t.search(q, 10)]


def test_an_idle_writer_is_released_and_the_next_write_opens_one(tmp_path: Path) -> None:
    t = TextIndex(tmp_path / "t", refresh_interval=0.05, writer_idle_seconds=0.3)
    try:
        t.upsert(1, "alpha memory")
        t.flush()
        before = _threads()
        _wait_idle(t)
        assert _threads() < before  # tantivy's writer threads are gone
        assert t.problem() is None  # idle is not down
        assert _hits(t, "alpha") == [1]  # searches need no writer
        t.commit_watermark(7)  # nothing to commit: no writer is opened for it
        assert t._writer is None and t.watermark() == 7
        t.upsert(2, "beta memory")  # opens a writer and buffers the change
        assert t._writer is not None and not t._idle
        t.flush()
        assert sorted(_hits(t, "memory")) == [1, 2]
        t.commit_watermark(9)
    finally:
        t.close()
    with TextIndex(tmp_path / "t", writer_idle_seconds=0) as again:
        assert sorted(_hits(again, "memory")) == [1, 2] and again.watermark() == 9


def test_the_background_refresh_commits_a_write_made_after_the_release(tmp_path: Path) -> None:
    with TextIndex(tmp_path / "t", refresh_interval=0.05, writer_idle_seconds=0.2) as t:
        t.upsert(1, "first words")
        _wait_idle(t)
        t.upsert(2, "second words")  # no flush: the refresh thread commits it
        deadline = time.monotonic() + 10
        while _hits(t, "second") != [2] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _hits(t, "second") == [2]
        _wait_idle(t)  # and it is released again afterwards


def test_a_kept_writer_is_never_released(tmp_path: Path) -> None:
    with TextIndex(tmp_path / "t", refresh_interval=0.05, writer_idle_seconds=0) as t:
        t.upsert(1, "words")
        t.flush()
        time.sleep(0.4)
        assert t._writer is not None and not t._idle


def _eventually(fn, want, timeout: float = 10.0):
    """Text search is near-real-time (``index.text_refresh_seconds``): poll until it shows ``want``."""
    deadline = time.monotonic() + timeout
    got = fn()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.02)
        got = fn()
    return got


def test_a_collection_searches_and_writes_text_across_idle_periods(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "d", index={"text_refresh_seconds": 0.05}) as db:
        c = db.create_collection("c", dimension=4, metric="l2")
        c.upsert([{"id": f"r{i}", "vector": np.eye(4)[i % 4].tolist(), "text": f"note {i} apples"} for i in range(8)])
        text = c.indexes.text_index
        assert text is not None
        text._writer_idle_seconds = 0.2
        apples = lambda: len(c.search(text="apples", k=10, mode="text"))  # noqa: E731
        assert _eventually(apples, 8) == 8
        _wait_idle(text)
        assert apples() == 8
        c.upsert({"id": "r9", "vector": [1, 1, 1, 1], "text": "pears"})
        pears = lambda: [h.id for h in c.search(text="pears", k=3, mode="text")]  # noqa: E731
        assert _eventually(pears, ["r9"]) == ["r9"]
        _wait_idle(text)
        c.delete("r0")
        assert _eventually(apples, 7) == 7
    with engramdb.open(tmp_path / "d") as db:
        c = db.get_collection("c")
        assert len(c.search(text="apples", k=10, mode="text")) == 7
        assert [h.id for h in c.search(text="pears", k=3, mode="text")] == ["r9"]


def test_a_writer_that_failed_to_take_back_the_pending_changes_never_commits_part_of_them(tmp_path: Path) -> None:
    """Found in review: after a reopened writer failed to re-buffer the uncommitted changes, the next
    commit published what it had and forgot the rest. Now that commit keeps them all pending and
    buffers them again, so the following one carries the rest."""
    with TextIndex(tmp_path / "t", refresh_interval=0.05, writer_idle_seconds=0.2) as t:
        t.upsert(1, "alpha")
        _wait_idle(t)
        attempts = {"n": 0}

        def flaky(writer: object) -> None:  # a change whose first re-buffering fails
            attempts["n"] += 1
            if attempts["n"] == 1:
                raise ValueError("simulated failure while re-buffering")

        with t._lock:
            t._uncommitted.append(flaky)
            t._dirty = True
        t.upsert(2, "beta")  # reopens a writer: re-buffering stops at flaky, before this change
        deadline = time.monotonic() + 10
        while _hits(t, "beta") != [2] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _hits(t, "beta") == [2] and attempts["n"] >= 2
        assert t.problem() is None
