"""The clients' second transport: a :class:`~engramdb.client.calls.Call` sent as a gRPC call.

``engramdb.connect(url, ..., prefer_grpc=True)`` (and ``AsyncClient``) send every operation to the
server's gRPC port with the generated ``EngramDBStub`` instead of as an HTTP request. A Call keeps
its REST body as the description of the operation: :func:`encode` turns it into the request
message (the reverse of ``server/grpc/convert.py``'s ``*_in``), and the answer message is turned
into the very dict REST returns (``engramdb.grpc_codec``) so the Call's own decoder builds the
result. Errors and retries follow the REST client's rules (``calls.Failure``, ``RetryPolicy``).

A body the protobuf types cannot carry exactly (a float where the proto has an integer, an id
that is not a string, an unknown record field, an empty list where the proto's empty list means
"not given" ...) raises :class:`NotRepresentable`; the client then sends that one call over REST,
so the server's validation answers it with the same error as always.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import grpc.aio
from google.protobuf.message import Message

from engramdb.client import calls
from engramdb.errors import (
    Closed,
    DeadlineExceeded,
    EngramError,
    InvalidArgument,
    RateLimited,
    Unavailable,
    error_from_dict,
)
from engramdb.grpc_codec import (
    collection_to_dict,
    edge_to_dict,
    extract_to_dict,
    hit_to_dict,
    pack_vector,
    record_to_dict,
    stats_to_dict,
)
from engramdb.grpc_codec import engramdb_pb2 as pb
from engramdb.grpc_codec.engramdb_pb2_grpc import EngramDBStub

T = TypeVar("T")

DEFAULT_GRPC_PORT = 7879  # the server's default server.grpc_port
ERROR_CODE_KEY = "engramdb-error-code"
_INT32 = 2**31
_F32_MAX = 3.4028234663852886e38

# The HTTP status REST would have answered with, for error_from_dict's choice of class by status.
_HTTP_OF = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "DATA_LOSS": 500,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 405,
}


class NotRepresentable(Exception):
    """The call's body has a value protobuf cannot carry exactly: send this call over REST."""


# ------------------------------------------------------------ field values
# Strict: protobuf would quietly turn True into 1 or 2.5 into an error of its own, where REST
# hands the value to the server's validation. Anything not exactly representable goes over REST.
def _str(v: Any) -> str:
    if type(v) is not str:
        raise NotRepresentable
    return v


def _int32(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not -_INT32 <= v < _INT32:
        raise NotRepresentable
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise NotRepresentable
    try:
        return float(v)
    except OverflowError:
        raise NotRepresentable from None


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise NotRepresentable
    return v


def _strs(v: Any, *, empty_ok: bool = True) -> list[str]:
    """A list of strings; ``empty_ok=False`` where the proto's empty list means "not given"."""
    if not isinstance(v, list) or (not v and not empty_ok):
        raise NotRepresentable
    return [_str(x) for x in v]


def _json(v: Any) -> str:
    """JSON text for a ``*_json`` field, encoded exactly as the REST body would be (never empty)."""
    try:
        return json.dumps(v, default=calls._json_default, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        raise NotRepresentable from None  # REST refuses it with the usual error


def _vector(v: Any) -> bytes:
    if not isinstance(v, list):
        raise NotRepresentable
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or abs(x) > _F32_MAX:
            raise NotRepresentable  # not a number, or one float32 cannot hold: the server's validation decides
    return pack_vector(v)


class _Body:
    """The body's keys, consumed one by one; a key left over means the proto has no field for it."""

    def __init__(self, body: Mapping[str, Any] | None):
        self.rest = dict(body or {})

    def has(self, key: str) -> bool:
        return key in self.rest

    def take(self, key: str) -> Any:
        return self.rest.pop(key, None)

    def set(self, kw: dict[str, Any], key: str, conv: Callable[[Any], Any], field: str | None = None) -> None:
        """``kw[field] = conv(value)`` when the body has ``key`` with a value (None = not given)."""
        value = self.rest.pop(key, None)
        if value is not None:
            kw[field or key] = conv(value)

    def include(self, kw: dict[str, Any]) -> None:
        # FieldList: present (even empty) = these fields; absent = the operation's default.
        if "include" in self.rest:
            value = self.rest.pop("include")
            if value is not None:
                kw["include"] = pb.FieldList(fields=_strs(value))

    def done(self, kw: dict[str, Any]) -> dict[str, Any]:
        self.set(kw, "consistency", _str)
        if self.rest:
            raise NotRepresentable
        return kw


def _coll(args: Mapping[str, str] | None) -> dict[str, Any]:
    return {"coll": (args or {})["coll"]}


def _record(d: Any) -> pb.Record:
    if not isinstance(d, Mapping):
        raise NotRepresentable
    b = _Body(d)
    if "id" not in b.rest:
        raise NotRepresentable
    kw: dict[str, Any] = {"id": _str(b.take("id"))}
    b.set(kw, "vector", _vector)
    b.set(kw, "text", _str)
    if b.has("metadata"):
        md = b.take("metadata")
        if md is None:
            raise NotRepresentable
        kw["metadata_json"] = _json(md)
    if b.has("namespace"):
        kw["namespace"] = _strs(b.take("namespace"))
    for name in ("ttl_seconds", "expires_at", "importance"):
        b.set(kw, name, _float)
    # System fields a Record read back carries; the server ignores them on input over both transports.
    for name, conv in (("created_at", _float), ("updated_at", _float), ("version", _str)):
        b.set({}, name, conv)
    if b.rest:
        raise NotRepresentable
    return pb.Record(**kw)


def _edge(d: Any) -> pb.Edge:
    if not isinstance(d, Mapping) or not {"src", "relation", "dst"} <= d.keys():
        raise NotRepresentable
    b = _Body(d)
    kw: dict[str, Any] = {k: _str(b.take(k)) for k in ("src", "relation", "dst")}
    b.set(kw, "weight", _float)
    if b.has("properties"):
        props = b.take("properties")
        if props is None:
            raise NotRepresentable
        kw["properties_json"] = _json(props)
    b.set({}, "version", _str)
    if b.rest:
        raise NotRepresentable
    return pb.Edge(**kw)


def _edge_key(d: Any) -> pb.EdgeKey:
    if not isinstance(d, Mapping) or set(d) != {"src", "relation", "dst"}:
        raise NotRepresentable
    return pb.EdgeKey(src=_str(d["src"]), relation=_str(d["relation"]), dst=_str(d["dst"]))


def _items(v: Any, conv: Callable[[Any], Any]) -> list[Any]:
    if not isinstance(v, list):
        raise NotRepresentable
    return [conv(x) for x in v]


# ------------------------------------------------------------ requests
# One builder per operation: (path args, REST body) -> request message.
def _create_collection(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw: dict[str, Any] = {}
    b.set(kw, "name", _str)
    b.set(kw, "dimension", _int32)
    b.set(kw, "metric", _str)
    b.set(kw, "index", _json, "index_json")
    b.set(kw, "embedder", _json, "embedder_json")
    b.set(kw, "default_ttl_seconds", _float)
    if b.has("indexed_fields"):
        fields = b.take("indexed_fields")
        if not isinstance(fields, dict):
            raise NotRepresentable
        kw["indexed_fields"] = {_str(k): _str(t) for k, t in fields.items()}
    b.set(kw, "text_index", _bool)
    b.set(kw, "exist_ok", _bool)
    b.set(kw, "shards", _int32)
    b.set(kw, "replication_factor", _int32)
    if b.rest:
        raise NotRepresentable
    return pb.CreateCollectionRequest(**kw)


def _get_collection(args: Any, body: Any) -> Message:
    return pb.GetCollectionRequest(**_Body(body).done(_coll(args)))


def _field_type(t: Any) -> str:
    if t is None:
        return ""  # the map's way to say null: stop indexing the field
    if _str(t) == "":
        raise NotRepresentable  # a caller's own "" must reach the server as itself, not as null
    return str(t)


def _alter_collection(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    if b.has("indexed_fields"):
        fields = b.take("indexed_fields")
        if not isinstance(fields, dict):
            raise NotRepresentable
        # The map's "" is null (stop indexing); a caller's own "" must reach the server as itself.
        kw["indexed_fields"] = {_str(k): _field_type(t) for k, t in fields.items()}
    if b.has("default_ttl_seconds"):
        ttl = b.take("default_ttl_seconds")
        if ttl is None:
            kw["clear_default_ttl"] = True
        else:
            kw["default_ttl_seconds"] = _float(ttl)
    b.set(kw, "ef_search", _int32)
    if b.rest:
        raise NotRepresentable
    return pb.AlterCollectionRequest(**kw)


def _upsert(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    kw["records"] = _items(b.take("records"), _record)
    return pb.UpsertRequest(**b.done(kw))


def _get(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    kw["ids"] = _strs(b.take("ids"))
    b.include(kw)
    b.set(kw, "refresh_ttl", _bool)
    return pb.GetRequest(**b.done(kw))


def _patch(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = {**_coll(args), "id": args["id"]}
    b.set(kw, "metadata", _json, "metadata_json")
    b.set(kw, "text", _str)
    if b.has("namespace"):
        kw["namespace"] = pb.StringList(values=_strs(b.take("namespace")))
    b.set(kw, "ttl_seconds", _float)
    b.set(kw, "importance", _float)
    b.set(kw, "vector", _vector)
    return pb.PatchRequest(**b.done(kw))


def _delete(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    b.set(kw, "ids", lambda v: _strs(v, empty_ok=False))
    b.set(kw, "filter", _json, "filter_json")
    return pb.DeleteRequest(**b.done(kw))


def _count(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    b.set(kw, "filter", _json, "filter_json")
    return pb.CountRequest(**b.done(kw))


def _scan(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    b.set(kw, "cursor", _str)
    b.set(kw, "limit", _int32)
    b.set(kw, "id_prefix", _str)
    b.set(kw, "namespace_prefix", lambda v: _strs(v, empty_ok=False))
    b.set(kw, "filter", _json, "filter_json")
    b.include(kw)
    return pb.ScanRequest(**b.done(kw))


def _list_namespaces(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    b.set(kw, "prefix", lambda v: _strs(v, empty_ok=False))
    b.set(kw, "suffix", lambda v: _strs(v, empty_ok=False))
    for name in ("max_depth", "limit", "offset"):
        b.set(kw, name, _int32)
    return pb.ListNamespacesRequest(**b.done(kw))


def _search(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    b.set(kw, "vector", _vector)
    b.set(kw, "k", _int32)
    b.set(kw, "filter", _json, "filter_json")
    b.set(kw, "ef", _int32)
    b.include(kw)
    b.set(kw, "exact", _bool)
    b.set(kw, "text", _str)
    b.set(kw, "mode", _str)
    b.set(kw, "weights", _json, "weights_json")
    b.set(kw, "expand", _json, "expand_json")
    b.set(kw, "min_score", _float)
    b.set(kw, "refresh_ttl", _bool)
    return pb.SearchRequest(**b.done(kw))


def _refresh_ttl(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    kw["ids"] = _strs(b.take("ids"))
    return pb.RefreshTtlRequest(**b.done(kw))


def _link(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    kw["edges"] = _items(b.take("edges"), _edge)
    b.set(kw, "create_missing", _bool)
    return pb.LinkRequest(**b.done(kw))


def _unlink(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    kw["edges"] = _items(b.take("edges"), _edge_key)
    return pb.UnlinkRequest(**b.done(kw))


def _edges(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    kw["id"] = _str(b.take("id"))
    b.set(kw, "direction", _str)
    b.set(kw, "relation", _str)
    b.set(kw, "limit", _int32)
    return pb.EdgesRequest(**b.done(kw))


def _walk(b: _Body, kw: dict[str, Any], *ints: str) -> None:
    for name in ints:
        b.set(kw, name, _int32)
    b.set(kw, "relations", lambda v: _strs(v, empty_ok=False))
    b.set(kw, "direction", _str)
    b.include(kw)
    b.set(kw, "timeout_ms", _float)


def _neighbors(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    kw["id"] = _str(b.take("id"))
    _walk(b, kw, "hops", "limit", "fanout")
    return pb.NeighborsRequest(**b.done(kw))


def _subgraph(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    kw["ids"] = _strs(b.take("ids"))
    _walk(b, kw, "hops", "limit")
    return pb.SubgraphRequest(**b.done(kw))


def _extract(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = _coll(args)
    kw["text"] = _str(b.take("text"))
    b.set(kw, "instructions", _str)
    b.set(kw, "namespace", lambda v: _strs(v, empty_ok=False))
    b.set(kw, "dedupe_threshold", _float)
    b.set(kw, "source_id", _str)
    return pb.ExtractRequest(**b.done(kw))


def _create_key(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw: dict[str, Any] = {"role": _str(b.take("role"))}
    b.set(kw, "tenant", _str)
    b.set(kw, "collections", lambda v: _strs(v, empty_ok=False))
    b.set(kw, "expires_at", _float)
    b.set(kw, "name", _str)
    if b.rest:
        raise NotRepresentable
    return pb.CreateKeyRequest(**kw)


def _rotate_key(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw: dict[str, Any] = {"key_id": args["key_id"]}
    b.set(kw, "grace_seconds", _float)
    if b.rest:
        raise NotRepresentable
    return pb.RotateKeyRequest(**kw)


def _erase_tenant(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw: dict[str, Any] = {"tenant": args["tenant"]}
    b.set(kw, "confirm", _str)
    if b.rest:
        raise NotRepresentable
    return pb.EraseTenantRequest(**kw)


def _only(make: Callable[..., Message], **from_args: str) -> Callable[[Any, Any], Message]:
    """A request whose fields are path arguments alone (or nothing)."""

    def build(args: Any, body: Any) -> Message:
        if body:
            raise NotRepresentable
        return make(**{field: args[key] for field, key in from_args.items()})

    return build


def _create_backup(args: Any, body: Any) -> Message:
    b = _Body(body)
    kw = {"name": _str(b.take("name"))}
    if b.rest:
        raise NotRepresentable
    return pb.CreateBackupRequest(**kw)


def _stats(args: Any, body: Any) -> Message:
    if body:
        raise NotRepresentable
    if "limit" not in args:
        return pb.StatsRequest()
    # Not an integer, or out of uint32 (ValueError, caught by encode): REST carries it, for the server to refuse.
    return pb.StatsRequest(limit=int(args["limit"]))


# ------------------------------------------------------------ answers
# Each gives the dict REST answers with, for the Call's own decoder.
def _opt(m: Any, name: str) -> Any:
    return getattr(m, name) if m.HasField(name) else None


def _new_key(m: Any) -> dict[str, Any]:
    return {
        "key": m.key,
        "id": m.id,
        "role": m.role,
        "tenant": m.tenant,
        "collections": list(m.collections) or None,
        "expires_at": _opt(m, "expires_at"),
        "name": _opt(m, "name"),
    }


def _key_info(m: Any) -> dict[str, Any]:
    return {
        "id": m.id,
        "tenant": m.tenant,
        "role": m.role,
        "collections": list(m.collections) or None,
        "expires_at": _opt(m, "expires_at"),
        "revoked": m.revoked,
        "name": _opt(m, "name"),
        "created_at": _opt(m, "created_at"),
        "replaced_by": _opt(m, "replaced_by"),
    }


def _backup(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": m.name, "status": m.status}
    for name in ("created_at", "seq", "engramdb_version", "bytes", "files", "problem"):
        d[name] = _opt(m, name)
    return d


def _records(m: Any) -> dict[str, Any]:
    return {"records": [record_to_dict(r) for r in m.records]}


def _hits(m: Any) -> dict[str, Any]:
    return {"hits": [hit_to_dict(h) for h in m.hits]}


def _collection(m: Any) -> dict[str, Any]:
    return {"collection": collection_to_dict(m.collection)}


Builder = Callable[[Any, Any], Message]
Reader = Callable[[Any], Any]

# op -> (RPC of engramdb.v1.EngramDB, request builder, answer reader). Every operation of the
# clients has one (tests/integration/test_client_grpc.py checks it against the server's table).
OPS: dict[str, tuple[str, Builder, Reader]] = {
    "create_collection": ("CreateCollection", _create_collection, _collection),
    "list_collections": (
        "ListCollections",
        _only(pb.ListCollectionsRequest),
        lambda m: {"collections": [collection_to_dict(c) for c in m.collections]},
    ),
    "get_collection": (
        "GetCollection",
        _get_collection,
        lambda m: {"collection": collection_to_dict(m.collection), "count": m.count},
    ),
    "alter_collection": ("AlterCollection", _alter_collection, _collection),
    "delete_collection": (
        "DeleteCollection",
        _only(pb.DeleteCollectionRequest, coll="coll"),
        lambda m: {"deleted": m.deleted},
    ),
    "upsert": ("Upsert", _upsert, lambda m: {"versions": list(m.versions)}),
    "get": ("Get", _get, _records),
    "patch": ("Patch", _patch, lambda m: {"record": record_to_dict(m.record)}),
    "delete": ("Delete", _delete, lambda m: {"deleted": m.deleted}),
    "scan": (
        "Scan",
        _scan,
        lambda m: {**_records(m), "next_cursor": _opt(m, "next_cursor")},
    ),
    "count": ("Count", _count, lambda m: {"count": m.count}),
    "refresh_ttl": ("RefreshTtl", _refresh_ttl, lambda m: {"refreshed": m.refreshed}),
    "search": ("Search", _search, _hits),
    "list_namespaces": (
        "ListNamespaces",
        _list_namespaces,
        lambda m: {"namespaces": [list(ns.path) for ns in m.namespaces]},
    ),
    "link": ("Link", _link, lambda m: {"versions": list(m.versions)}),
    "unlink": ("Unlink", _unlink, lambda m: {"deleted": m.deleted}),
    "edges": ("Edges", _edges, lambda m: {"edges": [edge_to_dict(e) for e in m.edges]}),
    "neighbors": ("Neighbors", _neighbors, _hits),
    "subgraph": (
        "Subgraph",
        _subgraph,
        lambda m: {"nodes": [record_to_dict(r) for r in m.nodes], "edges": [edge_to_dict(e) for e in m.edges]},
    ),
    "extract": ("Extract", _extract, extract_to_dict),
    "create_key": ("CreateKey", _create_key, _new_key),
    "list_keys": ("ListKeys", _only(pb.ListKeysRequest), lambda m: {"keys": [_key_info(k) for k in m.keys]}),
    "revoke_key": ("RevokeKey", _only(pb.RevokeKeyRequest, key_id="key_id"), lambda m: {"revoked": m.revoked}),
    "rotate_key": ("RotateKey", _rotate_key, _new_key),
    "erase_tenant": (
        "EraseTenant",
        _erase_tenant,
        lambda m: {"tenant": m.tenant, "collections": m.collections, "keys": m.keys},
    ),
    "create_backup": ("CreateBackup", _create_backup, lambda m: {"backup": _backup(m.backup)}),
    "list_backups": (
        "ListBackups",
        _only(pb.ListBackupsRequest),
        lambda m: {"backups": [_backup(x) for x in m.backups]},
    ),
    "verify_backup": (
        "VerifyBackup",
        _only(pb.VerifyBackupRequest, name="name"),
        lambda m: {"backup": _backup(m.backup)},
    ),
    "stats": ("Stats", _stats, stats_to_dict),
}


def encode(call: calls.Call[Any]) -> tuple[str, Message]:
    """The RPC name and request message of ``call``; raises :class:`NotRepresentable` (send it over REST)."""
    entry = OPS.get(call.op)
    if entry is None:
        raise NotRepresentable
    rpc, build, _ = entry
    try:
        return rpc, build(call.args, call.body)
    except (TypeError, ValueError, KeyError):
        # protobuf's own refusal of a value the checks above let through: REST carries it as it is.
        raise NotRepresentable from None


def decode(call: calls.Call[T], response: Message) -> T | calls.Failure:
    """The call's result from the answer message, or a ``bad_response`` Failure."""
    try:
        return call.decode(OPS[call.op][2](response))
    except (ValueError, KeyError, TypeError) as e:
        return calls.Failure(
            EngramError(
                f"{call.op}: the server's gRPC answer is not what the API contract says: {e!r}", code="bad_response"
            ),
            retryable=False,
        )


def rpc_failure(call: calls.Call[Any], exc: grpc.RpcError, target: str, timeout: float | None) -> calls.Failure:
    """The error an RPC failure stands for, and whether a retry may help (as ``calls.decode_response`` decides)."""
    code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
    details: str = exc.details() or ""  # type: ignore[attr-defined]
    trailers = {k: v for k, v in (exc.trailing_metadata() or ()) if isinstance(v, str)}  # type: ignore[attr-defined]
    body: Any = None
    if details.startswith("{"):
        try:
            body = json.loads(details)
        except ValueError:
            body = None
    retry_after = calls.parse_retry_after(trailers.get("retry-after"))
    if isinstance(body, dict) and "code" in body and (ERROR_CODE_KEY in trailers or "message" in body):
        err = error_from_dict(body, _HTTP_OF.get(code.name))
        if isinstance(err, RateLimited) and retry_after is None:
            retry_after = err.retry_after
        transient = type(err).code in calls._TRANSIENT_CODES or err.code in calls._TRANSIENT_CODES
        retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED) and transient
        # Like REST's 429: a rate-limited call was refused before anything ran.
        return calls.Failure(
            err, retryable=retryable, not_executed=isinstance(err, RateLimited), retry_after=retry_after
        )
    # No EngramDB error: gRPC itself (no connection, deadline) or a proxy answered.
    where = f"{call.op} over gRPC to {target}"
    if code is grpc.StatusCode.UNAVAILABLE:
        # Whether the request reached the server is unknown (gRPC already retries, transparently,
        # what never left this process), so only idempotent calls are retried.
        return calls.Failure(Unavailable(f"{where}: the server is unavailable: {details}"), retryable=True)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return calls.Failure(DeadlineExceeded(f"{where}: no answer within {timeout}s"), retryable=False)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        msg = f"{where}: the server has no such RPC ({details}); is it an older EngramDB? connect without prefer_grpc"
        return calls.Failure(EngramError(msg, code="unimplemented"), retryable=False)
    msg = f"{where}: {code.name}: {details}"
    return calls.Failure(
        error_from_dict({"code": f"grpc_{code.name.lower()}", "message": msg}, _HTTP_OF.get(code.name)),
        retryable=False,
    )


# ------------------------------------------------------------ channels
def target_of(url: str, grpc_target: str | None) -> str:
    """``host:port`` to dial: ``grpc_target`` if given, else the URL's host on the default gRPC port."""
    if grpc_target is not None:
        if not isinstance(grpc_target, str) or not grpc_target or any(c.isspace() for c in grpc_target):
            raise InvalidArgument(f"grpc_target must look like host:7879, got {grpc_target!r}", code="invalid_url")
        return grpc_target
    host = urlsplit(url).hostname
    if not host:
        raise InvalidArgument(f"the url {url!r} has no host to dial for gRPC; pass grpc_target", code="invalid_url")
    return f"[{host}]:{DEFAULT_GRPC_PORT}" if ":" in host else f"{host}:{DEFAULT_GRPC_PORT}"


def credentials(url: str, verify: bool | str | ssl.SSLContext) -> grpc.ChannelCredentials | None:
    """TLS for an https URL, trusting what REST would trust; None (plaintext) for http."""
    if not url.lower().startswith("https://"):
        return None
    if verify is True:
        return grpc.ssl_channel_credentials()  # the system's roots, as httpx's default
    if isinstance(verify, str):
        try:
            ca = Path(verify).read_bytes()
        except OSError as e:
            raise InvalidArgument(f"cannot read the CA bundle {verify!r}: {e}", code="invalid_argument") from e
        return grpc.ssl_channel_credentials(root_certificates=ca)
    # gRPC can neither skip verification nor take an SSLContext.
    raise InvalidArgument(
        "prefer_grpc needs verify=True or a CA bundle path with an https URL (gRPC cannot use "
        f"verify={verify!r}); connect without prefer_grpc to use it over REST",
        code="invalid_argument",
    )


def metadata(api_key: str | None, tenant: str | None) -> tuple[tuple[str, str], ...]:
    """The request metadata: the same key and tenant the REST headers carry."""
    h = calls.headers(api_key, tenant)
    md = []
    if "Authorization" in h:
        md.append(("authorization", h["Authorization"]))
    if calls.TENANT_HEADER in h:
        md.append(("x-engramdb-tenant", h[calls.TENANT_HEADER]))
    return tuple(md)


def _options() -> list[tuple[str, Any]]:
    from engramdb._version import __version__

    return [
        # gRPC's default 4 MB receive cap would fail large scans and get_many answers that REST returns.
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_send_message_length", -1),
        ("grpc.primary_user_agent", f"{calls.USER_AGENT}/{__version__}"),
    ]


class _Settings:
    def __init__(
        self,
        url: str,
        api_key: str | None,
        tenant: str | None,
        verify: bool | str | ssl.SSLContext,
        grpc_target: str | None,
    ):
        self.target = target_of(url, grpc_target)
        self.creds = credentials(url, verify)
        self.metadata = metadata(api_key, tenant)


class GrpcTransport:
    """A channel to the server's gRPC port for the blocking client (thread-safe, like the channel)."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        tenant: str | None,
        verify: bool | str | ssl.SSLContext,
        grpc_target: str | None,
    ):
        s = _Settings(url, api_key, tenant, verify, grpc_target)
        self.target, self._metadata = s.target, s.metadata
        options = _options()
        if s.creds is None:
            self._channel = grpc.insecure_channel(s.target, options=options)
        else:
            self._channel = grpc.secure_channel(s.target, s.creds, options=options)
        stub = EngramDBStub(self._channel)
        self._methods = {rpc: getattr(stub, rpc) for rpc, _, _ in OPS.values()}
        self._closed = False
        self._lock = threading.Lock()

    def run(
        self, call: calls.Call[T], rpc: str, request: Message, policy: calls.RetryPolicy, timeout: float | None
    ) -> T:
        """Send ``request``, retrying as ``policy`` allows; the result or the engine's exception."""
        method = self._methods[rpc]
        deadline = timeout if call.timeout is None else call.timeout
        attempt = 0
        while True:
            cause: BaseException | None = None
            try:
                response = method(request, metadata=self._metadata, timeout=deadline)
            except grpc.RpcError as e:
                if self._closed:
                    raise Closed("the client is closed") from e
                cause = e
                outcome: T | calls.Failure = rpc_failure(call, e, self.target, deadline)
            except ValueError as e:
                # grpc raises ValueError for a call on a closed channel.
                if self._closed:
                    raise Closed("the client is closed") from e
                raise
            else:
                outcome = decode(call, response)
            if not isinstance(outcome, calls.Failure):
                return outcome
            delay = policy.delay(call, attempt, outcome)
            if delay is None:
                raise outcome.error from cause
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._channel.close()


class AsyncGrpcTransport:
    """A ``grpc.aio`` channel for the asyncio client, opened on the event loop of the first call."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        tenant: str | None,
        verify: bool | str | ssl.SSLContext,
        grpc_target: str | None,
    ):
        s = _Settings(url, api_key, tenant, verify, grpc_target)
        self.target, self._metadata, self._creds = s.target, s.metadata, s.creds
        self._channel: grpc.aio.Channel | None = None
        self._methods: dict[str, Any] = {}
        self._closed = False

    def _open(self) -> dict[str, Any]:
        if self._channel is None:
            options = _options()
            if self._creds is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._creds, options=options)
            stub = EngramDBStub(self._channel)
            self._methods = {rpc: getattr(stub, rpc) for rpc, _, _ in OPS.values()}
        return self._methods

    async def run(
        self, call: calls.Call[T], rpc: str, request: Message, policy: calls.RetryPolicy, timeout: float | None
    ) -> T:
        method = self._open()[rpc]
        deadline = timeout if call.timeout is None else call.timeout
        attempt = 0
        while True:
            cause: BaseException | None = None
            try:
                response = await method(request, metadata=self._metadata, timeout=deadline)
            except grpc.aio.AioRpcError as e:
                if self._closed:
                    raise Closed("the client is closed") from e
                cause = e
                outcome: T | calls.Failure = rpc_failure(call, e, self.target, deadline)
            except (grpc.aio.UsageError, asyncio.CancelledError) as e:
                if self._closed:
                    raise Closed("the client is closed") from e
                raise
            else:
                outcome = decode(call, response)
            if not isinstance(outcome, calls.Failure):
                return outcome
            delay = policy.delay(call, attempt, outcome)
            if delay is None:
                raise outcome.error from cause
            await asyncio.sleep(delay)
            attempt += 1

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._channel is not None:
            await self._channel.close()


__all__ = ["OPS", "AsyncGrpcTransport", "GrpcTransport", "NotRepresentable", "decode", "encode", "rpc_failure"]
