"""One API, three deployments (docs/api-contract.md): the same tests against every backend.

Every test taking ``api`` runs three times: against the embedded engine
(``engramdb.open``), the blocking HTTP client (``engramdb.connect``) and the
asyncio client (``engramdb.AsyncClient``, driven through a small adapter that
runs its coroutines on a dedicated event-loop thread so the test bodies stay
synchronous). The remote backends talk to a real ``engramdb serve`` process;
each test gets its own tenant (``X-EngramDB-Tenant`` with the bootstrap admin
key) so tests cannot see each other's collections.

The client-only tests at the end use small local HTTP servers to provoke what
a real server rarely does on demand: 503s, slow answers, refused connections.
"""

from __future__ import annotations

import asyncio
import http.server
import inspect
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

import engramdb
from engramdb.client import AsyncClient, AsyncRemoteCollection, Client, RemoteCollection
from engramdb.engine.collection import Collection
from engramdb.errors import (
    AlreadyExists,
    Closed,
    DeadlineExceeded,
    DimensionMismatch,
    EngramError,
    FailedPrecondition,
    InvalidArgument,
    InvalidFilter,
    NotFound,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from engramdb.types import CollectionConfig, Edge, Hit, Record, ScanPage

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
HAS_GRAPH = hasattr(Collection, "link")
needs_graph = pytest.mark.skipif(not HAS_GRAPH, reason="the engine's graph methods are not there yet")


# --------------------------------------------------------------- the server
@dataclass
class ServerInfo:
    url: str
    admin_key: str
    grpc_target: str | None = None  # host:port of its gRPC server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_info(value: Any) -> ServerInfo:
    """Accept the shapes a shared ``server`` fixture may yield: (url, key), a dict or an object."""
    if isinstance(value, ServerInfo):
        return value
    grpc_address = getattr(value, "grpc_address", None)
    if grpc_address is not None:
        return ServerInfo(str(value.base_url), str(value.admin_key), str(grpc_address))
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return ServerInfo(str(value[0]), str(value[1]))
    if isinstance(value, dict):
        url = value.get("url") or value.get("base_url")
        key = value.get("admin_key") or value.get("key") or value.get("api_key")
        return ServerInfo(str(url), str(key))
    url = getattr(value, "url", None) or getattr(value, "base_url", None)
    key = getattr(value, "admin_key", None) or getattr(value, "key", None) or getattr(value, "api_key", None)
    if url is None or key is None:
        raise TypeError(f"cannot read a base url and an admin key from the server fixture's {value!r}")
    return ServerInfo(str(url), str(key))


@pytest.fixture(scope="session")
def _own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """Start ``engramdb serve`` on a free loopback port (used when no shared fixture exists)."""
    try:
        import engramdb.cli  # noqa: F401
    except ImportError:
        pytest.skip("engramdb.cli (the server) does not exist yet")
    port = _free_port()
    grpc_port = _free_port()
    key = "parity-admin-" + uuid.uuid4().hex
    data = tmp_path_factory.mktemp("parity-server")
    env = {
        **os.environ,
        "ENGRAMDB_ADMIN_KEY": key,
        "ENGRAMDB_DATA_DIR": str(data),
        "ENGRAMDB_SERVER__HOST": "127.0.0.1",
        "ENGRAMDB_SERVER__PORT": str(port),
        "ENGRAMDB_SERVER__GRPC_PORT": str(grpc_port),  # the "grpc" backend's
        "ENGRAMDB_SERVER__AUTH": "required",
        "ENGRAMDB_STORAGE__SYNC_WRITES": "false",
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    log = (data / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "engramdb.cli", "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"engramdb serve exited with {proc.returncode}: {(data / 'server.log').read_text()}")
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("engramdb serve did not become ready in 60 s")
            time.sleep(0.1)
        yield ServerInfo(url, key, f"127.0.0.1:{grpc_port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def remote_server(request: pytest.FixtureRequest) -> ServerInfo:
    """The shared ``server`` fixture of tests/integration/conftest.py if there is one, else our own."""
    try:
        value = request.getfixturevalue("server")
    except pytest.FixtureLookupError:
        value = request.getfixturevalue("_own_server")
    return _as_server_info(value)


# ------------------------------------------------------ the async adapter
class LoopThread:
    """An event loop running in its own thread; ``run`` blocks on a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="parity-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class SyncAdapter:
    """Presents an async client (or collection) as a blocking one, so test bodies are shared.

    Attributes pass through; coroutine results are awaited on the loop thread;
    async collections come back wrapped too. Exceptions propagate unchanged.
    """

    def __init__(self, target: Any, loop: LoopThread):
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.iscoroutine(result):
                result = self._loop.run(result)
            if isinstance(result, AsyncRemoteCollection):
                return SyncAdapter(result, self._loop)
            return result

        return call

    def __repr__(self) -> str:
        return f"SyncAdapter({self._target!r})"


# --------------------------------------------------------------- backends
# "cluster": the blocking client against the nodes of a real 3-node cluster (real etcd, RF 3, 4 shards),
# a different node per test. Skipped where Debian's etcd is not installed (CI installs it).
# "grpc": the blocking client sending every operation over gRPC (prefer_grpc=True) to the same server.
BACKENDS = ["embedded", "sync", "async", "cluster", "grpc"]


@pytest.fixture(scope="session")
def parity_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import shutil

    if shutil.which("etcd") is None:
        pytest.skip("etcd (Debian etcd-server) is not installed")
    from engramdb.cluster.local import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("parity-cluster"), 3, admin_key="parity-cluster-" + uuid.uuid4().hex)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A database with the embedded API, from each of the three deployments."""
    kind = request.param
    if kind == "embedded":
        db = engramdb.open(tmp_path / "data", storage={"sync_writes": False})
        yield db
        db.close()
        return
    tenant = "t-" + uuid.uuid4().hex[:12]  # a fresh tenant per test: nothing shared, nothing to clean
    if kind == "cluster":
        cluster = request.getfixturevalue("parity_cluster")
        node = cluster.node(int(uuid.uuid4().int % len(cluster)))
        client = engramdb.connect(node.url, api_key=cluster.admin_key, tenant=tenant, timeout=30)
        yield client
        client.close()
        return
    srv: ServerInfo = request.getfixturevalue("remote_server")
    if kind in ("sync", "grpc"):
        grpc = {"prefer_grpc": True, "grpc_target": srv.grpc_target} if kind == "grpc" else {}
        client = engramdb.connect(srv.url, api_key=srv.admin_key, tenant=tenant, timeout=30, **grpc)
        yield client
        client.close()
        return
    loop = LoopThread()

    async def make() -> AsyncClient:
        return engramdb.AsyncClient(srv.url, api_key=srv.admin_key, tenant=tenant, timeout=30)

    aclient = loop.run(make())  # created on the loop thread: httpx's async pool belongs to that loop
    yield SyncAdapter(aclient, loop)
    loop.run(aclient.close())
    loop.close()


def v(*xs: float) -> list[float]:
    return [float(x) for x in xs]


def unit(*xs: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in xs))
    return [x / n for x in xs]


def fill(coll: Any, n: int, dim: int = 4) -> None:
    coll.upsert(
        [
            {
                "id": f"r{i:03d}",
                "vector": [1.0 + i, float(i % 3), float(i % 5) + 0.5, 1.0][:dim],
                "text": f"record number {i}",
                "metadata": {"i": i, "even": i % 2 == 0, "tag": "a" if i < n // 2 else "b"},
                "namespace": ["ns", f"g{i % 3}"],
            }
            for i in range(n)
        ]
    )


def eventually(fn: Callable[[], T], timeout: float = 5.0) -> T:
    """``fn()`` once it returns something truthy (for near-real-time indexes)."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def expect_error(fn: Callable[[], Any], cls: type[EngramError], code: str) -> EngramError:
    """Run ``fn``; it must raise exactly ``cls`` (not a subclass or parent) with ``code``."""
    with pytest.raises(EngramError) as ei:
        fn()
    err = ei.value
    assert type(err) is cls, f"{type(err).__name__}({err.code}): {err.message}"
    assert err.code == code, f"{type(err).__name__}({err.code}): {err.message}"
    return err


# ============================================================ shared tests
def test_collection_lifecycle(api: Any) -> None:
    c = api.create_collection(
        "notes", 4, "l2", indexed_fields={"tag": "keyword"}, default_ttl_seconds=3600, index={"m": 8}
    )
    assert (c.name, c.dimension, c.metric) == ("notes", 4, "l2")
    assert isinstance(c.config, CollectionConfig)
    assert c.config.indexed_fields == {"tag": "keyword"}
    assert c.config.default_ttl_seconds == 3600
    assert c.config.index.m == 8
    api.create_collection("alpha", dimension=2)
    got = api.get_collection("notes")
    assert got.config == c.config
    listed = api.list_collections()
    assert all(isinstance(x, CollectionConfig) for x in listed)
    assert [x.name for x in listed] == ["alpha", "notes"]
    # exist_ok returns the identical collection, and refuses a different one.
    assert (
        api.create_collection(
            "notes", 4, "l2", indexed_fields={"tag": "keyword"}, default_ttl_seconds=3600, index={"m": 8}, exist_ok=True
        ).config
        == c.config
    )
    expect_error(lambda: api.create_collection("notes", 4, "cosine", exist_ok=True), AlreadyExists, "collection_exists")
    assert api.delete_collection("alpha") is None
    assert [x.name for x in api.list_collections()] == ["notes"]
    expect_error(lambda: api.get_collection("alpha"), NotFound, "collection_not_found")
    expect_error(lambda: api.delete_collection("alpha"), NotFound, "collection_not_found")


def test_upsert_get_roundtrip(api: Any) -> None:
    c = api.create_collection("rt", dimension=3, metric="dot")
    versions = c.upsert(
        [
            Record(
                id="a",
                vector=[1.0, 2.0, 3.0],
                text="hello",
                metadata={"x": 1, "nested": {"y": [1, "two"]}},
                namespace=("u1", "mem"),
                importance=0.5,
            ),
            {"id": "b", "vector": np.array([0.5, 0.25, 0.125], dtype=np.float32)},  # numpy is fine
            {"id": "weird/id with spaces?#&", "vector": (1, 1, 1)},
        ]
    )
    assert len(versions) == 3 and all(isinstance(x, str) and x for x in versions)
    a = c.get("a")
    assert isinstance(a, Record)
    assert a.vector == [1.0, 2.0, 3.0]
    assert (a.text, a.metadata, a.namespace, a.importance) == (
        "hello",
        {"x": 1, "nested": {"y": [1, "two"]}},
        ("u1", "mem"),
        0.5,
    )
    assert a.version == versions[0]
    assert a.created_at is not None and a.updated_at is not None and a.expires_at is None
    assert c.get("b").vector == [0.5, 0.25, 0.125]
    assert c.get("weird/id with spaces?#&").id == "weird/id with spaces?#&"
    assert c.get("missing") is None
    many = c.get_many(["b", "missing", "a"])
    assert [r.id for r in many] == ["b", "a"]
    slim = c.get("a", include=["metadata"])
    assert (slim.vector, slim.text, slim.metadata, slim.namespace) == (
        None,
        None,
        {"x": 1, "nested": {"y": [1, "two"]}},
        (),
    )
    assert slim.created_at is None
    # Whole-record replace keeps created_at and bumps the version.
    new_v = c.upsert(Record(id="a", vector=[3.0, 2.0, 1.0]))
    a2 = c.get("a")
    assert (a2.text, a2.metadata, a2.created_at, a2.version) == (None, {}, a.created_at, new_v[0])


def test_patch(api: Any) -> None:
    c = api.create_collection("patch", dimension=2)
    c.upsert({"id": "p/1", "vector": [1, 0], "metadata": {"keep": 1, "drop": 2}, "text": "old"})
    rec = c.patch("p/1", metadata={"drop": None, "new": "x"}, text="new", namespace=["n"], importance=2.0)
    assert isinstance(rec, Record)
    assert (rec.metadata, rec.text, rec.namespace, rec.importance) == ({"keep": 1, "new": "x"}, "new", ("n",), 2.0)
    assert c.get("p/1").metadata == {"keep": 1, "new": "x"}
    rec = c.patch("p/1", vector=np.array([0.0, 2.0]), ttl_seconds=100)
    assert rec.vector == [0.0, 1.0]  # cosine stores unit vectors
    assert rec.expires_at is not None and rec.expires_at > time.time() + 50
    expect_error(lambda: c.patch("nope", text="x"), NotFound, "record_not_found")


def test_delete_and_count(api: Any) -> None:
    c = api.create_collection("del", dimension=4)
    fill(c, 10)
    assert c.count() == 10
    assert c.count({"even": True}) == 5
    assert c.count({"i": {"$gte": 7}}) == 3
    assert c.delete(["r000", "r001", "nope"]) == 2
    assert c.delete("r002") == 1
    assert c.delete(filter={"i": {"$gte": 7}}) == 3
    assert c.count() == 4
    assert c.get("r000") is None
    assert sorted(r.id for r in c.scan().records) == ["r003", "r004", "r005", "r006"]
    expect_error(lambda: c.delete(), InvalidArgument, "invalid_argument")
    assert c.delete(filter={}) == 4
    assert c.count() == 0


def test_scan_pagination_and_prefixes(api: Any) -> None:
    c = api.create_collection("scan", dimension=4)
    fill(c, 25)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = c.scan(cursor=cursor, limit=10, include=["metadata"])
        assert isinstance(page, ScanPage)
        pages += 1
        seen += [r.id for r in page.records]
        assert all(r.vector is None and r.metadata for r in page.records)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"r{i:03d}" for i in range(25)]
    assert [r.id for r in c.scan(id_prefix="r01").records] == [f"r{i:03d}" for i in range(10, 20)]
    g1 = c.scan(namespace_prefix=["ns", "g1"], limit=100).records
    assert [r.id for r in g1] == [f"r{i:03d}" for i in range(25) if i % 3 == 1]
    assert all(r.namespace == ("ns", "g1") for r in g1)
    assert [r.id for r in c.scan(filter={"tag": "a", "even": True}).records] == [f"r{i:03d}" for i in range(0, 12, 2)]
    full = c.scan(limit=1).records[0]
    assert full.vector is not None and full.text == "record number 0"


def test_list_namespaces(api: Any) -> None:
    c = api.create_collection("ns", dimension=2)
    c.upsert(
        [
            {"id": "1", "vector": [1, 0], "namespace": ["a", "b"]},
            {"id": "2", "vector": [1, 0], "namespace": ["a", "b", "c"]},
            {"id": "3", "vector": [1, 0], "namespace": ["a"]},
            {"id": "4", "vector": [1, 0], "namespace": ["x", "y"]},
            {"id": "5", "vector": [1, 0]},
        ]
    )
    assert c.list_namespaces() == [("a",), ("a", "b"), ("a", "b", "c"), ("x", "y")]
    assert c.list_namespaces(max_depth=1) == [("a",), ("x",)]
    assert c.list_namespaces(["a", "b"]) == [("a", "b"), ("a", "b", "c")]
    assert c.list_namespaces(["*", "b"]) == [("a", "b"), ("a", "b", "c")]
    assert c.list_namespaces(suffix=["y"]) == [("x", "y")]
    assert c.list_namespaces(limit=2, offset=1) == [("a", "b"), ("a", "b", "c")]
    c.delete(["4"])
    assert ("x", "y") not in c.list_namespaces()


def test_search_filter_include(api: Any) -> None:
    c = api.create_collection("search", dimension=4, indexed_fields={"tag": "keyword"})
    fill(c, 20)
    q = [1.0, 0.0, 0.5, 1.0]
    hits = c.search(q, k=5)
    assert len(hits) == 5 and all(isinstance(h, Hit) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].id == "r000"
    # Default include: metadata and text, not the vector.
    assert hits[0].record is not None
    assert hits[0].record.text == "record number 0" and hits[0].record.metadata["i"] == 0
    assert hits[0].record.vector is None
    with_vec = c.search(np.array(q, dtype=np.float32), k=1, include=["vector"])
    assert with_vec[0].record.vector is not None and with_vec[0].record.text is None
    bare = c.search(q, k=3, include=None)
    assert [h.id for h in bare] == [h.id for h in hits[:3]]
    assert all(h.record is None or (h.record.text is None and h.record.metadata == {}) for h in bare)
    filtered = c.search(q, k=20, filter={"tag": "b", "i": {"$lt": 15}})
    assert sorted(h.id for h in filtered) == [f"r{i:03d}" for i in range(10, 15)]
    exact = c.search(q, k=20, filter={"$or": [{"i": 3}, {"i": {"$in": [4, 5]}}]}, exact=True)
    assert sorted(h.id for h in exact) == ["r003", "r004", "r005"]
    assert c.search(q, k=3, min_score=2.0) == []

    # The text index is near-real-time (committed shortly after the write is acknowledged; in a
    # cluster, on each replica by itself): poll briefly for the answer, then check it.
    def top_is_seven() -> list[Hit] | None:
        found = c.search(text="number 7", mode="text", k=3)
        return found if found and found[0].id == "r007" else None

    text_hits = eventually(top_is_seven) or c.search(text="number 7", mode="text", k=3)
    assert text_hits[0].id == "r007"
    hybrid = c.search(q, text="number 7", mode="hybrid", k=3)
    assert hybrid and all(h.signals for h in hybrid)


def test_ttl_expiry_and_refresh(api: Any) -> None:
    c = api.create_collection("ttl", dimension=2, default_ttl_seconds=1.0)
    c.upsert(
        [
            {"id": "short", "vector": [1, 0]},
            {"id": "long", "vector": [0, 1], "ttl_seconds": 60},
            {"id": "forever", "vector": [1, 1], "expires_at": time.time() + 3600},
        ]
    )
    long = c.get("long")
    assert long.expires_at is not None and long.expires_at > time.time() + 50
    # refresh_ttl restarts the clock of "short" (it has a TTL), and of "long".
    time.sleep(0.5)
    before = c.get("short").expires_at
    assert c.refresh_ttl(["short", "missing"]) == 1
    assert c.get("short").expires_at > before
    c.get("short", refresh_ttl=True)
    time.sleep(1.3)
    assert c.get("short") is None
    assert "short" not in {h.id for h in c.search([1, 0], k=10)}
    assert "short" not in {r.id for r in c.scan().records}
    assert c.count() == 2
    assert c.refresh_ttl("short") == 0


def test_ttl_seconds_is_returned(api: Any) -> None:
    c = api.create_collection("ttls", dimension=2)
    c.upsert({"id": "a", "vector": [1, 0], "ttl_seconds": 600})
    assert c.get("a").ttl_seconds == 600
    assert c.get("a", include=["expires_at"]).ttl_seconds == 600


@needs_graph
def test_graph_link_edges_neighbors(api: Any) -> None:
    c = api.create_collection("graph", dimension=2)
    c.upsert([{"id": x, "vector": [1, i + 1], "text": f"node {x}"} for i, x in enumerate("abcde")])
    versions = c.link(
        [
            Edge("a", "knows", "b", weight=0.5, properties={"since": 2020}),
            {"src": "b", "relation": "knows", "dst": "c"},
            {"src": "a", "relation": "likes", "dst": "d", "weight": 2.0},
        ]
    )
    assert len(versions) == 3 and all(isinstance(x, str) for x in versions)
    out = c.edges("a")
    assert all(isinstance(e, Edge) for e in out)
    assert sorted((e.src, e.relation, e.dst, e.weight) for e in out) == [
        ("a", "knows", "b", 0.5),
        ("a", "likes", "d", 2.0),
    ]
    assert next(e for e in out if e.dst == "b").properties == {"since": 2020}
    assert [(e.src, e.dst) for e in c.edges("b", direction="in")] == [("a", "b")]
    assert [e.dst for e in c.edges("a", relation="likes")] == ["d"]
    assert len(c.edges("b", direction="both")) == 2
    n1 = c.neighbors("a")
    assert all(isinstance(h, Hit) for h in n1)
    assert sorted(h.id for h in n1) == ["b", "d"] and all(h.hop == 1 for h in n1)
    n2 = c.neighbors("a", hops=2, relations=["knows"])
    assert [(h.id, h.hop) for h in n2] == [("b", 1), ("c", 2)]
    assert [s["dst"] for s in n2[1].path] == ["b", "c"]
    assert n2[0].record is not None and n2[0].record.text == "node b"
    sub = c.subgraph(["a"], hops=1)
    assert sorted(r.id for r in sub["nodes"]) == ["a", "b", "d"]
    assert all(isinstance(r, Record) for r in sub["nodes"]) and all(isinstance(e, Edge) for e in sub["edges"])
    assert len(sub["edges"]) == 2
    expect_error(lambda: c.link({"src": "a", "relation": "knows", "dst": "zzz"}), NotFound, "record_not_found")
    expect_error(lambda: c.edges("zzz"), NotFound, "record_not_found")
    assert c.unlink([("a", "knows", "b"), ("a", "knows", "nope")]) == 1
    assert [e.dst for e in c.edges("a")] == ["d"]
    c.delete("d")  # deleting a record removes its edges
    assert c.edges("a") == []
    expanded = c.search([1, 2], k=1, expand={"hops": 1}, exact=True)
    assert expanded[0].id == "b" and {h.id for h in expanded} >= {"b", "c"}


# ----------------------------------------------------------- error parity
ERROR_CASES: dict[str, tuple[Callable[[Any, Any], Any], type[EngramError], str]] = {
    "dimension mismatch (upsert)": (
        lambda db, c: c.upsert({"id": "x", "vector": [1, 2, 3]}),
        DimensionMismatch,
        "dimension_mismatch",
    ),
    "dimension mismatch (search)": (lambda db, c: c.search([1.0], k=1), DimensionMismatch, "dimension_mismatch"),
    "NaN vector": (
        lambda db, c: c.upsert({"id": "x", "vector": [float("nan"), 1.0]}),
        InvalidArgument,
        "invalid_vector",
    ),
    "NaN in metadata": (
        lambda db, c: c.upsert({"id": "x", "vector": [1, 0], "metadata": {"a": [1, {"b": float("nan")}]}}),
        InvalidArgument,
        "invalid_metadata",
    ),
    "infinite ttl": (
        lambda db, c: c.patch("keep", ttl_seconds=float("inf")),
        InvalidArgument,
        "invalid_ttl",
    ),
    "NaN edge weight": (
        lambda db, c: c.link({"src": "keep", "relation": "r", "dst": "keep", "weight": float("nan")}),
        InvalidArgument,
        "invalid_weight",
    ),
    "infinite query vector": (lambda db, c: c.search([float("inf"), 1.0]), InvalidArgument, "invalid_vector"),
    "zero vector under cosine": (
        lambda db, c: c.upsert({"id": "x", "vector": [0, 0]}),
        InvalidArgument,
        "invalid_vector",
    ),
    "unknown filter operator": (
        lambda db, c: c.search([1, 0], filter={"a": {"$regex": "x"}}),
        InvalidFilter,
        "invalid_filter",
    ),
    "unknown filter operator (count)": (lambda db, c: c.count({"a": {"$near": 1}}), InvalidFilter, "invalid_filter"),
    "missing collection": (lambda db, c: db.get_collection("does-not-exist"), NotFound, "collection_not_found"),
    "duplicate collection": (
        lambda db, c: db.create_collection("errs", dimension=2, text_index=False),
        AlreadyExists,
        "collection_exists",
    ),
    "k = 0": (lambda db, c: c.search([1, 0], k=0), InvalidArgument, "invalid_k"),
    "k too large": (lambda db, c: c.search([1, 0], k=10_001), InvalidArgument, "invalid_k"),
    "patch a missing record": (lambda db, c: c.patch("ghost", text="x"), NotFound, "record_not_found"),
    "unknown include field": (lambda db, c: c.get("x", include=["vectors"]), InvalidArgument, "invalid_include"),
    "scan limit 0": (lambda db, c: c.scan(limit=0), InvalidArgument, "invalid_limit"),
    "bad cursor": (lambda db, c: c.scan(cursor="!!not-a-cursor!!"), InvalidArgument, "invalid_cursor"),
    "namespace is a string": (
        lambda db, c: c.upsert({"id": "x", "vector": [1, 0], "namespace": "a/b"}),
        InvalidArgument,
        "invalid_namespace",
    ),
    "duplicate ids in a batch": (
        lambda db, c: c.upsert([{"id": "x", "vector": [1, 0]}, {"id": "x", "vector": [0, 1]}]),
        InvalidArgument,
        "duplicate_id",
    ),
    "unknown record field": (
        lambda db, c: c.upsert({"id": "x", "vector": [1, 0], "colour": "red"}),
        InvalidArgument,
        "invalid_record",
    ),
    "bad collection name": (
        lambda db, c: db.create_collection("bad name!", dimension=2),
        InvalidArgument,
        "invalid_config",
    ),
    "text search without a text index": (
        lambda db, c: c.search(text="hello", mode="text"),
        FailedPrecondition,
        "text_index_disabled",
    ),
    "bad metric": (
        lambda db, c: db.create_collection("m", dimension=2, metric="hamming"),
        InvalidArgument,
        "invalid_config",
    ),
}


# Mismatches of the current server, reported to its owners. Strict xfail: when the
# server is fixed the case XPASSes, fails, and the entry must be removed.
REMOTE_MISMATCHES: dict[str, str] = {}


def _backend(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params.get("api", ""))


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_parity(api: Any, case: str, request: pytest.FixtureRequest) -> None:
    if _backend(request) != "embedded" and case in REMOTE_MISMATCHES:
        request.applymarker(pytest.mark.xfail(strict=True, reason=REMOTE_MISMATCHES[case]))
    fn, cls, code = ERROR_CASES[case]
    c = api.create_collection("errs", dimension=2, text_index=False)
    c.upsert({"id": "keep", "vector": [1, 0]})
    expect_error(lambda: fn(api, c), cls, code)
    # Bad input changes nothing: a refused request writes nothing, on every backend.
    assert c.count() == 1
    assert [x.name for x in api.list_collections()] == ["errs"]


# ------------------------------------------------- identical answers, exactly
def _norm(x: Any) -> Any:
    """Comparable form of a result: drop what differs between two runs (versions, clocks)."""
    if isinstance(x, Record):
        d = x.to_dict()
        d["ttl_seconds"] = x.ttl_seconds  # to_dict() leaves it out, but reads return it
        for k in ("version", "created_at", "updated_at", "expires_at"):
            d[k] = d[k] is not None  # presence must match, the value is a clock reading
        return ("Record", d)
    if isinstance(x, Edge):
        return ("Edge", x.src, x.relation, x.dst, x.weight, x.properties, x.version is not None)
    if isinstance(x, Hit):
        return ("Hit", x.id, x.score, _norm(x.record), x.hop, x.path, x.signals)
    if isinstance(x, ScanPage):
        return ("ScanPage", _norm(x.records), x.next_cursor)
    if isinstance(x, CollectionConfig):
        return ("Config", x.model_dump())
    if isinstance(x, tuple):
        return ("tuple", *map(_norm, x))
    if isinstance(x, list):
        return [_norm(y) for y in x]
    if isinstance(x, dict):
        return {k: _norm(y) for k, y in x.items()}
    if isinstance(x, (RemoteCollection, AsyncRemoteCollection, Collection, SyncAdapter)):
        return ("Collection", x.name, x.dimension, x.metric, _norm(x.config))
    return x


def _scenario(db: Any) -> list[Any]:
    """A little of everything; every return value is recorded and compared across backends."""
    out: list[Any] = []
    c = db.create_collection("same", 4, "cosine", indexed_fields={"i": "int"})
    out.append(c)
    fill(c, 12)
    c.upsert(Record(id="ttl", vector=[1, 2, 3, 4], ttl_seconds=600, importance=1.5, metadata={"f": 1.25}))
    out.append(type(c.upsert({"id": "n", "vector": np.arange(1, 5, dtype=np.float64)})[0]))
    out.append(c.get("ttl"))
    out.append(c.get("ttl", include=["expires_at"]))
    out.append(c.get_many(["r003", "n", "x"], include=["vector", "namespace"]))
    out.append(c.patch("r004", metadata={"tag": None, "z": [1, {"a": None}]}, text="patched"))
    out.append(c.count())
    out.append(c.count({"$not": {"i": {"$lt": 6}}}))
    out.append(c.scan(limit=5))
    out.append(c.scan(limit=5, namespace_prefix=["ns"], include=[]))
    out.append(c.list_namespaces(max_depth=2))
    out.append(c.search([1, 1, 1, 1], k=4, exact=True, include=["metadata", "namespace", "importance"]))
    out.append(c.search([1, 1, 1, 1], k=4, exact=True, include=None))
    # BM25 is near-real-time (refresh every 0.2 s): wait until it holds every write so
    # both runs score against the same corpus; the query ranks without ties, since the
    # order of equal BM25 scores is not defined.
    time.sleep(0.8)
    out.append(c.search(text="number 7 patched", mode="text", k=2))
    out.append(c.delete(["r001", "zz"]))
    out.append(c.refresh_ttl(["ttl", "r002"]))
    if HAS_GRAPH:
        out.append(type(c.link([Edge("r000", "rel", "r002", 0.5), Edge("r002", "rel", "r003")])[0]))
        out.append(c.edges("r002", direction="both"))
        out.append(c.neighbors("r000", hops=2, include=["metadata"]))
        out.append(c.subgraph("r000", hops=2, include=None))
        out.append(c.unlink([Edge("r000", "rel", "r002")]))
    out.append(db.list_collections())
    return out


def test_identical_answers_everywhere(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The same script gives the same answers (types and values) from the three deployments."""
    results: dict[str, list[Any]] = {}
    embedded = engramdb.open(tmp_path / "emb", storage={"sync_writes": False})
    try:
        results["embedded"] = [_norm(x) for x in _scenario(embedded)]
    finally:
        embedded.close()
    srv: ServerInfo = request.getfixturevalue("remote_server")
    with engramdb.connect(srv.url, srv.admin_key, tenant="t-" + uuid.uuid4().hex[:12]) as client:
        results["sync"] = [_norm(x) for x in _scenario(client)]
    with engramdb.connect(
        srv.url, srv.admin_key, tenant="t-" + uuid.uuid4().hex[:12], prefer_grpc=True, grpc_target=srv.grpc_target
    ) as client:
        results["grpc"] = [_norm(x) for x in _scenario(client)]
    loop = LoopThread()
    try:

        async def make() -> AsyncClient:
            return engramdb.AsyncClient(srv.url, srv.admin_key, tenant="t-" + uuid.uuid4().hex[:12])

        aclient = loop.run(make())
        results["async"] = [_norm(x) for x in _scenario(SyncAdapter(aclient, loop))]
        loop.run(aclient.close())
    finally:
        loop.close()
    diffs = [
        f"{kind} step {i}:\n  embedded: {want!r}\n  {kind}: {got!r}"
        for kind in ("sync", "async", "grpc")
        for i, (want, got) in enumerate(zip(results["embedded"], results[kind], strict=True))
        if got != want
    ]
    assert not diffs, "\n".join(diffs)


# ------------------------------------------------------ same signatures
# The signatures (names, kinds, defaults, coroutine or not) and the documentation of
# every method are checked against the Protocols of engramdb.api in
# tests/unit/test_public_surface.py; mypy checks the types.


def test_tenants_are_isolated_by_header(remote_server: ServerInfo) -> None:
    a, b = ("t-" + uuid.uuid4().hex[:12] for _ in range(2))
    with (
        engramdb.connect(remote_server.url, remote_server.admin_key, tenant=a) as ca,
        engramdb.connect(remote_server.url, remote_server.admin_key, tenant=b) as cb,
    ):
        ca.create_collection("mine", dimension=2).upsert({"id": "1", "vector": [1, 0]})
        assert [x.name for x in cb.list_collections()] == []
        expect_error(lambda: cb.get_collection("mine"), NotFound, "collection_not_found")
        assert ca.get_collection("mine").count() == 1


def test_bad_api_key_is_unauthenticated(remote_server: ServerInfo) -> None:
    with engramdb.connect(remote_server.url, "not-a-real-key", retries=0) as client:
        err = expect_error(client.list_collections, Unauthenticated, "invalid_api_key")
        assert "not-a-real-key" not in err.message


def test_api_key_from_environment(remote_server: ServerInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGRAMDB_API_KEY", remote_server.admin_key)
    with engramdb.connect(remote_server.url + "/v1/", tenant="t-" + uuid.uuid4().hex[:12]) as client:
        assert client.list_collections() == []


def test_async_client_concurrency(remote_server: ServerInfo) -> None:
    async def main() -> list[int]:
        async with engramdb.AsyncClient(
            remote_server.url, remote_server.admin_key, tenant="t-" + uuid.uuid4().hex[:12]
        ) as db:
            c = await db.create_collection("conc", dimension=2)
            await asyncio.gather(*(c.upsert({"id": str(i), "vector": [1, i]}) for i in range(20)))
            return list(await asyncio.gather(c.count(), c.count({"$not": {"id_prefix": "1"}})))

    assert asyncio.run(main()) == [20, 9]


# ============================================================ client only
@dataclass
class Canned:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FlakyServer:
    """A local HTTP server answering each request with the next canned response (the last one repeats)."""

    def __init__(self, responses: list[Canned]):
        self.responses = responses
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                r = outer.responses[min(len(outer.requests), len(outer.responses)) - 1]
                if r.delay:
                    time.sleep(r.delay)
                raw = r.body if isinstance(r.body, bytes) else json.dumps(r.body).encode()
                try:
                    self.send_response(r.status)
                    for k, val in r.headers.items():
                        self.send_header(k, val)
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def flaky() -> Iterator[Callable[[list[Canned]], FlakyServer]]:
    servers: list[FlakyServer] = []

    def make(responses: list[Canned]) -> FlakyServer:
        s = FlakyServer(responses)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


UNAVAILABLE = Canned(503, {"error": {"code": "unavailable", "message": "node is starting"}})
CFG = CollectionConfig(name="c", dimension=2)


def _remote_coll(kind: str, url: str, **kw: Any) -> tuple[Any, Callable[[], None]]:
    """A (blocking view of a) remote collection ``c`` on ``url`` without a get_collection round-trip."""
    if kind == "sync":
        client = Client(url, "secret-key", **kw)
        return RemoteCollection(client, CFG), client.close
    loop = LoopThread()

    async def make() -> AsyncClient:
        return AsyncClient(url, "secret-key", **kw)

    aclient = loop.run(make())

    def close() -> None:
        loop.run(aclient.close())
        loop.close()

    return SyncAdapter(AsyncRemoteCollection(aclient, CFG), loop), close


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_idempotent_call_retried_after_503s(flaky: Any, kind: str) -> None:
    srv = flaky([UNAVAILABLE, UNAVAILABLE, Canned(200, {"count": 5})])
    coll, close = _remote_coll(kind, srv.url, tenant="acme")
    try:
        assert coll.count() == 5
    finally:
        close()
    assert len(srv.requests) == 3
    method, path, headers, body = srv.requests[-1]
    assert (method, path, json.loads(body)) == ("POST", "/v1/collections/c/count", {})
    assert headers["Authorization"] == "Bearer secret-key"
    assert headers["X-EngramDB-Tenant"] == "acme"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_non_idempotent_call_not_retried(flaky: Any, kind: str) -> None:
    srv = flaky([UNAVAILABLE])
    coll, close = _remote_coll(kind, srv.url)
    try:
        expect_error(lambda: coll.delete(filter={"a": 1}), Unavailable, "unavailable")
        expect_error(lambda: coll.patch("x/y", text="t"), Unavailable, "unavailable")
    finally:
        close()
    assert [(m, p) for m, p, _, _ in srv.requests] == [
        ("POST", "/v1/collections/c/records/delete"),
        ("PATCH", "/v1/collections/c/records/x%2Fy"),  # ids are escaped into one path segment
    ]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_rate_limited_call_retried_after_retry_after(flaky: Any, kind: str) -> None:
    # A 429 is answered before anything runs, so even a non-idempotent delete may be resent.
    limited = Canned(429, {"error": {"code": "rate_limited", "message": "slow down"}}, {"Retry-After": "0.2"})
    srv = flaky([limited, Canned(200, {"deleted": 3})])
    coll, close = _remote_coll(kind, srv.url)
    t0 = time.monotonic()
    try:
        assert coll.delete(["a", "b", "c"]) == 3
    finally:
        close()
    assert time.monotonic() - t0 >= 0.2
    assert len(srv.requests) == 2


def test_long_retry_after_is_not_waited_for(flaky: Any) -> None:
    srv = flaky(
        [
            Canned(
                429,
                {"error": {"code": "rate_limited", "message": "later", "details": {"retry_after": 3600}}},
                {"Retry-After": "3600"},
            )
        ]
    )
    coll, close = _remote_coll("sync", srv.url)
    try:
        err = expect_error(coll.count, RateLimited, "rate_limited")
    finally:
        close()
    assert isinstance(err, RateLimited) and err.retry_after == 3600
    assert len(srv.requests) == 1


def test_retries_are_bounded(flaky: Any) -> None:
    srv = flaky([Canned(502, b"<html>bad gateway</html>", {"Content-Type": "text/html"})])
    coll, close = _remote_coll("sync", srv.url, retries=2)
    try:
        err = expect_error(lambda: coll.search([1, 0]), Unavailable, "unavailable")
    finally:
        close()
    assert "502" in err.message
    assert len(srv.requests) == 3


def test_server_own_timeout_is_not_retried(flaky: Any) -> None:
    # The server's 504 means the operation itself ran out of time (e.g. a traversal
    # past timeout_ms); unlike a proxy's 504 it would most likely fail again.
    srv = flaky([Canned(504, {"error": {"code": "deadline_exceeded", "message": "neighbors took too long"}})])
    coll, close = _remote_coll("sync", srv.url)
    try:
        expect_error(lambda: coll.neighbors("a"), DeadlineExceeded, "deadline_exceeded")
    finally:
        close()
    assert len(srv.requests) == 1


def test_retry_policy_decisions() -> None:
    from engramdb.client import calls

    policy = calls.RetryPolicy(retries=3, backoff_base=0.1, backoff_max=0.5, max_retry_after=10)
    read = calls.count("c", None)
    write = calls.delete("c", ["a"], None)
    ambiguous = calls.Failure(Unavailable("x"), retryable=True)
    refused = calls.Failure(Unavailable("x"), retryable=True, not_executed=True)
    final = calls.Failure(InvalidArgument("x"), retryable=False)
    assert 0.05 <= (policy.delay(read, 0, ambiguous) or 0) <= 0.1
    assert 0.2 <= (policy.delay(read, 2, ambiguous) or 0) <= 0.4
    many = calls.RetryPolicy(retries=20, backoff_base=0.1, backoff_max=0.5)
    assert 0.25 <= (many.delay(read, 10, ambiguous) or 0) <= 0.5  # each wait is capped
    assert policy.delay(read, 3, ambiguous) is None  # out of retries
    assert policy.delay(write, 0, ambiguous) is None  # may have run: never resent
    assert policy.delay(write, 0, refused) is not None  # certainly did not run
    assert policy.delay(read, 0, final) is None
    assert policy.delay(read, 0, calls.Failure(Unavailable("x"), retryable=True, retry_after=2.5)) == 2.5
    assert policy.delay(read, 0, calls.Failure(Unavailable("x"), retryable=True, retry_after=11)) is None
    # Which calls are idempotent is part of the documented contract (docs/client.md).
    assert calls.create_collection(
        "c",
        2,
        "cosine",
        index=None,
        embedder=None,
        default_ttl_seconds=None,
        indexed_fields=None,
        text_index=True,
        exist_ok=True,
    ).idempotent
    assert not calls.create_collection(
        "c",
        2,
        "cosine",
        index=None,
        embedder=None,
        default_ttl_seconds=None,
        indexed_fields=None,
        text_index=True,
        exist_ok=False,
    ).idempotent
    assert calls.upsert("c", 2, {"id": "a", "vector": [1, 0]}).idempotent
    assert calls.link("c", {"src": "a", "relation": "r", "dst": "b"}, False).idempotent
    assert not calls.patch(
        "c", 2, "a", metadata=None, text="t", namespace=None, ttl_seconds=None, importance=None, vector=None
    ).idempotent
    assert not calls.unlink("c", [("a", "r", "b")]).idempotent
    assert not calls.delete_collection("c").idempotent


def test_error_body_is_decoded_to_the_engine_class(flaky: Any) -> None:
    body = {"error": {"code": "dimension_mismatch", "message": "vector has 3 dimensions", "details": {"x": 1}}}
    srv = flaky([Canned(400, body)])
    coll, close = _remote_coll("sync", srv.url)
    try:
        err = expect_error(
            lambda: coll.upsert({"id": "a", "vector": [1, 2, 3]}), DimensionMismatch, "dimension_mismatch"
        )
    finally:
        close()
    assert (err.message, err.details) == ("vector has 3 dimensions", {"x": 1})
    assert len(srv.requests) == 1  # a 400 is never retried


def test_vectors_are_sent_as_lists_and_nan_never_leaves(flaky: Any) -> None:
    srv = flaky([Canned(200, {"versions": ["1"]})])
    coll, close = _remote_coll("sync", srv.url)
    try:
        # Record.vector is typed list[float], but numpy arrays work everywhere at runtime.
        vec: Any = np.array([0.5, 0.25], dtype=np.float32)
        coll.upsert(Record(id="a", vector=vec, ttl_seconds=5, namespace=("x",)))
        sent = json.loads(srv.requests[0][3])["records"][0]
        assert (sent["vector"], sent["ttl_seconds"], sent["namespace"]) == ([0.5, 0.25], 5, ["x"])
        expect_error(
            lambda: coll.upsert({"id": "b", "vector": np.array([np.nan, 1.0])}), InvalidArgument, "invalid_vector"
        )
        expect_error(lambda: coll.search([np.inf, 1.0, 2.0]), DimensionMismatch, "dimension_mismatch")
    finally:
        close()
    assert len(srv.requests) == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_connection_refused_is_unavailable(kind: str) -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there any more
    coll, close = _remote_coll(kind, url, retries=1)
    try:
        err = expect_error(coll.count, Unavailable, "unavailable")
    finally:
        close()
    assert url in err.message and "cannot connect" in err.message
    assert isinstance(err.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_timeout_is_deadline_exceeded(flaky: Any, kind: str) -> None:
    srv = flaky([Canned(200, {"count": 1}, delay=1.5)])
    coll, close = _remote_coll(kind, srv.url, timeout=0.3)
    t0 = time.monotonic()
    try:
        err = expect_error(coll.count, DeadlineExceeded, "deadline_exceeded")
    finally:
        close()
    assert time.monotonic() - t0 < 1.2  # not retried: the caller's time budget is spent
    assert "0.3" in err.message
    assert len(srv.requests) == 1


def test_closed_client_raises_closed() -> None:
    client = engramdb.connect("http://127.0.0.1:9")
    client.close()
    client.close()  # idempotent
    expect_error(client.list_collections, Closed, "closed")

    async def main() -> None:
        a = engramdb.AsyncClient("http://127.0.0.1:9")
        async with a:
            pass
        with pytest.raises(Closed):
            await a.list_collections()

    asyncio.run(main())


def test_bad_url_is_invalid_argument() -> None:
    expect_error(lambda: engramdb.connect("localhost:7878"), InvalidArgument, "invalid_url")
    expect_error(lambda: engramdb.AsyncClient("ftp://host"), InvalidArgument, "invalid_url")


def test_lazy_exports() -> None:
    assert engramdb.connect is __import__("engramdb.client.sync", fromlist=["connect"]).connect
    assert engramdb.AsyncClient is AsyncClient


# ================================================================ extraction
# The server extracts with the model its operator configured, so the remote
# ``extract`` takes no extractor (the parameter stays, optional, and must be
# None) and adds a per-call ``timeout``; otherwise the parameters, results and
# errors are the engine's.
EXTRACT_ANSWER = {
    "entities": [
        {"name": "Ada Lovelace", "type": "person", "description": "a mathematician", "attributes": {"born": 1815}},
        {"name": "Analytical Engine", "type": "machine", "description": "a mechanical computer"},
    ],
    "relations": [{"source": "Ada Lovelace", "relation": "wrote_about", "target": "Analytical Engine", "weight": 2}],
}


def _norm_extract(x: Any) -> Any:
    if isinstance(x, engramdb.types.ExtractResult):
        return ("ExtractResult", x.entities, [{**e, "version": e["version"] is not None} for e in x.edges])
    return _norm(x)


def _extract_scenario(db: Any, fake_url: str, extractor: Any) -> list[Any]:
    """Extraction, merging, reading back and every input error; results recorded for comparison."""
    out: list[Any] = []
    # The same operator-configured profile everywhere (a server takes nothing else from callers).
    c = db.create_collection("kg", 8, embedder={"profile": "fake"}, indexed_fields={"kind": "keyword"})
    out.append(c.extract("Ada Lovelace wrote about the Analytical Engine.", extractor, namespace=["docs"]))
    out.append(c.extract("Again.", extractor, source_id="doc-2", dedupe_threshold=0.5, instructions="people only"))
    out.append(c.get("entity:ada lovelace"))
    out.append(c.get_many(["entity:analytical engine"], include=["metadata", "namespace", "text"]))
    out.append(c.edges("entity:ada lovelace", direction="both"))
    out.append(c.count())
    bad: list[dict[str, Any]] = [
        {"text": ""},
        {"text": "   "},
        {"text": "t", "dedupe_threshold": 0},
        {"text": "t", "dedupe_threshold": 1.01},
        {"text": "t", "dedupe_threshold": "high"},
        {"text": "t", "dedupe_threshold": float("nan")},
        {"text": "t", "namespace": "docs"},
        {"text": "t", "namespace": ["ok", ""]},
        {"text": "t", "source_id": ""},
    ]
    for kw in bad:
        with pytest.raises(EngramError) as ei:
            c.extract(extractor=extractor, **kw)
        out.append((repr(kw), type(ei.value).__name__, ei.value.code))
    out.append(c.count())  # bad input changed nothing
    plain = db.create_collection("plain", 8)
    with pytest.raises(EngramError) as ei:
        plain.extract("t", extractor)
    out.append((type(ei.value).__name__, ei.value.code))
    return out


def test_extract_same_answers_everywhere(tmp_path: Path) -> None:
    """The embedded engine with a ChatExtractor and a server configured with the same model answer alike."""
    from conftest import start_server
    from engramdb.extract import ChatExtractor
    from fake_openai import FakeOpenAI

    results: dict[str, list[Any]] = {}
    with FakeOpenAI(dim=8, chat_content=json.dumps(EXTRACT_ANSWER)) as fake:
        profile = {"provider": "openai", "model": "fake-embed", "base_url": fake.url + "/v1", "dimension": 8}
        db = engramdb.open(tmp_path / "emb", storage={"sync_writes": False}, embedders={"fake": profile})
        try:
            with ChatExtractor(fake.url + "/v1", "fake-chat", max_retries=0) as ex:
                results["embedded"] = [_norm_extract(x) for x in _extract_scenario(db, fake.url, ex)]
        finally:
            db.close()
        sp = start_server(
            tmp_path / "srv",
            env={
                "ENGRAMDB_EXTRACTION__MODEL": "fake-chat",
                "ENGRAMDB_EXTRACTION__BASE_URL": fake.url + "/v1",
                "ENGRAMDB_EXTRACTION__MAX_RETRIES": "0",
                "ENGRAMDB_STORAGE__SYNC_WRITES": "false",
                **{f"ENGRAMDB_EMBEDDERS__FAKE__{k.upper()}": str(v) for k, v in profile.items()},
            },
        )
        try:
            with engramdb.connect(sp.base_url, sp.admin_key, tenant="sync") as client:
                results["sync"] = [_norm_extract(x) for x in _extract_scenario(client, fake.url, None)]
            loop = LoopThread()
            try:

                async def make() -> AsyncClient:
                    return engramdb.AsyncClient(sp.base_url, sp.admin_key, tenant="async")

                aclient = loop.run(make())
                adapted = SyncAdapter(aclient, loop)
                results["async"] = [_norm_extract(x) for x in _extract_scenario(adapted, fake.url, None)]
                loop.run(aclient.close())
            finally:
                loop.close()
        finally:
            sp.stop()
        import shutil

        if shutil.which("etcd") is not None:  # the same through a node of a 3-node cluster (CI has etcd)
            from engramdb.cluster.local import LocalCluster

            env = {
                "ENGRAMDB_EXTRACTION__MODEL": "fake-chat",
                "ENGRAMDB_EXTRACTION__BASE_URL": fake.url + "/v1",
                "ENGRAMDB_EXTRACTION__MAX_RETRIES": "0",
                **{f"ENGRAMDB_EMBEDDERS__FAKE__{k.upper()}": str(v) for k, v in profile.items()},
            }
            key = "extract-cluster-" + uuid.uuid4().hex
            with (
                LocalCluster(tmp_path / "cluster", 3, admin_key=key, env=env) as cluster,
                engramdb.connect(cluster.node(1).url, key, tenant="cluster") as client,
            ):
                results["cluster"] = [_norm_extract(x) for x in _extract_scenario(client, fake.url, None)]
    assert results["embedded"][0][1][0]["id"] == "entity:ada lovelace"  # the scenario really extracted
    diffs = [
        f"{kind} step {i}:\n  embedded: {want!r}\n  {kind}: {got!r}"
        for kind in [k for k in ("sync", "async", "cluster") if k in results]
        for i, (want, got) in enumerate(zip(results["embedded"], results[kind], strict=True))
        if got != want
    ]
    assert not diffs, "\n".join(diffs)


EXTRACTED = Canned(200, {"entities": [{"id": "entity:a", "name": "A", "type": "x", "merged": False}], "edges": []})


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_extract_request_and_retries(flaky: Any, kind: str) -> None:
    # Not idempotent (a repeat counts the mentions twice): an ambiguous 503 is not resent...
    srv = flaky([UNAVAILABLE])
    coll, close = _remote_coll(kind, srv.url)
    try:
        expect_error(lambda: coll.extract("some text", namespace=("u", "docs")), Unavailable, "unavailable")
        expect_error(lambda: coll.extract("t", object()), InvalidArgument, "invalid_argument")  # never sent
    finally:
        close()
    assert [(m, p, json.loads(b)) for m, p, _, b in srv.requests] == [
        (
            "POST",
            "/v1/collections/c/extract",
            {"text": "some text", "dedupe_threshold": 0.92, "namespace": ["u", "docs"]},
        )
    ]
    # ...but a 429 (extraction_busy: nothing ran) is.
    busy = Canned(429, {"error": {"code": "extraction_busy", "message": "busy"}}, {"Retry-After": "0.1"})
    srv = flaky([busy, EXTRACTED])
    coll, close = _remote_coll(kind, srv.url)
    try:
        res = coll.extract("t")
    finally:
        close()
    assert isinstance(res, engramdb.types.ExtractResult)
    assert res.entities == [{"id": "entity:a", "name": "A", "type": "x", "merged": False}] and res.edges == []
    assert len(srv.requests) == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_extract_waits_longer_than_the_client_timeout(flaky: Any, kind: str) -> None:
    """A model takes longer than a database call: extract waits at least 120 s unless told otherwise."""
    srv = flaky([Canned(200, EXTRACTED.body, delay=0.8)])
    coll, close = _remote_coll(kind, srv.url, timeout=0.3)
    try:
        assert coll.extract("t").entities[0]["id"] == "entity:a"
        err = expect_error(lambda: coll.extract("t", timeout=0.2), DeadlineExceeded, "deadline_exceeded")
        assert "0.2" in err.message
        expect_error(lambda: coll.extract("t", timeout=0), InvalidArgument, "invalid_timeout")
    finally:
        close()
    assert len(srv.requests) == 2
