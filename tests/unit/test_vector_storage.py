"""A record's vector is stored once, in the "vectors" column family; its row holds the digest."""

from __future__ import annotations

import shutil
import threading
import time
import zlib

import msgpack
import numpy as np
import pytest

import engramdb
from engramdb.errors import CorruptData
from engramdb.storage.codec import decode_record, encode_record, vector_digest

STORAGE = {"sync_writes": False, "ttl_sweep_interval_seconds": 3600}


def f32(*xs: float) -> bytes:
    return np.asarray(xs, dtype=np.float32).tobytes()


@pytest.fixture
def ldb(tmp_path):
    d = engramdb.open(tmp_path / "d", storage=STORAGE)
    yield d
    d.close()


def test_row_holds_the_digest_and_the_vector_is_stored_once(ldb):
    c = ldb.create_collection("c", dimension=4, metric="l2")
    c.upsert({"id": "a", "vector": [1, 2, 3, 4], "metadata": {"m": 1}})
    key = c._key("a")
    raw_row, raw_vec = c.store.get("records", key), c.store.get("vectors", key)
    assert raw_vec == f32(1, 2, 3, 4)
    assert raw_vec not in raw_row
    row = decode_record(raw_row)
    assert row.vector is None and row.has_vector and row.vector_digest == vector_digest(raw_vec)
    # Writing back a row read without its vector would lose the vector.
    with pytest.raises(ValueError):
        encode_record(row)
    assert c.get("a").vector == [1, 2, 3, 4]
    assert c.get("a", include=["metadata"]).vector is None
    assert c.search([1, 2, 3, 4], k=1, include=["vector"])[0].record.vector == [1, 2, 3, 4]
    assert [r.vector for r in c.scan(include=["vector"]).records] == [[1, 2, 3, 4]]


def test_patch_and_refresh_ttl_keep_the_vector(tmp_path):
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.create_collection("c", dimension=3, metric="dot")
    c.upsert({"id": "a", "vector": [1, 2, 3], "metadata": {"m": 1}, "ttl_seconds": 3600})
    c.patch("a", metadata={"m": 2})
    assert c.refresh_ttl("a") == 1
    assert c.get("a").vector == [1, 2, 3] and c.get("a").metadata == {"m": 2}
    db.close()
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    assert c.get("a").vector == [1, 2, 3]
    assert [h.id for h in c.search([1, 2, 3], k=1)] == ["a"]
    db.close()


def test_rows_of_the_first_format_with_the_vector_inline_are_still_read(tmp_path):
    """Databases written before the vector moved out of the row open, search and rewrite."""
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.create_collection("c", dimension=2, metric="l2")
    c.upsert({"id": "x", "vector": [9, 9]})  # replaced below by a format-1 row
    key, prefix, index_dir = c._key("x"), c.prefix, c.index_dir
    db.close()

    legacy = {}
    for i, v in enumerate([(1.0, 0.0), (0.0, 1.0), (5.0, 5.0)]):
        payload = msgpack.packb(
            [1, 1000 + i, 0, False, 1.0, 1.0, None, [], {"i": i}, None, f32(*v), None, None], use_bin_type=True
        )
        legacy[prefix + f"r{i}".encode()] = payload + zlib.crc32(payload).to_bytes(4, "big")
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    st = db.store
    st.cf["records"].delete(key)
    st.cf["vectors"].delete(key)
    for k, v in legacy.items():
        st.cf["records"][k] = v  # as an old version wrote them: no "vectors" entry
    db.close()
    shutil.rmtree(index_dir)  # the index is rebuilt from the rows

    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    assert c.get("r1").vector == [0, 1] and c.get("r1").metadata == {"i": 1}
    assert [h.id for h in c.search([5, 5], k=1, include=["vector"])] == ["r2"]
    assert c.search([0, 1], k=1, filter={"i": 1}, exact=True)[0].id == "r1"
    c.patch("r0", metadata={"i": 10})  # rewritten in the current format
    assert decode_record(db.store.get("records", c._key("r0"))).vector_digest == vector_digest(f32(1, 0))
    assert db.store.get("vectors", c._key("r0")) == f32(1, 0)
    assert c.get("r0").vector == [1, 0]
    db.close()


def test_a_damaged_vector_is_corrupt_data_not_a_wrong_answer(ldb):
    c = ldb.create_collection("c", dimension=2, metric="l2")
    c.upsert([{"id": "a", "vector": [1, 0], "metadata": {"m": 1}}, {"id": "b", "vector": [0, 1]}])
    ldb.store.cf["vectors"][c._key("a")] = f32(7, 7)
    with pytest.raises(CorruptData, match="upsert it again with the right vector, or delete it"):
        c.get("a")
    assert c.get("a", include=["metadata"]).metadata == {"m": 1}
    assert c.get("b").vector == [0, 1]
    ldb.store.cf["vectors"].delete(c._key("a"))
    with pytest.raises(CorruptData, match="missing"):
        c.get_many(["b", "a"])
    # The message's advice works: the row is intact, so the record can be written again (or deleted).
    c.upsert({"id": "a", "vector": [1, 0], "metadata": c.get("a", include=["metadata"]).metadata})
    assert c.get("a").vector == [1, 0]


def test_a_row_replaced_between_the_two_reads_is_read_again(ldb):
    c = ldb.create_collection("c", dimension=2, metric="l2")
    c.upsert({"id": "a", "vector": [1, 0], "metadata": {"v": 1}})
    key, st = c._key("a"), ldb.store
    stale = st.get_record(key)
    c.upsert({"id": "a", "vector": [0, 1], "metadata": {"v": 2}})
    (row,) = st.load_vectors([key], [stale])
    assert row is not None and row.metadata == {"v": 2} and row.vector == f32(0, 1)
    stale = st.get_record(key)
    c.delete("a")
    (row,) = st.load_vectors([key], [stale])
    assert row is not None and row.deleted


def test_reads_racing_updates_always_pair_the_vector_with_its_row(ldb):
    c = ldb.create_collection("c", dimension=2, metric="l2")
    c.upsert({"id": "r", "vector": [1, 1], "metadata": {"i": 0}})
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(1, 400):
                c.upsert({"id": "r", "vector": [i + 1, 1], "metadata": {"i": i}})
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            stop.set()

    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    while not stop.is_set() or reads < 50:
        for rec in c.get_many(["r"]) + [h.record for h in c.search([1, 1], k=1, include=["vector", "metadata"])]:
            assert rec is not None and rec.vector == [rec.metadata["i"] + 1, 1]
        reads += 1
    t.join()
    assert not errors


def _vector_memtable(db) -> tuple[int, int]:
    cf = db.store.cf["vectors"]
    return (
        int(cf.property_int_value("rocksdb.cur-size-all-mem-tables")),
        int(cf.property_int_value("rocksdb.num-entries-active-mem-table")),
    )


def test_memtables_are_flushed_once_writes_pause(tmp_path):
    """An idle process gives its write buffers back; small memtables stay."""
    db = engramdb.open(tmp_path / "d", storage={**STORAGE, "idle_flush_seconds": 0.5})
    c = db.create_collection("c", dimension=384, metric="l2")
    rng = np.random.default_rng(3)
    # A few records: far below 1 MiB of data (RocksDB reserves 1 MiB blocks, so the
    # memtable's memory is 1 MiB already); flushing them would only make tiny files.
    c.upsert([{"id": f"s{i}", "vector": rng.standard_normal(384).tolist()} for i in range(5)])
    time.sleep(2.5)
    assert _vector_memtable(db)[1] == 5, _vector_memtable(db)
    # 1,500 x 1.5 KB: over 2 MiB of vectors, flushed once writes pause.
    c.upsert([{"id": f"r{i}", "vector": rng.standard_normal(384).tolist()} for i in range(1500)])
    deadline = time.monotonic() + 30
    while _vector_memtable(db)[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _vector_memtable(db)[1] == 0, _vector_memtable(db)
    assert c.count() == 1505 and len(c.get("r7").vector) == 384
    db.close()
    db = engramdb.open(tmp_path / "d", storage={**STORAGE, "idle_flush_seconds": 0})
    assert db.get_collection("c").count() == 1505
    db.close()


def test_a_row_changed_before_its_vector_is_read_must_still_match_the_filter(tmp_path, monkeypatch):
    # No exact search over candidates: vectors are read only for the results.
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"exact_search_threshold": 0})
    c = db.create_collection("c", dimension=2, metric="l2", indexed_fields={"owner": "keyword"})
    c.upsert([{"id": f"r{i}", "vector": [1, i], "metadata": {"owner": "carol"}} for i in range(1, 9)])
    st = db.store
    real = st.multi_get

    def alice(vector: list[float]) -> None:
        c.upsert({"id": "a", "vector": vector, "metadata": {"owner": "alice"}})

    def changing(cf, keys):
        if cf == "vectors" and c._key("a") in keys:
            monkeypatch.setattr(st, "multi_get", real)
            c.upsert({"id": "a", "vector": [0.5, 0.5], "metadata": {"owner": "bob"}})
        return real(cf, keys)

    alice([1, 0])
    monkeypatch.setattr(st, "multi_get", changing)
    assert c.scan(filter={"owner": "alice"}, include=["vector", "metadata"]).records == []
    alice([1, 0])
    monkeypatch.setattr(st, "multi_get", changing)
    hits = c.search([1, 0], k=2, filter={"owner": {"$in": ["alice", "carol"]}}, include=["vector", "metadata"])
    assert st.multi_get is real  # the vector read happened
    # "a" was the best hit; read again as bob's, it is dropped rather than returned unfiltered.
    assert [h.id for h in hits] == ["r1"] and hits[0].record.metadata == {"owner": "carol"}
    # Without a filter the newer row is the answer.
    alice([1, 0])
    monkeypatch.setattr(st, "multi_get", changing)
    (rec,) = c.get_many(["a"])
    assert rec.metadata == {"owner": "bob"} and rec.vector == [0.5, 0.5]
    db.close()


def _records(n: int, dim: int, seed: int, prefix: str = "r") -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"{prefix}{i}", "vector": rng.standard_normal(dim).tolist()} for i in range(n)]


def test_a_snapshot_written_by_a_child_process_loads_and_later_writes_are_replayed(tmp_path, monkeypatch):
    import os

    from engramdb.index.vector import VectorIndex

    here: list[int] = []  # saves done in this process (the child's own list is its copy)
    real = VectorIndex._write_snapshot

    def recorded(self, *a):
        here.append(os.getpid())
        return real(self, *a)

    monkeypatch.setattr(VectorIndex, "_write_snapshot", recorded)
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_interval_seconds": 3600})
    c = db.create_collection("c", dimension=16, metric="l2")
    c.upsert(_records(500, 16, 1))
    done = threading.Event()
    saved: list[bool] = []

    def snap() -> None:
        saved.append(c.indexes.snapshot(in_child=True))
        done.set()

    t = threading.Thread(target=snap)
    t.start()
    # Writes go on while the child writes the copy; they are after its watermark.
    c.upsert(_records(200, 16, 2, prefix="late"))
    t.join()
    assert saved == [True] and here == []
    mark = c.indexes.watermark
    assert 0 < mark <= db.store.seq
    # The child committed a complete snapshot: it loads and holds the first 500 at least.
    loaded = VectorIndex.load(c.index_dir, 16, "l2", 16, 200, 64, vectors=_stored_vectors(c))
    assert loaded.watermark == mark and len(loaded) >= 500
    c.close(snapshot=False)  # what a crash leaves: the child's snapshot and the changelog
    db.store.close()
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    assert c.count() == 700
    assert c.search(c.get("late7").vector, k=1)[0].id == "late7"
    assert c.search(c.get("r3").vector, k=1)[0].id == "r3"
    db.close()


def _stored_vectors(c):
    """What the engine gives VectorIndex.load: the collection's stored (record id, vector bytes)."""
    ix = c.indexes
    return lambda: ((k[len(ix.prefix) :], v) for k, v in ix.store.iter_prefix("vectors", ix.prefix))


def _in_child_only(monkeypatch, action) -> list[int]:
    """Make ``VectorIndex._write_snapshot`` run ``action()`` first in forked children; returns the forks."""
    import os

    from engramdb.index.vector import VectorIndex

    parent = os.getpid()
    real_write, real_fork = VectorIndex._write_snapshot, os.fork
    forks: list[int] = []

    def write(self, *a):
        if os.getpid() != parent:
            action()
        return real_write(self, *a)

    def fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(VectorIndex, "_write_snapshot", write)
    monkeypatch.setattr(os, "fork", fork)
    return forks


def _snapshot_in_background(c, forks: list[int]) -> threading.Thread:
    """Start ``c.indexes.snapshot(in_child=True)`` in a thread; returns once the child is forked."""
    t = threading.Thread(target=c.indexes.snapshot, kwargs={"in_child": True})
    t.start()
    deadline = time.monotonic() + 10
    while not forks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert forks
    return t


def test_a_failed_child_snapshot_is_written_in_process(tmp_path, monkeypatch):
    from engramdb.index.vector import VectorIndex

    def fail() -> None:
        raise OSError("simulated failure in the child")

    forks = _in_child_only(monkeypatch, fail)
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_interval_seconds": 3600})
    c = db.create_collection("c", dimension=8, metric="l2")
    c.upsert(_records(50, 8, 3))
    assert c.indexes.snapshot(in_child=True)
    assert len(forks) == 1 and c.indexes.watermark == db.store.seq and not c.indexes.dirty
    assert (
        VectorIndex.load(c.index_dir, 8, "l2", 16, 200, 64, vectors=_stored_vectors(c)).watermark == c.indexes.watermark
    )
    db.close()


def test_an_error_while_waiting_for_the_child_keeps_the_changes_pending(tmp_path, monkeypatch):
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_interval_seconds": 3600})
    c = db.create_collection("c", dimension=8, metric="l2")
    c.upsert(_records(50, 8, 4))
    assert c.indexes.snapshot()
    mark = c.indexes.watermark
    c.upsert(_records(20, 8, 5, prefix="late"))
    import select

    def broken_poll():
        raise ValueError("simulated error while waiting")  # as select() fails on fds >= 1024

    monkeypatch.setattr(select, "poll", broken_poll)
    with pytest.raises(ValueError):
        c.indexes.snapshot(in_child=True)
    # Not recorded as saved: still dirty, and the watermark cannot be moved past
    # changes the committed snapshot might not hold.
    assert c.indexes.dirty and c.indexes.watermark == mark
    assert c.indexes.advance_watermark() == mark
    monkeypatch.undo()
    db.close()
    db = engramdb.open(tmp_path / "d", storage=STORAGE)
    c = db.get_collection("c")
    assert c.count() == 70 and c.search(c.get("late3").vector, k=1)[0].id == "late3"
    db.close()


def test_close_waits_for_a_snapshot_child(tmp_path, monkeypatch):
    from engramdb.index.vector import VectorIndex

    forks = _in_child_only(monkeypatch, lambda: time.sleep(1.0))
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_interval_seconds": 3600})
    c = db.create_collection("c", dimension=8, metric="l2")
    c.upsert(_records(50, 8, 6))
    t = _snapshot_in_background(c, forks)
    # The fork is seen here a moment before the snapshotting thread clears the pending count.
    deadline = time.monotonic() + 10
    while c.indexes.dirty and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not c.indexes.dirty  # the child is writing (for 1 s); nothing else is pending
    seq, index_dir, db_dir = db.store.seq, c.index_dir, tmp_path / "d"
    db.close()  # must not return before the child's snapshot is committed
    t.join()
    assert VectorIndex.stored_watermark(index_dir) == seq
    with engramdb.open(db_dir, storage=STORAGE) as again:  # the committed snapshot loads as it is
        loaded = again.get_collection("c").indexes
        assert len(loaded.vindex) == 50 and loaded.watermark == seq


def test_a_snapshot_child_does_not_hold_the_processes_connections_open(tmp_path, monkeypatch):
    """A connection the server closes while a child writes a snapshot ends then, not when the child exits."""
    import socket

    forks = _in_child_only(monkeypatch, lambda: time.sleep(3.0))
    db = engramdb.open(tmp_path / "d", storage=STORAGE, index={"snapshot_interval_seconds": 3600})
    c = db.create_collection("c", dimension=8, metric="l2")
    c.upsert(_records(20, 8, 7))
    server_end, client_end = socket.socketpair()
    t = _snapshot_in_background(c, forks)
    time.sleep(0.3)  # the child has closed what it inherited
    server_end.close()
    client_end.settimeout(2.0)
    assert client_end.recv(1) == b""  # EOF while the child still sleeps
    client_end.close()
    t.join()
    db.close()
