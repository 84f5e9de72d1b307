"""Compact, checksummed binary rows (msgpack + raw float32 bytes, never pickle).

Every row ends with a CRC32 of its payload, so a flipped bit in a value is a
``CorruptData`` error at read time instead of silently wrong data.

A record row does not hold its vector: that lives once, as raw float32, in
the ``vectors`` column family, and the row holds its XXH3-64 digest. Reading
metadata (every search result) then reads a ~100-byte row, not a 1.6 KB one,
so the block cache holds ten times as many records and every write stores
the vector once instead of twice. Rows of format 1 (vector inline) are still
read.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import xxhash

from engramdb.errors import DAMAGED_DATA_ADVICE, CorruptData

_CRC = struct.Struct(">I")
RECORD_FORMAT = 2  # 1: the vector inline; 2: its digest (the bytes are in "vectors")
EDGE_FORMAT = 1


def _seal(payload: bytes) -> bytes:
    return payload + _CRC.pack(zlib.crc32(payload))


def _open(raw: bytes, what: str) -> Any:
    if len(raw) < 5:
        raise CorruptData(f"{what} row is truncated ({len(raw)} bytes). {DAMAGED_DATA_ADVICE}")
    payload, crc = raw[:-4], _CRC.unpack(raw[-4:])[0]
    if zlib.crc32(payload) != crc:
        raise CorruptData(f"{what} row failed its checksum. {DAMAGED_DATA_ADVICE}")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise CorruptData(f"{what} row could not be decoded ({e}). {DAMAGED_DATA_ADVICE}") from e


@dataclass(slots=True)
class RecordRow:
    """A record as stored. A tombstone has ``deleted=True`` and no payload."""

    hlc: int
    node: int
    deleted: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float | None = None
    namespace: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    vector: bytes | None = None
    importance: float | None = None
    ttl_seconds: float | None = None
    # Set on a row decoded without its vector (which is in the "vectors"
    # column family): the digest of the vector it has. None with ``vector``
    # None means the record has no vector.
    vector_digest: int | None = None

    @property
    def version(self) -> tuple[int, int]:
        return (self.hlc, self.node)

    @property
    def has_vector(self) -> bool:
        return self.vector is not None or self.vector_digest is not None

    @property
    def vector_pending(self) -> bool:
        """True if the row has a vector that was not read with it (see ``Store.load_vectors``)."""
        return self.vector is None and self.vector_digest is not None

    def digest(self) -> int | None:
        """XXH3-64 of the vector (None without one): equal digests, same vector."""
        if self.vector is not None:
            return vector_digest(self.vector)
        return self.vector_digest

    def vector_array(self) -> np.ndarray | None:
        if self.vector is None:
            return None
        return np.frombuffer(self.vector, dtype=np.float32)

    def live(self, now: float) -> bool:
        return not self.deleted and (self.expires_at is None or self.expires_at > now)


def vector_digest(vector: bytes) -> int:
    return xxhash.xxh3_64_intdigest(vector)


def encode_record(r: RecordRow) -> bytes:
    """The stored form of ``r``; its vector bytes go to the "vectors" column family separately."""
    if r.vector_pending:
        # Writing it would keep the digest but not the bytes: a read-modify-write
        # must read the vector too (Store.load_vectors), or it would lose it.
        raise ValueError("a record row read without its vector cannot be written back")
    if r.deleted:
        payload = msgpack.packb([RECORD_FORMAT, r.hlc, r.node, True, r.updated_at])
    else:
        payload = msgpack.packb(
            [
                RECORD_FORMAT,
                r.hlc,
                r.node,
                False,
                r.updated_at,
                r.created_at,
                r.expires_at,
                list(r.namespace),
                r.metadata,
                r.text,
                None if r.vector is None else vector_digest(r.vector),
                r.importance,
                r.ttl_seconds,
            ],
            use_bin_type=True,
        )
    return _seal(payload)


def record_fields(raw: bytes) -> list[Any]:
    """A record row's checked fields as stored (see :func:`encode_record`), without building a :class:`RecordRow`.

    For read paths that turn rows straight into their public form: positions 0-4
    (format, hlc, node, deleted, updated_at) always exist; a live row has 13
    fields, position 10 holding the vector (format 1) or its digest (format 2).
    """
    a = _open(raw, "record")
    if not isinstance(a, list) or not a or a[0] not in (1, RECORD_FORMAT):
        raise CorruptData("record row has an unknown format; was it written by a newer EngramDB?")
    return a


def decode_record(raw: bytes) -> RecordRow:
    a = record_fields(raw)
    if a[3]:
        return RecordRow(hlc=a[1], node=a[2], deleted=True, updated_at=a[4])
    inline = a[0] == 1
    return RecordRow(
        hlc=a[1],
        node=a[2],
        deleted=False,
        updated_at=a[4],
        created_at=a[5],
        expires_at=a[6],
        namespace=tuple(a[7]),
        metadata=a[8],
        text=a[9],
        vector=a[10] if inline else None,
        importance=a[11],
        ttl_seconds=a[12],
        vector_digest=None if inline else a[10],
    )


def decode_version(raw: bytes) -> tuple[int, int]:
    """Just the version of a record or edge row (for the LWW comparison)."""
    a = _open(raw, "row")
    return (a[1], a[2])


@dataclass(slots=True)
class EdgeRow:
    hlc: int
    node: int
    deleted: bool = False
    weight: float = 1.0
    properties: dict[str, Any] = field(default_factory=dict)
    updated_at: float = 0.0

    @property
    def version(self) -> tuple[int, int]:
        return (self.hlc, self.node)


def encode_edge(e: EdgeRow) -> bytes:
    return _seal(
        msgpack.packb([EDGE_FORMAT, e.hlc, e.node, e.deleted, e.updated_at, e.weight, e.properties], use_bin_type=True)
    )


def decode_edge(raw: bytes) -> EdgeRow:
    a = _open(raw, "edge")
    if not isinstance(a, list) or not a or a[0] != EDGE_FORMAT:
        raise CorruptData("edge row has an unknown format; was it written by a newer EngramDB?")
    return EdgeRow(hlc=a[1], node=a[2], deleted=a[3], updated_at=a[4], weight=a[5], properties=a[6])


def pack(obj: Any) -> bytes:
    """Checksummed msgpack for metadata rows (collections, keys, watermarks)."""
    return _seal(msgpack.packb(obj, use_bin_type=True))


def unpack(raw: bytes, what: str = "metadata") -> Any:
    return _open(raw, what)
