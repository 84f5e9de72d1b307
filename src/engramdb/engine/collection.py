"""A collection: records, their indexes and every query over them."""

from __future__ import annotations

import base64
import contextlib
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pyroaring import BitMap

from engramdb import tracing, validation
from engramdb.api import CollectionAPI
from engramdb.engine import rows
from engramdb.engine.budget import MASK, Deadline, current_deadline
from engramdb.engine.graph import GraphMixin, edge_tombstones
from engramdb.engine.hlc import HLC, version_str
from engramdb.engine.indexes import CollectionIndexes
from engramdb.engine.records import RecordReader
from engramdb.errors import Closed, EngramError, FailedPrecondition, InvalidArgument, NotFound
from engramdb.filters import And, Filter, NamespacePrefix, compile_filter
from engramdb.storage import keyspace
from engramdb.storage.codec import EdgeRow, RecordRow, decode_record
from engramdb.storage.store import Mutation, Store
from engramdb.types import CollectionConfig, ExtractResult, Hit, Record, ScanPage

if TYPE_CHECKING:
    from engramdb.embed import Embedder

# How long a listing waits for the indexes to count the writes acknowledged before it.
_INFO_CATCH_UP_SECONDS = 5.0


class Collection(GraphMixin, CollectionAPI):
    """Records of one collection of one tenant, with vector, payload and text indexes.

    Obtain it from :meth:`engramdb.Database.create_collection` or
    :meth:`~engramdb.Database.get_collection`; it is safe to share between
    threads.
    """

    def __init__(
        self,
        store: Store,
        hlc: HLC,
        tenant: str,
        tenant_id: int,
        coll_id: int,
        config: CollectionConfig,
        index_dir: Path,
        *,
        exact_threshold: int = 2048,
        text_refresh_seconds: float = 0.2,
        snapshot_vectors: bool = False,
        embedder: Embedder | None = None,
    ):
        self.store = store
        self.hlc = hlc
        self.tenant = tenant
        self.tenant_id = tenant_id
        self.id = coll_id
        self.config = config
        self.prefix = keyspace.coll_prefix(tenant_id, coll_id)
        self.index_dir = index_dir
        self.exact_threshold = exact_threshold
        self.text_refresh_seconds = text_refresh_seconds
        self.embedder = embedder
        self.indexes: CollectionIndexes = CollectionIndexes(
            store,
            tenant,
            config,
            self.prefix,
            index_dir,
            text_refresh_seconds=text_refresh_seconds,
            snapshot_vectors=snapshot_vectors,
        )
        self.reader: RecordReader = RecordReader(store, self.prefix)

    # ------------------------------------------------------------ properties
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
        return f"Collection({self.tenant!r}/{self.name!r}, dimension={self.dimension}, metric={self.metric!r})"

    def with_consistency(self, level: str) -> Collection:
        # This node holds every replica of this collection, so every level is met by itself.
        validation.consistency(level)
        return self

    # --------------------------------------------------------------- loading
    @property
    def loaded(self) -> bool:
        return self.indexes.loaded

    def load(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Load (or rebuild) the indexes and catch up with the changelog.

        Called lazily by the first query; servers call it at start-up so that
        ``/ready`` reflects progress. ``progress(done, total)`` reports a rebuild.
        """
        if self.indexes.loaded:  # every operation calls this: no span unless there is work
            return
        with tracing.span("engine.load"):
            self.indexes.load(progress)

    def reindex_status(self) -> dict[str, Any] | None:
        """Progress of building the payload index of fields an alter added; None when none is pending.

        See :meth:`CollectionIndexes.reindex_status`; filters on such fields are answered
        correctly meanwhile, by checking records.
        """
        return self.indexes.reindex_status()

    @property
    def load_progress(self) -> tuple[int, int]:
        """``(done, total)`` records while the indexes are (re)built."""
        return self.indexes.load_progress

    def close(self, snapshot: bool = True) -> None:
        self.indexes.close(snapshot)

    def drop_files(self) -> None:
        self.indexes.close(snapshot=False)
        shutil.rmtree(self.index_dir, ignore_errors=True)

    # ----------------------------------------------------------------- write
    def _key(self, rid: str) -> bytes:
        return keyspace.record_key(self.prefix, rid)

    def _check_open(self) -> None:
        if self.indexes.closed:
            raise Closed(f"collection {self.name!r} was closed or deleted")

    def upsert(self, records: Record | Mapping[str, Any] | Sequence[Record | Mapping[str, Any]]) -> list[str]:
        self._check_open()
        built = rows.upsert_rows(records, time.time(), self.config, self.hlc, self.embedder)
        self.load()
        muts = [Mutation(keyspace.CHANGE_RECORD, self.prefix, self._key(rid), row) for rid, row in built]
        with tracing.span("engine.upsert"):
            self.store.apply(muts)
        return [version_str(row.version) for _, row in built]

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
        self._check_open()
        rid = validation.record_ref(id)
        change = rows.Patch.parse(
            self.config,
            metadata=metadata,
            text=text,
            namespace=namespace,
            ttl_seconds=ttl_seconds,
            importance=importance,
            vector=vector,
        )
        self.load()
        for _ in range(16):
            now = time.time()
            # The vector is read too when the patch keeps it: the new row is written whole.
            cur = self.store.get_record(self._key(rid), vector=change.vector is None)
            if cur is None or not cur.live(now):
                raise NotFound(f"record {rid!r} does not exist in collection {self.name!r}", code="record_not_found")
            row = change.apply(cur, now, self.config, self.hlc, self.embedder)
            changes = self.store.apply(
                [Mutation(keyspace.CHANGE_RECORD, self.prefix, self._key(rid), row, if_version=cur.version)]
            )
            if changes[0].applied:
                return self.reader.to_record(
                    rid,
                    row,
                    frozenset({"vector", "text", "metadata", "namespace", "expires_at", "timestamps", "importance"}),
                )
        raise FailedPrecondition(f"record {rid!r} is being updated concurrently; retry the patch", code="conflict")

    def delete(self, ids: str | Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None) -> int:
        self._check_open()
        if ids is None and filter is None:
            raise InvalidArgument("delete needs ids or a filter (use delete(filter={}) to delete everything)")
        id_list = [ids] if isinstance(ids, str) else list(ids or [])
        validation.batch(id_list, "ids")
        for i, rid in enumerate(id_list):
            validation.record_ref(rid, f"ids[{i}]")
        targets = dict.fromkeys(id_list)
        if filter is not None:
            flt = compile_filter(filter)
            for rid, _ in self._iter_live(flt):
                targets[rid] = None
        self.load()
        deleted = 0
        tlist = list(targets)
        for start in range(0, len(tlist), 1000):
            chunk = tlist[start : start + 1000]
            now = time.time()
            muts = []
            for rid in chunk:
                muts.append(
                    Mutation(keyspace.CHANGE_RECORD, self.prefix, self._key(rid), rows.tombstone(now, self.hlc))
                )
                muts.extend(self._edge_tombstones(rid, now))
            changes = self.store.apply(muts)
            for c in changes:
                if (
                    c.mutation.kind == keyspace.CHANGE_RECORD
                    and c.applied
                    and isinstance(c.old, RecordRow)
                    and c.old.live(now)
                ):
                    deleted += 1
            # A link racing with this delete may have landed between the edge
            # lookup and the tombstone; sweep the deleted ids' edges once more.
            late = [m for rid in chunk for m in self._edge_tombstones(rid, now)]
            if late:
                self.store.apply(late)
        return deleted

    def _edge_tombstones(self, rid: str, now: float) -> list[Mutation]:
        """Tombstones for every live edge touching ``rid`` (both directions)."""
        return edge_tombstones(self.store, self.hlc, self.prefix, rid, now)

    def apply_rows(
        self,
        records: Sequence[tuple[str, RecordRow]] = (),
        edges: Sequence[tuple[str, str, str, EdgeRow]] = (),
        detach: Sequence[tuple[str, tuple[int, int]]] = (),
    ) -> list[bool]:
        """Apply rows built elsewhere (by a cluster coordinator, :mod:`engramdb.engine.rows`) as they are.

        The replica side of a replicated write: rows keep the version they were given and go
        through the one mutation path (last writer wins by version, so a replayed or late row
        never overwrites a newer one). ``detach`` pairs ``(id, version)`` tombstone, at that
        version, every edge of this collection touching ``id`` (a record deleted in another
        shard takes its incoming edges with it). The clock observes every version, so this
        node's own later writes are newer. Returns, per record then per edge row, whether the
        row it replaced was live (how a coordinator counts deleted records and edges).
        """
        self._check_open()
        now = time.time()
        muts = [Mutation(keyspace.CHANGE_RECORD, self.prefix, self._key(rid), row) for rid, row in records]
        for src, rel, dst, erow in edges:
            muts.append(
                Mutation(
                    keyspace.CHANGE_EDGE,
                    self.prefix,
                    keyspace.edge_out_key(self.prefix, src, rel, dst),
                    erow,
                    in_key=keyspace.edge_in_key(self.prefix, src, rel, dst),
                )
            )
        n_rows = len(muts)
        for rid, (stamp, node) in detach:
            gone = EdgeRow(stamp, node, True, updated_at=now)
            muts.extend(replace(m, row=gone) for m in self._edge_tombstones(rid, now))
        newest = max((m.row.version for m in muts), default=None)
        if newest is not None:
            self.hlc.observe(newest)
        if not muts:
            return []
        self.load()
        changes = self.store.apply(muts)
        out = []
        for c in changes[:n_rows]:
            old = c.old
            if isinstance(old, RecordRow):
                out.append(c.applied and old.live(now))
            else:
                out.append(c.applied and old is not None and not old.deleted)
        return out

    def refresh_ttl(self, ids: str | Sequence[str]) -> int:
        self._check_open()
        id_list = [ids] if isinstance(ids, str) else list(ids)
        now = time.time()
        muts = []
        for rid in id_list:
            cur = self.store.get_record(self._key(validation.record_ref(rid)), vector=True)
            if cur is None or not cur.live(now) or cur.ttl_seconds is None:
                continue
            row = rows.refreshed_row(cur, now, self.hlc)
            muts.append(Mutation(keyspace.CHANGE_RECORD, self.prefix, self._key(rid), row, if_version=cur.version))
        if not muts:
            return 0
        self.load()
        return sum(1 for c in self.store.apply(muts) if c.applied)

    # ------------------------------------------------------------------ read
    _ALL = frozenset({"vector", "text", "metadata", "namespace", "expires_at", "timestamps", "importance"})

    def get(self, id: str, *, include: Iterable[str] | None = None, refresh_ttl: bool = False) -> Record | None:
        got = self.get_many([id], include=include, refresh_ttl=refresh_ttl)
        return got[0] if got else None

    def get_many(
        self, ids: Sequence[str], *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> list[Record]:
        self._check_open()
        inc = self._ALL if include is None else validation.include(include)
        validation.batch(ids, "ids")
        keys = [self._key(validation.record_ref(rid, f"ids[{i}]")) for i, rid in enumerate(ids)]
        now = time.time()
        rows = self.store.get_records(keys)
        out = [rec for rec in self.reader.records(list(zip(ids, rows, strict=True)), inc, now) if rec is not None]
        if refresh_ttl and out:
            self.refresh_ttl([r.id for r in out])
        return out

    def _iter_live(
        self, flt: Filter | None, start_id: str | None = None, id_prefix: str = "", dl: Deadline | None = None
    ) -> Iterator[tuple[str, RecordRow]]:
        now = time.time()
        start = self._key(start_id) if start_id is not None else None
        for n, (k, v) in enumerate(self.store.iter_prefix("records", self._key(id_prefix), start=start)):
            if dl is not None and not n & MASK:
                dl.check()
            row = decode_record(v)
            if not row.live(now):
                continue
            rid = keyspace.record_id_of(k)
            if flt is not None and not flt.matches(rid, row.namespace, row.metadata):
                continue
            yield rid, row

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        # Under a ``budget.query_budget`` the time spent reading records is bounded (DeadlineExceeded past it).
        self._check_open()
        flt = compile_filter(filter)
        dl = current_deadline("count")
        self.load()
        vindex = self.indexes.vindex
        now = time.time()
        if flt is None:
            expired = sum(1 for t in list(vindex.expires.values()) if t <= now)
            return len(vindex) - expired
        cands = self.indexes.filter_candidates(flt, dl)
        labels = cands.labels
        if cands.exact:
            # The payload index answered the whole filter: count bits, read no record.
            return len(labels) - self._expired_among(labels, now)
        if len(labels) * 4 > len(vindex):
            return sum(1 for _ in self._iter_live(flt, dl=dl))
        # The index narrowed the candidates well: read only their rows.
        found = 0
        arr = cands.array.tolist()
        for i in range(0, len(arr), 1024):
            if dl is not None:
                dl.check()
            chunk = arr[i : i + 1024]
            ids = [name or "" for name in vindex.names_of(chunk)]
            for rid, row in zip(ids, self.reader.rows(ids), strict=True):
                if row is not None and row.live(now) and flt.matches(rid, row.namespace, row.metadata):
                    found += 1
        return found

    def _expired_among(self, labels: BitMap, now: float) -> int:
        """How many of ``labels`` are past their TTL but not yet swept."""
        expires = self.indexes.vindex.expires
        if not expires:
            return 0
        if len(labels) < len(expires):
            return sum(1 for lb in labels if (t := expires.get(lb)) is not None and t <= now)
        return sum(1 for lb, t in list(expires.items()) if t <= now and lb in labels)

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
        # Under a ``budget.query_budget`` the time spent reading records is bounded (DeadlineExceeded past it).
        self._check_open()
        validation.page_limit(limit)
        inc = self._ALL if include is None else validation.include(include)
        flt = compile_filter(filter) if filter else None
        if namespace_prefix:
            # Joined as nodes, so the argument does not count against the filter's size bound.
            ns_node = NamespacePrefix(validation.namespace(namespace_prefix, "namespace_prefix"))
            flt = Filter(ns_node if flt is None else And((flt.node, ns_node)))
        dl = current_deadline("scan")
        start_id = None
        if cursor is not None:
            try:
                start_id = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode() + "\x00"
            except Exception as e:
                raise InvalidArgument("cursor is not one this collection returned", code="invalid_cursor") from e
        prefix = "" if id_prefix is None else id_prefix
        if not isinstance(prefix, str):
            raise InvalidArgument("id_prefix must be a string")
        page: list[tuple[str, RecordRow | None]] = []
        more = False
        for rid, row in self._iter_live(flt, start_id=start_id, id_prefix=prefix, dl=dl):
            if len(page) == limit:
                more = True
                break
            page.append((rid, row))
        # A record deleted, or changed to no longer match, while the page was
        # read (its vector is read after its row) is left out; the cursor still
        # moves past it.
        out = [rec for rec in self.reader.records(page, inc, time.time(), flt) if rec is not None]
        last = page[-1][0] if page else None
        return ScanPage(out, base64.urlsafe_b64encode(last.encode()).decode() if more and last else None)

    def list_namespaces(
        self,
        prefix: Sequence[str] | None = None,
        *,
        suffix: Sequence[str] | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        self._check_open()
        validation.namespace_listing(max_depth, limit, offset)
        pre = validation.namespace(prefix, "prefix")
        suf = validation.namespace(suffix, "suffix")
        literal = []
        for seg in pre:
            if seg == "*":
                break
            literal.append(seg)
        base = keyspace.namespace_index_prefix(self.prefix)
        start = base + keyspace.encode_namespace(literal)
        now = time.time()
        seen: list[tuple[str, ...]] = []
        with self.store.iterator("meta", start) as it:
            while it.valid():
                key = it.key()
                if not key.startswith(start):
                    break
                enc, _, rid = key[len(base) :].rpartition(keyspace.NS_ID_SEP)
                ns = keyspace.decode_namespace(enc)
                if self._ns_matches(ns, pre, suf):
                    row = self.store.get_record(self.prefix + rid)
                    if row is None or not row.live(now):
                        # Expired but not yet swept: it must not keep the path alive.
                        it.next()
                        continue
                    shown = ns[:max_depth] if max_depth is not None else ns
                    if not seen or seen[-1] != shown:
                        seen.append(shown)
                        if len(seen) >= offset + limit:
                            break
                    # Skip every other record under the shown path at once.
                    it.seek(base + keyspace.encode_namespace(shown) + (b"\xff" if len(shown) < len(ns) else b"\x02"))
                else:
                    it.seek(base + enc + b"\x02")
        return seen[offset : offset + limit]

    @staticmethod
    def _ns_matches(ns: tuple[str, ...], pre: tuple[str, ...], suf: tuple[str, ...]) -> bool:
        if len(ns) < len(pre) or len(ns) < len(suf):
            return False
        if any(p != "*" and p != s for p, s in zip(pre, ns, strict=False)):
            return False
        return not (suf and any(p != "*" and p != s for p, s in zip(suf, ns[len(ns) - len(suf) :], strict=True)))

    # ---------------------------------------------------------------- search
    def search(
        self,
        vector: Sequence[float] | np.ndarray | None = None,
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
        # Under a ``budget.query_budget`` the query's time is bounded (DeadlineExceeded
        # past it; graph expansion keeps its own ``expand.timeout_ms``).
        from engramdb.engine.search import run_search

        self._check_open()
        self.load()
        with tracing.span("engine.search"):
            return run_search(
                self,
                vector=vector,
                k=k,
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
        from engramdb.engine.extraction import extract_into

        self._check_open()
        self.load()
        return extract_into(
            self,
            text,
            extractor,
            instructions=instructions,
            namespace=namespace,
            dedupe_threshold=dedupe_threshold,
            source_id=source_id,
        )

    def info(self) -> dict[str, Any]:
        """Configuration and live counts, for listings and metrics."""
        if self.indexes.loaded and not self.indexes.closed:
            # The count includes the writes acknowledged so far; a broken index still lists.
            with contextlib.suppress(EngramError):
                self.indexes.catch_up(_INFO_CATCH_UP_SECONDS)
        return {
            "name": self.name,
            "tenant": self.tenant,
            "config": self.config.model_dump(mode="json"),
            "loaded": self.loaded,
            "count": self.indexes.size(),
            "reindex": self.indexes.reindex_status(),
        }
