"""Compact, checksummed binary rows (msgpack + raw float32 bytes, never pickle).

Every row ends with a CRC32 of its payload, so a flipped bit in a value is a
``CorruptData`` error at read time instead of silently wrong data.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from ..errors import CorruptData

_CRC = struct.Struct(">I")
RECORD_FORMAT = 1
EDGE_FORMAT = 1


def _seal(payload: bytes) -> bytes:
    return payload + _CRC.pack(zlib.crc32(payload))


def _open(raw: bytes, what: str) -> Any:
    if len(raw) < 5:
        raise CorruptData(f"{what} row is truncated ({len(raw)} bytes); restore from backup or run repair")
    payload, crc = raw[:-4], _CRC.unpack(raw[-4:])[0]
    if zlib.crc32(payload) != crc:
        raise CorruptData(f"{what} row failed its checksum; the data file is damaged, restore from backup")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise CorruptData(f"{what} row could not be decoded: {e}") from e


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

    @property
    def version(self) -> tuple[int, int]:
        return (self.hlc, self.node)

    def vector_array(self) -> np.ndarray | None:
        if self.vector is None:
            return None
        return np.frombuffer(self.vector, dtype=np.float32)

    def live(self, now: float) -> bool:
        return not self.deleted and (self.expires_at is None or self.expires_at > now)


def encode_record(r: RecordRow) -> bytes:
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
                r.vector,
                r.importance,
                r.ttl_seconds,
            ],
            use_bin_type=True,
        )
    return _seal(payload)


def decode_record(raw: bytes) -> RecordRow:
    a = _open(raw, "record")
    if not isinstance(a, list) or not a or a[0] != RECORD_FORMAT:
        raise CorruptData("record row has an unknown format; was it written by a newer EngramDB?")
    if a[3]:
        return RecordRow(hlc=a[1], node=a[2], deleted=True, updated_at=a[4])
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
        vector=a[10],
        importance=a[11],
        ttl_seconds=a[12],
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
