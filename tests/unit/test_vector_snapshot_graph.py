"""The vector snapshot holds the graph, not the live vectors: they are read back from storage at load."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

import engramdb
from engramdb.errors import CorruptData
from engramdb.index import vector as vmod
from engramdb.index.vector import VectorIndex

STORAGE = {"sync_writes": False, "ttl_sweep_interval_seconds": 3600}


def _state(v: VectorIndex) -> dict:
    return v._index.__getstate__()[0]


def _index_with_tombstones(metric: str = "l2") -> tuple[VectorIndex, dict[str, np.ndarray]]:
    """An index with live vectors, replaced ones (deleted nodes) and deleted records; and the stored vectors."""
    rng = np.random.default_rng(5)
    v = VectorIndex(16, metric)
    stored: dict[str, np.ndarray] = {}
    ids = [f"r{i}" for i in range(400)]
    vecs = v.normalize(rng.standard_normal((400, 16)).astype(np.float32))
    v.upsert(ids, vecs, [None] * 400)
    stored.update(zip(ids, vecs, strict=True))
    moved = v.normalize(rng.standard_normal((60, 16)).astype(np.float32))
    v.upsert(ids[:60], moved, [None] * 60)  # the old nodes stay in the graph, deleted
    stored.update(zip(ids[:60], moved, strict=True))
    for rid in ids[390:]:
        v.delete(rid)
        del stored[rid]
    return v, stored


def _scan(stored: dict[str, np.ndarray]):
    return lambda: [(rid.encode(), vec.astype(np.float32).tobytes()) for rid, vec in stored.items()]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_graph_and_stored_vectors_restore_the_index_byte_for_byte(tmp_path: Path, metric: str) -> None:
    v, stored = _index_with_tombstones(metric)
    v.save(tmp_path, watermark=7)
    v._index.save_index(str(tmp_path / "full"))
    # hnswlib's file without the 460 nodes' vectors, plus the 70 deleted nodes' slots and vectors,
    # a count, the magic and the dimension: no live vector is in it.
    full = (tmp_path / "full").stat().st_size
    assert (tmp_path / "vector.hnsw").stat().st_size == full - 460 * 16 * 4 + 70 * (4 + 16 * 4) + 8 + 8 + 4
    loaded = VectorIndex.load(tmp_path, 16, metric, 16, 200, 64, vectors=_scan(stored))
    before, after = _state(v), _state(loaded)
    # Every node, deleted ones included (their vectors are kept in the snapshot), and every link.
    assert np.array_equal(before["data_level0"], after["data_level0"])
    assert np.array_equal(before["link_lists"], after["link_lists"])
    assert loaded.watermark == 7 and len(loaded) == len(v) == 390
    q = np.random.default_rng(9).standard_normal((20, 16)).astype(np.float32)
    for row in v.normalize(q):
        a, b = v.knn(row, 10, ef=64), loaded.knn(row, 10, ef=64)
        assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


def test_a_graph_only_snapshot_needs_the_stored_vectors(tmp_path: Path) -> None:
    v, _ = _index_with_tombstones()
    v.save(tmp_path, watermark=1)
    with pytest.raises(CorruptData, match="stored vectors"):
        VectorIndex.load(tmp_path, 16, "l2", 16, 200, 64)


def test_a_snapshot_with_its_vectors_loads_without_them(tmp_path: Path) -> None:
    """``index.snapshot_vectors``: hnswlib's own file (format 2, as earlier versions wrote) loads as it is."""
    v, _ = _index_with_tombstones()
    v.snapshot_vectors = True
    v.save(tmp_path, watermark=3)
    v._index.save_index(str(tmp_path / "full"))
    assert (tmp_path / "vector.hnsw").read_bytes() == (tmp_path / "full").read_bytes()
    loaded = VectorIndex.load(tmp_path, 16, "l2", 16, 200, 64)  # no vectors needed
    assert np.array_equal(_state(v)["data_level0"], _state(loaded)["data_level0"])
    assert loaded.watermark == 3 and len(loaded) == 390
    # Moving the watermark of an unchanged index keeps the format of the file it describes.
    assert loaded.save_watermark(tmp_path, 5)
    assert VectorIndex.load(tmp_path, 16, "l2", 16, 200, 64).watermark == 5


@pytest.mark.parametrize("first,then", [(False, True), (True, False)])
def test_the_setting_can_change_between_runs(tmp_path: Path, first: bool, then: bool) -> None:
    base = _vectors(400, 128, 12)
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_vectors": first})
    c = db.create_collection("c", dimension=128, metric="cosine")
    c.upsert([{"id": f"r{i}", "vector": base[i]} for i in range(400)])
    index_dir = Path(c.index_dir)
    db.close()
    graph_only = (index_dir / "vector.hnsw").stat().st_size
    assert (graph_only < 400 * 128 * 4) is (not first)
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_vectors": then})
    c = db.get_collection("c")
    assert c.search(base[17], k=1, include=[])[0].id == "r17" and c.load_progress == (0, 0)
    c.upsert({"id": "r1", "vector": base[2]})  # something to snapshot
    db.close()  # the next snapshot is written in the new format
    assert ((index_dir / "vector.hnsw").stat().st_size < 400 * 128 * 4) is (not then)
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_vectors": then})
    c = db.get_collection("c")
    assert c.search(base[17], k=1, include=[])[0].id == "r17" and c.load_progress == (0, 0)
    db.close()


def test_a_live_vector_missing_from_the_scan_is_fetched(tmp_path: Path) -> None:
    v, stored = _index_with_tombstones()
    v.save(tmp_path, watermark=1)
    elsewhere = {rid: stored.pop(rid) for rid in ("r100", "r200")}
    asked: list[list[str]] = []

    def fetch(ids: list[str]) -> list[bytes | None]:
        asked.append(sorted(ids))
        return [elsewhere[i].tobytes() for i in ids]

    loaded = VectorIndex.load(tmp_path, 16, "l2", 16, 200, 64, vectors=_scan(stored), fetch=fetch)
    assert asked == [["r100", "r200"]]
    assert np.array_equal(_state(v)["data_level0"], _state(loaded)["data_level0"])


def test_a_stored_vector_of_the_wrong_size_is_corrupt_data(tmp_path: Path) -> None:
    v, stored = _index_with_tombstones()
    v.save(tmp_path, watermark=1)
    stored["r5"] = stored["r5"][:8]
    with pytest.raises(CorruptData, match="wrong size"):
        VectorIndex.load(tmp_path, 16, "l2", 16, 200, 64, vectors=_scan(stored))


def test_ids_that_do_not_match_the_graph_are_corrupt_data(tmp_path: Path) -> None:
    v, stored = _index_with_tombstones()
    v.save(tmp_path, watermark=1)
    graph = (tmp_path / "vector.hnsw").read_bytes()
    ids = vmod._PackedIds.pack({1: "a", 999_999: "b"})  # a label the graph does not have
    with pytest.raises(CorruptData, match="ids do not match"), vmod._scratch_file(tmp_path) as (fd, _):
        vmod._restore_vectors(graph, 16, vmod._PackedIds.unpack(ids), _scan(stored), None, fd)


def test_an_unexpected_layout_is_corrupt_data(tmp_path: Path) -> None:
    v, stored = _index_with_tombstones()
    v.save(tmp_path, watermark=1)
    graph = bytearray((tmp_path / "vector.hnsw").read_bytes())
    ids = vmod._PackedIds.unpack(vmod._PackedIds.pack(v.id_of))
    for damage in (lambda g: g.__setitem__(slice(8, 12), struct.pack("<I", 8)), lambda g: g.__setitem__(12, 1)):
        bad = bytearray(graph)
        damage(bad)  # another dimension; a level-0 offset hnswlib never writes
        with pytest.raises(CorruptData, match="unexpected layout"), vmod._scratch_file(tmp_path) as (fd, _):
            vmod._restore_vectors(bytes(bad), 16, ids, _scan(stored), None, fd)
    bad = bytearray(graph)
    # A deleted node's slot past the last element.
    n, _, _, off_data = vmod._layout(bytes(graph[12 : 12 + 96]), 16)
    at = 12 + 96 + n * (off_data + 8)
    (k,) = struct.unpack_from("<Q", graph, at)
    assert k > 0
    bad[at + 8 : at + 12] = struct.pack("<I", n + 5)
    with pytest.raises(CorruptData, match="unexpected layout"), vmod._scratch_file(tmp_path) as (fd, _):
        vmod._restore_vectors(bytes(bad), 16, ids, _scan(stored), None, fd)


def test_the_digest_streams_without_mapping_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.random.default_rng(1).bytes(3 * (1 << 20) + 17)
    (tmp_path / "f").write_bytes(data)

    def no_map(*a, **k):
        raise AssertionError("mapped: every page would count in the resident set")

    monkeypatch.setattr(vmod.mmap, "mmap", no_map)
    import xxhash

    assert vmod._file_digest(tmp_path / "f") == (len(data), xxhash.xxh3_64_intdigest(data))


# ------------------------------------------------------------------ through the engine
def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_a_reopened_database_searches_as_before_without_a_rebuild(tmp_path: Path) -> None:
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.create_collection("c", dimension=128, metric="cosine")
    base = _vectors(800, 128, 1)
    c.upsert([{"id": f"r{i}", "vector": base[i]} for i in range(800)])
    c.upsert([{"id": f"r{i}", "vector": base[i] * -1} for i in range(50)])  # deleted nodes in the graph
    c.delete([f"r{i}" for i in range(790, 800)])
    qs = _vectors(30, 128, 2)
    before = [[(h.id, h.score) for h in c.search(q, k=10, include=[])] for q in qs]
    index_dir = c.index_dir
    db.close()
    assert (Path(index_dir) / "vector.hnsw").stat().st_size < 790 * 128 * 4
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    assert [[(h.id, h.score) for h in c.search(q, k=10, include=[])] for q in qs] == before
    assert c.load_progress == (0, 0)  # loaded from the snapshot, not rebuilt
    db.close()


def test_changes_after_the_snapshot_are_replayed_over_the_restored_vectors(tmp_path: Path) -> None:
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_interval_seconds": 3600})
    c = db.create_collection("c", dimension=8, metric="l2")
    base = _vectors(300, 8, 3)
    c.upsert([{"id": f"r{i}", "vector": base[i]} for i in range(300)])
    assert len(c.indexes.vindex) == 300  # indexed (a read waits for it): the snapshot holds them
    assert c.indexes.snapshot()
    # After the snapshot: "vectors" holds other vectors for these, none for the deleted ones.
    moved = _vectors(20, 8, 4) + 10
    c.upsert([{"id": f"r{i}", "vector": moved[i]} for i in range(20)])
    c.delete([f"r{i}" for i in range(20, 40)])
    c.upsert({"id": "new", "vector": [20.0] * 8})
    c.close(snapshot=False)  # what a crash leaves: the older snapshot and the changelog
    db.store.close()
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    assert c.count() == 281 and c.load_progress == (0, 0)
    for i in range(20):
        assert c.search(moved[i], k=1, include=[])[0].id == f"r{i}"
    assert not {h.id for h in c.search(base[25], k=50, include=[])} & {f"r{i}" for i in range(20, 40)}
    assert c.search([20.0] * 8, k=1, include=[])[0].id == "new"
    for i in range(40, 300, 37):
        assert c.search(base[i], k=1, include=[])[0].id == f"r{i}"
    db.close()


def test_rows_holding_their_vector_inline_are_read_back_after_a_reopen(tmp_path: Path) -> None:
    """Records of the first row format have no "vectors" entry: the load reads their rows."""
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.create_collection("c", dimension=2, metric="l2")
    c.upsert({"id": "x", "vector": [9, 9]})
    key, prefix, index_dir = c._key("x"), c.prefix, c.index_dir
    db.close()
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    st = db.store
    st.cf["records"].delete(key)
    st.cf["vectors"].delete(key)
    for i, v in enumerate([(1.0, 0.0), (0.0, 1.0), (5.0, 5.0)]):
        vec = np.asarray(v, dtype=np.float32).tobytes()
        payload = msgpack.packb(
            [1, 1000 + i, 0, False, 1.0, 1.0, None, [], {"i": i}, None, vec, None, None], use_bin_type=True
        )
        st.cf["records"][prefix + f"r{i}".encode()] = payload + zlib.crc32(payload).to_bytes(4, "big")
    db.close()
    shutil.rmtree(index_dir)
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    db.get_collection("c").load()  # rebuilt from the rows
    db.close()  # the snapshot written now holds no live vector
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    assert [h.id for h in c.search([5, 5], k=1, include=[])] == ["r2"]
    assert [h.id for h in c.search([0, 1], k=1, include=[])] == ["r1"]
    assert c.load_progress == (0, 0)
    db.close()


def test_an_empty_index_round_trips(tmp_path: Path) -> None:
    v = VectorIndex(4, "l2")
    v.save(tmp_path, watermark=2)
    loaded = VectorIndex.load(tmp_path, 4, "l2", 16, 200, 64, vectors=list)
    assert len(loaded) == 0 and loaded.watermark == 2


def test_loading_the_vectors_back_does_not_fill_the_block_cache(tmp_path: Path) -> None:
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.create_collection("c", dimension=128, metric="l2")
    c.upsert([{"id": f"r{i}", "vector": v} for i, v in enumerate(_vectors(2000, 128, 6))])
    db.close()
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    before = db.store.engine_stats().block_cache_usage
    c.load()
    assert c.load_progress == (0, 0)
    # The scan read 1 MB of vectors; none of it stays in the cache (the page cache has it).
    assert db.store.engine_stats().block_cache_usage - before < 2000 * 128 * 4 // 10
    db.close()
