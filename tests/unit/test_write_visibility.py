"""Writes are acknowledged once durable; the indexes catch up before any read of them (read-your-writes).

The notifier thread applies committed changes to the indexes while the writer
already fsyncs the next batch, so a write can return before its index update ran.
Every read of the indexes waits for the changes acknowledged before it started.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from engramdb.engine.database import Database

DIM = 8


def _vec(rng: np.random.Generator) -> list[float]:
    v = rng.standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


def _slow_apply(coll: Any, delay: float) -> None:
    """Make the notifier take ``delay`` seconds per batch of this collection (as a big HNSW insert would)."""
    real = coll.indexes._apply

    def slow(changes: Any) -> None:
        time.sleep(delay)
        real(changes)

    coll.indexes._apply = slow


def test_a_search_after_an_upsert_returned_sees_it_under_concurrent_writers(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    try:
        coll = db.create_collection("c", DIM, metric="cosine", indexed_fields={"w": "int"})
        _slow_apply(coll, 0.002)  # the index lags the acknowledgements unless reads wait
        errors: list[str] = []
        writers = 8

        def writer(w: int) -> None:
            rng = np.random.default_rng(w)
            try:
                for i in range(25):
                    rid = f"w{w}-{i % 5}"  # ids are rewritten: each write moves the vector
                    v = _vec(rng)
                    coll.upsert({"id": rid, "vector": v, "metadata": {"w": w, "i": i}})
                    hits = coll.search(v, k=1, include=["metadata"], filter={"w": w})
                    if not hits or hits[0].id != rid or hits[0].record is None or hits[0].record.metadata.get("i") != i:
                        errors.append(f"after upserting {rid} #{i} the search returned {hits}")
                    if coll.count({"w": w}) != min(i + 1, 5):
                        errors.append(f"count of writer {w} after #{i}: {coll.count({'w': w})}")
                    if i % 7 == 6:
                        coll.delete(rid)
                        gone = coll.search(v, k=1, filter={"w": w})
                        if gone and gone[0].id == rid:
                            errors.append(f"{rid} deleted but still found")
                        coll.upsert({"id": rid, "vector": v, "metadata": {"w": w, "i": i}})
            except Exception as e:  # reported below, with the others
                errors.append(repr(e))

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[:5]
        assert db.problems() == []
    finally:
        db.close()


def test_a_search_waits_for_the_index_update_of_an_acknowledged_write(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    try:
        coll = db.create_collection("c", DIM, metric="cosine", indexed_fields={"k": "keyword"})
        rng = np.random.default_rng(1)
        coll.upsert([{"id": f"r{i}", "vector": _vec(rng), "metadata": {"k": "old"}} for i in range(20)])
        _slow_apply(coll, 0.5)
        v = _vec(rng)
        t0 = time.monotonic()
        coll.upsert({"id": "new", "vector": v, "metadata": {"k": "new"}})
        acked = time.monotonic() - t0
        assert acked < 0.4  # acknowledged before the (slow) index update ran
        assert coll.indexes._applied_seq < db.store.committed_seq(coll.prefix)
        assert [h.id for h in coll.search(v, k=1)] == ["new"]
        assert coll.count({"k": "new"}) == 1
        assert [h.id for h in coll.search(v, k=1, filter={"k": "new"})] == ["new"]
    finally:
        db.close()


def test_close_snapshots_every_acknowledged_write(tmp_path: Path) -> None:
    """A close waits for the notifier, so the snapshot holds every acknowledged write (nothing to replay)."""
    db = Database(tmp_path / "db")
    coll = db.create_collection("c", DIM, metric="l2")
    rng = np.random.default_rng(2)
    coll.upsert([{"id": f"r{i}", "vector": _vec(rng)} for i in range(10)])
    coll.search(_vec(rng), k=1)
    real = coll.indexes.apply_committed

    def late(changes: Any) -> None:  # the notifier is behind, not yet holding the index lock
        time.sleep(0.3)
        real(changes)

    coll.indexes.apply_committed = late
    coll.upsert({"id": "last", "vector": _vec(rng)})
    seq = db.store.seq
    db.close()
    with Database(tmp_path / "db") as db2:
        c2 = db2.get_collection("c")
        c2.load()
        assert c2.indexes.watermark == seq
        assert c2.get("last") is not None and len(c2.search(_vec(rng), k=20)) == 11
