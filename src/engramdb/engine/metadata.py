"""Metadata rows the engine keeps for the layers above it (today: API keys).

A layer above the engine names a namespace and a key inside it; the engine owns
where the rows live (the ``meta`` column family, under the namespace's prefix
in :data:`engramdb.storage.keyspace.META_NAMESPACES`) and how values are
encoded (checksummed msgpack). So the service never builds a RocksDB key, and
a cluster coordinator can keep the same rows elsewhere behind the same methods.
"""

from __future__ import annotations

import contextlib
from typing import Any

from engramdb.storage import keyspace
from engramdb.storage.codec import pack, unpack
from engramdb.storage.store import Store


class Metadata:
    """Durable rows by ``(namespace, key)``; values are msgpack-able (dicts of plain values).

    Namespaces are the names in :data:`~engramdb.storage.keyspace.META_NAMESPACES`;
    any other name is a programming error (``KeyError``). Writes are durable
    when the call returns. Nothing here serialises a read-modify-write: callers
    that update a row from its old value hold their own lock.
    """

    def __init__(self, store: Store):
        self._store = store

    def get(self, namespace: str, key: str) -> Any | None:
        """The value of row ``key``, or None if there is none; raises CorruptData for a damaged row."""
        raw = self._store.get("meta", keyspace.meta_row_key(namespace, key))
        return None if raw is None else unpack(raw, keyspace.META_NAMESPACES[namespace].what)

    def put(self, namespace: str, key: str, value: Any) -> None:
        """Write row ``key`` (replacing any value it had)."""
        self._store.write_meta({keyspace.meta_row_key(namespace, key): pack(value)})

    def scan(self, namespace: str) -> list[tuple[str, Any]]:
        """Every row of the namespace as ``(key, value)``, in key order."""
        ns = keyspace.META_NAMESPACES[namespace]
        return [
            (k[len(ns.prefix) :].decode(), unpack(v, ns.what)) for k, v in self._store.iter_prefix("meta", ns.prefix)
        ]

    def has_rows(self, namespace: str) -> bool:
        """Whether the namespace holds any row (reads one key at most)."""
        rows = self._store.iter_prefix("meta", keyspace.META_NAMESPACES[namespace].prefix)
        with contextlib.closing(rows):  # the RocksDB iterator must not outlive the call
            return next(rows, None) is not None
