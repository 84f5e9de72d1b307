"""Memory per component (``Database.stats``, the ``stats`` operation, ``engramdb stats``): estimates and shape.

Estimates must be plausible, not exact: near zero for an empty index, growing with records, of the
order of what the objects really take. Every figure must cost the same at any collection size
(nothing is scanned), which the sampled id-map estimate shows against a full count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import engramdb
from engramdb.cli import main
from engramdb.engine import indexes as indexes_mod
from engramdb.engine.stats import COLLECTION_BYTES, process_memory
from engramdb.errors import InvalidArgument
from engramdb.index.text import TextIndex
from engramdb.index.vector import VectorIndex

PROCESS_KEYS = {"rss_bytes", "peak_rss_bytes"}
ROCKSDB_KEYS = {
    "memtables_bytes",
    "block_cache_bytes",
    "block_cache_capacity_bytes",
    "table_readers_bytes",
    "sst_files_bytes",
    "wal_bytes",
}
COLLECTION_KEYS = {"tenant", "name", "records", *COLLECTION_BYTES, "loaded"}
TOTAL_KEYS = {"collections", "loaded_collections", "records", *COLLECTION_BYTES, "index_bytes"}


def _records(n: int, dim: int = 8, start: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(start)
    return [
        {
            "id": f"record-{i:06d}",
            "vector": rng.random(dim).tolist(),
            "text": f"memory number {i} about engines",
            "metadata": {"n": i, "user": f"u{i % 50}"},
        }
        for i in range(start, start + n)
    ]


def _check_shape(got: dict[str, object]) -> None:
    assert set(got) == {"process", "rocksdb", "collections", "totals", "more"}
    assert set(got["process"]) == PROCESS_KEYS  # type: ignore[arg-type]
    assert set(got["rocksdb"]) == ROCKSDB_KEYS  # type: ignore[arg-type]
    for c in got["collections"]:  # type: ignore[attr-defined]
        assert set(c) == COLLECTION_KEYS
        assert all(isinstance(c[k], int) and c[k] >= 0 for k in ("records", *COLLECTION_BYTES))
    assert set(got["totals"]) == TOTAL_KEYS  # type: ignore[arg-type]
    json.dumps(got)  # JSON as it is


# ------------------------------------------------------------- the indexes
def test_vector_index_estimate_grows_with_records_from_a_fixed_base() -> None:
    empty = VectorIndex(32, "l2", capacity=1024)
    base = empty.memory_bytes()
    # The 65,536 label locks plus 1,024 empty slots: a few MB at most, whatever the dimension.
    assert 2_000_000 < base < 4_000_000
    v = VectorIndex(32, "l2", capacity=1024)
    n = 5000
    v.upsert([f"r{i}" for i in range(n)], np.random.default_rng(1).random((n, 32), dtype=np.float32), [None] * n)
    grown = v.memory_bytes()
    # At least the vectors and the level-0 links of every slot; not wildly more.
    per_slot = 32 * 4 + 2 * 16 * 4
    cap = v._index.get_max_elements()
    assert grown - base >= (cap - 1024) * per_slot
    assert grown < base + cap * (per_slot + 200) + n * 200


def test_id_map_estimate_is_near_zero_when_empty_and_close_to_a_full_count() -> None:
    v = VectorIndex(4, "l2")
    assert v.id_maps_bytes() < 2048
    n = 20_000
    ids = [f"user-{i}/memory-{i * 7}" for i in range(n)]
    v.upsert(ids, np.random.default_rng(2).random((n, 4), dtype=np.float32), [None] * n)
    _ = v.label_of  # both directions built
    est = v.id_maps_bytes()
    exact = (
        sys.getsizeof(v.id_of)
        + sys.getsizeof(v.label_of)
        + sum(sys.getsizeof(k) + sys.getsizeof(s) for k, s in v.id_of.items())
        + v.live.__sizeof__()
        + sys.getsizeof(v.expires)
    )
    assert 0.8 * exact < est < 1.25 * exact


def test_id_map_estimate_of_a_loaded_snapshot_counts_the_packed_arrays(tmp_path: Path) -> None:
    v = VectorIndex(4, "l2")
    n = 3000
    vecs = np.random.default_rng(3).random((n, 4), dtype=np.float32)
    v.upsert([f"id-{i}" for i in range(n)], vecs, [None] * n)
    v.save(tmp_path, watermark=1)
    stored = [(f"id-{i}".encode(), vecs[i].tobytes()) for i in range(n)]  # what the "vectors" family holds
    loaded = VectorIndex.load(tmp_path, 4, "l2", 16, 200, 64, vectors=lambda: stored)
    assert loaded._packed is not None  # still packed: nothing unpacked it
    est = loaded.id_maps_bytes()
    assert est >= n * 8 + sum(len(f"id-{i}") for i in range(n))
    assert est < v.id_maps_bytes()  # packed is the smaller form


def test_text_index_disk_bytes_grow_with_documents(tmp_path: Path) -> None:
    with TextIndex(tmp_path / "t") as t:
        before = t.disk_bytes()
        t.upsert_many((i, f"words about memory number {i}") for i in range(2000))
        t.flush()
        assert t.disk_bytes() > before
    with TextIndex(None) as ram:
        assert ram.disk_bytes() == 0


def test_text_index_disk_bytes_skip_a_file_removed_while_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background merge can delete a segment file between the listing and its stat (found by CI:
    the whole index then counted as 0 bytes). The vanished file is skipped; the others still count."""
    import os

    from engramdb.index import text as text_mod

    with TextIndex(tmp_path / "t") as t:
        t.upsert_many((i, f"words about memory number {i}") for i in range(2000))
        t.flush()
        full = t.disk_bytes()
        assert full > 0
        gone = tmp_path / "t" / "merged-away.idx"
        gone.write_bytes(b"x" * 10)
        real_scandir = os.scandir

        class _Listing:
            def __init__(self, path: object) -> None:
                self._it = real_scandir(path)  # type: ignore[call-overload]
                self._entries = list(self._it)
                gone.unlink()  # removed after the listing, before its stat

            def __enter__(self) -> list[os.DirEntry[str]]:
                return self._entries

            def __exit__(self, *exc: object) -> None:
                self._it.close()

        monkeypatch.setattr(text_mod.os, "scandir", _Listing)
        assert t.disk_bytes() == full


def test_process_memory_reads_the_resident_set() -> None:
    got = process_memory()
    assert got["rss_bytes"] > 10 * 1024 * 1024  # a Python process with numpy loaded
    assert got["peak_rss_bytes"] >= got["rss_bytes"]


# ------------------------------------------------------------ the database
def test_stats_shape_and_growth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexes_mod, "PAYLOAD_BYTES_TTL", 0.0)  # recomputed after every change
    with engramdb.open(tmp_path / "db") as db:
        empty = db.stats()
        _check_shape(empty)
        assert empty["collections"] == [] and empty["more"] is False
        assert empty["totals"]["collections"] == 0 and empty["totals"]["index_bytes"] == 0

        c = db.create_collection("c", 8, indexed_fields={"n": "int", "user": "keyword"})
        c.count()  # loads the indexes
        first = db.stats()
        [row] = first["collections"]
        assert (row["tenant"], row["name"], row["records"], row["loaded"]) == ("default", "c", 0, True)
        assert row["id_maps_bytes"] < 2048 and row["payload_index_bytes"] < 4096

        c.upsert(_records(3000))
        c.search(np.ones(8).tolist(), k=3, mode="hybrid", text="memory")  # text committed
        grown = db.stats()
        _check_shape(grown)
        [row2] = grown["collections"]
        assert row2["records"] == 3000
        for key in COLLECTION_BYTES:
            assert row2[key] > row[key], key
        assert grown["totals"]["index_bytes"] == sum(row2[k] for k in COLLECTION_BYTES)
        assert grown["rocksdb"]["memtables_bytes"] + grown["rocksdb"]["sst_files_bytes"] > 3000 * 8 * 4


def test_payload_bytes_are_reused_until_a_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with engramdb.open(tmp_path / "db") as db:
        c = db.create_collection("c", 8, indexed_fields={"user": "keyword"})
        c.upsert(_records(100))
        ix = c.indexes
        calls: list[int] = []
        real = type(ix.payload).nbytes

        def counted(self: object) -> int:
            calls.append(1)
            return real(self)  # type: ignore[arg-type]

        monkeypatch.setattr(type(ix.payload), "nbytes", counted)
        first = ix.payload_bytes()
        assert ix.payload_bytes() == first and len(calls) == 1  # unchanged index: no second walk
        c.upsert(_records(100, start=100))
        ix.catch_up()  # acknowledged once durable; the notifier indexes it right after
        assert ix.payload_bytes() == first and len(calls) == 1  # changed, but walked under a second ago
        monkeypatch.setattr(indexes_mod, "PAYLOAD_BYTES_TTL", 0.0)
        assert ix.payload_bytes() > first and len(calls) == 2


def test_stats_lists_the_largest_collections_up_to_the_limit(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "db") as db:
        for i, n in enumerate((5, 50, 20)):
            db.create_collection(f"c{i}", 8).upsert(_records(n))
        db.create_collection("other", 8, tenant="acme").upsert(_records(1))
        got = db.stats(2)
        assert [c["name"] for c in got["collections"]] == ["c1", "c2"] and got["more"] is True
        assert got["totals"]["collections"] == 4 and got["totals"]["records"] == 70
        assert db.stats()["more"] is False
        only = db.stats(tenant="acme")
        assert [(c["tenant"], c["name"]) for c in only["collections"]] == [("acme", "other")]
        assert only["totals"]["collections"] == 1
        assert db.stats(tenant="nobody")["collections"] == []


@pytest.mark.parametrize("bad", [0, 1001, -1, True, 2.0, "5", None])
def test_stats_refuses_a_bad_limit(tmp_path: Path, bad: object) -> None:
    with engramdb.open(tmp_path / "db") as db:
        with pytest.raises(InvalidArgument) as e:
            db.stats(bad)  # type: ignore[arg-type]
        assert e.value.code == "invalid_limit"
        with pytest.raises(InvalidArgument):
            db.stats(tenant="../x")


def test_unloaded_collections_hold_nothing_and_are_not_loaded_by_stats(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "db") as db:
        db.create_collection("c", 8).upsert(_records(200))
    with engramdb.open(tmp_path / "db") as db:
        got = db.stats()
        [row] = got["collections"]
        assert row["loaded"] is False and row["records"] == 0
        assert all(row[k] == 0 for k in COLLECTION_BYTES)
        assert got["totals"]["loaded_collections"] == 0
        assert not db.get_collection("c").loaded  # stats did not load it


# ------------------------------------------------------------------ the CLI
def test_cli_stats_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "db"
    with engramdb.open(data) as db:
        db.create_collection("c", 8).upsert(_records(300))
        db.create_collection("d", 8, tenant="acme").upsert(_records(10))
    assert main(["stats", "--data-dir", str(data), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    _check_shape(got)
    assert {(c["tenant"], c["name"], c["loaded"]) for c in got["collections"]} == {
        ("default", "c", False),
        ("acme", "d", False),
    }
    assert main(["stats", "--data-dir", str(data), "--json", "--load", "--tenant", "default"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    [row] = loaded["collections"]
    assert (row["name"], row["loaded"], row["records"]) == ("c", True, 300) and row["vector_index_bytes"] > 0
    assert main(["stats", "--data-dir", str(data), "--limit", "1"]) == 0
    text = capsys.readouterr().out
    assert "rocksdb" in text and "more not listed" in text
    assert main(["stats", "--data-dir", str(data), "--limit", "0"]) == 1
    assert "invalid_limit" in capsys.readouterr().err
    assert main(["stats", "--data-dir", str(tmp_path / "missing")]) == 1
