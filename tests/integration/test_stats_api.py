"""The ``stats`` operation over REST and gRPC and through both clients: shape, scope and refusals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest

import engramdb
from conftest import ServerProcess, unique_name
from engramdb.errors import InvalidArgument, PermissionDenied
from engramdb.grpc_codec import engramdb_pb2 as pb
from engramdb.grpc_codec.engramdb_pb2_grpc import EngramDBStub

DEAD_REST = "http://127.0.0.1:9"  # nothing answers there: a call that is not sent over gRPC fails
NODE = {"process", "rocksdb"}
COLLECTION_KEYS = {
    "tenant",
    "name",
    "records",
    "vector_index_bytes",
    "id_maps_bytes",
    "payload_index_bytes",
    "text_index_bytes",
    "loaded",
}


def _tenant_with_data(server: ServerProcess, n: int = 40) -> str:
    tenant = unique_name("stats")
    with engramdb.connect(server.base_url, server.admin_key, tenant=tenant, retries=0) as db:
        c = db.create_collection("big", 4, indexed_fields={"n": "int"})
        c.upsert(
            [{"id": f"r{i}", "vector": [1.0, i, 0.5, 0.0], "text": f"t {i}", "metadata": {"n": i}} for i in range(n)]
        )
        db.create_collection("small", 4).upsert({"id": "a", "vector": [1.0, 0, 0, 0]})
    return tenant


# The text index's files change with its background commits and merges, so two calls a moment
# apart may see different sizes; the transports must agree on one settled state.
SETTLE_TRIES = 20


def _settled(
    first: Callable[[], dict[str, Any]], second: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One answer from each, once two taken back to back agree (or the last pair, which the caller checks)."""
    for _ in range(SETTLE_TRIES):
        a, b = first(), second()
        if _stable(a) == _stable(b):
            break
        time.sleep(0.25)
    return a, b


def _key(server: ServerProcess, tenant: str, role: str) -> str:
    with engramdb.connect(server.base_url, server.admin_key, tenant=tenant, retries=0) as db:
        return db.create_key(role).key


def _stable(got: dict[str, Any]) -> dict[str, Any]:
    """What two calls in a row agree on (the process's memory moves between them)."""
    return {k: v for k, v in got.items() if k not in NODE}


def test_rest_shape_scope_and_refusals(server: ServerProcess) -> None:
    tenant = _tenant_with_data(server)
    other = _tenant_with_data(server, n=3)
    url = server.base_url + "/v1/admin/stats"
    # The bootstrap key without a tenant: every tenant's collections.
    r = httpx.get(url, params={"limit": 1000}, headers=server.headers())
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"process", "rocksdb", "collections", "totals", "more"}
    assert body["process"]["rss_bytes"] > 0 and body["rocksdb"]["block_cache_capacity_bytes"] > 0
    seen = {(c["tenant"], c["name"]) for c in body["collections"]}
    assert {(tenant, "big"), (other, "small")} <= seen
    assert all(set(c) == COLLECTION_KEYS for c in body["collections"])
    # The bootstrap key naming a tenant: that tenant's.
    r = httpx.get(url, headers={**server.headers(), "X-EngramDB-Tenant": tenant})
    listed = r.json()["collections"]
    assert [c["name"] for c in listed] == ["big", "small"]  # the largest first
    big = listed[0]
    assert big["loaded"] and big["records"] == 40 and big["vector_index_bytes"] > 0 and big["id_maps_bytes"] > 0
    r = httpx.get(url, params={"limit": 1}, headers={**server.headers(), "X-EngramDB-Tenant": tenant})
    assert [c["name"] for c in r.json()["collections"]] == ["big"] and r.json()["more"] is True
    assert r.json()["totals"]["collections"] == 2

    # A tenant's admin: its own collections, nothing node-wide.
    admin = _key(server, tenant, "admin")
    r = httpx.get(url, headers=server.headers(admin))
    assert r.status_code == 200
    mine = r.json()
    assert mine["process"] is None and mine["rocksdb"] is None
    assert {c["tenant"] for c in mine["collections"]} == {tenant}
    # Naming another tenant is refused as for every operation.
    r = httpx.get(url, headers={**server.headers(admin), "X-EngramDB-Tenant": other})
    assert r.status_code == 403
    for role in ("reader", "writer"):
        r = httpx.get(url, headers=server.headers(_key(server, tenant, role)))
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied", role
    assert httpx.get(url).status_code == 401
    # 5,000 digits: past what int() converts (the route passes at most 9 on).
    for bad in ("0", "1001", "abc", "-1", "1" * 50, "1" * 5000):
        r = httpx.get(url, params={"limit": bad}, headers=server.headers())
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_limit", bad
    r = httpx.get(url + "?limit=1&limit=2", headers=server.headers())
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_limit"
    r = httpx.get(url, params={"tenant": "x"}, headers=server.headers())
    assert r.status_code == 400  # no other query parameter


def test_grpc_shape_scope_and_refusals(server: ServerProcess) -> None:
    tenant = _tenant_with_data(server)
    admin = _key(server, tenant, "admin")
    reader = _key(server, tenant, "reader")
    with grpc.insecure_channel(server.grpc_address) as ch:
        stub = EngramDBStub(ch)

        def call(key: str, limit: int | None = None, tenant_header: str | None = None) -> Any:
            md = [("authorization", f"Bearer {key}")]
            if tenant_header:
                md.append(("x-engramdb-tenant", tenant_header))
            req = pb.StatsRequest() if limit is None else pb.StatsRequest(limit=limit)
            return stub.Stats(req, metadata=md, timeout=30)

        full = call(server.admin_key, 1000)  # type: ignore[arg-type]
        assert full.HasField("process") and full.rocksdb.block_cache_capacity_bytes > 0
        assert {(c.tenant, c.name) for c in full.collections} >= {(tenant, "big"), (tenant, "small")}
        one = call(server.admin_key, 1, tenant)  # type: ignore[arg-type]
        assert [c.name for c in one.collections] == ["big"] and one.more and one.totals.collections == 2
        mine = call(admin)
        assert not mine.HasField("process") and not mine.HasField("rocksdb")
        assert {c.tenant for c in mine.collections} == {tenant}
        with pytest.raises(grpc.RpcError) as e:
            call(reader)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            call(server.admin_key, 0)  # type: ignore[arg-type]
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_both_clients_over_both_transports_agree(server: ServerProcess) -> None:
    tenant = _tenant_with_data(server)
    admin = _key(server, tenant, "admin")
    reader = _key(server, tenant, "reader")
    grpc_kw: dict[str, Any] = {"prefer_grpc": True, "grpc_target": server.grpc_address}

    with (
        engramdb.connect(server.base_url, admin, retries=0) as rest,
        engramdb.connect(DEAD_REST, admin, retries=0, **grpc_kw) as g,
    ):
        over_rest, over_grpc = _settled(rest.stats, g.stats)
        with pytest.raises(InvalidArgument) as e:
            g.stats(0)
        assert e.value.code == "invalid_limit"
    assert over_rest["process"] is None and over_grpc["process"] is None
    assert _stable(over_rest) == _stable(over_grpc)
    assert [c["name"] for c in over_rest["collections"]] == ["big", "small"]

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with (
            engramdb.AsyncClient(server.base_url, server.admin_key, tenant=tenant, retries=0) as a_r,
            engramdb.AsyncClient(DEAD_REST, server.admin_key, tenant=tenant, retries=0, **grpc_kw) as a_g,
        ):
            for _ in range(SETTLE_TRIES):
                got_rest, got_grpc = await a_r.stats(limit=1), await a_g.stats(limit=1)
                if _stable(got_rest) == _stable(got_grpc):
                    break
                await asyncio.sleep(0.25)
        async with engramdb.AsyncClient(DEAD_REST, reader, retries=0, **grpc_kw) as r:
            with pytest.raises(PermissionDenied):
                await r.stats()
        return got_rest, got_grpc

    a_rest, a_grpc = asyncio.run(run())
    assert set(a_rest) == set(a_grpc) == {"process", "rocksdb", "collections", "totals", "more"}
    assert set(a_rest["process"]) == set(a_grpc["process"]) == {"rss_bytes", "peak_rss_bytes"}
    assert set(a_rest["rocksdb"]) == set(a_grpc["rocksdb"])
    assert _stable(a_rest) == _stable(a_grpc)
    assert a_rest["more"] is True and [c["name"] for c in a_rest["collections"]] == ["big"]
    with engramdb.connect(server.base_url, reader, retries=0) as r, pytest.raises(PermissionDenied):
        r.stats()
