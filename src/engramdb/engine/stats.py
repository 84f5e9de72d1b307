"""Memory per component of one node: the answer of ``stats`` (docs/observability.md, Memory per component).

Every figure is a reading or an estimate that costs the same however large a
collection is: RocksDB properties (:meth:`Store.engine_stats`, the readings
``/metrics`` exports), the process's resident set from ``/proc``, and each
collection's :meth:`CollectionIndexes.memory_stats`. No record is read.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterable
from typing import Any, Protocol

from engramdb import validation
from engramdb.engine.indexes import CollectionIndexes
from engramdb.errors import EngramError
from engramdb.storage.store import Store

# The per-collection figures totals adds up.
COLLECTION_BYTES = ("vector_index_bytes", "id_maps_bytes", "payload_index_bytes", "text_index_bytes")


STATS_CATCH_UP_SECONDS = 2.0  # per listed collection, at most


class StatsCollection(Protocol):
    """What stats reads of a collection."""

    @property
    def tenant(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def indexes(self) -> CollectionIndexes: ...


def process_memory() -> dict[str, int]:
    """``rss_bytes`` (resident now) and ``peak_rss_bytes`` (the most it has been) of this process; 0 if unknown."""
    rss = peak = 0
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    kib = int(line.split()[1]) * 1024
                    if line.startswith("VmRSS:"):
                        rss = kib
                    else:
                        peak = kib
    except (OSError, ValueError, IndexError):
        pass
    if not peak:
        # ru_maxrss is KiB on Linux, bytes on macOS.
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = int(maxrss if sys.platform == "darwin" else maxrss * 1024)
    return {"rss_bytes": rss, "peak_rss_bytes": max(peak, rss)}


def rocksdb_memory(store: Store) -> dict[str, int]:
    """RocksDB's memory and files, summed over the column families (from :meth:`Store.engine_stats`)."""
    st = store.engine_stats()
    cfs = st.column_families.values()
    return {
        "memtables_bytes": sum(c.memtable_bytes for c in cfs),
        "block_cache_bytes": int(st.block_cache_usage),
        "block_cache_capacity_bytes": int(st.block_cache_capacity),
        "table_readers_bytes": sum(c.table_readers_bytes for c in cfs),
        "sst_files_bytes": sum(c.sst_bytes for c in cfs),
        "wal_bytes": int(st.wal_bytes),
    }


def node_stats(
    store: Store,
    collections: Iterable[StatsCollection],
    limit: int = validation.DEFAULT_STATS_COLLECTIONS,
) -> dict[str, Any]:
    """The stats answer: ``process``, ``rocksdb``, ``collections``, ``totals`` and ``more``.

    ``collections`` are those the caller may see; the ``limit`` largest (by records, loaded
    ones first) are listed, ``more`` says whether others were left out, and ``totals`` adds up
    the listed ones (``totals.collections`` counts them all).
    """
    limit = validation.stats_limit(limit)
    rows = [(c, c.indexes.size()) for c in collections]
    # Ties in name order, so repeated calls list the same collections.
    rows.sort(key=lambda r: (r[1] is None, -(r[1] or 0), r[0].tenant, r[0].name))
    listed = []
    for coll, n in rows[:limit]:
        if n is not None:
            # Count the writes acknowledged so far (the notifier may still be applying them); a
            # broken or slow index is listed as it is.
            with contextlib.suppress(EngramError):
                coll.indexes.catch_up(STATS_CATCH_UP_SECONDS)
        listed.append({"tenant": coll.tenant, "name": coll.name, **coll.indexes.memory_stats()})
    totals: dict[str, int] = {
        "collections": len(rows),
        "loaded_collections": sum(1 for _, n in rows if n is not None),
        "records": sum(c["records"] for c in listed),
    }
    for key in COLLECTION_BYTES:
        totals[key] = sum(c[key] for c in listed)
    totals["index_bytes"] = sum(totals[k] for k in COLLECTION_BYTES)
    return {
        "process": process_memory(),
        "rocksdb": rocksdb_memory(store),
        "collections": listed,
        "totals": totals,
        "more": len(rows) > limit,
    }


__all__ = ["COLLECTION_BYTES", "StatsCollection", "node_stats", "process_memory", "rocksdb_memory"]
