"""The replica side of node-to-node calls: a node's shard replicas, served from its engine.

Shard ``s`` of collection ``c`` (tenant ``t``) is, on each node of its replica set, an ordinary
engine collection of tenant ``t`` named ``<c>.r<rev>.s<s>``, where ``rev`` is the etcd revision
that created the collection: a collection deleted and created again under the same name gets new
replicas, and a node that missed the deletion can never mix the two. Users never see these names:
in cluster mode collections are listed from etcd.

A replica is created when the first call for it arrives, from the schema in this node's view of
etcd (waiting briefly for the view to reach the caller's revision), and only on a node the
placement names. Writes arrive as finished rows (:mod:`engramdb.engine.rows`) and go through the
engine's one mutation path, :meth:`~engramdb.engine.collection.Collection.apply_rows`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engramdb import validation
from engramdb.cluster import wire
from engramdb.cluster.control import ControlPlane, Entry, View
from engramdb.engine import backup
from engramdb.engine.budget import query_budget
from engramdb.engine.collection import Collection
from engramdb.engine.database import Database
from engramdb.errors import FailedPrecondition, InvalidArgument, NotFound
from engramdb.storage import keyspace
from engramdb.types import CollectionConfig

log = logging.getLogger("engramdb.cluster")

VIEW_WAIT_SECONDS = 5.0
_REPLICA_NAME = re.compile(r"^(?P<coll>.+)\.r(?P<rev>[0-9]+)\.s(?P<shard>[0-9]+)$")


def replica_name(collection: str, rev: int, shard: int) -> str:
    """The engine collection that holds ``shard`` of ``collection`` (created at etcd revision ``rev``)."""
    suffix = f".r{rev}.s{shard}"
    # Names are at most 128 characters; the revision alone is unique, the name is kept for people.
    return collection[: 128 - len(suffix)] + suffix


def parse_replica_name(name: str) -> tuple[str, int, int] | None:
    m = _REPLICA_NAME.match(name)
    return None if m is None else (m["coll"], int(m["rev"]), int(m["shard"]))


def naming_rev(entry: Entry) -> int:
    """The revision in a collection's replica names: its creation's, kept across a restore (``replica_rev``)."""
    return int(entry.value.get("replica_rev", entry.create_revision))


def schema_config(value: Any) -> CollectionConfig:
    """The user's configuration as stored in etcd (``schema/collections/<t>/<c>``)."""
    return CollectionConfig.from_stored(dict(value["config"]))


def _ids(value: Any, what: str = "ids") -> list[str]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{what} must be a list", code="malformed_request")
    return [validation.record_ref(v, what) for v in value]


class Replicas:
    """This node's shard replicas and the handlers of the internal service."""

    def __init__(
        self,
        db: Database,
        control: ControlPlane,
        node_id: str,
        query_timeout: float,
        *,
        backup_dir: Path | None = None,
        min_free_mb: int = 0,
    ) -> None:
        self.db = db
        self.backup_dir = backup_dir  # the operator's backup.dir on this node
        self.min_free_mb = min_free_mb
        self.control = control
        self.node_id = node_id
        self.query_timeout = query_timeout
        self._lock = threading.Lock()
        self._synced: dict[tuple[str, str], int] = {}  # replica -> schema mod_revision its config matches

    # ------------------------------------------------------------ lookup
    def _view_at(self, rev: int) -> View:
        view = self.control.view
        if view.revision < rev:
            view = self.control.wait_for_revision(rev, VIEW_WAIT_SECONDS)
        return view

    def shard(self, msg: dict[str, Any], shard: int | None = None) -> Collection:
        """The local replica the message names (created on first use); NotFound / not_a_replica otherwise."""
        t = validation.name(msg.get("t"), "tenant")
        c = validation.name(msg.get("c"), "collection")
        rev = msg.get("rev")
        s = msg.get("shard") if shard is None else shard
        at = msg.get("at")  # the etcd revision that created the collection, as the coordinator saw it
        if not all(isinstance(v, int) and v >= 0 for v in (rev, s, at)):
            raise InvalidArgument("rev, at and shard must be integers", code="malformed_request")
        assert isinstance(rev, int) and isinstance(s, int) and isinstance(at, int)
        view = self._view_at(at)
        entry = view.collections.get((t, c))
        if entry is None or naming_rev(entry) != rev:
            raise NotFound(f"collection {c!r} does not exist", code="collection_not_found")
        placed = view.placement.get((t, c, s))
        if placed is None or self.node_id not in (*placed.value.get("replicas", ()), *placed.value.get("pending", ())):
            raise FailedPrecondition(f"this node holds no replica of shard {s} of {t}/{c}", code="not_a_replica")
        name = replica_name(c, rev, s)
        try:
            coll = self.db.get_collection(name, tenant=t)
        except NotFound:
            pass
        else:
            if self._synced.get((t, name)) != entry.mod_revision:
                self._sync_config(coll, t, name, schema_config(entry.value), entry.mod_revision)
            return coll
        with self._lock:
            try:
                return self.db.get_collection(name, tenant=t)
            except NotFound:
                cfg = schema_config(entry.value)
                log.info("creating replica of shard %d of %s/%s", s, t, c)
                # No embedder: coordinators send vectors, and embed query text themselves.
                self._synced[(t, name)] = entry.mod_revision
                return self.db.create_collection(
                    name,
                    cfg.dimension,
                    cfg.metric,
                    tenant=t,
                    index=cfg.index.model_dump(mode="json"),
                    default_ttl_seconds=cfg.default_ttl_seconds,
                    indexed_fields=dict(cfg.indexed_fields),
                    text_index=cfg.text_index,
                    exist_ok=True,
                )

    def _sync_config(self, coll: Collection, tenant: str, name: str, want: CollectionConfig, mod_rev: int) -> None:
        """Apply an ``alter_collection`` made through any coordinator to this replica (indexed fields, ef, TTL)."""
        have = coll.config
        change: dict[str, Any] = {}
        fields: dict[str, str | None] = {
            k: v for k, v in want.indexed_fields.items() if have.indexed_fields.get(k) != v
        }
        fields.update({k: None for k in have.indexed_fields if k not in want.indexed_fields})
        if fields:
            change["indexed_fields"] = fields
        if want.index.ef_search != have.index.ef_search:
            change["ef_search"] = want.index.ef_search
        if want.default_ttl_seconds != have.default_ttl_seconds:
            change["default_ttl_seconds"] = want.default_ttl_seconds
        if change:
            log.info("replica %s/%s takes the altered configuration: %s", tenant, name, sorted(change))
            self.db.alter_collection(name, tenant=tenant, **change)
        self._synced[(tenant, name)] = mod_rev

    def drop_orphans(self, view: View) -> int:
        """Erase local replicas of collections whose deletion etcd records (``dropped/`` marks).

        Only a positive mark counts: a collection missing from etcd (an empty or older etcd after
        a restore, an operator's mistake) leaves the replica alone, reported by :meth:`unknown`.
        """
        dropped = 0
        for tenant in self.db.list_tenants():
            for cfg in self.db.list_collections(tenant=tenant):
                parsed = parse_replica_name(cfg.name)
                if parsed is None or (tenant, parsed[0], parsed[1]) not in view.dropped:
                    continue
                log.info("erasing replica %s/%s: its collection was deleted", tenant, cfg.name)
                try:
                    self.db.delete_collection(cfg.name, tenant=tenant)
                    dropped += 1
                except NotFound:
                    pass
        return dropped

    def unknown(self, view: View) -> list[str]:
        """Local replicas of collections etcd neither holds nor marks deleted (kept; the operator decides)."""
        out = []
        for tenant in self.db.list_tenants():
            for cfg in self.db.list_collections(tenant=tenant):
                parsed = parse_replica_name(cfg.name)
                if parsed is None:
                    continue
                entry = view.collections.get((tenant, parsed[0]))
                if (entry is None or naming_rev(entry) != parsed[1]) and (
                    tenant,
                    parsed[0],
                    parsed[1],
                ) not in view.dropped:
                    out.append(f"{tenant}/{cfg.name}")
        return out

    # ----------------------------------------------------------- handlers
    def handlers(self) -> dict[str, Callable[[dict[str, Any], str], dict[str, Any]]]:
        return {
            "Apply": self.apply,
            "Read": self.read,
            "Scan": self.scan,
            "Count": self.count,
            "Namespaces": self.namespaces,
            "Search": self.search,
            "Adjacent": self.adjacent,
            "Edges": self.edges,
            "Sync": self.sync,
            "Backup": self.backup,
        }

    def backup(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        """This node's part of a cluster backup: a backup named ``name`` in this node's ``backup.dir``."""
        if self.backup_dir is None:
            raise FailedPrecondition(
                f"node {self.node_id} has no backup directory: set backup.dir (ENGRAMDB_BACKUP__DIR) on every node",
                code="backup_not_configured",
            )
        dest = backup.backup_path(self.backup_dir, str(msg.get("name")))
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        info = backup.create_backup(self.db, dest, min_free_mb=self.min_free_mb)
        log.info("backup %s of node %s created for a cluster backup", dest.name, self.node_id)
        return {"node": self.node_id, "backup": info}

    def sync(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        """Bring this node's replicas of ``shards`` to the schema's configuration now (after an alter)."""
        shards = msg.get("shards")
        if not isinstance(shards, list):
            raise InvalidArgument("shards must be a list", code="malformed_request")
        for s in shards:
            self.shard(msg, s)
        return {"synced": len(shards)}

    def apply(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        coll = self.shard(msg)
        records = [(validation.record_ref(r[0]), wire.record_row_in(r[1])) for r in msg.get("records") or ()]
        edges = [
            (validation.record_ref(e[0]), str(e[1]), validation.record_ref(e[2]), wire.edge_row_in(e[3]))
            for e in msg.get("edges") or ()
        ]
        detach = [(validation.record_ref(d[0]), wire.version(d[1])) for d in msg.get("detach") or ()]
        return {"live": coll.apply_rows(records, edges, detach)}

    def read(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        """Each id's stored version (tombstones too) and, for live rows, the record with ``include``."""
        coll = self.shard(msg)
        ids = _ids(msg.get("ids"))
        inc = validation.include(msg.get("include") or ())
        now = time.time()
        rows = coll.store.get_records([keyspace.record_key(coll.prefix, rid) for rid in ids])
        live = [(rid, row) for rid, row in zip(ids, rows, strict=True) if row is not None and row.live(now)]
        records = {r.id: r for r in coll.reader.records(live, inc, now) if r is not None}
        out: list[Any] = []
        for rid, row in zip(ids, rows, strict=True):
            if row is None:
                out.append(None)
                continue
            rec = records.get(rid)
            out.append([[row.hlc, row.node], None if rec is None else wire.record_out(rec)])
        return {"rows": out}

    def scan(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        coll = self.shard(msg)
        with query_budget(self.query_timeout):
            page = coll.scan(
                cursor=msg.get("cursor"),
                limit=msg.get("limit", 100),
                id_prefix=msg.get("id_prefix"),
                namespace_prefix=msg.get("namespace_prefix"),
                filter=msg.get("filter"),
                include=msg.get("include"),
            )
        return {"records": [wire.record_out(r) for r in page.records], "next": page.next_cursor}

    def count(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        coll = self.shard(msg)
        with query_budget(self.query_timeout):
            return {"count": coll.count(msg.get("filter"))}

    def namespaces(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        coll = self.shard(msg)
        found = coll.list_namespaces(
            msg.get("prefix"),
            suffix=msg.get("suffix"),
            max_depth=msg.get("max_depth"),
            limit=msg.get("limit", 100),
            offset=0,
        )
        return {"namespaces": [list(ns) for ns in found]}

    def search(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        """Search each named shard (``shards``) with the same parameters; hits of all of them."""
        shards = msg.get("shards")
        if not isinstance(shards, list) or not shards:
            raise InvalidArgument("shards must be a non-empty list", code="malformed_request")
        params = dict(msg.get("params") or {})
        out = []
        with query_budget(self.query_timeout):
            for s in shards:
                coll = self.shard(msg, s)
                hits = coll.search(**params)
                out.append([wire.hit_out(h) for h in hits])
        return {"hits": out}

    def _graph_request(
        self, msg: dict[str, Any]
    ) -> tuple[list[tuple[int, list[str]]], str, tuple[str, ...] | None, int | None]:
        parts = msg.get("parts")
        if not isinstance(parts, list) or not parts:
            raise InvalidArgument("parts must be a non-empty list", code="malformed_request")
        direction = msg.get("direction")
        if direction not in ("out", "in", "both"):
            raise InvalidArgument("direction must be out, in or both", code="malformed_request")
        rels = msg.get("relations")
        relations = None if rels is None else tuple(validation.relation_ref(r) for r in rels)
        limit = msg.get("limit")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise InvalidArgument("limit must be a positive integer", code="malformed_request")
        return [(int(p[0]), _ids(p[1], "nodes")) for p in parts], direction, relations, limit

    def adjacent(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        """Live edges of nodes, per shard (``parts``: [[shard, nodes], ...]), as graph.Adj fields."""
        parts, direction, relations, limit = self._graph_request(msg)
        out = []
        for s, nodes in parts:
            with self.shard(msg, s).graph_source() as src:
                adj = src.adjacent(nodes, direction, relations, limit)
            out.append({n: [[a.other, a.src, a.relation, a.dst, a.weight] for a in adj.get(n, [])] for n in nodes})
        return {"parts": out}

    def edges(self, msg: dict[str, Any], caller: str) -> dict[str, Any]:
        """Whole live edges of nodes in one direction, per shard; ``targets`` keeps edges to those ids only."""
        parts, direction, relations, limit = self._graph_request(msg)
        raw_targets = msg.get("targets")
        targets = None if raw_targets is None else set(_ids(raw_targets, "targets"))
        out = []
        for s, nodes in parts:
            with self.shard(msg, s).graph_source() as src:
                got = src.edges(nodes, direction, relations, limit, targets=targets)
            out.append({n: [e.to_dict() for e in got.get(n, [])] for n in nodes})
        return {"parts": out}
