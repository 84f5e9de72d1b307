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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from google.protobuf.message import Message

from engramdb.errors import InvalidArgument
from engramdb.grpc_codec import F32 as _F32
from engramdb.grpc_codec import collection_to_dict as collection_to_dict  # the codec is shared with the clients
from engramdb.grpc_codec import edge_to_dict as edge_to_dict
from engramdb.grpc_codec import engramdb_pb2 as pb
from engramdb.grpc_codec import extract_to_dict as extract_to_dict
from engramdb.grpc_codec import hit_to_dict as hit_to_dict
from engramdb.grpc_codec import pack_vector as pack_vector
from engramdb.grpc_codec import record_to_dict as record_to_dict
from engramdb.validation import json_loads

Params = dict[str, Any]
Result = Mapping[str, Any]


# --------------------------------------------------------------------- codecs
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
        return json_loads(text)  # integers beyond 64 bits stay exact, for validation to refuse
    except orjson.JSONDecodeError as e:
        # Same code REST uses for a body that is not JSON.
        raise InvalidArgument(f"{where} is not valid JSON: {e}", code="invalid_json", details={"field": where}) from e


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


# Responses are filled in place (``repeated.add()`` and attribute stores)
# rather than built from keyword arguments: with upb, constructing a nested
# message from kwargs copies it into its parent, which made search responses
# two to three times slower to build.
_RECORD_SCALARS = ("text", "ttl_seconds", "expires_at", "importance", "created_at", "updated_at", "version")


def fill_record(m: pb.Record, d: Mapping[str, Any]) -> pb.Record:
    """Set a Record message's fields from a contract Record dict (``Record.to_dict()``)."""
    m.id = d["id"]
    vec = d.get("vector")
    if vec is not None:
        m.vector = pack_vector(vec)
    meta = d.get("metadata")
    if meta:
        m.metadata_json = dump_json(meta)
    ns = d.get("namespace")
    if ns:
        m.namespace.extend(ns)
    for name in _RECORD_SCALARS:
        value = d.get(name)
        if value is not None:
            setattr(m, name, value)
    return m


def record_out(d: Mapping[str, Any]) -> pb.Record:
    """A Record message from a contract Record dict."""
    return fill_record(pb.Record(), d)


def edge_in(m: pb.Edge, where: str) -> Params:
    d: Params = {"src": m.src, "relation": m.relation, "dst": m.dst}
    if m.HasField("weight"):
        d["weight"] = m.weight
    if m.properties_json:
        d["properties"] = parse_json(m.properties_json, f"{where}.properties_json")
    return d


def fill_edge(m: pb.Edge, d: Mapping[str, Any]) -> pb.Edge:
    """Set an Edge message's fields from ``Edge.to_dict()``."""
    m.src, m.relation, m.dst = d["src"], d["relation"], d["dst"]
    props = d.get("properties")
    if props:
        m.properties_json = dump_json(props)
    if d.get("weight") is not None:
        m.weight = d["weight"]
    if d.get("version") is not None:
        m.version = d["version"]
    return m


def fill_hit(m: pb.Hit, d: Mapping[str, Any]) -> pb.Hit:
    """Set a Hit message's fields from ``Hit.to_dict()``."""
    m.id = d["id"]
    m.score = d["score"]
    hop = d.get("hop")
    if hop:
        m.hop = hop
    rec = d.get("record")
    if rec is not None:
        fill_record(m.record, rec)
    path = d.get("path")
    if path:
        m.path_json = dump_json(path)
    signals = d.get("signals")
    if signals:
        m.signals.update(signals)
    return m


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
    _set(kw, d, "default_ttl_seconds", "shards", "replication_factor")
    return pb.CollectionConfig(**kw)


def key_info_out(d: Mapping[str, Any]) -> pb.KeyInfo:
    """A KeyInfo from ``ApiKey.info()`` (never the secret or digest)."""
    kw: dict[str, Any] = {"revoked": bool(d.get("revoked"))}
    _set(kw, d, "id", "role", "tenant", "expires_at", "name", "created_at", "replaced_by")
    if d.get("collections"):
        kw["collections"] = d["collections"]
    return pb.KeyInfo(**kw)


def new_key_out(d: Mapping[str, Any]) -> pb.NewKeyResponse:
    """A NewKeyResponse (with the secret) from create_key / rotate_key."""
    kw: dict[str, Any] = {}
    _set(kw, d, "key", "id", "role", "tenant", "expires_at", "name")
    if d.get("collections"):
        kw["collections"] = d["collections"]
    return pb.NewKeyResponse(**kw)


def backup_info_out(d: Mapping[str, Any]) -> pb.BackupInfo:
    """A BackupInfo from the service's backup summary."""
    kw: dict[str, Any] = {}
    _set(kw, d, "name", "status", "created_at", "seq", "engramdb_version", "bytes", "files", "problem")
    return pb.BackupInfo(**kw)


def stats_out(r: Result) -> pb.StatsResponse:
    """A StatsResponse from the stats answer (every key a field of the same name)."""
    kw: dict[str, Any] = {
        "collections": [pb.CollectionStats(**c) for c in r["collections"]],
        "totals": pb.StatsTotals(**r["totals"]),
        "more": bool(r["more"]),
    }
    if r.get("process") is not None:
        kw["process"] = pb.ProcessStats(**r["process"])
    if r.get("rocksdb") is not None:
        kw["rocksdb"] = pb.RocksDbStats(**r["rocksdb"])
    return pb.StatsResponse(**kw)


# ------------------------------------------------------------ request -> params
def _coll(m: Any) -> Params:
    return {"coll": m.coll}


def create_collection_in(m: pb.CreateCollectionRequest) -> Params:
    p: Params = {"name": m.name}
    _opt(m, p, "dimension", "metric", "default_ttl_seconds", "text_index", "exist_ok", "shards", "replication_factor")
    _json(m, p, "index_json", "index")
    _json(m, p, "embedder_json", "embedder")
    if m.indexed_fields:
        p["indexed_fields"] = dict(m.indexed_fields)
    return p


def alter_collection_in(m: pb.AlterCollectionRequest) -> Params:
    p: Params = {"coll": m.coll}
    if m.indexed_fields:
        # "" is the map's way to say null (stop indexing the field): proto3 map values cannot be absent.
        p["indexed_fields"] = {k: (v or None) for k, v in m.indexed_fields.items()}
    _opt(m, p, "default_ttl_seconds", "ef_search", "dimension", "metric", "text_index", "shards", "replication_factor")
    if m.HasField("clear_default_ttl") and m.clear_default_ttl:
        if "default_ttl_seconds" in p:
            raise InvalidArgument("give default_ttl_seconds or clear_default_ttl, not both", code="invalid_config")
        p["default_ttl_seconds"] = None
    _json(m, p, "index_json", "index")
    _json(m, p, "embedder_json", "embedder")
    return p


def _reindex_json(r: Result) -> str:
    return dump_json(r["reindex"]) if r.get("reindex") else ""


def get_collection_in(m: pb.GetCollectionRequest) -> Params:
    p: Params = {"coll": m.coll}
    _opt(m, p, "consistency")
    return p


def upsert_in(m: pb.UpsertRequest) -> Params:
    p: Params = {"coll": m.coll, "records": [record_in(r, f"records[{i}]") for i, r in enumerate(m.records)]}
    _opt(m, p, "consistency")
    return p


def get_in(m: pb.GetRequest) -> Params:
    p: Params = {"coll": m.coll, "ids": list(m.ids)}
    _fields(m, p, "include")
    _opt(m, p, "refresh_ttl", "consistency")
    return p


def patch_in(m: pb.PatchRequest) -> Params:
    p: Params = {"coll": m.coll, "id": m.id}
    _json(m, p, "metadata_json", "metadata")
    _opt(m, p, "text", "ttl_seconds", "importance", "consistency")
    _fields(m, p, "namespace")
    if m.HasField("vector"):
        p["vector"] = unpack_vector(m.vector, "vector")
    return p


def delete_in(m: pb.DeleteRequest) -> Params:
    # filter_json "{}" is a real filter (match everything); "" is no filter.
    p: Params = {"coll": m.coll}
    _list(m, p, "ids")
    _json(m, p, "filter_json", "filter")
    _opt(m, p, "consistency")
    return p


def scan_in(m: pb.ScanRequest) -> Params:
    p: Params = {"coll": m.coll}
    _opt(m, p, "cursor", "limit", "id_prefix", "consistency")
    _list(m, p, "namespace_prefix")
    _json(m, p, "filter_json", "filter")
    _fields(m, p, "include")
    return p


def count_in(m: pb.CountRequest) -> Params:
    p: Params = {"coll": m.coll}
    _json(m, p, "filter_json", "filter")
    _opt(m, p, "consistency")
    return p


def refresh_ttl_in(m: pb.RefreshTtlRequest) -> Params:
    p: Params = {"coll": m.coll, "ids": list(m.ids)}
    _opt(m, p, "consistency")
    return p


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
    _opt(m, p, "exact", "text", "mode", "min_score", "refresh_ttl", "consistency")
    _json(m, p, "weights_json", "weights")
    _json(m, p, "expand_json", "expand")
    return p


def list_namespaces_in(m: pb.ListNamespacesRequest) -> Params:
    p: Params = {"coll": m.coll}
    _list(m, p, "prefix", "suffix")
    _opt(m, p, "max_depth", "limit", "offset", "consistency")
    return p


def link_in(m: pb.LinkRequest) -> Params:
    p: Params = {"coll": m.coll, "edges": [edge_in(e, f"edges[{i}]") for i, e in enumerate(m.edges)]}
    _opt(m, p, "create_missing", "consistency")
    return p


def unlink_in(m: pb.UnlinkRequest) -> Params:
    p: Params = {"coll": m.coll, "edges": [{"src": e.src, "relation": e.relation, "dst": e.dst} for e in m.edges]}
    _opt(m, p, "consistency")
    return p


def edges_in(m: pb.EdgesRequest) -> Params:
    p: Params = {"coll": m.coll, "id": m.id}
    _opt(m, p, "direction", "relation", "limit", "consistency")
    return p


def neighbors_in(m: pb.NeighborsRequest) -> Params:
    p: Params = {"coll": m.coll, "id": m.id}
    _opt(m, p, "hops", "direction", "limit", "fanout", "timeout_ms", "consistency")
    _list(m, p, "relations")
    _fields(m, p, "include")
    return p


def subgraph_in(m: pb.SubgraphRequest) -> Params:
    p: Params = {"coll": m.coll, "ids": list(m.ids)}
    _opt(m, p, "hops", "direction", "limit", "timeout_ms", "consistency")
    _list(m, p, "relations")
    _fields(m, p, "include")
    return p


def extract_in(m: pb.ExtractRequest) -> Params:
    p: Params = {"coll": m.coll, "text": m.text}
    _opt(m, p, "instructions", "dedupe_threshold", "source_id", "consistency")
    _list(m, p, "namespace")
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


def erase_tenant_in(m: pb.EraseTenantRequest) -> Params:
    p: Params = {"tenant": m.tenant}
    _opt(m, p, "confirm")
    return p


# ---------------------------------------------------------- result -> response
def search_out(r: Result) -> pb.SearchResponse:
    resp = pb.SearchResponse()
    add = resp.hits.add
    for h in r["hits"]:
        fill_hit(add(), h)
    return resp


def records_out(r: Result) -> pb.RecordsResponse:
    resp = pb.RecordsResponse()
    add = resp.records.add
    for x in r["records"]:
        fill_record(add(), x)
    return resp


def scan_out(r: Result) -> pb.ScanResponse:
    resp = pb.ScanResponse()
    add = resp.records.add
    for x in r["records"]:
        fill_record(add(), x)
    if r.get("next_cursor") is not None:
        resp.next_cursor = r["next_cursor"]
    return resp


def edges_out(r: Result) -> pb.EdgesResponse:
    resp = pb.EdgesResponse()
    add = resp.edges.add
    for e in r["edges"]:
        fill_edge(add(), e)
    return resp


def subgraph_out(r: Result) -> pb.SubgraphResponse:
    resp = pb.SubgraphResponse()
    for x in r["nodes"]:
        fill_record(resp.nodes.add(), x)
    for e in r["edges"]:
        fill_edge(resp.edges.add(), e)
    return resp


def extract_out(r: Result) -> pb.ExtractResponse:
    resp = pb.ExtractResponse()
    for e in r["entities"]:
        ent = resp.entities.add()
        ent.id, ent.name, ent.type, ent.merged = e["id"], e["name"], e["type"], bool(e["merged"])
    for e in r["edges"]:
        fill_edge(resp.edges.add(), e)
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
        get_collection_in,
        lambda r: pb.GetCollectionResponse(
            collection=collection_out(r["collection"]), count=r.get("count") or 0, reindex_json=_reindex_json(r)
        ),
    ),
    "AlterCollection": Rpc(
        "alter_collection",
        pb.AlterCollectionRequest,
        pb.AlterCollectionResponse,
        alter_collection_in,
        lambda r: pb.AlterCollectionResponse(collection=collection_out(r["collection"]), reindex_json=_reindex_json(r)),
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
        records_out,
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
        edges_out,
    ),
    "Neighbors": Rpc("neighbors", pb.NeighborsRequest, pb.SearchResponse, neighbors_in, search_out),
    "Subgraph": Rpc(
        "subgraph",
        pb.SubgraphRequest,
        pb.SubgraphResponse,
        subgraph_in,
        subgraph_out,
    ),
    "Extract": Rpc("extract", pb.ExtractRequest, pb.ExtractResponse, extract_in, extract_out),
    "CreateKey": Rpc(
        "create_key",
        pb.CreateKeyRequest,
        pb.NewKeyResponse,
        create_key_in,
        new_key_out,
    ),
    "ListKeys": Rpc(
        "list_keys",
        pb.ListKeysRequest,
        pb.ListKeysResponse,
        lambda m: {},
        lambda r: pb.ListKeysResponse(keys=[key_info_out(k) for k in r["keys"]]),
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
        new_key_out,
    ),
    "EraseTenant": Rpc(
        "erase_tenant",
        pb.EraseTenantRequest,
        pb.EraseTenantResponse,
        erase_tenant_in,
        lambda r: pb.EraseTenantResponse(tenant=r["tenant"], collections=r["collections"], keys=r["keys"]),
    ),
    "CreateBackup": Rpc(
        "create_backup",
        pb.CreateBackupRequest,
        pb.BackupResponse,
        lambda m: {"name": m.name},
        lambda r: pb.BackupResponse(backup=backup_info_out(r["backup"])),
    ),
    "ListBackups": Rpc(
        "list_backups",
        pb.ListBackupsRequest,
        pb.ListBackupsResponse,
        lambda m: {},
        lambda r: pb.ListBackupsResponse(backups=[backup_info_out(b) for b in r["backups"]]),
    ),
    "VerifyBackup": Rpc(
        "verify_backup",
        pb.VerifyBackupRequest,
        pb.BackupResponse,
        lambda m: {"name": m.name},
        lambda r: pb.BackupResponse(backup=backup_info_out(r["backup"])),
    ),
    "Stats": Rpc(
        "stats",
        pb.StatsRequest,
        pb.StatsResponse,
        lambda m: {"limit": m.limit} if m.HasField("limit") else {},
        stats_out,
    ),
}
