"""The embedded database: tenants, collections and the background tasks."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any

from engramdb import validation
from engramdb.api import DatabaseAPI
from engramdb.config import Settings
from engramdb.config import load as load_settings
from engramdb.engine import stats
from engramdb.engine.collection import Collection
from engramdb.engine.graph import edge_tombstones
from engramdb.engine.hlc import HLC
from engramdb.engine.metadata import Metadata
from engramdb.errors import (
    AlreadyExists,
    Closed,
    CorruptData,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    is_failure,
)
from engramdb.storage import keyspace
from engramdb.storage.codec import RecordRow, decode_record, pack, unpack
from engramdb.storage.store import Mutation, Store
from engramdb.types import CollectionConfig

if TYPE_CHECKING:
    from engramdb.embed.profiles import EmbedderResolver

log = logging.getLogger("engramdb.database")

DEFAULT_TENANT = "default"
NOT_A_CLUSTER = (
    "shards and replication_factor above 1 need cluster mode (docs/cluster.md); this server is a single node, "
    "which holds one copy of everything: leave them out or set them to 1"
)


_libc: Any = None
_TRIM_EVERY_CHANGES = 10_000
# RocksDB reserves memtable memory in 1 MiB blocks, so a memtable of two or more
# holds over 1 MiB of data. An idle flush skips smaller ones: each flush makes
# a file that compaction must merge, for at most 1 MiB of memory back.
_IDLE_FLUSH_MIN_BYTES = 2 << 20


def release_free_memory() -> None:
    """Hand memory the allocator keeps after a burst of writes back to the OS (glibc only).

    Ingest and snapshots free many short-lived buffers; glibc keeps the freed
    pages in its arenas, so a process that ingested once would go on
    holding them. Elsewhere this does nothing.
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim  # noqa: B018  (musl and others lack it)
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


class Database(DatabaseAPI):
    """An EngramDB data directory opened in this process.

    Use :func:`engramdb.open`. Thread-safe; close it (or use it as a context
    manager) so the indexes are snapshotted and the next open is fast.
    """

    def __init__(
        self, path: str | os.PathLike[str], settings: Settings | None = None, *, start_background: bool = True
    ):
        self.settings = settings or load_settings(data_dir=str(path))
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        s = self.settings.storage
        self.store = Store(
            self.path / "db",
            sync_writes=s.sync_writes,
            write_buffer_mb=s.write_buffer_mb,
            max_background_jobs=s.max_background_jobs,
            max_wal_mb=s.max_wal_mb,
            block_cache_mb=s.block_cache_mb,
            tombstone_grace_seconds=s.tombstone_grace_seconds,
            statistics=s.statistics,
            erase_within_seconds=s.erase_within_seconds,
            # Replicas keep tombstones until every replica must have seen them (docs/cluster.md).
            keep_tombstones_seconds=self.settings.cluster.gc_grace_seconds if self.settings.cluster.enabled else 0.0,
        )
        # Rows of the layers above the engine (API keys): they reach storage only through this.
        self.metadata = Metadata(self.store)
        self.hlc = HLC(self.settings.node_id)
        # After a restart with the wall clock behind the newest stored write,
        # new writes must still win over it: start the clock past it.
        newest = self.store.newest_version()
        if newest is not None:
            self.hlc.observe(newest)
        self._lock = threading.RLock()
        self._collections: dict[tuple[str, str], Collection] = {}
        self._embedders: EmbedderResolver | None = None
        # Embedded use trusts inline embedder configs (whoever opens the database is its operator);
        # a server turns this off with refuse_inline_embedders().
        self._inline_embedders = True
        self._closed = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._thread_errors: dict[str, str] = {}  # background thread name -> why it stopped
        # One erase pass at a time; changelog trimming and the erase's rewrite of entries must not interleave.
        self._erase_lock = threading.Lock()
        self._changelog_lock = threading.Lock()
        self._erase_error: str | None = None  # why the last erase pass failed (None: it did not)
        self.ensure_tenant(DEFAULT_TENANT)
        if start_background:
            self._start("engramdb-ttl", self._sweep_loop)
            self._start("engramdb-snapshot", self._snapshot_loop)
            self._start("engramdb-erase", self._erase_loop)

    # --------------------------------------------------------------- tenants
    def _next_id(self, counter: str) -> int:
        key = keyspace.counter_key(counter)
        raw = self.store.get("meta", key)
        n = (unpack(raw) if raw else 0) + 1
        self.store.write_meta({key: pack(n)})
        return int(n)

    def ensure_tenant(self, name: str) -> int:
        """The tenant's numeric id, creating the tenant if needed."""
        validation.name(name, "tenant name")
        with self._lock:
            raw = self.store.get("meta", keyspace.tenant_key(name))
            if raw is not None:
                return int(unpack(raw)["id"])
            tid = self._next_id("tenant")
            self.store.write_meta({keyspace.tenant_key(name): pack({"id": tid, "created_at": time.time()})})
            return tid

    def tenant_id(self, name: str) -> int:
        raw = self.store.get("meta", keyspace.tenant_key(name))
        if raw is None:
            raise NotFound(f"tenant {name!r} does not exist", code="tenant_not_found")
        return int(unpack(raw)["id"])

    def list_tenants(self) -> list[str]:
        return [keyspace.tenant_name_of(k) for k, _ in self.store.iter_prefix("meta", keyspace.TENANT_PREFIX)]

    # ----------------------------------------------------------- collections
    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the database is closed")

    def create_collection(
        self,
        name: str,
        dimension: int | None = None,
        metric: str = "cosine",
        *,
        tenant: str = DEFAULT_TENANT,
        index: Mapping[str, Any] | None = None,
        embedder: Mapping[str, Any] | None = None,
        default_ttl_seconds: float | None = None,
        indexed_fields: Mapping[str, str] | None = None,
        text_index: bool = True,
        exist_ok: bool = False,
        shards: int | None = None,
        replication_factor: int | None = None,
    ) -> Collection:
        self._check_open()
        # The public API is the same in a cluster, where these lay the collection out (docs/cluster.md).
        # This database is one node holding one copy of everything, so only 1 (or None) fits.
        n_shards = 1 if shards is None else validation.shards(shards)
        rf = 1 if replication_factor is None else validation.replication_factor(replication_factor)
        if n_shards != 1 or rf != 1:
            raise FailedPrecondition(NOT_A_CLUSTER, code="not_a_cluster")
        cfg, emb = self.new_config(
            name,
            dimension,
            metric,
            index=index,
            embedder=embedder,
            default_ttl_seconds=default_ttl_seconds,
            indexed_fields=indexed_fields,
            text_index=text_index,
        )
        with self._lock:
            tid = self.ensure_tenant(tenant)
            key = keyspace.collection_key(tid, name)
            raw = self.store.get("meta", key)
            if raw is not None:
                existing = self.get_collection(name, tenant=tenant)
                if exist_ok and existing.config == cfg:
                    return existing
                raise AlreadyExists(
                    f"collection {name!r} already exists in tenant {tenant!r}"
                    + (" with a different configuration" if exist_ok else ""),
                    code="collection_exists",
                )
            cid = self._next_id("collection")
            self.store.write_meta(
                {key: pack({"id": cid, "config": cfg.model_dump(mode="json"), "created_at": time.time()})}
            )
            coll = self._make(tenant, tid, cid, cfg, emb)
            self._collections[(tenant, name)] = coll
            coll.load()
            return coll

    def new_config(
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
    ) -> tuple[CollectionConfig, Any]:
        """A new collection's validated configuration and its embedder (None without one); creates nothing.

        The one place create requests are checked, for this database and for a cluster coordinator.
        """
        emb = None
        if embedder is not None:
            from engramdb.types import EmbedderConfig

            try:
                ecfg = EmbedderConfig.model_validate(dict(embedder))
            except Exception as e:
                raise InvalidArgument(f"invalid embedder config: {e}", code="invalid_config") from e
            emb = self._resolver().for_create(ecfg, allow_inline=self._inline_embedders)
            if emb is not None:
                if dimension is None:
                    dimension = emb.dimension
                elif emb.dimension != dimension:
                    raise InvalidArgument(
                        f"the embedder produces {emb.dimension}-dimensional vectors but dimension={dimension}",
                        code="dimension_mismatch",
                    )
        try:
            cfg = CollectionConfig.model_validate(
                {
                    "name": name,
                    "dimension": dimension,
                    "metric": metric,
                    "index": dict(index or {}),
                    "embedder": dict(embedder) if embedder is not None else None,
                    "default_ttl_seconds": default_ttl_seconds,
                    "indexed_fields": dict(indexed_fields or {}),
                    "text_index": text_index,
                }
            )
        except Exception as e:
            from pydantic import ValidationError

            if isinstance(e, ValidationError):
                msg = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'config'}: {x['msg']}" for x in e.errors())
                raise InvalidArgument(f"invalid collection config: {msg}", code="invalid_config") from e
            raise
        return cfg, emb

    def _make(self, tenant: str, tid: int, cid: int, cfg: CollectionConfig, emb: Any = None) -> Collection:
        if emb is None and cfg.embedder is not None:
            emb = self._resolver().for_collection(cfg, allow_inline=self._inline_embedders)
        ix = self.settings.index
        return Collection(
            self.store,
            self.hlc,
            tenant,
            tid,
            cid,
            cfg,
            self.path / "indexes" / str(cid),
            exact_threshold=ix.exact_search_threshold,
            text_refresh_seconds=ix.text_refresh_seconds,
            snapshot_vectors=ix.snapshot_vectors,
            embedder=emb,
        )

    def _resolver(self) -> EmbedderResolver:
        # Built on first use: importing the embedders (httpx) is not needed by collections without one.
        if self._embedders is None:
            from engramdb.config import embedder_profiles
            from engramdb.embed.profiles import EmbedderResolver

            self._embedders = EmbedderResolver(embedder_profiles(self.settings))
        return self._embedders

    def refuse_inline_embedders(self) -> None:
        """Embed only with the operator's embedder profiles from now on (servers call this).

        A server's collection configs come from API callers, so an inline
        provider config (an endpoint, key variable, key file or model path)
        is never acted on: creating one fails with ``embedder_not_allowed``,
        and a stored one (from before profiles) loads with an embedder that
        refuses to embed, unless an operator profile matches it exactly.
        """
        with self._lock:
            self._inline_embedders = False
            for coll in self._collections.values():
                if coll.config.embedder is not None and coll.config.embedder.inline:
                    coll.embedder = self._resolver().for_collection(coll.config, allow_inline=False)

    def get_collection(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Collection:
        self._check_open()
        with self._lock:
            coll = self._collections.get((tenant, name))
            if coll is not None:
                return coll
            raw = None
            tid = None
            traw = self.store.get("meta", keyspace.tenant_key(tenant)) if isinstance(tenant, str) else None
            if traw is not None and isinstance(name, str):
                tid = int(unpack(traw)["id"])
                raw = self.store.get("meta", keyspace.collection_key(tid, name))
            if raw is None or tid is None:
                raise NotFound(
                    f"collection {name!r} does not exist in tenant {tenant!r}; create it first",
                    code="collection_not_found",
                )
            meta = unpack(raw)
            coll = self._make(tenant, tid, meta["id"], CollectionConfig.from_stored(meta["config"]))
            self._collections[(tenant, name)] = coll
            return coll

    def list_collections(self, *, tenant: str = DEFAULT_TENANT) -> list[CollectionConfig]:
        self._check_open()
        try:
            tid = self.tenant_id(tenant)
        except NotFound:
            return []
        prefix = keyspace.collections_prefix(tid)
        return [CollectionConfig.from_stored(unpack(v)["config"]) for _, v in self.store.iter_prefix("meta", prefix)]

    def delete_collection(self, name: str, *, tenant: str = DEFAULT_TENANT) -> None:
        self._check_open()
        with self._lock:
            prefix = self._drop_collection(name, tenant)
        self._erase_dropped({prefix})

    def _erase_dropped(self, prefixes: set[bytes]) -> None:
        """Erase dropped collections' data from disk now; if that fails, their erase marks make the erase task retry."""
        try:
            self.erase(prefixes)
            self.store.write_rows("ttl", {}, [keyspace.ttl_key(0, keyspace.TTL_ERASE, p) for p in prefixes])
        except Closed:
            raise
        except BaseException as e:
            if not is_failure(e):
                raise
            log.exception("erasing a deleted collection from disk failed; the erase task retries it")

    def _drop_collection(self, name: str, tenant: str) -> bytes:
        """Delete a collection's rows and index files (lock held); returns its prefix, marked for erase."""
        coll = self.get_collection(name, tenant=tenant)
        key = keyspace.collection_key(coll.tenant_id, name)
        p = coll.prefix
        # First, durably: if this process dies before the erase below is done, the erase task finishes it.
        self.store.write_rows("ttl", {keyspace.ttl_key(0, keyspace.TTL_ERASE, p): b""})
        self.store.write_meta({}, [key])
        self._collections.pop((tenant, name), None)
        coll.drop_files()
        self._delete_rows(p)
        return p

    def _delete_rows(self, p: bytes) -> None:
        """Delete a dropped collection's rows, after closing its prefix to writes.

        A write that passed the collection's open check before the drop is
        either committed before ``drop_prefix`` returns (and deleted here) or
        refused by the writer: none lands after the delete and outlives the erase.
        """
        self.store.drop_prefix(p)
        for cf in ("records", "edges_out", "edges_in", "vectors"):
            self.store.delete_range(cf, p, keyspace.prefix_end(p))
        ns_index = keyspace.namespace_index_prefix(p)
        self.store.delete_range("meta", ns_index, keyspace.prefix_end(ns_index))
        self.store.write_meta({}, [keyspace.idle_mark_key(p)])  # its changelog trimming mark

    def erase_tenant(self, name: str) -> int:
        """Delete tenant ``name`` with every collection, and erase them from disk now; returns the collections.

        The tenant's API keys are the service's (see ``KeyStore.erase_tenant``).
        Its name goes too; creating a collection in a tenant of that name later
        starts a new, empty tenant.
        """
        self._check_open()
        validation.name(name, "tenant name")
        with self._lock:
            self.tenant_id(name)  # NotFound (tenant_not_found) if there is none
            prefixes = {self._drop_collection(c.name, name) for c in self.list_collections(tenant=name)}
            self.store.write_meta({}, [keyspace.tenant_key(name)])
        self._erase_dropped(prefixes)
        log.info("tenant %s erased with %d collections", name, len(prefixes))
        return len(prefixes)

    # ----------------------------------------------------------------- erase
    def _erase_loop(self) -> None:
        # Marks fall due half the bound after a delete (with the tombstone purge): checking
        # every tenth of the bound keeps the whole erase inside it. Without a bound only
        # dropped collections leave marks (due at once), checked every minute.
        bound = self.settings.storage.erase_within_seconds
        interval = min(60.0, bound / 10) if bound > 0 else 60.0
        while not self._stop.wait(interval):
            try:
                self.erase_due()
                self._erase_error = None
            except Closed:
                return
            except BaseException as e:
                if not is_failure(e):  # e.g. SystemExit: stop (and say so), see _thread_main
                    raise
                self._erase_error = f"erasing deleted data from disk failed ({type(e).__name__}: {e}); retrying"
                log.exception("erasing deleted data failed; will retry")

    def erase_due(self, now: float | None = None) -> int:
        """Run the erase for every collection whose erase mark is due; returns the marks handled."""
        now_ms = int((now if now is not None else time.time()) * 1000)
        marks: list[bytes] = []
        for tk, _ in self.store.iter_prefix("ttl", b""):
            when, kind, _ = keyspace.parse_ttl_key(tk)
            if when > now_ms:
                break
            if kind == keyspace.TTL_ERASE:
                marks.append(tk)
        if not marks:
            return 0
        # The tombstones due with the marks go first, so that their ids are erased too.
        while self.sweep(now) >= 1000:
            pass
        self.erase({keyspace.parse_ttl_key(tk)[2] for tk in marks})
        self.store.write_rows("ttl", {}, marks)
        return len(marks)

    def erase(self, prefixes: set[bytes] | None = None) -> None:
        """Remove the data of deleted records, edges and collections from every file now (GDPR erase).

        ``prefixes``: the collections (live or dropped) to erase; None = every
        collection. For each live one, the HNSW nodes of deleted vectors are
        zeroed, the text index is rewritten without deleted documents and the
        indexes are snapshotted; a dropped one loses its TTL-queue rows. Then
        changelog entries naming rows that are gone are blanked (and those the
        snapshots cover lose the vectors their changes replaced), and RocksDB
        flushes, compacts the ranges and reopens (``Store.erase_files``).
        Tombstones still in their grace period keep their ids until purged.
        """
        self._check_open()
        with self._erase_lock:
            colls = {c.prefix: c for c in self.collections()}
            todo = set(colls) if prefixes is None else set(prefixes)
            for p in sorted(todo):
                coll = colls.get(p)
                if coll is not None:
                    coll.indexes.erase_deleted()
            dropped = {p for p in todo if p not in colls}
            for p in sorted(dropped):
                # Again: a drop interrupted (crash, failed write) before its delete left rows behind.
                self._delete_rows(p)
            if dropped:
                self._forget_ttl(dropped)
            self.trim_changelog()
            self._blank_changelog(todo, colls)
            ranges: list[tuple[str, bytes | None, bytes | None]] = []
            for p in sorted(todo):
                end = keyspace.prefix_end(p)
                ranges.extend((cf, p, end) for cf in ("records", "vectors", "edges_out", "edges_in"))
                ns = keyspace.namespace_index_prefix(p)
                ranges.append(("meta", ns, keyspace.prefix_end(ns)))
            ns_all = keyspace.NAMESPACE_INDEX_PREFIX
            # The small families whole: the changelog and TTL queue hold ids of every collection,
            # the rest of meta tenants', collections' and keys' rows.
            ranges += [
                ("changes", None, None),
                ("ttl", None, None),
                ("meta", None, ns_all),
                ("meta", keyspace.prefix_end(ns_all), None),
            ]
            self.store.erase_files(ranges)

    def _forget_ttl(self, prefixes: set[bytes]) -> None:
        """Drop the TTL-queue rows of dropped collections (the erase marks are their caller's)."""
        gone: list[bytes] = []
        for tk, _ in self.store.iter_prefix("ttl", b""):
            _, kind, key = keyspace.parse_ttl_key(tk)
            if kind != keyspace.TTL_ERASE and key[:8] in prefixes:
                gone.append(tk)
            if len(gone) >= 10_000:
                self.store.write_rows("ttl", {}, gone)
                gone = []
        self.store.write_rows("ttl", {}, gone)

    def _blank_changelog(self, prefixes: set[bytes], colls: Mapping[bytes, Collection]) -> None:
        """Blank the changelog entries that name a row of ``prefixes`` that is gone; drop replaced vectors.

        An entry names a key, and a record id may be personal data; an entry of a
        change that replaced a vector also holds that vector. The entry stays (as
        ``CHANGE_ERASED``, or with its key only while the row lives) to keep its
        sequence number. A live collection needs its entries after its snapshot
        for replay: only those it already contains are touched.
        """
        with self._changelog_lock:
            blank: dict[bytes, bytes] = {}
            for k, v in self.store.iter_prefix("changes", b""):
                if not v:
                    continue
                try:
                    kind, key, prior = keyspace.parse_change(v)
                except CorruptData:
                    continue  # unreadable: whose it is cannot be told (replay skips it too)
                if kind not in (keyspace.CHANGE_RECORD, keyspace.CHANGE_EDGE) or key[:8] not in prefixes:
                    continue
                coll = colls.get(key[:8])
                if coll is not None:
                    if keyspace.parse_seq(k) > coll.indexes.watermark:
                        continue
                    cf = "records" if kind == keyspace.CHANGE_RECORD else "edges_out"
                    if self.store.get(cf, key) is not None:
                        if prior is not None:
                            # The row lives on, but the vector this change replaced is deleted
                            # data (its HNSW node was zeroed): only the key stays.
                            blank[k] = keyspace.change_entry(kind, key)
                        continue
                blank[k] = bytes([keyspace.CHANGE_ERASED])
                if len(blank) >= 10_000:
                    self.store.write_rows("changes", blank)
                    blank = {}
            self.store.write_rows("changes", blank)

    def erase_problem(self) -> str | None:
        """Why the last background erase pass failed (None: it did not); it is retried, the node stays ready."""
        return self._erase_error

    @staticmethod
    def altered_config(
        old: CollectionConfig,
        *,
        indexed_fields: Mapping[str, str | None] | None = None,
        default_ttl_seconds: float | EllipsisType | None = ...,
        ef_search: int | None = None,
    ) -> CollectionConfig:
        """``old`` with an ``alter_collection`` change applied (validated; nothing is stored)."""
        fields_change = validation.indexed_fields_change(indexed_fields)
        ttl = validation.default_ttl(default_ttl_seconds) if default_ttl_seconds is not ... else None
        ef = validation.ef_search(ef_search) if ef_search is not None else None
        fields = dict(old.indexed_fields)
        for path, ftype in fields_change.items():
            if ftype is None:
                fields.pop(path, None)
            else:
                fields[path] = ftype  # type: ignore[assignment]  # checked by indexed_fields_change
        if len(fields) > validation.MAX_INDEXED_FIELDS:
            raise InvalidArgument(
                f"a collection may index at most {validation.MAX_INDEXED_FIELDS} fields", code="invalid_config"
            )
        return dataclasses.replace(
            old,
            indexed_fields=fields,
            default_ttl_seconds=ttl if default_ttl_seconds is not ... else old.default_ttl_seconds,
            index=dataclasses.replace(old.index, ef_search=ef) if ef is not None else old.index,
        )

    def alter_collection(
        self,
        name: str,
        *,
        tenant: str = DEFAULT_TENANT,
        indexed_fields: Mapping[str, str | None] | None = None,
        default_ttl_seconds: float | EllipsisType | None = ...,
        ef_search: int | None = None,
    ) -> CollectionConfig:
        self._check_open()
        # Every value is checked before anything is written: a bad one changes nothing.
        self.altered_config(
            CollectionConfig(name="check", dimension=1),
            indexed_fields=indexed_fields,
            default_ttl_seconds=default_ttl_seconds,
            ef_search=ef_search,
        )
        with self._lock:
            coll = self.get_collection(name, tenant=tenant)
            old = coll.config
            new = self.altered_config(
                old, indexed_fields=indexed_fields, default_ttl_seconds=default_ttl_seconds, ef_search=ef_search
            )
            fields = new.indexed_fields
            if new == old:
                return old
            key = keyspace.collection_key(coll.tenant_id, name)
            raw = self.store.get("meta", key)
            if raw is None:  # deleted meanwhile by another process of the same data dir: cannot happen in-process
                raise NotFound(f"collection {name!r} does not exist in tenant {tenant!r}", code="collection_not_found")
            # Stored first and durably: after a crash the load builds what this declares.
            self.store.write_meta({key: pack({**unpack(raw), "config": new.model_dump(mode="json")})})
            coll.config = new
            coll.indexes.set_config(new)
            log.info(
                "collection %s/%s altered: indexed fields %s, default TTL %s, ef_search %d",
                tenant,
                name,
                sorted(fields),
                new.default_ttl_seconds,
                new.index.ef_search,
            )
            return new

    def collections(self) -> list[Collection]:
        """Every collection of every tenant (opened, not necessarily loaded)."""
        out = []
        for tname in self.list_tenants():
            for cfg in self.list_collections(tenant=tname):
                out.append(self.get_collection(cfg.name, tenant=tname))
        return out

    def stats(self, limit: int = validation.DEFAULT_STATS_COLLECTIONS, *, tenant: str | None = None) -> dict[str, Any]:
        """Memory per component of this process: the shape of the server's ``stats`` (docs/observability.md).

        ``{"process": {...}, "rocksdb": {...}, "collections": [...], "totals": {...}, "more": bool}``,
        in bytes. The ``limit`` (1-1000) collections with the most records are listed, of every
        tenant or of ``tenant`` alone; a collection whose indexes are not loaded yet holds none
        of them in memory (``loaded: false``, zeros). Cheap at any size: nothing is scanned.
        """
        self._check_open()
        validation.stats_limit(limit)
        if tenant is None:
            colls = self.collections()
        else:
            validation.name(tenant, "tenant")
            colls = [self.get_collection(c.name, tenant=tenant) for c in self.list_collections(tenant=tenant)]
        return stats.node_stats(self.store, colls, limit)

    def load_all(self, progress: Callable[[str, int, int], None] | None = None) -> None:
        """Load every collection's indexes (servers call this before /ready)."""
        for coll in self.collections():
            label = f"{coll.tenant}/{coll.name}"
            cb: Callable[[int, int], None] | None = None
            if progress is not None:
                cb = functools.partial(progress, label)
            coll.load(cb)

    # ------------------------------------------------------ background tasks
    def _start(self, name: str, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=self._thread_main, args=(name, fn), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _thread_main(self, name: str, fn: Callable[[], None]) -> None:
        """Run a background loop; an end other than by close() is logged and reported by :meth:`problems`."""
        try:
            fn()
        except BaseException as e:
            self._thread_errors[name] = f"the {name} thread died ({type(e).__name__}: {e})"
            log.critical("background thread %s died: %r", name, e)
            raise
        if not self._stop.is_set():
            self._thread_errors[name] = f"the {name} thread stopped"
            log.critical("background thread %s stopped unexpectedly", name)

    def _sweep_loop(self) -> None:
        interval = self.settings.storage.ttl_sweep_interval_seconds
        while not self._stop.wait(interval):
            try:
                while self.sweep() >= 1000 and not self._stop.is_set():
                    pass
            except Closed:
                return
            except BaseException as e:
                if not is_failure(e):  # e.g. SystemExit: stop (and say so), see _thread_main
                    raise
                # Also through a Rust panic of a binding: the next round retries.
                log.exception("TTL sweep failed; will retry")

    def sweep(self, now: float | None = None, limit: int = 1000) -> int:
        """Delete expired records and purge old tombstones; returns entries handled."""
        now_ms = int((now if now is not None else time.time()) * 1000)
        handled = 0
        expire: list[Mutation] = []
        purge: list[tuple[bytes, bytes]] = []
        for tk, _ in self.store.iter_prefix("ttl", b""):
            when, kind, key = keyspace.parse_ttl_key(tk)
            if when > now_ms or handled >= limit:
                break
            if kind == keyspace.TTL_ERASE:
                continue  # the erase task's (erase_due)
            handled += 1
            if kind == keyspace.TTL_EXPIRE:
                raw = self.store.get("records", key)
                row = decode_record(raw) if raw is not None else None
                if row is None or row.deleted or row.expires_at is None or int(row.expires_at * 1000) != when:
                    purge.append((tk, b"\x00"))  # stale queue entry: drop it only
                    continue
                hlc, node = self.hlc.now()
                expire.append(
                    Mutation(
                        keyspace.CHANGE_RECORD,
                        key[:8],
                        key,
                        RecordRow(hlc, node, True, updated_at=time.time()),
                        if_version=row.version,
                    )
                )
            else:
                cf = "records" if kind == keyspace.TTL_PURGE_RECORD else "edges_out"
                raw = self.store.get(cf, key)
                purge.append((tk, raw if raw is not None else b"\x00"))
        if expire:
            changes = self.store.apply(expire)
            # Expiry is a delete: the record's edges go too (after the
            # conditional tombstone landed, so a concurrent re-upsert keeps them).
            now_s = time.time()
            gone = [
                m
                for c in changes
                if c.applied
                for m in edge_tombstones(
                    self.store, self.hlc, c.mutation.prefix, keyspace.record_id_of(c.mutation.key), now_s
                )
            ]
            if gone:
                self.store.apply(gone)
        if purge:
            self.store.purge(purge)
        return handled

    def _snapshot_loop(self) -> None:
        ix = self.settings.index
        idle_flush = self.settings.storage.idle_flush_seconds
        last = wrote_at = time.monotonic()
        trimmed_at = prev = self.store.seq
        flushed = False  # the memtables since the last write (or the log replayed at open)
        while not self._stop.wait(1.0):
            try:
                due = time.monotonic() - last >= ix.snapshot_interval_seconds
                saved = False
                for coll in list(self._collections.values()):
                    if coll.loaded and (
                        coll.indexes.dirty >= ix.snapshot_after_changes or (due and coll.indexes.dirty)
                    ):
                        saved = coll.indexes.snapshot(in_child=ix.snapshot_in_child) or saved
                seq = self.store.seq
                if seq != prev:
                    wrote_at, flushed = time.monotonic(), False
                elif idle_flush and not flushed and time.monotonic() - wrote_at >= idle_flush:
                    # A process that stopped writing has no use for full write buffers.
                    flushed = True
                    saved = self.store.flush(_IDLE_FLUSH_MIN_BYTES) > 0 or saved
                # After snapshots and flushes, every so many writes, and once writes pause.
                if saved or seq - trimmed_at >= _TRIM_EVERY_CHANGES or (seq == prev != trimmed_at):
                    trimmed_at = seq
                    release_free_memory()
                prev = seq
                if due:
                    last = time.monotonic()
                    self.trim_changelog()
            except Closed:
                return
            except BaseException as e:
                if not is_failure(e):
                    raise
                log.exception("index snapshot failed; will retry")

    def snapshot(self) -> None:
        """Snapshot every loaded collection's indexes now."""
        for coll in list(self._collections.values()):
            coll.indexes.snapshot()
        self.trim_changelog()

    def trim_changelog(self) -> None:
        """Drop changelog entries every collection's snapshot already contains."""
        marks = []
        for coll in self.collections():
            mark = coll.indexes.advance_watermark() if coll.loaded else coll.indexes.trim_mark()
            if mark is not None:
                marks.append(mark)
        if not marks:
            return
        # Never past what was notified: the newest entry also carries the
        # sequence counter across restarts (a snapshot claiming more than
        # storage holds, after a lost WAL tail, must not trim it away).
        upto = min(*marks, self.store.notified_seq)
        if upto > 0:
            with self._changelog_lock:
                self.store.delete_range("changes", keyspace.seq_key(0), keyspace.seq_key(upto))

    # -------------------------------------------------------------- lifecycle
    # ---------------------------------------------------------------- health
    def problems(self) -> list[str]:
        """Why this node does not answer every request with current data; empty when it does.

        Covers the storage threads (:meth:`Store.problem`), the background
        threads started here, and every loaded collection's indexes (a failed
        index update, a text index that cannot commit). Servers report these
        on ``/ready``.
        """
        out: list[str] = []
        p = self.store.problem()
        if p is not None:
            out.append(p)
        if not self._closed:
            out.extend(self._thread_errors.values())
            for t in self._threads:
                if not t.is_alive() and t.name not in self._thread_errors:
                    out.append(f"the {t.name} thread is gone")
        for coll in list(self._collections.values()):
            cp = coll.indexes.problem()
            if cp is not None:
                out.append(f"{coll.tenant}/{coll.name}: {cp}")
        return out

    @property
    def fatal(self) -> str | None:
        """Why no write can succeed any more (None while they can); only a restart helps."""
        return self.store.fatal

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self.close_within(None)

    def close_within(self, timeout: float | None) -> bool:
        """:meth:`close` within ``timeout`` seconds (None: wait for everything); True if the close was clean.

        Past the timeout, gives up on whatever has not finished (a hung
        snapshot, a stuck storage thread) and returns False; acknowledged
        writes are in RocksDB's log either way and the indexes catch up from
        the changelog at the next start. Returns True after a clean close.
        """
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout

        def left(cap: float | None = None) -> float | None:
            if deadline is None:
                return cap
            rest = max(0.0, deadline - time.monotonic())
            return rest if cap is None else min(rest, cap)

        clean = True
        self._stop.set()
        for t in self._threads:
            t.join(left(30.0))
            if t.is_alive():
                log.error("background thread %s did not stop in time", t.name)
                clean = False
        for coll in list(self._collections.values()):
            # Without time left, close without a snapshot (the changelog covers it).
            snap = deadline is None or time.monotonic() < deadline
            try:
                # A snapshot waits for the collection's index lock, which a
                # stuck index update may hold: bounded like the rest.
                if not self._bounded(functools.partial(coll.close, snapshot=snap), left()):
                    log.error("closing collection %s did not finish in time", coll.name)
                    clean = False
            except BaseException as e:
                if not is_failure(e):
                    raise
                log.exception("closing collection %s failed", coll.name)
                clean = False
        if self._embedders is not None:
            self._embedders.close()
        return self.store.close(left()) and clean

    @staticmethod
    def _bounded(fn: Callable[[], None], timeout: float | None) -> bool:
        """Run ``fn``; with a timeout, in a helper thread that is given up on (left running) when time is up."""
        if timeout is None:
            fn()
            return True
        err: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as e:
                err.append(e)

        t = threading.Thread(target=run, name="engramdb-close", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            return False
        if err:
            raise err[0]
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
