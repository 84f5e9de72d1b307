"""An idle collection does not pin the changelog, and still reopens from its snapshot."""

from __future__ import annotations

import numpy as np

import engramdb
from engramdb.storage import keys as K


def test_idle_collection_does_not_block_trimming(tmp_path):
    rng = np.random.default_rng(5)
    db = engramdb.open(tmp_path / "d")
    idle = db.create_collection("idle", dimension=4)
    busy = db.create_collection("busy", dimension=4)
    idle.upsert([{"id": f"i{n}", "vector": rng.normal(size=4).tolist(), "text": f"idle {n}"} for n in range(20)])
    db.snapshot()
    for n in range(30):
        busy.upsert({"id": f"b{n}", "vector": rng.normal(size=4).tolist()})
    db.snapshot()
    first = db.store.first_key("changes")
    assert first is not None and K.parse_seq(first) > idle.watermark - 1
    assert idle.watermark == busy.watermark == db.store.seq
    query = idle.get("i3", include=["vector"]).vector
    db.close()

    db = engramdb.open(tmp_path / "d")
    idle = db.get_collection("idle")
    idle.load()
    assert idle.load_progress == (0, 0), "the idle collection was rebuilt instead of loaded from its snapshot"
    assert idle.search(query, k=1)[0].id == "i3"
    assert [h.id for h in idle.search(text="3", mode="text", k=1)] == ["i3"]
    assert idle.count() == 20
    db.close()
