"""asyncio HTTP client: :class:`~engramdb.api.AsyncDatabaseAPI` and :class:`~engramdb.api.AsyncCollectionAPI` over HTTP.

>>> async with engramdb.AsyncClient("http://localhost:7878", api_key="...") as db:
...     notes = await db.create_collection("notes", dimension=384, exist_ok=True)
...     hits = await notes.search(vec, k=5)

Request building, answer decoding and the retry policy live in
:mod:`engramdb.client.calls`, shared with the blocking client, so the two
behave identically; only the waiting differs.
"""

from __future__ import annotations

import asyncio
import copy
import ssl
from collections.abc import Iterable, Mapping, Sequence
from types import EllipsisType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from engramdb import validation
from engramdb.api import AsyncCollectionAPI, AsyncDatabaseAPI
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
    from engramdb.client.grpc_transport import AsyncGrpcTransport

T = TypeVar("T")


class AsyncClient(AsyncDatabaseAPI):
    """A connection pool to one EngramDB server for asyncio code.

    Use it as ``async with AsyncClient(url, api_key) as db`` or call
    ``await db.close()``. Use one client per event loop (httpx's async pool is
    bound to the loop that first used it).
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
        transport: httpx.AsyncBaseTransport | None = None,
        prefer_grpc: bool = False,
        grpc_target: str | None = None,
    ):
        self.url = calls.base_url(url)
        self.timeout = timeout
        self.tenant = tenant
        self.retry_policy = calls.RetryPolicy(retries=calls.check_retries(retries))
        # Imported only when asked for: grpcio is an optional dependency (the `grpc` extra).
        self._grpc: AsyncGrpcTransport | None = None
        if prefer_grpc:
            from engramdb.client.grpc_transport import AsyncGrpcTransport

            self._grpc = AsyncGrpcTransport(self.url, api_key, tenant, verify, grpc_target)
        self._closed = False
        self._http = httpx.AsyncClient(
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
        return f"AsyncClient(url={self.url!r}, tenant={self.tenant!r})"

    # ------------------------------------------------------------ transport
    async def _run(self, call: calls.Call[T]) -> T:
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
                return await self._grpc.run(call, rpc, request, self.retry_policy, self.timeout)
        content = calls.encode_body(call.body)
        hdrs = {"Content-Type": "application/json"} if content is not None else None
        attempt = 0
        while True:
            cause: BaseException | None = None
            try:
                resp = await self._http.request(
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
                # httpx raises RuntimeError when the pool was closed meanwhile.
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
            await asyncio.sleep(delay)
            attempt += 1

    # ---------------------------------------------------------- collections
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
    ) -> AsyncRemoteCollection:
        cfg = await self._run(
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
        return AsyncRemoteCollection(self, cfg)

    async def get_collection(self, name: str) -> AsyncRemoteCollection:
        return AsyncRemoteCollection(self, await self._run(calls.get_collection(name)))

    async def list_collections(self) -> list[CollectionConfig]:
        return await self._run(calls.list_collections())

    async def delete_collection(self, name: str) -> None:
        await self._run(calls.delete_collection(name))

    async def alter_collection(
        self,
        name: str,
        *,
        indexed_fields: Mapping[str, str | None] | None = None,
        default_ttl_seconds: float | EllipsisType | None = ...,
        ef_search: int | None = None,
    ) -> CollectionConfig:
        return await self._run(calls.alter_collection(name, indexed_fields, default_ttl_seconds, ef_search))

    # ------------------------------------------------------------- API keys
    # Key management needs an admin key; it is not part of the data API the engine shares.
    async def create_key(
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
        return await self._run(
            calls.create_key(role, tenant=tenant, collections=collections, expires_at=expires_at, name=name)
        )

    async def list_keys(self) -> list[ApiKeyInfo]:
        """The API keys of the caller's tenant (admin only), oldest first, without secrets."""
        return await self._run(calls.list_keys())

    async def revoke_key(self, key_id: str) -> None:
        """Revoke a key of the caller's tenant at once (admin only)."""
        await self._run(calls.revoke_key(key_id))

    async def rotate_key(self, key_id: str, *, grace_seconds: float | None = None) -> NewApiKey:
        """A new key with the same tenant, role, scope and name; the old one expires after ``grace_seconds``.

        The default grace is one day; 0 ends the old key now.
        """
        return await self._run(calls.rotate_key(key_id, grace_seconds))

    # ---------------------------------------------------------------- erase
    async def erase_tenant(self, tenant: str, *, confirm: str, timeout: float | None = None) -> TenantErased:
        """Delete tenant ``tenant`` with its collections and API keys, and erase them from disk (GDPR erase).

        ``confirm`` must be the tenant's name again. An admin key erases only its own tenant (and
        stops working with it); the bootstrap admin key erases any. Cannot be undone
        (docs/security.md, Erasure). The server compacts its files before answering: this waits
        at least an hour unless ``timeout`` says otherwise.
        """
        return await self._run(calls.erase_tenant(tenant, confirm, calls.backup_timeout(self.timeout, timeout)))

    # -------------------------------------------------------------- backups
    async def create_backup(self, name: str, *, timeout: float | None = None) -> BackupInfo:
        """Back up the whole node into the server's ``backup.dir`` as ``name`` (bootstrap admin key only).

        Consistent as of one moment while the server keeps serving (docs/backup.md). Waits at least an
        hour unless ``timeout`` says otherwise. Restoring is offline: ``engramdb backup restore``.
        """
        return await self._run(calls.create_backup(name, calls.backup_timeout(self.timeout, timeout)))

    async def list_backups(self) -> list[BackupInfo]:
        """The backups in the server's ``backup.dir``, by name (bootstrap admin key only)."""
        return await self._run(calls.list_backups())

    async def verify_backup(self, name: str, *, timeout: float | None = None) -> BackupInfo:
        """Check the backup ``name``: its manifest, every file's SHA-256 and its database (bootstrap admin key only).

        Raises ``CorruptData`` (``backup_corrupt``, ``backup_incomplete``, ``backup_manifest_invalid``) or
        ``FailedPrecondition`` (``backup_version_mismatch``) for a backup that must not be restored.
        """
        return await self._run(calls.verify_backup(name, calls.backup_timeout(self.timeout, timeout)))

    # ---------------------------------------------------------------- stats
    async def stats(self, limit: int | None = None) -> dict[str, Any]:
        """Memory per component of the node answering, in bytes (admin only; docs/observability.md).

        ``{"process", "rocksdb", "collections", "totals", "more"}``, the shape of the embedded
        ``Database.stats()``. The bootstrap admin key sees every tenant's collections (or the
        client's ``tenant`` only, when one is set); a tenant's admin key its own, without the
        node-wide ``process`` and ``rocksdb`` (None). ``limit`` (1-1000, default 100): collections
        listed, the largest first; ``more`` says whether others were left out.
        """
        return await self._run(calls.stats(limit))

    # ------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._grpc is not None:
            await self._grpc.close()
        await self._http.aclose()

    aclose = close  # the name asyncio libraries (contextlib.aclosing) expect

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncRemoteCollection(AsyncCollectionAPI):
    """A collection on the server, with the methods of the engine's ``Collection``.

    Holds no state besides the configuration read when it was obtained (and the
    consistency level a :meth:`with_consistency` view sends); every method is
    one request (retried per the client's policy).
    """

    def __init__(self, client: AsyncClient, config: CollectionConfig):
        self._client = client
        self.config = config
        self._consistency: str | None = None  # sent with every request; None: the server's default

    def with_consistency(self, level: str) -> AsyncRemoteCollection:
        # Checked here so a bad level fails before any request, with the engine's error.
        checked = validation.consistency(level)
        view = copy.copy(self)
        view._consistency = checked
        return view

    async def _run(self, call: calls.Call[T]) -> T:
        return await self._client._run(calls.at_consistency(call, self._consistency))

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
            f"AsyncRemoteCollection(url={self._client.url!r}, name={self.name!r}, "
            f"dimension={self.dimension}, metric={self.metric!r})"
        )

    # ---------------------------------------------------------------- write
    async def upsert(self, records: Record | Mapping[str, Any] | Sequence[Record | Mapping[str, Any]]) -> list[str]:
        return await self._run(calls.upsert(self.name, self.dimension, records))

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
    ) -> Record:
        return await self._run(
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

    async def delete(self, ids: str | Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None) -> int:
        return await self._run(calls.delete(self.name, ids, filter))

    async def refresh_ttl(self, ids: str | Sequence[str]) -> int:
        return await self._run(calls.refresh_ttl(self.name, ids))

    # ----------------------------------------------------------------- read
    async def get(self, id: str, *, include: Iterable[str] | None = None, refresh_ttl: bool = False) -> Record | None:
        return await self._run(calls.get_one(self.name, id, include, refresh_ttl))

    async def get_many(
        self, ids: Sequence[str], *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> list[Record]:
        return await self._run(calls.get_many(self.name, ids, include, refresh_ttl))

    async def count(self, filter: Mapping[str, Any] | None = None) -> int:
        return await self._run(calls.count(self.name, filter))

    async def scan(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        id_prefix: str | None = None,
        namespace_prefix: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        include: Iterable[str] | None = None,
    ) -> ScanPage:
        return await self._run(
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

    async def list_namespaces(
        self,
        prefix: Sequence[str] | None = None,
        *,
        suffix: Sequence[str] | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        return await self._run(
            calls.list_namespaces(self.name, prefix, suffix=suffix, max_depth=max_depth, limit=limit, offset=offset)
        )

    async def search(
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
        return await self._run(
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
    async def link(
        self,
        edges: Edge | Mapping[str, Any] | Sequence[Edge | Mapping[str, Any]],
        *,
        create_missing: bool = False,
    ) -> list[str]:
        return await self._run(calls.link(self.name, edges, create_missing))

    async def unlink(self, edges: Sequence[Any] | Mapping[str, Any] | Edge) -> int:
        return await self._run(calls.unlink(self.name, edges))

    async def edges(
        self,
        id: str,
        *,
        direction: str = "out",
        relation: str | None = None,
        limit: int = 1000,
    ) -> list[Edge]:
        return await self._run(calls.edges(self.name, id, direction=direction, relation=relation, limit=limit))

    async def neighbors(
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
        return await self._run(
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

    async def subgraph(
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
        return await self._run(
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
    async def extract(
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
        return await self._run(
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
