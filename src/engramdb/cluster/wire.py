"""What nodes send each other: msgpack messages of plain values, and rows as compact lists.

Only this module knows the encoding. Every message is a msgpack map; rows travel as lists in a
fixed field order (the same order as :class:`~engramdb.storage.codec.RecordRow`), vectors as raw
float32 bytes. Unpacking is bounded (message size, container lengths) and never builds anything
but plain values, so a peer cannot make a node allocate without limit or run code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from engramdb.errors import InvalidArgument
from engramdb.storage.codec import EdgeRow, RecordRow
from engramdb.types import Hit, Record

# A write batch holds at most validation's batch limit of records of up to a few MiB each; the
# gRPC channel refuses bigger messages before they reach here.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def dumps(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def loads(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidArgument(f"a peer message of {len(raw)} bytes is over the limit", code="malformed_request")
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:
        raise InvalidArgument(f"malformed peer message: {type(e).__name__}", code="malformed_request") from None
    if not isinstance(value, dict):
        raise InvalidArgument("a peer message must be a map", code="malformed_request")
    return value


def version(v: Sequence[int]) -> tuple[int, int]:
    return (int(v[0]), int(v[1]))


# ------------------------------------------------------------------ rows
def record_row_out(r: RecordRow) -> list[Any]:
    return [
        r.hlc,
        r.node,
        r.deleted,
        r.created_at,
        r.updated_at,
        r.expires_at,
        list(r.namespace),
        r.metadata,
        r.text,
        r.vector,
        r.importance,
        r.ttl_seconds,
    ]


def record_row_in(v: Sequence[Any]) -> RecordRow:
    try:
        hlc, node, deleted, created, updated, expires, ns, md, text, vec, imp, ttl = v
        return RecordRow(
            int(hlc),
            int(node),
            bool(deleted),
            float(created),
            float(updated),
            None if expires is None else float(expires),
            tuple(str(s) for s in ns),
            dict(md),
            text,
            vec,
            imp,
            ttl,
        )
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"malformed record row from a peer: {e}", code="malformed_request") from None


def edge_row_out(e: EdgeRow) -> list[Any]:
    return [e.hlc, e.node, e.deleted, e.weight, e.properties, e.updated_at]


def edge_row_in(v: Sequence[Any]) -> EdgeRow:
    try:
        hlc, node, deleted, weight, props, updated = v
        return EdgeRow(int(hlc), int(node), bool(deleted), float(weight), dict(props), float(updated))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"malformed edge row from a peer: {e}", code="malformed_request") from None


# --------------------------------------------------------------- results
def record_out(r: Record) -> list[Any]:
    return [
        r.id,
        r.vector,
        r.text,
        r.metadata,
        list(r.namespace),
        r.expires_at,
        r.ttl_seconds,
        r.importance,
        r.created_at,
        r.updated_at,
        r.version,
    ]


def record_in(v: Sequence[Any]) -> Record:
    try:
        rid, vec, text, md, ns, exp, ttl, imp, created, updated, ver = v
        return Record(
            id=rid,
            vector=vec,
            text=text,
            metadata=md,
            namespace=tuple(ns),
            expires_at=exp,
            ttl_seconds=ttl,
            importance=imp,
            created_at=created,
            updated_at=updated,
            version=ver,
        )
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"malformed record from a peer: {e}", code="malformed_request") from None


def hit_out(h: Hit) -> list[Any]:
    return [h.id, h.score, None if h.record is None else record_out(h.record), h.hop, h.path, h.signals]


def hit_in(v: Sequence[Any]) -> Hit:
    try:
        rid, score, rec, hop, path, signals = v
        return Hit(
            id=rid,
            score=float(score),
            record=None if rec is None else record_in(rec),
            hop=int(hop),
            path=list(path),
            signals=dict(signals),
        )
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"malformed hit from a peer: {e}", code="malformed_request") from None
