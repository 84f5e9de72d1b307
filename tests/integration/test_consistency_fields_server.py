"""``consistency`` on every data request and ``shards`` / ``replication_factor`` at create, against a
real single-node server, over REST, gRPC and both Python clients (docs/api-contract.md, docs/cluster.md).

One node is every replica of every shard: each level is accepted and answers as without it, any other
value is refused with 400 / INVALID_ARGUMENT ``invalid_consistency`` and changes nothing; a layout the
node cannot hold is refused (``invalid_shards``, ``not_a_cluster``) and creates nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest

import engramdb
from conftest import ServerProcess, unique_name
from engramdb.errors import EngramError, FailedPrecondition, InvalidArgument
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from engramdb.server.grpc.convert import collection_to_dict, pack_vector

LEVELS = ["one", "quorum", "all"]
BAD = "ALL"
VEC = [1.0, 0.0, 0.0]
SC = grpc.StatusCode


@pytest.fixture
def coll(admin: httpx.Client) -> str:
    """A collection with records a, b and the edge a -r-> b."""
    name = unique_name("cl")
    assert admin.post("/v1/collections", json={"name": name, "dimension": 3}).status_code == 201
    recs = [{"id": "a", "vector": VEC, "text": "alpha"}, {"id": "b", "vector": [0.0, 1.0, 0.0], "text": "beta"}]
    assert admin.post(f"/v1/collections/{name}/records", json={"records": recs}).status_code == 200
    edge = {"src": "a", "relation": "r", "dst": "b"}
    assert admin.post(f"/v1/collections/{name}/edges", json={"edges": [edge]}).status_code == 200
    return name


def _state(admin: httpx.Client, name: str) -> Any:
    """Everything a write could change: records with their versions, and the edges of a and b."""
    scan = admin.post(f"/v1/collections/{name}/records/scan", json={"include": ["text", "expires_at"]}).json()
    edges = [
        admin.post(f"/v1/collections/{name}/edges/list", json={"id": i, "direction": "both"}).json() for i in ("a", "b")
    ]
    return scan, edges


# ----------------------------------------------------------------------- REST
# (method, path under the collection, JSON body or None for a query-string route, success status)
def _rest_ops() -> dict[str, tuple[str, str, dict[str, Any] | None, int]]:
    return {
        "get_collection": ("GET", "", None, 200),
        "upsert": ("POST", "/records", {"records": [{"id": "a", "vector": VEC, "text": "alpha"}]}, 200),
        "get": ("POST", "/records/get", {"ids": ["a"]}, 200),
        "get_one": ("GET", "/records/a", None, 200),
        "patch": ("PATCH", "/records/a", {"text": "alpha"}, 200),
        "delete": ("POST", "/records/delete", {"ids": ["missing"]}, 200),
        "delete_one": ("DELETE", "/records/missing", None, 200),
        "scan": ("POST", "/records/scan", {}, 200),
        "count": ("POST", "/count", {}, 200),
        "refresh_ttl": ("POST", "/records/refresh_ttl", {"ids": ["a"]}, 200),
        "search": ("POST", "/search", {"vector": VEC, "k": 2}, 200),
        "list_namespaces": ("POST", "/namespaces", {}, 200),
        "link": ("POST", "/edges", {"edges": [{"src": "a", "relation": "r", "dst": "b"}]}, 200),
        "unlink": ("POST", "/edges/delete", {"edges": [{"src": "b", "relation": "r", "dst": "a"}]}, 200),
        "edges": ("POST", "/edges/list", {"id": "a"}, 200),
        "neighbors": ("POST", "/neighbors", {"id": "a"}, 200),
        "subgraph": ("POST", "/subgraph", {"ids": ["a"]}, 200),
        # The shared server has no extraction model: a valid level gets as far as saying so.
        "extract": ("POST", "/extract", {"text": "Ada wrote about the engine."}, 409),
    }


def _rest(admin: httpx.Client, name: str, op: str, level: Any) -> httpx.Response:
    method, path, body, _ = _rest_ops()[op]
    url = f"/v1/collections/{name}{path}"
    if body is None:
        return admin.request(method, url, params={"consistency": level})
    return admin.request(method, url, json={**body, "consistency": level})


@pytest.mark.parametrize("op", sorted(_rest_ops()))
def test_rest_every_operation_takes_consistency(admin: httpx.Client, coll: str, op: str) -> None:
    expected = _rest_ops()[op][3]
    for level in LEVELS:
        r = _rest(admin, coll, op, level)
        assert r.status_code == expected, (level, r.text)
    before = _state(admin, coll)
    for bad in (BAD, "two", "", 3, ["one"]):
        if _rest_ops()[op][2] is None and not isinstance(bad, str):
            continue  # a query string carries text only
        r = _rest(admin, coll, op, bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_consistency", r.text
    assert _state(admin, coll) == before


def test_rest_a_write_with_a_bad_level_writes_nothing(admin: httpx.Client, coll: str) -> None:
    before = _state(admin, coll)
    for op, body in (
        ("upsert", {"records": [{"id": "c", "vector": VEC}]}),
        ("delete", {"ids": ["a", "b"]}),
        ("link", {"edges": [{"src": "b", "relation": "r", "dst": "a"}]}),
        ("unlink", {"edges": [{"src": "a", "relation": "r", "dst": "b"}]}),
        ("refresh_ttl", {"ids": ["a"]}),
    ):
        _, path, _, _ = _rest_ops()[op]
        r = admin.post(f"/v1/collections/{coll}{path}", json={**body, "consistency": "QUORUM"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_consistency", (op, r.text)
    for method, path in (("PATCH", "/records/a"), ("DELETE", "/records/a")):
        body = {"text": "x", "consistency": "every"} if method == "PATCH" else None
        params = None if body else {"consistency": "every"}
        r = admin.request(method, f"/v1/collections/{coll}{path}", json=body, params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_consistency", r.text
    assert _state(admin, coll) == before


def test_rest_a_repeated_query_level_is_refused(admin: httpx.Client, coll: str) -> None:
    r = admin.get(f"/v1/collections/{coll}/records/a", params=[("consistency", "one"), ("consistency", "all")])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_consistency", r.text
    r = admin.get(f"/v1/collections/{coll}/records/a", params={"consistency": "all", "include": "text"})
    assert r.status_code == 200 and r.json()["record"]["text"] == "alpha"


def test_rest_create_layout(admin: httpx.Client) -> None:
    for body, status, code in (
        ({"shards": 3}, 400, "invalid_shards"),
        ({"shards": 0}, 400, "invalid_shards"),
        ({"shards": "2"}, 400, "invalid_shards"),
        ({"shards": 8192}, 400, "invalid_shards"),
        ({"replication_factor": 0}, 400, "invalid_replication_factor"),
        ({"replication_factor": 17}, 400, "invalid_replication_factor"),
        ({"shards": 2}, 409, "not_a_cluster"),
        ({"replication_factor": 3}, 409, "not_a_cluster"),
        ({"shards": 8, "replication_factor": 3}, 409, "not_a_cluster"),
    ):
        name = unique_name("layout")
        r = admin.post("/v1/collections", json={"name": name, "dimension": 3, **body})
        assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)
        assert admin.get(f"/v1/collections/{name}").status_code == 404  # nothing created
    name = unique_name("layout")
    r = admin.post("/v1/collections", json={"name": name, "dimension": 3, "shards": 1, "replication_factor": 1})
    assert r.status_code == 201 and r.json()["collection"]["shards"] == 1
    info = admin.get(f"/v1/collections/{name}").json()["collection"]
    assert (info["shards"], info["replication_factor"]) == (1, 1)
    listed = {c["name"]: c for c in admin.get("/v1/collections").json()["collections"]}
    assert (listed[name]["shards"], listed[name]["replication_factor"]) == (1, 1)
    for field in ("shards", "replication_factor"):
        r = admin.patch(f"/v1/collections/{name}", json={field: 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "immutable_field", r.text


def test_openapi_documents_the_fields(admin: httpx.Client) -> None:
    doc = admin.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for model in ("UpsertBody", "GetBody", "SearchBody", "ScanBody", "LinkBody", "NeighborsBody", "ExtractBody"):
        assert "consistency" in schemas[model]["properties"], model
    assert {"shards", "replication_factor"} <= set(schemas["CreateCollectionBody"]["properties"])
    get_one = doc["paths"]["/v1/collections/{coll}/records/{id}"]["get"]["parameters"]
    assert any(p["name"] == "consistency" and p["in"] == "query" for p in get_one)


# ----------------------------------------------------------------------- gRPC
@pytest.fixture
def stub(server: ServerProcess) -> Iterator[Callable[[str, Any], Any]]:
    md = (("authorization", f"Bearer {server.admin_key}"),)
    with grpc.insecure_channel(server.grpc_address) as ch:
        s = pb_grpc.EngramDBStub(ch)
        yield lambda method, req: getattr(s, method)(req, metadata=md, timeout=30)


def _grpc_requests(name: str, level: str) -> dict[str, Any]:
    c = {"coll": name, "consistency": level}
    return {
        "GetCollection": pb.GetCollectionRequest(**c),
        "Upsert": pb.UpsertRequest(records=[pb.Record(id="a", vector=pack_vector(VEC), text="alpha")], **c),
        "Get": pb.GetRequest(ids=["a"], **c),
        "Patch": pb.PatchRequest(id="a", text="alpha", **c),
        "Delete": pb.DeleteRequest(ids=["missing"], **c),
        "Scan": pb.ScanRequest(**c),
        "Count": pb.CountRequest(**c),
        "RefreshTtl": pb.RefreshTtlRequest(ids=["a"], **c),
        "Search": pb.SearchRequest(vector=pack_vector(VEC), k=2, **c),
        "ListNamespaces": pb.ListNamespacesRequest(**c),
        "Link": pb.LinkRequest(edges=[pb.Edge(src="a", relation="r", dst="b")], **c),
        "Unlink": pb.UnlinkRequest(edges=[pb.EdgeKey(src="b", relation="r", dst="a")], **c),
        "Edges": pb.EdgesRequest(id="a", **c),
        "Neighbors": pb.NeighborsRequest(id="a", **c),
        "Subgraph": pb.SubgraphRequest(ids=["a"], **c),
        "Extract": pb.ExtractRequest(text="Ada wrote about the engine.", **c),
    }


GRPC_METHODS = sorted(_grpc_requests("x", "one"))


@pytest.mark.parametrize("method", GRPC_METHODS)
def test_grpc_every_rpc_takes_consistency(
    stub: Callable[[str, Any], Any], admin: httpx.Client, coll: str, method: str
) -> None:
    for level in LEVELS:
        if method == "Extract":
            with pytest.raises(grpc.RpcError) as e:
                stub(method, _grpc_requests(coll, level)[method])
            assert json.loads(e.value.details())["code"] == "extraction_not_configured"
        else:
            stub(method, _grpc_requests(coll, level)[method])
    before = _state(admin, coll)
    for bad in (BAD, "", "majority"):
        with pytest.raises(grpc.RpcError) as e:
            stub(method, _grpc_requests(coll, bad)[method])
        assert e.value.code() == SC.INVALID_ARGUMENT
        assert json.loads(e.value.details())["code"] == "invalid_consistency"
    assert _state(admin, coll) == before


def test_grpc_create_layout(stub: Callable[[str, Any], Any]) -> None:
    for kw, status, code in (
        ({"shards": 3}, SC.INVALID_ARGUMENT, "invalid_shards"),
        ({"replication_factor": 0}, SC.INVALID_ARGUMENT, "invalid_replication_factor"),
        ({"shards": 2}, SC.FAILED_PRECONDITION, "not_a_cluster"),
        ({"replication_factor": 2}, SC.FAILED_PRECONDITION, "not_a_cluster"),
    ):
        name = unique_name("glayout")
        with pytest.raises(grpc.RpcError) as e:
            stub("CreateCollection", pb.CreateCollectionRequest(name=name, dimension=3, **kw))
        assert e.value.code() == status and json.loads(e.value.details())["code"] == code, kw
        with pytest.raises(grpc.RpcError) as e:
            stub("GetCollection", pb.GetCollectionRequest(coll=name))
        assert e.value.code() == SC.NOT_FOUND
    name = unique_name("glayout")
    made = stub("CreateCollection", pb.CreateCollectionRequest(name=name, dimension=3, shards=1, replication_factor=1))
    assert (made.collection.shards, made.collection.replication_factor) == (1, 1)
    got = stub("GetCollection", pb.GetCollectionRequest(coll=name, consistency="all")).collection
    assert (collection_to_dict(got)["shards"], collection_to_dict(got)["replication_factor"]) == (1, 1)
    listed = {c.name: c for c in stub("ListCollections", pb.ListCollectionsRequest()).collections}
    assert (listed[name].shards, listed[name].replication_factor) == (1, 1)
    for kw in ({"shards": 1}, {"replication_factor": 1}):
        with pytest.raises(grpc.RpcError) as e:
            stub("AlterCollection", pb.AlterCollectionRequest(coll=name, **kw))
        assert json.loads(e.value.details())["code"] == "immutable_field"


# -------------------------------------------------------------------- clients
CLIENT_CALLS: dict[str, Callable[[Any], Any]] = {
    "upsert": lambda c: c.upsert({"id": "a", "vector": VEC, "text": "alpha"}),
    "patch": lambda c: c.patch("a", text="alpha"),
    "delete": lambda c: c.delete(["missing"]),
    "refresh_ttl": lambda c: c.refresh_ttl(["a"]),
    "get": lambda c: c.get("a"),
    "get_many": lambda c: c.get_many(["a"]),
    "count": lambda c: c.count(),
    "scan": lambda c: c.scan(),
    "list_namespaces": lambda c: c.list_namespaces(),
    "search": lambda c: c.search(VEC, 2),
    "link": lambda c: c.link({"src": "a", "relation": "r", "dst": "b"}),
    "unlink": lambda c: c.unlink([("b", "r", "a")]),
    "edges": lambda c: c.edges("a"),
    "neighbors": lambda c: c.neighbors("a"),
    "subgraph": lambda c: c.subgraph(["a"]),
}


def _check_client_collection(run: Callable[[Any], Any], coll: Any, admin: httpx.Client, name: str) -> None:
    """Every call at every level answers as without one; a bad level is refused, whoever checks it."""
    # Answers that no version stamp enters: the same with and without a level.
    stable = ("count", "list_namespaces", "delete", "refresh_ttl", "unlink")
    plain = {m: run(CLIENT_CALLS[m](coll)) for m in stable}
    for level in LEVELS:
        view = coll.with_consistency(level)
        for m, call in CLIENT_CALLS.items():
            got = run(call(view))
            if m in plain:
                assert got == plain[m], (level, m)
        with pytest.raises(FailedPrecondition) as fp:
            run(view.extract("Ada wrote about the engine."))
        assert fp.value.code == "extraction_not_configured"
    before = _state(admin, name)
    with pytest.raises(InvalidArgument) as e:
        coll.with_consistency(BAD)  # refused by the client, before any request
    assert e.value.code == "invalid_consistency"
    forged = coll.with_consistency("one")
    forged._consistency = BAD  # as if the client had not checked: the server refuses it the same way
    for m, call in CLIENT_CALLS.items():
        with pytest.raises(InvalidArgument) as e:
            run(call(forged))
        assert e.value.code == "invalid_consistency", m
    assert _state(admin, name) == before


def _check_client_create(run: Callable[[Any], Any], db: Any) -> None:
    for kw, code in (
        ({"shards": 3}, "invalid_shards"),
        ({"replication_factor": 17}, "invalid_replication_factor"),
        ({"shards": 2}, "not_a_cluster"),
        ({"replication_factor": 2}, "not_a_cluster"),
    ):
        name = unique_name("clayout")
        with pytest.raises(EngramError) as e:
            run(db.create_collection(name, 3, **kw))
        assert e.value.code == code, kw
        assert name not in [c.name for c in run(db.list_collections())]
    name = unique_name("clayout")
    made = run(db.create_collection(name, 3, shards=1, replication_factor=1))
    assert (made.config.shards, made.config.replication_factor) == (1, 1)
    [cfg] = [c for c in run(db.list_collections()) if c.name == name]
    assert (cfg.shards, cfg.replication_factor) == (1, 1)
    assert run(db.create_collection(name, 3, exist_ok=True)).config == made.config


def test_sync_client(server: ServerProcess, admin: httpx.Client, coll: str) -> None:
    with engramdb.connect(server.base_url, api_key=server.admin_key, retries=0) as db:
        _check_client_collection(lambda x: x, db.get_collection(coll), admin, coll)
        _check_client_create(lambda x: x, db)


def test_async_client(server: ServerProcess, admin: httpx.Client, coll: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with engramdb.AsyncClient(server.base_url, api_key=server.admin_key, retries=0) as db:
            # The checks are written once, blocking: each coroutine runs on this loop from a worker thread.
            def run(aw: Any) -> Any:
                return asyncio.run_coroutine_threadsafe(aw, loop).result(60)

            c = await db.get_collection(coll)
            await loop.run_in_executor(None, _check_client_collection, run, c, admin, coll)
            await loop.run_in_executor(None, _check_client_create, run, db)

    asyncio.run(main())
