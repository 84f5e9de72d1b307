"""The gRPC wire vocabulary shared by the server and the Python clients.

``engramdb_pb2`` / ``engramdb_pb2_grpc`` are generated from
proto/engramdb/v1/engramdb.proto by ``make proto``. They live here, below both
the clients and the server in the layer order (docs/architecture.md), so the
clients can speak gRPC without importing the server. The functions below are
the conversions both sides need, in one copy: vectors as packed float32, and
each result message turned into exactly the dict REST returns for it
(``Record.to_dict()`` and friends), so a client decodes both transports with
the same code. The server's request/response conversions are in
``engramdb.server.grpc.convert``; the client's request building in
``engramdb.client.grpc_transport``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson

from engramdb.grpc_codec import engramdb_pb2 as pb

F32 = np.dtype("<f4")


def pack_vector(values: Iterable[float] | np.ndarray) -> bytes:
    """Packed little-endian float32 bytes of a vector (exact for float32 input)."""
    return np.asarray(values, dtype=F32).tobytes()


def record_to_dict(m: pb.Record) -> dict[str, Any]:
    return {
        "id": m.id,
        "vector": np.frombuffer(m.vector, dtype=F32).tolist() if m.HasField("vector") else None,
        "text": m.text if m.HasField("text") else None,
        "metadata": orjson.loads(m.metadata_json) if m.metadata_json else {},
        "namespace": list(m.namespace),
        "expires_at": m.expires_at if m.HasField("expires_at") else None,
        "ttl_seconds": m.ttl_seconds if m.HasField("ttl_seconds") else None,
        "importance": m.importance if m.HasField("importance") else None,
        "created_at": m.created_at if m.HasField("created_at") else None,
        "updated_at": m.updated_at if m.HasField("updated_at") else None,
        "version": m.version if m.HasField("version") else None,
    }


def edge_to_dict(m: pb.Edge) -> dict[str, Any]:
    return {
        "src": m.src,
        "relation": m.relation,
        "dst": m.dst,
        "weight": m.weight if m.HasField("weight") else 1.0,
        "properties": orjson.loads(m.properties_json) if m.properties_json else {},
        "version": m.version if m.HasField("version") else None,
    }


def hit_to_dict(m: pb.Hit) -> dict[str, Any]:
    return {
        "id": m.id,
        "score": m.score,
        "record": record_to_dict(m.record) if m.HasField("record") else None,
        "hop": m.hop,
        "path": orjson.loads(m.path_json) if m.path_json else [],
        "signals": dict(m.signals),
    }


def extract_to_dict(m: pb.ExtractResponse) -> dict[str, Any]:
    """The extract result as REST returns it (``ExtractResult.to_dict()``)."""
    return {
        "entities": [{"id": e.id, "name": e.name, "type": e.type, "merged": e.merged} for e in m.entities],
        "edges": [
            {"src": e.src, "relation": e.relation, "dst": e.dst, "weight": e.weight, "version": e.version}
            for e in m.edges
        ],
    }


def _fields(m: Any) -> dict[str, Any]:
    """Every field of a flat message (scalars only) by its name: the proto names the contract's keys."""
    return {f.name: getattr(m, f.name) for f in m.DESCRIPTOR.fields}


def stats_to_dict(m: pb.StatsResponse) -> dict[str, Any]:
    """The stats answer as REST returns it (``process`` and ``rocksdb`` None when absent)."""
    return {
        "process": _fields(m.process) if m.HasField("process") else None,
        "rocksdb": _fields(m.rocksdb) if m.HasField("rocksdb") else None,
        "collections": [_fields(c) for c in m.collections],
        "totals": _fields(m.totals),
        "more": m.more,
    }


def collection_to_dict(m: pb.CollectionConfig) -> dict[str, Any]:
    return {
        "name": m.name,
        "dimension": m.dimension,
        "metric": m.metric,
        "index": orjson.loads(m.index_json) if m.index_json else None,
        "embedder": orjson.loads(m.embedder_json) if m.embedder_json else None,
        "default_ttl_seconds": m.default_ttl_seconds if m.HasField("default_ttl_seconds") else None,
        "indexed_fields": dict(m.indexed_fields),
        "text_index": m.text_index,
        # 0 = not sent (a server from before these fields): such a server has one copy of one shard.
        "shards": m.shards or 1,
        "replication_factor": m.replication_factor or 1,
    }
