"""Blocking HTTP client with the same surface as the embedded :class:`~engramdb.engine.database.Database`.

>>> db = engramdb.connect("http://localhost:7878", api_key="...")
>>> notes = db.create_collection("notes", dimension=384, exist_ok=True)
>>> notes.upsert({"id": "n1", "vector": vec, "text": "hello"})

Request building, answer decoding and the retry policy live in
:mod:`engramdb.client._common`, shared with the asyncio client.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from ..errors import Closed
from ..types import CollectionConfig, Edge, ExtractResult, Hit, Record, ScanPage
from . import _common as C

T = TypeVar("T")


class Client:
    """A connection pool to one EngramDB server; use :func:`connect` to make one.

    Thread-safe: share one client between threads (it pools connections).
    Close it, or use it as a context manager, to release the connections.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        tenant: str | None = None,
        verify: bool | str | ssl.SSLContext = True,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = C.base_url(url)
        self.timeout = timeout
        self.tenant = tenant
        self.retry_policy = C.RetryPolicy(retries=C.check_retries(retries))
        self._closed = False
        self._lock = threading.Lock()
        self._http = httpx.Client(
            base_url=self.url,
            headers=C.headers(api_key, tenant),
            timeout=timeout,
            verify=C.verify_arg(verify),
            transport=transport,
            limits=C.POOL_LIMITS,
            # Redirects would replay bodies to another host; an EngramDB server never redirects.
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, tenant={self.tenant!r})"

    # ------------------------------------------------------------ transport
    def _run(self, call: C.Call[T]) -> T:
        """Send ``call``, retrying as :class:`~engramdb.client._common.RetryPolicy` allows."""
        if self._closed:
            raise Closed("the client is closed")
        content = C.encode_body(call.body)
        hdrs = {"Content-Type": "application/json"} if content is not None else None
        attempt = 0
        while True:
            cause: BaseException | None = None
            try:
                resp = self._http.request(
                    call.method,
                    call.path,
                    content=content,
                    headers=hdrs,
                    timeout=httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout,
                )
            except httpx.HTTPError as e:
                cause = e
                outcome: T | C.Failure = C.transport_error(
                    call, e, self.url, self.timeout if call.timeout is None else call.timeout
                )
            except RuntimeError as e:
                # httpx raises RuntimeError when the pool was closed by another thread.
                if self._closed:
                    raise Closed("the client is closed") from e
                raise
            else:
                outcome = C.decode_response(call, resp)
            if not isinstance(outcome, C.Failure):
                return outcome
            delay = self.retry_policy.delay(call, attempt, outcome)
            if delay is None:
                raise outcome.error from cause
            time.sleep(delay)
            attempt += 1

    # ---------------------------------------------------------- collections
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
    ) -> RemoteCollection:
        """Create a collection. With ``exist_ok`` an identical existing one is returned.

        ``dimension`` may be omitted when ``embedder`` determines it.
        """
        cfg = self._run(
            C.create_collection(
                name,
                dimension,
                metric,
                index=index,
                embedder=embedder,
                default_ttl_seconds=default_ttl_seconds,
                indexed_fields=indexed_fields,
                text_index=text_index,
                exist_ok=exist_ok,
            )
        )
        return RemoteCollection(self, cfg)

    def get_collection(self, name: str) -> RemoteCollection:
        """The named collection; raises NotFound (code ``collection_not_found``)."""
        return RemoteCollection(self, self._run(C.get_collection(name)))

    def list_collections(self) -> list[CollectionConfig]:
        """Configurations of the tenant's collections, sorted by name."""
        return self._run(C.list_collections())

    def delete_collection(self, name: str) -> None:
        """Delete a collection with all its records, edges and index files."""
        self._run(C.delete_collection(name))

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the pooled connections; later calls raise :class:`~engramdb.errors.Closed`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteCollection:
    """A collection on the server, with the methods of the engine's ``Collection``.

    Holds no state besides the configuration read when it was obtained; every
    method is one request (retried per the client's policy).
    """

    def __init__(self, client: Client, config: CollectionConfig):
        self._client = client
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dimension(self) -> int:
        return self.config.dimension

    @property
    def metric(self) -> str:
        return self.config.metric

    def __repr__(self) -> str:
        return (
            f"RemoteCollection(url={self._client.url!r}, name={self.name!r}, "
            f"dimension={self.dimension}, metric={self.metric!r})"
        )

    # ---------------------------------------------------------------- write
    def upsert(self, records: Record | Mapping[str, Any] | Sequence[Record | Mapping[str, Any]]) -> list[str]:
        """Insert or replace records (whole-record replace); returns their new versions.

        Vectors may be lists or numpy arrays. The batch is validated as a whole:
        if any record is invalid, nothing is written.
        """
        return self._client._run(C.upsert(self.name, self.dimension, records))

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
        """Merge ``metadata`` into a live record (keys set to None are removed) and
        replace the other given fields; raises NotFound if the record is absent."""
        return self._client._run(
            C.patch(
                self.name,
                self.dimension,
                id,
                metadata=metadata,
                text=text,
                namespace=namespace,
                ttl_seconds=ttl_seconds,
                importance=importance,
                vector=vector,
            )
        )

    def delete(self, ids: str | Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None) -> int:
        """Delete records by id and/or by filter, with their edges; returns how many existed."""
        return self._client._run(C.delete(self.name, ids, filter))

    def refresh_ttl(self, ids: str | Sequence[str]) -> int:
        """Restart the TTL clock of live records that have a TTL; returns how many."""
        return self._client._run(C.refresh_ttl(self.name, ids))

    # ----------------------------------------------------------------- read
    def get(self, id: str, *, include: Iterable[str] | None = None, refresh_ttl: bool = False) -> Record | None:
        """The live record with this id, or None. ``include`` defaults to every field."""
        return self._client._run(C.get_one(self.name, id, include, refresh_ttl))

    def get_many(
        self, ids: Sequence[str], *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> list[Record]:
        """Live records for these ids, in the given order; missing ids are skipped."""
        return self._client._run(C.get_many(self.name, ids, include, refresh_ttl))

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """Number of live records (matching ``filter`` if given)."""
        return self._client._run(C.count(self.name, filter))

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
        """A page of live records in id order; pass ``next_cursor`` back for the next page."""
        return self._client._run(
            C.scan(
                self.name,
                cursor=cursor,
                limit=limit,
                id_prefix=id_prefix,
                namespace_prefix=namespace_prefix,
                filter=filter,
                include=include,
            )
        )

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
        return self._client._run(
            C.list_namespaces(self.name, prefix, suffix=suffix, max_depth=max_depth, limit=limit, offset=offset)
        )

    def search(
        self,
        vector: Sequence[float] | Any | None = None,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
        include: Iterable[str] | None = ("metadata", "text"),
        exact: bool = False,
        text: str | None = None,
        mode: str | None = None,
        weights: Mapping[str, float] | None = None,
        expand: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        refresh_ttl: bool = False,
    ) -> list[Hit]:
        """Nearest records to ``vector`` (or ``text``), best first; see the engine's ``Collection.search``."""
        return self._client._run(
            C.search(
                self.name,
                self.dimension,
                vector,
                k,
                filter=filter,
                ef=ef,
                include=include,
                exact=exact,
                text=text,
                mode=mode,
                weights=weights,
                expand=expand,
                min_score=min_score,
                refresh_ttl=refresh_ttl,
            )
        )

    # ---------------------------------------------------------------- graph
    def link(
        self,
        edges: Edge | Mapping[str, Any] | Sequence[Edge | Mapping[str, Any]],
        *,
        create_missing: bool = False,
    ) -> list[str]:
        """Create or replace edges (Edges or dicts with src, relation, dst, weight?, properties?).

        Returns each edge's new version, in input order. Unless ``create_missing``,
        both endpoints must be live records (else NotFound, ``record_not_found``).
        """
        return self._client._run(C.link(self.name, edges, create_missing))

    def unlink(self, edges: Sequence[Any] | Mapping[str, Any] | Edge) -> int:
        """Remove edges given as ``(src, relation, dst)`` tuples, dicts or Edges; returns how many were stored."""
        return self._client._run(C.unlink(self.name, edges))

    def edges(
        self,
        id: str,
        *,
        direction: str = "out",
        relation: str | None = None,
        limit: int = 1000,
    ) -> list[Edge]:
        """Visible edges of a live record: ``out``, ``in`` or ``both`` (out first)."""
        return self._client._run(C.edges(self.name, id, direction=direction, relation=relation, limit=limit))

    def neighbors(
        self,
        id: str,
        *,
        hops: int = 1,
        relations: str | Sequence[str] | None = None,
        direction: str = "out",
        limit: int = 100,
        fanout: int | None = None,
        include: Iterable[str] | None = ("metadata", "text"),
        timeout_ms: float = 2000,
    ) -> list[Hit]:
        """Records reachable from ``id`` within ``hops`` edges, breadth-first, with ``hop`` and ``path``."""
        return self._client._run(
            C.neighbors(
                self.name,
                id,
                hops=hops,
                relations=relations,
                direction=direction,
                limit=limit,
                fanout=fanout,
                include=include,
                timeout_ms=timeout_ms,
            )
        )

    def subgraph(
        self,
        ids: str | Sequence[str],
        *,
        hops: int = 1,
        relations: str | Sequence[str] | None = None,
        direction: str = "both",
        limit: int = 500,
        include: Iterable[str] | None = ("metadata", "text"),
        timeout_ms: float = 2000,
    ) -> dict[str, list[Any]]:
        """The neighbourhood of ``ids``: ``{"nodes": [Record], "edges": [Edge]}``."""
        return self._client._run(
            C.subgraph(
                self.name,
                ids,
                hops=hops,
                relations=relations,
                direction=direction,
                limit=limit,
                include=include,
                timeout_ms=timeout_ms,
            )
        )

    # ----------------------------------------------------------- extraction
    def extract(
        self,
        text: str,
        extractor: None = None,
        *,
        instructions: str | None = None,
        namespace: Sequence[str] | None = None,
        dedupe_threshold: float = 0.92,
        source_id: str | None = None,
        timeout: float | None = None,
    ) -> ExtractResult:
        """Extract entities and relations from ``text`` with the server's model and store them.

        As the engine's ``Collection.extract``, except that the model is the
        one the server's operator configured (``extraction.*`` settings), so
        ``extractor`` must be left out. Entities become records, relations
        edges, in one atomic write; nothing is written when the model's answer
        is rejected (``UpstreamError``, code ``invalid_extraction``). Raises
        ``FailedPrecondition`` (``extraction_not_configured``) when the server
        has no model, ``RateLimited`` (``extraction_busy``) when it runs as many
        extractions as it allows. ``timeout`` (seconds) defaults to the
        client's timeout but at least 120 s. Not retried after an ambiguous
        failure: a repeat would count the entities' mentions twice.
        """
        return self._client._run(
            C.extract(
                self.name,
                text,
                extractor,
                instructions=instructions,
                namespace=namespace,
                dedupe_threshold=dedupe_threshold,
                source_id=source_id,
                timeout=C.extract_timeout(self._client.timeout, timeout),
            )
        )


def connect(
    url: str,
    api_key: str | None = None,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    tenant: str | None = None,
    verify: bool | str | ssl.SSLContext = True,
) -> Client:
    """Connect to an EngramDB server; the result has the embedded ``Database`` API.

    ``api_key`` defaults to the ``ENGRAMDB_API_KEY`` environment variable.
    ``timeout`` bounds each attempt (seconds); ``retries`` is how many extra
    attempts retryable failures get (see docs/client.md). ``tenant`` selects
    the tenant for keys allowed to choose one (the bootstrap admin key).
    ``verify`` is True, False (development only) or a CA bundle path / SSLContext.
    No request is made until the first call.
    """
    return Client(url, api_key, timeout=timeout, retries=retries, tenant=tenant, verify=verify)
