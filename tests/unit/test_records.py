"""Records, validation, namespaces, scan and TTL on the embedded engine."""

from __future__ import annotations

import time

import numpy as np
import pytest

import engramdb
from engramdb import DimensionMismatch, InvalidArgument, NotFound


def vec(*xs: float) -> list[float]:
    return list(xs)


@pytest.fixture
def coll(db):
    return db.create_collection("mem", dimension=3)


def test_upsert_get_roundtrip(coll):
    coll.upsert([{"id": "a", "vector": vec(1, 0, 0), "text": "hello", "metadata": {"x": 1}, "namespace": ["u1", "m"]}])
    r = coll.get("a")
    assert r is not None
    assert r.text == "hello" and r.metadata == {"x": 1} and r.namespace == ("u1", "m")
    assert r.vector == pytest.approx([1.0, 0.0, 0.0])
    assert r.created_at is not None and r.version


def test_upsert_replaces_whole_record_and_keeps_created_at(coll):
    coll.upsert({"id": "a", "vector": vec(1, 0, 0), "metadata": {"x": 1, "y": 2}})
    first = coll.get("a")
    time.sleep(0.01)
    coll.upsert({"id": "a", "vector": vec(0, 1, 0), "metadata": {"z": 3}})
    r = coll.get("a")
    assert r.metadata == {"z": 3}
    assert r.created_at == first.created_at and r.updated_at > first.updated_at
    assert r.version > first.version


@pytest.mark.parametrize(
    "record, code",
    [
        ({"id": "a", "vector": [1, 0]}, "dimension_mismatch"),
        ({"id": "a", "vector": [1, float("nan"), 0]}, "invalid_vector"),
        ({"id": "a", "vector": [1, float("inf"), 0]}, "invalid_vector"),
        ({"id": "a", "vector": [0, 0, 0]}, "invalid_vector"),
        ({"id": "", "vector": [1, 0, 0]}, "invalid_id"),
        ({"id": "x" * 513, "vector": [1, 0, 0]}, "invalid_id"),
        ({"id": 5, "vector": [1, 0, 0]}, "invalid_id"),
        ({"id": "a"}, "missing_vector"),
        ({"id": "a", "vector": [1, 0, 0], "metadata": {"x": float("nan")}}, "invalid_metadata"),
        ({"id": "a", "vector": [1, 0, 0], "metadata": [1]}, "invalid_metadata"),
        ({"id": "a", "vector": [1, 0, 0], "namespace": "flat"}, "invalid_namespace"),
        ({"id": "a", "vector": [1, 0, 0], "namespace": ["ok", ""]}, "invalid_namespace"),
        ({"id": "a", "vector": [1, 0, 0], "ttl_seconds": -1}, "invalid_ttl"),
        ({"id": "a", "vector": [1, 0, 0], "bogus": 1}, "invalid_record"),
    ],
)
def test_invalid_records_rejected_and_nothing_written(coll, record, code):
    with pytest.raises(InvalidArgument) as ei:
        coll.upsert([{"id": "good", "vector": [0, 1, 0]}, record])
    assert ei.value.code == code
    assert ei.value.http_status == 400
    assert coll.get("good") is None
    assert coll.count() == 0


def test_dimension_mismatch_is_typed(coll):
    with pytest.raises(DimensionMismatch):
        coll.upsert({"id": "a", "vector": [1.0] * 4})


def test_duplicate_ids_in_batch_rejected(coll):
    with pytest.raises(InvalidArgument) as ei:
        coll.upsert([{"id": "a", "vector": [1, 0, 0]}, {"id": "a", "vector": [0, 1, 0]}])
    assert ei.value.code == "duplicate_id"


def test_patch_merges_metadata(coll):
    coll.upsert({"id": "a", "vector": [1, 0, 0], "metadata": {"x": 1, "y": 2}})
    r = coll.patch("a", metadata={"y": None, "z": 3})
    assert r.metadata == {"x": 1, "z": 3}
    assert coll.get("a").metadata == {"x": 1, "z": 3}
    with pytest.raises(NotFound):
        coll.patch("missing", metadata={"a": 1})


def test_delete_by_id_and_filter(coll):
    coll.upsert([{"id": f"r{i}", "vector": [1, i, 0], "metadata": {"even": i % 2 == 0}} for i in range(10)])
    assert coll.delete(["r1", "nope"]) == 1
    assert coll.get("r1") is None
    assert coll.delete(filter={"even": True}) == 5
    assert sorted(r.id for r in coll.scan().records) == ["r3", "r5", "r7", "r9"]
    assert coll.count() == 4
    hits = coll.search([1, 0, 0], k=10)
    assert {h.id for h in hits} == {"r3", "r5", "r7", "r9"}


def test_scan_pagination_and_prefixes(coll):
    coll.upsert([{"id": f"k{i:03d}", "vector": [1, 0, i], "namespace": ["u", str(i % 3)]} for i in range(25)])
    seen = []
    cursor = None
    while True:
        page = coll.scan(cursor=cursor, limit=7)
        seen += [r.id for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"k{i:03d}" for i in range(25)]
    assert [r.id for r in coll.scan(id_prefix="k01").records] == [f"k01{i}" for i in range(10)]
    ns1 = coll.scan(namespace_prefix=["u", "1"], limit=100).records
    assert {r.id for r in ns1} == {f"k{i:03d}" for i in range(25) if i % 3 == 1}
    with pytest.raises(InvalidArgument):
        coll.scan(cursor="!!!not-a-cursor")


def test_list_namespaces(coll):
    paths = [["a"], ["a", "b"], ["a", "b", "c"], ["a", "d"], ["x", "y"], ["x", "y"]]
    coll.upsert([{"id": str(i), "vector": [1, 0, 0], "namespace": p} for i, p in enumerate(paths)])
    assert coll.list_namespaces() == [("a",), ("a", "b"), ("a", "b", "c"), ("a", "d"), ("x", "y")]
    assert coll.list_namespaces(["a"], max_depth=2) == [("a",), ("a", "b"), ("a", "d")]
    assert coll.list_namespaces(max_depth=1) == [("a",), ("x",)]
    assert coll.list_namespaces(["a", "b"]) == [("a", "b"), ("a", "b", "c")]
    assert coll.list_namespaces(suffix=["y"]) == [("x", "y")]
    assert coll.list_namespaces(limit=2, offset=1) == [("a", "b"), ("a", "b", "c")]
    coll.delete(["4", "5"])
    assert ("x", "y") not in coll.list_namespaces()


def test_ttl_expired_records_never_returned(db):
    c = db.create_collection("ttl", dimension=2, default_ttl_seconds=0.3)
    c.upsert([{"id": "short", "vector": [1, 0]}, {"id": "long", "vector": [0, 1], "ttl_seconds": 60}])
    c.upsert({"id": "forever", "vector": [1, 1], "expires_at": time.time() + 3600})
    assert c.count() == 3
    time.sleep(0.4)
    assert c.get("short") is None
    assert "short" not in {h.id for h in c.search([1, 0], k=10)}
    assert "short" not in {r.id for r in c.scan().records}
    assert c.count() == 2
    # The sweeper turns the expiry into a real delete.
    deadline = time.time() + 5
    while time.time() < deadline and c.store.get("records", c._key("short")) is not None:
        r = c.store.get_record(c._key("short"))
        if r is not None and r.deleted:
            break
        time.sleep(0.1)
    row = c.store.get_record(c._key("short"))
    assert row is None or row.deleted


def test_refresh_ttl_on_read(db):
    c = db.create_collection("ttl2", dimension=2)
    c.upsert({"id": "a", "vector": [1, 0], "ttl_seconds": 0.5})
    before = c.get("a").expires_at
    time.sleep(0.2)
    c.get("a", refresh_ttl=True)
    assert c.get("a").expires_at > before


def test_collections_lifecycle(db):
    db.create_collection("c1", dimension=4, metric="l2")
    with pytest.raises(engramdb.AlreadyExists):
        db.create_collection("c1", dimension=4, metric="l2")
    assert db.create_collection("c1", dimension=4, metric="l2", exist_ok=True).metric == "l2"
    assert [c.name for c in db.list_collections()] == ["c1"]
    for bad in ["", "-x", "a b", "x" * 129]:
        with pytest.raises(InvalidArgument):
            db.create_collection(bad, dimension=4)
    for dim in [0, 4097]:
        with pytest.raises(InvalidArgument):
            db.create_collection("d", dimension=dim)
    with pytest.raises(InvalidArgument):
        db.create_collection("d", dimension=4, metric="hamming")
    db.delete_collection("c1")
    with pytest.raises(NotFound):
        db.get_collection("c1")


def test_tenants_are_isolated(db):
    a = db.create_collection("shared", dimension=2, tenant="alice")
    b = db.create_collection("shared", dimension=2, tenant="bob")
    a.upsert({"id": "x", "vector": [1, 0], "metadata": {"owner": "alice"}})
    assert b.get("x") is None
    assert b.search([1, 0], k=5) == []
    assert db.list_collections(tenant="carol") == []


def test_reopen_keeps_everything(tmp_path):
    path = tmp_path / "d"
    with engramdb.open(path) as db:
        c = db.create_collection("m", dimension=3, indexed_fields={"kind": "keyword"})
        c.upsert([{"id": f"r{i}", "vector": [1, i, 0], "metadata": {"kind": "a" if i < 5 else "b"}} for i in range(20)])
        c.delete("r0")
    with engramdb.open(path) as db:
        c = db.get_collection("m")
        assert c.count() == 19
        assert c.get("r0") is None
        hits = c.search([1, 1, 0], k=3, filter={"kind": "a"})
        assert [h.id for h in hits] and all(h.record.metadata["kind"] == "a" for h in hits)


def test_index_rebuilt_when_snapshot_missing(tmp_path):
    path = tmp_path / "d"
    with engramdb.open(path) as db:
        c = db.create_collection("m", dimension=3)
        c.upsert([{"id": f"r{i}", "vector": [1, i, 0]} for i in range(50)])
        idx_dir = c.index_dir
    for f in idx_dir.glob("vector.*"):
        f.write_bytes(b"garbage")
    with engramdb.open(path) as db:
        c = db.get_collection("m")
        assert c.count() == 50
        assert c.search([1, 3, 0], k=1)[0].id == "r3"


def test_concurrent_writers_group_commit(db):
    import threading

    c = db.create_collection("gc", dimension=4)
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(400, 4)).astype("float32")
    commits_before = db.store.commits

    def writer(t: int) -> None:
        for i in range(25):
            c.upsert({"id": f"{t}-{i}", "vector": vecs[t * 25 + i].tolist()})

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.count() == 400
    # 400 acknowledged writes in fewer commits than writes: callers shared fsyncs.
    assert db.store.commits - commits_before < 400


@pytest.mark.parametrize(
    "extra",
    [{"ttl_seconds": 1e308}, {"expires_at": -5}, {"expires_at": 1e300}, {"ttl_seconds": float("nan")}],
)
def test_out_of_range_expiry_rejected(coll, extra):
    with pytest.raises(InvalidArgument) as ei:
        coll.upsert({"id": "a", "vector": [1, 0, 0], **extra})
    assert ei.value.code == "invalid_ttl"
    assert coll.count() == 0


def test_names_with_trailing_newline_rejected(db):
    with pytest.raises(InvalidArgument):
        db.create_collection("abc\n", dimension=2)


def test_garbage_cursor_rejected(coll):
    coll.upsert({"id": "a", "vector": [1, 0, 0]})
    for bad in ["!!!", "a", "%%%%"]:
        with pytest.raises(InvalidArgument):
            coll.scan(cursor=bad)


def test_list_namespaces_hides_expired_paths(db):
    c = db.create_collection("nsx", dimension=2)
    c.upsert(
        [
            {"id": "a", "vector": [1, 0], "namespace": ["x"], "ttl_seconds": 0.2},
            {"id": "b", "vector": [0, 1], "namespace": ["y"]},
        ]
    )
    assert c.list_namespaces() == [("x",), ("y",)]
    time.sleep(0.3)
    assert c.list_namespaces() == [("y",)]
