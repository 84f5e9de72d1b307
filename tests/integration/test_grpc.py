"""The gRPC adapter end to end: every RPC through a real channel, errors, vectors, REST parity.

Most tests talk to the shared ``server`` of conftest.py (a real ``engramdb
serve`` process with REST and gRPC). Tests of ``start_grpc_server`` itself
(TLS, mTLS, a taken port, graceful stop) start it in-process on a free
loopback port with their own settings.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from conftest import ServerProcess, free_port, unique_name
from engramdb.config import load
from engramdb.errors import InvalidArgument, Unavailable
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from engramdb.server.grpc import start_grpc_server
from engramdb.server.grpc.convert import (
    RPCS,
    collection_to_dict,
    edge_to_dict,
    hit_to_dict,
    pack_vector,
    record_to_dict,
)
from engramdb.server.grpc.servicer import SERVICE_NAME, ip_from_peer

SC = grpc.StatusCode


class Api:
    """The generated stub with one key's metadata (and a deadline) on every call."""

    def __init__(self, channel: grpc.Channel, key: str | None, extra: tuple[tuple[str, str], ...] = ()):
        self._stub = pb_grpc.EngramDBStub(channel)
        self.metadata = ((("authorization", f"Bearer {key}"),) if key else ()) + extra

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, **kw: Any) -> Any:
            return method(request, metadata=self.metadata, timeout=30, **kw)

        return call

    def with_call(self, name: str, request: Any) -> tuple[Any, grpc.Call]:
        """The response and the call (for its trailing metadata)."""
        response, call = getattr(self._stub, name).with_call(request, metadata=self.metadata, timeout=30)
        return response, call


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture
def api(channel: grpc.Channel, server: ServerProcess) -> Api:
    return Api(channel, server.admin_key)


@pytest.fixture
def coll(api: Api) -> str:
    name = unique_name("grpc")
    api.CreateCollection(pb.CreateCollectionRequest(name=name, dimension=3, indexed_fields={"kind": "keyword"}))
    return name


def expect_error(fn: Callable[[], Any], status: grpc.StatusCode, code: str | None = None) -> dict[str, Any]:
    """Call ``fn``; assert the status, the JSON body in the details and the error-code trailer."""
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    assert err.code() == status, (err.code(), err.details())
    body = json.loads(err.details())
    assert {"code", "message"} <= set(body) <= {"code", "kind", "message", "details"}, body
    if code is not None:
        assert body["code"] == code, body
    trailers = dict(err.trailing_metadata() or ())
    assert trailers["engramdb-error-code"] == body["code"]
    assert trailers.get("x-request-id")
    return body


def records() -> list[pb.Record]:
    def rec(rid: str, vec: list[float], **kw: Any) -> pb.Record:
        return pb.Record(id=rid, vector=pack_vector(vec), **kw)

    return [
        rec("a", [1, 0, 0], text="the quick brown fox", metadata_json='{"kind": "x", "n": 1}'),
        rec("b", [0, 1, 0], text="lazy dogs sleep", metadata_json='{"kind": "y", "n": 2}', namespace=["u1", "mem"]),
        rec("c", [0, 0, 1], text="a brown dog", metadata_json='{"kind": "x", "n": 3}', namespace=["u1", "notes"],
            ttl_seconds=3600),
        rec("dir/with slash", [1, 1, 0], metadata_json='{"kind": "z"}', namespace=["u2"]),
    ]  # fmt: skip


def eventually(fn: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    """Poll ``fn`` until ``ok`` holds (text search is near-real-time)."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if ok(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


# ------------------------------------------------------------------ the table
def test_every_rpc_has_a_converter_and_a_service_op() -> None:
    from engramdb.service import OPS

    methods = pb.DESCRIPTOR.services_by_name["EngramDB"].methods_by_name
    assert set(methods) == set(RPCS)
    for name, rpc in RPCS.items():
        assert rpc.op in OPS, name
        assert methods[name].input_type.full_name == rpc.request.DESCRIPTOR.full_name, name
        assert methods[name].output_type.full_name == rpc.response.DESCRIPTOR.full_name, name
    assert pb.DESCRIPTOR.services_by_name["EngramDB"].full_name == SERVICE_NAME


def test_peer_parsing() -> None:
    assert ip_from_peer("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert ip_from_peer("ipv6:[::1]:5000") == "::1"
    assert ip_from_peer("ipv6:%5B::1%5D:5000") == "::1"
    assert ip_from_peer("unix:/tmp/sock") is None
    assert ip_from_peer("") is None


# ---------------------------------------------------------------- collections
def test_collection_lifecycle(api: Api) -> None:
    name = unique_name("grpc-c")
    req = pb.CreateCollectionRequest(
        name=name,
        dimension=4,
        metric="dot",
        index_json='{"m": 8, "ef_search": 32}',
        indexed_fields={"tag": "keyword", "n": "int"},
        default_ttl_seconds=60.0,
    )
    created = collection_to_dict(api.CreateCollection(req).collection)
    assert created["name"] == name and created["dimension"] == 4 and created["metric"] == "dot"
    assert created["index"] == {"m": 8, "ef_construction": 200, "ef_search": 32}
    assert created["indexed_fields"] == {"tag": "keyword", "n": "int"}
    assert created["default_ttl_seconds"] == 60.0 and created["text_index"] is True and created["embedder"] is None

    expect_error(lambda: api.CreateCollection(req), SC.ALREADY_EXISTS)
    req.exist_ok = True
    assert collection_to_dict(api.CreateCollection(req).collection) == created

    got = api.GetCollection(pb.GetCollectionRequest(coll=name))
    assert collection_to_dict(got.collection) == created and got.count == 0
    listed = api.ListCollections(pb.ListCollectionsRequest()).collections
    assert name in [c.name for c in listed]

    assert api.DeleteCollection(pb.DeleteCollectionRequest(coll=name)).deleted is True
    expect_error(lambda: api.GetCollection(pb.GetCollectionRequest(coll=name)), SC.NOT_FOUND)
    expect_error(lambda: api.DeleteCollection(pb.DeleteCollectionRequest(coll=name)), SC.NOT_FOUND)


def test_create_collection_validation(api: Api) -> None:
    bad_json = pb.CreateCollectionRequest(name=unique_name("g"), dimension=3, index_json="{m: 8")
    body = expect_error(lambda: api.CreateCollection(bad_json), SC.INVALID_ARGUMENT, "invalid_json")
    assert body["details"]["field"] == "index_json"
    expect_error(lambda: api.CreateCollection(pb.CreateCollectionRequest(name="bad name!", dimension=3)),
                 SC.INVALID_ARGUMENT)  # fmt: skip
    expect_error(
        lambda: api.CreateCollection(pb.CreateCollectionRequest(name=unique_name("g"), dimension=0)),
        SC.INVALID_ARGUMENT,
    )
    unknown = pb.CreateCollectionRequest(name=unique_name("g"), dimension=3, index_json='{"mm": 8}')
    expect_error(lambda: api.CreateCollection(unknown), SC.INVALID_ARGUMENT)


# -------------------------------------------------------------------- records
def test_upsert_get_patch_delete(api: Api, coll: str) -> None:
    versions = api.Upsert(pb.UpsertRequest(coll=coll, records=records())).versions
    assert len(versions) == 4 and all(versions)

    got = api.Get(pb.GetRequest(coll=coll, ids=["c", "missing", "a"])).records
    assert [r.id for r in got] == ["c", "a"]  # request order, missing ids skipped
    c = record_to_dict(got[0])
    assert c["text"] == "a brown dog" and c["metadata"] == {"kind": "x", "n": 3}
    assert c["namespace"] == ["u1", "notes"] and c["expires_at"] > time.time() + 3000
    assert c["created_at"] and c["updated_at"] and c["version"]
    assert c["vector"] == [0.0, 0.0, 1.0]

    only_text = api.Get(pb.GetRequest(coll=coll, ids=["a"], include=pb.FieldList(fields=["text"]))).records[0]
    assert only_text.text == "the quick brown fox" and not only_text.HasField("vector")
    assert only_text.metadata_json == "" and only_text.version  # version is always there
    bare = api.Get(pb.GetRequest(coll=coll, ids=["a"], include=pb.FieldList())).records[0]
    assert not bare.HasField("text") and not bare.HasField("vector")

    patched = api.Patch(
        pb.PatchRequest(
            coll=coll,
            id="a",
            metadata_json='{"n": null, "extra": [1, 2]}',
            namespace=pb.StringList(values=["u9"]),
            importance=0.5,
            vector=pack_vector([0.0, 3.0, 4.0]),
        )
    ).record
    p = record_to_dict(patched)
    assert p["metadata"] == {"kind": "x", "extra": [1, 2]}  # merged; null removes a key
    assert p["namespace"] == ["u9"] and p["importance"] == 0.5 and p["text"] == "the quick brown fox"
    assert p["vector"] == pytest.approx([0.0, 0.6, 0.8])  # cosine stores unit vectors
    # An absent namespace leaves it; a present empty one moves the record to the root.
    assert api.Patch(pb.PatchRequest(coll=coll, id="a", text="new")).record.namespace == ["u9"]
    assert list(api.Patch(pb.PatchRequest(coll=coll, id="a", namespace=pb.StringList())).record.namespace) == []
    expect_error(lambda: api.Patch(pb.PatchRequest(coll=coll, id="ghost", text="x")), SC.NOT_FOUND, "record_not_found")

    assert api.Count(pb.CountRequest(coll=coll)).count == 4
    assert api.Count(pb.CountRequest(coll=coll, filter_json='{"kind": "x"}')).count == 2
    assert api.Delete(pb.DeleteRequest(coll=coll, ids=["b", "nope"])).deleted == 1
    assert api.Delete(pb.DeleteRequest(coll=coll, filter_json='{"kind": "z"}')).deleted == 1
    assert sorted(r.id for r in api.Scan(pb.ScanRequest(coll=coll)).records) == ["a", "c"]
    # No ids and no filter is refused (filter_json "{}" would mean "everything").
    expect_error(lambda: api.Delete(pb.DeleteRequest(coll=coll)), SC.INVALID_ARGUMENT)
    assert api.Delete(pb.DeleteRequest(coll=coll, filter_json="{}")).deleted == 2
    assert api.Count(pb.CountRequest(coll=coll)).count == 0


def test_scan_pages_and_prefixes(api: Api, coll: str) -> None:
    recs = [
        pb.Record(id=f"r{i:02d}", vector=pack_vector([1, i, 0]), metadata_json=json.dumps({"kind": "ab"[i % 2]}),
                  namespace=["ns", f"g{i % 3}"])
        for i in range(25)
    ]  # fmt: skip
    api.Upsert(pb.UpsertRequest(coll=coll, records=recs))
    seen: list[str] = []
    req = pb.ScanRequest(coll=coll, limit=10, include=pb.FieldList())
    while True:
        page = api.Scan(req)
        seen += [r.id for r in page.records]
        assert all(not r.HasField("vector") and not r.metadata_json for r in page.records)
        if not page.HasField("next_cursor"):
            break
        req.cursor = page.next_cursor
    assert seen == [f"r{i:02d}" for i in range(25)]
    g1 = api.Scan(pb.ScanRequest(coll=coll, namespace_prefix=["ns", "g1"], limit=100)).records
    assert [r.id for r in g1] == [f"r{i:02d}" for i in range(25) if i % 3 == 1]
    assert [r.id for r in api.Scan(pb.ScanRequest(coll=coll, id_prefix="r1")).records] == [
        f"r{i}" for i in range(10, 20)
    ]
    odd = api.Scan(pb.ScanRequest(coll=coll, filter_json='{"kind": "b"}', limit=100)).records
    assert len(odd) == 12
    expect_error(lambda: api.Scan(pb.ScanRequest(coll=coll, limit=0)), SC.INVALID_ARGUMENT)
    expect_error(lambda: api.Scan(pb.ScanRequest(coll=coll, cursor="!!not-a-cursor")), SC.INVALID_ARGUMENT)


def test_refresh_ttl(api: Api) -> None:
    name = unique_name("grpc-ttl")
    api.CreateCollection(pb.CreateCollectionRequest(name=name, dimension=2, default_ttl_seconds=30))
    api.Upsert(pb.UpsertRequest(coll=name, records=[pb.Record(id="s", vector=pack_vector([1, 0]))]))
    before = api.Get(pb.GetRequest(coll=name, ids=["s"])).records[0].expires_at
    time.sleep(0.05)
    assert api.RefreshTtl(pb.RefreshTtlRequest(coll=name, ids=["s", "missing"])).refreshed == 1
    assert api.Get(pb.GetRequest(coll=name, ids=["s"])).records[0].expires_at > before


def test_list_namespaces(api: Api) -> None:
    name = unique_name("grpc-ns")
    api.CreateCollection(pb.CreateCollectionRequest(name=name, dimension=2))
    paths = [["a", "b"], ["a", "b", "c"], ["a"], ["x", "y"], []]
    api.Upsert(
        pb.UpsertRequest(
            coll=name,
            records=[pb.Record(id=str(i), vector=pack_vector([1, 0]), namespace=p) for i, p in enumerate(paths)],
        )
    )

    def ls(**kw: Any) -> list[list[str]]:
        return [list(ns.path) for ns in api.ListNamespaces(pb.ListNamespacesRequest(coll=name, **kw)).namespaces]

    assert ls() == [["a"], ["a", "b"], ["a", "b", "c"], ["x", "y"]]
    assert ls(max_depth=1) == [["a"], ["x"]]
    assert ls(prefix=["*", "b"]) == [["a", "b"], ["a", "b", "c"]]
    assert ls(suffix=["y"]) == [["x", "y"]]
    assert ls(limit=2, offset=1) == [["a", "b"], ["a", "b", "c"]]


# --------------------------------------------------------------------- search
def test_search_modes(api: Api, coll: str) -> None:
    api.Upsert(pb.UpsertRequest(coll=coll, records=records()))
    hits = api.Search(pb.SearchRequest(coll=coll, vector=pack_vector([1, 0.1, 0]), k=2)).hits
    assert [h.id for h in hits] == ["a", "dir/with slash"]
    assert hits[0].record.text == "the quick brown fox" and not hits[0].record.HasField("vector")
    assert hits[0].score >= hits[1].score

    flt = api.Search(pb.SearchRequest(coll=coll, vector=pack_vector([1, 0, 0]), k=5, filter_json='{"kind": "y"}'))
    assert [h.id for h in flt.hits] == ["b"]
    exact = api.Search(
        pb.SearchRequest(
            coll=coll, vector=pack_vector([0, 0, 1]), k=1, exact=True, include=pb.FieldList(fields=["vector"])
        )
    ).hits[0]
    assert exact.record.vector == pack_vector([0, 0, 1]) and not exact.record.HasField("text")
    bare = api.Search(pb.SearchRequest(coll=coll, vector=pack_vector([1, 0, 0]), k=1, include=pb.FieldList())).hits
    assert bare[0].id == "a" and not bare[0].record.HasField("text")
    assert api.Search(pb.SearchRequest(coll=coll, vector=pack_vector([1, 0, 0]), min_score=2.0)).hits == []

    text = eventually(
        lambda: api.Search(pb.SearchRequest(coll=coll, text="brown", mode="text", k=5)).hits, lambda h: len(h) == 2
    )
    assert sorted(h.id for h in text) == ["a", "c"]
    hybrid = api.Search(
        pb.SearchRequest(coll=coll, text="brown dog", vector=pack_vector([0, 0, 1]), mode="hybrid", k=3)
    ).hits
    assert hybrid[0].id == "c" and dict(hybrid[0].signals)
    weighted = api.Search(
        pb.SearchRequest(
            coll=coll, text="brown dog", vector=pack_vector([0, 0, 1]), mode="hybrid", weights_json='{"text": 0.5}'
        )
    ).hits
    assert weighted

    expect_error(lambda: api.Search(pb.SearchRequest(coll=coll, vector=pack_vector([1, 0, 0]), k=0)),
                 SC.INVALID_ARGUMENT)  # fmt: skip
    expect_error(lambda: api.Search(pb.SearchRequest(coll=coll, vector=pack_vector([1, 0, 0]), mode="magic")),
                 SC.INVALID_ARGUMENT)  # fmt: skip
    expect_error(
        lambda: api.Search(pb.SearchRequest(coll=coll, vector=pack_vector([1, 0, 0]), filter_json='{"kind": ')),
        SC.INVALID_ARGUMENT,
        "invalid_json",
    )


# ---------------------------------------------------------------------- graph
def test_graph(api: Api, coll: str) -> None:
    api.Upsert(pb.UpsertRequest(coll=coll, records=records()))
    edges = [
        pb.Edge(src="a", relation="knows", dst="b", weight=0.5),
        pb.Edge(src="b", relation="knows", dst="c", properties_json='{"since": 2020}'),
    ]
    assert len(api.Link(pb.LinkRequest(coll=coll, edges=edges)).versions) == 2
    ghost = [pb.Edge(src="a", relation="r", dst="ghost")]
    expect_error(lambda: api.Link(pb.LinkRequest(coll=coll, edges=ghost)), SC.NOT_FOUND)
    assert len(api.Link(pb.LinkRequest(coll=coll, edges=ghost, create_missing=True)).versions) == 1

    out = [edge_to_dict(e) for e in api.Edges(pb.EdgesRequest(coll=coll, id="b", direction="both")).edges]
    assert {(e["src"], e["dst"]) for e in out} == {("a", "b"), ("b", "c")}
    by_dst = {e["dst"]: e for e in out}
    assert by_dst["b"]["weight"] == 0.5 and by_dst["c"]["properties"] == {"since": 2020} and by_dst["c"]["version"]
    only_knows = api.Edges(pb.EdgesRequest(coll=coll, id="a", relation="knows")).edges
    assert [e.dst for e in only_knows] == ["b"]
    expect_error(lambda: api.Edges(pb.EdgesRequest(coll=coll, id="nope")), SC.NOT_FOUND, "record_not_found")

    nb = api.Neighbors(pb.NeighborsRequest(coll=coll, id="a", hops=2, relations=["knows"])).hits
    assert [(h.id, h.hop) for h in nb] == [("b", 1), ("c", 2)]
    assert json.loads(nb[1].path_json)[0]["src"] == "a"
    with_text = api.Neighbors(pb.NeighborsRequest(coll=coll, id="a", include=pb.FieldList(fields=["text"]))).hits
    assert with_text[0].record.text == "lazy dogs sleep"
    sub = api.Subgraph(pb.SubgraphRequest(coll=coll, ids=["a"], hops=2, relations=["knows"]))
    assert sorted(n.id for n in sub.nodes) == ["a", "b", "c"] and len(sub.edges) == 2

    expanded = api.Search(
        pb.SearchRequest(
            coll=coll, vector=pack_vector([1, 0, 0]), k=1, expand_json='{"hops": 1, "relations": ["knows"]}'
        )
    ).hits
    assert [h.id for h in expanded][:2] == ["a", "b"] and expanded[1].hop == 1

    gone = api.Unlink(pb.UnlinkRequest(coll=coll, edges=[pb.EdgeKey(src="a", relation="knows", dst="b")]))
    assert gone.deleted == 1
    assert list(api.Neighbors(pb.NeighborsRequest(coll=coll, id="a", relations=["knows"])).hits) == []


# ------------------------------------------------------------------ API keys
def test_keys_and_roles(channel: grpc.Channel, server: ServerProcess) -> None:
    # A tenant of its own, so the keys made here never show up in other tests' listings.
    tenant = unique_name("keys")
    api = Api(channel, server.admin_key, (("x-engramdb-tenant", tenant),))
    coll = "records"
    api.CreateCollection(pb.CreateCollectionRequest(name=coll, dimension=3))
    api.Upsert(pb.UpsertRequest(coll=coll, records=records()))
    new = api.CreateKey(pb.CreateKeyRequest(role="reader", collections=[coll], name="grpc-reader"))
    assert new.key.startswith("edb_") and new.role == "reader" and list(new.collections) == [coll]
    assert new.tenant == tenant
    reader = Api(channel, new.key)

    assert [h.id for h in reader.Search(pb.SearchRequest(coll=coll, vector=pack_vector([1, 0, 0]), k=1)).hits] == ["a"]
    denied = expect_error(
        lambda: reader.Upsert(pb.UpsertRequest(coll=coll, records=records()[:1])), SC.PERMISSION_DENIED
    )
    assert denied["code"] == "permission_denied"
    expect_error(lambda: reader.ListKeys(pb.ListKeysRequest()), SC.PERMISSION_DENIED)
    other = unique_name("grpc-other")
    api.CreateCollection(pb.CreateCollectionRequest(name=other, dimension=3))
    expect_error(lambda: reader.Count(pb.CountRequest(coll=other)), SC.PERMISSION_DENIED, "collection_not_in_scope")

    listed = {k.id: k for k in api.ListKeys(pb.ListKeysRequest()).keys}
    info = listed[new.id]
    assert info.role == "reader" and info.name == "grpc-reader" and not info.revoked and info.created_at > 0
    assert new.key not in str(api.ListKeys(pb.ListKeysRequest()))  # never the secret

    rotated = api.RotateKey(pb.RotateKeyRequest(key_id=new.id, grace_seconds=0))
    assert rotated.key != new.key and rotated.role == "reader"
    assert Api(channel, rotated.key).Count(pb.CountRequest(coll=coll)).count == 4
    assert api.ListKeys(pb.ListKeysRequest()).keys  # still listable
    expect_error(lambda: reader.Count(pb.CountRequest(coll=coll)), SC.UNAUTHENTICATED, "api_key_expired")

    assert api.RevokeKey(pb.RevokeKeyRequest(key_id=rotated.id)).revoked is True
    expect_error(lambda: Api(channel, rotated.key).Count(pb.CountRequest(coll=coll)), SC.UNAUTHENTICATED)
    expect_error(lambda: api.RevokeKey(pb.RevokeKeyRequest(key_id="0000000000000000")), SC.NOT_FOUND)


# --------------------------------------------------------------------- errors
def test_error_mapping(api: Api, channel: grpc.Channel, coll: str) -> None:
    body = expect_error(
        lambda: api.Upsert(pb.UpsertRequest(coll=coll, records=[pb.Record(id="x", vector=pack_vector([1, 0]))])),
        SC.INVALID_ARGUMENT,
        "dimension_mismatch",
    )
    assert "3" in body["message"]
    expect_error(
        lambda: api.Search(pb.SearchRequest(coll=coll, vector=pack_vector([1.0, 0.0]))),
        SC.INVALID_ARGUMENT,
        "dimension_mismatch",
    )
    torn = pb.Record(id="x", vector=b"\x00\x00\x80?\x00")  # 5 bytes: not packed float32
    body = expect_error(lambda: api.Upsert(pb.UpsertRequest(coll=coll, records=[torn])), SC.INVALID_ARGUMENT,
                        "invalid_vector")  # fmt: skip
    assert body["details"]["field"] == "records[0].vector"
    nan = pb.Record(id="x", vector=pack_vector([float("nan"), 0, 1]))
    expect_error(lambda: api.Upsert(pb.UpsertRequest(coll=coll, records=[nan])), SC.INVALID_ARGUMENT, "invalid_vector")
    expect_error(lambda: api.Count(pb.CountRequest(coll=unique_name("missing"))), SC.NOT_FOUND)
    expect_error(lambda: api.Count(pb.CountRequest(coll=coll, filter_json='{"n": {"$nope": 1}}')),
                 SC.INVALID_ARGUMENT, "invalid_filter")  # fmt: skip

    anonymous = Api(channel, None)
    expect_error(lambda: anonymous.Count(pb.CountRequest(coll=coll)), SC.UNAUTHENTICATED, "missing_api_key")
    wrong = Api(channel, "edb_not-a-real-key")
    expect_error(lambda: wrong.Count(pb.CountRequest(coll=coll)), SC.UNAUTHENTICATED, "invalid_api_key")
    basic = Api(channel, None, (("authorization", "Basic dXNlcjpwdw=="),))
    expect_error(lambda: basic.Count(pb.CountRequest(coll=coll)), SC.UNAUTHENTICATED, "invalid_authorization")


def test_request_id_and_tenant_metadata(api: Api, channel: grpc.Channel, server: ServerProcess, coll: str) -> None:
    tagged = Api(channel, server.admin_key, (("x-request-id", "grpc-test-42"),))
    _, call = tagged.with_call("Count", pb.CountRequest(coll=coll))
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-test-42"
    _, call = api.with_call("Count", pb.CountRequest(coll=coll))
    assert len(dict(call.trailing_metadata())["x-request-id"]) == 32  # generated when not given

    tenant = unique_name("tenant")
    in_tenant = Api(channel, server.admin_key, (("x-engramdb-tenant", tenant),))
    in_tenant.CreateCollection(pb.CreateCollectionRequest(name="only-here", dimension=2))
    assert [c.name for c in in_tenant.ListCollections(pb.ListCollectionsRequest()).collections] == ["only-here"]
    assert "only-here" not in [c.name for c in api.ListCollections(pb.ListCollectionsRequest()).collections]


# ---------------------------------------------------------- vectors and parity
def test_packed_vectors_round_trip_exactly(api: Api) -> None:
    # l2 stores vectors as given (cosine would normalise them), so every bit must come back.
    name = unique_name("grpc-bits")
    api.CreateCollection(pb.CreateCollectionRequest(name=name, dimension=16, metric="l2"))
    f32 = np.finfo(np.float32)
    special = np.array(
        [0.1, 1 / 3, -0.0, f32.max, -f32.max, f32.tiny, f32.smallest_subnormal, -f32.smallest_subnormal,
         1e-30, 123456.789, -2.5, np.pi, np.e, 1.0000001, 16777217.0, 7.0],
        dtype=np.float32,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    vectors = [special, *(rng.standard_normal(16).astype(np.float32) * 10.0 ** rng.uniform(-20, 20) for _ in range(20))]
    recs = [pb.Record(id=f"v{i}", vector=v.tobytes()) for i, v in enumerate(vectors)]
    api.Upsert(pb.UpsertRequest(coll=name, records=recs))
    got = api.Get(pb.GetRequest(coll=name, ids=[r.id for r in recs], include=pb.FieldList(fields=["vector"])))
    for sent, back in zip(vectors, got.records, strict=True):
        assert back.vector == sent.astype("<f4").tobytes()
    scanned = api.Scan(pb.ScanRequest(coll=name, id_prefix="v0", include=pb.FieldList(fields=["vector"]))).records
    assert scanned[0].vector == special.tobytes()
    hit = api.Search(
        pb.SearchRequest(
            coll=name, vector=vectors[3].tobytes(), k=1, exact=True, include=pb.FieldList(fields=["vector"])
        )
    ).hits[0]
    assert hit.id == "v3" and hit.record.vector == vectors[3].tobytes()


def _dataset(data_dir: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Real embeddings when the shared dataset is there, else seeded random unit vectors."""
    base, queries = data_dir / "real.npy", data_dir / "queries_dev.npy"
    if base.exists() and queries.exists():
        return np.load(base, mmap_mode="r")[:n].astype(np.float32), np.load(queries)[:20].astype(np.float32)
    rng = np.random.default_rng(3)
    b = rng.standard_normal((n, 384)).astype(np.float32)
    q = rng.standard_normal((20, 384)).astype(np.float32)
    return b / np.linalg.norm(b, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)


def test_search_parity_with_rest(api: Api, admin: httpx.Client, data_dir: Path) -> None:
    base, queries = _dataset(data_dir, 1000)
    name = unique_name("grpc-parity")
    api.CreateCollection(pb.CreateCollectionRequest(name=name, dimension=base.shape[1], indexed_fields={"t": "int"}))
    recs = [
        pb.Record(
            id=f"p{i:04d}",
            vector=row.tobytes(),
            text=f"passage {i}",
            metadata_json=json.dumps({"t": i % 10, "tags": ["x", i]}),
            namespace=["tenant", str(i % 3)],
        )
        for i, row in enumerate(base)
    ]
    for start in range(0, len(recs), 250):
        api.Upsert(pb.UpsertRequest(coll=name, records=recs[start : start + 250]))

    include = ["vector", "text", "metadata", "namespace", "timestamps"]
    for q in queries[:10]:
        for extra in ({}, {"filter": {"t": {"$lt": 3}}}, {"exact": True}):
            rest = admin.post(
                f"/v1/collections/{name}/search",
                json={"vector": q.tolist(), "k": 10, "include": include, **extra},
            )
            assert rest.status_code == 200, rest.text
            req = pb.SearchRequest(coll=name, vector=q.tobytes(), k=10, include=pb.FieldList(fields=include))
            if "filter" in extra:
                req.filter_json = json.dumps(extra["filter"])
            if "exact" in extra:
                req.exact = True
            grpc_hits = [hit_to_dict(h) for h in api.Search(req).hits]
            assert grpc_hits == rest.json()["hits"]  # same ids, scores, vectors, fields: bit for bit

    # Reads agree too.
    ids = [f"p{i:04d}" for i in (0, 7, 999)]
    rest_get = admin.post(f"/v1/collections/{name}/records/get", json={"ids": ids}).json()["records"]
    assert [record_to_dict(r) for r in api.Get(pb.GetRequest(coll=name, ids=ids)).records] == rest_get


# ------------------------------------------------- start_grpc_server itself
def _settings(data_dir: Path, **server: Any) -> Any:
    return load(
        None,
        data_dir=str(data_dir),
        storage={"sync_writes": False},
        server={"host": "127.0.0.1", "grpc_port": free_port(), "auth": "disabled", **server},
    )


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[Callable[..., tuple[Any, Any]]]:
    """Start ``Service`` + ``start_grpc_server`` with custom settings; everything is stopped after."""
    from engramdb.engine.database import Database
    from engramdb.service import Service

    opened: list[tuple[Any, Any]] = []

    def make(service_class: type[Service] = Service, **server: Any) -> tuple[Any, Any]:
        settings = _settings(tmp_path / f"data-{len(opened)}", **server)
        db = Database(settings.data_dir, settings)
        opened.append((db, None))
        handle = start_grpc_server(service_class(db, settings), settings)
        opened[-1] = (db, handle)
        return handle, settings

    yield make
    for db, handle in opened:
        if handle is not None:
            handle.stop(0)
        db.close()


def _make_certs(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, via openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        run(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}.key", "-out", f"{who}.csr"
        )
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "san.ext", "-out", f"{who}.pem")  # fmt: skip
    return {name: d / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def _count(channel: grpc.Channel) -> Any:
    stub = pb_grpc.EngramDBStub(channel)
    stub.CreateCollection(pb.CreateCollectionRequest(name="tls", dimension=2, exist_ok=True), timeout=10)
    return stub.Count(pb.CountRequest(coll="tls"), timeout=10)


def test_tls_and_mtls(in_process: Callable[..., tuple[Any, Any]], tmp_path: Path) -> None:
    certs = _make_certs(tmp_path)
    ca = certs["ca.pem"].read_bytes()
    handle, _ = in_process(tls={"cert_file": certs["server.pem"], "key_file": certs["server.key"]})
    assert handle.tls
    with grpc.secure_channel(handle.address, grpc.ssl_channel_credentials(ca)) as ch:
        assert _count(ch).count == 0
    with grpc.insecure_channel(handle.address) as ch, pytest.raises(grpc.RpcError) as info:
        _count(ch)
    assert info.value.code() == SC.UNAVAILABLE  # plaintext against TLS never gets an answer

    mtls, _ = in_process(
        tls={"cert_file": certs["server.pem"], "key_file": certs["server.key"], "client_ca_file": certs["ca.pem"]}
    )
    client = grpc.ssl_channel_credentials(ca, certs["client.key"].read_bytes(), certs["client.pem"].read_bytes())
    with grpc.secure_channel(mtls.address, client) as ch:
        assert _count(ch).count == 0
    with grpc.secure_channel(mtls.address, grpc.ssl_channel_credentials(ca)) as ch, pytest.raises(grpc.RpcError):
        _count(ch)  # no client certificate


def test_refuses_bad_tls_files_and_taken_ports(in_process: Callable[..., tuple[Any, Any]], tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(InvalidArgument) as info:
        in_process(tls={"cert_file": missing, "key_file": missing})
    assert info.value.code == "invalid_config" and "cert_file" in info.value.message
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(InvalidArgument):
        in_process(tls={"cert_file": junk, "key_file": junk})

    first, _ = in_process()
    with pytest.raises(Unavailable) as taken:
        in_process(grpc_port=first.port)
    assert taken.value.code == "bind_failed"


def test_graceful_stop_drains_in_flight_calls(in_process: Callable[..., tuple[Any, Any]]) -> None:
    from engramdb.service import Service

    entered = threading.Event()

    class SlowCount(Service):
        """``count`` takes a second, so a call is surely in flight when stop begins."""

        def execute(self, ctx: Any, op: str, params: dict[str, Any]) -> dict[str, Any]:
            if op == "count":
                entered.set()
                time.sleep(1.0)
            return super().execute(ctx, op, params)

    handle, _ = in_process(service_class=SlowCount)
    with grpc.insecure_channel(handle.address) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        stub.CreateCollection(pb.CreateCollectionRequest(name="slow", dimension=2), timeout=10)
        in_flight = stub.Count.future(pb.CountRequest(coll="slow"), timeout=30)
        assert entered.wait(10)
        started = time.monotonic()
        handle.stop(10)  # returns once the server is down
        assert in_flight.result().count == 0  # drained, not cut off
        assert 0.5 < time.monotonic() - started < 9  # waited for it, not for the whole grace
        with pytest.raises(grpc.RpcError) as info:
            stub.ListCollections(pb.ListCollectionsRequest(), timeout=5)
        assert info.value.code() == SC.UNAVAILABLE

    cut, _ = in_process(service_class=SlowCount)
    with grpc.insecure_channel(cut.address) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        stub.CreateCollection(pb.CreateCollectionRequest(name="slow", dimension=2), timeout=10)
        entered.clear()
        in_flight = stub.Count.future(pb.CountRequest(coll="slow"), timeout=30)
        assert entered.wait(10)
        cut.stop(0.1)  # the grace ends before the call does: it is cancelled
        with pytest.raises(grpc.RpcError) as info:
            in_flight.result()
        assert info.value.code() in (SC.CANCELLED, SC.UNAVAILABLE)


def test_grpc_max_workers_sizes_the_call_threads(in_process: Callable[..., tuple[Any, Any]]) -> None:
    from engramdb.server.grpc.server import DEFAULT_MAX_WORKERS

    default, _ = in_process()
    small, _ = in_process(grpc_max_workers=2)
    assert default.executor._max_workers == DEFAULT_MAX_WORKERS
    assert small.executor._max_workers == 2
    with grpc.insecure_channel(small.address) as ch:  # calls beyond the threads wait their turn, none fails
        stub = pb_grpc.EngramDBStub(ch)
        stub.CreateCollection(pb.CreateCollectionRequest(name="w", dimension=2), timeout=10)
        calls = [stub.Count.future(pb.CountRequest(coll="w"), timeout=30) for _ in range(8)]
        assert [c.result().count for c in calls] == [0] * 8


def test_rate_limit_is_resource_exhausted_with_retry_after(in_process: Callable[..., tuple[Any, Any]]) -> None:
    handle, _ = in_process(rate_limits={"per_ip_per_second": 0.1, "per_ip_burst": 2})
    with grpc.insecure_channel(handle.address) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        for _ in range(2):
            stub.ListCollections(pb.ListCollectionsRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListCollections(pb.ListCollectionsRequest(), timeout=10)
    err: Any = info.value
    assert err.code() == SC.RESOURCE_EXHAUSTED
    assert json.loads(err.details())["code"] == "rate_limited"
    assert int(dict(err.trailing_metadata())["retry-after"]) >= 1
