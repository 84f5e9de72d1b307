"""Disk full: writes fail with StorageFull (507), nothing acknowledged is lost, reads keep working.

Runs on a small tmpfs the test mounts itself (skipped where mounting is not allowed).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from typing import Any

import numpy as np
import pytest

import engramdb
from engramdb import StorageFull


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(c, rng, start: int = 0) -> tuple[list[str], StorageFull]:
    """Upsert until the disk is full; the acknowledged ids and the error."""
    acked: list[str] = []
    for i in range(start, start + 20_000):
        try:
            c.upsert({"id": f"r{i}", "vector": rng.normal(size=32).tolist(), "text": f"word{i} " + "x" * 2000})
            acked.append(f"r{i}")
        except StorageFull as e:
            return acked, e
    raise AssertionError("the 8 MiB filesystem never filled up")


def _await_writes(c, rng, timeout: float = 60.0) -> float:
    """Seconds until a write succeeds again (retrying as a client would)."""
    t0 = time.monotonic()
    while True:
        try:
            c.upsert({"id": "after", "vector": rng.normal(size=32).tolist(), "text": "after the disk was full"})
            return time.monotonic() - t0
        except StorageFull:
            if time.monotonic() - t0 > timeout:
                raise
            time.sleep(0.2)


def _ids(c: Any, ids: list[str]) -> set[str]:
    """The ids among ``ids`` that exist, read in batches within the per-call limit (how many writes fit
    before the disk fills depends on the storage layout)."""
    return {r.id for i in range(0, len(ids), 5_000) for r in c.get_many(ids[i : i + 5_000], include=())}


def test_disk_full_fails_cleanly_loses_nothing_and_recovers_without_restart(small_fs):
    path = small_fs / "d"
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * 3_000_000)  # freed later, as an operator would
    db = engramdb.open(path, storage={"write_buffer_mb": 1, "max_wal_mb": 16})
    c = db.create_collection("x", dimension=32)
    rng = np.random.default_rng(0)
    acked, failure = _fill(c, rng)
    assert failure.http_status == 507 and failure.grpc_status == "RESOURCE_EXHAUSTED"
    assert "disk is full" in failure.message
    # Reads keep working and every acknowledged write is readable.
    assert len(c.get_many(acked[-100:], include=())) == min(100, len(acked))
    with pytest.raises(StorageFull):
        c.upsert({"id": "more", "vector": rng.normal(size=32).tolist()})
    with pytest.raises(StorageFull):
        c.link({"src": acked[0], "relation": "rel", "dst": acked[1]})

    # Space is freed; the same open database accepts writes again.
    ballast.unlink()
    os.sync()
    _await_writes(c, rng)
    # Usually the store's own reopen brings writes back (one recovery); RocksDB sometimes clears the
    # background error itself first (seen on loaded machines), and then no reopen is needed.
    assert db.store.recoveries <= 1
    c.link({"src": acked[0], "relation": "rel", "dst": acked[1]})
    assert c.get("more") is None
    # In batches within the per-call limit: how many writes fit before the disk fills depends on the storage layout.
    assert _ids(c, acked) == set(acked)
    # The indexes kept up: vector, text and graph queries see old and new writes.
    probe = acked[len(acked) // 2]
    hit = c.search(vector=c.get(probe, include=["vector"]).vector, k=1)
    assert hit[0].id == probe
    deadline = time.monotonic() + 15  # text search is near-real-time (1 s); generous for loaded machines
    while [h.id for h in c.search(text="after disk full", mode="text", k=1)] != ["after"]:
        assert time.monotonic() < deadline, "the text index missed a write made after the recovery"
        time.sleep(0.1)
    assert [h.id for h in c.search(text=f"word{probe[1:]}", mode="text", k=1)] == [probe]
    assert [e.dst for e in c.edges(acked[0], direction="out")] == [acked[1]]

    db.close()
    # And everything is still there after a restart.
    db = engramdb.open(path)
    c = db.get_collection("x")
    assert _ids(c, [*acked, "after"]) == {*acked, "after"}
    assert c.get("more") is None
    db.close()


def test_text_commit_that_hits_a_full_disk_keeps_its_changes_for_the_next_commit(small_fs):
    """tantivy kills its writer (dropping what it buffered) when a commit fails; nothing may be lost."""
    from engramdb.index.text import TextIndex

    idx = TextIndex(small_fs / "text", refresh_interval=1.0)
    try:
        idx.upsert_many((i, f"early{i} " + "filler " * 50) for i in range(1, 201))
        idx.flush()
        ballast = small_fs / "ballast"
        with open(ballast, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass  # the disk is full
        idx.upsert_many((i, f"during{i} " + "filler " * 200) for i in range(201, 2201))
        idx.delete(5)
        with pytest.raises(StorageFull):
            idx.flush()
        ballast.unlink()
        idx.upsert(9999, "after the disk was full")
        idx.flush()  # the failed commit's changes are in this one
        assert [lb for lb, _ in idx.search("after", 5)] == [9999]
        assert [lb for lb, _ in idx.search("during1500", 5)] == [1500]
        assert [lb for lb, _ in idx.search("early7", 5)] == [7]
        assert idx.search("early5", 5) == []
    finally:
        idx.close()
