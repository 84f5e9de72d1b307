"""alter_collection over REST, gRPC and both clients, and a kill -9 in the middle of a field build."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

import engramdb
from conftest import ServerProcess, unique_name
from engramdb.client import AsyncClient, Client
from engramdb.errors import InvalidArgument
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from engramdb.server.grpc.convert import pack_vector

DIM = 4
LANGS = ("en", "fr", "de")


def _records(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"r{i:04d}", "vector": [1.0, float(i % 7), 0.5, float(i % 3)], "metadata": {"lang": LANGS[i % 3]}}
        for i in range(n)
    ]


def _want(n: int, lang: str) -> int:
    return sum(1 for i in range(n) if LANGS[i % 3] == lang)


def _wait_built_rest(admin: httpx.Client, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body = admin.get(f"/v1/collections/{name}").json()
        if body.get("reindex") is None:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def test_rest_alter(server: ServerProcess, admin: httpx.Client) -> None:
    name = unique_name("alter")
    assert admin.post("/v1/collections", json={"name": name, "dimension": DIM}).status_code == 201
    assert admin.post(f"/v1/collections/{name}/records", json={"records": _records(150)}).status_code == 200
    r = admin.patch(f"/v1/collections/{name}", json={"indexed_fields": {"lang": "keyword"}, "ef_search": 123})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["collection"]["indexed_fields"] == {"lang": "keyword"}
    assert body["collection"]["index"]["ef_search"] == 123
    assert body["reindex"] is None or body["reindex"]["fields"] == ["lang"]
    # Correct whether the build is still running or done.
    count = admin.post(f"/v1/collections/{name}/count", json={"filter": {"lang": "fr"}}).json()["count"]
    assert count == _want(150, "fr")
    info = _wait_built_rest(admin, name)
    assert info["count"] == 150 and info["reindex"] is None
    count = admin.post(f"/v1/collections/{name}/count", json={"filter": {"lang": "de"}}).json()["count"]
    assert count == _want(150, "de")
    hits = admin.post(
        f"/v1/collections/{name}/search", json={"vector": [1, 1, 1, 1], "k": 200, "filter": {"lang": "en"}}
    ).json()["hits"]
    assert len(hits) == _want(150, "en")

    # Default TTL: later writes only; null removes it; absent keeps it.
    r = admin.patch(f"/v1/collections/{name}", json={"default_ttl_seconds": 3600})
    assert r.json()["collection"]["default_ttl_seconds"] == 3600
    admin.post(f"/v1/collections/{name}/records", json={"records": [{"id": "late", "vector": [1, 0, 0, 0]}]})
    got = admin.post(f"/v1/collections/{name}/records/get", json={"ids": ["r0001", "late"]}).json()["records"]
    exp = {g["id"]: g["expires_at"] for g in got}
    assert exp["r0001"] is None and exp["late"] > time.time() + 3000
    assert (
        admin.patch(f"/v1/collections/{name}", json={"ef_search": 50}).json()["collection"]["default_ttl_seconds"]
        == 3600
    )
    r = admin.patch(f"/v1/collections/{name}", json={"default_ttl_seconds": None})
    assert r.json()["collection"]["default_ttl_seconds"] is None

    before = admin.get(f"/v1/collections/{name}").json()["collection"]
    for body_in, field in (
        ({"dimension": 8}, "dimension"),
        ({"metric": "l2"}, "metric"),
        ({"index": {"m": 32}}, "index.m"),
        ({"index": {"ef_construction": 400}}, "index.ef_construction"),
        ({"index": {"ef_search": 10}}, "index"),
        ({"embedder": {"profile": "x"}}, "embedder"),
        ({"text_index": False}, "text_index"),
        ({"name": "other"}, "name"),
        ({"dimension": 8, "ef_search": 10}, "dimension"),  # with a valid change: nothing changes
    ):
        r = admin.patch(f"/v1/collections/{name}", json=body_in)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "immutable_field" and err["details"]["field"] == field, err
        assert field in err["message"]
    for body_in in ({"ef_search": 0}, {"ef_search": "5"}, {"indexed_fields": {"x": "text"}}, {"bogus": 1}):
        r = admin.patch(f"/v1/collections/{name}", json=body_in)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_config", (body_in, r.text)
    assert admin.get(f"/v1/collections/{name}").json()["collection"] == before
    assert admin.patch("/v1/collections/no-such-coll", json={"ef_search": 10}).status_code == 404


def test_rest_alter_needs_the_writer_role(server: ServerProcess, admin: httpx.Client) -> None:
    name = unique_name("alter")
    admin.post("/v1/collections", json={"name": name, "dimension": DIM})
    keys = {}
    for role in ("reader", "writer"):
        r = admin.post("/v1/admin/keys", json={"role": role})
        keys[role] = r.json()["key"]
    with server.client(keys["reader"]) as reader:
        r = reader.patch(f"/v1/collections/{name}", json={"ef_search": 10})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    with server.client(keys["writer"]) as writer:
        assert writer.patch(f"/v1/collections/{name}", json={"ef_search": 10}).status_code == 200


def test_grpc_alter(server: ServerProcess) -> None:
    name = unique_name("alter")
    md = (("authorization", f"Bearer {server.admin_key}"),)
    with grpc.insecure_channel(server.grpc_address) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        stub.CreateCollection(
            pb.CreateCollectionRequest(name=name, dimension=DIM, indexed_fields={"old": "int"}), metadata=md
        )
        recs = [
            pb.Record(
                id=r["id"],
                vector=pack_vector(r["vector"]),
                metadata_json=json.dumps(r["metadata"]),
            )
            for r in _records(90)
        ]
        stub.Upsert(pb.UpsertRequest(coll=name, records=recs), metadata=md)
        resp = stub.AlterCollection(
            pb.AlterCollectionRequest(
                coll=name, indexed_fields={"lang": "keyword", "old": ""}, ef_search=77, default_ttl_seconds=60
            ),
            metadata=md,
        )
        assert dict(resp.collection.indexed_fields) == {"lang": "keyword"}
        assert json.loads(resp.collection.index_json)["ef_search"] == 77
        assert resp.collection.default_ttl_seconds == 60
        assert resp.reindex_json == "" or json.loads(resp.reindex_json)["fields"] == ["lang"]
        count = stub.Count(pb.CountRequest(coll=name, filter_json='{"lang": "fr"}'), metadata=md).count
        assert count == _want(90, "fr")
        deadline = time.monotonic() + 30
        while (info := stub.GetCollection(pb.GetCollectionRequest(coll=name), metadata=md)).reindex_json:
            assert json.loads(info.reindex_json)["state"] in ("building", "retrying")
            assert time.monotonic() < deadline
            time.sleep(0.02)
        resp = stub.AlterCollection(pb.AlterCollectionRequest(coll=name, clear_default_ttl=True), metadata=md)
        assert not resp.collection.HasField("default_ttl_seconds")
        for req, field in (
            (pb.AlterCollectionRequest(coll=name, dimension=8), "dimension"),
            (pb.AlterCollectionRequest(coll=name, metric="l2", ef_search=5), "metric"),
            (pb.AlterCollectionRequest(coll=name, index_json='{"m": 8}'), "index.m"),
            (pb.AlterCollectionRequest(coll=name, text_index=False), "text_index"),
        ):
            with pytest.raises(grpc.RpcError) as e:
                stub.AlterCollection(req, metadata=md)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            err = json.loads(e.value.details())
            assert err["code"] == "immutable_field" and err["details"]["field"] == field
        with pytest.raises(grpc.RpcError) as e:
            stub.AlterCollection(pb.AlterCollectionRequest(coll=name, indexed_fields={"x": "text"}), metadata=md)
        assert json.loads(e.value.details())["code"] == "invalid_config"
        with pytest.raises(grpc.RpcError) as e:
            stub.AlterCollection(
                pb.AlterCollectionRequest(coll=name, default_ttl_seconds=5, clear_default_ttl=True), metadata=md
            )
        assert json.loads(e.value.details())["code"] == "invalid_config"
        cfg = stub.GetCollection(pb.GetCollectionRequest(coll=name), metadata=md).collection
        assert json.loads(cfg.index_json)["ef_search"] == 77 and not cfg.HasField("default_ttl_seconds")


def test_sync_client_alter(server: ServerProcess) -> None:
    name = unique_name("alter")
    with Client(server.base_url, server.admin_key) as db:
        c = db.create_collection(name, DIM)
        c.upsert(_records(60))
        cfg = db.alter_collection(name, indexed_fields={"lang": "keyword"}, default_ttl_seconds=30, ef_search=99)
        assert cfg.indexed_fields == {"lang": "keyword"} and cfg.default_ttl_seconds == 30
        assert cfg.index.ef_search == 99
        assert c.count({"lang": "en"}) == _want(60, "en")
        assert db.alter_collection(name, default_ttl_seconds=None).default_ttl_seconds is None
        assert db.alter_collection(name, ef_search=5).indexed_fields == {"lang": "keyword"}  # others kept
        with pytest.raises(InvalidArgument) as e:
            db.alter_collection(name, ef_search=0)
        assert e.value.code == "invalid_config"
        with pytest.raises(TypeError):
            db.alter_collection(name, dimension=8)  # type: ignore[call-arg]
        assert db.get_collection(name).config.index.ef_search == 5


def test_async_client_alter(server: ServerProcess) -> None:
    name = unique_name("alter")

    async def run() -> None:
        async with AsyncClient(server.base_url, server.admin_key) as db:
            c = await db.create_collection(name, DIM)
            await c.upsert(_records(60))
            cfg = await db.alter_collection(name, indexed_fields={"lang": "keyword"}, ef_search=42)
            assert cfg.indexed_fields == {"lang": "keyword"} and cfg.index.ef_search == 42
            assert await c.count({"lang": "de"}) == _want(60, "de")
            with pytest.raises(InvalidArgument) as e:
                await db.alter_collection(name, indexed_fields={"lang": "nope"})
            assert e.value.code == "invalid_config"
            assert (await db.get_collection(name)).config.indexed_fields == {"lang": "keyword"}

    asyncio.run(run())


_CHILD = textwrap.dedent(
    """
    import sys, time
    import engramdb
    from engramdb.engine import indexes
    from engramdb.index.payload import PayloadIndex

    path, n = sys.argv[1], int(sys.argv[2])
    db = engramdb.open(path)
    c = db.create_collection("c", 4)
    langs = ("en", "fr", "de")
    c.upsert([{"id": f"r{i:04d}", "vector": [1.0, float(i % 7), 0.5, 1.0], "metadata": {"lang": langs[i % 3]}}
              for i in range(n)])
    db.snapshot()
    indexes.REINDEX_CHUNK = 5
    slow = PayloadIndex.backfill
    def backfill(self, label, md):
        time.sleep(0.002)
        slow(self, label, md)
    PayloadIndex.backfill = backfill
    db.alter_collection("c", indexed_fields={"lang": "keyword"})
    while (c.reindex_status() or {}).get("done", 0) < 50:
        time.sleep(0.01)
    print("BUILDING", flush=True)
    time.sleep(600)
    """
)


def test_kill_9_mid_build_then_the_load_builds_it(tmp_path: Path) -> None:
    path = tmp_path / "d"
    n = 600
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"BUILDING", proc.stderr.read() if proc.stderr else b""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with engramdb.open(path) as db:
        c = db.get_collection("c")
        assert c.config.indexed_fields == {"lang": "keyword"}  # the alter was stored before the build began
        for lang in LANGS:
            assert c.count({"lang": lang}) == sum(1 for i in range(n) if LANGS[i % 3] == lang)
        deadline = time.monotonic() + 30
        while c.reindex_status() is not None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert c.indexes.payload.fields == {"lang": "keyword"}
        assert c.count({"lang": "fr"}) == _want(n, "fr")
