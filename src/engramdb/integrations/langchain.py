"""LangChain vector store on EngramDB: :class:`EngramVectorStore`.

A ``Document`` becomes one record: ``id`` = the document id (a UUID4 when it has
none), ``text`` = ``page_content``, ``metadata`` = the document's metadata (it must
be JSON: string keys, JSON values), ``vector`` = the embedding of the text. Filters
are EngramDB filters over that metadata (``{"source": "a.md"}``,
``{"page": {"$gte": 3}}``, ``{"$or": [...]}``, ``{"namespace_prefix": [...]}``), so
they run inside the engine, before and during the vector search, not afterwards.

Scores returned by ``similarity_search_with_score`` are the engine's, higher is
better: cosine similarity for ``cosine`` collections (the default), the dot product
for ``dot``, ``1 / (1 + distance)`` for ``l2``.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from engramdb import validation
from engramdb.errors import AlreadyExists, NotFound
from engramdb.filters import compile_filter

if TYPE_CHECKING:
    from engramdb.types import Hit, Record

__all__ = ["EngramVectorStore"]

_MAX_BATCH = validation.MAX_BATCH  # the engine takes at most this many records or ids per call


class EngramVectorStore(VectorStore):
    """A LangChain ``VectorStore`` backed by an EngramDB collection.

    Args:
        embedding: the LangChain ``Embeddings`` that turns texts and queries into vectors.
        collection: a collection object (embedded ``db.get_collection(...)`` or remote
            ``client.get_collection(...)``), used as is; or its name, with ``db``.
        db: an EngramDB ``Database`` (``engramdb.open(path)``) or client
            (``engramdb.connect(url, api_key=...)``). The collection is looked up there
            and, if it does not exist, created on the first write with the dimension
            of the first embedding (or at once if ``dimension`` is given).
        metric: metric for a collection this store creates: ``cosine`` (default), ``dot`` or ``l2``.
        dimension: create the collection immediately with this dimension.
        text_index: give a collection this store creates a BM25 index over the
            page contents (off by default: similarity search does not need it).
        tenant: tenant of the collection (embedded database only).
    """

    def __init__(
        self,
        embedding: Embeddings,
        collection: Any = "langchain",
        *,
        db: Any = None,
        metric: str = "cosine",
        dimension: int | None = None,
        text_index: bool = False,
        tenant: str | None = None,
    ) -> None:
        self._embedding = embedding
        self._db = db
        self._metric = metric
        self._text_index = text_index
        self._tenant_kw: dict[str, Any] = {"tenant": tenant} if tenant is not None else {}
        self._owned: Any = None
        for obj, method in ((db, "get_collection"), (collection, "upsert")):
            if inspect.iscoroutinefunction(getattr(obj, method, None)):
                raise TypeError(
                    "EngramVectorStore needs a synchronous database, client or collection (engramdb.open or "
                    "engramdb.connect); its async methods already run engine calls in a worker thread"
                )
        if isinstance(collection, str):
            if db is None:
                raise ValueError(
                    "give a collection object, or db= (engramdb.open(path) or engramdb.connect(...)) "
                    "with a collection name"
                )
            self._name = collection
            self._collection: Any = None
            try:
                self._collection = db.get_collection(collection, **self._tenant_kw)
            except NotFound:
                if dimension is not None:
                    self._create(dimension)
        elif hasattr(collection, "upsert") and hasattr(collection, "search"):
            self._collection = collection
            self._name = str(getattr(collection, "name", ""))
        else:
            raise TypeError(f"collection must be a collection object or a name, got {type(collection).__name__}")

    # ------------------------------------------------------------ properties
    @property
    def embeddings(self) -> Embeddings:
        """The embeddings model this store uses for documents and queries."""
        return self._embedding

    @property
    def collection(self) -> Any:
        """The underlying EngramDB collection (None until the first write created it)."""
        return self._collection

    def close(self) -> None:
        """Close the database this store opened itself (``from_texts(..., path=...)``)."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def _existing(self) -> Any:
        """The collection, looked up again if it did not exist yet (another store may have created it)."""
        if self._collection is None and self._db is not None:
            try:
                self._collection = self._db.get_collection(self._name, **self._tenant_kw)
            except NotFound:
                pass
        return self._collection

    def _create(self, dimension: int) -> Any:
        try:
            self._collection = self._db.create_collection(
                self._name, dimension, self._metric, text_index=self._text_index, **self._tenant_kw
            )
        except AlreadyExists:  # another writer created it first
            self._collection = self._db.get_collection(self._name, **self._tenant_kw)
        return self._collection

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        metric = getattr(self._collection, "metric", self._metric)
        if metric == "l2":
            return lambda s: s  # the engine's 1 / (1 + distance) is already in (0, 1]
        # Cosine similarity (and dot products of normalised embeddings) lie in
        # [-1, 1]; LangChain wants relevance in [0, 1].
        return lambda s: min(1.0, max(0.0, (s + 1.0) / 2.0))

    # ----------------------------------------------------------------- write
    def _records(
        self,
        texts: Sequence[str],
        vectors: Sequence[Sequence[float]],
        metadatas: Sequence[dict[str, Any] | None] | None,
        ids: Sequence[str | None] | None,
        namespace: Sequence[str] | None,
        ttl_seconds: float | None,
    ) -> tuple[list[str], list[dict[str, Any]]]:
        n = len(texts)
        if metadatas is not None and len(metadatas) != n:
            raise ValueError(f"got {len(metadatas)} metadatas for {n} texts")
        if ids is not None and len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} texts")
        out_ids = [i if i else str(uuid.uuid4()) for i in (ids or [None] * n)]
        records = []
        for i, (rid, text, vec) in enumerate(zip(out_ids, texts, vectors, strict=True)):
            rec: dict[str, Any] = {
                "id": rid,
                "text": text,
                "vector": list(vec),
                "metadata": dict((metadatas[i] if metadatas else None) or {}),
            }
            if namespace is not None:
                rec["namespace"] = list(namespace)
            if ttl_seconds is not None:
                rec["ttl_seconds"] = ttl_seconds
            records.append(rec)
        return out_ids, records

    def _upsert(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        # Later duplicates of an id win, as in a sequence of single adds; the
        # engine itself rejects a batch that names an id twice.
        unique = list({r["id"]: r for r in records}.values())
        coll = self._existing()
        _check_records(unique, int(coll.dimension) if coll is not None else len(unique[0]["vector"]))
        if coll is None:
            coll = self._create(len(unique[0]["vector"]))
        for start in range(0, len(unique), _MAX_BATCH):
            coll.upsert(unique[start : start + _MAX_BATCH])

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and upsert texts; returns their ids (generated for missing ones).

        Extra keyword arguments: ``namespace`` (list of strings, a namespace path for
        these records) and ``ttl_seconds`` (they expire after that long).
        """
        texts = list(texts)
        vectors = self._embedding.embed_documents(texts) if texts else []
        out_ids, records = self._records(
            texts, vectors, metadatas, ids, kwargs.get("namespace"), kwargs.get("ttl_seconds")
        )
        self._upsert(records)
        return out_ids

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Async :meth:`add_texts`: the embedding is awaited, the write runs in a worker thread."""
        texts = list(texts)
        vectors = await self._embedding.aembed_documents(texts) if texts else []
        out_ids, records = self._records(
            texts, vectors, metadatas, ids, kwargs.get("namespace"), kwargs.get("ttl_seconds")
        )
        await run_in_executor(None, self._upsert, records)
        return out_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by ids; ``ids=None`` deletes everything, or what ``filter=`` (a kwarg) matches.

        Missing ids are not an error. Returns True.
        """
        coll = self._existing()
        if coll is None:
            return True
        flt = kwargs.get("filter")
        if flt is not None:
            compile_filter(flt)  # a bad filter must fail before the ids below are deleted
        if ids is None:
            coll.delete(filter=flt if flt is not None else {})
            return True
        ids = list(ids)
        for i, rid in enumerate(ids):
            validation.record_ref(rid, f"ids[{i}]")  # every chunk's ids checked before the first is deleted
        for start in range(0, len(ids), _MAX_BATCH):
            coll.delete(ids[start : start + _MAX_BATCH])
        if flt is not None:
            coll.delete(filter=flt)
        return True

    # ------------------------------------------------------------------ read
    @staticmethod
    def _document(rec: Record) -> Document:
        return Document(id=rec.id, page_content=rec.text or "", metadata=dict(rec.metadata))

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Documents for these ids, in the given order; missing (and repeated) ids are skipped."""
        coll = self._existing()
        if coll is None:
            return []
        unique = list(dict.fromkeys(ids))
        docs: list[Document] = []
        for start in range(0, len(unique), _MAX_BATCH):
            recs = coll.get_many(unique[start : start + _MAX_BATCH], include=["text", "metadata"])
            docs.extend(self._document(r) for r in recs)
        return docs

    def _hits(
        self, vector: Sequence[float], k: int, flt: Any, include: Sequence[str], kwargs: dict[str, Any]
    ) -> list[Hit]:
        coll = self._existing()
        if coll is None or k <= 0:
            return []
        if flt is not None and not isinstance(flt, dict):
            raise TypeError("filter must be a dict in the EngramDB filter language, e.g. {'source': 'a.md'}")
        extra = {key: kwargs[key] for key in ("ef", "exact", "min_score") if key in kwargs}
        return list(coll.search(list(vector), min(k, 10_000), filter=flt or None, include=list(include), **extra))

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Nearest documents to ``embedding`` with their scores (higher is more similar)."""
        hits = self._hits(embedding, k, filter, ("text", "metadata"), kwargs)
        return [(self._document(h.record), float(h.score)) for h in hits if h.record is not None]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Nearest documents to the query text with their scores (higher is more similar).

        ``filter`` is an EngramDB filter over document metadata; ``ef``, ``exact`` and
        ``min_score`` are passed to the engine's search.
        """
        if self._existing() is None:
            return []  # nothing stored yet: no need to embed the query
        return self.similarity_search_with_score_by_vector(
            self._embedding.embed_query(query), k, filter=filter, **kwargs
        )

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_score` (awaits the query embedding)."""
        if await run_in_executor(None, self._existing) is None:
            return []
        vector = await self._embedding.aembed_query(query)
        return await run_in_executor(None, self.similarity_search_with_score_by_vector, vector, k, filter, **kwargs)

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents most similar to the query text."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """Async :meth:`similarity_search`."""
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents nearest to ``embedding``."""
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter, **kwargs)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents chosen by maximal marginal relevance among the ``fetch_k`` nearest."""
        hits = self._hits(embedding, max(fetch_k, k), filter, ("text", "metadata", "vector"), kwargs)
        pairs = [(h.record, h.record.vector) for h in hits if h.record is not None and h.record.vector is not None]
        if not pairs:
            return []
        recs = [r for r, _ in pairs]
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32),
            [v for _, v in pairs],
            k=min(k, len(recs)),
            lambda_mult=lambda_mult,
        )
        return [self._document(recs[i]) for i in chosen]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Maximal marginal relevance search for a query text (diverse yet relevant results)."""
        if self._existing() is None:
            return []
        return self.max_marginal_relevance_search_by_vector(
            self._embedding.embed_query(query), k, fetch_k, lambda_mult, filter=filter, **kwargs
        )

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search` (awaits the query embedding)."""
        if await run_in_executor(None, self._existing) is None:
            return []
        vector = await self._embedding.aembed_query(query)
        return await run_in_executor(
            None,
            self.max_marginal_relevance_search_by_vector,
            vector,
            k,
            fetch_k,
            lambda_mult,
            filter,
            **kwargs,
        )

    # ---------------------------------------------------------- constructors
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> EngramVectorStore:
        """A store filled with ``texts``.

        Say where it lives with ``db=`` (a database or client) and optionally
        ``collection=`` (a name, default ``"langchain"``), with ``collection=`` a
        collection object, or with ``path=`` (an embedded database this store opens
        and closes in :meth:`close`). Other keyword arguments go to the constructor.
        """
        path = kwargs.pop("path", None)
        owned = None
        if path is not None:
            import engramdb

            owned = kwargs["db"] = engramdb.open(path)
        try:
            store = cls(embedding, kwargs.pop("collection", "langchain"), **kwargs)
            store._owned = owned
            store.add_texts(texts, metadatas, ids=ids)
        except BaseException:
            if owned is not None:
                owned.close()
            raise
        return store


def _check_records(records: Sequence[dict[str, Any]], dimension: int) -> None:
    """The engine's checks on every record of a write, before its first chunk is written.

    The engine validates each call whole, but a write of more than 10,000 records takes
    several calls: without this, a bad record in a later chunk would fail after the
    earlier chunks were stored (and a bad first write would leave an empty collection).
    """
    for i, rec in enumerate(records):
        where = f"records[{i}]"
        validation.record_id(rec["id"], f"{where}.id")
        validation.text(rec["text"])
        validation.vector(rec["vector"], dimension, "dot", f"{where}.vector")  # "dot": checks only, no normalisation
        validation.metadata(rec["metadata"])
        validation.namespace(rec.get("namespace"), f"{where}.namespace")
        validation.positive_seconds(rec.get("ttl_seconds"), f"{where}.ttl_seconds")
