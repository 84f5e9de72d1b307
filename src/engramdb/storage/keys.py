"""The binary keyspace. Every key starts with fixed-width big-endian integers so
that one collection's rows are one contiguous, ordered range."""

from __future__ import annotations

import struct

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")

# Kinds of rows in the ttl column family.
TTL_EXPIRE = 1  # a record's expiry
TTL_PURGE_RECORD = 2  # a record tombstone past its grace period
TTL_PURGE_EDGE = 3  # an edge tombstone past its grace period

# Kinds of rows in the changelog.
CHANGE_RECORD = 1
CHANGE_EDGE = 2

NS_ID_SEP = b"\x01"  # between an encoded namespace and the record id


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


def encode_namespace(ns: tuple[str, ...] | list[str]) -> bytes:
    # Segments never contain control characters (validated), so \x00 ends a
    # segment and every path's children sort right after the path itself.
    return b"".join(s.encode() + b"\x00" for s in ns)


def decode_namespace(b: bytes) -> tuple[str, ...]:
    if not b:
        return ()
    return tuple(p.decode() for p in b.split(b"\x00")[:-1])


def ns_key(prefix: bytes, ns: tuple[str, ...], record_id: str) -> bytes:
    return b"n" + prefix + encode_namespace(ns) + NS_ID_SEP + record_id.encode()


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
