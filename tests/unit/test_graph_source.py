"""The GraphSource contract: graph walks over plain dicts give exactly the engine's answers.

A cluster coordinator has no Store: it runs ``graph.list_edges``,
``graph.walk_neighbors``, ``graph.walk_subgraph`` and ``graph.expand_hits``
over a source that batches requests to its shards. ``MemorySource`` below is
such a source written from the protocol's documentation alone (edges in
dicts, sorted with ``graph.scan_order``, cut at ``limit_per_node``); every
test builds the same data in an engine collection and in a MemorySource and
compares results, scores, paths, records, ordering and errors.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Container, Iterable, Sequence
from typing import Any

import numpy as np
import pytest

import engramdb
from engramdb.engine import graph
from engramdb.engine.hlc import parse_version
from engramdb.engine.records import RecordReader
from engramdb.errors import EngramError
from engramdb.filters import Filter, compile_filter
from engramdb.storage.codec import RecordRow
from engramdb.types import Edge, Record

ALL = ("vector", "text", "metadata", "namespace", "expires_at", "timestamps", "importance")


class MemorySource:
    """A GraphSource over dicts: rows by id, live edges by (src, relation, dst)."""

    def __init__(self, name: str, rows: dict[str, RecordRow], edges: dict[tuple[str, str, str], Edge], batch: int):
        self.name = name
        self.batch_nodes = batch
        self._rows = rows
        self._edges = edges
        self.calls: dict[str, int] = {"adjacent": 0, "edges": 0, "live": 0, "rows": 0, "records": 0}

    def _lists(
        self, node: str, direction: str, relations: tuple[str, ...] | None, limit: int | None, targets: Any = None
    ) -> list[Edge]:
        key = graph.scan_order(relations)
        out = direction == "out"
        found = [
            e
            for e in self._edges.values()
            if (e.src if out else e.dst) == node
            and (relations is None or e.relation in relations)
            and (targets is None or (e.dst if out else e.src) in targets)
        ]
        found.sort(key=lambda e: key(e.relation, e.dst if out else e.src))
        return found if limit is None else found[:limit]

    def adjacent(
        self, nodes: Sequence[str], direction: str, relations: tuple[str, ...] | None, limit_per_node: int | None
    ) -> dict[str, list[graph.Adj]]:
        self.calls["adjacent"] += 1
        res: dict[str, list[graph.Adj]] = {}
        for n in nodes:
            adj = []
            for d in ("out", "in") if direction == "both" else (direction,):
                for e in self._lists(n, d, relations, limit_per_node):
                    adj.append(graph.Adj(e.dst if d == "out" else e.src, e.src, e.relation, e.dst, e.weight))
            res[n] = adj
        return res

    def edges(
        self,
        nodes: Sequence[str],
        direction: str,
        relations: tuple[str, ...] | None,
        limit_per_node: int | None,
        *,
        targets: Container[str] | None = None,
    ) -> dict[str, list[Edge]]:
        self.calls["edges"] += 1
        return {n: [copy.copy(e) for e in self._lists(n, direction, relations, limit_per_node, targets)] for n in nodes}

    def live(self, ids: Iterable[str]) -> set[str]:
        self.calls["live"] += 1
        now = time.time()
        return {r for r in ids if (row := self._rows.get(r)) is not None and row.live(now)}

    def rows(self, ids: Sequence[str]) -> list[RecordRow | None]:
        self.calls["rows"] += 1
        return [self._rows.get(r) for r in ids]

    def records(
        self,
        pairs: Sequence[tuple[str, RecordRow | None]],
        include: frozenset[str],
        now: float,
        flt: Filter | None = None,
    ) -> list[Record | None]:
        self.calls["records"] += 1
        return [
            None if row is None or not row.live(now) else RecordReader.to_record(rid, row, include)
            for rid, row in pairs
        ]


class Twin:
    """One data set written to an engine collection and mirrored in dicts for a MemorySource."""

    def __init__(self, coll: Any):
        self.coll = coll
        self.rows: dict[str, RecordRow] = {}
        self.edges: dict[tuple[str, str, str], Edge] = {}

    def upsert(self, records: list[dict[str, Any]]) -> None:
        versions = self.coll.upsert(records)
        for rec in self.coll.get_many([r["id"] for r in records], include=ALL):
            self.rows[rec.id] = _row(rec)
        for r, v in zip(records, versions, strict=True):
            if r["id"] not in self.rows:  # expired already: keep a row that is not live, as a store does
                hlc, node = parse_version(v)
                self.rows[r["id"]] = RecordRow(hlc, node, expires_at=r["expires_at"], metadata=r.get("metadata", {}))

    def link(self, edges: list[tuple[str, str, str, float]], create_missing: bool = True) -> None:
        items = [
            {"src": s, "relation": r, "dst": d, "weight": w, "properties": {"n": i}}
            for i, (s, r, d, w) in enumerate(edges)
        ]
        versions = self.coll.link(items, create_missing=create_missing)
        for it, v in zip(items, versions, strict=True):
            self.edges[(it["src"], it["relation"], it["dst"])] = Edge(
                it["src"], it["relation"], it["dst"], float(it["weight"]), it["properties"], v
            )

    def unlink(self, keys: list[tuple[str, str, str]]) -> None:
        self.coll.unlink(keys)
        for k in keys:
            self.edges.pop(k, None)

    def delete(self, ids: list[str]) -> None:
        # A delete removes the record and every edge touching it (both directions).
        self.coll.delete(ids)
        for rid in ids:
            self.rows.pop(rid, None)
        self.edges = {k: e for k, e in self.edges.items() if k[0] not in ids and k[2] not in ids}

    def source(self, batch: int = 3) -> MemorySource:
        return MemorySource(self.coll.name, self.rows, self.edges, batch)


def _row(rec: Record) -> RecordRow:
    hlc, node = parse_version(rec.version or "0.0")
    return RecordRow(
        hlc,
        node,
        False,
        rec.created_at or 0.0,
        rec.updated_at or 0.0,
        rec.expires_at,
        tuple(rec.namespace),
        dict(rec.metadata),
        rec.text,
        np.asarray(rec.vector, dtype=np.float32).tobytes(),
        rec.importance,
        rec.ttl_seconds,
    )


@pytest.fixture
def db(tmp_path):
    # No TTL sweeps during a test: expired records must keep their (hidden) edges.
    d = engramdb.open(tmp_path / "data", storage={"ttl_sweep_interval_seconds": 3600})
    yield d
    d.close()


def _outcome(fn: Any) -> Any:
    try:
        return ("ok", fn())
    except EngramError as e:
        return ("error", type(e).__name__, e.code, e.message)


def _same(twin: Twin, op: str, *args: Any, batches: Sequence[int] = (1, 3, 1000), **kwargs: Any) -> Any:
    """Run ``graph.<op>`` on the engine collection and on MemorySources; all must agree."""
    with twin.coll.graph_source() as src:
        want = _outcome(lambda: getattr(graph, op)(src, *args, **kwargs))
    engine_api = {"list_edges": "edges", "walk_neighbors": "neighbors", "walk_subgraph": "subgraph"}[op]
    via_api = _outcome(lambda: getattr(twin.coll, engine_api)(*args, **kwargs))
    assert via_api == want, (op, args, kwargs)
    for b in batches:
        got = _outcome(lambda b=b: getattr(graph, op)(twin.source(b), *args, **kwargs))
        assert got == want, (op, args, kwargs, b)
    return want


# ---------------------------------------------------------------- shapes
VEC = {f"n{i}": [float(i % 3 == 0), float(i % 3 == 1), float(i % 3 == 2), 1.0 + i / 10] for i in range(12)}


@pytest.fixture
def twin(db):
    """Cycles, a self-loop, several relations (of different lengths, non-ASCII), equal weights,
    a deleted endpoint, an expired endpoint, a missing endpoint and unlinked (tombstoned) edges."""
    t = Twin(db.create_collection("g", dimension=4))
    t.upsert(
        [
            {
                "id": rid,
                "vector": v,
                "text": f"text of {rid}",
                "metadata": {"kind": "odd" if int(rid[1:]) % 2 else "even"},
                "namespace": ["a", rid[:2]],
                "importance": (int(rid[1:]) % 4 - 1) / 2,
            }
            for rid, v in VEC.items()
        ]
    )
    t.upsert([{"id": "expired", "vector": [1, 1, 1, 1], "expires_at": 1.0, "metadata": {"kind": "odd"}}])
    t.upsert([{"id": "doomed", "vector": [1, 1, 1, 1]}])
    t.delete(["doomed"])
    t.link(
        [
            ("n0", "r", "n1", 1.0),
            ("n1", "r", "n2", 0.5),
            ("n2", "r", "n0", 0.5),  # cycle n0 -> n1 -> n2 -> n0
            ("n0", "likes", "n3", 0.5),
            ("n0", "é", "n4", 0.5),  # 2 UTF-8 bytes: sorts between "r" and "likes"
            ("n0", "zz", "n5", 0.5),
            ("n0", "r", "n6", 0.5),  # equal weights: ties keep scan order
            ("n0", "r", "n0", 0.7),  # self-loop
            ("n3", "r", "n0", 0.9),
            ("n4", "likes", "n0", 0.2),
            ("n5", "r", "n7", 1.0),
            ("n7", "r", "n8", 1.0),
            ("n8", "r", "n9", 0.3),
            ("n9", "r", "n10", 2.0),
            ("n6", "likes", "n11", 0.8),
            ("n0", "r", "expired", 3.0),  # the heaviest edge leads nowhere visible
            ("expired", "r", "n9", 1.0),
            ("n0", "r", "doomed", 3.0),  # deleted endpoint, linked afterwards
            ("n1", "likes", "ghost", 1.0),  # never existed
            ("ghost", "r", "n0", 1.0),
            ("n2", "gone", "n3", 1.0),
            ("n3", "gone", "n2", 1.0),
        ]
    )
    t.unlink([("n2", "gone", "n3"), ("n3", "gone", "n2")])
    return t


RELS: list[Any] = [None, "r", ["likes", "r"], ["r", "likes"], ["é", "zz", "r"], ["nope"]]


@pytest.mark.parametrize("direction", ["out", "in", "both"])
def test_edges_match(twin, direction):
    for rid in [*VEC, "expired", "doomed", "ghost"]:
        for rel in (None, "r", "likes", "é", "gone"):
            for limit in (1, 2, 3, 1000):
                _same(twin, "list_edges", rid, direction=direction, relation=rel, limit=limit)


def test_edges_hide_non_live_endpoints_and_page_past_them(twin):
    # n0's heaviest out-edges (r -> doomed, r -> expired) sort among live ones: a
    # limit of 1 or 2 rows per read is not enough, and the walk must read on.
    got = _same(twin, "list_edges", "n0", direction="out", relation="r", limit=2)
    assert [(e.src, e.dst) for e in got[1]] == [("n0", "n0"), ("n0", "n1")]
    both = _same(twin, "list_edges", "n0", direction="both")[1]
    assert sum(1 for e in both if e.src == e.dst == "n0") == 1  # a self-loop once under "both"
    assert not {e.dst for e in both} & {"doomed", "expired", "ghost"}
    assert not {e.src for e in both} & {"doomed", "expired", "ghost"}


@pytest.mark.parametrize("direction", ["out", "in", "both"])
def test_neighbors_match(twin, direction):
    for rid in VEC:
        for hops in (1, 2, 4):
            for rels in RELS:
                for fanout in (None, 1, 2):
                    for limit in (1, 3, 100):
                        _same(
                            twin,
                            "walk_neighbors",
                            rid,
                            hops=hops,
                            relations=rels,
                            direction=direction,
                            fanout=fanout,
                            limit=limit,
                        )
    _same(twin, "walk_neighbors", "n0", hops=3, direction=direction, include=ALL)
    _same(twin, "walk_neighbors", "n0", hops=3, direction=direction, include=None)


@pytest.mark.parametrize("direction", ["out", "in", "both"])
def test_subgraph_match(twin, direction):
    starts: list[Any] = ["n0", ["n5", "n1"], ["n9", "expired", "doomed", "ghost", "n9"], ["n0", *VEC]]
    for ids in starts:
        for hops in (0, 1, 2, 3):
            for rels in RELS:
                for limit in (1, 2, 5, 500):
                    _same(twin, "walk_subgraph", ids, hops=hops, relations=rels, direction=direction, limit=limit)
    _same(twin, "walk_subgraph", "n0", hops=2, direction=direction, include=ALL)


def _expand_same(twin: Twin, query: list[float], k: int, spec: dict[str, Any], flt: Any, include: Any) -> list:
    inc = frozenset(include or ())
    compiled = compile_filter(flt)
    seeds = twin.coll.search(query, k=max(k, spec.get("seeds") or k), filter=flt, include=include)
    with twin.coll.graph_source() as src:
        want = graph.expand_hits(src, copy.deepcopy(seeds), spec, compiled, inc)
    # The same as search(expand=...) itself.
    assert twin.coll.search(query, k=k, filter=flt, include=include, expand=spec) == want
    for b in (1, 2, 1000):
        assert graph.expand_hits(twin.source(b), copy.deepcopy(seeds), spec, compiled, inc) == want, (spec, flt, b)
    return want


def test_expansion_matches(twin):
    specs: list[dict[str, Any]] = [
        {"hops": 1},
        {"hops": 3, "direction": "both"},
        {"hops": 2, "direction": "in", "fanout": 1},
        {"hops": 4, "relations": ["r"], "limit": 5},
        {"hops": 3, "relations": ["likes", "é"], "direction": "both", "decay": 1.0},
        {"hops": 2, "fanout": 2, "limit": 3, "seeds": 1},
        {"hops": 3, "direction": "both", "use_importance": True, "limit": 8},
        {"hops": 2, "direction": "both", "limit": 2},
    ]
    filters: list[Any] = [None, {"kind": "even"}, {"kind": "odd"}]
    hits = 0
    for spec in specs:
        for flt in filters:
            for include in (("metadata", "text"), None, ALL):
                for q in (VEC["n0"], VEC["n5"]):
                    got = _expand_same(twin, q, 2, spec, flt, include)
                    hits += sum(1 for h in got if h.hop > 0)
    assert hits > 100  # the shapes really expand


def test_errors_match(twin):
    for args, kwargs in [
        (("nope",), {}),
        (("expired",), {}),
        ((123,), {}),
        (("n0",), {"direction": "sideways"}),
        (("n0",), {"limit": 0}),
        (("n0",), {"relation": ""}),
    ]:
        got = _same(twin, "list_edges", *args, **kwargs)
        assert got[0] == "error"
    for kwargs in [{"hops": 0}, {"fanout": 0}, {"relations": []}, {"include": ["bogus"]}, {"timeout_ms": -1}]:
        assert _same(twin, "walk_neighbors", "n0", **kwargs)[0] == "error"
    assert _same(twin, "walk_neighbors", "doomed")[0] == "error"
    for kwargs in [{"hops": -1}, {"limit": 10**9}, {"direction": 1}]:
        assert _same(twin, "walk_subgraph", "n0", **kwargs)[0] == "error"
    assert _same(twin, "walk_subgraph", [], hops=1) == ("ok", {"nodes": [], "edges": []})
    with pytest.raises(EngramError) as e1:
        graph.expand_hits(twin.source(), [], {"hops": 99}, None, frozenset())
    with pytest.raises(EngramError) as e2, twin.coll.graph_source() as src:
        graph.expand_hits(src, [], {"hops": 99}, None, frozenset())
    assert (e1.value.code, e1.value.message) == (e2.value.code, e2.value.message)


def test_scan_cap_counts_live_edges_only(twin, monkeypatch):
    """Removed edges do not use up a node's per-direction cap (so shards can cut the same rows)."""
    monkeypatch.setattr(graph, "SCAN_CAP", 2)
    # n0's "r" out-edges in scan order are now a0, a1 (removed), doomed, expired, n0, n1, n6:
    # the cap of 2 must reach doomed and expired, not be spent on the two tombstones.
    twin.link([("n0", "r", "a0", 1.0), ("n0", "r", "a1", 1.0)])
    twin.unlink([("n0", "r", "a0"), ("n0", "r", "a1")])
    twin.unlink([("n0", "r", "n0")])  # a tombstone between live rows too
    for direction in ("out", "both"):
        assert _same(twin, "walk_neighbors", "n0", direction=direction, relations="r")[0] == "ok"
    with twin.coll.graph_source() as src:
        adj = src.adjacent(["n0"], "out", ("r",), 2)["n0"]
    assert [a.dst for a in adj] == ["doomed", "expired"]
    assert twin.source().adjacent(["n0"], "out", ("r",), 2)["n0"] == adj
    with twin.coll.graph_source() as src:
        adj = src.adjacent(["n0"], "out", ("r",), 3)["n0"]
    assert [a.dst for a in adj] == ["doomed", "expired", "n1"]
    for rid in VEC:
        for direction in ("out", "in", "both"):
            _same(twin, "walk_neighbors", rid, hops=3, direction=direction)
            _same(twin, "walk_subgraph", rid, hops=3, direction=direction)
    _expand_same(twin, VEC["n0"], 3, {"hops": 3, "direction": "both"}, None, ("metadata",))


def test_adjacency_matches_store_row_by_row(twin):
    """adjacent()/edges() of the store and of dicts sorted by scan_order agree for every node and option."""
    nodes = [*VEC, "expired", "doomed", "ghost", "nobody"]
    mem = twin.source()
    with twin.coll.graph_source() as src:
        for direction in ("out", "in", "both"):
            for rels in (None, ("r",), ("zz", "é", "likes"), ("likes", "r")):
                for cap in (None, 1, 2):
                    assert src.adjacent(nodes, direction, rels, cap) == mem.adjacent(nodes, direction, rels, cap)
                    if direction != "both":
                        for targets in (None, {"n0", "n1", "n9"}):
                            assert src.edges(nodes, direction, rels, cap, targets=targets) == mem.edges(
                                nodes, direction, rels, cap, targets=targets
                            )
        assert src.live(["n0", "expired", "doomed", "ghost", "n0"]) == {"n0"} == mem.live(["n0", "expired", "ghost"])


def test_walks_batch_their_requests(twin):
    """One adjacency request per batch of frontier nodes, not one per node or edge."""
    mem = twin.source(batch=1000)
    graph.walk_neighbors(mem, "n0", hops=3, direction="both")
    assert mem.calls["adjacent"] <= 3
    assert mem.calls["live"] <= 1 + 3
    mem = twin.source(batch=1000)
    graph.walk_subgraph(mem, list(VEC), hops=2, direction="both")
    assert mem.calls["adjacent"] <= 2 and mem.calls["edges"] == 1 and mem.calls["rows"] == 1


def test_random_graphs_match(db):
    rng = random.Random(16)
    for round_ in range(4):
        t = Twin(db.create_collection(f"rand{round_}", dimension=4))
        ids = [f"v{i:02d}" for i in range(30)]
        t.upsert(
            [
                {
                    "id": rid,
                    "vector": [rng.random() + 0.01 for _ in range(4)],
                    "metadata": {"kind": rng.choice(["even", "odd"])},
                    "importance": rng.choice([None, -0.5, 0.0, 1.0]),
                }
                for rid in ids
            ]
        )
        t.upsert([{"id": "gone", "vector": [1, 1, 1, 1], "expires_at": 1.0}])
        edges: dict[tuple[str, str, str], float] = {}
        for _ in range(140):
            s = rng.choice([*ids, "gone"])
            d = rng.choice([*ids, "gone", "ghost"])
            edges[(s, rng.choice(["r", "rel", "é"]), d)] = rng.choice([0.25, 0.5, 1.0, 1.5])
        t.link([(s, r, d, w) for (s, r, d), w in edges.items()])
        t.unlink(rng.sample(sorted(edges), 15))
        t.delete(rng.sample(ids, 3))
        live_ids = [r for r in ids if r in t.rows]
        for rid in rng.sample(live_ids, 8):
            for direction in ("out", "in", "both"):
                rels = rng.choice([None, ["r"], ["é", "rel"]])
                _same(t, "list_edges", rid, direction=direction, limit=rng.choice([1, 3, 1000]), batches=(2,))
                _same(
                    t,
                    "walk_neighbors",
                    rid,
                    hops=rng.choice([1, 2, 3]),
                    relations=rels,
                    direction=direction,
                    fanout=rng.choice([None, 2]),
                    limit=rng.choice([2, 10, 100]),
                    batches=(2,),
                )
                _same(
                    t,
                    "walk_subgraph",
                    [rid, rng.choice(ids)],
                    hops=rng.choice([1, 2, 3]),
                    relations=rels,
                    direction=direction,
                    limit=rng.choice([3, 500]),
                    batches=(2,),
                )
        for _ in range(6):
            spec = {
                "hops": rng.choice([1, 2, 3]),
                "direction": rng.choice(["out", "in", "both"]),
                "fanout": rng.choice([1, 3, 20]),
                "limit": rng.choice([3, 10, 50]),
                "use_importance": rng.random() < 0.3,
            }
            _expand_same(
                t, [rng.random() for _ in range(4)], 3, spec, rng.choice([None, {"kind": "odd"}]), ("metadata",)
            )


def test_edge_input_helpers():
    """What a coordinator needs to build edge rows without a store."""
    parsed = graph.parse_new_edges([{"src": "a", "relation": "r", "dst": "b", "weight": 0.5}, Edge("b", "r", "a")])
    assert [e.key for e in parsed] == [("a", "r", "b"), ("b", "r", "a")]
    assert graph.link_endpoints(parsed) == ["a", "b"]
    row = parsed[0].row((7, 1), 12.5)
    assert (row.hlc, row.node, row.deleted, row.weight, row.updated_at) == (7, 1, False, 0.5, 12.5)
    assert graph.edge_tombstone((8, 1), 13.0).deleted
    assert graph.parse_edge_keys([("a", "r", "b"), {"src": "a", "relation": "r", "dst": "b"}]) == [("a", "r", "b")]
    with pytest.raises(EngramError) as e:
        graph.parse_new_edges([{"src": "a", "relation": "r", "dst": "b"}] * 2)
    assert e.value.code == "duplicate_edge"
    with pytest.raises(EngramError) as e:
        graph.check_create_missing("yes")
    assert e.value.code == "invalid_argument"
    err = graph.missing_endpoints_error(["x"])
    assert err.code == "record_not_found" and err.details == {"missing": ["x"]}


def test_adjacency_read_error_is_not_the_end_of_the_list(twin, monkeypatch):
    """An iterator that stops on a read error must raise, not look like a node without more edges."""
    import contextlib

    class Broken:
        def valid(self) -> bool:
            return False

        def status(self) -> None:
            raise OSError("Corruption: block checksum mismatch")

        def seek(self, key: bytes) -> None:
            pass

        def key(self) -> bytes:
            raise AssertionError("not valid: no key")

        value = next = key

    @contextlib.contextmanager
    def iterator(cf: str, start: bytes | None = None) -> Any:
        yield Broken()

    monkeypatch.setattr(twin.coll.store, "iterator", iterator)
    with pytest.raises(EngramError):
        twin.coll.edges("n0")
    with pytest.raises(EngramError):
        twin.coll.neighbors("n0")
