"""Vector search end to end through the public API (filtered search: docs/filters.md).

Real RocksDB files in ``tmp_path``, the real HNSW index, payload index and
planner; every expectation comes from a numpy brute force or a plain-Python
evaluation of the same predicate over the records the test wrote.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engramdb
from engramdb.errors import DimensionMismatch, InvalidArgument, InvalidFilter
from engramdb.index import planner
from engramdb.index.vector import _HNSW_FILE, _META_FILE

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("ENGRAMDB_DATA", ROOT.parent / "shared" / "data"))

# Fast, and no background TTL sweep: expired records stay in the indexes until a
# test sweeps them, so search itself must hide them.
STORAGE = {"sync_writes": False, "ttl_sweep_interval_seconds": 3600}


def open_db(path: Path, **settings: Any):
    return engramdb.open(path, storage=STORAGE, **settings)


@pytest.fixture
def fdb(tmp_path):
    d = open_db(tmp_path / "data")
    yield d
    d.close()


# ----------------------------------------------------------------- helpers


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_scores(vecs: np.ndarray, q: Iterable[float], metric: str) -> np.ndarray:
    """Higher-is-better scores the way the API documents them, in float64."""
    v = np.asarray(vecs, dtype=np.float64)
    qq = np.asarray(q, dtype=np.float64)
    if metric == "cosine":
        return unit(v) @ unit(qq)
    if metric == "dot":
        return v @ qq
    return 1.0 / (1.0 + np.linalg.norm(v - qq, axis=1))


def ids(hits: Iterable[Any]) -> list[str]:
    return [h.id for h in hits]


def assert_best_first(hits: list[Any]) -> None:
    scores = [h.score for h in hits]
    assert all(a >= b for a, b in itertools.pairwise(scores)), scores
    assert len(set(ids(hits))) == len(hits), "duplicate ids in one result"


def upsert_batches(coll: Any, records: list[dict[str, Any]], batch: int = 1000) -> None:
    for s in range(0, len(records), batch):
        coll.upsert(records[s : s + batch])


@dataclass
class Model:
    """What the test wrote: id -> (vector, metadata, namespace, expires_at)."""

    metric: str
    recs: dict[str, tuple[np.ndarray, dict[str, Any], tuple[str, ...], float | None]] = field(default_factory=dict)

    def put(self, rid: str, vec: Any, md: Mapping[str, Any] | None = None, ns: Iterable[str] = (), exp=None) -> dict:
        self.recs[rid] = (np.asarray(vec, dtype=np.float32), dict(md or {}), tuple(ns), exp)
        out: dict[str, Any] = {
            "id": rid,
            "vector": np.asarray(vec, dtype=np.float32).tolist(),
            "metadata": dict(md or {}),
        }
        if ns:
            out["namespace"] = list(ns)
        if exp is not None:
            out["expires_at"] = exp
        return out

    def live(self, now: float | None = None) -> dict[str, tuple[np.ndarray, dict, tuple, float | None]]:
        now = time.time() if now is None else now
        return {r: v for r, v in self.recs.items() if v[3] is None or v[3] > now}

    def matching(self, pred: Callable[[str, tuple, dict], bool] | None, now: float | None = None) -> list[str]:
        return sorted(r for r, (_, md, ns, _) in self.live(now).items() if pred is None or pred(r, ns, md))

    def truth(self, q: Any, k: int, pred: Callable[[str, tuple, dict], bool] | None = None) -> list[tuple[str, float]]:
        rids = self.matching(pred)
        if not rids:
            return []
        vecs = np.stack([self.recs[r][0] for r in rids])
        sc = np_scores(vecs, q, self.metric)
        order = np.argsort(-sc, kind="stable")[:k]
        return [(rids[i], float(sc[i])) for i in order]

    def score(self, rid: str, q: Any) -> float:
        return float(np_scores(self.recs[rid][0][None, :], q, self.metric)[0])


# ======================================================= metrics and exactness

METRIC_N, METRIC_DIM, METRIC_Q = 3000, 32, 30


@pytest.fixture(scope="module", params=["cosine", "dot", "l2"])
def metric_coll(request, tmp_path_factory):
    metric = request.param
    rng = np.random.default_rng(11)
    x = rng.standard_normal((METRIC_N, METRIC_DIM)).astype(np.float32)
    if metric == "dot":  # varied norms, so dot and cosine rank differently
        x *= rng.uniform(0.5, 2.0, (METRIC_N, 1)).astype(np.float32)
    queries = rng.standard_normal((METRIC_Q, METRIC_DIM)).astype(np.float32)
    db = open_db(tmp_path_factory.mktemp(f"metric-{metric}"))
    coll = db.create_collection("m", dimension=METRIC_DIM, metric=metric)
    upsert_batches(coll, [{"id": f"r{i}", "vector": x[i].tolist()} for i in range(METRIC_N)])
    yield metric, coll, x, queries
    db.close()


def _truth(metric: str, x: np.ndarray, q: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    sc = np_scores(x, q, metric)
    order = np.argsort(-sc, kind="stable")[:k]
    return [f"r{i}" for i in order], sc


def test_exact_search_equals_numpy_brute_force(metric_coll):
    metric, coll, x, queries = metric_coll
    for q in queries:
        want, sc = _truth(metric, x, q, 10)
        hits = coll.search(q.tolist(), k=10, exact=True, include=[])
        assert ids(hits) == want
        assert_best_first(hits)
        for h in hits:
            assert h.score == pytest.approx(sc[int(h.id[1:])], rel=1e-4, abs=1e-5)


def test_hnsw_search_recall_and_scores(metric_coll):
    metric, coll, x, queries = metric_coll
    recalls = []
    for q in queries:
        want, sc = _truth(metric, x, q, 10)
        hits = coll.search(q, k=10, include=[])
        assert len(hits) == 10
        assert_best_first(hits)
        for h in hits:  # every score is the true score of that record
            assert h.score == pytest.approx(sc[int(h.id[1:])], rel=1e-4, abs=1e-5)
        recalls.append(len(set(want) & set(ids(hits))) / 10)
    assert np.mean(recalls) >= 0.95, recalls


def test_scores_are_higher_is_better_in_each_metric(metric_coll):
    metric, coll, x, _ = metric_coll
    # A stored vector as the query: under cosine and l2 it is its own best match, with
    # the best possible score (1.0 for both).
    for i in (0, 17, 2999):
        hits = coll.search(x[i], k=3, include=[])
        assert_best_first(hits)
        if metric in ("cosine", "l2"):
            assert hits[0].id == f"r{i}"
            assert hits[0].score == pytest.approx(1.0, abs=1e-5)
            assert all(h.score <= 1.0 + 1e-6 for h in hits)
        else:  # dot: the record with the largest inner product comes first
            assert hits[0].score == pytest.approx(float(np.max(x.astype(np.float64) @ x[i])), rel=1e-4)
    if metric == "l2":
        assert all(0.0 < h.score <= 1.0 + 1e-6 for h in coll.search(-x[0] * 10, k=5, include=[]))


# ============================================================ argument errors


@pytest.fixture
def small(fdb):
    coll = fdb.create_collection("small", dimension=4, metric="cosine", indexed_fields={"t": "int"})
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((30, 4)).astype(np.float32)
    coll.upsert([{"id": f"s{i:02d}", "vector": vecs[i].tolist(), "metadata": {"t": i % 3}} for i in range(30)])
    return coll


@pytest.mark.parametrize("k", [0, -1, 10_001, True, False, "3", 2.5, None])
def test_invalid_k_rejected(small, k):
    with pytest.raises(InvalidArgument) as ei:
        small.search([1, 0, 0, 0], k=k)
    assert ei.value.code == "invalid_k"
    assert ei.value.http_status == 400
    assert "k must be" in str(ei.value)


def test_k_limits_accepted(small):
    assert len(small.search([1, 0, 0, 0], k=1)) == 1
    assert len(small.search([1, 0, 0, 0], k=10_000)) == 30


K_FILTERS: list[tuple[dict[str, Any] | None, Callable[[int], bool]]] = [
    (None, lambda i: True),
    ({"t": 1}, lambda i: i % 3 == 1),
    ({"t": {"$in": [0, 2]}}, lambda i: i % 3 != 1),
    ({"id_prefix": "s1"}, lambda i: 10 <= i < 20),
]


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("flt, pred", K_FILTERS, ids=[repr(f) for f, _ in K_FILTERS])
def test_k_larger_than_collection_returns_every_live_record(small, exact, flt, pred):
    deleted = {0, 1, 5, 13}
    assert small.delete([f"s{i:02d}" for i in sorted(deleted)]) == len(deleted)
    want = {f"s{i:02d}" for i in range(30) if i not in deleted and pred(i)}
    hits = small.search([0.5, 0.5, 0, 0], k=500, filter=flt, exact=exact, include=[])
    assert set(ids(hits)) == want
    assert len(hits) == len(want)
    assert_best_first(hits)


@pytest.mark.parametrize("ef", [0, -5, 10_001, True, False, "64", 64.0])
def test_invalid_ef_rejected(small, ef):
    with pytest.raises(InvalidArgument) as ei:
        small.search([1, 0, 0, 0], k=3, ef=ef)
    assert ei.value.code == "invalid_ef"
    assert ei.value.http_status == 400


@pytest.mark.parametrize("ef", [1, 2, 10_000])
def test_ef_limits_accepted(small, ef):
    hits = small.search([1, 0, 0, 0], k=5, ef=ef, include=[])
    assert len(hits) == 5
    assert_best_first(hits)


@pytest.mark.parametrize("vector", [[1, 0, 0], [1, 0, 0, 0, 0], []])
def test_wrong_query_dimension_rejected(small, vector):
    with pytest.raises(DimensionMismatch) as ei:
        small.search(vector, k=3)
    assert isinstance(ei.value, InvalidArgument)
    assert ei.value.code == "dimension_mismatch"
    assert ei.value.http_status == 400


@pytest.mark.parametrize(
    "vector",
    [
        [1, float("nan"), 0, 0],
        [1, float("inf"), 0, 0],
        [float("-inf"), 0, 0, 0],
        [0, 0, 0, 0],
        [0.0, -0.0, 0.0, 0.0],
        ["a", 0, 0, 0],
        [[1, 0, 0, 0]],
    ],
)
def test_invalid_query_vectors_rejected(small, vector):
    with pytest.raises(InvalidArgument) as ei:
        small.search(vector, k=3)
    assert ei.value.code == "invalid_vector"
    assert ei.value.http_status == 400


def test_huge_but_finite_query_is_accepted_under_cosine(small):
    # Squares overflow float32 but the direction is well defined.
    a = small.search([3e38, 0, 0, 0], k=5, include=[])
    b = small.search([1, 0, 0, 0], k=5, include=[])
    assert ids(a) == ids(b)


def test_zero_query_is_valid_under_l2(fdb):
    coll = fdb.create_collection("l2", dimension=3, metric="l2")
    coll.upsert([{"id": f"p{i}", "vector": [float(i), 0.0, 0.0]} for i in range(1, 8)])
    hits = coll.search([0, 0, 0], k=3, include=[])
    assert ids(hits) == ["p1", "p2", "p3"]
    assert [h.score for h in hits] == pytest.approx([1 / 2, 1 / 3, 1 / 4])
    with pytest.raises(InvalidArgument):
        coll.search([float("nan"), 0, 0], k=3)


def test_unknown_include_field_rejected(small):
    with pytest.raises(InvalidArgument) as ei:
        small.search([1, 0, 0, 0], k=3, include=["vector", "bogus"])
    assert ei.value.code == "invalid_include"


# ==================================================================== include


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("exact", [False, True])
def test_include_fields(fdb, metric, exact):
    coll = fdb.create_collection("inc", dimension=4, metric=metric)
    coll.upsert(
        [
            {"id": "a", "vector": [3, 4, 0, 0], "text": "alpha", "metadata": {"x": 1, "y": {"z": [1, 2]}}},
            {"id": "b", "vector": [0, 0, 2, 0], "text": "beta", "namespace": ["u", "m"], "ttl_seconds": 3600},
            {"id": "c", "vector": [0, 0, 0, -1]},
        ]
    )
    q = [3, 4, 0.1, 0]

    bare = coll.search(q, k=3, include=[], exact=exact)
    assert ids(bare)[0] == "a" and len(bare) == 3
    assert all(h.record is None for h in bare)
    assert all(isinstance(h.score, float) for h in bare)

    full = coll.search(q, k=3, include=["vector", "metadata", "text", "namespace"], exact=exact)
    assert ids(full) == ids(bare)
    assert [h.score for h in full] == pytest.approx([h.score for h in bare])
    by = {h.id: h.record for h in full}
    assert by["a"].id == "a"
    assert by["a"].text == "alpha" and by["b"].text == "beta" and by["c"].text is None
    assert by["a"].metadata == {"x": 1, "y": {"z": [1, 2]}} and by["b"].metadata == {}
    assert by["b"].namespace == ("u", "m") and by["a"].namespace == ()
    # Not asked for: left empty.
    assert by["b"].expires_at is None and by["b"].created_at is None and by["b"].updated_at is None
    if metric == "cosine":
        assert by["a"].vector == pytest.approx([0.6, 0.8, 0, 0], abs=1e-6)
        assert by["b"].vector == pytest.approx([0, 0, 1, 0], abs=1e-6)
        for h in full:
            assert float(np.linalg.norm(h.record.vector)) == pytest.approx(1.0, abs=1e-6)
    else:
        assert by["a"].vector == pytest.approx([3, 4, 0, 0])
        assert by["b"].vector == pytest.approx([0, 0, 2, 0])

    default = coll.search(q, k=3, exact=exact)  # metadata and text
    d = {h.id: h.record for h in default}
    assert d["a"].vector is None and d["a"].metadata == {"x": 1, "y": {"z": [1, 2]}} and d["a"].text == "alpha"
    assert d["b"].namespace == ()

    only_vec = coll.search(q, k=1, include="vector", exact=exact)
    assert only_vec[0].record.vector is not None and only_vec[0].record.text is None
    assert only_vec[0].record.metadata == {}


# ===================================================== replace and delete


@pytest.mark.parametrize("exact", [False, True])
def test_upsert_replaces_vector_and_delete_removes_it(fdb, exact):
    rng = np.random.default_rng(5)
    coll = fdb.create_collection("rep", dimension=16)
    m = Model("cosine")
    upsert_batches(coll, [m.put(f"r{i}", rng.standard_normal(16)) for i in range(800)])
    v1 = unit(rng.standard_normal(16))
    v2 = -v1
    coll.upsert(m.put("x", v1, {"gen": 1}))

    hits = coll.search(v1, k=5, include=["vector", "metadata"], exact=exact)
    assert hits[0].id == "x" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].record.metadata == {"gen": 1}

    coll.upsert(m.put("x", v2, {"gen": 2}))
    near_old = coll.search(v1, k=5, include=[], exact=exact)
    assert "x" not in ids(near_old)
    assert ids(near_old) == [r for r, _ in m.truth(v1, 5)] or not exact
    near_new = coll.search(v2, k=5, include=["vector", "metadata"], exact=exact)
    assert near_new[0].id == "x" and near_new[0].score == pytest.approx(1.0, abs=1e-5)
    assert near_new[0].record.metadata == {"gen": 2}
    assert near_new[0].record.vector == pytest.approx(v2.tolist(), abs=1e-6)
    # Whatever the query, x scores as its new vector, never its old one.
    far = coll.search(v1, k=800, include=[], exact=exact)
    got = {h.id: h.score for h in far}
    if "x" in got:
        assert got["x"] == pytest.approx(-1.0, abs=1e-5)

    assert coll.delete("x") == 1
    del m.recs["x"]
    for q in (v1, v2):
        hits = coll.search(q, k=5, include=["metadata"], exact=exact)
        assert "x" not in ids(hits)
        assert len(hits) == 5
        if exact:
            assert ids(hits) == [r for r, _ in m.truth(q, 5)]
    assert coll.get("x") is None


# ================================= deleted, superseded and expired on every route

PATH_N, PATH_DIM, K = 4000, 16, 10
MATCH_MD = {"t": 3, "h": 1, "rare": 1, "b": 7, "note": "x"}
OTHER_MD = {"t": 4, "h": 0, "rare": 0, "b": 8, "note": "y"}
MATCH_NS = ("u", "1")


@dataclass(frozen=True)
class Route:
    name: str
    filter: dict[str, Any] | None
    exact: bool
    pred: Callable[[str, tuple, dict], bool] | None
    # For the planner: the part of the filter the payload index answers, whether it
    # answers all of it, and the strategy that must be planned (None: not planned).
    indexed: Callable[[dict], bool] | None = None
    exact_filter: bool = True
    strategy: str | None = None


ROUTES = [
    Route("unfiltered", None, False, None),
    Route("unfiltered-exact", None, True, None),
    Route("filtered-exact-true", {"t": 3}, True, lambda r, n, md: md["t"] == 3),
    Route("exact", {"rare": 1}, False, lambda r, n, md: md["rare"] == 1, lambda md: md["rare"] == 1, True, "exact"),
    Route("postfilter", {"h": 1}, False, lambda r, n, md: md["h"] == 1, lambda md: md["h"] == 1, True, "postfilter"),
    Route("traverse", {"t": 3}, False, lambda r, n, md: md["t"] == 3, lambda md: md["t"] == 3, True, "traverse"),
    Route(
        "inexact-postfilter",
        {"note": "x"},
        False,
        lambda r, n, md: md["note"] == "x",
        lambda md: True,
        False,
        "postfilter",
    ),
    Route(
        "inexact-traverse",
        {"b": 7, "note": "x"},
        False,
        lambda r, n, md: md["b"] == 7 and md["note"] == "x",
        lambda md: md["b"] == 7,
        False,
        "traverse",
    ),
    Route(
        "inexact-exact",
        {"namespace_prefix": ["u", "1"], "rare": 1},
        False,
        lambda r, n, md: n[:2] == MATCH_NS and md["rare"] == 1,
        lambda md: md["rare"] == 1,
        False,
        "exact",
    ),
    Route(
        "inexact-id-prefix",
        {"id_prefix": "r1", "t": 3},
        False,
        lambda r, n, md: r.startswith("r1") and md["t"] == 3,
        lambda md: md["t"] == 3,
        False,
        "postfilter",
    ),
]


def _planned(coll: Any, model: Model, p: Route, now: float, *, visible_expired: bool) -> str:
    """The plan for ``p`` given the counts the engine sees (expired rows still indexed or not)."""
    assert p.indexed is not None
    recs = model.recs if visible_expired else model.live(now)
    cands = sum(1 for _, md, _, _ in recs.values() if p.indexed(md))
    return planner.plan(
        K,
        cands,
        len(recs),
        coll.config.index.ef_search,
        exact_threshold=coll.exact_threshold,
        exact_filter=p.exact_filter,
    ).strategy


def _check_route(coll: Any, model: Model, p: Route, q: np.ndarray, forbidden: set[str]) -> None:
    truth = model.truth(q, K, p.pred)
    allowed = set(model.matching(p.pred))
    for include in ([], ["metadata", "vector", "namespace"]):
        hits = coll.search(q, k=K, filter=p.filter, exact=p.exact, include=include)
        got = ids(hits)
        assert not set(got) & forbidden, (p.name, include, set(got) & forbidden)
        assert set(got) <= allowed, (p.name, set(got) - allowed)
        assert len(got) == K, (p.name, len(got))
        assert_best_first(hits)
        for h in hits:
            assert h.score == pytest.approx(model.score(h.id, q), abs=1e-5), (p.name, h.id)
            if include:
                vec, md, ns, _ = model.recs[h.id]
                assert h.record.metadata == md and h.record.namespace == ns
                assert h.record.vector == pytest.approx(unit(vec).tolist(), abs=1e-5)
        if p.exact or p.strategy == "exact":
            assert got == [r for r, _ in truth], p.name
        else:
            # The planted live matches sit right at the query: HNSW must find them.
            near = [r for r, s in truth if s > 0.99]
            assert set(near) <= set(got), (p.name, near, got)
            assert len(set(got) & {r for r, _ in truth}) >= 8, (p.name, got, truth)
    # k beyond the collection: every live match, nothing else.
    every = coll.search(q, k=10_000, filter=p.filter, exact=p.exact, include=[])
    assert sorted(ids(every)) == sorted(allowed), p.name


@dataclass
class RouteState:
    db: Any
    coll: Any
    model: Model
    q: np.ndarray
    gone: set[str]  # deleted or expired
    moved: set[str]  # superseded by a vector far from q (metadata still matching): never a hit
    retagged: set[str]  # superseded with non-matching metadata at the same spot: a hit only without a filter
    before: dict[str, list[str]]  # each route's hits before anything was removed


def _build_route_state(db: Any) -> tuple[RouteState, list[str]]:
    """4,000 records plus records planted at the query, then removed in every way."""
    rng = np.random.default_rng(21)
    coll = db.create_collection(
        "routes",
        dimension=PATH_DIM,
        indexed_fields={"t": "int", "h": "int", "rare": "int", "b": "int"},
    )
    m = Model("cosine")
    q = unit(rng.standard_normal(PATH_DIM))
    base = []
    for i in range(PATH_N):
        md = {"t": i % 10, "h": i % 2, "rare": int(i % 200 == 1), "b": i % 50, "note": "x" if i % 3 == 0 else "y"}
        base.append(m.put(f"r{i:04d}", rng.standard_normal(PATH_DIM), md, ("u", str(i % 4))))
    upsert_batches(coll, base)

    def near() -> np.ndarray:
        return q + 0.01 * rng.standard_normal(PATH_DIM)

    dels = [f"r1-del-{j}" for j in range(3)]
    supv = [f"r1-supv-{j}" for j in range(2)]  # vector moves away, metadata still matches
    supm = [f"r1-supm-{j}" for j in range(2)]  # vector stays, metadata stops matching
    ttls = [f"r1-ttl-{j}" for j in range(3)]
    coll.upsert([m.put(r, near(), MATCH_MD, MATCH_NS) for r in dels + supv + supm])
    coll.upsert([{**m.put(r, near(), MATCH_MD, MATCH_NS), "ttl_seconds": 1.5} for r in ttls])
    m.recs.update({r: (*m.recs[r][:3], time.time() + 1.5) for r in ttls})

    before = {p.name: ids(coll.search(q, k=K, filter=p.filter, exact=p.exact, include=[])) for p in ROUTES}

    assert coll.delete(dels) == len(dels)
    for r in dels:
        del m.recs[r]
    coll.upsert([m.put(r, -q + 0.01 * rng.standard_normal(PATH_DIM), MATCH_MD, MATCH_NS) for r in supv])
    coll.upsert([m.put(r, m.recs[r][0], OTHER_MD, ("u", "2")) for r in supm])
    past = [f"r1-past-{j}" for j in range(3)]
    coll.upsert([m.put(r, near(), MATCH_MD, MATCH_NS, exp=time.time() - 1.0) for r in past])
    expired = ttls + past
    state = RouteState(db, coll, m, q, set(dels) | set(expired), set(supv), set(supm), before)
    return state, expired


@pytest.fixture(scope="module")
def route_states(tmp_path_factory):
    """Two identical collections: one with its expired records still indexed, one swept."""
    # A low exact threshold makes an inexact filter of 2 % traverse (see ROUTES).
    dbs = [open_db(tmp_path_factory.mktemp(f"routes{i}"), index={"exact_search_threshold": 64}) for i in range(2)]
    try:
        built = [_build_route_state(db) for db in dbs]
        latest = max(st.model.recs[r][3] for st, exp in built for r in exp)
        while time.time() <= latest + 0.05:  # let the TTL records expire
            time.sleep(0.05)
        swept, expired = built[1]
        assert swept.db.sweep() >= len(expired)
        for r in expired:
            del swept.model.recs[r]
        yield {False: built[0][0], True: swept}
    finally:
        for db in dbs:
            db.close()


@pytest.mark.parametrize("route", ROUTES, ids=[p.name for p in ROUTES])
def test_planted_records_lead_every_route_before_removal(route_states, route):
    # Otherwise the next test could pass without the engine hiding anything.
    st = route_states[False]
    planted = {r for r in st.gone | st.moved | st.retagged if "-past-" not in r}  # past ones came later
    assert len(planted) == 10
    # Ten planted records, all at the query: the top ten of every route before removal.
    assert planted == set(st.before[route.name])


@pytest.mark.parametrize("swept", [False, True], ids=["expired-unswept", "swept"])
@pytest.mark.parametrize("route", ROUTES, ids=[p.name for p in ROUTES])
def test_deleted_superseded_and_expired_never_returned(route_states, route, swept):
    st = route_states[swept]
    now = time.time()
    live = st.model.live(now)
    assert st.gone.isdisjoint(live) and st.moved | st.retagged <= set(live)
    assert st.coll.count() == len(live)
    if route.strategy is not None:
        # The numbers the engine plans with: expired rows stay indexed until swept.
        assert _planned(st.coll, st.model, route, now, visible_expired=True) == route.strategy
        assert _planned(st.coll, st.model, route, now, visible_expired=False) == route.strategy
    forbidden = st.gone | st.moved | (st.retagged if route.filter is not None else set())
    if route.filter is None:  # re-tagged records still sit at the query
        assert st.retagged <= {r for r, _ in st.model.truth(st.q, K)}
    _check_route(st.coll, st.model, route, st.q, forbidden)


# ============================================================ filter language


def _filter_records() -> list[dict[str, Any]]:
    rng = np.random.default_rng(9)
    out = []
    for i in range(300):
        md: dict[str, Any] = {"n": i % 20, "flag": i % 3 == 0}
        if i % 7:
            md["score"] = round(float(rng.uniform(0, 1)), 2)
        if i % 11 == 0:
            md["color"] = 5  # a value of another type than the field's
        elif i % 5:
            md["color"] = ["red", "green", "blue"][i % 3]
        md["tags"] = [f"t{j}" for j in range(6) if (i >> j) & 1]
        md["user"] = {"tier": ["gold", "silver", "bronze"][i % 3], "level": i % 6}
        if i % 4 == 0:
            md["maybe"] = None
        elif i % 4 == 1:
            md["maybe"] = "set"
        ns = [f"org-{i % 3}", f"user-{i % 5}"] if i % 10 else []
        out.append(
            {
                "id": f"{['mem', 'doc', 'note'][i % 3]}-{i:03d}",
                "vector": rng.standard_normal(8).tolist(),
                "metadata": md,
                "namespace": ns,
            }
        )
    return out


def _has(md: dict, key: str) -> bool:
    return key in md


FILTER_CASES: list[tuple[dict[str, Any], Callable[[str, tuple, dict], bool]]] = [
    ({"n": 5}, lambda r, n, md: md["n"] == 5),
    ({"n": {"$eq": 5.0}}, lambda r, n, md: md["n"] == 5),
    ({"n": {"$gt": 15}}, lambda r, n, md: md["n"] > 15),
    ({"n": {"$gte": 3, "$lt": 7}}, lambda r, n, md: 3 <= md["n"] < 7),
    ({"n": {"$lte": 2.5}}, lambda r, n, md: md["n"] <= 2),
    ({"n": {"$in": [1, 2, 3]}}, lambda r, n, md: md["n"] in (1, 2, 3)),
    ({"n": {"$nin": [1, 2, 3]}}, lambda r, n, md: md["n"] not in (1, 2, 3)),
    ({"n": {"$ne": 4}}, lambda r, n, md: md["n"] != 4),
    ({"n": {"$in": []}}, lambda r, n, md: False),
    ({"n": {"$nin": []}}, lambda r, n, md: True),
    ({"n": {"$gt": "x"}}, lambda r, n, md: False),  # numbers never compare with strings
    ({"color": "red"}, lambda r, n, md: md.get("color") == "red"),
    ({"color": {"$in": ["red", "blue"]}}, lambda r, n, md: md.get("color") in ("red", "blue")),
    ({"color": {"$nin": ["red"]}}, lambda r, n, md: md.get("color") != "red"),
    ({"color": {"$ne": "red"}}, lambda r, n, md: md.get("color") != "red"),
    ({"color": 5}, lambda r, n, md: md.get("color") == 5),
    ({"color": {"$exists": False}}, lambda r, n, md: not _has(md, "color")),
    ({"color": {"$exists": True}}, lambda r, n, md: _has(md, "color")),
    ({"color": {"$gt": "green"}}, lambda r, n, md: isinstance(md.get("color"), str) and md["color"] > "green"),
    ({"color": {"$contains": "lu"}}, lambda r, n, md: md.get("color") == "blue"),
    ({"flag": True}, lambda r, n, md: md["flag"] is True),
    ({"flag": {"$ne": True}}, lambda r, n, md: md["flag"] is not True),
    ({"flag": 1}, lambda r, n, md: False),  # bools are not numbers
    ({"score": {"$lt": 0.5}}, lambda r, n, md: _has(md, "score") and md["score"] < 0.5),
    ({"score": {"$exists": False}}, lambda r, n, md: not _has(md, "score")),
    ({"user.tier": "gold"}, lambda r, n, md: md["user"]["tier"] == "gold"),
    ({"user.level": {"$gte": 3}}, lambda r, n, md: md["user"]["level"] >= 3),
    ({"user": {"tier": "gold", "level": 0}}, lambda r, n, md: md["user"] == {"tier": "gold", "level": 0}),
    ({"user.missing.deeper": {"$exists": False}}, lambda r, n, md: True),
    ({"tags": "t1"}, lambda r, n, md: "t1" in md["tags"]),
    ({"tags": {"$contains": "t2"}}, lambda r, n, md: "t2" in md["tags"]),
    ({"tags": {"$in": ["t3", "t4"]}}, lambda r, n, md: "t3" in md["tags"] or "t4" in md["tags"]),
    ({"tags": {"$nin": ["t0"]}}, lambda r, n, md: "t0" not in md["tags"]),
    ({"tags": []}, lambda r, n, md: md["tags"] == []),
    ({"maybe": None}, lambda r, n, md: _has(md, "maybe") and md["maybe"] is None),
    ({"maybe": {"$ne": None}}, lambda r, n, md: not (_has(md, "maybe") and md["maybe"] is None)),
    ({"nothing": 1}, lambda r, n, md: False),
    ({"$and": [{"n": {"$lt": 10}}, {"color": "blue"}]}, lambda r, n, md: md["n"] < 10 and md.get("color") == "blue"),
    ({"$or": [{"n": 0}, {"user.tier": "gold"}]}, lambda r, n, md: md["n"] == 0 or md["user"]["tier"] == "gold"),
    ({"$not": {"n": {"$lt": 10}}}, lambda r, n, md: not md["n"] < 10),
    ({"n": {"$not": {"$gt": 5}}}, lambda r, n, md: not md["n"] > 5),
    (
        {"$and": [{"$or": [{"color": "red"}, {"color": "green"}]}, {"$not": {"flag": True}}]},
        lambda r, n, md: md.get("color") in ("red", "green") and md["flag"] is not True,
    ),
    ({"$or": [{}, {"n": 1}]}, lambda r, n, md: True),
    ({"namespace_prefix": ["org-1"]}, lambda r, n, md: n[:1] == ("org-1",)),
    ({"namespace_prefix": ["org-1", "user-2"]}, lambda r, n, md: n[:2] == ("org-1", "user-2")),
    ({"namespace_prefix": []}, lambda r, n, md: True),
    ({"namespace_prefix": ["org"]}, lambda r, n, md: False),  # whole segments, not string prefixes
    ({"id_prefix": "mem-"}, lambda r, n, md: r.startswith("mem-")),
    ({"id_prefix": "mem-", "n": {"$lt": 5}}, lambda r, n, md: r.startswith("mem-") and md["n"] < 5),
    (
        {"$or": [{"namespace_prefix": ["org-0"]}, {"id_prefix": "doc-"}]},
        lambda r, n, md: n[:1] == ("org-0",) or r.startswith("doc-"),
    ),
    ({"$not": {"id_prefix": "doc-1"}}, lambda r, n, md: not r.startswith("doc-1")),
]


@pytest.fixture(scope="module")
def filter_coll(tmp_path_factory):
    db = open_db(tmp_path_factory.mktemp("filters"))
    coll = db.create_collection(
        "f",
        dimension=8,
        indexed_fields={"n": "int", "color": "keyword", "flag": "bool", "score": "float", "user.level": "int"},
    )
    recs = _filter_records()
    coll.upsert(recs)
    m = Model("cosine")
    for r in recs:
        m.put(r["id"], r["vector"], r["metadata"], r["namespace"])
    yield coll, m
    db.close()


@pytest.mark.parametrize("flt, pred", FILTER_CASES, ids=[repr(c[0]) for c in FILTER_CASES])
def test_filter_language_through_search(filter_coll, flt, pred):
    coll, m = filter_coll
    want = set(m.matching(pred))
    q = np.random.default_rng(len(repr(flt))).standard_normal(8)
    for exact in (False, True):
        hits = coll.search(q, k=1000, filter=flt, exact=exact, include=["metadata", "namespace"])
        assert set(ids(hits)) == want
        assert len(hits) == len(want)
        assert_best_first(hits)
        for h in hits:
            assert pred(h.id, h.record.namespace, h.record.metadata)
        top = coll.search(q, k=5, filter=flt, exact=exact, include=[])
        assert ids(top) == [r for r, _ in m.truth(q, 5, pred)]


@pytest.mark.parametrize(
    "flt",
    [
        {"a": {"$foo": 1}},
        {"$foo": [{"a": 1}]},
        {"a": {"$regex": "x"}},
        {"a": {"$gt": [1]}},
        {"a": {"$gt": None}},
        {"a": {"$lt": True}},
        {"a": {"$gte": {"b": 1}}},
        {"a": {"$in": 5}},
        {"a": {"$nin": "abc"}},
        {"a": {"$exists": 1}},
        {"a": float("nan")},
        {"a": {"$eq": float("nan")}},
        {"$gt": 5},
        {"$in": [1, 2]},
        {"a": {"$and": [{"b": 1}]}},
        {"a": {"$or": [{"b": 1}]}},
        {"a.$gt": 5},
        {"a": {"$gt": 1, "b": 2}},
        {"a": {"$not": 5}},
        {"a": {"$not": {"b": 1}}},
        {"$and": []},
        {"$or": {"a": 1}},
        {"$and": [1]},
        {"$not": [{"a": 1}]},
        {"namespace_prefix": "u"},
        {"namespace_prefix": [1]},
        {"id_prefix": 5},
        {"": 1},
        {"a..b": 1},
        {".a": 1},
        {"a": {"b": {1: 2}}},
    ],
    ids=repr,
)
def test_invalid_filters_rejected(filter_coll, flt):
    coll, _ = filter_coll
    for exact in (False, True):
        with pytest.raises(InvalidFilter) as ei:
            coll.search(np.ones(8), k=3, filter=flt, exact=exact)
        assert isinstance(ei.value, InvalidArgument)
        assert ei.value.code == "invalid_filter"
        assert ei.value.http_status == 400
        assert "invalid filter" in str(ei.value)


@pytest.mark.parametrize("flt", [[{"a": 1}], "a", 5])
def test_filter_must_be_an_object(filter_coll, flt):
    coll, _ = filter_coll
    with pytest.raises(InvalidFilter) as ei:
        coll.search(np.ones(8), k=3, filter=flt)
    assert ei.value.code == "invalid_filter"


def test_filter_error_names_the_place(filter_coll):
    coll, _ = filter_coll
    with pytest.raises(InvalidFilter) as ei:
        coll.search(np.ones(8), k=3, filter={"$and": [{"n": 1}, {"age": {"$gte": []}}]})
    assert "$and[1].age.$gte" in str(ei.value)
    with pytest.raises(InvalidFilter) as ei:
        coll.search(np.ones(8), k=3, filter={"a": {"$foo": 1}})
    assert "$foo" in str(ei.value)


@pytest.mark.parametrize("flt", [None, {}])
def test_empty_filter_means_no_filter(filter_coll, flt):
    coll, m = filter_coll
    q = np.ones(8)
    assert ids(coll.search(q, k=7, filter=flt, exact=True, include=[])) == [r for r, _ in m.truth(q, 7)]


# =========================================================== filter real recall


@pytest.fixture(scope="module")
def real_coll(tmp_path_factory):
    base_f, q_f = DATA_DIR / "real.npy", DATA_DIR / "queries_dev.npy"
    if not base_f.exists() or not q_f.exists():
        pytest.skip(f"benchmark data not found in {DATA_DIR}")
    x = np.ascontiguousarray(np.load(base_f, mmap_mode="r")[:20_000], dtype=np.float32)
    queries = np.ascontiguousarray(np.load(q_f, mmap_mode="r")[:50], dtype=np.float32)
    rng = np.random.default_rng(7)
    n = len(x)
    fields = {"t": rng.integers(0, 10, n), "b": rng.integers(0, 100, n), "c": rng.integers(0, 1000, n)}
    db = open_db(tmp_path_factory.mktemp("real"))
    coll = db.create_collection(
        "real", dimension=x.shape[1], metric="cosine", indexed_fields={"t": "int", "b": "int", "c": "int"}
    )
    upsert_batches(
        coll,
        [{"id": str(i), "vector": x[i], "metadata": {f: int(v[i]) for f, v in fields.items()}} for i in range(n)],
    )
    yield coll, x, queries, fields
    db.close()


@pytest.mark.parametrize("field_, card", [("t", 10), ("b", 100), ("c", 1000)], ids=["10%", "1%", "0.1%"])
def test_filtered_recall_on_real_embeddings(real_coll, field_, card):
    coll, x, queries, fields = real_coll
    col = fields[field_]
    recalls, strategies = [], set()
    for qi, q in enumerate(queries):
        value = (qi * 7) % card
        rows = np.flatnonzero(col == value)
        sims = x[rows] @ q
        truth = {str(rows[j]) for j in np.argsort(-sims, kind="stable")[:10]}
        hits = coll.search(q, k=10, filter={field_: value}, include=[])
        got = ids(hits)
        assert all(col[int(r)] == value for r in got)
        assert len(got) == min(10, len(rows))
        assert_best_first(hits)
        recalls.append(len(truth & set(got)) / len(truth))
        strategies.add(
            planner.plan(
                10, len(rows), len(x), coll.config.index.ef_search, exact_threshold=coll.exact_threshold
            ).strategy
        )
    assert np.mean(recalls) >= 0.95, (field_, np.mean(recalls), strategies)


def test_unfiltered_recall_on_real_embeddings(real_coll):
    coll, x, queries, _ = real_coll
    recalls = []
    for q in queries:
        truth = {str(j) for j in np.argsort(-(x @ q), kind="stable")[:10]}
        recalls.append(len(truth & set(ids(coll.search(q, k=10, include=[])))) / 10)
    assert np.mean(recalls) >= 0.95


def test_ten_percent_filter_on_real_embeddings_takes_the_traverse_path(real_coll):
    # Documents which path the 10 % recall test exercised at the default ef.
    coll, x, _, fields = real_coll
    cands = int(np.sum(fields["t"] == 3))
    p = planner.plan(10, cands, len(x), coll.config.index.ef_search, exact_threshold=coll.exact_threshold)
    assert p.strategy == "traverse"


# ============================================================ filter cache


def _cache_coll(db: Any, n: int = 3000) -> tuple[Any, Model, np.random.Generator]:
    rng = np.random.default_rng(31)
    coll = db.create_collection("cache", dimension=16, indexed_fields={"t": "int", "rare": "int"})
    m = Model("cosine")
    upsert_batches(
        coll,
        [m.put(f"r{i}", rng.standard_normal(16), {"t": i % 10, "rare": int(i % 150 == 0)}) for i in range(n)],
    )
    return coll, m, rng


@pytest.mark.parametrize(
    "field_, value, other, strategy",
    [("t", 3, 4, "traverse"), ("rare", 1, 0, "exact")],
)
def test_filter_cache_reads_its_writes(fdb, field_, value, other, strategy):
    coll, m, rng = _cache_coll(fdb)
    flt, other_flt = {field_: value}, {field_: other}
    cands = sum(1 for _, md, _, _ in m.recs.values() if md[field_] == value)
    assert (
        planner.plan(K, cands, len(m.recs), coll.config.index.ef_search, exact_threshold=coll.exact_threshold).strategy
        == strategy
    )
    q = unit(rng.standard_normal(16))
    pred = lambda r, n, md: md[field_] == value  # noqa: E731
    first = coll.search(q, k=K, filter=flt, include=[])
    assert ids(coll.search(q, k=K, filter=flt, include=[])) == ids(first)
    assert "new" not in ids(first)

    md_in = {"t": 5, "rare": 0, field_: value}
    md_out = {"t": 5, "rare": 0, field_: other}
    coll.upsert(m.put("new", q, md_in))
    hits = coll.search(q, k=K, filter=flt, include=[])
    assert ids(hits)[0] == "new" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert "new" not in ids(coll.search(q, k=K, filter=other_flt, include=[]))

    assert coll.delete("new") == 1
    del m.recs["new"]
    hits = coll.search(q, k=K, filter=flt, include=[])
    assert "new" not in ids(hits) and len(hits) == K
    if strategy == "exact":
        assert ids(hits) == [r for r, _ in m.truth(q, K, pred)]

    coll.upsert(m.put("new", q, md_in))
    assert ids(coll.search(q, k=K, filter=flt, include=[]))[0] == "new"
    coll.search(q, k=K, filter=other_flt, include=[])  # cache the other filter too
    coll.upsert(m.put("new", q, md_out))  # same vector, the field moves to the other value
    assert "new" not in ids(coll.search(q, k=K, filter=flt, include=[]))
    assert ids(coll.search(q, k=K, filter=other_flt, include=[]))[0] == "new"

    # A metadata-only patch (no vector change) must invalidate the cache as well.
    coll.patch("new", metadata={field_: value})
    assert ids(coll.search(q, k=K, filter=flt, include=[]))[0] == "new"
    assert "new" not in ids(coll.search(q, k=K, filter=other_flt, include=[]))
    # An equivalent filter spelled differently sees the same state.
    assert ids(coll.search(q, k=K, filter={field_: {"$in": [value]}}, include=[]))[0] == "new"


@pytest.mark.parametrize(
    "indexed",
    [{}, {"flag": "bool"}, {"flag": "int"}, {"flag": "float"}, {"flag": "keyword"}],
    ids=["undeclared", "bool", "int", "float", "keyword"],
)
def test_filter_cache_keeps_true_and_1_apart(fdb, indexed):
    coll = fdb.create_collection("flags", dimension=4, indexed_fields=indexed)
    values = {"a": True, "b": 1, "c": 1.0, "d": False, "e": 0, "f": "1", "g": None}
    recs = [
        {"id": r, "vector": [1.0, 0.1 * i, 0.0, 0.0], "metadata": {"flag": v}}
        for i, (r, v) in enumerate(values.items())
    ]
    recs.append({"id": "h", "vector": [0.0, 1.0, 0.0, 0.0], "metadata": {}})
    coll.upsert(recs)
    expected = {
        "True": {"a"},
        "1": {"b", "c"},
        "1.0": {"b", "c"},
        "False": {"d"},
        "0": {"e"},
        "'1'": {"f"},
        "None": {"g"},
    }
    operand = {"True": True, "1": 1, "1.0": 1.0, "False": False, "0": 0, "'1'": "1", "None": None}
    order = ["True", "1", "1.0", "True", "'1'", "False", "0", "1", "None", "True", "0", "False"]
    for _ in range(2):  # the second round answers from the cache
        for key in order:
            hits = coll.search([1, 0, 0, 0], k=10, filter={"flag": operand[key]}, include=[])
            assert set(ids(hits)) == expected[key], key
    assert set(ids(coll.search([1, 0, 0, 0], k=10, filter={"flag": {"$in": [True]}}, include=[]))) == {"a"}
    assert set(ids(coll.search([1, 0, 0, 0], k=10, filter={"flag": {"$in": [1]}}, include=[]))) == {"b", "c"}
    assert set(ids(coll.search([1, 0, 0, 0], k=10, filter={"flag": {"$ne": True}}, include=[]))) == set(values) - {
        "a"
    } | {"h"}

    # Read-your-writes with both spellings cached.
    coll.upsert({"id": "i", "vector": [1, 0, 0, 0], "metadata": {"flag": True}})
    assert set(ids(coll.search([1, 0, 0, 0], k=10, filter={"flag": 1}, include=[]))) == {"b", "c"}
    assert set(ids(coll.search([1, 0, 0, 0], k=10, filter={"flag": True}, include=[]))) == {"a", "i"}
    coll.upsert({"id": "j", "vector": [1, 0, 0, 0], "metadata": {"flag": 1}})
    assert set(ids(coll.search([1, 0, 0, 0], k=10, filter={"flag": 1}, include=[]))) == {"b", "c", "j"}
    assert set(ids(coll.search([1, 0, 0, 0], k=10, filter={"flag": True}, include=[]))) == {"a", "i"}


@pytest.mark.parametrize("how", ["upsert", "patch"])
@pytest.mark.parametrize("old, new", [(True, 1), (0, False)], ids=["True->1", "0->False"])
@pytest.mark.parametrize(
    "indexed",
    [
        pytest.param({}, id="undeclared"),
        pytest.param({"flag": "bool"}, id="bool"),
        pytest.param({"flag": "int"}, id="int"),
        pytest.param({"flag": "float"}, id="float"),
        pytest.param({"flag": "keyword"}, id="keyword"),
    ],
)
def test_changing_a_value_between_bool_and_number_is_reindexed(fdb, indexed, old, new, how):
    coll = fdb.create_collection("flip", dimension=2, indexed_fields=indexed)
    coll.upsert([{"id": "i", "vector": [1, 0], "metadata": {"flag": old}}, {"id": "o", "vector": [0, 1]}])
    assert ids(coll.search([1, 0], k=5, filter={"flag": old}, include=[])) == ["i"]
    if how == "upsert":
        coll.upsert({"id": "i", "vector": [1, 0], "metadata": {"flag": new}})
    else:
        coll.patch("i", metadata={"flag": new})
    stored = coll.get("i").metadata["flag"]
    assert stored == new and type(stored) is type(new)
    for exact in (False, True):
        assert ids(coll.search([1, 0], k=5, filter={"flag": new}, exact=exact, include=[])) == ["i"]
        stale = coll.search([1, 0], k=5, filter={"flag": old}, exact=exact, include=["metadata"])
        assert [(h.id, h.record.metadata) for h in stale] == []


# ================================================================ persistence

PERSIST_N, PERSIST_DEL = 2300, 100


def _persist_setup(path: Path) -> tuple[Model, list[np.ndarray], Path]:
    rng = np.random.default_rng(41)
    db = open_db(path)
    coll = db.create_collection("p", dimension=16, indexed_fields={"t": "int"})
    m = Model("cosine")
    upsert_batches(coll, [m.put(f"r{i:04d}", rng.standard_normal(16), {"t": i % 10}) for i in range(PERSIST_N)])
    gone = [f"r{i:04d}" for i in range(0, PERSIST_N, PERSIST_N // PERSIST_DEL)][:PERSIST_DEL]
    assert coll.delete(gone) == PERSIST_DEL
    for r in gone:
        del m.recs[r]
    queries = [unit(rng.standard_normal(16)) for _ in range(6)]
    # Already expired: stored, but neither live nor rebuilt into the index.
    coll.upsert([m.put(f"x{j}", queries[j], {"t": 3}, exp=time.time() - 5) for j in range(3)])
    index_dir = coll.index_dir
    db.close()
    return m, queries, index_dir


PERSIST_FILTERS: list[tuple[dict[str, Any] | None, Callable[[str, tuple, dict], bool] | None]] = [
    (None, None),
    ({"t": 3}, lambda r, n, md: md["t"] == 3),
    ({"t": {"$in": [1, 2]}}, lambda r, n, md: md["t"] in (1, 2)),
]


def _snapshot_of_results(coll: Any, queries: list[np.ndarray]) -> dict[tuple[int, int, bool], list[str]]:
    out = {}
    for qi, q in enumerate(queries):
        for fi, (flt, _) in enumerate(PERSIST_FILTERS):
            for exact in (False, True):
                out[(qi, fi, exact)] = ids(coll.search(q, k=K, filter=flt, exact=exact, include=[]))
    return out


def _check_results_correct(coll: Any, m: Model, queries: list[np.ndarray]) -> None:
    live = set(m.matching(None))
    assert coll.count() == len(live)
    recalls = []
    for q in queries:
        for flt, pred in PERSIST_FILTERS:
            truth = [r for r, _ in m.truth(q, K, pred)]
            exact = coll.search(q, k=K, filter=flt, exact=True, include=["metadata"])
            assert ids(exact) == truth
            hits = coll.search(q, k=K, filter=flt, include=["metadata"])
            assert len(hits) == K and set(ids(hits)) <= live
            assert all(pred is None or pred(h.id, (), h.record.metadata) for h in hits)
            recalls.append(len(set(truth) & set(ids(hits))) / K)
    assert np.mean(recalls) >= 0.95


def _reopen_and_compare(path: Path, m: Any, queries: Any, expected: Any) -> None:
    """Open the data again: the same answers as ``expected``, and correct ones."""
    db = open_db(path)
    try:
        coll = db.get_collection("p")
        assert _snapshot_of_results(coll, queries) == expected
        _check_results_correct(coll, m, queries)
    finally:
        db.close()


def test_reopen_from_snapshot_gives_the_same_results(tmp_path):
    m, queries, index_dir = _persist_setup(tmp_path / "data")
    assert (index_dir / _HNSW_FILE).is_file() and (index_dir / _META_FILE).is_file()
    db = open_db(tmp_path / "data")
    try:
        coll = db.get_collection("p")
        before = _snapshot_of_results(coll, queries)
        _check_results_correct(coll, m, queries)
    finally:
        db.close()
    _reopen_and_compare(tmp_path / "data", m, queries, before)


def _damage(index_dir: Path, how: str) -> None:
    hnsw, meta = index_dir / _HNSW_FILE, index_dir / _META_FILE
    if how == "missing":
        hnsw.unlink()
        meta.unlink()
    elif how == "missing_hnsw":
        hnsw.unlink()
    elif how == "missing_meta":
        meta.unlink()
    elif how == "corrupt_hnsw":
        data = bytearray(hnsw.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
        hnsw.write_bytes(bytes(data))
    elif how == "truncated_hnsw":
        data = hnsw.read_bytes()
        hnsw.write_bytes(data[: len(data) // 3])
    elif how == "corrupt_meta":
        data = bytearray(meta.read_bytes())
        data[10] ^= 0x55
        meta.write_bytes(bytes(data))
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how, loader",
    [
        ("missing", "load_all"),
        ("missing_hnsw", "collection"),
        ("missing_meta", "load_all"),
        ("corrupt_hnsw", "collection"),
        ("truncated_hnsw", "load_all"),
        ("corrupt_meta", "collection"),
    ],
)
def test_missing_or_corrupt_snapshot_is_rebuilt_with_progress(tmp_path, how, loader):
    m, queries, index_dir = _persist_setup(tmp_path / "data")
    _damage(index_dir, how)
    live = len(m.matching(None))
    calls: list[tuple[str, int, int]] = []
    db = open_db(tmp_path / "data")
    try:
        coll = db.get_collection("p")
        assert not coll.loaded
        if loader == "load_all":
            db.load_all(progress=lambda label, done, total: calls.append((label, done, total)))
        else:
            coll.load(progress=lambda done, total: calls.append(("default/p", done, total)))
        assert coll.loaded
        assert len(calls) >= 2
        assert {c[0] for c in calls} == {"default/p"}
        dones = [c[1] for c in calls]
        assert all(a <= b for a, b in itertools.pairwise(dones)), calls
        assert dones[0] < dones[-1]
        assert all(0 < d <= t for _, d, t in calls), calls
        assert calls[-1][1:] == (live, live)
        _check_results_correct(coll, m, queries)
        rebuilt = _snapshot_of_results(coll, queries)
    finally:
        db.close()
    # The rebuilt index was snapshotted on close: the next open serves the same answers.
    _reopen_and_compare(tmp_path / "data", m, queries, rebuilt)


# ================================================================ concurrency

CONC_N = 3000
CONC_FILTERS: list[tuple[dict[str, Any] | None, Callable[[str, tuple, dict], bool] | None]] = [
    (None, None),
    ({"t": 3}, lambda r, n, md: md["t"] == 3),  # traverse
    ({"h": 1}, lambda r, n, md: md["h"] == 1),  # postfilter
    ({"t": {"$in": [1, 2]}, "h": 0}, lambda r, n, md: md["t"] in (1, 2) and md["h"] == 0),  # traverse
    ({"id_prefix": "w"}, lambda r, n, md: r.startswith("w")),  # inexact: post-filtered, rows checked
    ({"rare": 1}, lambda r, n, md: md["rare"] == 1),  # exact plan: only checked after the writer stops
]


def _conc_coll(db: Any) -> tuple[Any, Model]:
    rng = np.random.default_rng(51)
    coll = db.create_collection("conc", dimension=16, indexed_fields={"t": "int", "h": "int", "rare": "int"})
    m = Model("cosine")
    upsert_batches(
        coll,
        [
            m.put(f"r{i}", rng.standard_normal(16), {"t": i % 10, "h": i % 2, "rare": int(i % 150 == 0)})
            for i in range(CONC_N)
        ],
    )
    return coll, m


def test_concurrent_filtered_searches_while_writing(fdb):
    coll, m = _conc_coll(fdb)
    rng = np.random.default_rng(52)
    queries = [unit(rng.standard_normal(16)) for _ in range(6)]
    # Every path runs while writing (unfiltered, traverse, postfilter, inexact postfilter and a
    # filter planned as exact), and every path is checked again once writes stop.
    live_filters = [f for f, _ in CONC_FILTERS]
    ef, thr, n = coll.config.index.ef_search, coll.exact_threshold, len(m.recs)
    for (_, pred), exact_filter in zip(CONC_FILTERS[1:-1], [True, True, True, False], strict=True):
        cands = n if not exact_filter else len(m.matching(pred))
        assert planner.plan(K, cands, n, ef, exact_threshold=thr, exact_filter=exact_filter).strategy != "exact"
    assert len(m.matching(CONC_FILTERS[-1][1])) == 20
    stop = threading.Event()
    errors: list[BaseException] = []
    searches = [0] * 4

    def reader(n: int) -> None:
        local = np.random.default_rng(100 + n)
        i = 0
        try:
            while not stop.is_set():
                flt = live_filters[i % len(live_filters)]
                q = queries[int(local.integers(len(queries)))]
                hits = coll.search(q, k=K, filter=flt, include=[] if i % 2 else ["metadata"])
                assert len(hits) <= K
                i += 1
                searches[n] = i
        except BaseException as e:
            errors.append(e)

    def writer() -> None:
        wrng = np.random.default_rng(61)
        deadline = time.monotonic() + 2.0
        nxt = 0
        try:
            for step in range(400):
                if time.monotonic() > deadline:
                    break
                op = step % 4

                def meta() -> dict[str, int]:
                    return {"t": int(wrng.integers(10)), "h": int(wrng.integers(2)), "rare": int(wrng.integers(2))}

                if op == 0:  # new records, some right at a query
                    batch = []
                    for _ in range(5):
                        vec = queries[nxt % len(queries)] + 0.05 * wrng.standard_normal(16)
                        batch.append(m.put(f"w{nxt}", vec, meta()))
                        nxt += 1
                    coll.upsert(batch)
                elif op == 1:  # supersede: new vector and new metadata
                    rid = sorted(m.recs)[int(wrng.integers(len(m.recs)))]
                    coll.upsert(m.put(rid, wrng.standard_normal(16), meta()))
                elif op == 2:  # delete
                    keys = sorted(m.recs)
                    victims = {keys[int(j)] for j in wrng.integers(len(keys), size=3)}
                    coll.delete(sorted(victims))
                    for r in victims:
                        del m.recs[r]
                elif step % 40 == 3:  # now and then an already expired record, right at a query
                    q = queries[step % len(queries)]
                    coll.upsert(m.put(f"e{step}", q, {"t": 3, "h": 1, "rare": 1}, exp=time.time() - 1))
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    w = threading.Thread(target=writer)
    for t in readers:
        t.start()
    w.start()
    w.join(timeout=60)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not w.is_alive() and not any(t.is_alive() for t in readers)
    assert not errors, errors
    assert all(n > 0 for n in searches), searches

    live = set(m.matching(None))
    assert coll.count() == len(live)
    for q in queries:
        for flt, pred in CONC_FILTERS:
            allowed = set(m.matching(pred))
            truth = [r for r, _ in m.truth(q, K, pred)]
            for exact in (False, True):
                hits = coll.search(q, k=K, filter=flt, exact=exact, include=["metadata"])
                got = ids(hits)
                assert set(got) <= allowed, (flt, exact, set(got) - allowed)
                assert len(got) == min(K, len(allowed)), (flt, exact)
                for h in hits:
                    assert h.record.metadata == m.recs[h.id][1]
                    assert h.score == pytest.approx(m.score(h.id, q), abs=1e-5)
                if exact:
                    assert got == truth, flt


def test_exact_search_concurrent_with_deletes(fdb):
    coll, _ = _conc_coll(fdb)
    q = unit(np.random.default_rng(53).standard_normal(16))
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                coll.search(q, k=K, exact=True, include=[])
                coll.search(q, k=K, filter={"rare": 1}, include=[])
        except BaseException as e:
            errors.append(e)
            stop.set()

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(1000):  # bounded: stops at the first failure
            if stop.is_set():
                break
            coll.delete(f"r{i * 2}")
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=60)
    assert not errors, errors[:3]


def test_moved_vectors_get_new_nodes_and_indexes_follow(tmp_path):
    """A changed vector is a fresh node (the old one deleted); payload and text follow the new label,
    and deleted nodes are reused once they pile up, so the graph stays bounded."""
    from engramdb.index.vector import TOMBSTONE_FRACTION, TOMBSTONE_MIN

    rng = np.random.default_rng(91)
    db = open_db(tmp_path / "d")
    coll = db.create_collection("mv", dimension=8, metric="l2", indexed_fields={"kind": "keyword"})
    n = 200
    vecs = {f"r{i}": rng.standard_normal(8) for i in range(n)}
    coll.upsert([{"id": r, "vector": v, "text": f"word{r}", "metadata": {"kind": "a"}} for r, v in vecs.items()])
    vindex = coll.indexes.vindex
    for step in range(3000):  # bounded churn: every write moves a vector
        rid = f"r{int(rng.integers(n))}"
        vecs[rid] = rng.standard_normal(8)
        kind = "b" if step % 3 else "a"
        text = f"word{rid}" if step % 2 else f"moved{rid}"
        coll.upsert({"id": rid, "vector": vecs[rid], "text": text, "metadata": {"kind": kind}})
        if step < 20:  # a fresh node every time while deleted nodes are few
            coll.indexes.catch_up()  # the write is acknowledged before the notifier indexes it
            assert vindex._index.get_current_count() == n + step + 1
    coll.indexes.catch_up()
    budget = max(TOMBSTONE_MIN, int(n * TOMBSTONE_FRACTION))
    assert vindex._index.get_current_count() <= n + budget + 1
    text_index = coll.indexes.text_index
    assert text_index is not None
    text_index.flush()
    for reopen in (False, True):
        if reopen:
            db.close()
            db = open_db(tmp_path / "d")
            coll = db.get_collection("mv")
        stored = {r.id: r for r in coll.get_many(list(vecs))}
        for rid, v in vecs.items():
            assert ids(coll.search(v, k=1, exact=True, include=[])) == [rid]
            text = stored[rid].text
            assert ids(coll.search(text=text, mode="text", k=5, include=[])) == [rid]
            other = f"moved{rid}" if text.startswith("word") else f"word{rid}"
            assert ids(coll.search(text=other, mode="text", k=5, include=[])) == []  # superseded text
        for kind in ("a", "b"):
            want = {r for r, rec in stored.items() if rec.metadata["kind"] == kind}
            got = ids(coll.search(np.zeros(8), k=n, filter={"kind": kind}, exact=True, include=[]))
            assert set(got) == want and len(got) == len(want)
    db.close()


def test_change_reapplied_after_replay_leaves_no_text_on_a_dead_label(tmp_path):
    """load() subscribes before replaying, so a change replay already covered can be applied again;
    its ``old`` row (no text) then does not describe what the index holds for the record's label."""
    from engramdb.storage import keyspace
    from engramdb.storage.store import Change, Mutation

    db = open_db(tmp_path / "d")
    c = db.create_collection("c", dimension=4, metric="l2")
    c.upsert({"id": "r", "vector": [1, 0, 0, 0]})  # no text
    key = keyspace.record_key(c.prefix, "r")
    row0 = c.store.get_record(key, vector=True)
    c.upsert({"id": "r", "vector": [0, 1, 0, 0], "text": "bravo"})
    row1 = c.store.get_record(key, vector=True)
    c.upsert({"id": "other", "vector": [0, 0, 1, 0], "text": "bravo bravo"})
    c.indexes.catch_up()  # the notifier has applied the upserts: what follows replays r on top
    with c.indexes._index_lock:
        c.indexes._index_row("r", row1, None)  # what replay does for r
        c.indexes._apply([Change(Mutation(keyspace.CHANGE_RECORD, c.prefix, key, row1), row0, True, c.store.seq)])
    text_index = c.indexes.text_index
    assert text_index is not None
    text_index.flush()
    live = set(c.indexes.vindex.live)
    assert {label for label, _ in text_index.search("bravo", 10)} <= live
    assert sorted(ids(c.search(text="bravo", mode="text", k=2))) == ["other", "r"]
    db.close()


def test_labels_are_compacted_by_a_rebuild_before_they_run_out(tmp_path):
    """Every vector change takes a new label and the bitmaps are 32-bit: past half the range a
    snapshot is rebuilt at load with compact labels, and the last labels are never overrun."""
    from engramdb.index.vector import LABEL_COMPACT_AT, MAX_LABEL

    db = open_db(tmp_path / "d")
    c = db.create_collection("c", dimension=2, metric="l2", indexed_fields={"k": "int"})
    c.upsert([{"id": f"r{i}", "vector": [i, 1], "metadata": {"k": i % 2}, "text": f"w{i}"} for i in range(10)])
    c.indexes.vindex.next_label = LABEL_COMPACT_AT - 1  # as if ~2**31 vector changes had happened
    c.upsert({"id": "r3", "vector": [3, 2], "metadata": {"k": 1}, "text": "moved"})
    assert c.indexes.vindex.label_of["r3"] == LABEL_COMPACT_AT - 1
    c.indexes.vindex.next_label = MAX_LABEL  # one label left: a batch of two must not be half applied
    with pytest.raises(engramdb.errors.CorruptData, match="labels"):
        c.indexes.vindex.upsert(["a", "b"], np.ones((2, 2), dtype=np.float32), [None, None])
    assert "a" not in c.indexes.vindex.label_of and len(c.indexes.vindex) == 10
    c.indexes.vindex.next_label = LABEL_COMPACT_AT
    db.close()  # snapshot with next_label past LABEL_COMPACT_AT
    db = open_db(tmp_path / "d")
    c = db.get_collection("c")
    c.load()
    assert c.load_progress == (10, 10)  # rebuilt from the records
    assert c.indexes.vindex.next_label == 11
    for i in range(10):
        vec = [3, 2] if i == 3 else [i, 1]
        assert ids(c.search(vec, k=1, include=[])) == [f"r{i}"]
    assert sorted(ids(c.search([0, 0], k=10, filter={"k": 1}, include=[]))) == sorted(
        f"r{i}" for i in range(10) if i % 2 or i == 3
    )
    text_index = c.indexes.text_index
    assert text_index is not None
    text_index.flush()
    assert ids(c.search(text="moved", mode="text", k=3)) == ["r3"]
    db.close()


def test_concurrent_queries_each_search_at_their_own_ef(fdb):
    """hnswlib's ef is one setting per index: queries at different ef in parallel must not see each other's."""
    rng = np.random.default_rng(71)
    # A sparse graph (M=4, ef_construction=8) on clustered data, so ef changes the answer.
    centers = rng.standard_normal((20, 32))
    vecs = centers[rng.integers(20, size=3000)] + 0.3 * rng.standard_normal((3000, 32))
    coll = fdb.create_collection(
        "efs", dimension=32, metric="l2", text_index=False, index={"m": 4, "ef_construction": 8}
    )
    coll.upsert([{"id": f"v{i}", "vector": v.tolist()} for i, v in enumerate(vecs)])
    queries = [rng.standard_normal(32) for _ in range(40)]
    low = {i: ids(coll.search(q, k=10, ef=10, include=[])) for i, q in enumerate(queries)}
    high = {i: ids(coll.search(q, k=10, ef=2000, include=[])) for i, q in enumerate(queries)}
    assert sum(low[i] != high[i] for i in low) >= 5, "ef does not change the answers: the test proves nothing"
    errors: list[str] = []
    stop = threading.Event()

    def run(ef: int, want: dict[int, list[str]]) -> None:
        for _ in range(30):  # bounded
            for i, q in enumerate(queries):
                if stop.is_set():
                    return
                got = ids(coll.search(q, k=10, ef=ef, include=[]))
                if got != want[i]:
                    errors.append(f"query {i} at ef={ef} returned another answer under concurrency")
                    stop.set()

    threads = [threading.Thread(target=run, args=(ef, want)) for ef, want in ((10, low), (2000, high)) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]


def test_ids_stay_right_across_reopen_writes_and_snapshots(tmp_path):
    """After a load the id map stays packed until the first write; both forms must agree."""
    rng = np.random.default_rng(77)
    vecs = {f"rec-{i}-é": unit(rng.standard_normal(8)) for i in range(300)}
    db = open_db(tmp_path / "d")
    coll = db.create_collection("ids", dimension=8)
    coll.upsert([{"id": rid, "vector": v} for rid, v in vecs.items()])
    db.close()
    for round_ in range(2):
        db = open_db(tmp_path / "d")
        coll = db.get_collection("ids")
        for rid in list(vecs)[:20]:  # read-only: served from the packed map
            assert ids(coll.search(vecs[rid], k=1, include=[])) == [rid]
        # Exact search and row reads map many labels at once; absent labels give None.
        sample = list(vecs)[::7]
        assert (
            ids(
                coll.search(
                    vecs[sample[0]],
                    k=len(sample),
                    filter={"$or": [{"id_prefix": r} for r in sample]},
                    exact=True,
                    include=[],
                )
            )[0]
            == sample[0]
        )
        vindex = coll.indexes.vindex
        probe = list(range(vindex.next_label + 2))
        assert vindex._packed is not None  # nothing was written yet: still the packed form
        packed = vindex.names_of(probe)
        assert packed == [vindex.name_of(lb) for lb in probe]
        assert {n for n in packed if n is not None} == set(vecs) and packed[0] is None
        unpacked = vindex.id_of
        assert packed == [unpacked.get(lb) for lb in probe]
        gone = list(vecs)[round_]
        coll.delete(gone)  # the first write unpacks the map
        del vecs[gone]
        new = f"new-{round_}"
        vecs[new] = unit(rng.standard_normal(8))
        coll.upsert({"id": new, "vector": vecs[new]})
        for rid in [new, *list(vecs)[:20]]:
            assert ids(coll.search(vecs[rid], k=1, include=[])) == [rid]
        assert gone not in ids(coll.search(np.zeros(8) + 1, k=400, include=[]))
        assert coll.count() == len(vecs)
        db.close()  # snapshots the (now unpacked) map
