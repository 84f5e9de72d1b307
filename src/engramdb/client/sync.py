"""Blocking HTTP client: :class:`~engramdb.api.DatabaseAPI` and :class:`~engramdb.api.CollectionAPI` over HTTP.

>>> db = engramdb.connect("http://localhost:7878", api_key="...")
>>> notes = db.create_collection("notes", dimension=384, exist_ok=True)
>>> notes.upsert({"id": "n1", "vector": vec, "text": "hello"})

Request building, answer decoding and the retry policy live in
:mod:`engramdb.client.calls`, shared with the asyncio client.
"""

from __future__ import annotations

import copy
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from engramdb import validation
from engramdb.api import CollectionAPI, DatabaseAPI
from engramdb.client import calls
from engramdb.errors import Closed
from engramdb.types import (
    ApiKeyInfo,
    BackupInfo,
    CollectionConfig,
    Edge,
    ExtractResult,
    Hit,
    NewApiKey,
    Record,
    ScanPage,
    TenantErased,
)

if TYPE_CHECKING:
    from engramdb.client.grpc_transport import GrpcTransport

T = TypeVar("T")


class Client(DatabaseAPI):
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
        prefer_grpc: bool = False,
        grpc_target: str | None = None,
    ):
        self.url = calls.base_url(url)
        self.timeout = timeout
        self.tenant = tenant
        self.retry_policy = calls.RetryPolicy(retries=calls.check_retries(retries))
        # Imported only when asked for: grpcio is an optional dependency (the `grpc` extra).
        self._grpc: GrpcTransport | None = None
        if prefer_grpc:
            from engramdb.client.grpc_transport import GrpcTransport

            self._grpc = GrpcTransport(self.url, api_key, tenant, verify, grpc_target)
        self._closed = False
        self._lock = threading.Lock()
        self._http = httpx.Client(
            base_url=self.url,
            headers=calls.headers(api_key, tenant),
            timeout=timeout,
            verify=calls.verify_arg(verify),
            transport=transport,
            limits=calls.POOL_LIMITS,
            # Redirects would replay bodies to another host; an EngramDB server never redirects.
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, tenant={self.tenant!r})"

    # ------------------------------------------------------------ transport
    def _run(self, call: calls.Call[T]) -> T:
        """Send ``call``, retrying as :class:`~engramdb.client.calls.RetryPolicy` allows."""
        if self._closed:
            raise Closed("the client is closed")
        if self._grpc is not None:
            from engramdb.client.grpc_transport import NotRepresentable, encode

            try:
                rpc, request = encode(call)
            except NotRepresentable:
                pass  # a value only JSON carries as given: this call goes over REST
            else:
                return self._grpc.run(call, rpc, request, self.retry_policy, self.timeout)
        content = calls.encode_body(call.body)
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
                outcome: T | calls.Failure = calls.transport_error(
                    call, e, self.url, self.timeout if call.timeout is None else call.timeout
                )
            except RuntimeError as e:
                # httpx raises RuntimeError when the pool was closed by another thread.
                if self._closed:
                    raise Closed("the client is closed") from e
                raise
            else:
                outcome = calls.decode_response(call, resp)
            if not isinstance(outcome, calls.Failure):
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
        shards: int | None = None,
        replication_factor: int | None = None,
    ) -> RemoteCollection:
        cfg = self._run(
            calls.create_collection(
                name,
                dimension,
                metric,
                index=index,
                embedder=embedder,
                default_ttl_seconds=default_ttl_seconds,
                indexed_fields=indexed_fields,
                text_index=text_index,
                exist_ok=exist_ok,
                shards=shards,
                replication_factor=replication_factor,
            )
        )
        return RemoteCollection(self, cfg)

    def get_collection(self, name: str) -> RemoteCollection:
        return RemoteCollection(self, self._run(calls.get_collection(name)))

    def list_collections(self) -> list[CollectionConfig]:
        return self._run(calls.list_collections())

    def delete_collection(self, name: str) -> None:
        self._run(calls.delete_collection(name))

    def alter_collection(
        self,
        name: str,
        *,
        indexed_fields: Mapping[str, str | None] | None = None,
        default_ttl_seconds: float | EllipsisType | None = ...,
        ef_search: int | None = None,
    ) -> CollectionConfig:
        return self._run(calls.alter_collection(name, indexed_fields, default_ttl_seconds, ef_search))

    # ------------------------------------------------------------- API keys
    # Key management needs an admin key; it is not part of the data API the engine shares.
    def create_key(
        self,
        role: str,
        *,
        tenant: str | None = None,
        collections: Sequence[str] | None = None,
        expires_at: float | None = None,
        name: str | None = None,
    ) -> NewApiKey:
        """Create an API key (admin only); the secret is in the result's ``key`` and shown only this once.

        ``tenant`` defaults to the caller's (only the bootstrap key may name another);
        ``collections`` limits a reader or writer key to those collections;
        ``expires_at`` is Unix seconds in the future (at most 100 years).
        """
        return self._run(
            calls.create_key(role, tenant=tenant, collections=collections, expires_at=expires_at, name=name)
        )

    def list_keys(self) -> list[ApiKeyInfo]:
        """The API keys of the caller's tenant (admin only), oldest first, without secrets."""
        return self._run(calls.list_keys())

    def revoke_key(self, key_id: str) -> None:
        """Revoke a key of the caller's tenant at once (admin only)."""
        self._run(calls.revoke_key(key_id))

    def rotate_key(self, key_id: str, *, grace_seconds: float | None = None) -> NewApiKey:
        """A new key with the same tenant, role, scope and name; the old one expires after ``grace_seconds``.

        The default grace is one day; 0 ends the old key now.
        """
        return self._run(calls.rotate_key(key_id, grace_seconds))

    # ---------------------------------------------------------------- erase
    def erase_tenant(self, tenant: str, *, confirm: str, timeout: float | None = None) -> TenantErased:
        """Delete tenant ``tenant`` with its collections and API keys, and erase them from disk (GDPR erase).

        ``confirm`` must be the tenant's name again. An admin key erases only its own tenant (and
        stops working with it); the bootstrap admin key erases any. Cannot be undone
        (docs/security.md, Erasure). The server compacts its files before answering: this waits
        at least an hour unless ``timeout`` says otherwise.
        """
        return self._run(calls.erase_tenant(tenant, confirm, calls.backup_timeout(self.timeout, timeout)))

    # -------------------------------------------------------------- backups
    def create_backup(self, name: str, *, timeout: float | None = None) -> BackupInfo:
        """Back up the whole node into the server's ``backup.dir`` as ``name`` (bootstrap admin key only).

        Consistent as of one moment while the server keeps serving (docs/backup.md). Waits at least an
        hour unless ``timeout`` says otherwise. Restoring is offline: ``engramdb backup restore``.
        """
        return self._run(calls.create_backup(name, calls.backup_timeout(self.timeout, timeout)))

    def list_backups(self) -> list[BackupInfo]:
        """The backups in the server's ``backup.dir``, by name (bootstrap admin key only)."""
        return self._run(calls.list_backups())

    def verify_backup(self, name: str, *, timeout: float | None = None) -> BackupInfo:
        """Check the backup ``name``: its manifest, every file's SHA-256 and its database (bootstrap admin key only).

        Raises ``CorruptData`` (``backup_corrupt``, ``backup_incomplete``, ``backup_manifest_invalid``) or
        ``FailedPrecondition`` (``backup_version_mismatch``) for a backup that must not be restored.
        """
        return self._run(calls.verify_backup(name, calls.backup_timeout(self.timeout, timeout)))

    # ---------------------------------------------------------------- stats
    def stats(self, limit: int | None = None) -> dict[str, Any]:
        """Memory per component of the node answering, in bytes (admin only; docs/observability.md).

        ``{"process", "rocksdb", "collections", "totals", "more"}``, the shape of the embedded
        ``Database.stats()``. The bootstrap admin key sees every tenant's collections (or the
        client's ``tenant`` only, when one is set); a tenant's admin key its own, without the
        node-wide ``process`` and ``rocksdb`` (None). ``limit`` (1-1000, default 100): collections
        listed, the largest first; ``more`` says whether others were left out.
        """
        return self._run(calls.stats(limit))

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._grpc is not None:
            self._grpc.close()
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteCollection(CollectionAPI):
    """A collection on the server, with the methods of the engine's ``Collection``.

    Holds no state besides the configuration read when it was obtained (and the
    consistency level a :meth:`with_consistency` view sends); every method is
    one request (retried per the client's policy).
    """

    def __init__(self, client: Client, config: CollectionConfig):
        self._client = client
        self.config = config
        self._consistency: str | None = None  # sent with every request; None: the server's default

    def with_consistency(self, level: str) -> RemoteCollection:
        # Checked here so a bad level fails before any request, with the engine's error.
        checked = validation.consistency(level)
        view = copy.copy(self)
        view._consistency = checked
        return view

    def _run(self, call: calls.Call[T]) -> T:
        return self._client._run(calls.at_consistency(call, self._consistency))

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
        return self._run(calls.upsert(self.name, self.dimension, records))

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
        return self._run(
            calls.patch(
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
        return self._run(calls.delete(self.name, ids, filter))

    def refresh_ttl(self, ids: str | Sequence[str]) -> int:
        return self._run(calls.refresh_ttl(self.name, ids))

    # ----------------------------------------------------------------- read
    def get(self, id: str, *, include: Iterable[str] | None = None, refresh_ttl: bool = False) -> Record | None:
        return self._run(calls.get_one(self.name, id, include, refresh_ttl))

    def get_many(
        self, ids: Sequence[str], *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> list[Record]:
        return self._run(calls.get_many(self.name, ids, include, refresh_ttl))

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        return self._run(calls.count(self.name, filter))

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
        return self._run(
            calls.scan(
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
        return self._run(
            calls.list_namespaces(self.name, prefix, suffix=suffix, max_depth=max_depth, limit=limit, offset=offset)
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
        return self._run(
            calls.search(
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
        return self._run(calls.link(self.name, edges, create_missing))

    def unlink(self, edges: Sequence[Any] | Mapping[str, Any] | Edge) -> int:
        return self._run(calls.unlink(self.name, edges))

    def edges(
        self,
        id: str,
        *,
        direction: str = "out",
        relation: str | None = None,
        limit: int = 1000,
    ) -> list[Edge]:
        return self._run(calls.edges(self.name, id, direction=direction, relation=relation, limit=limit))

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
        return self._run(
            calls.neighbors(
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
        return self._run(
            calls.subgraph(
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
        return self._run(
            calls.extract(
                self.name,
                text,
                extractor,
                instructions=instructions,
                namespace=namespace,
                dedupe_threshold=dedupe_threshold,
                source_id=source_id,
                timeout=calls.extract_timeout(self._client.timeout, timeout),
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
    prefer_grpc: bool = False,
    grpc_target: str | None = None,
) -> Client:
    """Connect to an EngramDB server; the result has the embedded ``Database`` API.

    ``api_key`` defaults to the ``ENGRAMDB_API_KEY`` environment variable.
    ``timeout`` bounds each attempt (seconds); ``retries`` is how many extra
    attempts retryable failures get (see docs/client.md). ``tenant`` selects
    the tenant for keys allowed to choose one (the bootstrap admin key).
    ``verify`` is True, False (development only) or a CA bundle path / SSLContext.
    ``prefer_grpc=True`` sends the operations over gRPC (the ``grpc`` extra) to ``grpc_target``
    (default: the URL's host, port 7879), with the same key, tenant, TLS, timeout, retries and
    errors (docs/client.md, "gRPC transport").
    No request is made until the first call.
    """
    return Client(
        url,
        api_key,
        timeout=timeout,
        retries=retries,
        tenant=tenant,
        verify=verify,
        prefer_grpc=prefer_grpc,
        grpc_target=grpc_target,
    )
