"""The client's operations as HTTP calls, and the plumbing both clients share.

The sync and async clients differ only in how they wait (``time.sleep`` vs
``asyncio.sleep``, ``httpx.Client`` vs ``httpx.AsyncClient``). Everything else
lives here so that the two cannot drift apart: how each operation of
``docs/api-contract.md`` becomes an HTTP request (:class:`Call`), how an answer
becomes the engine's return type or exception (:func:`decode_response`,
:func:`transport_error`), and when a failed attempt is retried
(:class:`RetryPolicy`).
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import EllipsisType
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from engramdb.errors import (
    DeadlineExceeded,
    DimensionMismatch,
    EngramError,
    InvalidArgument,
    RateLimited,
    Unavailable,
    error_from_dict,
)
from engramdb.types import (
    ApiKeyInfo,
    BackupInfo,
    CollectionConfig,
    Edge,
    ExtractResult,
    Hit,
    NewApiKey,
    Record,
    ScanPage,
    TenantErased,
)

try:  # orjson parses large responses (vectors) several times faster; stdlib json is the fallback.
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson ships with the server extra only
    _loads = json.loads

T = TypeVar("T")

TENANT_HEADER = "X-EngramDB-Tenant"
API_KEY_ENV = "ENGRAMDB_API_KEY"
USER_AGENT = "engramdb-python"

# Statuses a proxy or a busy/starting node answers with. Whether the request was
# executed is unknown for 502/503/504, so only idempotent calls are retried on
# them; 429 is answered before anything runs, so every call may be retried.
_RETRY_STATUSES = frozenset({502, 503, 504})
_RATE_LIMITED = 429
# When the EngramDB server itself answers (an error body is present), only these
# codes describe a transient state of the node. Its own 504 (an operation ran out
# of time, e.g. a graph traversal past timeout_ms) and 502 (the embedding
# provider failed after the server's own retries) would most likely fail again.
_TRANSIENT_CODES = frozenset({"unavailable", "closed", "rate_limited"})

# Idle pooled connections are dropped after 2 s, below uvicorn's 5 s keep-alive:
# reusing a connection the server is closing at that moment fails after the
# request was written, which a non-idempotent call (patch, delete) must not retry.
POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)


# --------------------------------------------------------------------- calls
@dataclass(frozen=True)
class Call(Generic[T]):
    """One operation as an HTTP request plus the decoder of its answer.

    ``idempotent`` says whether sending it twice leaves the same state and
    returns the same answer, which is what allows a retry after an ambiguous
    failure (the request may or may not have run).
    """

    op: str
    method: str
    path: str
    body: dict[str, Any] | None
    decode: Callable[[Any], T]
    idempotent: bool
    timeout: float | None = None  # seconds for this call; None = the client's timeout
    # The values of the path's parameters (coll, id, key_id, tenant, name), which gRPC sends as fields.
    args: Mapping[str, str] | None = None


def _seg(value: str) -> str:
    """Percent-encode one path segment (ids may contain '/', '?', '#', spaces ...).

    '.' and '..' are escaped too: URL normalisation would otherwise remove them as
    dot-segments and the request would hit a different resource.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"expected a string, got {type(value).__name__}", code="invalid_id")
    if value in (".", ".."):
        return value.replace(".", "%2E")
    return quote(value, safe="")


def coll_path(coll: str, *rest: str) -> str:
    """``/v1/collections/{coll}/...`` with every variable segment escaped."""
    return "/".join(["/v1/collections", _seg(coll), *rest])


def _compact(d: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None values: the server then applies the engine's own default.

    Only parameters whose None means "the default" go through here; where None
    means something else (search ``include``), callers encode it explicitly.
    """
    return {k: v for k, v in d.items() if v is not None}


def _ids(ids: str | Sequence[str]) -> list[str]:
    # The engine accepts a single id as a string; the wire always carries a list.
    return [ids] if isinstance(ids, str) else list(ids)


def _include(include: Iterable[str] | None) -> list[str] | None:
    if include is None:
        return None
    return [include] if isinstance(include, str) else list(include)


def _opt_list(value: Sequence[str] | None) -> list[str] | None:
    return None if value is None else list(value)


def _vector(value: Any, dimension: int | None, where: str) -> Any:
    """A vector ready for JSON (numpy → list), rejecting what JSON cannot carry.

    JSON has no NaN or Infinity, so such a vector cannot reach the server; raise
    the error the engine would raise (same class, code and message shape),
    checking the dimension first as the engine does.
    """
    if value is None:
        return None
    tolist = getattr(value, "tolist", None)
    out = tolist() if callable(tolist) else value
    if isinstance(out, (list, tuple)):
        finite = all(not isinstance(x, float) or math.isfinite(x) for x in out)
        if not finite:
            if dimension is not None and len(out) != dimension:
                raise DimensionMismatch(f"{where} has {len(out)} dimensions but the collection has {dimension}")
            raise InvalidArgument(f"{where} contains NaN or infinity", code="invalid_vector")
        return list(out)
    return out  # not a list: let the server produce the validation error


def _non_finite(value: Any, path: str) -> str | None:
    """Path of the first NaN/Infinity inside a JSON-like value, in the engine's notation."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        value = tolist()
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, Mapping):
        for k, x in value.items():
            if (bad := _non_finite(x, f"{path}.{k}")) is not None:
                return bad
    elif isinstance(value, (list, tuple)):
        for i, x in enumerate(value):
            if (bad := _non_finite(x, f"{path}[{i}]")) is not None:
                return bad
    return None


def _check_json_numbers(d: Mapping[str, Any], where: str) -> None:
    """Raise the engine's error for NaN/Infinity that JSON could not carry to the server.

    Without this the request would fail to encode (or, with a lenient encoder,
    the server would answer ``invalid_json``): either way not the error the
    embedded engine gives for the same input.
    """
    md = d.get("metadata")
    if isinstance(md, Mapping) and (bad := _non_finite(md, "metadata")) is not None:
        raise InvalidArgument(f"metadata at {bad} is NaN or infinite, which JSON cannot hold", code="invalid_metadata")
    ttl = d.get("ttl_seconds")
    if isinstance(ttl, float) and not math.isfinite(ttl):
        raise InvalidArgument(f"{where}ttl_seconds must be a positive number of seconds", code="invalid_ttl")


def record_payload(item: Any, dimension: int | None, where: str) -> dict[str, Any]:
    """The wire form of one record to upsert (a Record or a dict, as the engine accepts)."""
    if isinstance(item, Record):
        # to_dict() omits ttl_seconds (a read never needs it) but upsert does;
        # send exactly the fields the engine would read from the dataclass.
        d: dict[str, Any] = {**item.to_dict(), "ttl_seconds": item.ttl_seconds}
    elif isinstance(item, Mapping):
        d = dict(item)
        if "namespace" in d and isinstance(d["namespace"], tuple):
            d["namespace"] = list(d["namespace"])
    else:
        raise InvalidArgument(f"{where} must be a Record or a dict", code="invalid_record")
    if "vector" in d:
        d["vector"] = _vector(d["vector"], dimension, f"{where}.vector")
    _check_json_numbers(d, f"{where}.")
    return d


def _json_default(o: Any) -> Any:
    # numpy arrays and scalars show up in metadata and vectors; JSON needs lists and Python numbers.
    tolist = getattr(o, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def encode_body(body: Mapping[str, Any] | None) -> bytes | None:
    """Strict JSON (no NaN/Infinity tokens, which many parsers reject or mangle)."""
    if body is None:
        return None
    try:
        return json.dumps(body, default=_json_default, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as e:
        raise InvalidArgument(
            "the request contains NaN or infinity, which JSON cannot carry; use finite numbers",
            code="invalid_argument",
        ) from e
    except TypeError as e:
        raise InvalidArgument(f"the request contains a value JSON cannot carry: {e}", code="invalid_argument") from e


# Decoders --------------------------------------------------------------------
def _records(d: Any) -> list[Record]:
    return [Record.from_dict(r) for r in d["records"]]


def _hits(d: Any) -> list[Hit]:
    return [Hit.from_dict(h) for h in d["hits"]]


def _edges(d: Any) -> list[Edge]:
    return [Edge.from_dict(e) for e in d["edges"]]


def _config(d: Any) -> CollectionConfig:
    return CollectionConfig.model_validate(d["collection"])


def _none(_: Any) -> None:
    return None


def _int(key: str) -> Callable[[Any], int]:
    return lambda d: int(d[key])


def at_consistency(call: Call[T], level: str | None) -> Call[T]:
    """``call`` carrying ``consistency`` (a collection's data operations all have a body); None: unchanged."""
    if level is None:
        return call
    return replace(call, body={**(call.body or {}), "consistency": level})


# Operations ------------------------------------------------------------------
# One function per operation of docs/api-contract.md. ``idempotent`` decides the
# retry policy (see RetryPolicy and docs/client.md, "Retries").


def create_collection(
    name: str,
    dimension: int | None,
    metric: str,
    *,
    index: Mapping[str, Any] | None,
    embedder: Mapping[str, Any] | None,
    default_ttl_seconds: float | None,
    indexed_fields: Mapping[str, str] | None,
    text_index: bool,
    exist_ok: bool,
    shards: int | None = None,
    replication_factor: int | None = None,
) -> Call[CollectionConfig]:
    body = _compact(
        {
            "name": name,
            "dimension": dimension,
            "metric": metric,
            "index": dict(index) if index is not None else None,
            "embedder": dict(embedder) if embedder is not None else None,
            "default_ttl_seconds": default_ttl_seconds,
            "indexed_fields": dict(indexed_fields) if indexed_fields is not None else None,
            # None: the server's default (its cluster settings; 1 on a single node).
            "shards": shards,
            "replication_factor": replication_factor,
        }
    )
    body["text_index"] = text_index
    body["exist_ok"] = exist_ok
    # With exist_ok a repeat returns the same collection, so a lost answer may be
    # retried; without it a repeat would fail with collection_exists.
    return Call("create_collection", "POST", "/v1/collections", body, _config, idempotent=exist_ok)


def get_collection(name: str) -> Call[CollectionConfig]:
    return Call("get_collection", "GET", coll_path(name), None, _config, True, args={"coll": name})


def list_collections() -> Call[list[CollectionConfig]]:
    return Call(
        "list_collections",
        "GET",
        "/v1/collections",
        None,
        lambda d: [CollectionConfig.model_validate(c) for c in d["collections"]],
        True,
    )


def alter_collection(
    name: str,
    indexed_fields: Mapping[str, str | None] | None,
    default_ttl_seconds: float | EllipsisType | None,
    ef_search: int | None,
) -> Call[CollectionConfig]:
    body: dict[str, Any] = _compact(
        {"indexed_fields": dict(indexed_fields) if indexed_fields is not None else None, "ef_search": ef_search}
    )
    if default_ttl_seconds is not ...:
        body["default_ttl_seconds"] = default_ttl_seconds  # null removes the default TTL
    # The body states the settings wanted, not a change to them: a repeat leaves the same state.
    return Call("alter_collection", "PATCH", coll_path(name), body, _config, True, args={"coll": name})


def delete_collection(name: str) -> Call[None]:
    # Not retried: a repeat after a lost answer would report collection_not_found.
    return Call("delete_collection", "DELETE", coll_path(name), None, _none, False, args={"coll": name})


def upsert(coll: str, dimension: int | None, records: Any) -> Call[list[str]]:
    items = [records] if isinstance(records, (Record, Mapping)) else list(records)
    body = {"records": [record_payload(it, dimension, f"records[{i}]") for i, it in enumerate(items)]}
    # Upsert replaces whole records by id: a repeat leaves the same state.
    return Call(
        "upsert",
        "POST",
        coll_path(coll, "records"),
        body,
        lambda d: [str(v) for v in d["versions"]],
        True,
        args={"coll": coll},
    )


def get_many(coll: str, ids: Sequence[str], include: Iterable[str] | None, refresh_ttl: bool) -> Call[list[Record]]:
    body = _compact({"ids": _ids(ids), "include": _include(include)})
    if refresh_ttl:
        body["refresh_ttl"] = True
    return Call("get", "POST", coll_path(coll, "records", "get"), body, _records, True, args={"coll": coll})


def get_one(coll: str, id: str, include: Iterable[str] | None, refresh_ttl: bool) -> Call[Record | None]:
    # records/get rather than GET records/{id}: it has the same "missing → absent"
    # semantics as the engine's get() (None, not 404) and supports refresh_ttl.
    base = get_many(coll, [id], include, refresh_ttl)

    def first(d: Any) -> Record | None:
        recs = _records(d)
        return recs[0] if recs else None

    return Call("get", base.method, base.path, base.body, first, True, args=base.args)


def patch(
    coll: str,
    dimension: int | None,
    id: str,
    *,
    metadata: Mapping[str, Any] | None,
    text: str | None,
    namespace: Sequence[str] | None,
    ttl_seconds: float | None,
    importance: float | None,
    vector: Any,
) -> Call[Record]:
    body = _compact(
        {
            "metadata": dict(metadata) if metadata is not None else None,
            "text": text,
            "namespace": _opt_list(namespace),
            "ttl_seconds": ttl_seconds,
            "importance": importance,
            "vector": _vector(vector, dimension, "vector"),
        }
    )
    _check_json_numbers(body, "")
    # Not retried: a patch restarts the TTL clock and bumps the version, and a
    # client cannot tell whether a lost attempt was applied.
    return Call(
        "patch",
        "PATCH",
        coll_path(coll, "records", _seg(id)),
        body,
        lambda d: Record.from_dict(d["record"]),
        False,
        args={"coll": coll, "id": id},
    )


def delete(coll: str, ids: str | Sequence[str] | None, filter: Mapping[str, Any] | None) -> Call[int]:
    body = _compact({"ids": _ids(ids) if ids is not None else None, "filter": filter})
    # Not retried: the state converges, but the second answer would count 0
    # instead of the records the first attempt deleted.
    return Call(
        "delete", "POST", coll_path(coll, "records", "delete"), body, _int("deleted"), False, args={"coll": coll}
    )


def count(coll: str, filter: Mapping[str, Any] | None) -> Call[int]:
    return Call(
        "count",
        "POST",
        coll_path(coll, "count"),
        _compact({"filter": filter}),
        _int("count"),
        True,
        args={"coll": coll},
    )


def scan(
    coll: str,
    *,
    cursor: str | None,
    limit: int,
    id_prefix: str | None,
    namespace_prefix: Sequence[str] | None,
    filter: Mapping[str, Any] | None,
    include: Iterable[str] | None,
) -> Call[ScanPage]:
    body = _compact(
        {
            "cursor": cursor,
            "limit": limit,
            "id_prefix": id_prefix,
            "namespace_prefix": _opt_list(namespace_prefix),
            "filter": filter,
            "include": _include(include),
        }
    )
    return Call(
        "scan",
        "POST",
        coll_path(coll, "records", "scan"),
        body,
        lambda d: ScanPage(_records(d), d.get("next_cursor")),
        True,
        args={"coll": coll},
    )


def list_namespaces(
    coll: str,
    prefix: Sequence[str] | None,
    *,
    suffix: Sequence[str] | None,
    max_depth: int | None,
    limit: int,
    offset: int,
) -> Call[list[tuple[str, ...]]]:
    body = _compact(
        {
            "prefix": _opt_list(prefix),
            "suffix": _opt_list(suffix),
            "max_depth": max_depth,
            "limit": limit,
            "offset": offset,
        }
    )
    return Call(
        "list_namespaces",
        "POST",
        coll_path(coll, "namespaces"),
        body,
        lambda d: [tuple(ns) for ns in d["namespaces"]],
        True,
        args={"coll": coll},
    )


def search(
    coll: str,
    dimension: int | None,
    vector: Any,
    k: int,
    *,
    filter: Mapping[str, Any] | None,
    ef: int | None,
    include: Iterable[str] | None,
    exact: bool,
    text: str | None,
    mode: str | None,
    weights: Mapping[str, float] | None,
    expand: Mapping[str, Any] | None,
    min_score: float | None,
    refresh_ttl: bool,
) -> Call[list[Hit]]:
    body = _compact(
        {
            "vector": _vector(vector, dimension, "query vector"),
            "k": k,
            "filter": filter,
            "ef": ef,
            "text": text,
            "mode": mode,
            "weights": dict(weights) if weights is not None else None,
            "expand": dict(expand) if expand is not None else None,
            "min_score": min_score,
        }
    )
    # include=None means "no fields" in search (unlike get/scan where it means
    # all); send [] so no server-side default can reinterpret an absent key.
    body["include"] = _include(include) or []
    if exact:
        body["exact"] = True
    if refresh_ttl:
        body["refresh_ttl"] = True
    # A search with refresh_ttl restarts TTL clocks, which a repeat does again:
    # same end state, so it stays retryable.
    return Call("search", "POST", coll_path(coll, "search"), body, _hits, True, args={"coll": coll})


def refresh_ttl(coll: str, ids: str | Sequence[str]) -> Call[int]:
    # Restarting a clock twice leaves it restarted, and the count is the same.
    return Call(
        "refresh_ttl",
        "POST",
        coll_path(coll, "records", "refresh_ttl"),
        {"ids": _ids(ids)},
        _int("refreshed"),
        True,
        args={"coll": coll},
    )


def _edge_list(edges: Any) -> list[Any]:
    # Exactly the engine's rule: an Edge or a dict alone is one edge, anything
    # else is iterated (so a bare 3-tuple is NOT one edge, in either deployment).
    return [edges] if isinstance(edges, (Edge, Mapping)) else list(edges)


def _link_item(e: Any, where: str) -> dict[str, Any]:
    if isinstance(e, Edge):
        d = e.to_dict()
    elif isinstance(e, Mapping):
        d = dict(e)  # unknown keys are the server's to reject, as the engine does
    else:
        raise InvalidArgument(f"{where} must be an Edge or a dict with src, relation and dst", code="invalid_edge")
    # NaN/Infinity cannot travel as JSON: raise what the engine raises for them.
    w = d.get("weight")
    if isinstance(w, float) and not math.isfinite(w):
        raise InvalidArgument(f"{where}.weight must be a finite number, got {w!r}", code="invalid_weight")
    props = d.get("properties")
    if isinstance(props, Mapping) and (bad := _non_finite(props, "metadata")) is not None:
        raise InvalidArgument(
            f"{where}.properties: metadata at {bad} is NaN or infinite, which JSON cannot hold",
            code="invalid_properties",
        )
    return d


def _unlink_item(e: Any, where: str) -> dict[str, Any]:
    if isinstance(e, Edge):
        return {"src": e.src, "relation": e.relation, "dst": e.dst}
    if isinstance(e, Mapping):
        return dict(e)
    if isinstance(e, Sequence) and not isinstance(e, str) and len(e) == 3:
        return {"src": e[0], "relation": e[1], "dst": e[2]}
    raise InvalidArgument(
        f"{where} must be a (src, relation, dst) tuple, a dict with those keys, or an Edge", code="invalid_edge"
    )


def link(coll: str, edges: Any, create_missing: bool) -> Call[list[str]]:
    body: dict[str, Any] = {"edges": [_link_item(e, f"edges[{i}]") for i, e in enumerate(_edge_list(edges))]}
    if create_missing:
        body["create_missing"] = True
    # Edges are unique by (src, relation, dst) and linking replaces one: a repeat
    # leaves the same state, like upsert.
    return Call(
        "link",
        "POST",
        coll_path(coll, "edges"),
        body,
        lambda d: [str(v) for v in d["versions"]],
        True,
        args={"coll": coll},
    )


def unlink(coll: str, edges: Any) -> Call[int]:
    body = {"edges": [_unlink_item(e, f"edges[{i}]") for i, e in enumerate(_edge_list(edges))]}
    # Not retried, for the same reason as delete: the count would be wrong.
    return Call("unlink", "POST", coll_path(coll, "edges", "delete"), body, _int("deleted"), False, args={"coll": coll})


def edges(coll: str, id: str, *, direction: str, relation: str | None, limit: int) -> Call[list[Edge]]:
    body = _compact({"id": id, "direction": direction, "relation": relation, "limit": limit})
    return Call("edges", "POST", coll_path(coll, "edges", "list"), body, _edges, True, args={"coll": coll})


def _relations(relations: str | Iterable[str] | None) -> list[str] | None:
    if relations is None:
        return None
    return [relations] if isinstance(relations, str) else list(relations)


def neighbors(
    coll: str,
    id: str,
    *,
    hops: int,
    relations: str | Iterable[str] | None,
    direction: str,
    limit: int,
    fanout: int | None,
    include: Iterable[str] | None,
    timeout_ms: float,
) -> Call[list[Hit]]:
    body = _compact(
        {
            "id": id,
            "hops": hops,
            "relations": _relations(relations),
            "direction": direction,
            "limit": limit,
            "fanout": fanout,
            "timeout_ms": timeout_ms,
        }
    )
    body["include"] = _include(include) or []  # None means "no fields", as in search
    return Call("neighbors", "POST", coll_path(coll, "neighbors"), body, _hits, True, args={"coll": coll})


def subgraph(
    coll: str,
    ids: str | Sequence[str],
    *,
    hops: int,
    relations: str | Iterable[str] | None,
    direction: str,
    limit: int,
    include: Iterable[str] | None,
    timeout_ms: float,
) -> Call[dict[str, list[Any]]]:
    body = _compact(
        {
            "ids": _ids(ids),
            "hops": hops,
            "relations": _relations(relations),
            "direction": direction,
            "limit": limit,
            "timeout_ms": timeout_ms,
        }
    )
    body["include"] = _include(include) or []
    return Call(
        "subgraph",
        "POST",
        coll_path(coll, "subgraph"),
        body,
        lambda d: {"nodes": [Record.from_dict(r) for r in d["nodes"]], "edges": _edges(d)},
        True,
        args={"coll": coll},
    )


# An extraction waits for a chat model (often tens of seconds, more with the
# server's own retries), so it gets at least this long even when the client's
# timeout, sized for database calls, is shorter.
# ----------------------------------------------------------- API keys
# The operator's key management (admin keys only): docs/security.md.
def _new_key(d: Any) -> NewApiKey:
    return NewApiKey(**{f: d.get(f) for f in ("key", "id", "role", "tenant", "collections", "expires_at", "name")})


def _key_path(key_id: str) -> str:
    return "/v1/admin/keys/" + _seg(key_id)


def create_key(
    role: str,
    *,
    tenant: str | None,
    collections: Sequence[str] | None,
    expires_at: float | None,
    name: str | None,
) -> Call[NewApiKey]:
    body = _compact(
        {"role": role, "tenant": tenant, "collections": _opt_list(collections), "expires_at": expires_at, "name": name}
    )
    # Not retried: a repeat after a lost answer would mint a second key.
    return Call("create_key", "POST", "/v1/admin/keys", body, _new_key, False)


def list_keys() -> Call[list[ApiKeyInfo]]:
    return Call("list_keys", "GET", "/v1/admin/keys", None, lambda d: [ApiKeyInfo(**k) for k in d["keys"]], True)


def revoke_key(key_id: str) -> Call[None]:
    # Revoking a revoked key answers the same: safe to repeat.
    return Call("revoke_key", "DELETE", _key_path(key_id), None, _none, True, args={"key_id": key_id})


def rotate_key(key_id: str, grace_seconds: float | None) -> Call[NewApiKey]:
    body = _compact({"grace_seconds": grace_seconds})
    # Not retried: a repeat would rotate the new key's predecessor again (key_not_rotatable) or mint another.
    return Call("rotate_key", "POST", _key_path(key_id) + "/rotate", body, _new_key, False, args={"key_id": key_id})


def erase_tenant(tenant: str, confirm: str, timeout: float | None) -> Call[TenantErased]:
    body = {"confirm": confirm}
    # Not retried: a repeat after a lost answer finds no tenant (tenant_not_found).
    return Call(
        "erase_tenant",
        "POST",
        "/v1/admin/tenants/" + _seg(tenant) + "/erase",
        body,
        lambda d: TenantErased(tenant=d["tenant"], collections=int(d["collections"]), keys=int(d["keys"])),
        False,
        timeout,
        args={"tenant": tenant},
    )


# ------------------------------------------------------------ backups
# The operator's (bootstrap admin key only): docs/backup.md. A backup copies the whole node, which can
# take far longer than a database call, so these wait at least an hour unless told otherwise.
BACKUP_MIN_TIMEOUT = 3600.0


def backup_timeout(client_timeout: float | None, timeout: float | None) -> float | None:
    """Seconds a backup call waits: ``timeout`` if given, else the client's but at least an hour."""
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise InvalidArgument("timeout must be a positive number of seconds", code="invalid_timeout")
        return float(timeout)
    return None if client_timeout is None else max(float(client_timeout), BACKUP_MIN_TIMEOUT)


def _backup(d: Any) -> BackupInfo:
    return BackupInfo.from_dict(d["backup"])


def create_backup(name: str, timeout: float | None) -> Call[BackupInfo]:
    # Not retried: a repeat after a lost answer finds the backup written (backup_exists).
    return Call("create_backup", "POST", "/v1/admin/backups", {"name": name}, _backup, False, timeout)


def list_backups() -> Call[list[BackupInfo]]:
    return Call(
        "list_backups",
        "GET",
        "/v1/admin/backups",
        None,
        lambda d: [BackupInfo.from_dict(b) for b in d["backups"]],
        True,
    )


def verify_backup(name: str, timeout: float | None) -> Call[BackupInfo]:
    return Call(
        "verify_backup",
        "POST",
        "/v1/admin/backups/" + _seg(name) + "/verify",
        None,
        _backup,
        True,
        timeout,
        args={"name": name},
    )


# ------------------------------------------------------------ stats
def stats(limit: int | None) -> Call[dict[str, Any]]:
    """Memory per component of the node answering (admin; docs/observability.md)."""
    path = "/v1/admin/stats"
    args: dict[str, str] = {}
    if limit is not None:
        # The server checks the value (invalid_limit); only its text travels in the query.
        args["limit"] = str(limit)
        path += "?limit=" + quote(args["limit"], safe="")
    return Call("stats", "GET", path, None, lambda d: dict(d), True, args=args)


EXTRACT_MIN_TIMEOUT = 120.0


def extract_timeout(client_timeout: float | None, timeout: float | None) -> float | None:
    """Seconds an ``extract`` call waits: ``timeout`` if given, else the client's but at least 2 minutes."""
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise InvalidArgument("timeout must be a positive number of seconds", code="invalid_timeout")
        return float(timeout)
    if client_timeout is None:
        return None  # the client waits without limit; so does this call
    return max(float(client_timeout), EXTRACT_MIN_TIMEOUT)


def extract(
    coll: str,
    text: str,
    extractor: Any,
    *,
    instructions: str | None,
    namespace: Sequence[str] | None,
    dedupe_threshold: float,
    source_id: str | None,
    timeout: float | None,
) -> Call[ExtractResult]:
    if extractor is not None:
        # The server extracts with the model its operator configured; sending a
        # caller's endpoint would let any writer point the server anywhere.
        raise InvalidArgument(
            "a remote collection extracts with the server's configured model (server setting "
            "extraction.model); call extract(text) without an extractor",
            code="invalid_argument",
        )
    # A string namespace is sent as it is, for the server to refuse as the engine does
    # (list("docs") would silently become ["d", "o", "c", "s"]).
    ns = namespace if namespace is None or isinstance(namespace, str) else list(namespace)
    body: dict[str, Any] = {"text": text, "dedupe_threshold": dedupe_threshold}
    body.update(_compact({"instructions": instructions, "namespace": ns, "source_id": source_id}))
    # Not idempotent: a repeat counts every entity's mentions again, and costs another model call
    # whose answer may differ.
    return Call(
        "extract",
        "POST",
        coll_path(coll, "extract"),
        body,
        lambda d: ExtractResult.from_dict(d),
        False,
        timeout,
        args={"coll": coll},
    )


# ------------------------------------------------------------------- answers
@dataclass(frozen=True)
class Failure:
    """A failed attempt: the error to raise and whether a retry is allowed.

    ``not_executed`` means the server certainly did not run the request
    (connection refused, rate limited), so even a non-idempotent call may be
    sent again; otherwise only idempotent calls are.
    """

    error: EngramError
    retryable: bool
    not_executed: bool = False
    retry_after: float | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        secs = when.timestamp() - time.time()
    if not math.isfinite(secs):
        return None
    return max(0.0, secs)


def decode_response(call: Call[T], resp: httpx.Response) -> T | Failure:
    """The call's result, or a :class:`Failure` for an error answer."""
    status = resp.status_code
    if 200 <= status < 300:
        try:
            data = _loads(resp.content) if resp.content else {}
            return call.decode(data)
        except (ValueError, KeyError, TypeError) as e:
            # A 2xx we cannot read is a server (or proxy) bug, not the caller's.
            return Failure(
                EngramError(
                    f"{call.op}: the server's answer (HTTP {status}) is not what the API contract says: {e!r}",
                    code="bad_response",
                ),
                retryable=False,
            )
    body: Any = None
    try:
        body = _loads(resp.content) if resp.content else None
    except ValueError:
        body = None
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = error_from_dict(body["error"], status)
        if isinstance(err, RateLimited) and retry_after is None:
            retry_after = err.retry_after
        retryable = (status in _RETRY_STATUSES or status == _RATE_LIMITED) and (
            type(err).code in _TRANSIENT_CODES or err.code in _TRANSIENT_CODES
        )
    else:
        # No EngramDB error body: a proxy or load balancer answered.
        err = _status_error(call, status, resp)
        retryable = status in _RETRY_STATUSES or status == _RATE_LIMITED
    return Failure(err, retryable=retryable, not_executed=status == _RATE_LIMITED, retry_after=retry_after)


def _status_error(call: Call[Any], status: int, resp: httpx.Response) -> EngramError:
    """An error for an answer without an EngramDB error body (a proxy, or a wrong URL)."""
    snippet = resp.text[:200].strip() if resp.content else ""
    where = f"{call.method} {resp.request.url}" if resp.request is not None else call.op
    msg = f"{call.op}: HTTP {status} from {where}" + (f": {snippet}" if snippet else "")
    if status in (502, 503):
        return Unavailable(msg + " (the server or a proxy in front of it is unavailable)")
    if status == 504:
        return DeadlineExceeded(msg + " (a gateway timed out waiting for the server)")
    if status == _RATE_LIMITED:
        return RateLimited(msg, retry_after=parse_retry_after(resp.headers.get("retry-after")) or 1.0)
    if status == 404:
        msg += " (is the URL an EngramDB server, with no extra path?)"
    return error_from_dict({"code": f"http_{status}", "message": msg}, status)


def transport_error(call: Call[Any], exc: httpx.HTTPError, base_url: str, timeout: float | None) -> Failure:
    """Map an httpx transport exception to the engine's error classes."""
    if isinstance(exc, httpx.ConnectTimeout):
        return Failure(
            Unavailable(f"{call.op}: could not connect to {base_url} within {timeout}s: {exc}"),
            retryable=True,
            not_executed=True,
        )
    if isinstance(exc, httpx.ConnectError):
        # Nothing was sent, so a retry cannot run an operation twice.
        return Failure(
            Unavailable(f"{call.op}: cannot connect to the EngramDB server at {base_url}: {exc or type(exc).__name__}"),
            retryable=True,
            not_executed=True,
        )
    if isinstance(exc, httpx.TimeoutException):
        # Not retried: the caller's time budget for this call is spent.
        return Failure(
            DeadlineExceeded(f"{call.op}: no answer from {base_url} within {timeout}s ({type(exc).__name__})"),
            retryable=False,
        )
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
        # The connection broke after the request may have been sent.
        return Failure(
            Unavailable(f"{call.op}: the connection to {base_url} failed: {exc or type(exc).__name__}"),
            retryable=True,
        )
    return Failure(EngramError(f"{call.op}: HTTP client error talking to {base_url}: {exc!r}"), retryable=False)


# ------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in count and in each wait.

    ``retries`` is the number of extra attempts. A server's ``Retry-After`` is
    honoured when it is at most ``max_retry_after`` seconds; a longer one is not
    waited for (the error is raised, carrying ``retry_after``), so a call never
    blocks far beyond what its caller expects.
    """

    retries: int = 3
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    max_retry_after: float = 30.0

    def delay(self, call: Call[Any], attempt: int, failure: Failure) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if attempt >= self.retries or not failure.retryable:
            return None
        if not (call.idempotent or failure.not_executed):
            return None
        if failure.retry_after is not None:
            if failure.retry_after > self.max_retry_after:
                return None
            return failure.retry_after
        # "Equal jitter": at least half the exponential step, so retries back
        # off for real, plus a random half so many clients do not stampede.
        step = min(self.backoff_max, self.backoff_base * (2**attempt))
        return step / 2 + random.uniform(0, step / 2)


# ------------------------------------------------------------------- setup
def base_url(url: str) -> str:
    """Normalise the server URL: no trailing slash, no ``/v1`` (paths add it)."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise InvalidArgument(f"url must look like http://host:7878 or https://host, got {url!r}", code="invalid_url")
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def headers(api_key: str | None, tenant: str | None) -> dict[str, str]:
    """Default headers: auth (explicit key, else ``ENGRAMDB_API_KEY``) and tenant."""
    from engramdb._version import __version__

    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    h = {"User-Agent": f"{USER_AGENT}/{__version__}", "Accept": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    if tenant is not None:
        h[TENANT_HEADER] = tenant
    return h


def verify_arg(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx wants a bool or an SSLContext; a string is a CA bundle path."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def check_retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidArgument("retries must be a non-negative integer", code="invalid_argument")
    return retries
