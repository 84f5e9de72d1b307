"""Graph operations of a collection: edges, traversal and graph-expansion search.

Storage: every edge ``(src, relation, dst)`` is two RocksDB rows written in one
atomic mutation through :meth:`Store.apply` — ``edges_out`` keyed by ``src``
and ``edges_in`` keyed by ``dst`` — so both directions are a prefix scan and
can never disagree. Unlinking writes a tombstone row (same function, same LWW
rule), which every read here skips.

Visibility: an edge is *visible* only while both of its endpoints are live
records (not deleted, not expired). Edges to missing ids (written with
``create_missing=True``) or to expired records stay stored but are never
listed or traversed, so "deleted means gone" holds on every graph path even
before the TTL sweeper or a delete has removed the rows. Liveness is read from
the in-memory vector index (``label_of`` + ``expires``), which the writer
thread updates before a write is acknowledged; records that are returned are
re-checked against their stored row.

See ``docs/graph.md`` for the user-facing contract (API, scoring, bounds).
"""

from __future__ import annotations

import contextlib
import heapq
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from engramdb import validation
from engramdb.engine.hlc import HLC, version_str
from engramdb.errors import DeadlineExceeded, InvalidArgument, NotFound
from engramdb.storage import keyspace
from engramdb.storage.codec import EdgeRow, RecordRow, decode_edge
from engramdb.storage.store import Mutation, Store
from engramdb.types import Edge, Hit, Record

if TYPE_CHECKING:
    from engramdb.engine.hlc import HLC
    from engramdb.engine.records import RecordReader
    from engramdb.filters import Filter
    from engramdb.storage.store import Store

# Edge rows read per node and direction during a traversal. A hub with more
# edges than this is only partly explored; without a cap one celebrity node
# could make every traversal that touches it scan millions of rows.
SCAN_CAP = 10_000
DEFAULT_GRAPH_TIMEOUT_MS = 2000

_EDGE_FIELDS = frozenset({"src", "relation", "dst", "weight", "properties", "version"})
_EXPAND_KEYS = frozenset(
    {"hops", "relations", "direction", "fanout", "limit", "decay", "timeout_ms", "seeds", "use_importance"}
)
_DEFAULT_INCLUDE = ("metadata", "text")

EdgeKey = tuple[str, str, str]


class GraphIndexes(Protocol):
    """What graph reads of a collection's indexes (:class:`~engramdb.engine.indexes.CollectionIndexes`)."""

    def alive_fn(self) -> Callable[[str], bool]:
        """A liveness test for record ids at a fixed 'now', from memory."""
        ...


class ExpandTarget(Protocol):
    """What graph expansion of search hits needs of a collection (:func:`expand_hits`)."""

    @property
    def store(self) -> Store: ...

    @property
    def prefix(self) -> bytes: ...

    @property
    def indexes(self) -> GraphIndexes: ...

    @property
    def reader(self) -> RecordReader: ...


def _include(value: Iterable[str] | None) -> frozenset[str]:
    return validation.include(value)


@dataclass(frozen=True, slots=True)
class _NewEdge:
    src: str
    relation: str
    dst: str
    weight: float
    properties: dict[str, Any]

    @property
    def key(self) -> EdgeKey:
        return (self.src, self.relation, self.dst)


def _edge_dict(item: Any, where: str) -> Mapping[str, Any]:
    if isinstance(item, Edge):
        return item.__dict__
    if isinstance(item, Mapping):
        if not _EDGE_FIELDS.issuperset(item):
            unknown = set(item) - _EDGE_FIELDS
            raise InvalidArgument(
                f"{where} has unknown fields {sorted(map(str, unknown))}; allowed: {sorted(_EDGE_FIELDS)}",
                code="invalid_edge",
            )
        return item
    raise InvalidArgument(f"{where} must be an Edge or a dict with src, relation and dst", code="invalid_edge")


def _parse_new_edge(item: Any, where: str) -> _NewEdge:
    d = _edge_dict(item, where)
    src = validation.record_id(d.get("src"), f"{where}.src")
    dst = validation.record_id(d.get("dst"), f"{where}.dst")
    try:
        rel = validation.relation(d.get("relation"))
    except InvalidArgument as e:
        raise InvalidArgument(f"{where}.{e.message}", code=e.code) from e
    weight = validation.edge_weight(d.get("weight"), f"{where}.weight")
    try:
        props = validation.metadata(d.get("properties"))
    except InvalidArgument as e:
        # The shared JSON checks speak of "metadata"; say which field it was.
        raise InvalidArgument(f"{where}.properties: {e.message}", code="invalid_properties") from e
    return _NewEdge(src, rel, dst, weight, props)


def _parse_edge_key(item: Any, where: str) -> EdgeKey:
    """The (src, relation, dst) of an unlink item: a 3-tuple, a dict or an Edge."""
    if isinstance(item, (Edge, Mapping)):
        d = _edge_dict(item, where)
        src, rel, dst = d.get("src"), d.get("relation"), d.get("dst")
    elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 3:
        src, rel, dst = item
    else:
        raise InvalidArgument(
            f"{where} must be a (src, relation, dst) tuple, a dict with those keys, or an Edge", code="invalid_edge"
        )
    try:
        relation = validation.relation_ref(rel)
    except InvalidArgument as e:
        raise InvalidArgument(f"{where}.{e.message}", code=e.code) from e
    # Naming an edge to remove: edges stored before control characters were refused stay removable.
    return (validation.record_ref(src, f"{where}.src"), relation, validation.record_ref(dst, f"{where}.dst"))


@dataclass(frozen=True, slots=True)
class ExpandSpec:
    """A validated ``expand`` argument of :meth:`Collection.search` (see docs/graph.md)."""

    hops: int = 1
    relations: tuple[str, ...] | None = None
    direction: str = "out"
    fanout: int = 20
    limit: int = 50
    decay: float = 0.5
    timeout_ms: float = 1000.0
    seeds: int | None = None
    use_importance: bool = False


def parse_expand(spec: Any) -> ExpandSpec:
    """Validate an ``expand`` dict; unknown keys and out-of-range values raise InvalidArgument.

    A key set to None takes its default, so JSON clients may send nulls.
    """
    if isinstance(spec, ExpandSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise InvalidArgument("expand must be an object such as {'hops': 2}", code="invalid_expand")
    unknown = set(spec) - _EXPAND_KEYS
    if unknown:
        raise InvalidArgument(
            f"expand has unknown keys {sorted(map(str, unknown))}; allowed: {sorted(_EXPAND_KEYS)}",
            code="invalid_expand",
        )
    d = ExpandSpec()
    s = {k: v for k, v in spec.items() if v is not None}
    decay = s.get("decay", d.decay)
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0 < decay <= 1):
        raise InvalidArgument(f"expand.decay must be a number in (0, 1], got {decay!r}", code="invalid_expand")
    use_imp = s.get("use_importance", d.use_importance)
    if not isinstance(use_imp, bool):
        raise InvalidArgument("expand.use_importance must be true or false", code="invalid_expand")
    seeds = s.get("seeds")
    return ExpandSpec(
        hops=validation.hops(s.get("hops", d.hops), "expand.hops"),
        relations=validation.relations(s.get("relations"), "expand.relations"),
        direction=validation.direction(s.get("direction", d.direction), "expand.direction"),
        fanout=validation.fanout(s.get("fanout", d.fanout), "expand.fanout", "invalid_expand"),
        limit=validation.graph_limit(s.get("limit", d.limit), "expand.limit", "invalid_expand"),
        decay=float(decay),
        timeout_ms=validation.timeout_ms(s.get("timeout_ms", d.timeout_ms), "expand.timeout_ms"),
        seeds=None
        if seeds is None
        else validation.int_in_range(seeds, "expand.seeds", 1, validation.MAX_K, "invalid_expand"),
        use_importance=use_imp,
    )


def expand_seeds(spec: Any, k: int) -> int:
    """How many ranked hits search must fetch for this expand spec (validating it first).

    Called by search before it runs, so a bad spec fails fast and writes/reads nothing.
    """
    seeds = parse_expand(spec).seeds
    return k if seeds is None else seeds


# ------------------------------------------------------------------ traversal
@dataclass(slots=True)
class _Adj:
    """One visible edge seen from a node: ``other`` is the neighbour across it."""

    other: str
    src: str
    relation: str
    dst: str
    weight: float

    def step(self) -> dict[str, Any]:
        return {"src": self.src, "relation": self.relation, "dst": self.dst, "weight": self.weight}


_U16 = struct.Struct(">H")


class _EdgeReader:
    """Adjacency scans for one traversal, one RocksDB iterator per column family.

    A traversal seeks hundreds of adjacency lists; re-seeking one iterator is
    cheaper than creating one per node, and it reads one consistent view. Use
    it as a context manager: iterators must be gone before the store closes.
    """

    def __init__(self, store: Store, prefix: bytes):
        self.store = store
        self.prefix = prefix
        self._its: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _EdgeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._its.clear()
        self._stack.close()  # drops (and so closes) the iterators

    def scan(
        self, cf: str, node: str, relations: tuple[str, ...] | None, cap: int | None = None
    ) -> Iterator[tuple[str, str, bytes]]:
        """(relation, other node, raw edge row) of ``node``'s edges in ``cf``, in key order."""
        it = self._its.get(cf)
        if it is None:
            it = self._its[cf] = self._stack.enter_context(self.store.iterator(cf, self.prefix))
        node_prefix = keyspace.edge_node_prefix(self.prefix, node)
        # Keys are prefix | u16 len + node | u16 len + relation | other node
        # (storage/keyspace.py); parsing just the tail after the known node prefix
        # is the hot loop of every traversal.
        off = len(node_prefix)
        prefixes = (
            [node_prefix] if relations is None else [keyspace.edge_node_prefix(self.prefix, node, r) for r in relations]
        )
        n = 0
        for p in prefixes:
            it.seek(p)
            while it.valid():
                k = it.key()
                if not k.startswith(p):
                    break
                (ln,) = _U16.unpack_from(k, off)
                yield k[off + 2 : off + 2 + ln].decode(), k[off + 2 + ln :].decode(), it.value()
                n += 1
                if cap is not None and n >= cap:
                    return
                it.next()


def _adjacent(rd: _EdgeReader, node: str, direction: str, relations: tuple[str, ...] | None) -> list[_Adj]:
    """Stored, non-tombstoned edges of ``node`` (liveness of the other end is the caller's check)."""
    out: list[_Adj] = []
    if direction in ("out", "both"):
        for r, dst, v in rd.scan("edges_out", node, relations, SCAN_CAP):
            row = decode_edge(v)
            if not row.deleted:
                out.append(_Adj(dst, node, r, dst, row.weight))
    if direction in ("in", "both"):
        for r, src, v in rd.scan("edges_in", node, relations, SCAN_CAP):
            row = decode_edge(v)
            if not row.deleted:
                out.append(_Adj(src, src, r, node, row.weight))
    return out


def _importance_factor(row: RecordRow | None) -> float:
    """``1 + importance`` (floored at 0) for records that have one; 1 otherwise."""
    if row is None or row.importance is None:
        return 1.0
    return max(0.0, 1.0 + row.importance)


class GraphMixin:
    """Edge and traversal methods, mixed into :class:`~engramdb.engine.collection.Collection`."""

    if TYPE_CHECKING:
        # Provided by Collection; declared so the mixin type-checks on its own.
        store: Store
        hlc: HLC
        prefix: bytes

        @property
        def name(self) -> str: ...

        @property
        def indexes(self) -> GraphIndexes: ...

        @property
        def reader(self) -> RecordReader: ...

        def _check_open(self) -> None: ...

        def _edge_tombstones(self, rid: str, now: float) -> list[Mutation]: ...

    # -------------------------------------------------------------- writes
    def link(
        self, edges: Edge | Mapping[str, Any] | Sequence[Edge | Mapping[str, Any]], *, create_missing: bool = False
    ) -> list[str]:
        self._check_open()
        if not isinstance(create_missing, bool):
            raise InvalidArgument("create_missing must be true or false", code="invalid_argument")
        items: list[Any] = [edges] if isinstance(edges, (Edge, Mapping)) else list(edges)
        validation.batch(items, "edges")
        parsed = [_parse_new_edge(it, f"edges[{i}]") for i, it in enumerate(items)]
        seen: set[EdgeKey] = set()
        for i, e in enumerate(parsed):
            if e.key in seen:
                raise InvalidArgument(
                    f"edges[{i}] ({e.src!r}, {e.relation!r}, {e.dst!r}) appears twice in one batch",
                    code="duplicate_edge",
                )
            seen.add(e.key)
        if not parsed:
            return []
        endpoints = list(dict.fromkeys(rid for e in parsed for rid in (e.src, e.dst)))
        if not create_missing:
            missing = self._not_live(endpoints)
            if missing:
                raise NotFound(
                    f"cannot link to records that do not exist or have expired: {missing[:10]!r}"
                    f"{' …' if len(missing) > 10 else ''}; create them first or pass create_missing=True",
                    code="record_not_found",
                    details={"missing": missing[:100]},
                )
        now = time.time()
        muts: list[Mutation] = []
        for e in parsed:
            hlc, node = self.hlc.now()
            muts.append(
                Mutation(
                    keyspace.CHANGE_EDGE,
                    self.prefix,
                    keyspace.edge_out_key(self.prefix, e.src, e.relation, e.dst),
                    EdgeRow(hlc, node, False, e.weight, e.properties, updated_at=now),
                    in_key=keyspace.edge_in_key(self.prefix, e.src, e.relation, e.dst),
                )
            )
        self.store.apply(muts)
        if not create_missing:
            # A delete of an endpoint may have committed between our check and
            # our write, after it tombstoned that record's edges. Re-check and
            # remove what the delete would have removed, so the delete wins
            # instead of leaving an edge that resurfaces if the id is reused.
            gone = self._not_live(endpoints)
            if gone:
                t = time.time()
                self.store.apply([m for rid in gone for m in self._edge_tombstones(rid, t)])
        return [version_str(m.row.version) for m in muts]

    def unlink(self, edges: Sequence[Any] | Mapping[str, Any] | Edge) -> int:
        self._check_open()
        items: list[Any] = [edges] if isinstance(edges, (Edge, Mapping)) else list(edges)
        validation.batch(items, "edges")
        keys = list(dict.fromkeys(_parse_edge_key(it, f"edges[{i}]") for i, it in enumerate(items)))
        if not keys:
            return 0
        out_keys = [keyspace.edge_out_key(self.prefix, s, r, d) for s, r, d in keys]
        now = time.time()
        muts: list[Mutation] = []
        for (s, r, d), ok, raw in zip(keys, out_keys, self.store.multi_get("edges_out", out_keys), strict=True):
            # Absent or already-removed edges need no tombstone: nothing to hide.
            if raw is None or decode_edge(raw).deleted:
                continue
            hlc, node = self.hlc.now()
            muts.append(
                Mutation(
                    keyspace.CHANGE_EDGE,
                    self.prefix,
                    ok,
                    EdgeRow(hlc, node, True, updated_at=now),
                    in_key=keyspace.edge_in_key(self.prefix, s, r, d),
                )
            )
        if not muts:
            return 0
        changes = self.store.apply(muts)
        return sum(1 for c in changes if c.applied and isinstance(c.old, EdgeRow) and not c.old.deleted)

    # --------------------------------------------------------------- reads
    def edges(
        self,
        id: str,
        *,
        direction: str = "out",
        relation: str | None = None,
        limit: int = 1000,
    ) -> list[Edge]:
        self._check_open()
        rid = validation.record_ref(id)
        direction = validation.direction(direction)
        rel = None if relation is None else validation.relation_ref(relation)
        limit = validation.graph_limit(limit)
        alive = self.indexes.alive_fn()
        self._require_live(rid, alive)
        out: list[Edge] = []
        seen: set[EdgeKey] = set()
        for cf in ("edges_out", "edges_in") if direction == "both" else (f"edges_{direction}",):
            for k, v in self.store.iter_prefix(cf, keyspace.edge_node_prefix(self.prefix, rid, rel)):
                row = decode_edge(v)
                if row.deleted:
                    continue
                a, r, b = keyspace.parse_edge_key(k)
                src, dst = (a, b) if cf == "edges_out" else (b, a)
                if (src, r, dst) in seen or not alive(b):
                    continue  # a self-loop shows once under "both"
                seen.add((src, r, dst))
                out.append(Edge(src, r, dst, row.weight, row.properties, version_str(row.version)))
                if len(out) >= limit:
                    return out
        return out

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
        timeout_ms: float = DEFAULT_GRAPH_TIMEOUT_MS,
    ) -> list[Hit]:
        self._check_open()
        rid = validation.record_ref(id)
        hops = validation.hops(hops)
        rels = validation.relations(relations)
        direction = validation.direction(direction)
        limit = validation.graph_limit(limit)
        if fanout is not None:
            fanout = validation.fanout(fanout)
        inc = _include(include)
        deadline = time.monotonic() + validation.timeout_ms(timeout_ms) / 1000
        alive = self.indexes.alive_fn()
        self._require_live(rid, alive)
        with _EdgeReader(self.store, self.prefix) as rd:
            visited = {rid}
            frontier: list[tuple[str, float, tuple[_Adj, ...]]] = [(rid, 1.0, ())]
            found: list[tuple[str, float, int, tuple[_Adj, ...]]] = []
            for hop in range(1, hops + 1):
                level: dict[str, tuple[float, tuple[_Adj, ...]]] = {}
                for u, score, path in frontier:
                    if time.monotonic() > deadline:
                        raise DeadlineExceeded(
                            f"neighbors of {rid!r} took longer than {timeout_ms} ms; "
                            "lower hops, name relations, set a fanout or raise timeout_ms"
                        )
                    adj = [a for a in _adjacent(rd, u, direction, rels) if a.other not in visited and alive(a.other)]
                    if fanout is not None:
                        adj = sorted(adj, key=lambda a: -a.weight)[:fanout]
                    for a in adj:
                        cand = validation.bounded_score(score * a.weight)
                        cur = level.get(a.other)
                        if cur is None:
                            # Stop discovering once the answer is full; nodes already
                            # found may still improve their path below.
                            if len(found) + len(level) >= limit:
                                continue
                            level[a.other] = (cand, (*path, a))
                        elif cand > cur[0]:
                            level[a.other] = (cand, (*path, a))
                if not level:
                    break
                ordered = sorted(level.items(), key=lambda kv: (-kv[1][0], kv[0]))
                visited.update(level)
                found.extend((v, s, hop, p) for v, (s, p) in ordered)
                frontier = [(v, s, p) for v, (s, p) in ordered]
                if len(found) >= limit:
                    break
        hits = [Hit(id=v, score=s, hop=h, path=[a.step() for a in p]) for v, s, h, p in found[:limit]]
        return self._with_records(hits, inc)

    def subgraph(
        self,
        ids: str | Sequence[str],
        *,
        hops: int = 1,
        relations: str | Sequence[str] | None = None,
        direction: str = "both",
        limit: int = 500,
        include: Iterable[str] | None = _DEFAULT_INCLUDE,
        timeout_ms: float = DEFAULT_GRAPH_TIMEOUT_MS,
    ) -> dict[str, list[Any]]:
        self._check_open()
        id_list = [ids] if isinstance(ids, str) else list(ids)
        validation.batch(id_list, "ids")
        starts = [validation.record_ref(r, f"ids[{i}]") for i, r in enumerate(id_list)]
        hops = validation.hops(hops, lo=0)
        rels = validation.relations(relations)
        direction = validation.direction(direction)
        limit = validation.graph_limit(limit)
        inc = _include(include)
        deadline = time.monotonic() + validation.timeout_ms(timeout_ms) / 1000

        def check_time() -> None:
            if time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"subgraph took longer than {timeout_ms} ms; "
                    "lower hops or limit, name relations or raise timeout_ms"
                )

        alive = self.indexes.alive_fn()
        nodes: dict[str, None] = {}
        for r in starts:
            if len(nodes) < limit and alive(r):
                nodes[r] = None
        with _EdgeReader(self.store, self.prefix) as rd:
            frontier = list(nodes)
            for _ in range(hops):
                nxt: list[str] = []
                for u in frontier:
                    check_time()
                    for a in _adjacent(rd, u, direction, rels):
                        if len(nodes) >= limit:
                            break
                        if a.other not in nodes and alive(a.other):
                            nodes[a.other] = None
                            nxt.append(a.other)
                frontier = nxt
                if not frontier or len(nodes) >= limit:
                    break
            now = time.time()
            records: list[Record] = []
            kept: set[str] = set()
            node_ids = list(nodes)
            pairs = list(zip(node_ids, self.reader.rows(node_ids), strict=True))
            for rid, rec in zip(node_ids, self.reader.records(pairs, inc, now), strict=True):
                if rec is not None:
                    records.append(rec)
                    kept.add(rid)
            edge_list: list[Edge] = []
            for rec in records:
                check_time()
                # Scanning only out-edges lists each edge between kept nodes once.
                for r, dst, v in rd.scan("edges_out", rec.id, rels):
                    if dst not in kept:
                        continue
                    row_e = decode_edge(v)
                    if not row_e.deleted:
                        edge_list.append(
                            Edge(rec.id, r, dst, row_e.weight, row_e.properties, version_str(row_e.version))
                        )
        return {"nodes": records, "edges": edge_list}

    # ------------------------------------------------------------- helpers
    def _not_live(self, rids: Sequence[str]) -> list[str]:
        """Ids among ``rids`` that are not live records.

        Uses the same in-memory liveness as traversal (current for every
        acknowledged write), so "may be linked" and "is visible" agree, and a
        batch of thousands of edges is checked without decoding any row.
        """
        alive = self.indexes.alive_fn()
        return [r for r in rids if not alive(r)]

    def _require_live(self, rid: str, alive: Callable[[str], bool]) -> None:
        if not alive(rid):
            raise NotFound(f"record {rid!r} does not exist in collection {self.name!r}", code="record_not_found")

    def _with_records(self, hits: list[Hit], inc: frozenset[str]) -> list[Hit]:
        """Attach records (fields in ``inc``), dropping any node deleted meanwhile."""
        if not inc or not hits:
            return hits
        now = time.time()
        out = []
        pairs = list(zip([h.id for h in hits], self.reader.rows([h.id for h in hits]), strict=True))
        for h, rec in zip(hits, self.reader.records(pairs, inc, now), strict=True):
            if rec is not None:
                h.record = rec
                out.append(h)
        return out


# ------------------------------------------------------- expansion for search
@dataclass(slots=True)
class _Best:
    base: float  # seed_score * prod(decay * weight) along the path; what propagates
    hop: int
    path: tuple[_Adj, ...]  # edges from the seed; turned into dicts only for returned nodes
    seed: str
    hit: Hit | None = None  # the ranked hit, for nodes that came from search

    def nodes(self) -> set[str]:
        """Nodes on the path, so a walk never loops back onto itself."""
        out = {self.seed}
        for a in self.path:
            out.add(a.src)
            out.add(a.dst)
        return out


def expand_hits(
    coll: ExpandTarget,
    hits: list[Hit],
    expand: Any,
    flt: Filter | None,
    inc: frozenset[str],
) -> list[Hit]:
    """Graph-expansion of ranked search hits (best first); see docs/graph.md.

    The first ``seeds`` hits (all by default) start a level-by-level walk of up
    to ``hops`` edges. A node reached over edge ``e`` from ``u`` gets
    ``base(u) * decay * weight(e)``; a seed's base is its search score. Each
    node keeps its best base (and the hop and path that gave it), across seeds
    and hops; a node that improves is walked again from there. Per node the
    ``fanout`` heaviest eligible edges are followed, and the frontier of each
    hop keeps the ``limit`` best nodes (without ``use_importance``, only those
    at or above the ``limit``-th best score so far). Expanded nodes must be live and match
    ``flt``; nodes that do not are neither returned nor walked through. With
    ``use_importance`` a node's reported score is ``base * max(0, 1 +
    importance)`` (1 when it has none); importance does not propagate. Returns
    the given hits and the expanded nodes by score (desc), cut to ``limit``.
    Past ``timeout_ms`` the walk stops and what was found so far is returned.
    """
    spec = parse_expand(expand)
    if not hits:
        return []
    deadline = time.monotonic() + spec.timeout_ms / 1000
    alive = coll.indexes.alive_fn()
    rows: dict[str, RecordRow | None] = {}

    def load_rows(ids: Iterable[str]) -> None:
        need = [r for r in dict.fromkeys(ids) if r not in rows]
        if need:
            rows.update(zip(need, coll.reader.rows(need), strict=True))

    now = time.time()

    def eligible(rid: str) -> bool:
        """May an expanded node be returned and walked through (given a filter)?"""
        row = rows.get(rid)
        return row is not None and row.live(now) and (flt is None or flt.matches(rid, row.namespace, row.metadata))

    best: dict[str, _Best] = {}
    for h in hits:
        if h.id not in best:
            best[h.id] = _Best(validation.bounded_score(h.score), 0, (), h.id, h)
    n_seeds = len(hits) if spec.seeds is None else min(spec.seeds, len(hits))
    frontier = list(dict.fromkeys(h.id for h in hits[:n_seeds]))
    timed_out = False
    with _EdgeReader(coll.store, coll.prefix) as rd:
        for hop in range(1, spec.hops + 1):
            # Candidate edges of each frontier node, heaviest first. The frontier's
            # entries are frozen for the level: a node improved during this level is
            # walked again from its new score at the next one.
            cands: dict[str, list[_Adj]] = {}
            level = {u: best[u] for u in frontier}
            for u, bu in level.items():
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                on_path = bu.nodes()
                adj = [a for a in _adjacent(rd, u, spec.direction, spec.relations) if a.other not in on_path]
                adj.sort(key=lambda a: -a.weight)  # stable: ties keep key order
                cands[u] = [a for a in adj if alive(a.other)]
            # Pick up to `fanout` eligible edges per node. With a filter that needs
            # rows, read them in rounds (one multi_get per round for the whole
            # level) so a node whose first choices fail the filter reaches further.
            if flt is None:
                chosen = {u: c[: spec.fanout] for u, c in cands.items()}
            else:
                chosen = {u: [] for u in cands}
                pos = dict.fromkeys(cands, 0)
                pending = [u for u in cands if cands[u]]
                while pending:
                    want: dict[str, list[_Adj]] = {}
                    for u in pending:
                        take = spec.fanout - len(chosen[u])
                        want[u] = cands[u][pos[u] : pos[u] + take]
                        pos[u] += take
                    load_rows(a.other for batch in want.values() for a in batch)
                    for u, batch in want.items():
                        chosen[u].extend(a for a in batch if eligible(a.other))
                    pending = [u for u in pending if len(chosen[u]) < spec.fanout and pos[u] < len(cands[u])]
            updated: dict[str, None] = {}
            for u in cands:
                bu = level[u]
                for a in chosen[u]:
                    cand = validation.bounded_score(bu.base * spec.decay * a.weight)
                    cur = best.get(a.other)
                    if cur is None or cand > cur.base:
                        best[a.other] = _Best(cand, hop, (*bu.path, a), bu.seed, cur.hit if cur else None)
                        updated[a.other] = None
            # Walk on from the nodes this hop improved, best first, as a beam of `limit`.
            frontier = sorted(updated, key=lambda r: (-best[r].base, r))[: spec.limit]
            if frontier and not spec.use_importance and len(best) >= spec.limit:
                # A step multiplies by decay * weight, which is <= 1 for the usual
                # weights in [0, 1/decay]: nothing reached from a node scoring
                # below the current limit-th best can make the answer. Skip those
                # nodes (their adjacency reads are the cost of expansion).
                bar = heapq.nlargest(spec.limit, (b.base for b in best.values()))[-1]
                frontier = [u for u in frontier if best[u].base >= bar]
            if timed_out or not frontier:
                break

    def final_score(rid: str) -> float:
        b = best[rid].base
        return validation.bounded_score(b * _importance_factor(rows.get(rid))) if spec.use_importance else b

    order = list(best)
    if spec.use_importance:
        load_rows(order)
    order.sort(key=lambda r: (-final_score(r), best[r].hop, r))
    out: list[Hit] = []
    # Materialise in slices: rows are needed for records (and a last liveness
    # check), and reading every discovered node would waste I/O on the tail.
    i = 0
    while len(out) < spec.limit and i < len(order):
        chunk = order[i : i + spec.limit - len(out)]
        i += len(chunk)
        expanded = [r for r in chunk if best[r].hit is None]
        recs: dict[str, Record | None] = {}
        if inc or flt is not None:
            load_rows(expanded)
            if inc:
                got = coll.reader.records([(r, rows.get(r)) for r in expanded], inc, now, flt)
                recs = dict(zip(expanded, got, strict=True))
        for rid in chunk:
            b = best[rid]
            score = final_score(rid)
            if b.hit is not None:
                out.append(Hit(rid, score, b.hit.record, b.hop, [a.step() for a in b.path], b.hit.signals))
                continue
            rec = recs.get(rid)
            if inc and rec is None:
                continue  # deleted while we walked
            out.append(Hit(rid, score, rec, b.hop, [a.step() for a in b.path], {}))
    return out


def edge_tombstones(store: Store, hlc: HLC, prefix: bytes, rid: str, now: float) -> list[Mutation]:
    """Tombstone mutations for every live edge touching ``rid``, in both directions.

    Used by record deletes and TTL expiry, so a record never leaves edges behind.
    """
    out = []
    for cf in ("edges_out", "edges_in"):
        for k, v in store.iter_prefix(cf, keyspace.edge_node_prefix(prefix, rid)):
            if decode_edge(v).deleted:
                continue
            a, rel, b = keyspace.parse_edge_key(k)
            src, dst = (a, b) if cf == "edges_out" else (b, a)
            version = hlc.now()
            out.append(
                Mutation(
                    keyspace.CHANGE_EDGE,
                    prefix,
                    keyspace.edge_out_key(prefix, src, rel, dst),
                    EdgeRow(version[0], version[1], True, updated_at=now),
                    in_key=keyspace.edge_in_key(prefix, src, rel, dst),
                )
            )
    return out
