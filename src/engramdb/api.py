"""The public API of EngramDB, declared once: what a database and a collection offer.

:class:`DatabaseAPI` and :class:`CollectionAPI` (and their asyncio twins
:class:`AsyncDatabaseAPI` and :class:`AsyncCollectionAPI`, whose methods are
coroutines) carry every public method's signature and its user-facing
documentation. The implementations subclass them explicitly, so the type
checker (``mypy src/engramdb``) holds each one to the declaration:

==============================  ===================================  =========================================
deployment                      database                             collection
==============================  ===================================  =========================================
embedded (``engramdb.open``)    :class:`engramdb.Database`           :class:`engramdb.Collection`
remote, blocking                :class:`engramdb.client.Client`      :class:`engramdb.client.RemoteCollection`
remote, asyncio                 :class:`engramdb.client.AsyncClient` :class:`engramdb.client.AsyncRemoteCollection`
cluster (any node of one)       ``cluster.coordinator.Coordinator``  ``cluster.coordinator.ClusterCollection``
==============================  ===================================  =========================================

Code written against these Protocols runs against any of them. An
implementation (the cluster coordinator included) must guarantee:

- **Same signatures.** The parameter names, kinds and defaults declared
  here. An implementation may only add keyword-only parameters with a
  default (the embedded ``Database`` takes ``tenant=``; the clients'
  ``extract`` takes ``timeout=``). ``tests/unit/test_public_surface.py``
  checks names, kinds and defaults, which the type checker does not.
- **Same types.** Arguments are accepted in the same forms (records and
  edges as the dataclasses of :mod:`engramdb.types` or as dicts, vectors as
  sequences or numpy arrays); results are those dataclasses, never transport
  objects (no JSON dicts, no protobuf messages).
- **Same errors.** Failures raise the classes of :mod:`engramdb.errors` with
  the same ``code`` the embedded engine raises for the same cause, and bad
  input is refused before anything is written: a batch with one invalid item
  writes nothing. Calls after ``close()`` raise
  :class:`~engramdb.errors.Closed`. Remote-only failures map onto the same
  classes (``Unavailable``, ``DeadlineExceeded``, ``RateLimited``…).
- **Same semantics.** Last-writer-wins by version, deleted or expired
  records are never returned, edges are visible only between live records,
  and a call returns once its write is durable and visible to searches.

The docstrings here are the reference; implementations add no copy of them.
IDEs find them through the base class, and when an implementing class is
created its undocumented members are given these texts, so ``help()`` and
``inspect.getdoc`` show them too (also for methods an implementation inherits
from elsewhere, like the engine's graph methods).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import EllipsisType, FunctionType
from typing import TYPE_CHECKING, Any, Protocol, Self

from engramdb.types import CollectionConfig, Edge, ExtractResult, Hit, Record, ScanPage

if TYPE_CHECKING:
    import numpy as np

__all__ = ["AsyncCollectionAPI", "AsyncDatabaseAPI", "CollectionAPI", "DatabaseAPI", "ServedCollection", "TenantData"]

_DEFAULT_INCLUDE = ("metadata", "text")


class CollectionAPI(Protocol):
    """Records of one collection, with vector, text, metadata and graph queries.

    Obtain one from :meth:`DatabaseAPI.create_collection` or
    :meth:`DatabaseAPI.get_collection`; it is safe to share between threads.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _fill_docs(cls, CollectionAPI)

    config: CollectionConfig
    """The collection's configuration (as read when the collection was obtained)."""

    @property
    def name(self) -> str:
        """The collection's name (``config.name``)."""
        ...

    @property
    def dimension(self) -> int:
        """The length of its vectors (``config.dimension``)."""
        ...

    @property
    def metric(self) -> str:
        """Its distance metric: ``"cosine"``, ``"dot"`` or ``"l2"`` (``config.metric``)."""
        ...

    def with_consistency(self, level: str) -> Self:
        """A view of this collection whose reads and writes use consistency ``level`` (one|quorum|all).

        In a cluster (docs/cluster.md) writes are acknowledged by that many
        replicas of each shard, and reads ask that many and return the newest
        version. A single node is every replica, so there it only validates
        ``level``. Makes no request; raises ``InvalidArgument``
        (``invalid_consistency``) for another value. The collection itself
        keeps the server's default.
        """
        ...

    # ---------------------------------------------------------------- write
    def upsert(self, records: Record | Mapping[str, Any] | Sequence[Record | Mapping[str, Any]]) -> list[str]:
        """Insert or replace records (whole-record replace); returns their new versions.

        Records are :class:`~engramdb.Record` objects or dicts with the same
        fields; vectors may be lists or numpy arrays, and may be left out in a
        collection with an embedder (its ``text`` is embedded). The batch is
        validated as a whole first: if any record is invalid, nothing is
        written. Returns once the write is durable and indexed.
        """
        ...

    def patch(
        self,
        id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        namespace: Sequence[str] | None = None,
        ttl_seconds: float | None = None,
        importance: float | None = None,
        vector: Sequence[float] | None = None,
    ) -> Record:
        """Merge ``metadata`` into a live record and replace the other given fields; returns the record.

        Metadata keys set to None are removed. Raises ``NotFound``
        (``record_not_found``) if the record is absent or expired, and
        ``FailedPrecondition`` (``conflict``) if it kept changing concurrently.
        """
        ...

    def delete(self, ids: str | Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None) -> int:
        """Delete records by id and/or by filter, with their edges; returns how many existed.

        ``delete(filter={})`` deletes every record; giving neither ids nor a
        filter is refused.
        """
        ...

    def refresh_ttl(self, ids: str | Sequence[str]) -> int:
        """Restart the TTL clock of live records that have a TTL; returns how many."""
        ...

    # ----------------------------------------------------------------- read
    def get(self, id: str, *, include: Iterable[str] | None = None, refresh_ttl: bool = False) -> Record | None:
        """The live record with this id, or None. ``include`` defaults to every field."""
        ...

    def get_many(
        self, ids: Sequence[str], *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> list[Record]:
        """Live records for these ids, in the given order; missing ids are skipped."""
        ...

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """Number of live records (matching ``filter`` if given)."""
        ...

    def scan(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        id_prefix: str | None = None,
        namespace_prefix: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        include: Iterable[str] | None = None,
    ) -> ScanPage:
        """A page of live records in id order; pass ``next_cursor`` back for the next page.

        ``include`` defaults to every field. A record deleted while the page
        is read is left out; ``next_cursor`` is None on the last page.
        """
        ...

    def list_namespaces(
        self,
        prefix: Sequence[str] | None = None,
        *,
        suffix: Sequence[str] | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        """Distinct namespace paths of live records, sorted, truncated to ``max_depth``.

        ``prefix``/``suffix`` segments may be ``"*"`` to match any one segment.
        """
        ...

    def search(
        self,
        vector: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
        include: Iterable[str] | None = _DEFAULT_INCLUDE,
        exact: bool = False,
        text: str | None = None,
        mode: str | None = None,
        weights: Mapping[str, float] | None = None,
        expand: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        refresh_ttl: bool = False,
    ) -> list[Hit]:
        """Nearest records to ``vector`` (or ``text``), best first.

        ``mode`` is ``"vector"`` (default when a vector is given or the
        collection embeds text), ``"text"`` (BM25) or ``"hybrid"`` (both, fused by
        reciprocal rank). ``filter`` uses the filter language (docs/filters.md);
        ``exact`` forces brute force; ``expand`` walks the graph from the hits
        (see docs/graph.md). Scores are higher-is-better: cosine similarity,
        dot product, or ``1/(1+euclidean distance)`` for l2. A server bounds
        the query's time (``DeadlineExceeded`` past it; graph expansion keeps
        its own ``expand.timeout_ms``).
        """
        ...

    # ---------------------------------------------------------------- graph
    def link(
        self, edges: Edge | Mapping[str, Any] | Sequence[Edge | Mapping[str, Any]], *, create_missing: bool = False
    ) -> list[str]:
        """Create or replace edges; returns each edge's new version, in input order.

        Items are :class:`~engramdb.Edge` objects or dicts with ``src``,
        ``relation``, ``dst`` and optional ``weight`` (finite, default 1.0) and
        ``properties`` (JSON object). The batch is validated as a whole first:
        if any edge is invalid, or (unless ``create_missing``) an endpoint is not
        a live record, nothing is written and ``NotFound`` (code
        ``record_not_found``) names the missing ids.

        ``create_missing=True`` does not create records: it only allows storing
        edges whose endpoints do not exist (yet). Such edges are invisible to
        every read and traversal until both endpoints are live records.
        """
        ...

    def unlink(self, edges: Sequence[Any] | Mapping[str, Any] | Edge) -> int:
        """Remove edges given as ``(src, relation, dst)`` tuples, dicts or Edges.

        Returns how many of them were stored (dangling edges count; edges that
        were absent or already removed do not). Validated as a whole first.
        """
        ...

    def edges(
        self,
        id: str,
        *,
        direction: str = "out",
        relation: str | None = None,
        limit: int = 1000,
    ) -> list[Edge]:
        """Visible edges of a live record: ``"out"``, ``"in"`` or ``"both"`` (out first).

        Edges whose other endpoint is missing, deleted or expired are left out.
        Raises ``NotFound`` (``record_not_found``) if ``id`` is not a live record.
        """
        ...

    def neighbors(
        self,
        id: str,
        *,
        hops: int = 1,
        relations: str | Sequence[str] | None = None,
        direction: str = "out",
        limit: int = 100,
        fanout: int | None = None,
        include: Iterable[str] | None = _DEFAULT_INCLUDE,
        timeout_ms: float = 2000,
    ) -> list[Hit]:
        """Records reachable from ``id`` within ``hops`` edges, breadth-first.

        Each node appears once, at its shortest hop distance (``Hit.hop``), with
        ``Hit.path`` the steps ``{"src", "relation", "dst", "weight"}`` from
        ``id`` (steps keep the edge's own orientation, also when walked
        backwards) and ``Hit.score`` the product of the path's edge weights.
        Among several shortest paths the highest-scoring one is reported.
        Results are ordered by hop, then score (desc), then id; the start node
        is not included. ``fanout`` keeps only the heaviest edges of each node.
        Raises ``NotFound`` if ``id`` is not a live record and
        ``DeadlineExceeded`` past ``timeout_ms``.
        """
        ...

    def subgraph(
        self,
        ids: str | Sequence[str],
        *,
        hops: int = 1,
        relations: str | Sequence[str] | None = None,
        direction: str = "both",
        limit: int = 500,
        include: Iterable[str] | None = _DEFAULT_INCLUDE,
        timeout_ms: float = 2000,
    ) -> dict[str, list[Any]]:
        """The neighbourhood of ``ids`` for display: ``{"nodes": [Record], "edges": [Edge]}``.

        Nodes are the live ids given (missing ones are skipped) followed by
        what a breadth-first walk of ``hops`` (0-5; 0 = just these nodes) along
        ``direction`` and ``relations`` reaches, up to ``limit`` nodes. Edges are
        every visible edge between two returned nodes whose relation matches,
        whatever its direction. Raises ``DeadlineExceeded`` past ``timeout_ms``.
        """
        ...

    # ----------------------------------------------------------- extraction
    def extract(
        self,
        text: str,
        extractor: Any,
        *,
        instructions: str | None = None,
        namespace: Sequence[str] | None = None,
        dedupe_threshold: float = 0.92,
        source_id: str | None = None,
    ) -> ExtractResult:
        """Extract entities and relations from ``text`` with an LLM and store them.

        Entities become records (deduplicated by normalised name and vector
        similarity), relations become edges, all in one atomic write; nothing
        is written when the model's answer is rejected (``UpstreamError``, code
        ``invalid_extraction``). Needs a collection with an embedder. Returns
        an :class:`~engramdb.ExtractResult` listing what was written.

        Embedded, ``extractor`` is an :class:`engramdb.extract.ChatExtractor`
        (or anything with its ``extract`` method). Through a client the model
        is the one the server's operator configured (``extraction.*``
        settings), so ``extractor`` must be left out (None); the server raises
        ``FailedPrecondition`` (``extraction_not_configured``) when it has no
        model and ``RateLimited`` (``extraction_busy``) when it runs as many
        extractions as it allows. The clients' extra ``timeout`` (seconds)
        defaults to the client's timeout but at least 120 s, and the call is
        not retried after an ambiguous failure: a repeat would count the
        entities' mentions twice.
        """
        ...


class DatabaseAPI(Protocol):
    """A database: the named collections of one tenant.

    ``engramdb.open(path)`` gives the embedded one, ``engramdb.connect(url)``
    a client of a server. Close it (or use it as a context manager) when done.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _fill_docs(cls, DatabaseAPI)

    def create_collection(
        self,
        name: str,
        dimension: int | None = None,
        metric: str = "cosine",
        *,
        index: Mapping[str, Any] | None = None,
        embedder: Mapping[str, Any] | None = None,
        default_ttl_seconds: float | None = None,
        indexed_fields: Mapping[str, str] | None = None,
        text_index: bool = True,
        exist_ok: bool = False,
        shards: int | None = None,
        replication_factor: int | None = None,
    ) -> CollectionAPI:
        """Create a collection. With ``exist_ok`` an identical existing one is returned.

        ``dimension`` may be omitted when ``embedder`` determines it. Raises
        ``AlreadyExists`` (``collection_exists``) if the name is taken (with
        ``exist_ok``: by a collection with a different configuration) and
        ``InvalidArgument`` (``invalid_config``) for a bad configuration.

        ``shards`` (a power of two, 1-4096) and ``replication_factor`` (1-16)
        lay the collection out over a cluster (docs/cluster.md); None takes the
        server's default (a cluster's ``cluster.default_shards`` and
        ``cluster.default_replication_factor``; 1 on a single node). Both are
        fixed at creation. Invalid values raise ``InvalidArgument``
        (``invalid_shards``, ``invalid_replication_factor``); a value above 1
        on a single node or an embedded database raises ``FailedPrecondition``
        (``not_a_cluster``). Either way nothing is created.
        """
        ...

    def get_collection(self, name: str) -> CollectionAPI:
        """The named collection; raises NotFound (code ``collection_not_found``)."""
        ...

    def list_collections(self) -> list[CollectionConfig]:
        """Configurations of the tenant's collections, sorted by name."""
        ...

    def delete_collection(self, name: str) -> None:
        """Delete a collection with all its records, edges and index files."""
        ...

    def alter_collection(
        self,
        name: str,
        *,
        indexed_fields: Mapping[str, str | None] | None = None,
        default_ttl_seconds: float | EllipsisType | None = ...,
        ef_search: int | None = None,
    ) -> CollectionConfig:
        """Change a collection's settings online; returns its new configuration.

        ``indexed_fields`` adds metadata fields to the payload index (``{"lang":
        "keyword"}``), gives one a new type, or, mapped to None, stops indexing
        it; fields not named keep their index. An added field is indexed in the
        background from the stored records, and writes go on meanwhile; filters
        on it are answered correctly throughout (by checking records until its
        index is complete, see ``reindex`` in the collection's status). The
        change is stored before the build starts: a restart resumes it.

        ``default_ttl_seconds`` applies to records written afterwards without a
        TTL of their own (None: they never expire); records already stored keep
        their expiry. ``ef_search`` (1-10000) is the search breadth of the next
        queries that do not pass their own ``ef``. Leaving an argument out
        keeps the setting.

        Everything else (dimension, metric, index ``m`` and ``ef_construction``,
        embedder, text index, shards, replication factor, name) is fixed at creation: a request to change it
        fails with ``InvalidArgument`` (code ``immutable_field``, naming the
        field) and changes nothing, like any invalid value (``invalid_config``).
        Raises ``NotFound`` (``collection_not_found``) for a missing collection.
        """
        ...

    def close(self) -> None:
        """Release what the database holds; later calls raise :class:`~engramdb.errors.Closed`.

        The embedded database snapshots its indexes (so the next open is
        fast), stops its background tasks and closes storage; a client closes
        its pooled connections. Closing twice does nothing.
        """
        ...

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class AsyncCollectionAPI(Protocol):
    """:class:`CollectionAPI` for asyncio: the same methods, as coroutines."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _fill_docs(cls, AsyncCollectionAPI)

    config: CollectionConfig

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def metric(self) -> str: ...

    # Not a coroutine: a view is made locally, without a request.
    def with_consistency(self, level: str) -> Self: ...

    async def upsert(self, records: Record | Mapping[str, Any] | Sequence[Record | Mapping[str, Any]]) -> list[str]: ...

    async def patch(
        self,
        id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        namespace: Sequence[str] | None = None,
        ttl_seconds: float | None = None,
        importance: float | None = None,
        vector: Sequence[float] | None = None,
    ) -> Record: ...

    async def delete(
        self, ids: str | Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None
    ) -> int: ...

    async def refresh_ttl(self, ids: str | Sequence[str]) -> int: ...

    async def get(
        self, id: str, *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> Record | None: ...

    async def get_many(
        self, ids: Sequence[str], *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> list[Record]: ...

    async def count(self, filter: Mapping[str, Any] | None = None) -> int: ...

    async def scan(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        id_prefix: str | None = None,
        namespace_prefix: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        include: Iterable[str] | None = None,
    ) -> ScanPage: ...

    async def list_namespaces(
        self,
        prefix: Sequence[str] | None = None,
        *,
        suffix: Sequence[str] | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]: ...

    async def search(
        self,
        vector: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
        include: Iterable[str] | None = _DEFAULT_INCLUDE,
        exact: bool = False,
        text: str | None = None,
        mode: str | None = None,
        weights: Mapping[str, float] | None = None,
        expand: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        refresh_ttl: bool = False,
    ) -> list[Hit]: ...

    async def link(
        self, edges: Edge | Mapping[str, Any] | Sequence[Edge | Mapping[str, Any]], *, create_missing: bool = False
    ) -> list[str]: ...

    async def unlink(self, edges: Sequence[Any] | Mapping[str, Any] | Edge) -> int: ...

    async def edges(
        self,
        id: str,
        *,
        direction: str = "out",
        relation: str | None = None,
        limit: int = 1000,
    ) -> list[Edge]: ...

    async def neighbors(
        self,
        id: str,
        *,
        hops: int = 1,
        relations: str | Sequence[str] | None = None,
        direction: str = "out",
        limit: int = 100,
        fanout: int | None = None,
        include: Iterable[str] | None = _DEFAULT_INCLUDE,
        timeout_ms: float = 2000,
    ) -> list[Hit]: ...

    async def subgraph(
        self,
        ids: str | Sequence[str],
        *,
        hops: int = 1,
        relations: str | Sequence[str] | None = None,
        direction: str = "both",
        limit: int = 500,
        include: Iterable[str] | None = _DEFAULT_INCLUDE,
        timeout_ms: float = 2000,
    ) -> dict[str, list[Any]]: ...

    async def extract(
        self,
        text: str,
        extractor: Any,
        *,
        instructions: str | None = None,
        namespace: Sequence[str] | None = None,
        dedupe_threshold: float = 0.92,
        source_id: str | None = None,
    ) -> ExtractResult: ...


class AsyncDatabaseAPI(Protocol):
    """:class:`DatabaseAPI` for asyncio: the same methods, as coroutines (``async with`` closes it)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _fill_docs(cls, AsyncDatabaseAPI)

    async def create_collection(
        self,
        name: str,
        dimension: int | None = None,
        metric: str = "cosine",
        *,
        index: Mapping[str, Any] | None = None,
        embedder: Mapping[str, Any] | None = None,
        default_ttl_seconds: float | None = None,
        indexed_fields: Mapping[str, str] | None = None,
        text_index: bool = True,
        exist_ok: bool = False,
        shards: int | None = None,
        replication_factor: int | None = None,
    ) -> AsyncCollectionAPI: ...

    async def get_collection(self, name: str) -> AsyncCollectionAPI: ...

    async def list_collections(self) -> list[CollectionConfig]: ...

    async def delete_collection(self, name: str) -> None: ...

    async def alter_collection(
        self,
        name: str,
        *,
        indexed_fields: Mapping[str, str | None] | None = None,
        default_ttl_seconds: float | EllipsisType | None = ...,
        ef_search: int | None = None,
    ) -> CollectionConfig: ...

    async def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


def _fill_docs(cls: type, api: type) -> None:
    """Give ``cls``'s members that have no docstring the one ``api`` declares for them.

    Runs once per class, when it is created; nothing changes on the call path.
    ``inspect.getdoc`` alone would find the Protocol's text only for methods
    defined in the implementing class itself, not for those it inherits from a
    mixin (the engine's graph methods) nor for the asyncio twins.
    """
    for name, ref in vars(api).items():
        doc = getattr(ref, "__doc__", None)
        if not doc or name.startswith("__") or not isinstance(ref, (property, FunctionType)):
            continue
        impl = inspect.getattr_static(cls, name, None)
        if isinstance(impl, (property, FunctionType)) and not impl.__doc__:
            impl.__doc__ = doc


_fill_docs(AsyncCollectionAPI, CollectionAPI)
_fill_docs(AsyncDatabaseAPI, DatabaseAPI)


class ServedCollection(CollectionAPI, Protocol):
    """What the service layer needs of a collection beyond :class:`CollectionAPI`.

    The engine's :class:`~engramdb.engine.collection.Collection` on a single node, the
    cluster coordinator's collection in cluster mode.
    """

    def reindex_status(self) -> dict[str, Any] | None:
        """Progress of a payload-index build started by ``alter_collection``; None when none runs."""
        ...


class TenantData(Protocol):
    """Where the service finds collections: per tenant, named by the caller's tenant.

    Implemented by :class:`engramdb.Database` (a single node) and by the cluster coordinator
    (:mod:`engramdb.cluster.coordinator`), so every REST and gRPC handler is written once.
    """

    # Called with the request's fields as keywords (the engine's create_collection parameters).
    @property
    def create_collection(self) -> Callable[..., ServedCollection]: ...

    def get_collection(self, name: str, *, tenant: str) -> ServedCollection: ...

    def list_collections(self, *, tenant: str) -> list[CollectionConfig]: ...

    @property
    def alter_collection(self) -> Callable[..., CollectionConfig]: ...

    def delete_collection(self, name: str, *, tenant: str) -> None: ...
