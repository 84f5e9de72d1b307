"""The lean per-query search path (issue 18, item 1): same results and errors as the general path."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engramdb import InvalidArgument
from engramdb.engine import search as search_mod
from engramdb.engine.records import RecordReader
from engramdb.index.vector import VectorIndex

ALL_FIELDS = ("metadata", "text", "namespace", "expires_at", "importance", "timestamps")


@pytest.fixture
def coll(db):
    c = db.create_collection("path", dimension=3)
    c.upsert(
        [
            {
                "id": f"r{i}",
                "vector": [1.0, i / 10, 0.5],
                "text": f"text {i}",
                "metadata": {"i": i},
                "namespace": ["u", str(i % 2)],
                "importance": i / 10,
                "ttl_seconds": 3600 if i % 3 == 0 else None,
            }
            for i in range(8)
        ]
    )
    return c


@pytest.mark.parametrize(
    "include",
    [("metadata", "text"), [], ["metadata"], ["text", "timestamps"], list(ALL_FIELDS), ["expires_at", "namespace"]],
)
def test_hits_carry_exactly_what_get_returns(coll, include):
    hits = coll.search([1.0, 0.3, 0.5], k=5, include=include)
    assert len(hits) == 5
    for h in hits:
        if not include:
            assert h.record is None
            continue
        full = coll.get(h.id, include=list(ALL_FIELDS))
        rec = h.record
        assert rec.version == full.version and rec.id == h.id
        assert rec.text == (full.text if "text" in include else None)
        assert rec.metadata == (full.metadata if "metadata" in include else {})
        assert rec.namespace == (full.namespace if "namespace" in include else ())
        assert rec.expires_at == (full.expires_at if "expires_at" in include else None)
        assert rec.ttl_seconds == (full.ttl_seconds if "expires_at" in include else None)
        assert rec.importance == (full.importance if "importance" in include else None)
        assert rec.created_at == (full.created_at if "timestamps" in include else None)
        assert rec.updated_at == (full.updated_at if "timestamps" in include else None)
        assert rec.vector is None


def test_live_records_drops_absent_deleted_and_expired(coll):
    reader = coll.reader
    inc = frozenset(("metadata", "text"))
    coll.delete(["r1"])
    now = time.time()
    got = reader.live_records(["r0", "r1", "nope", "r2"], inc, now)
    assert [r.id if r else None for r in got] == ["r0", None, None, "r2"]
    # r0 has a TTL of an hour, r2 none: two hours from now r0 has expired.
    later = reader.live_records(["r0", "r2"], inc, now + 7200)
    assert later[0] is None and later[1] is not None and later[1].metadata == {"i": 2}


def test_live_records_refuses_vectors(coll):
    with pytest.raises(ValueError):
        coll.reader.live_records(["r0"], frozenset(("vector",)), time.time())


def test_include_with_vector_still_returns_it(coll):
    hits = coll.search([1.0, 0.3, 0.5], k=3, include=["vector", "metadata"])
    assert all(h.record.vector is not None and len(h.record.vector) == 3 for h in hits)


def test_include_cache_keys_by_value_not_by_list(coll):
    inc = ["metadata"]
    assert coll.search([1.0, 0.3, 0.5], k=1, include=inc)[0].record.text is None
    inc.append("text")  # the same list object, now asking for more
    assert coll.search([1.0, 0.3, 0.5], k=1, include=inc)[0].record.text is not None


def test_invalid_include_raises_every_time(coll):
    for _ in range(3):
        with pytest.raises(InvalidArgument) as e:
            coll.search([1.0, 0.3, 0.5], k=1, include=["metadata", "bogus"])
        assert e.value.code == "invalid_include"
    assert ("metadata", "bogus") not in search_mod._INCLUDE_CACHE


def test_include_cache_is_bounded(coll, monkeypatch):
    monkeypatch.setattr(search_mod, "_INCLUDE_CACHE", {})
    monkeypatch.setattr(search_mod, "_INCLUDE_CACHE_MAX", 2)
    for inc in (["metadata"], ["text"], ["namespace"], ["importance"]):
        assert search_mod._include(inc) == frozenset(inc)
    assert len(search_mod._INCLUDE_CACHE) == 2


def test_unhashable_include_fails_as_before(coll):
    with pytest.raises(TypeError):
        coll.search([1.0, 0.3, 0.5], k=1, include=[["metadata"]])


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_score_list_equals_score(metric):
    vi = VectorIndex(3, metric)
    cases = [
        np.array([0.1, -0.5, 2.0, 1e-8], dtype=np.float32),
        np.array([np.nan, np.inf, -np.inf, 0.5], dtype=np.float32),
        np.array([3e38, -3.4e38], dtype=np.float32),
        np.zeros(0, dtype=np.float32),
    ]
    for d in cases:
        assert vi.score_list(d) == vi.score(d).tolist()


def test_resize_waits_for_a_search_inside_and_is_woken(tmp_path):
    vi = VectorIndex(3, "cosine", capacity=4)
    vi.upsert(["a"], np.ones((1, 3), dtype=np.float32) / np.sqrt(3), [None])
    vi._enter()  # a search inside hnswlib
    done = threading.Event()

    def grow() -> None:
        vi.upsert([f"x{i}" for i in range(8)], np.eye(3, dtype=np.float32)[np.arange(8) % 3], [None] * 8)
        done.set()

    t = threading.Thread(target=grow, daemon=True)
    t.start()
    assert not done.wait(0.2)  # the resize waits for the reader
    vi._exit()
    assert done.wait(5), "the resize was not woken when the last reader left"
    t.join(5)
    assert len(vi) == 9


def test_rows_read_for_an_inexact_filter_are_not_read_again(coll, monkeypatch):
    # "i" is not a declared field: candidates are checked against their rows, which the hits then reuse.
    def no_second_read(*a, **k):
        raise AssertionError("the hits' rows were read again")

    monkeypatch.setattr(RecordReader, "live_records", no_second_read)
    hits = coll.search([1.0, 0.3, 0.5], k=3, filter={"i": {"$gte": 5}})
    assert sorted(h.id for h in hits) == ["r5", "r6", "r7"]
    assert all(h.record.metadata["i"] >= 5 for h in hits)
