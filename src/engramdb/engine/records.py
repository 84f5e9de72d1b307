r"""Reading a collection's record rows and turning them into public :class:`~engramdb.types.Record`\s."""

from __future__ import annotations

from collections.abc import Sequence

from engramdb.engine.hlc import version_str
from engramdb.filters import Filter
from engramdb.storage import keyspace
from engramdb.storage.codec import RecordRow
from engramdb.storage.store import Store
from engramdb.types import Record


class RecordReader:
    """Rows of one collection (by id) and their public form; used by reads, search and graph walks."""

    __slots__ = ("prefix", "store")

    def __init__(self, store: Store, prefix: bytes):
        self.store = store
        self.prefix = prefix

    def _key(self, rid: str) -> bytes:
        return keyspace.record_key(self.prefix, rid)

    def rows(self, rids: Sequence[str]) -> list[RecordRow | None]:
        """Stored rows (live or not) for ids, in order."""
        return self.store.get_records([self._key(r) for r in rids])

    @staticmethod
    def to_record(rid: str, row: RecordRow, include: frozenset[str]) -> Record:
        """The public form of a row; with "vector" in ``include`` the row must hold it (see :meth:`records`)."""
        vec = None
        if "vector" in include:
            if row.vector_pending:
                raise RuntimeError(f"internal error: record {rid!r} was read without its vector")
            vec = row.vector_array()
        return Record(
            id=rid,
            vector=vec.tolist() if vec is not None else None,
            text=row.text if "text" in include else None,
            metadata=row.metadata if "metadata" in include else {},
            namespace=row.namespace if "namespace" in include else (),
            expires_at=row.expires_at if "expires_at" in include else None,
            ttl_seconds=row.ttl_seconds if "expires_at" in include else None,
            importance=row.importance if "importance" in include else None,
            created_at=row.created_at if "timestamps" in include else None,
            updated_at=row.updated_at if "timestamps" in include else None,
            version=version_str(row.version),
        )

    def records(
        self,
        pairs: Sequence[tuple[str, RecordRow | None]],
        inc: frozenset[str],
        now: float,
        flt: Filter | None = None,
    ) -> list[Record | None]:
        """Public records of ``(id, row)`` pairs, None where the row is absent or not live.

        Rows are read without their vectors; when ``inc`` asks for them they
        are read here in one multi-get. A row that changed meanwhile is read
        again and must still match ``flt`` (the filter its caller selected it by).
        """
        rows = [row for _, row in pairs]
        if "vector" in inc:
            rows = self.store.load_vectors([self._key(rid) for rid, _ in pairs], rows)
        out: list[Record | None] = []
        for (rid, seen), row in zip(pairs, rows, strict=True):
            # A row read again (it changed meanwhile) must still match the caller's filter.
            stale = (
                row is not seen
                and flt is not None
                and row is not None
                and not flt.matches(rid, row.namespace, row.metadata)
            )
            if row is None or not row.live(now) or stale:
                out.append(None)
            else:
                out.append(self.to_record(rid, row, inc))
        return out
