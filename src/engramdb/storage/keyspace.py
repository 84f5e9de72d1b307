"""The RocksDB keyspace: every column family, key prefix and key layout.

This module is the one authority for what the database stores under which
key; every other module builds and parses keys through it. Keys are binary
and ordered: integers are fixed-width big-endian, so one collection's rows
are one contiguous range and a prefix scan reads exactly them.

Notation: ``P`` is a collection prefix, ``u32 tenant id | u32 collection id``
(:func:`coll_prefix`); ``lp(s)`` is ``u16 length | utf-8 bytes``
(length-prefixed); ``pack`` is the checksummed msgpack of
:func:`engramdb.storage.codec.pack`.

==========  ====================================================  ==========================================
family      key                                                   value
==========  ====================================================  ==========================================
meta        ``t|`` tenant name                                    pack({id, created_at})
meta        ``c|`` u32 tenant id, collection name                 pack({id, config, created_at})
meta        ``#`` counter name (``tenant``, ``collection``)       pack(last id handed out)
meta        ``n`` P, namespace segments each + ``\\x00``,          empty (the namespace index)
            ``\\x01``, record id
meta        ``w|`` P                                              msgpack({snapshot, through}): how far an
                                                                  unloaded collection's snapshot is current
meta        ``k|`` API key id (16 hex digits)                     pack(the key's fields, digest not secret)
records     P record id                                           codec record row (vector kept apart)
vectors     P record id (same key as in records)                  the live record's float32 vector, raw
edges_out   P lp(source) lp(relation) target                      codec edge row
edges_in    P lp(target) lp(relation) source                      the same edge row (reverse lookups)
changes     u64 changelog sequence                                kind byte (``CHANGE_*``), then the
                                                                  records or edges_out key
ttl         u64 due time in ms, kind byte (``TTL_*``), the        empty (a queue ordered by due time)
            records or edges_out key (``TTL_ERASE``: a P only)
hints       (reserved for the cluster's hinted handoff)           -
==========  ====================================================  ==========================================

The ``meta`` rows of layers above the engine (API keys) are reached through
named namespaces (:data:`META_NAMESPACES`) by the engine's metadata interface,
so those layers never build a key themselves.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from engramdb.errors import CorruptData

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")

# "vectors" holds each live record's (normalised) vector as raw float32 under
# the record's key, the only copy (the record row holds its digest, see
# codec): brute-force search reads them in one multi-get instead of copying
# them out of the HNSW index one by one (hnswlib's get_items is slow).
COLUMN_FAMILIES: Final = ("meta", "records", "edges_out", "edges_in", "changes", "ttl", "hints", "vectors")

# ------------------------------------------------------------ meta prefixes
TENANT_PREFIX: Final = b"t|"
COLLECTION_PREFIX: Final = b"c|"
COUNTER_PREFIX: Final = b"#"
NAMESPACE_INDEX_PREFIX: Final = b"n"
IDLE_MARK_PREFIX: Final = b"w|"
API_KEY_PREFIX: Final = b"k|"


class MetaNamespace(NamedTuple):
    """A family of ``meta`` rows kept for a layer above the engine."""

    prefix: bytes
    what: str  # names a row in the message of a corruption error


META_NAMESPACES: Final[dict[str, MetaNamespace]] = {
    "api_keys": MetaNamespace(API_KEY_PREFIX, "api key"),
}

# Kinds of rows in the ttl column family.
TTL_EXPIRE = 1  # a record's expiry
TTL_PURGE_RECORD = 2  # a record tombstone past its grace period
TTL_PURGE_EDGE = 3  # an edge tombstone past its grace period
# A collection (key: its prefix only, never a record id) whose deleted data
# must be erased from every file by then: see Database.erase.
TTL_ERASE = 4

# Kinds of rows in the changelog.
CHANGE_RECORD = 1
CHANGE_EDGE = 2
# A changelog entry whose key was erased (GDPR): the entry stays only to keep its sequence number.
CHANGE_ERASED = 3
# A record change that replaced a live record's vector (or deleted the record) with the vector
# it replaced: an index snapshot holds no live vectors, and a node changed after the snapshot's
# watermark must get back the vector it had then (docs/decisions.md, "One copy of each vector").
# Read through parse_change, which reports it as CHANGE_RECORD.
CHANGE_RECORD_PRIOR = 4


def change_entry(kind: int, key: bytes, prior: bytes | None = None) -> bytes:
    """A changelog value: the kind and the changed row's key, and for a record its replaced vector."""
    if prior is None:
        return bytes([kind]) + key
    return bytes([CHANGE_RECORD_PRIOR]) + _U16.pack(len(key)) + key + prior


def parse_change(value: bytes) -> tuple[int, bytes, bytes | None]:
    """``(kind, key, replaced vector or None)`` of a changelog value; CorruptData if it is cut short."""
    if not value:
        raise CorruptData("a changelog entry is empty")
    kind = value[0]
    if kind != CHANGE_RECORD_PRIOR:
        return kind, bytes(value[1:]), None
    if len(value) < 3:
        raise CorruptData("a changelog entry is cut short")
    n = _U16.unpack_from(value, 1)[0]
    if len(value) < 3 + n:
        raise CorruptData("a changelog entry is cut short")
    return CHANGE_RECORD, bytes(value[3 : 3 + n]), bytes(value[3 + n :])


NS_ID_SEP = b"\x01"  # between an encoded namespace and the record id


# ------------------------------------------------------------------ meta
def tenant_key(name: str) -> bytes:
    return TENANT_PREFIX + name.encode()


def tenant_name_of(key: bytes) -> str:
    return key[len(TENANT_PREFIX) :].decode()


def collections_prefix(tenant_id: int) -> bytes:
    """Prefix of the config rows of every collection of a tenant."""
    return COLLECTION_PREFIX + _U32.pack(tenant_id)


def collection_key(tenant_id: int, name: str) -> bytes:
    return collections_prefix(tenant_id) + name.encode()


def counter_key(counter: str) -> bytes:
    return COUNTER_PREFIX + counter.encode()


def idle_mark_key(prefix: bytes) -> bytes:
    """The row recording how far an unloaded collection's index snapshot is current (changelog trimming)."""
    return IDLE_MARK_PREFIX + prefix


def meta_row_key(namespace: str, key: str) -> bytes:
    """The ``meta`` key of row ``key`` of a namespace of :data:`META_NAMESPACES`."""
    return META_NAMESPACES[namespace].prefix + key.encode()


# -------------------------------------------------------- records and edges
def coll_prefix(tenant_id: int, coll_id: int) -> bytes:
    return _U32.pack(tenant_id) + _U32.pack(coll_id)


def record_key(prefix: bytes, record_id: str) -> bytes:
    return prefix + record_id.encode()


def record_id_of(key: bytes) -> str:
    return key[8:].decode()


def _lp(s: str) -> bytes:
    b = s.encode()
    return _U16.pack(len(b)) + b


def edge_out_key(prefix: bytes, src: str, relation: str, dst: str) -> bytes:
    return prefix + _lp(src) + _lp(relation) + dst.encode()


def edge_in_key(prefix: bytes, src: str, relation: str, dst: str) -> bytes:
    return prefix + _lp(dst) + _lp(relation) + src.encode()


def edge_node_prefix(prefix: bytes, node: str, relation: str | None = None) -> bytes:
    """Prefix of all out-edges of ``node`` (edges_out) or in-edges (edges_in)."""
    p = prefix + _lp(node)
    if relation is not None:
        p += _lp(relation)
    return p


def parse_edge_key(key: bytes) -> tuple[str, str, str]:
    """(first node, relation, second node) of an edges_out or edges_in key."""
    pos = 8
    (n,) = _U16.unpack_from(key, pos)
    a = key[pos + 2 : pos + 2 + n].decode()
    pos += 2 + n
    (n,) = _U16.unpack_from(key, pos)
    rel = key[pos + 2 : pos + 2 + n].decode()
    pos += 2 + n
    return a, rel, key[pos:].decode()


# ------------------------------------------------------------- namespaces
def encode_namespace(ns: tuple[str, ...] | list[str]) -> bytes:
    # Segments never contain control characters (validated), so \x00 ends a
    # segment and every path's children sort right after the path itself.
    return b"".join(s.encode() + b"\x00" for s in ns)


def decode_namespace(b: bytes) -> tuple[str, ...]:
    if not b:
        return ()
    return tuple(p.decode() for p in b.split(b"\x00")[:-1])


def namespace_index_prefix(prefix: bytes) -> bytes:
    """Prefix of a collection's namespace index rows in ``meta``."""
    return NAMESPACE_INDEX_PREFIX + prefix


def ns_key(prefix: bytes, ns: tuple[str, ...], record_id: str) -> bytes:
    return namespace_index_prefix(prefix) + encode_namespace(ns) + NS_ID_SEP + record_id.encode()


# ------------------------------------------------------ ttl and changelog
def ttl_key(when_ms: int, kind: int, key: bytes) -> bytes:
    return _U64.pack(when_ms) + bytes([kind]) + key


def parse_ttl_key(k: bytes) -> tuple[int, int, bytes]:
    return _U64.unpack_from(k, 0)[0], k[8], k[9:]


def seq_key(seq: int) -> bytes:
    return _U64.pack(seq)


def parse_seq(k: bytes) -> int:
    return int(_U64.unpack(k)[0])


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\xff" * 9
    p[-1] += 1
    return bytes(p)
