"""Changelog entries carry the vector a change replaced, so a graph-only snapshot loads exactly.

The vector snapshot holds the graph without the live vectors; loading takes them from the
"vectors" column family. A record changed after the snapshot's watermark has another vector
there (or none), so each change that replaces or deletes a vector records the one it replaced,
and the load gives every node back the vector it had when the graph was saved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engramdb
from engramdb.errors import CorruptData
from engramdb.index.vector import VectorIndex
from engramdb.storage import keyspace

STORAGE = {"sync_writes": False, "ttl_sweep_interval_seconds": 3600}


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_change_entries_round_trip() -> None:
    key = b"\x00" * 7 + b"\x01" + "id-é".encode()
    assert keyspace.parse_change(keyspace.change_entry(keyspace.CHANGE_RECORD, key)) == (
        keyspace.CHANGE_RECORD,
        key,
        None,
    )
    assert keyspace.parse_change(keyspace.change_entry(keyspace.CHANGE_EDGE, key)) == (keyspace.CHANGE_EDGE, key, None)
    vec = np.arange(4, dtype=np.float32).tobytes()
    entry = keyspace.change_entry(keyspace.CHANGE_RECORD, key, vec)
    assert entry[0] == keyspace.CHANGE_RECORD_PRIOR
    assert keyspace.parse_change(entry) == (keyspace.CHANGE_RECORD, key, vec)
    # What older versions wrote still reads the same.
    assert keyspace.parse_change(bytes([keyspace.CHANGE_RECORD]) + key) == (keyspace.CHANGE_RECORD, key, None)


@pytest.mark.parametrize("entry", [b"", bytes([keyspace.CHANGE_RECORD_PRIOR, 0]), bytes([4, 0, 9]) + b"short"])
def test_a_cut_short_change_entry_is_corrupt_data(entry: bytes) -> None:
    with pytest.raises(CorruptData):
        keyspace.parse_change(entry)


def _entries(db: engramdb.Database) -> list[tuple[bytes, bytes | None]]:
    out = []
    for _, v in db.store.iter_prefix("changes", b""):
        kind, key, prior = keyspace.parse_change(v)
        if kind == keyspace.CHANGE_RECORD:
            out.append((key, prior))
    return out


def test_only_changes_that_replace_or_delete_a_vector_carry_it(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "d", storage=STORAGE) as db:
        c = db.create_collection("c", dimension=4, metric="l2")
        v1, v2 = [1.0, 0, 0, 0], [0, 1.0, 0, 0]
        c.upsert({"id": "a", "vector": v1})  # new: nothing replaced
        c.upsert({"id": "a", "vector": v1, "metadata": {"x": 1}})  # same vector
        c.patch("a", metadata={"y": 2})  # metadata only
        c.upsert({"id": "a", "vector": v2})  # replaces v1
        c.delete("a")  # deletes v2
        c.upsert({"id": "a", "vector": v1})  # after a delete: nothing replaced
        c.upsert({"id": "b", "vector": v2})
        priors = [p for _, p in _entries(db)]
        assert [None if p is None else np.frombuffer(p, dtype=np.float32).tolist() for p in priors] == [
            None,
            None,
            None,
            v1,
            v2,
            None,
            None,
        ]


def test_a_batch_that_changes_a_vector_twice_records_each_replaced_vector(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "d", storage=STORAGE) as db:
        c = db.create_collection("c", dimension=2, metric="l2")
        c.upsert({"id": "a", "vector": [1, 0]})
        # One write, one group commit: the second change replaces what the first wrote.
        db.store.apply([_mutation(c, "a", [0, 1]), _mutation(c, "a", [1, 1])])
        priors = [p for _, p in _entries(db)]
        assert [None if p is None else np.frombuffer(p, dtype=np.float32).tolist() for p in priors] == [
            None,
            [1.0, 0.0],
            [0.0, 1.0],
        ]


def _mutation(c, rid: str, vec: list[float]):
    """A record upsert as Collection.upsert builds it (a mutation of the store's one write path)."""
    import time

    from engramdb.engine import rows
    from engramdb.storage.store import Mutation

    [(_, row)] = rows.upsert_rows({"id": rid, "vector": vec}, time.time(), c.config, c.hlc, c.embedder)
    return Mutation(keyspace.CHANGE_RECORD, c.prefix, c._key(rid), row)


def _load_snapshot(ix) -> VectorIndex:
    """What the engine's load restores, before the changelog replay moves anything."""
    return VectorIndex.load(
        ix.index_dir,
        ix.dimension,
        ix.metric,
        16,
        200,
        64,
        vectors=lambda: ix.store.iter_prefix("vectors", ix.prefix),
        fetch=ix._row_vectors,
        key_prefix=ix.prefix,
        replaced=ix._replaced_vectors,
    )


def test_every_node_gets_back_its_vector_as_of_the_snapshot(tmp_path: Path) -> None:
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_interval_seconds": 3600})
    c = db.create_collection("c", dimension=8, metric="l2")
    base = _vectors(300, 8, 3)
    c.upsert([{"id": f"r{i}", "vector": base[i]} for i in range(300)])
    c.upsert([{"id": f"r{i}", "vector": base[i] + 5} for i in range(10)])  # deleted nodes in the snapshot
    c.delete([f"r{i}" for i in range(290, 300)])
    assert c.indexes.snapshot()
    saved = c.indexes.vindex._index.__getstate__()[0]["data_level0"].copy()
    # After the snapshot, in every order that matters: moved once, moved twice, metadata then
    # moved, moved then deleted, deleted, deleted and re-created, and a new record.
    c.upsert([{"id": f"r{i}", "vector": base[i] + 10} for i in range(20, 40)])
    c.upsert([{"id": f"r{i}", "vector": base[i] + 20} for i in range(20, 30)])
    c.patch("r50", metadata={"m": 1})
    c.upsert({"id": "r50", "vector": base[50] - 3})
    c.upsert({"id": "r60", "vector": base[60] - 3})
    c.delete(["r60", "r61"])
    c.delete("r70")
    c.upsert({"id": "r70", "vector": base[70] * 2})
    c.upsert({"id": "new", "vector": [9.0] * 8})
    c.close(snapshot=False)  # what a crash leaves: the older snapshot and the changelog
    db.store.close()
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    restored = _load_snapshot(c.indexes)
    assert np.array_equal(restored._index.__getstate__()[0]["data_level0"], saved)
    # And the engine's own load (the same, then the replay) answers with the current vectors.
    assert c.count() == 290 - 2 + 1 and c.load_progress == (0, 0)
    for i in range(20, 30):
        assert c.search(base[i] + 20, k=1, include=[])[0].id == f"r{i}"
    assert c.search(base[50] - 3, k=1, include=[])[0].id == "r50"
    assert c.search(base[70] * 2, k=1, include=[])[0].id == "r70"
    db.close()


def test_a_node_whose_vector_is_stored_nowhere_rebuilds_from_the_records(tmp_path: Path) -> None:
    """A changelog entry without the replaced vector (as written before it was recorded) cannot
    restore the node: the snapshot is not used, and the rebuild from the records is correct."""
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_interval_seconds": 3600})
    c = db.create_collection("c", dimension=4, metric="l2")
    base = _vectors(50, 4, 8)
    c.upsert([{"id": f"r{i}", "vector": base[i]} for i in range(50)])
    assert c.indexes.snapshot()
    c.delete("r3")
    c.close(snapshot=False)
    # Strip the replaced vector from the delete's changelog entry.
    for k, v in list(db.store.iter_prefix("changes", b"")):
        kind, key, prior = keyspace.parse_change(v)
        if prior is not None:
            db.store.cf["changes"][k] = keyspace.change_entry(kind, key)
    db.store.close()
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    with pytest.raises(CorruptData, match="stored nowhere"):
        _load_snapshot(c.indexes)
    assert c.count() == 49
    assert c.load_progress != (0, 0)  # rebuilt
    assert c.search(base[7], k=1, include=[])[0].id == "r7"
    db.close()


def test_no_snapshot_while_the_indexes_may_be_ahead_of_their_watermark(tmp_path: Path) -> None:
    """Loading reads rows as they are now: until the notifier has applied what was committed by the
    end of the load, the graph can be ahead of _applied_seq, and a snapshot must wait."""
    with engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_interval_seconds": 3600}) as db:
        c = db.create_collection("c", dimension=2, metric="l2")
        c.upsert({"id": "a", "vector": [1, 0]})
        assert c.count() == 1  # a read: the indexes hold the write (_applied_seq is current)
        ix = c.indexes
        assert ix._exact_from <= ix._applied_seq
        ix._exact_from = ix._applied_seq + 1  # as if a load had read a change not yet applied
        assert not ix.snapshot() and ix.dirty
        ix._exact_from = 0
        assert ix.snapshot() and not ix.dirty
