"""Conversions between the gRPC messages and the service contract's dicts.

The service layer speaks ``params: dict -> result: dict`` (docs/api-contract.md),
the same JSON shapes REST sends. This module is the only place that knows the
protobuf messages: :data:`RPCS` maps every RPC of ``engramdb.v1.EngramDB`` to
its contract op and a pair of converters, so the servicer stays generic.

Rules (mirrored in proto/engramdb/v1/engramdb.proto and docs/grpc.md):

- A key goes into ``params`` only when the client set it (proto3 ``optional``
  presence, a non-empty JSON string, a non-empty repeated field, or a present
  wrapper message), so the service applies its defaults exactly as it does for
  a REST body that omits the key.
- Vectors travel as packed little-endian float32; ``*_json`` fields are JSON
  text. Both are decoded here because they are wire encodings; what the values
  mean (types, ranges, dimensions) is validated by the service, never here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from google.protobuf.message import Message

from ...errors import InvalidArgument
from . import engramdb_pb2 as pb

Params = dict[str, Any]
Result = Mapping[str, Any]

_F32 = np.dtype("<f4")


# --------------------------------------------------------------------- codecs
def pack_vector(values: Iterable[float] | np.ndarray) -> bytes:
    """Packed little-endian float32 bytes of a vector (exact for float32 input)."""
    return np.asarray(values, dtype=_F32).tobytes()


def unpack_vector(data: bytes, where: str) -> list[float]:
    """The floats of a packed vector; a list because that is the contract's JSON shape.

    float32 -> Python float -> float32 is exact, so a vector survives the trip
    to the engine bit for bit.
    """
    if len(data) % 4:
        raise InvalidArgument(
            f"{where} must be packed little-endian float32 (a multiple of 4 bytes), got {len(data)} bytes",
            code="invalid_vector",
            details={"field": where},
        )
    return np.frombuffer(data, dtype=_F32).tolist()  # type: ignore[no-any-return]


def parse_json(text: str, where: str) -> Any:
    """The value of a ``*_json`` field (the caller skips empty strings = not given)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise InvalidArgument(f"{where} is not valid JSON: {e}", details={"field": where}) from e


def dump_json(value: Any) -> str:
    """JSON text for a ``*_json`` field of a response."""
    return orjson.dumps(value).decode()


def _opt(msg: Message, params: Params, *names: str) -> None:
    """Copy the proto3 ``optional`` fields the client set into ``params``."""
    for name in names:
        if msg.HasField(name):
            params[name] = getattr(msg, name)


def _json(msg: Message, params: Params, field: str, key: str) -> None:
    """Copy a ``*_json`` field, parsed, into ``params[key]`` if it is non-empty."""
    text = getattr(msg, field)
    if text:
        params[key] = parse_json(text, field)


def _list(msg: Message, params: Params, *names: str) -> None:
    """Copy the non-empty repeated string fields into ``params`` as lists."""
    for name in names:
        values = getattr(msg, name)
        if values:
            params[name] = list(values)


def _fields(msg: Message, params: Params, name: str) -> None:
    """Copy a wrapper list (FieldList/StringList) whose presence matters."""
    if msg.HasField(name):
        wrapper = getattr(msg, name)
        params[name] = list(wrapper.fields if isinstance(wrapper, pb.FieldList) else wrapper.values)


def _set(kwargs: dict[str, Any], d: Mapping[str, Any], *names: str) -> None:
    """Copy the non-None values of ``d`` into message constructor kwargs."""
    for name in names:
        value = d.get(name)
        if value is not None:
            kwargs[name] = value


# -------------------------------------------------------------- shared types
def record_in(m: pb.Record, where: str) -> Params:
    """A contract Record dict from a request's Record (system fields are not sent)."""
    d: Params = {"id": m.id}
    if m.HasField("vector"):
        d["vector"] = unpack_vector(m.vector, f"{where}.vector")
    if m.HasField("text"):
        d["text"] = m.text
    if m.metadata_json:
        d["metadata"] = parse_json(m.metadata_json, f"{where}.metadata_json")
    if m.namespace:
        d["namespace"] = list(m.namespace)
    _opt(m, d, "ttl_seconds", "expires_at", "importance")
    return d


def record_out(d: Mapping[str, Any]) -> pb.Record:
    """A Record message from a contract Record dict (``Record.to_dict()``)."""
    kw: dict[str, Any] = {"id": d["id"]}
    vec = d.get("vector")
    if vec is not None:
        kw["vector"] = pack_vector(vec)
    meta = d.get("metadata")
    if meta:
        kw["metadata_json"] = dump_json(meta)
    ns = d.get("namespace")
    if ns:
        kw["namespace"] = ns
    _set(kw, d, "text", "ttl_seconds", "expires_at", "importance", "created_at", "updated_at", "version")
    return pb.Record(**kw)


def edge_in(m: pb.Edge, where: str) -> Params:
    d: Params = {"src": m.src, "relation": m.relation, "dst": m.dst}
    if m.HasField("weight"):
        d["weight"] = m.weight
    if m.properties_json:
        d["properties"] = parse_json(m.properties_json, f"{where}.properties_json")
    return d


def edge_out(d: Mapping[str, Any]) -> pb.Edge:
    kw: dict[str, Any] = {"src": d["src"], "relation": d["relation"], "dst": d["dst"]}
    props = d.get("properties")
    if props:
        kw["properties_json"] = dump_json(props)
    _set(kw, d, "weight", "version")
    return pb.Edge(**kw)


def hit_out(d: Mapping[str, Any]) -> pb.Hit:
    kw: dict[str, Any] = {"id": d["id"], "score": d["score"]}
    hop = d.get("hop")
    if hop:
        kw["hop"] = hop
    rec = d.get("record")
    if rec is not None:
        kw["record"] = record_out(rec)
    path = d.get("path")
    if path:
        kw["path_json"] = dump_json(path)
    signals = d.get("signals")
    if signals:
        kw["signals"] = signals
    return pb.Hit(**kw)


def collection_out(d: Mapping[str, Any]) -> pb.CollectionConfig:
    """A CollectionConfig message from its pydantic JSON dump."""
    kw: dict[str, Any] = {
        "name": d["name"],
        "dimension": d["dimension"],
        "metric": d.get("metric") or "",
        "text_index": bool(d.get("text_index", True)),
    }
    if d.get("index") is not None:
        kw["index_json"] = dump_json(d["index"])
    if d.get("embedder") is not None:
        kw["embedder_json"] = dump_json(d["embedder"])
    if d.get("indexed_fields"):
        kw["indexed_fields"] = d["indexed_fields"]
    _set(kw, d, "default_ttl_seconds")
    return pb.CollectionConfig(**kw)


_KEY_FIELDS = ("id", "role", "tenant", "expires_at", "name")


def key_out(d: Mapping[str, Any], cls: type[pb.KeyInfo] | type[pb.NewKeyResponse]) -> Any:
    """A KeyInfo or NewKeyResponse from a key dict (the secret only in the latter)."""
    kw: dict[str, Any] = {}
    _set(kw, d, *_KEY_FIELDS)
    if d.get("collections"):
        kw["collections"] = d["collections"]
    if cls is pb.NewKeyResponse:
        kw["key"] = d["key"]
    return cls(**kw)


# ------------------------------------------------------------ request -> params
def _coll(m: Any) -> Params:
    return {"coll": m.coll}


def create_collection_in(m: pb.CreateCollectionRequest) -> Params:
    p: Params = {"name": m.name}
    _opt(m, p, "dimension", "metric", "default_ttl_seconds", "text_index", "exist_ok")
    _json(m, p, "index_json", "index")
    _json(m, p, "embedder_json", "embedder")
    if m.indexed_fields:
        p["indexed_fields"] = dict(m.indexed_fields)
    return p


def upsert_in(m: pb.UpsertRequest) -> Params:
    return {"coll": m.coll, "records": [record_in(r, f"records[{i}]") for i, r in enumerate(m.records)]}


def get_in(m: pb.GetRequest) -> Params:
    p: Params = {"coll": m.coll, "ids": list(m.ids)}
    _fields(m, p, "include")
    _opt(m, p, "refresh_ttl")
    return p


def patch_in(m: pb.PatchRequest) -> Params:
    p: Params = {"coll": m.coll, "id": m.id}
    _json(m, p, "metadata_json", "metadata")
    _opt(m, p, "text", "ttl_seconds", "importance")
    _fields(m, p, "namespace")
    if m.HasField("vector"):
        p["vector"] = unpack_vector(m.vector, "vector")
    return p


def delete_in(m: pb.DeleteRequest) -> Params:
    p: Params = {"coll": m.coll}
    _json(m, p, "filter_json", "filter")
    # Without a filter, ids are always sent (even empty), so an empty delete is
    # the same no-op it is over REST rather than a "give ids or a filter" error.
    if m.ids or "filter" not in p:
        p["ids"] = list(m.ids)
    return p


def scan_in(m: pb.ScanRequest) -> Params:
    p: Params = {"coll": m.coll}
    _opt(m, p, "cursor", "limit", "id_prefix")
    _list(m, p, "namespace_prefix")
    _json(m, p, "filter_json", "filter")
    _fields(m, p, "include")
    return p


def count_in(m: pb.CountRequest) -> Params:
    p: Params = {"coll": m.coll}
    _json(m, p, "filter_json", "filter")
    return p


def refresh_ttl_in(m: pb.RefreshTtlRequest) -> Params:
    return {"coll": m.coll, "ids": list(m.ids)}


def search_in(m: pb.SearchRequest) -> Params:
    """The hot path: explicit field by field rather than reflective."""
    p: Params = {"coll": m.coll}
    if m.HasField("vector"):
        p["vector"] = unpack_vector(m.vector, "vector")
    if m.HasField("k"):
        p["k"] = m.k
    if m.filter_json:
        p["filter"] = parse_json(m.filter_json, "filter_json")
    if m.HasField("ef"):
        p["ef"] = m.ef
    if m.HasField("include"):
        p["include"] = list(m.include.fields)
    _opt(m, p, "exact", "text", "mode", "min_score", "refresh_ttl")
    _json(m, p, "weights_json", "weights")
    _json(m, p, "expand_json", "expand")
    return p


def list_namespaces_in(m: pb.ListNamespacesRequest) -> Params:
    p: Params = {"coll": m.coll}
    _list(m, p, "prefix", "suffix")
    _opt(m, p, "max_depth", "limit", "offset")
    return p


def link_in(m: pb.LinkRequest) -> Params:
    p: Params = {"coll": m.coll, "edges": [edge_in(e, f"edges[{i}]") for i, e in enumerate(m.edges)]}
    _opt(m, p, "create_missing")
    return p


def unlink_in(m: pb.UnlinkRequest) -> Params:
    return {"coll": m.coll, "edges": [{"src": e.src, "relation": e.relation, "dst": e.dst} for e in m.edges]}


def edges_in(m: pb.EdgesRequest) -> Params:
    p: Params = {"coll": m.coll, "id": m.id}
    _opt(m, p, "direction", "relation", "limit")
    return p


def neighbors_in(m: pb.NeighborsRequest) -> Params:
    p: Params = {"coll": m.coll, "id": m.id}
    _opt(m, p, "hops", "direction", "limit")
    _list(m, p, "relations")
    return p


def subgraph_in(m: pb.SubgraphRequest) -> Params:
    p: Params = {"coll": m.coll, "ids": list(m.ids)}
    _opt(m, p, "hops", "direction", "limit")
    _list(m, p, "relations")
    return p


def create_key_in(m: pb.CreateKeyRequest) -> Params:
    p: Params = {"role": m.role}
    _opt(m, p, "tenant", "expires_at", "name")
    _list(m, p, "collections")
    return p


def rotate_key_in(m: pb.RotateKeyRequest) -> Params:
    p: Params = {"key_id": m.key_id}
    _opt(m, p, "grace_seconds")
    return p


# ---------------------------------------------------------- result -> response
def search_out(r: Result) -> pb.SearchResponse:
    return pb.SearchResponse(hits=[hit_out(h) for h in r["hits"]])


def scan_out(r: Result) -> pb.ScanResponse:
    resp = pb.ScanResponse(records=[record_out(x) for x in r["records"]])
    if r.get("next_cursor") is not None:
        resp.next_cursor = r["next_cursor"]
    return resp


# --------------------------------------------------------------------- table
@dataclass(frozen=True)
class Rpc:
    """One RPC: its contract op, message types and converters."""

    op: str
    request: type[Message]
    response: type[Message]
    to_params: Callable[[Any], Params]
    to_response: Callable[[Result], Message]


RPCS: dict[str, Rpc] = {
    "CreateCollection": Rpc(
        "create_collection",
        pb.CreateCollectionRequest,
        pb.CollectionResponse,
        create_collection_in,
        lambda r: pb.CollectionResponse(collection=collection_out(r["collection"])),
    ),
    "ListCollections": Rpc(
        "list_collections",
        pb.ListCollectionsRequest,
        pb.ListCollectionsResponse,
        lambda m: {},
        lambda r: pb.ListCollectionsResponse(collections=[collection_out(c) for c in r["collections"]]),
    ),
    "GetCollection": Rpc(
        "get_collection",
        pb.GetCollectionRequest,
        pb.GetCollectionResponse,
        _coll,
        lambda r: pb.GetCollectionResponse(collection=collection_out(r["collection"]), count=r.get("count") or 0),
    ),
    "DeleteCollection": Rpc(
        "delete_collection",
        pb.DeleteCollectionRequest,
        pb.DeleteCollectionResponse,
        _coll,
        lambda r: pb.DeleteCollectionResponse(deleted=bool(r["deleted"])),
    ),
    "Upsert": Rpc(
        "upsert",
        pb.UpsertRequest,
        pb.VersionsResponse,
        upsert_in,
        lambda r: pb.VersionsResponse(versions=r["versions"]),
    ),
    "Get": Rpc(
        "get",
        pb.GetRequest,
        pb.RecordsResponse,
        get_in,
        lambda r: pb.RecordsResponse(records=[record_out(x) for x in r["records"]]),
    ),
    "Patch": Rpc(
        "patch",
        pb.PatchRequest,
        pb.RecordResponse,
        patch_in,
        lambda r: pb.RecordResponse(record=record_out(r["record"])),
    ),
    "Delete": Rpc(
        "delete",
        pb.DeleteRequest,
        pb.DeletedResponse,
        delete_in,
        lambda r: pb.DeletedResponse(deleted=r["deleted"]),
    ),
    "Scan": Rpc("scan", pb.ScanRequest, pb.ScanResponse, scan_in, scan_out),
    "Count": Rpc(
        "count",
        pb.CountRequest,
        pb.CountResponse,
        count_in,
        lambda r: pb.CountResponse(count=r["count"]),
    ),
    "RefreshTtl": Rpc(
        "refresh_ttl",
        pb.RefreshTtlRequest,
        pb.RefreshTtlResponse,
        refresh_ttl_in,
        lambda r: pb.RefreshTtlResponse(refreshed=r["refreshed"]),
    ),
    "Search": Rpc("search", pb.SearchRequest, pb.SearchResponse, search_in, search_out),
    "ListNamespaces": Rpc(
        "list_namespaces",
        pb.ListNamespacesRequest,
        pb.ListNamespacesResponse,
        list_namespaces_in,
        lambda r: pb.ListNamespacesResponse(namespaces=[pb.Namespace(path=ns) for ns in r["namespaces"]]),
    ),
    "Link": Rpc(
        "link",
        pb.LinkRequest,
        pb.VersionsResponse,
        link_in,
        lambda r: pb.VersionsResponse(versions=r["versions"]),
    ),
    "Unlink": Rpc(
        "unlink",
        pb.UnlinkRequest,
        pb.DeletedResponse,
        unlink_in,
        lambda r: pb.DeletedResponse(deleted=r["deleted"]),
    ),
    "Edges": Rpc(
        "edges",
        pb.EdgesRequest,
        pb.EdgesResponse,
        edges_in,
        lambda r: pb.EdgesResponse(edges=[edge_out(e) for e in r["edges"]]),
    ),
    "Neighbors": Rpc("neighbors", pb.NeighborsRequest, pb.SearchResponse, neighbors_in, search_out),
    "Subgraph": Rpc(
        "subgraph",
        pb.SubgraphRequest,
        pb.SubgraphResponse,
        subgraph_in,
        lambda r: pb.SubgraphResponse(
            nodes=[record_out(x) for x in r["nodes"]], edges=[edge_out(e) for e in r["edges"]]
        ),
    ),
    "CreateKey": Rpc(
        "create_key",
        pb.CreateKeyRequest,
        pb.NewKeyResponse,
        create_key_in,
        lambda r: key_out(r, pb.NewKeyResponse),
    ),
    "ListKeys": Rpc(
        "list_keys",
        pb.ListKeysRequest,
        pb.ListKeysResponse,
        lambda m: {},
        lambda r: pb.ListKeysResponse(keys=[key_out(k, pb.KeyInfo) for k in r["keys"]]),
    ),
    "RevokeKey": Rpc(
        "revoke_key",
        pb.RevokeKeyRequest,
        pb.RevokeKeyResponse,
        lambda m: {"key_id": m.key_id},
        lambda r: pb.RevokeKeyResponse(revoked=bool(r["revoked"])),
    ),
    "RotateKey": Rpc(
        "rotate_key",
        pb.RotateKeyRequest,
        pb.NewKeyResponse,
        rotate_key_in,
        lambda r: key_out(r, pb.NewKeyResponse),
    ),
}
