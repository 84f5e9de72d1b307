"""EngramStore (LangGraph BaseStore) against LangGraph's own InMemoryStore.

The core test runs one scenario — puts, updates, deletes, gets, searches with
and without a query, filters, pagination, namespace listings, mixed batches —
against both stores, sync and async, and requires the same outputs (timestamps
aside, scores to float32 precision). LangGraph publishes no reusable store
conformance suite (``langgraph-checkpoint-conformance`` covers checkpointers
only), so the comparison with InMemoryStore is the conformance test. Further
tests cover what InMemoryStore lacks: TTL, persistence, the remote client, and
the documented differences.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langgraph.store.memory")

from langchain_core.embeddings import DeterministicFakeEmbedding
from langgraph.store.base import (
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchItem,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

import engramdb
from engramdb.integrations.langgraph import EngramStore

DIMS = 16


def _index(fields: list[str] | None = None) -> IndexConfig:
    cfg: IndexConfig = {"dims": DIMS, "embed": DeterministicFakeEmbedding(size=DIMS)}
    if fields is not None:
        cfg["fields"] = fields
    return cfg


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Any]:
    d = engramdb.open(tmp_path / "db", storage={"sync_writes": False})
    yield d
    d.close()


# ------------------------------------------------------------------ scenario
NS_A = ("users", "alice", "memories")
NS_B = ("users", "bob", "memories")
NS_C = ("users", "alice", "prefs")
NS_D = ("docs",)

# (method, args, kwargs). Async runs call "a" + method. The steps avoid
# InMemoryStore's undocumented quirks (see the divergence tests below).
SCENARIO: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("put", (NS_A, "m1", {"text": "likes hiking in the alps", "n": 1, "tags": ["outdoor", "sport"]}), {}),
    ("put", (NS_B, "m1", {"text": "plays the cello", "n": 5, "flag": True}), {}),
    ("put", (NS_A, "m2", {"text": "allergic to peanuts", "n": 3, "info": {"sev": "high", "x": 1}}), {}),
    ("put", (NS_C, "theme", {"text": "dark mode", "n": 0, "flag": False}), {"index": False}),
    ("put", (NS_D, "d1", {"text": "an essay about rivers", "n": 2.5, "tags": ["water"]}), {}),
    ("put", (NS_A, "m3", {"text": "works as a nurse", "n": 7, "info": {"sev": "low"}}), {"index": ["text"]}),
    ("put", (NS_B, "m2", {"other": "no text field", "n": -1, "z": None}), {}),
    ("get", (NS_A, "m1"), {}),
    ("get", (NS_A, "missing"), {}),
    ("search", ((),), {}),
    ("search", (("users",),), {}),
    ("search", (("users", "alice"),), {"limit": 2}),
    ("search", (("users", "alice"),), {"limit": 2, "offset": 2}),
    ("search", ((),), {"offset": 10}),
    # Updates keep an item's place; delete + put moves it to the end. (An update
    # keeps the number of tags: InMemoryStore would keep the vectors of dropped ones.)
    ("put", (NS_A, "m1", {"text": "likes hiking and skiing", "n": 4, "tags": ["outdoor", "winter"]}), {}),
    ("delete", (NS_A, "m2"), {}),
    ("put", (NS_A, "m2", {"text": "allergic to shellfish", "n": 3, "info": {"sev": "high", "x": 2}}), {}),
    ("search", ((),), {}),
    # Filters on value fields.
    ("search", ((),), {"filter": {"n": 3}}),
    ("search", ((),), {"filter": {"n": {"$gt": 2}}}),
    ("search", ((),), {"filter": {"n": {"$gte": 1, "$lt": 5}}}),
    ("search", ((),), {"filter": {"n": {"$ne": 4}}}),
    ("search", ((),), {"filter": {"n": {"$eq": 2.5}}}),
    ("search", ((),), {"filter": {"info": {"sev": "high"}}}),
    ("search", ((),), {"filter": {"info": {"sev": "high", "x": 2}}}),
    ("search", ((),), {"filter": {"tags": ["outdoor"]}}),
    ("search", ((),), {"filter": {"flag": True}}),
    ("search", ((),), {"filter": {"flag": 0}}),
    ("search", ((),), {"filter": {"z": None}}),
    ("search", ((),), {"filter": {"z": {"$eq": None}}}),
    ("search", ((),), {"filter": {"text": "dark mode", "n": 0}}),
    ("search", (("users",),), {"filter": {"n": {"$lte": 4}}, "limit": 1, "offset": 1}),
    # Semantic search: scores, pagination, max pooling over list elements, the
    # unscored fill-up with items that have no vector, filters with a query.
    ("search", ((),), {"query": "hiking"}),
    ("search", ((),), {"query": "sport", "limit": 3}),
    ("search", ((),), {"query": "sport", "limit": 3, "offset": 2}),
    ("search", (("users",),), {"query": "cello", "limit": 20}),
    ("search", ((),), {"query": "peanuts", "filter": {"n": {"$gte": 3}}}),
    ("search", ((),), {"query": "dark", "filter": {"flag": False}}),
    ("search", (("users", "alice"),), {"query": "nurse", "filter": {"info": {"sev": "low"}}}),
    ("search", (("nobody",),), {"query": "x"}),
    # Namespaces.
    ("list_namespaces", (), {}),
    ("list_namespaces", (), {"prefix": ("users",)}),
    ("list_namespaces", (), {"prefix": ("users", "*", "memories")}),
    ("list_namespaces", (), {"suffix": ("memories",)}),
    ("list_namespaces", (), {"suffix": ("*", "prefs")}),
    ("list_namespaces", (), {"prefix": ("users",), "max_depth": 2}),
    ("list_namespaces", (), {"max_depth": 1}),
    ("list_namespaces", (), {"limit": 2, "offset": 1}),
    ("list_namespaces", (), {"prefix": ("users", "carol")}),
    # One batch: reads see the state before the batch's puts; the last put of an item wins.
    (
        "batch",
        (
            [
                PutOp(NS_D, "d2", {"text": "poems about the sea", "n": 9}),
                GetOp(NS_D, "d2"),
                PutOp(NS_D, "d2", {"text": "a novel about the sea", "n": 10}),
                SearchOp(NS_D, None, 10, 0, "sea"),
                ListNamespacesOp((MatchCondition("prefix", ("users",)),), None, 10, 0),
                PutOp(NS_D, "d1", None),
            ],
        ),
        {},
    ),
    ("get", (NS_D, "d2"), {}),
    ("get", (NS_D, "d1"), {}),
    ("search", (NS_D,), {"query": "sea"}),
    ("batch", ([SearchOp((), {"n": {"$gt": 3}}, 2, 1, None), GetOp(NS_B, "m1"), GetOp(NS_B, "nope")],), {}),
    # put(value=None) is a delete; deleting a missing item is fine.
    ("batch", ([PutOp(NS_B, "m2", None), PutOp(NS_B, "ghost", None)],), {}),
    ("search", (("users", "bob"),), {}),
    ("list_namespaces", (), {}),
]


def _norm(result: Any) -> Any:
    """Comparable form of a store result: everything but timestamps; scores kept as floats."""
    if isinstance(result, Item):
        score = getattr(result, "score", None) if isinstance(result, SearchItem) else "no-score-field"
        return (type(result).__name__, result.namespace, result.key, result.value, score)
    if isinstance(result, list):
        return [_norm(r) for r in result]
    if isinstance(result, tuple):
        return tuple(result)
    return result


def _assert_same(got: Any, want: Any, where: str) -> None:
    """Equal up to float32 rounding of scores."""
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, tuple) and want and want[0] in ("Item", "SearchItem"):
        assert got[:4] == want[:4], f"{where}: {got} != {want}"
        if isinstance(want[4], float):
            assert got[4] == pytest.approx(want[4], abs=1e-5), f"{where}: score {got[4]} != {want[4]}"
        else:
            assert got[4] == want[4], f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got} != {want}"


def _run(store: Any) -> list[Any]:
    return [_norm(getattr(store, name)(*args, **kw)) for name, args, kw in SCENARIO]


async def _arun(store: Any) -> list[Any]:
    return [_norm(await getattr(store, "a" + name)(*args, **kw)) for name, args, kw in SCENARIO]


def _compare(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for (name, args, kw), g, w in zip(SCENARIO, got, want, strict=True):
        _assert_same(g, w, f"{name}{args}{kw}")


@pytest.mark.parametrize("fields", [None, ["text", "tags[*]"]], ids=["whole-value", "fields"])
def test_scenario_matches_inmemorystore(db: Any, fields: list[str] | None) -> None:
    want = _run(InMemoryStore(index=_index(fields)))
    got = _run(EngramStore(db, index=_index(fields)))
    _compare(got, want)
    # Sanity: the scenario really exercised scores, unscored fill-up and empty results.
    flat = [r for res in want if isinstance(res, list) for r in res if isinstance(r, tuple) and len(r) == 5]
    assert any(isinstance(r[4], float) for r in flat) and any(r[0] == "SearchItem" and r[4] is None for r in flat)


def test_scenario_without_index_matches_inmemorystore(db: Any) -> None:
    # Without an index config a query is ignored and search lists items.
    want = _run(InMemoryStore())
    store = EngramStore(db, collection="plain")
    _compare(_run(store), want)
    assert store.collection.dimension == 1


def test_async_scenario_matches_inmemorystore(db: Any) -> None:
    async def both() -> tuple[list[Any], list[Any]]:
        idx = _index(["text", "tags[*]"])
        return await _arun(EngramStore(db, index=idx)), await _arun(InMemoryStore(index=idx))

    got, want = asyncio.run(both())
    _compare(got, want)


def test_async_embedding_function(db: Any) -> None:
    """An async ``embed`` function works through the async API (the sync one cannot call it)."""
    fake = DeterministicFakeEmbedding(size=DIMS)

    async def aembed(texts: Sequence[str]) -> list[list[float]]:
        await asyncio.sleep(0)
        return fake.embed_documents(list(texts))

    async def scenario(store: Any) -> list[Any]:
        await store.aput(("a",), "1", {"text": "blue whale"})
        await store.aput(("a",), "2", {"text": "red fox"})
        return _norm(await store.asearch(("a",), query="fox"))

    idx: IndexConfig = {"dims": DIMS, "embed": aembed}
    got = asyncio.run(scenario(EngramStore(db, index=idx)))
    want = asyncio.run(scenario(InMemoryStore(index=idx)))
    _assert_same(got, want, "asearch")


def test_item_fields_and_timestamps(db: Any) -> None:
    store = EngramStore(db)
    store.put(("n",), "k", {"v": 1})
    first = store.get(("n",), "k")
    assert isinstance(first, Item) and not isinstance(first, SearchItem)
    assert isinstance(first.created_at, datetime) and first.created_at.tzinfo is not None
    assert first.created_at == first.updated_at
    time.sleep(0.01)
    store.put(("n",), "k", {"v": 2})
    second = store.get(("n",), "k")
    assert second is not None and second.value == {"v": 2}
    # created_at is the creation time ("Timestamp of item creation"), kept by updates.
    assert second.created_at == first.created_at and second.updated_at > first.updated_at
    hit = store.search(("n",))[0]
    assert isinstance(hit, SearchItem) and hit.score is None
    assert (hit.created_at, hit.updated_at) == (second.created_at, second.updated_at)
    assert hit.dict()["namespace"] == ["n"]


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with EngramStore.from_path(path, index=_index(), storage={"sync_writes": False}) as store:
        for i, ns in enumerate([("b",), ("a",), ("b",), ("c", "d")]):
            store.put(ns, f"k{i}", {"text": f"item number {i}", "i": i})
        store.delete(("a",), "k1")
        before = _norm(store.search(()))
        scored = _norm(store.search((), query="item number 2"))
    with EngramStore.from_path(path, index=_index()) as store:
        # The namespace order outlives the namespace's items and the process.
        store.put(("a",), "k9", {"text": "back again", "i": 9})
        after = _norm(store.search(()))
        assert [r[2] for r in before] == ["k0", "k2", "k3"]
        assert [r[2] for r in after] == ["k0", "k2", "k9", "k3"]
        again = store.search((), query="item number 2", filter={"i": {"$lt": 9}})
        _assert_same(_norm(again), scored, "after reopen")
        assert store.list_namespaces() == [("a",), ("b",), ("c", "d")]


def test_ttl_expiry_refresh_and_default(db: Any) -> None:
    store = EngramStore(db, index=_index(["text", "tags[*]"]), ttl={"default_ttl": 1.0 / 60})
    assert store.supports_ttl
    store.put(("t",), "default", {"text": "uses the default ttl", "tags": ["a", "b"]})
    store.put(("t",), "forever", {"text": "never expires"}, ttl=None)
    store.put(("t",), "long", {"text": "lives a while"}, ttl=1.0)
    store.put(("t",), "refreshed", {"text": "kept alive by reads", "tags": ["c", "d"]}, ttl=1.5 / 60)
    recs = store.collection.get_many(['i:["t","default"]'], include=["expires_at"])
    assert recs and recs[0].ttl_seconds == pytest.approx(1.0)
    time.sleep(0.8)
    assert store.get(("t",), "refreshed") is not None  # refresh_on_read defaults to True
    assert store.get(("t",), "default", refresh_ttl=False) is not None
    time.sleep(0.9)
    keys = {i.key for i in store.search(("t",))}
    assert keys == {"forever", "long", "refreshed"}
    # The refresh reached the item's extra vector records (one per tag) too.
    hits = store.search(("t",), query="d", limit=10)
    assert {h.key for h in hits} == {"forever", "long", "refreshed"} and all(h.score is not None for h in hits)
    assert store.get(("t",), "default") is None


def test_ttl_store_without_ttl_config_still_accepts_ttl(db: Any) -> None:
    store = EngramStore(db)
    store.put(("t",), "k", {"a": 1}, ttl=0.5 / 60)
    # Newer LangGraph releases may hand a timedelta to batch(); it means the same.
    store.batch([PutOp(("t",), "td", {"a": 2}, ttl=timedelta(seconds=0.5))])  # type: ignore[arg-type]
    assert store.get(("t",), "k") is not None and store.get(("t",), "td") is not None
    time.sleep(0.7)
    assert store.get(("t",), "k") is None and store.search(("t",)) == []


def test_put_index_false_and_field_changes_drop_old_vectors(db: Any) -> None:
    store = EngramStore(db, index=_index(["tags[*]"]))
    coll = store.collection
    store.put(("x",), "k", {"tags": ["one", "two", "three"]})
    base = coll.count()
    store.put(("x",), "k", {"tags": ["one"]})
    assert coll.count() == base - 2  # the two extra vector records went away
    hits = store.search(("x",), query="one")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    # Documented difference: InMemoryStore keeps an item's old vectors after a
    # put with index=False; EngramStore un-indexes it, as the put asked.
    store.put(("x",), "k", {"tags": ["one"]}, index=False)
    assert [h.score for h in store.search(("x",), query="one")] == [None]
    store.delete(("x",), "k")
    assert store.search(("x",)) == []


def test_filters_beyond_inmemorystore(db: Any) -> None:
    store = EngramStore(db, index=_index(["text"]))
    store.put(("f",), "a", {"text": "alpha", "n": 1, "user": {"tier": "gold", "access-level": 3}})
    store.put(("f",), "b", {"text": "beta", "n": "7"})
    store.put(("f",), "c", {"text": "gamma"})
    # Range operators on a missing field match nothing (InMemoryStore raises TypeError).
    assert [i.key for i in store.search(("f",), filter={"n": {"$gt": 0}})] == ["a", "b"]
    # Numeric strings compare as numbers, as in InMemoryStore (float(value)).
    assert [i.key for i in store.search(("f",), query="x", filter={"n": {"$gte": 5}})] == ["b"]
    # Dotted keys look into nested objects (as newer LangGraph releases do).
    assert [i.key for i in store.search(("f",), filter={"user.access-level": 3})] == ["a"]
    assert [i.key for i in store.search(("f",), query="alpha", filter={"user.tier": "gold"})] == ["a"]
    with pytest.raises(ValueError, match="Unsupported operator"):
        store.search(("f",), filter={"n": {"$regex": "x"}})


def test_semantic_search_widens_past_post_filtered_hits(db: Any) -> None:
    store = EngramStore(db, index=_index(["text"]))
    mem = InMemoryStore(index=_index(["text"]))
    for s in (store, mem):
        s.batch(
            [PutOp(("w",), f"k{i}", {"text": f"note {i}", "tags": ["x"] if i % 7 else ["x", "y"]}) for i in range(60)]
        )
    # $ne is evaluated after the engine search (not translatable exactly), so
    # the store must keep widening until it has enough matching items.
    for flt in ({"tags": {"$ne": ["x"]}}, {"tags": ["x", "y"]}):
        got = _norm(store.search(("w",), query="note 3", filter=flt, limit=5, offset=2))
        want = _norm(mem.search(("w",), query="note 3", filter=flt, limit=5, offset=2))
        _assert_same(got, want, str(flt))


def test_above_the_exact_search_threshold(db: Any) -> None:
    """Past 2048 candidates the engine uses HNSW; exact_search=True keeps InMemoryStore's ranking."""
    ops = [PutOp((f"u{i % 3}",), f"k{i}", {"text": f"memory {i}", "i": i}) for i in range(2300)]
    mem, approx = InMemoryStore(index=_index(["text"])), EngramStore(db, index=_index(["text"]))
    exact = EngramStore(db, index=_index(["text"]), exact_search=True)
    mem.batch(ops)
    approx.batch(ops)
    cases: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        ((), {"query": "memory 17", "limit": 25}),
        (("u1",), {"query": "x", "filter": {"i": {"$gt": 9}}}),
    ]
    for prefix, kw in cases:
        want = _norm(mem.search(prefix, **kw))
        _assert_same(_norm(exact.search(prefix, **kw)), want, f"exact {prefix} {kw}")
        got = _norm(approx.search(prefix, **kw))
        assert got[0] == want[0] or got[0][4] == pytest.approx(want[0][4], abs=1e-5)
        assert len({r[2] for r in got} & {r[2] for r in want}) >= 0.8 * len(want)  # HNSW recall


def test_invalid_input(db: Any) -> None:
    store = EngramStore(db)
    with pytest.raises(InvalidNamespaceError):
        store.put((), "k", {"a": 1})
    with pytest.raises(InvalidNamespaceError):
        store.put(("langgraph", "x"), "k", {"a": 1})
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp(("a.b",), "k", {"a": 1})])
    with pytest.raises(InvalidNamespaceError):
        store.batch([GetOp(("",), "k")])
    with pytest.raises(ValueError, match="ttl"):
        store.put(("a",), "k", {"a": 1}, ttl=-1)
    with pytest.raises(engramdb.InvalidArgument):
        store.put(("a",), "k", {"when": datetime.now()})  # values must be JSON
    with pytest.raises(ValueError, match="dimension"):
        EngramStore(db, index=_index())  # existing 1-dim collection
    with pytest.raises(ValueError):
        EngramStore(db, collection="s", index={"dims": 4, "embed": "openai:text-embedding-3-small"})
    with pytest.raises(TypeError):
        EngramStore(object())
    with pytest.raises(TypeError, match="synchronous"):
        EngramStore(engramdb.AsyncClient("http://127.0.0.1:9", api_key="k"))
    assert store.search(("a",)) == []  # nothing was half-written


def test_long_keys_and_odd_characters(db: Any) -> None:
    store = EngramStore(db)
    mem = InMemoryStore()
    long_ns = tuple("segment-" + "x" * 200 + str(i) for i in range(3))
    cases = [(("a",), "k" * 1000), (long_ns, "key"), (("ü", "日本"), 'quote"and#hash]'), (("a",), "")]
    for s in (store, mem):
        for i, (ns, key) in enumerate(cases):
            s.put(ns, key, {"i": i})
    for ns, key in cases:
        assert _norm(store.get(ns, key))[:4] == _norm(mem.get(ns, key))[:4]
    assert _norm(store.search(())) == _norm(mem.search(()))
    assert store.list_namespaces() == mem.list_namespaces()


def test_list_namespaces_pages_past_engine_limit(db: Any) -> None:
    store = EngramStore(db)
    store.batch([PutOp(("p", f"{i:03d}"), "k", {"i": i}) for i in range(30)])
    got = store.list_namespaces(prefix=("p",), limit=25, offset=10)
    assert got == [("p", f"{i:03d}") for i in range(10, 30)]
    extra = store.batch(
        [ListNamespacesOp((MatchCondition("prefix", ("p",)), MatchCondition("prefix", ("*", "01*"))), None, 5, 0)]
    )
    assert extra == [[]]  # several conditions of one kind are all applied
    two = store.batch(
        [ListNamespacesOp((MatchCondition("prefix", ("p",)), MatchCondition("suffix", ("011",))), None, 5, 0)]
    )
    assert two == [[("p", "011")]]


def test_used_by_a_langgraph_graph(db: Any) -> None:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph
    from langgraph.store.base import BaseStore

    class State(TypedDict):
        user: str
        seen: int

    def remember(state: State, *, store: BaseStore) -> dict[str, int]:
        ns = ("memories", state["user"])
        store.put(ns, f"m{len(store.search(ns))}", {"text": "visited"})
        return {"seen": len(store.search(ns))}

    builder = StateGraph(State)
    builder.add_node("remember", remember)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    graph = builder.compile(store=EngramStore(db, index=_index(["text"])))
    assert graph.invoke({"user": "u1", "seen": 0})["seen"] == 1
    assert graph.invoke({"user": "u1", "seen": 0})["seen"] == 2
    assert asyncio.run(graph.ainvoke({"user": "u2", "seen": 0}))["seen"] == 1


@pytest.mark.slow
def test_remote_client_matches_inmemorystore(server: Any) -> None:
    """The same scenario through engramdb.connect(): the store only needs the collection API."""
    client = engramdb.connect(server.base_url, server.admin_key)
    try:
        idx = _index(["text", "tags[*]"])
        name = f"lg-{uuid.uuid4().hex[:12]}"  # the session's server is shared
        got = _run(EngramStore(client, index=idx, collection=name))
        want = _run(InMemoryStore(index=idx))
        _compare(got, want)
        client.delete_collection(name)
    finally:
        client.close()


@pytest.mark.slow
def test_a_cluster_node_matches_inmemorystore(tmp_path: Path) -> None:
    """The same scenario through a node of a real 3-node cluster (RF 3, 4 shards): unchanged code."""
    import shutil

    if shutil.which("etcd") is None:
        pytest.skip("etcd (Debian etcd-server) is not installed")
    from engramdb.cluster.local import LocalCluster

    key = "lg-cluster-" + uuid.uuid4().hex
    with (
        LocalCluster(tmp_path / "cluster", 3, admin_key=key) as cluster,
        engramdb.connect(cluster.node(2).url, key) as client,
    ):
        idx = _index(["text", "tags[*]"])
        got = _run(EngramStore(client, index=idx, collection="lg"))
        want = _run(InMemoryStore(index=idx))
        _compare(got, want)


# ------------------------------------------------ batches: LangGraph's rules, all or nothing
def test_batch_takes_the_langgraph_root_label_like_inmemorystore(db: Any) -> None:
    """LangGraph refuses a "langgraph" root label in put() only; batch() takes it, as InMemoryStore does."""
    store = EngramStore(db)
    mem = InMemoryStore()
    for s in (store, mem):
        s.batch([PutOp(("langgraph", "x"), "k", {"a": 1})])
        with pytest.raises(InvalidNamespaceError):
            s.put(("langgraph", "y"), "k", {"a": 1})
    assert _norm(store.get(("langgraph", "x"), "k"))[:4] == _norm(mem.get(("langgraph", "x"), "k"))[:4]
    assert store.list_namespaces() == mem.list_namespaces() == [("langgraph", "x")]


class _BadVectors(DeterministicFakeEmbedding):
    """Embeds the text "poison" as NaNs, which the engine refuses."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vecs = super().embed_documents(texts)
        return [[math.nan] * DIMS if t == "poison" else v for t, v in zip(texts, vecs, strict=True)]


_BAD_PUTS: dict[str, PutOp] = {
    "not_json": PutOp(("a",), "bad", {"when": datetime.now()}),
    "nan": PutOp(("a",), "bad", {"x": math.nan}),
    "big_int": PutOp(("a",), "bad", {"x": 2**70}),
    "control_char_label": PutOp(("a", "b\nc"), "bad", {"x": 1}),
    "del_label": PutOp(("a\x7f",), "bad", {"x": 1}),
    "long_label": PutOp(("a" * 300,), "bad", {"x": 1}),
    "too_big": PutOp(("a",), "bad", {"x": "y" * (1 << 20)}),
    "too_deep": PutOp(("a",), "bad", {"x": functools.reduce(lambda acc, _: {"n": acc}, range(20), {})}),
    "ttl_beyond_a_century": PutOp(("a",), "bad", {"x": 1}, ttl=200 * 365 * 24 * 60.0),
}


@pytest.mark.parametrize("bad", sorted(_BAD_PUTS))
@pytest.mark.parametrize("run", ["sync", "async"])
def test_a_failing_batch_applies_none_of_its_deletes(db: Any, bad: str, run: str) -> None:
    store = EngramStore(db, index=_index(["text"]))
    store.put(("a",), "keep", {"text": "kept"})
    store.put(("a",), "other", {"text": "other"})
    ops = [PutOp(("a",), "keep", None), PutOp(("a",), "other", {"text": "changed"}), _BAD_PUTS[bad]]
    with pytest.raises((ValueError, engramdb.InvalidArgument)):
        if run == "sync":
            store.batch(ops)
        else:
            asyncio.run(store.abatch(ops))
    kept, other = store.get(("a",), "keep"), store.get(("a",), "other")
    assert kept is not None and kept.value == {"text": "kept"}
    assert other is not None and other.value == {"text": "other"}
    assert store.get(("a",), "bad") is None
    assert [i.key for i in store.search(("a",), query="kept")][:1] == ["keep"]


def test_a_bad_embedding_fails_the_batch_before_its_deletes(db: Any) -> None:
    store = EngramStore(db, index={"dims": DIMS, "embed": _BadVectors(size=DIMS), "fields": ["text"]})
    store.put(("a",), "keep", {"text": "kept"})
    with pytest.raises(engramdb.InvalidArgument):
        store.batch([PutOp(("a",), "keep", None), PutOp(("a",), "p", {"text": "poison"})])
    item = store.get(("a",), "keep")
    assert item is not None and item.value == {"text": "kept"}
    assert store.get(("a",), "p") is None


def test_keys_with_control_characters_are_stored(db: Any) -> None:
    """Item ids escape every control character, so any key LangGraph allows can be written."""
    store = EngramStore(db)
    mem = InMemoryStore()
    keys = ["del\x7fkey", "nl\nkey", "c1\x85key", "nul\x00key"]
    for s in (store, mem):
        for i, key in enumerate(keys):
            s.put(("ns",), key, {"i": i})
    for key in keys:
        assert _norm(store.get(("ns",), key))[:4] == _norm(mem.get(("ns",), key))[:4]
    store.delete(("ns",), keys[0])
    assert store.get(("ns",), keys[0]) is None
