"""The public surface is a tested artefact: the exported names, the declared API and the operation catalogue.

- ``engramdb.__all__`` is pinned: adding or removing a public name is a
  decision, made here on purpose.
- Every method the Protocols of :mod:`engramdb.api` declare exists on each
  implementation with the same parameters (names, kinds, defaults: what
  mypy does not compare), is a coroutine exactly in the asyncio twins, and
  shows the Protocol's documentation (the text exists once).
- The service's operation catalogue (``engramdb.service.OPS``) is the one
  list of operations: each has a REST route, a gRPC method and a call in
  both Python clients, checked on the wire.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import engramdb
from engramdb.api import AsyncCollectionAPI, AsyncDatabaseAPI, CollectionAPI, DatabaseAPI
from engramdb.client import AsyncClient, AsyncRemoteCollection, Client, RemoteCollection
from engramdb.engine.collection import Collection
from engramdb.engine.database import Database
from engramdb.errors import InvalidArgument
from engramdb.server.grpc.convert import RPCS
from engramdb.server.rest.routes import ROUTES
from engramdb.service import OPS
from engramdb.types import CollectionConfig

# ---------------------------------------------------------------- __all__
PUBLIC_NAMES = [
    "AlreadyExists",
    "AsyncClient",
    "AsyncCollectionAPI",
    "AsyncDatabaseAPI",
    "Collection",
    "CollectionAPI",
    "CollectionConfig",
    "CorruptData",
    "Database",
    "DatabaseAPI",
    "DimensionMismatch",
    "Edge",
    "EngramError",
    "ExtractResult",
    "FailedPrecondition",
    "Hit",
    "InvalidArgument",
    "InvalidFilter",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Record",
    "ScanPage",
    "StorageFull",
    "Unauthenticated",
    "Unavailable",
    "connect",
    "open",
]


def test_all_is_pinned() -> None:
    assert engramdb.__all__ == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(engramdb, name) is not None, name


def test_exported_protocols_are_the_api_module_ones() -> None:
    assert engramdb.DatabaseAPI is DatabaseAPI
    assert engramdb.CollectionAPI is CollectionAPI
    assert engramdb.AsyncDatabaseAPI is AsyncDatabaseAPI
    assert engramdb.AsyncCollectionAPI is AsyncCollectionAPI


# ------------------------------------------------------- the declared API
# (protocol, implementation, is async, parameters an implementation adds: keyword-only with a default)
IMPLEMENTATIONS: list[tuple[type, type, bool, frozenset[tuple[str, str]]]] = [
    # The embedded database serves every tenant; a client's tenant comes from its key or header.
    (
        DatabaseAPI,
        Database,
        False,
        frozenset(
            {
                (m, "tenant")
                for m in (
                    "create_collection",
                    "get_collection",
                    "list_collections",
                    "delete_collection",
                    "alter_collection",
                )
            }
        ),
    ),
    (CollectionAPI, Collection, False, frozenset()),
    (DatabaseAPI, Client, False, frozenset()),
    # The server's model may take long: the clients' extract has its own timeout.
    (CollectionAPI, RemoteCollection, False, frozenset({("extract", "timeout")})),
    (AsyncDatabaseAPI, AsyncClient, True, frozenset()),
    (AsyncCollectionAPI, AsyncRemoteCollection, True, frozenset({("extract", "timeout")})),
]
IMPL_IDS = [impl.__name__ for _, impl, _, _ in IMPLEMENTATIONS]
# Methods answered without a request: plain methods in the asyncio twins too (no ``await`` to make a view).
LOCAL_METHODS = frozenset({"with_consistency"})


def _members(proto: type) -> dict[str, Any]:
    """The members a Protocol declares: methods and properties (its own machinery left out)."""
    return {
        name: value
        for name, value in vars(proto).items()
        if isinstance(value, property)
        or (
            inspect.isfunction(value)
            and value.__qualname__ == f"{proto.__name__}.{name}"  # not typing.Protocol's hooks
            and name != "__init_subclass__"
        )
    }


def _params(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_protocols_declare_the_same_members() -> None:
    for sync, asyn in ((DatabaseAPI, AsyncDatabaseAPI), (CollectionAPI, AsyncCollectionAPI)):
        s, a = _members(sync), _members(asyn)
        renamed = {"__enter__": "__aenter__", "__exit__": "__aexit__"}
        assert {renamed.get(n, n) for n in s} == set(a)
        for name, member in s.items():
            twin = a[renamed.get(name, name)]
            assert isinstance(twin, property) == isinstance(member, property), name
            if not isinstance(member, property):
                assert _params(twin) == _params(member), name
                assert not inspect.iscoroutinefunction(member), name
                assert inspect.iscoroutinefunction(twin) == (name not in LOCAL_METHODS), name
        assert sync.__annotations__ == asyn.__annotations__  # the attributes (config)


@pytest.mark.parametrize(("proto", "impl", "is_async", "extra"), IMPLEMENTATIONS, ids=IMPL_IDS)
def test_implementation_is_declared(proto: type, impl: type, is_async: bool, extra: frozenset[Any]) -> None:
    # Explicit subclassing is what makes mypy hold the implementation to the declaration.
    assert proto in impl.__mro__


@pytest.mark.parametrize(("proto", "impl", "is_async", "extra"), IMPLEMENTATIONS, ids=IMPL_IDS)
def test_same_parameters(proto: type, impl: type, is_async: bool, extra: frozenset[tuple[str, str]]) -> None:
    for name, declared in _members(proto).items():
        got = inspect.getattr_static(impl, name)
        # A member the implementation leaves to the Protocol would be a stub that returns None.
        assert got is not declared, f"{impl.__name__}.{name} is not implemented"
        if isinstance(declared, property):
            assert isinstance(got, property), f"{impl.__name__}.{name} must be a property"
            continue
        assert inspect.iscoroutinefunction(got) == (is_async and name not in LOCAL_METHODS), f"{impl.__name__}.{name}"
        added = {p for m, p in extra if m == name}
        params = [p for p in _params(got) if p[0] not in added]
        if name == "extract" and impl in (RemoteCollection, AsyncRemoteCollection):
            # The server uses its operator's model: a client's ``extractor`` may only be None (the default).
            assert params[1] == ("extractor", inspect.Parameter.POSITIONAL_OR_KEYWORD, None)
            params[1] = ("extractor", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty)
        assert params == _params(declared), f"{impl.__name__}.{name}"
        for p in inspect.signature(got).parameters.values():
            if p.name in added:
                assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty


@pytest.mark.parametrize(("proto", "impl", "is_async", "extra"), IMPLEMENTATIONS, ids=IMPL_IDS)
def test_documentation_lives_in_the_protocol(
    proto: type, impl: type, is_async: bool, extra: frozenset[tuple[str, str]]
) -> None:
    for name, declared in _members(proto).items():
        if name.startswith("__"):
            continue
        doc = inspect.getdoc(declared)
        assert doc, f"{proto.__name__}.{name} has no docstring"
        # help(engramdb.Collection.search) shows the Protocol's text: no copy in the implementation.
        assert inspect.getdoc(getattr(impl, name)) == doc, f"{impl.__name__}.{name} has its own docstring"


# ------------------------------------------------- the operation catalogue
# Key management and erasing a tenant are the operator's: the clients offer them (``create_key``,
# ``erase_tenant`` ...), outside the declared data API (the embedded engine has no keys).
ADMIN_OPS = {op for op, spec in OPS.items() if spec.role == "admin"}
# REST shorthands for one record (GET / DELETE on the record's URL): gRPC and the
# clients reach them through the batch operation (``Get``/``Delete`` with one id;
# the clients' ``get(id)`` sends ``get``, ``delete(id)`` sends ``delete``), see docs/grpc.md.
SHORTHANDS = {"get_one": "get", "delete_one": "delete"}


def test_every_operation_has_a_rest_route() -> None:
    routed = [r.op for r in ROUTES]
    assert sorted(set(routed)) == sorted(OPS)
    assert len(routed) == len(set(routed)), "an operation has two routes"


def test_every_operation_has_a_grpc_method() -> None:
    ops = [rpc.op for rpc in RPCS.values()]
    assert sorted(set(ops)) == sorted(set(OPS) - set(SHORTHANDS))
    assert len(ops) == len(set(ops)), "an operation has two RPCs"


def test_admin_operations_are_keys_erase_backups_and_stats() -> None:
    keys = {"create_key", "list_keys", "revoke_key", "rotate_key"}
    backups = {"create_backup", "list_backups", "verify_backup"}
    assert keys | {"erase_tenant", "stats"} | backups == ADMIN_OPS


def test_every_path_parameter_is_in_the_openapi_document() -> None:
    from engramdb.server.rest.openapi import build_openapi

    paths = build_openapi("test")["paths"]
    for r in ROUTES:
        params = paths[r.openapi_path][r.method.lower()]["parameters"]
        assert {p["name"] for p in params if p["in"] == "path"} == set(re.findall(r"\{(\w+)", r.path)), r.path


def _route_regex(path: str) -> re.Pattern[str]:
    out = ""
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{"):
            out += ".+" if part.endswith(":path}") else "[^/]+"
        else:
            out += re.escape(part)
    return re.compile(out + "$")


_ROUTE_PATTERNS = [(r.method, _route_regex(r.path), r.op) for r in ROUTES]


def _op_of(request: httpx.Request) -> str:
    found = [op for method, rx, op in _ROUTE_PATTERNS if method == request.method and rx.match(request.url.path)]
    assert len(found) == 1, f"{request.method} {request.url.path} matches routes {found}"
    return found[0]


def _refuse(sent: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(_op_of(request))
        return httpx.Response(400, json={"error": {"code": "invalid_argument", "message": "refused by the test"}})

    return httpx.MockTransport(handle)


CONFIG = CollectionConfig.model_validate({"name": "c", "dimension": 4})
VEC = [1.0, 0.0, 0.0, 0.0]
# One sample call per declared method that talks to the server.
DB_CALLS: dict[str, Callable[[Any], Any]] = {
    "create_collection": lambda db: db.create_collection("c", 4),
    "get_collection": lambda db: db.get_collection("c"),
    "list_collections": lambda db: db.list_collections(),
    "delete_collection": lambda db: db.delete_collection("c"),
    "alter_collection": lambda db: db.alter_collection("c", indexed_fields={"lang": "keyword"}),
}
COLL_CALLS: dict[str, Callable[[Any], Any]] = {
    "upsert": lambda c: c.upsert({"id": "a", "vector": VEC}),
    "patch": lambda c: c.patch("a", text="t"),
    "delete": lambda c: c.delete(["a"]),
    "refresh_ttl": lambda c: c.refresh_ttl(["a"]),
    "get": lambda c: c.get("a"),
    "get_many": lambda c: c.get_many(["a"]),
    "count": lambda c: c.count(),
    "scan": lambda c: c.scan(),
    "list_namespaces": lambda c: c.list_namespaces(),
    "search": lambda c: c.search(VEC),
    "link": lambda c: c.link({"src": "a", "relation": "r", "dst": "b"}),
    "unlink": lambda c: c.unlink([("a", "r", "b")]),
    "edges": lambda c: c.edges("a"),
    "neighbors": lambda c: c.neighbors("a"),
    "subgraph": lambda c: c.subgraph(["a"]),
    "extract": lambda c: c.extract("Ada wrote about the engine."),
}


# The clients' admin calls: keys, erase, backups (not in the Protocols: the engine has no API keys).
KEY_CALLS: dict[str, Callable[[Any], Any]] = {
    "create_key": lambda db: db.create_key("reader"),
    "list_keys": lambda db: db.list_keys(),
    "revoke_key": lambda db: db.revoke_key("0123456789abcdef"),
    "rotate_key": lambda db: db.rotate_key("0123456789abcdef", grace_seconds=0),
    "erase_tenant": lambda db: db.erase_tenant("acme", confirm="acme"),
    # The operator's backups (bootstrap admin key only; docs/backup.md).
    "create_backup": lambda db: db.create_backup("nightly"),
    "list_backups": lambda db: db.list_backups(),
    "verify_backup": lambda db: db.verify_backup("nightly"),
    # Memory per component of the node (docs/observability.md).
    "stats": lambda db: db.stats(limit=5),
}


def test_sample_calls_cover_the_declared_api() -> None:
    declared = {n for n in (*_members(DatabaseAPI), *_members(CollectionAPI)) if not n.startswith("__")}
    local = {"name", "dimension", "metric", "closed", "close", *LOCAL_METHODS}  # answered without a request
    assert set(DB_CALLS) | set(COLL_CALLS) == declared - local


def _sent_by(kind: str) -> dict[str, str]:
    """The operation each client method sends, read from the requests it makes."""
    out: dict[str, str] = {}
    for name, call in {**DB_CALLS, **KEY_CALLS, **COLL_CALLS}.items():
        sent: list[str] = []
        if kind == "sync":
            client: Any = Client("http://engramdb.test", "k", retries=0, transport=_refuse(sent))
            target = client if name in DB_CALLS or name in KEY_CALLS else RemoteCollection(client, CONFIG)
            with pytest.raises(InvalidArgument):
                call(target)
            client.close()
        else:

            async def run(call: Callable[[Any], Any] = call, name: str = name, sent: list[str] = sent) -> None:
                client = AsyncClient("http://engramdb.test", "k", retries=0, transport=_refuse(sent))
                target = client if name in DB_CALLS or name in KEY_CALLS else AsyncRemoteCollection(client, CONFIG)
                with pytest.raises(InvalidArgument):
                    await call(target)
                await client.close()

            asyncio.run(run())
        assert len(sent) == 1, f"{kind} {name} sent {sent}"
        out[name] = sent[0]
    return out


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_operation_has_a_client_call(kind: str) -> None:
    sent = _sent_by(kind)
    # A client method sends the operation of its own name (``get``/``get_many`` both send the batch ``get``).
    assert {m: op for m, op in sent.items() if op != m} == {"get_many": "get"}
    reached = set(sent.values())
    needed = {SHORTHANDS.get(op, op) for op in OPS}
    assert needed <= reached, f"operations no client method sends: {sorted(needed - reached)}"
    assert set(SHORTHANDS) <= set(OPS)


def test_shorthands_answer_like_their_batch_operation() -> None:
    # What makes a shorthand one: the same handler family, only the id moves into the path.
    for short, batch in SHORTHANDS.items():
        assert OPS[short].role == OPS[batch].role
        assert OPS[short].scope == OPS[batch].scope
        assert "id" in OPS[short].model.model_fields
