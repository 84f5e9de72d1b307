"""Guards on the read paths that a deliberately broken engine once slipped past the suite.

- Expired records are not live: every read (get, scan, count with and without a filter, every
  search mode, graph reads, namespaces) leaves them out from the moment their TTL passes, not
  only once the TTL sweeper has deleted them. The sweeper runs once an hour here, so a read that
  checks only for tombstones returns the expired record and fails these tests.
- Hybrid search fuses ranks by *summing* each record's reciprocal-rank contributions: a record
  ranked 2nd in both lists beats records ranked 1st in one list only, with exact fused scores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import engramdb
from engramdb.engine.search import RRF_K, fuse

TTL = 0.4


@pytest.fixture
def slow_sweep_db(tmp_path: Path) -> Iterator[engramdb.Database]:
    # The sweeper would turn expired records into tombstones and hide a read that ignores expiry.
    d = engramdb.open(tmp_path / "data", storage={"ttl_sweep_interval_seconds": 3600})
    yield d
    d.close()


def _expired_fixture(db: engramdb.Database, indexed: bool) -> engramdb.Collection:
    c = db.create_collection(
        "ttl-" + ("idx" if indexed else "raw"),
        dimension=2,
        indexed_fields={"kind": "keyword"} if indexed else None,
    )
    c.upsert(
        [
            {
                "id": "gone",
                "vector": [1, 0],
                "text": "apple pie",
                "metadata": {"kind": "k"},
                "namespace": ["ns", "old"],
                "ttl_seconds": TTL,
            },
            {"id": "stay", "vector": [0.9, 0.1], "text": "apple tart", "metadata": {"kind": "k"}, "namespace": ["ns"]},
            {"id": "hub", "vector": [0, 1], "text": "pear", "metadata": {"kind": "h"}, "namespace": ["ns"]},
        ]
    )
    c.link([{"src": "hub", "relation": "r", "dst": "gone"}, {"src": "hub", "relation": "r", "dst": "stay"}])
    assert c.count() == 3 and c.count({"kind": "k"}) == 2
    assert c.get("gone") is not None
    time.sleep(TTL + 0.2)
    row = c.store.get_record(c._key("gone"))
    assert row is not None and not row.deleted, "the sweeper ran: the test would not see the bug"
    text_index = c.indexes.text_index
    assert text_index is not None
    text_index.flush()
    return c


@pytest.mark.parametrize("indexed", [False, True], ids=["unindexed", "indexed"])
def test_expired_record_is_gone_before_the_sweeper_runs(slow_sweep_db: engramdb.Database, indexed: bool) -> None:
    c = _expired_fixture(slow_sweep_db, indexed)
    assert c.get("gone") is None
    assert [r.id for r in c.get_many(["gone", "stay"])] == ["stay"]
    assert [r.id for r in c.scan().records] == ["hub", "stay"]
    assert [r.id for r in c.scan(filter={"kind": "k"}).records] == ["stay"]
    assert [r.id for r in c.scan(namespace_prefix=["ns"]).records] == ["hub", "stay"]
    assert [r.id for r in c.scan(id_prefix="go").records] == []
    assert c.count() == 2
    assert c.count({"kind": "k"}) == 1  # exact through the payload index when "kind" is indexed
    assert c.count({"kind": {"$in": ["k", "h"]}}) == 2
    assert c.count({"namespace_prefix": ["ns", "old"]}) == 0  # never exact: reads rows
    assert c.count({"$or": [{"kind": "k"}, {"kind": "zzz"}]}) == 1
    # k as small as the live matches: an expired nearest record must not take a place in the top k.
    for kw in ({}, {"exact": True}, {"include": []}):
        assert [h.id for h in c.search([1, 0], k=2, **kw)] == ["stay", "hub"], kw
    for kw in ({}, {"exact": True}):
        assert [h.id for h in c.search([1, 0], k=1, filter={"kind": "k"}, **kw)] == ["stay"], kw
    assert [h.id for h in c.search(text="apple", mode="text", k=3)] == ["stay"]
    assert [h.id for h in c.search(text="apple", mode="text", k=3, filter={"kind": "k"})] == ["stay"]
    assert "gone" not in [h.id for h in c.search([1, 0], text="apple", mode="hybrid", k=3)]
    assert [h.id for h in c.neighbors("hub")] == ["stay"]
    assert {r.id for r in c.subgraph(["hub"])["nodes"]} == {"hub", "stay"}
    assert ("ns", "old") not in c.list_namespaces()
    assert c.refresh_ttl(["gone"]) == 0  # an expired record cannot be revived


# ----------------------------------------------------------------------- fusion


def test_fuse_sums_each_records_contributions_from_both_lists() -> None:
    ranked = {
        "vector": [(1, 0.9), (2, 0.8), (3, 0.7)],
        "text": [(4, 12.0), (2, 11.0)],
    }
    got = fuse(ranked, {}, 10)
    assert [label for label, _, _ in got] == [2, 1, 4, 3]  # 1 and 4 tie; the lower label first
    scores = {label: score for label, score, _ in got}
    assert scores[2] == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 2), rel=1e-12)
    assert scores[1] == pytest.approx(1 / (RRF_K + 1), rel=1e-12)
    assert scores[4] == pytest.approx(1 / (RRF_K + 1), rel=1e-12)
    assert scores[3] == pytest.approx(1 / (RRF_K + 3), rel=1e-12)
    signals = {label: sig for label, _, sig in got}
    assert signals[2] == {"vector": 0.8, "text": 11.0}  # the raw score of each list, not the fused one
    assert signals[1] == {"vector": 0.9} and signals[4] == {"text": 12.0}


def test_fuse_weights_each_contribution() -> None:
    ranked = {"vector": [(1, 0.9), (2, 0.8)], "text": [(2, 3.0), (1, 2.0)]}
    got = {label: score for label, score, _ in fuse(ranked, {"vector": 2.0, "text": 0.5}, 10)}
    assert got[1] == pytest.approx(2.0 / (RRF_K + 1) + 0.5 / (RRF_K + 2), rel=1e-12)
    assert got[2] == pytest.approx(2.0 / (RRF_K + 2) + 0.5 / (RRF_K + 1), rel=1e-12)
    # k cuts after ranking by the summed score.
    assert [label for label, _, _ in fuse(ranked, {"vector": 2.0, "text": 0.5}, 1)] == [1]


def test_hybrid_search_ranks_a_record_found_by_both_lists_first(db: engramdb.Database) -> None:
    c = db.create_collection("rrf", dimension=2)
    # Fillers between "both" and "text-first" in angle: vector ranks 3..12, no text match.
    fillers = [
        {"id": f"filler-{i:02d}", "vector": [math.cos(math.radians(a)), math.sin(math.radians(a))], "text": "zebra"}
        for i, a in enumerate(range(45, 145, 10))
    ]
    c.upsert(
        [
            # vector rank 1, no text match
            {"id": "vec-only", "vector": [1, 0], "text": "zebra"},
            # vector rank 2, text rank 2
            {"id": "both", "vector": [0.8, 0.6], "text": "apple banana cherry damson elder fig"},
            # vector rank 13 (last), text rank 1
            {"id": "text-first", "vector": [-1, 0], "text": "apple apple apple"},
            *fillers,
        ]
    )
    text_index = c.indexes.text_index
    assert text_index is not None
    text_index.flush()
    by_vector = [h.id for h in c.search([1, 0], k=20, exact=True, include=[])]
    assert by_vector == ["vec-only", "both", *(f["id"] for f in fillers), "text-first"]
    assert [h.id for h in c.search(text="apple", mode="text", k=3)] == ["text-first", "both"]
    hits = c.search([1, 0], text="apple", mode="hybrid", k=4, include=[])
    assert [h.id for h in hits] == ["both", "text-first", "vec-only", "filler-00"]
    score = {h.id: h.score for h in hits}
    assert score["both"] == pytest.approx(2 / (RRF_K + 2), rel=1e-12)
    assert score["text-first"] == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 13), rel=1e-12)
    assert score["vec-only"] == pytest.approx(1 / (RRF_K + 1), rel=1e-12)
    assert score["filler-00"] == pytest.approx(1 / (RRF_K + 3), rel=1e-12)
    assert set(hits[0].signals) == {"vector", "text"}
