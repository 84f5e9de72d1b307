"""The coordinator: the public API of a cluster, served by every node.

:class:`Coordinator` offers what the service layer calls on a single node's engine (collections
per tenant, :class:`~engramdb.api.TenantData`), and :class:`ClusterCollection` implements
:class:`~engramdb.api.CollectionAPI`; so REST, gRPC, the clients and the integrations work against
any node unchanged. Collections and their placement live in etcd (read from this node's watched
view, never with an etcd round trip per request); records live in shard replicas on the nodes.

- **Writes** are validated and turned into rows here, stamped with this node's hybrid logical
  clock (:mod:`engramdb.engine.rows`), grouped by shard and sent to every replica in parallel.
  The call returns once ``consistency`` replicas of every shard acknowledged (ONE = 1, QUORUM =
  RF/2+1, ALL = RF); with fewer it fails with 503 ``not_enough_replicas`` naming acked and
  required counts, and the write may have landed on some replicas (as in Cassandra). A replica
  write that failed or was not sent goes to :meth:`Coordinator.missed_write` — the hook where
  hinted handoff will store it; today it is counted and logged, and the replica converges when
  the record is written again.
- **Reads** (get, scan, count, namespaces) ask ``consistency`` replicas of each shard and return
  the newest version of each record; a replica that answered an older one goes to
  :meth:`Coordinator.stale_replica` (the read-repair hook).
- **Search** asks one replica per shard (this node's first, then healthy peers), one call per
  node carrying its shards, and merges by score; hybrid search fuses the merged vector and text
  rankings here, exactly as one node fuses its own.
- A node whose etcd session is lost refuses writes (503 ``etcd_session_lost``) until it is back.
"""

from __future__ import annotations

import base64
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from engramdb import validation
from engramdb.api import CollectionAPI
from engramdb.cluster import wire
from engramdb.cluster.control import ControlPlane
from engramdb.cluster.peers import PeerCall, Peers, wait_quorum
from engramdb.cluster.replica import Replicas, naming_rev, schema_config
from engramdb.cluster.ring import Placement, Ring, shard_of
from engramdb.engine import graph, rows
from engramdb.engine.hlc import HLC, parse_version, version_str
from engramdb.engine.search import Query, fuse, text_index_disabled
from engramdb.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EngramError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from engramdb.filters import compile_filter
from engramdb.storage.codec import EdgeRow, RecordRow
from engramdb.types import CollectionConfig, Edge, ExtractResult, Hit, Record, ScanPage

if TYPE_CHECKING:
    from engramdb.config import ClusterSettings
    from engramdb.engine.database import Database

log = logging.getLogger("engramdb.cluster")

LEVELS = ("one", "quorum", "all")
ALL_FIELDS = frozenset({"vector", "text", "metadata", "namespace", "expires_at", "timestamps", "importance"})
_SCAN_CHUNK = 1000


def needed(level: str, rf: int) -> int:
    """How many replicas of a shard ``level`` asks for, with replication factor ``rf``."""
    if level == "one":
        return 1
    if level == "all":
        return rf
    return rf // 2 + 1


@dataclass(frozen=True)
class Layout:
    """A collection as the view holds it: configuration, revision and replica sets per shard."""

    tenant: str
    name: str
    rev: int  # the revision in its replicas' names (naming_rev)
    created: int  # the etcd revision that created its schema key here
    mod_rev: int
    config: CollectionConfig
    shards: int
    rf: int
    replicas: tuple[tuple[str, ...], ...]

    def shard_of(self, rid: str) -> int:
        return shard_of(rid, self.shards)

    def msg(self, shard: int | None = None, **fields: Any) -> dict[str, Any]:
        m: dict[str, Any] = {"t": self.tenant, "c": self.name, "rev": self.rev, "at": self.created, **fields}
        if shard is not None:
            m["shard"] = shard
        return m


def retryable(e: EngramError) -> bool:
    """Whether another replica may answer where this one failed (not a bad request, which fails everywhere)."""
    return isinstance(e, (Unavailable, DeadlineExceeded)) or e.code == "not_a_replica" or e.http_status >= 500


def _newer(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    return a is not None and (b is None or a > b)


def _rec_version(rec: Record) -> tuple[int, int]:
    return parse_version(rec.version) if rec.version else (0, 0)


def _row_of(rec: Record) -> RecordRow:
    """A full row from a record read with every field (the input of a read-modify-write)."""
    v = _rec_version(rec)
    vec = None if rec.vector is None else np.asarray(rec.vector, dtype=np.float32).tobytes()
    return RecordRow(
        v[0],
        v[1],
        False,
        rec.created_at or 0.0,
        rec.updated_at or 0.0,
        rec.expires_at,
        tuple(rec.namespace),
        dict(rec.metadata),
        rec.text,
        vec,
        rec.importance,
        rec.ttl_seconds,
    )


class Coordinator:
    """Collections of every tenant in the cluster; the service layer's data surface in cluster mode."""

    def __init__(
        self,
        *,
        db: Database,
        control: ControlPlane,
        peers: Peers,
        replicas: Replicas,
        node_id: str,
        settings: ClusterSettings,
        hlc: HLC,
        on_missed_write: Callable[[str, Layout, int, str], None] | None = None,
    ) -> None:
        self.db = db
        self.control = control
        self.peers = peers
        self.replicas = replicas
        self.node_id = node_id
        self.settings = settings
        self.hlc = hlc
        self.timeout = settings.peer_timeout_seconds
        self._handlers = replicas.handlers()
        self._rr = itertools.count()
        self._embedders: dict[tuple[str, str, int], Any] = {}
        self._lock = threading.Lock()
        self._on_missed_write = on_missed_write
        self.missed_writes = 0
        self.stale_reads = 0

    # ------------------------------------------------------------ hooks
    def missed_write(self, node: str, layout: Layout, shard: int, reason: str) -> None:
        """A replica did not take a write (down, failing, or too slow): where hinted handoff plugs in."""
        self.missed_writes += 1
        log.warning(
            "replica %s missed a write of shard %d of %s/%s (%s)", node, shard, layout.tenant, layout.name, reason
        )
        if self._on_missed_write is not None:
            self._on_missed_write(node, layout, shard, reason)

    def stale_replica(self, node: str, layout: Layout, shard: int, ids: Sequence[str]) -> None:
        """A replica answered older versions than another one: where read repair plugs in."""
        self.stale_reads += len(ids)
        log.info(
            "replica %s of shard %d of %s/%s is behind on %d record(s)",
            node,
            shard,
            layout.tenant,
            layout.name,
            len(ids),
        )

    # ------------------------------------------------------------ calls
    def call(self, node: str, method: str, msg: Mapping[str, Any], timeout: float | None = None) -> PeerCall:
        """``method`` on ``node``: in this process for this node, over gRPC otherwise; never raises."""
        if node == self.node_id:
            call = PeerCall(node, method)
            try:
                answer = self._handlers[method](dict(msg), node)
            except EngramError as e:
                call._finish(None, e)
            else:
                call._finish(answer, None)
            return call
        if not self.is_up(node):
            call = PeerCall(node, method)
            call._finish(None, Unavailable(f"node {node} is down (no live membership in etcd)", code="peer_down"))
            return call
        peer = self.peers.get(node)
        if peer is None:
            call = PeerCall(node, method)
            call._finish(None, Unavailable(f"node {node} is not known to this node yet", code="peer_unavailable"))
            return call
        return peer.call_async(method, msg, timeout)

    def is_up(self, node: str) -> bool:
        m = self.control.view.member(node)
        return m is not None and m.state == "up"

    def _order(self, replicas: Sequence[str]) -> list[str]:
        """Replicas in the order to ask them: this node, then healthy peers (rotated), then the rest."""
        local = [n for n in replicas if n == self.node_id]
        others = [n for n in replicas if n != self.node_id]
        if others:
            r = next(self._rr) % len(others)
            others = others[r:] + others[:r]
        healthy = [n for n in others if self.is_up(n) and self.peers.usable(n)]
        return local + healthy + [n for n in others if n not in healthy]

    def _check_session(self) -> None:
        if not self.control.session_ok:
            raise Unavailable(
                "this node has lost its etcd session and does not coordinate writes until it is back; "
                "retry, or send the request to another node",
                code="etcd_session_lost",
            )

    # ------------------------------------------------------------ layout
    def layout(self, tenant: str, name: str) -> Layout:
        validation.name(name, "collection")
        view = self.control.view
        entry = view.collections.get((tenant, name))
        if entry is None:
            raise NotFound(f"collection {name!r} does not exist", code="collection_not_found")
        value = entry.value
        shards, rf = int(value["shards"]), int(value["replication_factor"])
        reps = []
        for s in range(shards):
            p = view.placement.get((tenant, name, s))
            if p is None:
                raise Unavailable(
                    f"the placement of shard {s} of {name!r} is not known to this node yet; retry",
                    code="placement_unavailable",
                )
            reps.append(tuple(p.value.get("replicas", ())))
        return Layout(
            tenant,
            name,
            naming_rev(entry),
            entry.create_revision,
            entry.mod_revision,
            schema_config(value),
            shards,
            rf,
            tuple(reps),
        )

    def embedder(self, layout: Layout) -> Any:
        """The collection's embedder on this node (operator profiles only), cached per configuration."""
        if layout.config.embedder is None:
            return None
        key = (layout.tenant, layout.name, layout.mod_rev)
        with self._lock:
            emb = self._embedders.get(key)
        if emb is None:
            emb = self.db._resolver().for_collection(layout.config, allow_inline=False)
            with self._lock:
                self._embedders[key] = emb
        return emb

    # ---------------------------------------------------- TenantData API
    def create_collection(
        self,
        name: str,
        dimension: int | None = None,
        metric: str = "cosine",
        *,
        tenant: str,
        index: Mapping[str, Any] | None = None,
        embedder: Mapping[str, Any] | None = None,
        default_ttl_seconds: float | None = None,
        indexed_fields: Mapping[str, str] | None = None,
        text_index: bool = True,
        exist_ok: bool = False,
        shards: int | None = None,
        replication_factor: int | None = None,
    ) -> ClusterCollection:
        validation.name(tenant, "tenant")
        n_shards = self.settings.default_shards if shards is None else validation.shards(shards)
        rf = (
            self.settings.default_replication_factor
            if replication_factor is None
            else validation.replication_factor(replication_factor)
        )
        cfg, _ = self.db.new_config(
            name,
            dimension,
            metric,
            index=index,
            embedder=embedder,
            default_ttl_seconds=default_ttl_seconds,
            indexed_fields=indexed_fields,
            text_index=text_index,
        )
        cfg = replace(cfg, shards=n_shards, replication_factor=rf)
        existing = self.control.view.collections.get((tenant, name))
        if existing is not None:
            if exist_ok and schema_config(existing.value) == cfg:
                return self.get_collection(name, tenant=tenant)
            raise AlreadyExists(
                f"collection {name!r} already exists in tenant {tenant!r}"
                + (" with a different configuration" if exist_ok else ""),
                code="collection_exists",
            )
        self._check_session()
        view = self.control.view
        nodes = sorted(n for n in view.members if self.is_up(n))
        if rf > len(nodes):
            raise InvalidArgument(
                f"replication_factor {rf} is more than the {len(nodes)} node(s) up in the cluster; "
                "use a smaller replication_factor or add nodes",
                code="invalid_replication_factor",
            )
        placement = Placement.compute(tenant, name, n_shards, rf, Ring.build(nodes, self.settings.vnodes), epoch=1)
        value = {"config": cfg.model_dump(mode="json"), "shards": n_shards, "replication_factor": rf}
        try:
            rev = self.control.create_collection_placed(
                tenant,
                name,
                value,
                {s: {"replicas": list(r), "pending": [], "epoch": 1} for s, r in placement.replicas.items()},
            )
        except AlreadyExists:
            if exist_ok:
                self.control.wait_for_revision(self.control.view.revision + 1, 5.0)
                coll = self.get_collection(name, tenant=tenant)
                if coll.config == cfg:
                    return coll
            raise
        self.control.wait_for_revision(rev, 10.0)
        return self.get_collection(name, tenant=tenant)

    def get_collection(self, name: str, *, tenant: str) -> ClusterCollection:
        return ClusterCollection(self, self.layout(tenant, name), None)

    def list_collections(self, *, tenant: str) -> list[CollectionConfig]:
        view = self.control.view
        return [schema_config(e.value) for (t, _), e in sorted(view.collections.items()) if t == tenant]

    def delete_collection(self, name: str, *, tenant: str) -> None:
        self._check_session()
        layout = self.layout(tenant, name)
        rev = self.control.delete_collection(tenant, name, create_revision=layout.created, replica_rev=layout.rev)
        self.control.wait_for_revision(rev, 10.0)

    def alter_collection(self, name: str, *, tenant: str, **kw: Any) -> CollectionConfig:
        self._check_session()
        layout = self.layout(tenant, name)
        new = self.db.altered_config(layout.config, **kw)
        entry = self.control.view.collections[(tenant, name)]
        value = {**entry.value, "config": new.model_dump(mode="json")}
        rev = self.control.replace_collection(tenant, name, value, create_revision=layout.created)
        self.control.wait_for_revision(rev, 10.0)
        # Replicas take the change now rather than at their next call, so a new field's index starts
        # building at once; a replica that is down takes it at its next call.
        layout = self.layout(tenant, name)
        hosted: dict[str, list[int]] = {}
        for s, reps in enumerate(layout.replicas):
            for n in reps:
                hosted.setdefault(n, []).append(s)
        calls = [self.call(n, "Sync", layout.msg(shards=shards), self.timeout) for n, shards in hosted.items()]
        for c in calls:
            try:
                c.result(self.timeout + 1)
            except EngramError as e:
                log.warning("node %s takes the altered configuration of %s later (%s)", c.peer, name, e.code)
        return layout.config

    # ------------------------------------------------------------ writes
    def write(self, layout: Layout, batches: Mapping[int, Mapping[str, Any]], level: str) -> dict[int, list[bool]]:
        """Send each shard's batch to all its replicas; the ``live`` flags of the acks (OR over replicas)."""
        self._check_session()
        want = needed(level, layout.rf)
        per_shard: dict[int, list[PeerCall]] = {}
        for shard, batch in batches.items():
            msg = layout.msg(shard, **batch)
            calls = []
            for node in layout.replicas[shard]:
                call = self.call(node, "Apply", msg, self.timeout)
                call.add_done_callback(self._missed_callback(layout, shard))
                calls.append(call)
            per_shard[shard] = calls
        out: dict[int, list[bool]] = {}
        settle_until = None
        for shard, calls in per_shard.items():
            wait_quorum(calls, want, self.timeout)
            if settle_until is None:
                settle_until = time.monotonic() + self.settings.write_settle_ms / 1000
            # Enough acks; the other replicas are usually a moment behind. Waiting that moment (never
            # more than cluster.write_settle_ms) means a healthy cluster has the write everywhere when it
            # returns, so a search or graph read at ONE sees it (docs/decisions.md#cluster).
            wait_quorum(calls, len(calls), max(0.0, settle_until - time.monotonic()))
            acked = [c for c in calls if c.done() and c.error is None]
            if len(acked) < want:
                errs = [c.error for c in calls if c.done() and c.error is not None]
                # A request error (bad input) is the same on every replica: report it as it is.
                for e in errs:
                    if not retryable(e):
                        raise e
                raise Unavailable(
                    f"shard {shard} of {layout.name!r}: {len(acked)} replica(s) acknowledged the write, "
                    f"{want} required for consistency {level!r}; the write may have been stored on some replicas",
                    code="not_enough_replicas",
                    details={"shard": shard, "acked": len(acked), "required": want, "consistency": level},
                )
            flags: list[bool] | None = None
            for c in acked:
                live = c.result()["live"]
                flags = list(live) if flags is None else [a or bool(b) for a, b in zip(flags, live, strict=False)]
            out[shard] = flags or []
        return out

    def _missed_callback(self, layout: Layout, shard: int) -> Callable[[PeerCall], None]:
        def check(call: PeerCall) -> None:
            err = call.error
            if err is not None and retryable(err):
                self.missed_write(call.peer, layout, shard, err.code)

        return check

    # ------------------------------------------------------------- reads
    def gather(
        self, layout: Layout, shard: int, method: str, msg: Mapping[str, Any], want: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """``want`` answers ``(node, answer)`` from distinct replicas of ``shard`` (asking more when some fail)."""
        return self.fan_out(layout, want, method, [shard], lambda _: dict(msg), lambda ans: [ans])[shard]

    def fan_out(
        self,
        layout: Layout,
        want: int,
        method: str,
        shards: Iterable[int],
        build: Callable[[list[int]], dict[str, Any]],
        results: Callable[[dict[str, Any]], list[Any]],
    ) -> dict[int, list[tuple[str, Any]]]:
        """``want`` results ``(node, result)`` per shard, one call per node for all the shards it answers for.

        Replicas are tried in :meth:`_order` (this node, then healthy peers in turn); a shard whose
        node failed is asked of its next replica. ``build(shards)`` makes a node's message and
        ``results(answer)`` gives one result per shard, in the same order.
        """
        todo = {s: self._order(layout.replicas[s]) for s in shards}
        got: dict[int, list[tuple[str, Any]]] = {s: [] for s in todo}
        last_error: EngramError | None = None
        while True:
            plan: dict[str, list[int]] = {}
            for s, cands in todo.items():
                short = want - len(got[s])
                if short <= 0:
                    continue
                if len(cands) < short:
                    raise Unavailable(
                        f"shard {s} of {layout.name!r}: {len(got[s])} replica(s) answered, {want} required"
                        + (f" ({last_error.message})" if last_error else ""),
                        code="not_enough_replicas",
                        details={"shard": s, "acked": len(got[s]), "required": want},
                    )
                for node in cands[:short]:
                    plan.setdefault(node, []).append(s)
                todo[s] = cands[short:]
            if not plan:
                return got
            calls = [(part, self.call(node, method, build(part), self.timeout)) for node, part in plan.items()]
            for part, call in calls:
                try:
                    ans = call.result(self.timeout + 1)
                except EngramError as e:
                    if not retryable(e):
                        raise
                    last_error = e
                    continue
                for s, result in zip(part, results(ans), strict=True):
                    got[s].append((call.peer, result))

    def read(self, layout: Layout, ids: Sequence[str], include: frozenset[str], level: str) -> dict[str, Record | None]:
        """The newest version of each id over ``level`` replicas of its shard (None: absent, deleted, expired)."""
        by_shard: dict[int, list[str]] = {}
        for rid in dict.fromkeys(ids):
            by_shard.setdefault(layout.shard_of(rid), []).append(rid)
        want = needed(level, layout.rf)
        out: dict[str, Record | None] = {}
        for shard, sids in by_shard.items():
            answers = self.gather(layout, shard, "Read", layout.msg(shard, ids=sids, include=sorted(include)), want)
            best: dict[str, tuple[tuple[int, int] | None, Record | None]] = {rid: (None, None) for rid in sids}
            seen: list[tuple[str, list[tuple[int, int] | None]]] = []
            for node, ans in answers:
                versions: list[tuple[int, int] | None] = []
                for rid, item in zip(sids, ans["rows"], strict=True):
                    if item is None:
                        versions.append(None)
                        continue
                    v = wire.version(item[0])
                    versions.append(v)
                    if _newer(v, best[rid][0]):
                        best[rid] = (v, None if item[1] is None else wire.record_in(item[1]))
                seen.append((node, versions))
            for node, versions in seen:
                behind = [
                    rid for rid, v in zip(sids, versions, strict=True) if best[rid][0] is not None and v != best[rid][0]
                ]
                if behind:
                    self.stale_replica(node, layout, shard, behind)
            for rid in sids:
                out[rid] = best[rid][1]
        return out

    def scan_page(
        self,
        layout: Layout,
        level: str,
        *,
        cursor: str | None,
        limit: int,
        shards: Iterable[int] | None = None,
        **params: Any,
    ) -> tuple[list[Record], str | None]:
        """One page in id order over the shards, the newest version of each record, and the next cursor.

        The cursor is the engine's (the last id returned), so it is valid on any coordinator.
        """
        want = needed(level, layout.rf)
        merged: dict[str, Record] = {}
        boundary: str | None = None
        missing: dict[tuple[str, int], list[str]] = {}
        for shard in range(layout.shards) if shards is None else shards:
            msg = layout.msg(shard, cursor=cursor, limit=limit, **params)
            answers = self.gather(layout, shard, "Scan", msg, want)
            pages = [(node, [wire.record_in(r) for r in a["records"]], a["next"]) for node, a in answers]
            shard_bound = min((p[1][-1].id for p in pages if p[2] and p[1]), default=None)
            if shard_bound is not None and (boundary is None or shard_bound < boundary):
                boundary = shard_bound
            got: dict[str, dict[str, Record]] = {}
            for node, recs, _ in pages:
                got[node] = {r.id: r for r in recs if shard_bound is None or r.id <= shard_bound}
            ids = {rid for g in got.values() for rid in g}
            for rid in ids:
                have = [g[rid] for g in got.values() if rid in g]
                newest = max(have, key=_rec_version)
                merged[rid] = newest
                if len(have) < len(got):
                    for node, g in got.items():
                        if rid not in g:
                            missing.setdefault((node, shard), []).append(rid)
        # A replica that did not list a record may hold a newer version that no longer matches (a
        # delete, a changed field): ask it, and leave the record out when it does.
        for (node, shard), rids in missing.items():
            try:
                ans = self.call(node, "Read", layout.msg(shard, ids=rids, include=[]), self.timeout).result(
                    self.timeout + 1
                )
            except EngramError:
                continue
            for rid, item in zip(rids, ans["rows"], strict=True):
                if item is not None and wire.version(item[0]) > _rec_version(merged[rid]):
                    merged.pop(rid, None)
            self.stale_replica(node, layout, shard, rids)
        order = sorted(merged)
        if boundary is not None:
            order = [rid for rid in order if rid <= boundary]
        page = order[:limit]
        more = len(order) > limit or boundary is not None
        next_cursor = base64.urlsafe_b64encode(page[-1].encode()).decode() if more and page else None
        return [merged[rid] for rid in page], next_cursor


class ClusterCollection(CollectionAPI):
    """A collection of the cluster, at one consistency level (``with_consistency`` makes another)."""

    def __init__(self, coordinator: Coordinator, layout: Layout, level: str | None) -> None:
        self.co = coordinator
        self.layout = layout
        self.config = layout.config
        self._level = level

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def dimension(self) -> int:
        return self.config.dimension

    @property
    def metric(self) -> str:
        return self.config.metric

    def with_consistency(self, level: str) -> ClusterCollection:
        checked = validation.consistency(level)
        return ClusterCollection(self.co, self.layout, checked)

    def _write_level(self) -> str:
        return self._level or self.co.settings.write_consistency

    def _read_level(self) -> str:
        return self._level or self.co.settings.read_consistency

    def reindex_status(self) -> dict[str, Any] | None:
        return None

    # ------------------------------------------------------------ writes
    def upsert(self, records: Record | Mapping[str, Any] | Sequence[Record | Mapping[str, Any]]) -> list[str]:
        built = rows.upsert_rows(records, time.time(), self.config, self.co.hlc, self.co.embedder(self.layout))
        batches: dict[int, dict[str, Any]] = {}
        for rid, row in built:
            batches.setdefault(self.layout.shard_of(rid), {"records": []})["records"].append(
                [rid, wire.record_row_out(row)]
            )
        self.co.write(self.layout, batches, self._write_level())
        return [f"{row.hlc:016x}.{row.node:04x}" for _, row in built]

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
        cur = self.co.read(self.layout, [rid], ALL_FIELDS, self._read_level())[rid]
        if cur is None:
            raise NotFound(f"record {rid!r} does not exist in collection {self.name!r}", code="record_not_found")
        now = time.time()
        self.co.hlc.observe(_rec_version(cur))
        row = change.apply(_row_of(cur), now, self.config, self.co.hlc, self.co.embedder(self.layout))
        shard = self.layout.shard_of(rid)
        self.co.write(self.layout, {shard: {"records": [[rid, wire.record_row_out(row)]]}}, self._write_level())
        from engramdb.engine.records import RecordReader

        return RecordReader.to_record(rid, row, ALL_FIELDS)

    def delete(self, ids: str | Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None) -> int:
        if ids is None and filter is None:
            raise InvalidArgument("delete needs ids or a filter (use delete(filter={}) to delete everything)")
        id_list = [ids] if isinstance(ids, str) else list(ids or [])
        validation.batch(id_list, "ids")
        for i, rid in enumerate(id_list):
            validation.record_ref(rid, f"ids[{i}]")
        targets = dict.fromkeys(id_list)
        if filter is not None:
            compile_filter(filter)
            cursor = None
            while True:
                recs, cursor = self.co.scan_page(
                    self.layout, self._read_level(), cursor=cursor, limit=_SCAN_CHUNK, filter=filter, include=[]
                )
                targets.update(dict.fromkeys(r.id for r in recs))
                if cursor is None:
                    break
        deleted = 0
        tlist = list(targets)
        for start in range(0, len(tlist), _SCAN_CHUNK):
            chunk = tlist[start : start + _SCAN_CHUNK]
            now = time.time()
            batches: dict[int, dict[str, Any]] = {s: {"records": [], "detach": []} for s in range(self.layout.shards)}
            for rid in chunk:
                gone = rows.tombstone(now, self.co.hlc)
                batches[self.layout.shard_of(rid)]["records"].append([rid, wire.record_row_out(gone)])
                # Edges live in their source's shard: every shard may hold edges into this record.
                for b in batches.values():
                    b["detach"].append([rid, [gone.hlc, gone.node]])
            live = self.co.write(self.layout, batches, self._write_level())
            deleted += sum(sum(1 for flag in flags if flag) for flags in live.values())
        return deleted

    def refresh_ttl(self, ids: str | Sequence[str]) -> int:
        id_list = [ids] if isinstance(ids, str) else list(ids)
        validation.batch(id_list, "ids")
        for i, rid in enumerate(id_list):
            validation.record_ref(rid, f"ids[{i}]")
        current = self.co.read(self.layout, id_list, ALL_FIELDS, self._read_level())
        now = time.time()
        batches: dict[int, dict[str, Any]] = {}
        for rid, rec in current.items():
            if rec is None or rec.ttl_seconds is None:
                continue
            self.co.hlc.observe(_rec_version(rec))
            row = rows.refreshed_row(_row_of(rec), now, self.co.hlc)
            batches.setdefault(self.layout.shard_of(rid), {"records": []})["records"].append(
                [rid, wire.record_row_out(row)]
            )
        if not batches:
            return 0
        self.co.write(self.layout, batches, self._write_level())
        return sum(len(b["records"]) for b in batches.values())

    # ------------------------------------------------------------- reads
    def get(self, id: str, *, include: Iterable[str] | None = None, refresh_ttl: bool = False) -> Record | None:
        got = self.get_many([id], include=include, refresh_ttl=refresh_ttl)
        return got[0] if got else None

    def get_many(
        self, ids: Sequence[str], *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> list[Record]:
        inc = ALL_FIELDS if include is None else validation.include(include)
        validation.batch(ids, "ids")
        for i, rid in enumerate(ids):
            validation.record_ref(rid, f"ids[{i}]")
        found = self.co.read(self.layout, ids, inc, self._read_level())
        out = [rec for rid in ids if (rec := found.get(rid)) is not None]
        if refresh_ttl and out:
            self.refresh_ttl([r.id for r in out])
        return out

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        compile_filter(filter)
        level = self._read_level()
        want = needed(level, self.layout.rf)
        total = 0
        for shard in range(self.layout.shards):
            answers = self.co.gather(self.layout, shard, "Count", self.layout.msg(shard, filter=filter), want)
            counts = {a["count"] for _, a in answers}
            if len(counts) == 1:
                total += counts.pop()
                continue
            # The replicas disagree: count the newest version of each record, page by page.
            cursor = None
            while True:
                recs, cursor = self.co.scan_page(
                    self.layout, level, cursor=cursor, limit=_SCAN_CHUNK, shards=[shard], filter=filter, include=[]
                )
                total += len(recs)
                if cursor is None:
                    break
        return total

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
        validation.page_limit(limit)
        if include is not None:
            include = sorted(validation.include(include))
        compile_filter(filter) if filter else None
        if namespace_prefix:
            namespace_prefix = list(validation.namespace(namespace_prefix, "namespace_prefix"))
        if cursor is not None:
            try:
                base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode()
            except Exception as e:
                raise InvalidArgument("cursor is not one this collection returned", code="invalid_cursor") from e
        recs, nxt = self.co.scan_page(
            self.layout,
            self._read_level(),
            cursor=cursor,
            limit=limit,
            id_prefix=id_prefix,
            namespace_prefix=namespace_prefix,
            filter=filter,
            include=include,
        )
        return ScanPage(recs, nxt)

    def list_namespaces(
        self,
        prefix: Sequence[str] | None = None,
        *,
        suffix: Sequence[str] | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        validation.namespace_listing(max_depth, limit, offset)
        pre = list(validation.namespace(prefix, "prefix"))
        suf = list(validation.namespace(suffix, "suffix"))
        want = needed(self._read_level(), self.layout.rf)
        found: set[tuple[str, ...]] = set()
        for shard in range(self.layout.shards):
            msg = self.layout.msg(shard, prefix=pre, suffix=suf, max_depth=max_depth, limit=offset + limit)
            for _, a in self.co.gather(self.layout, shard, "Namespaces", msg, want):
                found.update(tuple(ns) for ns in a["namespaces"])
        return sorted(found)[offset : offset + limit]

    # ------------------------------------------------------------ search
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
        query = Query.parse(
            self.co.embedder(self.layout),
            self.dimension,
            self.metric,
            vector=vector,
            k=k,
            include=include,
            ef=ef,
            text=text,
            mode=mode,
        )
        k, inc, ef, mode = query.k, query.include, query.ef, query.mode
        q = None if query.vector is None else query.vector.tolist()
        compile_filter(filter)
        if mode in ("text", "hybrid") and not self.config.text_index:
            raise text_index_disabled(self.name)
        fetch = k if expand is None else max(k, graph.expand_seeds(expand, k))  # validates the spec first
        base = {"filter": filter, "ef": ef, "include": sorted(inc), "exact": exact}
        if mode == "hybrid":
            deep = max(fetch, 50)
            ranked = {
                "vector": self._scatter({**base, "vector": q, "k": deep, "mode": "vector"}, deep),
                "text": self._scatter({**base, "text": text, "k": deep, "mode": "text"}, deep),
            }
            by_id: dict[str, Hit] = {}
            labels: dict[str, int] = {}
            lists: dict[str, list[tuple[int, float]]] = {}
            for name, hits in ranked.items():
                for h in hits:
                    by_id.setdefault(h.id, h)
                    labels.setdefault(h.id, len(labels))
                lists[name] = [(labels[h.id], h.score) for h in hits]
            ids = {v: key for key, v in labels.items()}
            hits = [
                replace(by_id[ids[label]], score=score, signals=signals)
                for label, score, signals in fuse(lists, weights or {}, fetch)
            ]
        else:
            params: dict[str, Any] = {**base, "k": fetch, "mode": mode}
            if q is not None:
                params["vector"] = q
            if text is not None:
                params["text"] = text
            hits = self._scatter(params, fetch)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
        if expand is not None:
            hits = graph.expand_hits(self.graph_source(), hits, expand, compile_filter(filter), inc)
            if min_score is not None:
                hits = [h for h in hits if h.score >= min_score]
        if refresh_ttl and hits:
            self.refresh_ttl([h.id for h in hits])
        return hits if expand is not None else hits[:k]

    def _scatter(self, params: dict[str, Any], k: int) -> list[Hit]:
        """Search every shard (one replica each at ONE, one call per node) and merge the hits by score."""
        level = self._level or self.co.settings.search_consistency
        lay = self.layout
        answers = self.co.fan_out(
            lay,
            needed(level, lay.rf),
            "Search",
            range(lay.shards),
            lambda shards: lay.msg(shards=shards, params=params),
            lambda ans: ans["hits"],
        )
        hits: dict[str, Hit] = {}
        for results in answers.values():
            for _, shard_hits in results:
                for raw in shard_hits:
                    h = wire.hit_in(raw)
                    old = hits.get(h.id)
                    if old is None or (
                        h.record is not None
                        and old.record is not None
                        and _rec_version(h.record) > _rec_version(old.record)
                    ):
                        hits[h.id] = h
        return sorted(hits.values(), key=lambda h: (-h.score, h.id))[:k]

    # ------------------------------------------------------------- graph
    def graph_source(self) -> ClusterGraphSource:
        """The collection's graph over its shards, for the engine's walks (:mod:`engramdb.engine.graph`)."""
        return ClusterGraphSource(self)

    def link(
        self, edges: Edge | Mapping[str, Any] | Sequence[Edge | Mapping[str, Any]], *, create_missing: bool = False
    ) -> list[str]:
        graph.check_create_missing(create_missing)
        parsed = graph.parse_new_edges(edges)
        if not parsed:
            return []
        endpoints = graph.link_endpoints(parsed)
        if not create_missing:
            found = self.co.read(self.layout, endpoints, frozenset(), self._read_level())
            missing = [rid for rid in endpoints if found.get(rid) is None]
            if missing:
                raise graph.missing_endpoints_error(missing)
        now = time.time()
        versions = []
        batches: dict[int, dict[str, Any]] = {}
        for e in parsed:
            row = e.row(self.co.hlc.now(), now)
            versions.append(row.version)
            src, rel, dst = e.key
            # An edge lives in its source's shard, out and in keys both (docs/decisions.md#cluster).
            batches.setdefault(self.layout.shard_of(src), {"edges": []})["edges"].append(
                [src, rel, dst, wire.edge_row_out(row)]
            )
        self.co.write(self.layout, batches, self._write_level())
        return [version_str(v) for v in versions]

    def unlink(self, edges: Sequence[Any] | Mapping[str, Any] | Edge) -> int:
        keys = graph.parse_edge_keys(edges)
        if not keys:
            return 0
        now = time.time()
        batches: dict[int, dict[str, Any]] = {}
        for src, rel, dst in keys:
            row = graph.edge_tombstone(self.co.hlc.now(), now)
            batches.setdefault(self.layout.shard_of(src), {"edges": []})["edges"].append(
                [src, rel, dst, wire.edge_row_out(row)]
            )
        live = self.co.write(self.layout, batches, self._write_level())
        return sum(sum(1 for flag in flags if flag) for flags in live.values())

    def edges(
        self,
        id: str,
        *,
        direction: str = "out",
        relation: str | None = None,
        limit: int = 1000,
    ) -> list[Edge]:
        return graph.list_edges(self.graph_source(), id, direction=direction, relation=relation, limit=limit)

    def neighbors(
        self,
        id: str,
        *,
        hops: int = 1,
        relations: Sequence[str] | None = None,
        direction: str = "out",
        limit: int = 100,
        fanout: int | None = None,
        include: Iterable[str] | None = ("metadata", "text"),
        timeout_ms: float = 2000,
    ) -> list[Hit]:
        return graph.walk_neighbors(
            self.graph_source(),
            id,
            hops=hops,
            relations=relations,
            direction=direction,
            limit=limit,
            fanout=fanout,
            include=include,
            timeout_ms=timeout_ms,
        )

    def subgraph(
        self,
        ids: Sequence[str],
        *,
        hops: int = 1,
        relations: Sequence[str] | None = None,
        direction: str = "both",
        limit: int = 500,
        include: Iterable[str] | None = ("metadata", "text"),
        timeout_ms: float = 2000,
    ) -> dict[str, Any]:
        return graph.walk_subgraph(
            self.graph_source(),
            ids,
            hops=hops,
            relations=relations,
            direction=direction,
            limit=limit,
            include=include,
            timeout_ms=timeout_ms,
        )

    # -------------------------------------------------------- extraction
    @property
    def hlc(self) -> HLC:
        return self.co.hlc

    @property
    def embedder(self) -> Any:
        return self.co.embedder(self.layout)

    def apply_rows(
        self, records: Sequence[tuple[str, RecordRow]] = (), edges: Sequence[tuple[str, str, str, EdgeRow]] = ()
    ) -> list[bool]:
        """Send finished rows (an extraction's) to their shards' replicas, acknowledged at the write consistency."""
        batches: dict[int, dict[str, Any]] = {}
        for rid, row in records:
            batches.setdefault(self.layout.shard_of(rid), {"records": [], "edges": []})["records"].append(
                [rid, wire.record_row_out(row)]
            )
        for src, rel, dst, erow in edges:
            batches.setdefault(self.layout.shard_of(src), {"records": [], "edges": []})["edges"].append(
                [src, rel, dst, wire.edge_row_out(erow)]
            )
        self.co.write(self.layout, batches, self._write_level())
        return []

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

        return extract_into(
            self,
            text,
            extractor,
            instructions=instructions,
            namespace=namespace,
            dedupe_threshold=dedupe_threshold,
            source_id=source_id,
        )


class ClusterGraphSource:
    """A collection's graph over its shards (:class:`engramdb.engine.graph.GraphSource`).

    Out-edges of a node are in its own shard; its in-edges are in the shards of their sources, so
    in-edges are asked of every shard and merged in scan order before the cap, which gives exactly
    the rows one node would return. Adjacency is read from one replica per shard (like search, at
    the collection's search consistency); liveness and records at its read consistency, cached
    for the walk.
    """

    batch_nodes = 1000  # one round trip per batch: large batches

    def __init__(self, coll: ClusterCollection) -> None:
        self.coll = coll
        self.co = coll.co
        self.layout = coll.layout
        self._rows: dict[str, Record | None] = {}

    @property
    def name(self) -> str:
        return self.layout.name

    def __enter__(self) -> ClusterGraphSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _ask(
        self, method: str, parts: Mapping[int, list[str]], extra: Mapping[str, Any]
    ) -> dict[int, dict[str, list[Any]]]:
        lay = self.layout
        # Adjacency is read from one replica per shard, like search at ONE (docs/cluster.md); the
        # records the walk returns are read at the collection's read consistency.
        answers = self.co.fan_out(
            lay,
            1,
            method,
            parts.keys(),
            lambda shards: lay.msg(parts=[[s, parts[s]] for s in shards], **extra),
            lambda ans: ans["parts"],
        )
        return {s: got[0][1] for s, got in answers.items()}

    def _one_direction(
        self,
        method: str,
        nodes: Sequence[str],
        direction: str,
        relations: tuple[str, ...] | None,
        limit: int | None,
        extra: Mapping[str, Any],
        other: Callable[[Any], tuple[str, str]],
    ) -> dict[str, list[Any]]:
        lay = self.layout
        msg = {
            "direction": direction,
            "relations": None if relations is None else list(relations),
            "limit": limit,
            **extra,
        }
        if direction == "out":
            parts: dict[int, list[str]] = {}
            for n in nodes:
                parts.setdefault(lay.shard_of(n), []).append(n)
            out: dict[str, list[Any]] = {}
            for got in self._ask(method, parts, msg).values():
                out.update(got)
            return out
        every = {s: list(nodes) for s in range(lay.shards)}
        merged: dict[str, list[Any]] = {n: [] for n in nodes}
        for got in self._ask(method, every, msg).values():
            for n, items in got.items():
                merged[n].extend(items)
        key = graph.scan_order(relations)
        for items in merged.values():
            items.sort(key=lambda it: key(*other(it)))
            if limit is not None:
                del items[limit:]
        return merged

    def adjacent(
        self, nodes: Sequence[str], direction: str, relations: tuple[str, ...] | None, limit_per_node: int | None
    ) -> dict[str, list[graph.Adj]]:
        nodes = list(dict.fromkeys(nodes))
        out: dict[str, list[graph.Adj]] = {n: [] for n in nodes}
        for d in ("out", "in") if direction == "both" else (direction,):
            got = self._one_direction("Adjacent", nodes, d, relations, limit_per_node, {}, lambda a: (a[2], a[0]))
            for n in nodes:
                out[n].extend(graph.Adj(a[0], a[1], a[2], a[3], float(a[4])) for a in got.get(n, []))
        return out

    def edges(
        self,
        nodes: Sequence[str],
        direction: str,
        relations: tuple[str, ...] | None,
        limit_per_node: int | None,
        *,
        targets: Any = None,
    ) -> dict[str, list[Edge]]:
        nodes = list(dict.fromkeys(nodes))
        extra = {} if targets is None else {"targets": sorted(targets)}

        def other(e: Mapping[str, Any]) -> tuple[str, str]:
            return (e["relation"], e["src"] if direction == "in" else e["dst"])

        got = self._one_direction("Edges", nodes, direction, relations, limit_per_node, extra, other)
        return {n: [Edge.from_dict(e) for e in got.get(n, [])] for n in nodes}

    def _load(self, ids: Iterable[str]) -> None:
        todo = [rid for rid in dict.fromkeys(ids) if rid not in self._rows]
        if todo:
            self._rows.update(self.co.read(self.layout, todo, _ROW_FIELDS, self.coll._read_level()))

    def live(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        self._load(ids)
        return {rid for rid in ids if self._rows.get(rid) is not None}

    def rows(self, ids: Sequence[str]) -> list[RecordRow | None]:
        self._load(ids)
        return [None if (r := self._rows.get(rid)) is None else _row_of(r) for rid in ids]

    def records(
        self,
        pairs: Sequence[tuple[str, RecordRow | None]],
        include: frozenset[str],
        now: float,
        flt: Any = None,
    ) -> list[Record | None]:
        from engramdb.engine.records import RecordReader

        ids = [rid for rid, row in pairs if row is not None]
        full = self.co.read(self.layout, ids, include, self.coll._read_level()) if "vector" in include else {}
        out: list[Record | None] = []
        for rid, row in pairs:
            if row is None or not row.live(now):
                out.append(None)
            elif "vector" in include:
                out.append(full.get(rid))
            else:
                out.append(RecordReader.to_record(rid, row, include))
        return out


_ROW_FIELDS = ALL_FIELDS - {"vector"}
