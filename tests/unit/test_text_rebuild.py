"""A lost text index is rebuilt on its own: the sound vector snapshot is kept."""

from __future__ import annotations

import shutil
import time

import numpy as np

import engramdb


def _text_ids(c, query: str) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        ids = [h.id for h in c.search(text=query, mode="text", k=10, include=[])]
        if ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.05)


def test_missing_text_index_is_rebuilt_without_rebuilding_vectors(tmp_path):
    rng = np.random.default_rng(3)
    db = engramdb.open(tmp_path / "d")
    c = db.create_collection("c", dimension=8)
    c.upsert([{"id": f"r{i}", "vector": rng.normal(size=8).tolist(), "text": f"alpha w{i}"} for i in range(50)])
    assert c.indexes.snapshot()
    # After the snapshot: an update, a delete and a new record, only in the changelog.
    c.upsert({"id": "r1", "vector": rng.normal(size=8).tolist(), "text": "beta changed"})
    c.delete("r2")
    c.upsert({"id": "new", "vector": rng.normal(size=8).tolist(), "text": "alpha gamma"})
    index_dir = c.index_dir
    db.close()

    shutil.rmtree(index_dir / "text")
    vector_file = index_dir / "vector.hnsw"
    before = vector_file.stat().st_mtime_ns

    db = engramdb.open(tmp_path / "d")
    c = db.get_collection("c")
    c.load()
    assert vector_file.stat().st_mtime_ns == before, "the vector snapshot was rebuilt, not only the text index"
    assert c.load_progress[0] >= 49
    assert _text_ids(c, "w7") == ["r7"]
    assert _text_ids(c, "beta") == ["r1"]
    assert _text_ids(c, "w1") == []  # r1's old text is gone
    assert "r2" not in _text_ids(c, "alpha")
    assert _text_ids(c, "gamma") == ["new"]
    assert len(_text_ids(c, "alpha")) == 10
    assert c.count() == 50
    db.close()
