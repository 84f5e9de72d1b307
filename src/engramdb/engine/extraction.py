"""Writing an LLM extraction into a collection: entities as records, relations as edges.

Entities get deterministic ids (``entity:<normalised name>``), so the same
name always lands on the same record. Before that, each new entity is compared
with existing entity records by vector similarity (same type, cosine ≥
``dedupe_threshold``), so "IBM" and "International Business Machines" merge
when the embedder places them together. Everything is validated and built
first, then written with one call (``apply_rows``): on one node either the
whole extraction is stored or nothing is; in a cluster each shard's part is
acknowledged at the request's consistency (docs/cluster.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engramdb import validation
from engramdb.engine.hlc import version_str
from engramdb.errors import FailedPrecondition, InvalidArgument
from engramdb.extract.schema import Extraction, normalise_name
from engramdb.storage.codec import EdgeRow, RecordRow
from engramdb.types import ExtractResult, Hit, Record

if TYPE_CHECKING:
    from engramdb.embed import Embedder
    from engramdb.engine.hlc import HLC

ENTITY_PREFIX = "entity:"
MAX_ID_NAME_BYTES = 400


class Extractor(Protocol):
    """What ``extract`` needs: :class:`engramdb.extract.ChatExtractor` or anything with its ``extract``."""

    def extract(self, text: str, *, instructions: str | None = None) -> Extraction: ...


class ExtractTarget(Protocol):
    """What an extraction needs of a collection (:class:`~engramdb.engine.collection.Collection`)."""

    @property
    def dimension(self) -> int: ...

    @property
    def metric(self) -> str: ...

    @property
    def embedder(self) -> Embedder | None: ...

    @property
    def hlc(self) -> HLC: ...

    def apply_rows(
        self, records: Sequence[tuple[str, RecordRow]] = (), edges: Sequence[tuple[str, str, str, EdgeRow]] = ()
    ) -> list[bool]:
        """Store finished rows in one write (the engine's; a cluster coordinator sends them to the replicas)."""
        ...

    def get(self, id: str, *, include: Iterable[str] | None = None) -> Record | None: ...

    def get_many(self, ids: Sequence[str], *, include: Iterable[str] | None = None) -> list[Record]: ...

    def search(
        self,
        vector: np.ndarray,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        include: Iterable[str] | None = ("metadata", "text"),
        min_score: float | None = None,
    ) -> list[Hit]: ...


# ExtractResult lives in engramdb.types (shared with the remote clients); re-exported here.
__all__ = ["ENTITY_PREFIX", "ExtractResult", "Extractor", "entity_id", "extract_into"]


def entity_id(name: str) -> str:
    key = normalise_name(name)
    raw = key.encode()
    if len(raw) > MAX_ID_NAME_BYTES:
        key = raw[:MAX_ID_NAME_BYTES].decode(errors="ignore")
    return ENTITY_PREFIX + key


def extract_into(
    coll: ExtractTarget,
    text: str,
    extractor: Extractor,
    *,
    instructions: str | None = None,
    namespace: Sequence[str] | None = None,
    dedupe_threshold: float = 0.92,
    source_id: str | None = None,
) -> ExtractResult:
    """Extract entities/relations from ``text`` and store them atomically."""
    if coll.embedder is None:
        raise FailedPrecondition(
            "extraction needs a collection with an embedder (entities are stored as searchable records)",
            code="embedder_required",
        )
    # A non-number would fail the comparison with a TypeError (a 500 on a server), hence the type test first.
    if (
        isinstance(dedupe_threshold, bool)
        or not isinstance(dedupe_threshold, (int, float))
        or not 0 < dedupe_threshold <= 1
    ):
        raise InvalidArgument("dedupe_threshold must be a number in (0, 1]", code="invalid_argument")
    ns = validation.namespace(namespace)
    if source_id is not None:
        validation.record_id(source_id, "source_id")
    extraction = extractor.extract(text, instructions=instructions)
    if not extraction.entities:
        return ExtractResult()

    # Collapse duplicates inside the extraction itself first.
    by_key: dict[str, Any] = {}
    for ent in extraction.entities:
        by_key.setdefault(normalise_name(ent.name), ent)
    keys = list(by_key)
    texts = [f"{by_key[k].name}: {by_key[k].description}".strip(": ") for k in keys]
    vecs = np.asarray(coll.embedder.embed(texts), dtype=np.float32)
    now = time.time()
    target_of: dict[str, str] = {}
    for k, vec in zip(keys, vecs, strict=True):
        rid = entity_id(k)
        if coll.get(rid, include=()) is None:
            similar = coll.search(
                vec,
                k=1,
                filter={"kind": "entity", "entity_type": by_key[k].type},
                include=(),
                min_score=dedupe_threshold,
            )
            if similar:
                rid = similar[0].id
        target_of[k] = rid

    # The new rows carry the new vectors; the old ones are not needed.
    existing = {
        r.id: r
        for r in coll.get_many(sorted(set(target_of.values())), include=["metadata", "text", "namespace", "importance"])
    }
    rows: list[tuple[str, RecordRow]] = []
    edge_rows: list[tuple[str, str, str, EdgeRow]] = []
    written: dict[str, dict[str, Any]] = {}
    for k, vec in zip(keys, vecs, strict=True):
        ent = by_key[k]
        rid = target_of[k]
        if rid in written:
            continue  # two extracted names merged into one existing record
        old = existing.get(rid)
        md: dict[str, Any] = dict(old.metadata) if old is not None else {}
        aliases = set(md.get("aliases", []))
        aliases.add(ent.name)
        md.update(
            {
                "kind": "entity",
                "name": md.get("name", ent.name),
                "entity_type": ent.type,
                "aliases": sorted(aliases),
                "mentions": int(md.get("mentions", 0)) + 1,
                "attributes": {**md.get("attributes", {}), **ent.attributes},
            }
        )
        if source_id is not None:
            md["sources"] = sorted(set(md.get("sources", [])) | {source_id})
        desc = ent.description or (old.text if old is not None else "") or ent.name
        hlc, node = coll.hlc.now()
        row = RecordRow(
            hlc=hlc,
            node=node,
            created_at=now,
            updated_at=now,
            namespace=ns or (old.namespace if old is not None else ()),
            metadata=validation.metadata(md),
            text=validation.text(desc),
            vector=validation.vector(vec, coll.dimension, coll.metric).tobytes(),
            importance=old.importance if old is not None else None,
        )
        rows.append((rid, row))
        written[rid] = {"id": rid, "name": ent.name, "type": ent.type, "merged": old is not None}

    edges = []
    for rel in extraction.relations:
        src = target_of[normalise_name(rel.source)]
        dst = target_of[normalise_name(rel.target)]
        relation = validation.relation(rel.relation)
        hlc, node = coll.hlc.now()
        props = {"source_id": source_id} if source_id is not None else {}
        edge_rows.append((src, relation, dst, EdgeRow(hlc, node, False, float(rel.weight), props, now)))
        edges.append(
            {"src": src, "relation": relation, "dst": dst, "weight": rel.weight, "version": version_str((hlc, node))}
        )
    coll.apply_rows(rows, edge_rows)
    return ExtractResult(list(written.values()), edges)
