"""Building the stored rows of writes: one place for the engine and the cluster coordinator.

A write is validated and turned into :class:`~engramdb.storage.codec.RecordRow` values stamped with
a version from an :class:`~engramdb.engine.hlc.HLC`. On a single node the collection then applies
them to its store; in a cluster the coordinator builds them the same way and sends them to every
replica of the record's shard, where the replica applies them unchanged
(:meth:`engramdb.engine.collection.Collection.apply_rows`). So a record gets the same version and
the same expiry on every replica, and both paths refuse the same bad input with the same errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engramdb import validation
from engramdb.errors import InvalidArgument
from engramdb.storage.codec import RecordRow
from engramdb.types import CollectionConfig, Record

if TYPE_CHECKING:
    from engramdb.embed import Embedder
    from engramdb.engine.hlc import HLC

RECORD_FIELDS = frozenset(
    {
        "id",
        "vector",
        "text",
        "metadata",
        "namespace",
        "ttl_seconds",
        "expires_at",
        "importance",
        "created_at",
        "updated_at",
        "version",
    }
)


def _fields(item: Record | Mapping[str, Any], where: str) -> Mapping[str, Any]:
    if isinstance(item, Record):
        return item.__dict__
    if isinstance(item, Mapping):
        unknown = set(item) - RECORD_FIELDS
        if unknown:
            raise InvalidArgument(f"{where} has unknown fields {sorted(unknown)}", code="invalid_record")
        return item
    raise InvalidArgument(f"{where} must be a Record or a dict", code="invalid_record")


def embed_missing(items: list[Record | Mapping[str, Any]], embedder: Embedder) -> None:
    """Give vector-less records with text a vector, in one provider call (``items`` is changed in place)."""
    todo = []
    for i, it in enumerate(items):
        d = it.__dict__ if isinstance(it, Record) else it
        if isinstance(d, Mapping) and d.get("vector") is None and isinstance(d.get("text"), str):
            todo.append(i)
    if not todo:
        return
    texts = [_fields(items[i], "record")["text"] for i in todo]
    vecs = embedder.embed(texts)
    for i, v in zip(todo, vecs, strict=True):
        it = items[i]
        items[i] = Record(**{**it.__dict__, "vector": v}) if isinstance(it, Record) else {**it, "vector": v}


def record_row(
    item: Record | Mapping[str, Any],
    where: str,
    now: float,
    config: CollectionConfig,
    hlc: HLC,
    embedder: Embedder | None = None,
) -> tuple[str, RecordRow]:
    """``(id, row)`` of one record of an upsert, validated, with a new version and its absolute expiry."""
    d = _fields(item, where)
    rid = validation.record_id(d.get("id"), f"{where}.id")
    text = validation.text(d.get("text"))
    vec_in = d.get("vector")
    if vec_in is None:
        if embedder is None or text is None:
            raise InvalidArgument(
                f"{where} has no vector; give a vector, or text in a collection with an embedder",
                code="missing_vector",
            )
        vec_in = embedder.embed([text])[0]
    vec = validation.vector(vec_in, config.dimension, config.metric, f"{where}.vector")
    ttl = validation.positive_seconds(d.get("ttl_seconds"), f"{where}.ttl_seconds")
    expires_at = validation.epoch_seconds(d.get("expires_at"), f"{where}.expires_at")
    if ttl is not None and expires_at is not None:
        raise InvalidArgument(f"{where}: give ttl_seconds or expires_at, not both", code="invalid_ttl")
    if ttl is None and expires_at is None:
        ttl = config.default_ttl_seconds
    if ttl is not None:
        expires_at = now + ttl
    stamp, node = hlc.now()
    return rid, RecordRow(
        hlc=stamp,
        node=node,
        created_at=now,
        updated_at=now,
        expires_at=expires_at,
        namespace=validation.namespace(d.get("namespace"), f"{where}.namespace"),
        metadata=validation.metadata(d.get("metadata")),
        text=text,
        vector=vec.tobytes(),
        importance=validation.finite(d.get("importance"), f"{where}.importance"),
        ttl_seconds=ttl,
    )


def upsert_rows(
    records: Record | Mapping[str, Any] | Sequence[Record | Mapping[str, Any]],
    now: float,
    config: CollectionConfig,
    hlc: HLC,
    embedder: Embedder | None = None,
) -> list[tuple[str, RecordRow]]:
    """The rows of an upsert batch; the whole batch is refused (nothing built) if one record is bad."""
    items = [records] if isinstance(records, (Record, Mapping)) else list(records)
    validation.batch(items, "records")
    if embedder is not None:
        embed_missing(items, embedder)
    built = [record_row(it, f"records[{i}]", now, config, hlc, embedder) for i, it in enumerate(items)]
    seen: set[str] = set()
    for rid, _ in built:
        if rid in seen:
            raise InvalidArgument(f"id {rid!r} appears twice in one batch", code="duplicate_id")
        seen.add(rid)
    return built


@dataclass(frozen=True)
class Patch:
    """A validated patch of one record (None: keep the field)."""

    metadata: dict[str, Any] | None
    text: str | None
    namespace: tuple[str, ...] | None
    ttl_seconds: float | None
    importance: float | None
    vector: bytes | None

    @classmethod
    def parse(
        cls,
        config: CollectionConfig,
        *,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        namespace: Sequence[str] | None = None,
        ttl_seconds: float | None = None,
        importance: float | None = None,
        vector: Sequence[float] | None = None,
    ) -> Patch:
        return cls(
            metadata=validation.metadata(metadata) if metadata is not None else None,
            text=validation.text(text),
            namespace=validation.namespace(namespace) if namespace is not None else None,
            ttl_seconds=validation.positive_seconds(ttl_seconds, "ttl_seconds"),
            importance=validation.finite(importance, "importance"),
            vector=(
                validation.vector(vector, config.dimension, config.metric).tobytes() if vector is not None else None
            ),
        )

    def apply(
        self, cur: RecordRow, now: float, config: CollectionConfig, hlc: HLC, embedder: Embedder | None
    ) -> RecordRow:
        """The new row: ``cur`` (a live row read with its vector) with this patch, and a new version."""
        md = dict(cur.metadata)
        if self.metadata:
            for k, v in self.metadata.items():
                if v is None:
                    md.pop(k, None)
                else:
                    md[k] = v
            validation.metadata(md)  # the merged object must respect the size cap too
        vector = self.vector if self.vector is not None else cur.vector
        if embedder is not None and self.text is not None and self.vector is None:
            vector = validation.vector(embedder.embed([self.text])[0], config.dimension, config.metric).tobytes()
        stamp, node = hlc.now()
        ttl = self.ttl_seconds
        return RecordRow(
            hlc=stamp,
            node=node,
            created_at=cur.created_at,
            updated_at=now,
            expires_at=(now + ttl) if ttl is not None else cur.expires_at,
            namespace=self.namespace if self.namespace is not None else cur.namespace,
            metadata=md,
            text=self.text if self.text is not None else cur.text,
            vector=vector,
            importance=self.importance if self.importance is not None else cur.importance,
            ttl_seconds=ttl if ttl is not None else cur.ttl_seconds,
        )


def refreshed_row(cur: RecordRow, now: float, hlc: HLC) -> RecordRow:
    """``cur`` (live, read with its vector, with a TTL) expiring ``ttl_seconds`` from ``now``, newly versioned."""
    assert cur.ttl_seconds is not None
    stamp, node = hlc.now()
    return RecordRow(
        stamp,
        node,
        False,
        cur.created_at,
        now,
        now + cur.ttl_seconds,
        cur.namespace,
        cur.metadata,
        cur.text,
        cur.vector,
        cur.importance,
        cur.ttl_seconds,
    )


def tombstone(now: float, hlc: HLC) -> RecordRow:
    """A deletion of a record, newly versioned."""
    stamp, node = hlc.now()
    return RecordRow(stamp, node, True, updated_at=now)
