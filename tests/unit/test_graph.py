"""Knowledge graph: edges, traversal (neighbors, subgraph) and graph-expansion search."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import engramdb
from engramdb import Edge, InvalidArgument, NotFound
from engramdb.errors import DeadlineExceeded

VECS = {
    "a": [1, 0, 0, 0],
    "b": [0, 1, 0, 0],
    "c": [0, 0, 1, 0],
    "d": [0, 0, 0, 1],
    "e": [0, 1, 1, 0],
    "f": [0, 0, 1, 1],
}
# The hand-built graph. With the query [1, 0, 0, 0] only "a" is similar (score
# 1.0); every other record scores 0, so k=1 makes "a" the single seed.
GRAPH = [
    ("a", "r", "b", 1.0),
    ("a", "r", "c", 0.5),
    ("b", "r", "d", 1.0),
    ("c", "r", "d", 1.0),
    ("a", "r", "f", 0.1),
    ("b", "s", "f", 1.0),
    ("d", "r", "e", 1.0),
]
Q = [1, 0, 0, 0]


def step(src: str, rel: str, dst: str, w: float) -> dict:
    return {"src": src, "relation": rel, "dst": dst, "weight": w}


def summary(hits) -> list[tuple[str, float, int, list[tuple[str, str, str]]]]:
    return [(h.id, round(h.score, 9), h.hop, [(s["src"], s["relation"], s["dst"]) for s in h.path]) for h in hits]


@pytest.fixture
def g(db):
    c = db.create_collection("g", dimension=4)
    c.upsert([{"id": i, "vector": v, "metadata": {"kind": "public"}} for i, v in VECS.items()])
    c.link([{"src": s, "relation": r, "dst": d, "weight": w} for s, r, d, w in GRAPH])
    return c


def edge_set(edges) -> set[tuple[str, str, str, float]]:
    return {(e.src, e.relation, e.dst, e.weight) for e in edges}


# --------------------------------------------------------------------- edges
def test_link_edges_roundtrip(db):
    c = db.create_collection("e", dimension=4)
    c.upsert([{"id": i, "vector": v} for i, v in VECS.items()])
    versions = c.link(
        [
            Edge("a", "knows", "b", 0.5, {"since": 2020, "tags": ["x"]}),
            {"src": "a", "relation": "likes", "dst": "c"},
            {"src": "c", "relation": "knows", "dst": "a", "weight": 2, "properties": None},
        ]
    )
    assert len(versions) == 3 and versions == sorted(versions) and len(set(versions)) == 3
    out = c.edges("a")
    assert edge_set(out) == {("a", "knows", "b", 0.5), ("a", "likes", "c", 1.0)}
    ab = next(e for e in out if e.dst == "b")
    assert ab.properties == {"since": 2020, "tags": ["x"]} and ab.version == versions[0]
    assert edge_set(c.edges("a", direction="in")) == {("c", "knows", "a", 2.0)}
    assert len(c.edges("a", direction="both")) == 3
    assert edge_set(c.edges("a", relation="likes")) == {("a", "likes", "c", 1.0)}
    assert len(c.edges("a", direction="both", limit=2)) == 2
    # Linking again replaces weight and properties, with a newer version.
    (v2,) = c.link(Edge("a", "knows", "b", 0.9))
    ab2 = next(e for e in c.edges("a") if e.dst == "b")
    assert ab2.weight == 0.9 and ab2.properties == {} and ab2.version == v2 > versions[0]
    assert c.link([]) == []


def test_edges_of_missing_record_is_not_found(g):
    with pytest.raises(NotFound) as ei:
        g.edges("nope")
    assert ei.value.code == "record_not_found"
    with pytest.raises(NotFound):
        g.neighbors("nope")


def test_self_loop_listed_once_and_not_traversed(g):
    g.link({"src": "a", "relation": "self", "dst": "a"})
    both = [e for e in g.edges("a", direction="both") if e.relation == "self"]
    assert len(both) == 1
    assert "a" not in {h.id for h in g.neighbors("a", hops=3, direction="both")}


def test_unlink(g):
    assert g.unlink([("a", "r", "b"), {"src": "a", "relation": "r", "dst": "c"}, ("a", "r", "zz")]) == 2
    assert g.unlink([("a", "r", "b")]) == 0  # already gone
    assert g.unlink(Edge("b", "r", "d")) == 1
    assert edge_set(g.edges("a")) == {("a", "r", "f", 0.1)}
    assert g.unlink([]) == 0
    with pytest.raises(InvalidArgument):
        g.unlink([("a", "r", "f"), ("a", "r")])  # second item malformed: nothing removed
    assert edge_set(g.edges("a")) == {("a", "r", "f", 0.1)}
    # Relinking after an unlink works (a newer version beats the tombstone).
    g.link({"src": "a", "relation": "r", "dst": "b"})
    assert ("a", "r", "b", 1.0) in edge_set(g.edges("a"))


def test_collections_do_not_share_edges(db, g):
    other = db.create_collection("other", dimension=4)
    other.upsert([{"id": i, "vector": v} for i, v in VECS.items()])
    assert other.edges("a", direction="both") == []
    assert other.neighbors("a", hops=3) == []
    other.link({"src": "a", "relation": "r", "dst": "b"})
    other.delete("b")
    assert ("a", "r", "b", 1.0) in edge_set(g.edges("a"))


# --------------------------------------------------------------- validation
BAD_EDGES = [
    ({"src": "a", "relation": "", "dst": "b"}, "invalid_relation"),
    ({"src": "a", "relation": 5, "dst": "b"}, "invalid_relation"),
    ({"src": "a", "relation": "x" * 257, "dst": "b"}, "invalid_relation"),
    ({"src": "a", "dst": "b"}, "invalid_relation"),
    ({"src": "a", "relation": "r", "dst": "b", "weight": float("nan")}, "invalid_weight"),
    ({"src": "a", "relation": "r", "dst": "b", "weight": float("inf")}, "invalid_weight"),
    ({"src": "a", "relation": "r", "dst": "b", "weight": "1"}, "invalid_weight"),
    ({"src": "a", "relation": "r", "dst": "b", "weight": True}, "invalid_weight"),
    ({"src": "a", "relation": "r", "dst": "b", "properties": {"x": float("nan")}}, "invalid_properties"),
    ({"src": "a", "relation": "r", "dst": "b", "properties": [1]}, "invalid_properties"),
    ({"src": "a", "relation": "r", "dst": "b", "properties": {"x": object()}}, "invalid_properties"),
    ({"src": "", "relation": "r", "dst": "b"}, "invalid_id"),
    ({"src": "a", "relation": "r", "dst": 7}, "invalid_id"),
    ({"src": "a", "relation": "r", "dst": "b", "colour": "red"}, "invalid_edge"),
    ("a->b", "invalid_edge"),
    ({"src": "a", "relation": "ok", "dst": "b"}, "duplicate_edge"),  # duplicates the valid first item
]


@pytest.mark.parametrize("bad, code", BAD_EDGES)
def test_invalid_link_writes_nothing(db, bad, code):
    c = db.create_collection("v", dimension=4)
    c.upsert([{"id": i, "vector": v} for i, v in VECS.items()])
    with pytest.raises(InvalidArgument) as ei:
        c.link([{"src": "a", "relation": "ok", "dst": "b"}, bad])
    assert ei.value.code == code
    assert c.edges("a", direction="both") == []


def test_link_to_missing_record_writes_nothing(g):
    before = edge_set(g.edges("a"))
    with pytest.raises(NotFound) as ei:
        g.link([{"src": "a", "relation": "new", "dst": "b"}, {"src": "a", "relation": "new", "dst": "ghost"}])
    assert ei.value.code == "record_not_found" and "ghost" in ei.value.message
    assert ei.value.details["missing"] == ["ghost"]
    assert edge_set(g.edges("a")) == before


@pytest.mark.parametrize(
    "kwargs, code",
    [
        ({"hops": 0}, "invalid_hops"),
        ({"hops": 6}, "invalid_hops"),
        ({"hops": 1.5}, "invalid_hops"),
        ({"direction": "up"}, "invalid_direction"),
        ({"limit": 0}, "invalid_limit"),
        ({"relations": []}, "invalid_relation"),
        ({"relations": [""]}, "invalid_relation"),
        ({"fanout": 0}, "invalid_fanout"),
        ({"timeout_ms": 0}, "invalid_timeout"),
        ({"include": ["bogus"]}, "invalid_include"),
    ],
)
def test_neighbors_bounds(g, kwargs, code):
    with pytest.raises(InvalidArgument) as ei:
        g.neighbors("a", **kwargs)
    assert ei.value.code == code


@pytest.mark.parametrize(
    "expand, code",
    [
        ({"hops": 0}, "invalid_hops"),
        ({"hops": 6}, "invalid_hops"),
        ({"hop": 2}, "invalid_expand"),
        ({"decay": 0}, "invalid_expand"),
        ({"decay": 1.5}, "invalid_expand"),
        ({"fanout": 0}, "invalid_expand"),
        ({"limit": 0}, "invalid_expand"),
        ({"seeds": "3"}, "invalid_expand"),
        ({"seeds": 0}, "invalid_expand"),
        ({"use_importance": "yes"}, "invalid_expand"),
        ({"direction": "sideways"}, "invalid_direction"),
        ({"relations": "r" * 300}, "invalid_relation"),
        ({"timeout_ms": -1}, "invalid_timeout"),
        ([("hops", 2)], "invalid_expand"),
    ],
)
def test_expand_spec_validation(g, expand, code):
    with pytest.raises(InvalidArgument) as ei:
        g.search(Q, k=1, expand=expand)
    assert ei.value.code == code


def test_edges_bounds(g):
    with pytest.raises(InvalidArgument):
        g.edges("a", direction="sideways")
    with pytest.raises(InvalidArgument):
        g.edges("a", limit=0)
    with pytest.raises(InvalidArgument):
        g.edges("a", relation="")
    with pytest.raises(InvalidArgument):
        g.subgraph(["a"], hops=6)


# ---------------------------------------------------------------- neighbors
def test_neighbors_hops_paths_and_scores(g):
    assert summary(g.neighbors("a", hops=1)) == [
        ("b", 1.0, 1, [("a", "r", "b")]),
        ("c", 0.5, 1, [("a", "r", "c")]),
        ("f", 0.1, 1, [("a", "r", "f")]),
    ]
    hits = g.neighbors("a", hops=3)
    assert summary(hits) == [
        ("b", 1.0, 1, [("a", "r", "b")]),
        ("c", 0.5, 1, [("a", "r", "c")]),
        ("f", 0.1, 1, [("a", "r", "f")]),
        # Two shortest paths reach d; the heavier one (through b) is reported.
        ("d", 1.0, 2, [("a", "r", "b"), ("b", "r", "d")]),
        ("e", 1.0, 3, [("a", "r", "b"), ("b", "r", "d"), ("d", "r", "e")]),
    ]
    assert hits[3].path == [step("a", "r", "b", 1.0), step("b", "r", "d", 1.0)]
    assert hits[0].record is not None and hits[0].record.metadata == {"kind": "public"}
    assert g.neighbors("a", include=[])[0].record is None
    # Relation and direction filters; "in" steps keep the edge's orientation.
    assert [h.id for h in g.neighbors("a", hops=2, relations=["s"])] == []
    assert [h.id for h in g.neighbors("b", relations="s")] == ["f"]
    assert summary(g.neighbors("d", direction="in")) == [
        ("b", 1.0, 1, [("b", "r", "d")]),
        ("c", 1.0, 1, [("c", "r", "d")]),
    ]
    both = {h.id: h.hop for h in g.neighbors("d", direction="both", hops=2)}
    assert both == {"b": 1, "c": 1, "e": 1, "a": 2, "f": 2}
    # limit keeps the nearest hops; fanout keeps the heaviest edges.
    assert [h.id for h in g.neighbors("a", hops=3, limit=4)] == ["b", "c", "f", "d"]
    assert [h.id for h in g.neighbors("a", hops=2, fanout=1)] == ["b", "d"]


def test_neighbors_time_budget(g):
    with pytest.raises(DeadlineExceeded):
        g.neighbors("a", hops=3, timeout_ms=1e-9)
    with pytest.raises(DeadlineExceeded):
        g.subgraph(["a"], hops=3, timeout_ms=1e-9)


def test_subgraph(g):
    sg = g.subgraph(["a", "nope"], hops=1)
    assert [r.id for r in sg["nodes"]] == ["a", "b", "c", "f"]
    # Every visible edge between returned nodes, including b -s-> f.
    assert edge_set(sg["edges"]) == {
        ("a", "r", "b", 1.0),
        ("a", "r", "c", 0.5),
        ("a", "r", "f", 0.1),
        ("b", "s", "f", 1.0),
    }
    induced = g.subgraph(["b", "d", "e"], hops=0)
    assert [r.id for r in induced["nodes"]] == ["b", "d", "e"]
    assert edge_set(induced["edges"]) == {("b", "r", "d", 1.0), ("d", "r", "e", 1.0)}
    assert len(g.subgraph(["a"], hops=5, limit=3)["nodes"]) == 3
    only_s = g.subgraph("b", relations=["s"], direction="out")
    assert [r.id for r in only_s["nodes"]] == ["b", "f"] and edge_set(only_s["edges"]) == {("b", "s", "f", 1.0)}
    assert g.subgraph(["nope"]) == {"nodes": [], "edges": []}


# ------------------------------------------------------------------ expansion
def test_expansion_exact_scores_hops_paths(g):
    hits = g.search(Q, k=1, exact=True, expand={"hops": 2})
    assert summary(hits) == [
        ("a", 1.0, 0, []),
        ("b", 0.5, 1, [("a", "r", "b")]),
        ("c", 0.25, 1, [("a", "r", "c")]),
        ("d", 0.25, 2, [("a", "r", "b"), ("b", "r", "d")]),
        # f is one hop away over a weak edge (0.1 -> 0.05), but two strong hops
        # give 0.25: the best score wins, with the path that gave it.
        ("f", 0.25, 2, [("a", "r", "b"), ("b", "s", "f")]),
    ]
    assert hits[3].path == [step("a", "r", "b", 1.0), step("b", "r", "d", 1.0)]
    assert hits[0].signals == {"vector": pytest.approx(1.0)} and hits[1].signals == {}
    assert hits[1].record is not None and hits[1].record.metadata == {"kind": "public"}
    three = summary(g.search(Q, k=1, exact=True, expand={"hops": 3, "decay": 1.0}))
    assert three == [
        ("a", 1.0, 0, []),
        ("b", 1.0, 1, [("a", "r", "b")]),
        ("d", 1.0, 2, [("a", "r", "b"), ("b", "r", "d")]),
        ("f", 1.0, 2, [("a", "r", "b"), ("b", "s", "f")]),
        ("e", 1.0, 3, [("a", "r", "b"), ("b", "r", "d"), ("d", "r", "e")]),
        ("c", 0.5, 1, [("a", "r", "c")]),
    ]


def test_expansion_options(g):
    def ids(expand, **kw):
        return [h.id for h in g.search(Q, k=1, exact=True, expand=expand, **kw)]

    assert summary(g.search(Q, k=1, exact=True, expand={"hops": 2, "relations": ["r"]}))[-1] == (
        "f",
        0.05,
        1,
        [("a", "r", "f")],
    )
    assert ids({"hops": 2, "limit": 3}) == ["a", "b", "c"]
    assert ids({"hops": 2, "fanout": 1}) == ["a", "b", "d"]  # ties at b broken by key order (r < s)
    assert ids({"hops": 2, "direction": "in"}) == ["a"]
    assert ids({"hops": 1}, include=[]) == ["a", "b", "c", "f"]
    # With no expansion budget left only the seeds come back.
    assert ids({"hops": 3, "timeout_ms": 1e-9}) == ["a"]
    # seeds: fetch more hits than k to start from; d is the second-best match.
    sa, sd = 1 / math.sqrt(1.04), 0.2 / math.sqrt(1.04)
    hits = g.search([1, 0, 0, 0.2], k=1, exact=True, expand={"hops": 1, "seeds": 2})
    assert [(h.id, h.hop) for h in hits] == [("a", 0), ("b", 1), ("c", 1), ("d", 0), ("e", 1), ("f", 1)]
    assert [h.score for h in hits] == pytest.approx([sa, sa * 0.5, sa * 0.25, sd, sd * 0.5, sa * 0.05], rel=1e-5)
    assert hits[4].path == [step("d", "r", "e", 1.0)]  # reached from the second seed
    # seeds=1 of the same two hits: d is still returned but not expanded from.
    one = g.search([1, 0, 0, 0.2], k=2, exact=True, expand={"hops": 1, "seeds": 1})
    assert "e" not in {h.id for h in one} and "d" in {h.id for h in one}


def test_expansion_filter_applies_to_expanded_nodes(g):
    g.patch("b", metadata={"kind": "secret"})
    hits = g.search(Q, k=1, exact=True, expand={"hops": 2}, filter={"kind": "public"})
    # b is neither returned nor walked through: d is reached via c, f only directly.
    assert summary(hits) == [
        ("a", 1.0, 0, []),
        ("c", 0.25, 1, [("a", "r", "c")]),
        ("d", 0.125, 2, [("a", "r", "c"), ("c", "r", "d")]),
        ("f", 0.05, 1, [("a", "r", "f")]),
    ]
    # Fanout counts eligible edges: a's heaviest edge (to b) is skipped, c taken.
    assert [h.id for h in g.search(Q, k=1, exact=True, expand={"fanout": 1}, filter={"kind": "public"})] == [
        "a",
        "c",
    ]


def test_expansion_use_importance(g):
    g.patch("c", importance=3.0)
    g.patch("b", importance=-2.0)  # 1 + importance floors at 0
    hits = g.search(Q, k=1, exact=True, expand={"hops": 2, "use_importance": True})
    # c: 0.25 * (1 + 3) = 1.0; b: 0.5 * 0 = 0; importance does not propagate to d.
    assert summary(hits) == [
        ("a", 1.0, 0, []),
        ("c", 1.0, 1, [("a", "r", "c")]),
        ("d", 0.25, 2, [("a", "r", "b"), ("b", "r", "d")]),
        ("f", 0.25, 2, [("a", "r", "b"), ("b", "s", "f")]),
        ("b", 0.0, 1, [("a", "r", "b")]),
    ]


def test_seed_can_be_improved_through_the_graph(db):
    c = db.create_collection("s", dimension=2)
    c.upsert([{"id": "x", "vector": [1, 0]}, {"id": "y", "vector": [0.6, 0.8]}])
    c.link({"src": "x", "relation": "r", "dst": "y", "weight": 1.5})
    hits = c.search([1, 0], k=2, exact=True, expand={"hops": 1})
    # y's own score is 0.6; via x it gets 1.0 * 0.5 * 1.5 = 0.75 and keeps its search signals.
    assert summary(hits) == [("x", 1.0, 0, []), ("y", 0.75, 1, [("x", "r", "y")])]
    assert hits[1].signals["vector"] == pytest.approx(0.6)


# --------------------------------------------------- deletes, TTL, dangling
def test_deleting_a_record_removes_its_edges(g):
    assert g.delete("b") == 1
    assert edge_set(g.edges("a")) == {("a", "r", "c", 0.5), ("a", "r", "f", 0.1)}
    assert edge_set(g.edges("d", direction="in")) == {("c", "r", "d", 1.0)}
    assert "b" not in {h.id for h in g.neighbors("a", hops=3, direction="both")}
    assert "b" not in {h.id for h in g.search(Q, k=1, exact=True, expand={"hops": 3})}
    assert "b" not in {r.id for r in g.subgraph(["a", "b"], hops=2)["nodes"]}
    # The rows are tombstoned, not just hidden: re-creating b brings no edges back.
    g.upsert({"id": "b", "vector": VECS["b"]})
    assert g.edges("b", direction="both") == []
    assert "b" not in {h.id for h in g.neighbors("a")}
    assert g.unlink([("a", "r", "b"), ("b", "r", "d"), ("b", "s", "f")]) == 0


def test_expired_records_are_not_traversed(db):
    c = db.create_collection("ttl", dimension=4)
    c.upsert([{"id": i, "vector": v} for i, v in VECS.items() if i != "b"])
    c.upsert({"id": "b", "vector": VECS["b"], "ttl_seconds": 0.4})
    c.link([{"src": s, "relation": r, "dst": d, "weight": w} for s, r, d, w in GRAPH])
    assert "b" in {h.id for h in c.neighbors("a")}
    time.sleep(0.5)
    assert "b" not in {e.dst for e in c.edges("a")}
    assert {h.id: h.hop for h in c.neighbors("a", hops=3)} == {"c": 1, "f": 1, "d": 2, "e": 3}
    assert "b" not in {h.id for h in c.search(Q, k=1, exact=True, expand={"hops": 3})}
    assert "b" not in {r.id for r in c.subgraph(["a", "b"])["nodes"]}
    with pytest.raises(NotFound):
        c.neighbors("b")
    with pytest.raises(NotFound):
        c.link({"src": "a", "relation": "again", "dst": "b"})


def test_create_missing_allows_dangling_edges(g):
    with pytest.raises(NotFound):
        g.link({"src": "a", "relation": "r", "dst": "later"})
    (v,) = g.link({"src": "a", "relation": "r", "dst": "later", "weight": 0.7}, create_missing=True)
    assert v
    g.link({"src": "ghost", "relation": "r", "dst": "a"}, create_missing=True)
    # Stored, but invisible while an endpoint is not a live record.
    assert "later" not in {e.dst for e in g.edges("a")}
    assert "ghost" not in {e.src for e in g.edges("a", direction="in")}
    assert "later" not in {h.id for h in g.neighbors("a")}
    # Once the record exists, the edge is part of the graph.
    g.upsert({"id": "later", "vector": [1, 1, 0, 0]})
    assert ("a", "r", "later", 0.7) in edge_set(g.edges("a"))
    assert "later" in {h.id for h in g.search(Q, k=1, exact=True, expand={"hops": 1})}
    # Dangling edges count as stored for unlink.
    assert g.unlink([("ghost", "r", "a")]) == 1


# ---------------------------------------------------------------- persistence
def test_edges_survive_reopen(tmp_path):
    path = tmp_path / "data"
    with engramdb.open(path) as db:
        c = db.create_collection("g", dimension=4)
        c.upsert([{"id": i, "vector": v} for i, v in VECS.items()])
        c.link([{"src": s, "relation": r, "dst": d, "weight": w, "properties": {"n": 1}} for s, r, d, w in GRAPH])
        c.unlink([("a", "r", "f")])
        before_edges = c.edges("a", direction="both")
        before_nb = summary(c.neighbors("a", hops=3))
        before_x = summary(c.search(Q, k=1, exact=True, expand={"hops": 3}))
    with engramdb.open(path) as db:
        c = db.get_collection("g")
        assert c.edges("a", direction="both") == before_edges
        assert summary(c.neighbors("a", hops=3)) == before_nb
        assert summary(c.search(Q, k=1, exact=True, expand={"hops": 3})) == before_x
        assert ("a", "r", "f") not in {(e.src, e.relation, e.dst) for e in before_edges}


# ------------------------------------------------------ property test vs model
IDS = ["n0", "n1", "n2", "n3", "n4"]
RELS = ["r", "s"]
ids_st = st.sampled_from(IDS)
key_st = st.tuples(ids_st, st.sampled_from(RELS), ids_st)
weight_st = st.sampled_from([0.5, 1.0, 2.0])


class GraphModel(RuleBasedStateMachine):
    """The engine against a plain dict model: live ids + stored edges (visible iff both ends live)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="engramdb-graph-")
        self.db = engramdb.open(Path(self.dir) / "d", storage={"sync_writes": False})
        self.c = self.db.create_collection("m", dimension=2)
        self.live: set[str] = set()
        self.stored: dict[tuple[str, str, str], float] = {}

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def visible(self) -> dict[tuple[str, str, str], float]:
        return {k: w for k, w in self.stored.items() if k[0] in self.live and k[2] in self.live}

    @rule(rid=ids_st)
    def upsert(self, rid: str) -> None:
        self.c.upsert({"id": rid, "vector": [1.0, float(IDS.index(rid))]})
        self.live.add(rid)

    @rule(rid=ids_st)
    def delete(self, rid: str) -> None:
        assert self.c.delete(rid) == (1 if rid in self.live else 0)
        self.live.discard(rid)
        # Delete tombstones every stored edge touching the id, dangling ones too.
        self.stored = {k: w for k, w in self.stored.items() if rid not in (k[0], k[2])}

    @rule(keys=st.lists(key_st, min_size=1, max_size=3), weight=weight_st, create_missing=st.booleans())
    def link(self, keys: list[tuple[str, str, str]], weight: float, create_missing: bool) -> None:
        batch = [{"src": s, "relation": r, "dst": d, "weight": weight} for s, r, d in keys]
        if len(set(keys)) < len(keys):
            with pytest.raises(InvalidArgument):
                self.c.link(batch, create_missing=create_missing)
            return
        missing = {x for s, _, d in keys for x in (s, d)} - self.live
        if missing and not create_missing:
            with pytest.raises(NotFound):
                self.c.link(batch)
            return
        assert len(self.c.link(batch, create_missing=create_missing)) == len(keys)
        for k in keys:
            self.stored[k] = weight

    @rule(keys=st.lists(key_st, max_size=3, unique=True))
    def unlink(self, keys: list[tuple[str, str, str]]) -> None:
        expected = sum(1 for k in keys if k in self.stored)
        assert self.c.unlink(keys) == expected
        for k in keys:
            self.stored.pop(k, None)

    @invariant()
    def edges_agree(self) -> None:
        vis = self.visible()
        for rid in IDS:
            if rid not in self.live:
                with pytest.raises(NotFound):
                    self.c.edges(rid)
                continue
            got_out = {(e.src, e.relation, e.dst, e.weight) for e in self.c.edges(rid)}
            got_in = {(e.src, e.relation, e.dst, e.weight) for e in self.c.edges(rid, direction="in")}
            assert got_out == {(*k, w) for k, w in vis.items() if k[0] == rid}
            assert got_in == {(*k, w) for k, w in vis.items() if k[2] == rid}

    @rule(start=ids_st, hops=st.integers(1, 3), direction=st.sampled_from(["out", "in", "both"]))
    def neighbors_agree(self, start: str, hops: int, direction: str) -> None:
        if start not in self.live:
            with pytest.raises(NotFound):
                self.c.neighbors(start, hops=hops, direction=direction)
            return
        vis = self.visible()
        adj: dict[str, set[str]] = {}
        for s, _, d in vis:
            if direction in ("out", "both"):
                adj.setdefault(s, set()).add(d)
            if direction in ("in", "both"):
                adj.setdefault(d, set()).add(s)
        dist = {start: 0}
        q = deque([start])
        while q:
            u = q.popleft()
            if dist[u] == hops:
                continue
            for v in adj.get(u, ()):
                if v not in dist:
                    dist[v] = dist[u] + 1
                    q.append(v)
        del dist[start]
        hits = self.c.neighbors(start, hops=hops, direction=direction, include=[])
        assert {h.id: h.hop for h in hits} == dist
        for h in hits:
            # The path is a chain of visible edges from start to the node, and
            # the score is the product of its weights.
            assert len(h.path) == h.hop
            at = start
            for s in h.path:
                key = (s["src"], s["relation"], s["dst"])
                assert key in vis and vis[key] == s["weight"]
                assert (
                    at in (s["src"], s["dst"])
                    if direction == "both"
                    else at == s["src" if direction == "out" else "dst"]
                )
                at = s["dst"] if at == s["src"] else s["src"]
            assert at == h.id
            assert math.isclose(h.score, math.prod(s["weight"] for s in h.path))


TestGraphModel = GraphModel.TestCase
TestGraphModel.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_link_racing_a_delete_leaves_no_edge(g, monkeypatch):
    # Simulate a delete of "b" landing between link's existence check and its
    # write: the check passes, then b is deleted (with its edges), then the edge
    # is written. Link's re-check must remove it so it cannot resurface.
    real = type(g)._not_live
    calls = []

    def racing(ids):
        calls.append(ids)
        if len(calls) == 1:
            g.delete("b")
            return []
        return real(g, ids)

    monkeypatch.setattr(g, "_not_live", racing)
    g.link({"src": "a", "relation": "late", "dst": "b"})
    monkeypatch.undo()
    g.upsert({"id": "b", "vector": VECS["b"]})
    assert g.edges("b", direction="both") == []
    assert "late" not in {e.relation for e in g.edges("a")}


def test_ttl_sweep_removes_edges(db):
    c = db.create_collection("sweep", dimension=4)
    c.upsert([{"id": "a", "vector": VECS["a"]}, {"id": "b", "vector": VECS["b"], "ttl_seconds": 0.2}])
    c.link({"src": "a", "relation": "r", "dst": "b"})
    time.sleep(0.3)
    db.sweep()
    c.upsert({"id": "b", "vector": VECS["b"]})  # the id comes back as a new record
    assert c.edges("a") == []
