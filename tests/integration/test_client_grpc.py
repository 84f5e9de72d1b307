"""The clients' gRPC transport (``prefer_grpc=True``): every operation over gRPC, errors, retries, fallback.

The shared behaviour (answers and errors identical to the embedded engine) is the "grpc" backend of
tests/integration/test_api_parity.py. Here: that every operation really travels over gRPC (the REST
URL given points nowhere, so a call sent over REST would fail with Unavailable), which calls fall
back to REST, and the transport's own rules against a scripted in-process gRPC server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

import engramdb
from conftest import ADMIN_KEY, ServerProcess, free_port
from engramdb.client import calls
from engramdb.client.grpc_transport import OPS, NotRepresentable, encode, rpc_failure
from engramdb.errors import (
    Closed,
    DeadlineExceeded,
    EngramError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RateLimited,
    StorageFull,
    Unavailable,
)
from engramdb.grpc_codec import engramdb_pb2 as pb
from engramdb.server.grpc.convert import RPCS
from engramdb.types import Edge

DEAD_REST = "http://127.0.0.1:9"  # discard port: nothing answers HTTP there


def _grpc_only(server: ServerProcess, **kw: Any) -> engramdb.client.Client:
    tenant = "t-" + uuid.uuid4().hex[:12]
    return engramdb.connect(
        DEAD_REST, ADMIN_KEY, tenant=tenant, prefer_grpc=True, grpc_target=server.grpc_address, retries=0, **kw
    )


def test_every_operation_has_the_servers_rpc() -> None:
    assert {op: rpc for op, (rpc, _, _) in OPS.items()} == {rpc.op: name for name, rpc in RPCS.items()}


def test_every_operation_travels_over_grpc(server: ServerProcess) -> None:
    with _grpc_only(server) as db:
        c = db.create_collection("g", 2, indexed_fields={"n": "int"})
        assert db.create_collection("g", 2, indexed_fields={"n": "int"}, exist_ok=True).config == c.config
        assert db.get_collection("g").config == c.config
        assert [x.name for x in db.list_collections()] == ["g"]
        assert db.alter_collection("g", ef_search=64, default_ttl_seconds=None).index.ef_search == 64
        c.upsert([{"id": "a", "vector": [1, 0], "text": "alpha", "metadata": {"n": 1}, "namespace": ["x", "y"]}])
        c.upsert({"id": "b", "vector": [0, 1], "metadata": {"n": 2}, "ttl_seconds": 600})
        assert c.get("a").metadata == {"n": 1}
        assert [r.id for r in c.get_many(["a", "b", "zz"], include=["vector"])] == ["a", "b"]
        assert c.patch("a", metadata={"m": True}, namespace=[]).namespace == ()
        assert c.count({"n": {"$gte": 1}}) == 2
        assert [r.id for r in c.scan(limit=10).records] == ["a", "b"]
        assert c.list_namespaces(max_depth=1) == []
        hits = c.search([1, 0.1], k=2, filter={"n": {"$gte": 1}}, include=["metadata"], exact=True)
        assert [h.id for h in hits] == ["a", "b"] and hits[0].record.metadata == {"n": 1, "m": True}
        assert [h.id for h in c.search([1, 0], k=1, include=None)] == ["a"]
        assert c.refresh_ttl(["b"]) == 1
        c.link([Edge("a", "r", "b")])
        assert [e.dst for e in c.edges("a")] == ["b"]
        assert [h.id for h in c.neighbors("a")] == ["b"]
        assert {r.id for r in c.subgraph("a")["nodes"]} == {"a", "b"}
        assert c.unlink([("a", "r", "b")]) == 1
        with pytest.raises(FailedPrecondition):
            c.extract("Ada met Charles.")  # the server has no model: its answer, over gRPC
        assert c.delete(["a"]) == 1
        key = db.create_key("reader", name="r1")
        assert key.key and [k.id for k in db.list_keys() if k.id == key.id] == [key.id]
        rotated = db.rotate_key(key.id, grace_seconds=0)
        assert db.revoke_key(rotated.id) is None
        for backup_call in (lambda: db.list_backups(), lambda: db.verify_backup("nope"), lambda: db.create_backup("b")):
            try:
                backup_call()
            except EngramError as e:  # the server's answer (no backup.dir, no such backup), not a transport error
                assert not isinstance(e, Unavailable), e
        db.delete_collection("g")
        assert db.erase_tenant(db.tenant, confirm=db.tenant).collections == 0


def test_errors_over_grpc_are_the_engines(server: ServerProcess) -> None:
    with _grpc_only(server) as db:
        with pytest.raises(NotFound) as ei:
            db.get_collection("nope")
        assert ei.value.code == "collection_not_found"
        c = db.create_collection("e", 2)
        with pytest.raises(InvalidArgument) as ei2:
            c.search([1, 0], k=0)
        assert ei2.value.code == "invalid_k"


def test_values_protobuf_cannot_carry_go_over_rest(server: ServerProcess) -> None:
    # Over gRPC these would be coerced (True -> 1) or refused by protobuf itself; REST lets the
    # server's validation answer. With a dead REST URL, reaching REST shows as Unavailable.
    with _grpc_only(server) as db:
        c = db.create_collection("f", 2)
        for fn in (
            lambda: c.search([1, 0], k=True),
            lambda: c.search([1, 0], k=2.5),
            lambda: c.upsert({"id": "x", "vector": [1, 0], "colour": "red"}),
            lambda: c.upsert({"id": "x", "vector": [1, 0], "namespace": "a/b"}),
            lambda: c.delete([]),
        ):
            with pytest.raises(Unavailable, match=r"127\.0\.0\.1:9"):
                fn()
    with engramdb.connect(server.base_url, ADMIN_KEY, prefer_grpc=True, grpc_target=server.grpc_address) as db:
        c = db.create_collection("f-" + uuid.uuid4().hex[:8], 2)
        with pytest.raises(InvalidArgument) as ei:
            c.search([1, 0], k=True)
        assert ei.value.code == "invalid_k"


def test_encode_is_strict() -> None:
    with pytest.raises(NotRepresentable):
        encode(calls.search("c", 2, [True, 0], 1, **_search_defaults()))
    with pytest.raises(NotRepresentable):
        encode(calls.search("c", 2, [1, 0], 2**31, **_search_defaults()))
    count = calls.count("c", None)
    with pytest.raises(NotRepresentable):  # a body key the proto has no field for
        encode(dataclasses.replace(count, body={**(count.body or {}), "future_option": 1}))
    rpc, msg = encode(calls.search("c", 2, [1, 0], 3, **_search_defaults()))
    assert rpc == "Search" and msg.k == 3 and msg.HasField("include") and list(msg.include.fields) == []


def _search_defaults() -> dict[str, Any]:
    return {
        "filter": None,
        "ef": None,
        "include": None,
        "exact": False,
        "text": None,
        "mode": None,
        "weights": None,
        "expand": None,
        "min_score": None,
        "refresh_ttl": False,
    }


def test_async_client_over_grpc(server: ServerProcess) -> None:
    async def main() -> None:
        tenant = "t-" + uuid.uuid4().hex[:12]
        async with engramdb.AsyncClient(
            DEAD_REST, ADMIN_KEY, tenant=tenant, prefer_grpc=True, grpc_target=server.grpc_address, retries=0
        ) as db:
            c = await db.create_collection("a", 2)
            await asyncio.gather(*(c.upsert({"id": f"r{i}", "vector": [1, i]}) for i in range(20)))
            assert await c.count() == 20
            assert len(await c.search([1, 0], k=5)) == 5
            with pytest.raises(NotFound):
                await db.get_collection("nope")
        with pytest.raises(Closed):
            await c.count()

    asyncio.run(main())


def test_connection_refused_is_unavailable_and_closed_client_raises_closed() -> None:
    db = engramdb.connect(
        DEAD_REST, "k", prefer_grpc=True, grpc_target=f"127.0.0.1:{free_port()}", retries=0, timeout=5
    )
    with pytest.raises(Unavailable):
        db.list_collections()
    db.close()
    with pytest.raises(Closed):
        db.list_collections()


def test_target_and_tls_options() -> None:
    with engramdb.connect("http://db.example:7878", "k", prefer_grpc=True) as db:
        assert db._grpc is not None and db._grpc.target == "db.example:7879"
    with pytest.raises(InvalidArgument, match="verify"):
        engramdb.connect("https://db.example", "k", prefer_grpc=True, verify=False)
    with pytest.raises(InvalidArgument):
        engramdb.connect("http://db.example", "k", prefer_grpc=True, grpc_target="bad target")


# ---------------------------------------------------- a scripted gRPC server
class _Err(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()):
        self._c, self._d, self._t = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._c

    def details(self) -> str:
        return self._d

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._t


def _body(code: str, message: str = "m", **details: Any) -> str:
    return json.dumps({"code": code, "message": message, "details": details})


def test_failure_decisions() -> None:
    call = calls.count("c", None)
    f = rpc_failure(call, _Err(grpc.StatusCode.UNAVAILABLE, _body("unavailable")), "t", 1.0)
    assert isinstance(f.error, Unavailable) and f.retryable and not f.not_executed
    f = rpc_failure(
        call,
        _Err(grpc.StatusCode.RESOURCE_EXHAUSTED, _body("rate_limited", retry_after=7), (("retry-after", "2"),)),
        "t",
        1.0,
    )
    assert isinstance(f.error, RateLimited) and f.retryable and f.not_executed and f.retry_after == 2.0
    f = rpc_failure(call, _Err(grpc.StatusCode.RESOURCE_EXHAUSTED, _body("storage_full")), "t", 1.0)
    assert isinstance(f.error, StorageFull) and not f.retryable
    f = rpc_failure(call, _Err(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "t", 1.0)
    assert isinstance(f.error, DeadlineExceeded) and not f.retryable
    f = rpc_failure(call, _Err(grpc.StatusCode.UNAVAILABLE, "failed to connect"), "t", 1.0)
    assert isinstance(f.error, Unavailable) and f.retryable and not f.not_executed
    f = rpc_failure(call, _Err(grpc.StatusCode.DEADLINE_EXCEEDED, _body("deadline_exceeded")), "t", 1.0)
    assert isinstance(f.error, DeadlineExceeded) and not f.retryable  # the server's own time limit


class Scripted:
    """An in-process gRPC server answering Count/Delete from a script of outcomes."""

    def __init__(self) -> None:
        self.script: list[Callable[[grpc.ServicerContext], Any]] = []
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()

        def handler(name: str, response: Any) -> grpc.RpcMethodHandler:
            def handle(request: bytes, context: grpc.ServicerContext) -> Any:
                with self.lock:
                    self.seen.append((name, dict(context.invocation_metadata())))
                    step = self.script.pop(0) if self.script else (lambda ctx: None)
                step(context)
                return response

            return grpc.unary_unary_rpc_method_handler(handle, response_serializer=lambda m: m.SerializeToString())

        handlers = {
            "Count": handler("Count", pb.CountResponse(count=5)),
            "Delete": handler("Delete", pb.DeletedResponse(deleted=1)),
        }
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("engramdb.v1.EngramDB", handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


def _fail(code: grpc.StatusCode, body: str, trailers: tuple[tuple[str, str], ...] = ()) -> Callable[[Any], None]:
    def step(ctx: grpc.ServicerContext) -> None:
        ctx.set_trailing_metadata((("engramdb-error-code", json.loads(body)["code"]), *trailers))
        ctx.abort(code, body)

    return step


def _sleep(seconds: float) -> Callable[[Any], None]:
    return lambda ctx: time.sleep(seconds)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    s = Scripted()
    yield s
    s.server.stop(0)


def _coll(s: Scripted, **kw: Any) -> Any:
    db = engramdb.connect(DEAD_REST, "edb_k", tenant="acme", prefer_grpc=True, grpc_target=f"127.0.0.1:{s.port}", **kw)
    cfg = engramdb.CollectionConfig(name="c", dimension=2)
    return db, engramdb.client.RemoteCollection(db, cfg)


def test_idempotent_call_retried_and_metadata_sent(scripted: Scripted) -> None:
    scripted.script = [_fail(grpc.StatusCode.UNAVAILABLE, _body("unavailable"))] * 2
    db, c = _coll(scripted, retries=3)
    assert c.count() == 5
    assert len(scripted.seen) == 3
    md = scripted.seen[0][1]
    assert md["authorization"] == "Bearer edb_k" and md["x-engramdb-tenant"] == "acme"
    db.close()


def test_non_idempotent_call_not_retried_but_rate_limit_is(scripted: Scripted) -> None:
    scripted.script = [_fail(grpc.StatusCode.UNAVAILABLE, _body("unavailable"))]
    db, c = _coll(scripted, retries=3)
    with pytest.raises(Unavailable):
        c.delete(["a"])
    assert len(scripted.seen) == 1
    scripted.script = [_fail(grpc.StatusCode.RESOURCE_EXHAUSTED, _body("rate_limited"), (("retry-after", "1"),))]
    started = time.monotonic()
    assert c.delete(["a"]) == 1  # refused before it ran: retried even though delete is not idempotent
    assert time.monotonic() - started >= 0.9  # the server's retry-after was waited for
    db.close()


def test_deadline_is_the_client_timeout(scripted: Scripted) -> None:
    scripted.script = [_sleep(1.5)]
    db, c = _coll(scripted, retries=3, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        c.count()
    assert time.monotonic() - started < 1.4  # not retried, and cut at the deadline
    db.close()
