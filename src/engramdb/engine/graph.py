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
before the TTL sweeper or a delete has removed the rows. In the engine,
liveness is read from the in-memory vector index (``label_of`` + ``expires``),
which the writer thread updates before a write is acknowledged; records that
are returned are re-checked against their stored row.

Every read walk (:func:`list_edges`, :func:`walk_neighbors`,
:func:`walk_subgraph`, :func:`expand_hits`) runs over a :class:`GraphSource`:
batches of adjacency lists, liveness and record rows. The engine's source is
:class:`StoreGraphSource`; a cluster coordinator implements the same protocol
with one request per node per batch, and gets the engine's results, scores,
ordering and errors because the walk itself is this one code.

See ``docs/graph.md`` for the user-facing contract (API, scoring, bounds).
"""

from __future__ import annotations

import heapq
import struct
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from engramdb import validation
from engramdb.engine.hlc import HLC, version_str
from engramdb.errors import DeadlineExceeded, InvalidArgument, NotFound
from engramdb.storage import keyspace
from engramdb.storage.codec import EdgeRow, RecordRow, decode_edge
from engramdb.storage.store import Mutation, Store, check_iterator
from engramdb.types import Edge, Hit, Record

if TYPE_CHECKING:
    from engramdb.engine.hlc import HLC
    from engramdb.engine.records import RecordReader
    from engramdb.filters import Filter
    from engramdb.storage.store import Store

# Live edge rows read per node and direction during a traversal. A hub with
# more edges than this is only partly explored; without a cap one celebrity
# node could make every traversal that touches it scan millions of rows.
# Removed edges (tombstones) are skipped and not counted, so every shard of a
# cluster can cut the same rows as a single node would.
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


@dataclass(slots=True)
class Adj:
    r"""One live edge seen from a node: ``other`` is the neighbour across it.

    ``other`` is ``dst`` for an out-edge and ``src`` for an in-edge (both for
    a self-loop). Walks need only the weight; listings read whole
    :class:`~engramdb.types.Edge`\ s (:meth:`GraphSource.edges`).
    """

    other: str
    src: str
    relation: str
    dst: str
    weight: float

    def step(self) -> dict[str, Any]:
        return {"src": self.src, "relation": self.relation, "dst": self.dst, "weight": self.weight}


class GraphSource(Protocol):
    """What every graph read needs of a collection: batched adjacency, liveness and record rows.

    The engine implements it over RocksDB (:class:`StoreGraphSource`); a
    cluster coordinator over its shards. The walks call each method once per
    batch of at most :attr:`batch_nodes` nodes, never once per edge.
    """

    @property
    def name(self) -> str:
        """The collection's name, for error messages."""
        ...

    @property
    def batch_nodes(self) -> int:
        """How many frontier nodes the walks pass to one :meth:`adjacent` call.

        Small for a local store (the time limit is checked between batches);
        large for a remote source (one round trip per batch).
        """
        ...

    def adjacent(
        self,
        nodes: Sequence[str],
        direction: str,
        relations: tuple[str, ...] | None,
        limit_per_node: int | None,
    ) -> dict[str, list[Adj]]:
        """The live (not removed) edges of each node in ``direction`` ("out", "in" or "both").

        Whether the other endpoint is live is NOT checked here. Per node, the
        out-edges come first, then the in-edges, each in scan order
        (:func:`scan_order`). ``relations`` (None: all) restricts the
        relation. ``limit_per_node`` (None: no limit) caps the edges returned
        per node and direction: the first ones in scan order, removed edges
        not counted. Every node of ``nodes`` is a key of the result.
        """
        ...

    def edges(
        self,
        nodes: Sequence[str],
        direction: str,
        relations: tuple[str, ...] | None,
        limit_per_node: int | None,
        *,
        targets: Container[str] | None = None,
    ) -> dict[str, list[Edge]]:
        """As :meth:`adjacent` for one direction ("out" or "in"), as whole edges (properties, version).

        ``targets`` (None: all) keeps only edges whose other endpoint is in
        it; ``limit_per_node`` counts the edges kept.
        """
        ...

    def live(self, ids: Iterable[str]) -> AbstractSet[str]:
        """The ids among ``ids`` (which may repeat) that are live records: stored, not deleted, not expired."""
        ...

    def rows(self, ids: Sequence[str]) -> list[RecordRow | None]:
        """Stored rows (live or not; vectors need not be loaded) for ids, in order; None where absent."""
        ...

    def records(
        self,
        pairs: Sequence[tuple[str, RecordRow | None]],
        include: frozenset[str],
        now: float,
        flt: Filter | None = None,
    ) -> list[Record | None]:
        """Public records of ``(id, row)`` pairs, as :meth:`RecordReader.records` (None: absent or not live)."""
        ...


class ExpandTarget(Protocol):
    """What graph expansion of search hits needs of a collection (:func:`expand_hits`)."""

    def graph_source(self) -> AbstractContextManager[GraphSource]: ...


def scan_order(relations: tuple[str, ...] | None) -> Callable[[str, str], tuple[Any, ...]]:
    """The sort key ``key(relation, other)`` of one node's edges in one direction, in scan order.

    For merging partial adjacency lists (a coordinator's per-shard in-edges):
    sort by this key, then apply the cap. A node's edges are stored under
    ``node | relation | other`` with the relation length-prefixed, so without
    ``relations`` they come by relation (shorter UTF-8 first, then bytewise),
    then by the other endpoint's UTF-8 bytes; with ``relations`` they come
    relation by relation in the order given, then by the other endpoint.
    """
    if relations is None:

        def key(relation: str, other: str) -> tuple[Any, ...]:
            rel = relation.encode()
            return (len(rel), rel, other.encode())

        return key
    rank = {r: i for i, r in enumerate(relations)}

    def key_ranked(relation: str, other: str) -> tuple[Any, ...]:
        return (rank[relation], other.encode())

    return key_ranked


def _include(value: Iterable[str] | None) -> frozenset[str]:
    return validation.include(value)


@dataclass(frozen=True, slots=True)
class NewEdge:
    """A validated edge to write (:func:`parse_new_edges`)."""

    src: str
    relation: str
    dst: str
    weight: float
    properties: dict[str, Any]

    @property
    def key(self) -> EdgeKey:
        return (self.src, self.relation, self.dst)

    def row(self, version: tuple[int, int], now: float) -> EdgeRow:
        """The stored edge row at HLC ``version``, written at ``now`` (Unix seconds)."""
        return EdgeRow(version[0], version[1], False, self.weight, self.properties, updated_at=now)


def edge_tombstone(version: tuple[int, int], now: float) -> EdgeRow:
    """The row that removes an edge (unlink, or a deleted/expired endpoint) at HLC ``version``."""
    return EdgeRow(version[0], version[1], True, updated_at=now)


def edge_mutation(prefix: bytes, key: EdgeKey, row: EdgeRow) -> Mutation:
    """The one mutation that writes ``row`` under both the out- and the in-key of edge ``key``."""
    src, rel, dst = key
    return Mutation(
        keyspace.CHANGE_EDGE,
        prefix,
        keyspace.edge_out_key(prefix, src, rel, dst),
        row,
        in_key=keyspace.edge_in_key(prefix, src, rel, dst),
    )


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


def _edge_items(edges: Any) -> list[Any]:
    items: list[Any] = [edges] if isinstance(edges, (Edge, Mapping)) else list(edges)
    validation.batch(items, "edges")
    return items


def parse_new_edge(item: Any, where: str) -> NewEdge:
    """One edge to write: an Edge or a dict; InvalidArgument naming ``where`` otherwise."""
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
    return NewEdge(src, rel, dst, weight, props)


def parse_new_edges(edges: Any) -> list[NewEdge]:
    """The ``edges`` argument of ``link`` (one edge or a batch), validated as a whole, in order.

    Raises InvalidArgument for any bad item or an edge given twice; nothing
    may be written then.
    """
    parsed = [parse_new_edge(it, f"edges[{i}]") for i, it in enumerate(_edge_items(edges))]
    seen: set[EdgeKey] = set()
    for i, e in enumerate(parsed):
        if e.key in seen:
            raise InvalidArgument(
                f"edges[{i}] ({e.src!r}, {e.relation!r}, {e.dst!r}) appears twice in one batch",
                code="duplicate_edge",
            )
        seen.add(e.key)
    return parsed


def check_create_missing(value: Any) -> bool:
    """The ``create_missing`` argument of ``link``."""
    if not isinstance(value, bool):
        raise InvalidArgument("create_missing must be true or false", code="invalid_argument")
    return value


def link_endpoints(edges: Sequence[NewEdge]) -> list[str]:
    """The distinct endpoints of ``edges``, in order: what must be live for ``create_missing=False``."""
    return list(dict.fromkeys(rid for e in edges for rid in (e.src, e.dst)))


def missing_endpoints_error(missing: Sequence[str]) -> NotFound:
    """The error of ``link`` when endpoints in ``missing`` are not live records."""
    return NotFound(
        f"cannot link to records that do not exist or have expired: {list(missing[:10])!r}"
        f"{' …' if len(missing) > 10 else ''}; create them first or pass create_missing=True",
        code="record_not_found",
        details={"missing": list(missing[:100])},
    )


def parse_edge_key(item: Any, where: str) -> EdgeKey:
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


def parse_edge_keys(edges: Any) -> list[EdgeKey]:
    """The ``edges`` argument of ``unlink`` (one item or a batch): distinct keys, in order."""
    return list(dict.fromkeys(parse_edge_key(it, f"edges[{i}]") for i, it in enumerate(_edge_items(edges))))


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
_U16 = struct.Struct(">H")


class StoreGraphSource:
    """The :class:`GraphSource` of an engine collection: RocksDB adjacency, in-memory liveness.

    One traversal seeks hundreds of adjacency lists; re-seeking one iterator
    per column family is cheaper than creating one per node, and it reads one
    consistent view. Use it as a context manager: iterators must be gone
    before the store closes. Liveness is taken at the first :meth:`live` call
    (a fixed 'now' for the whole walk), so building one costs nothing.
    """

    # Nodes per adjacency batch: the walks check their time limit between batches.
    batch_nodes = 16

    def __init__(self, name: str, store: Store, prefix: bytes, indexes: GraphIndexes, reader: RecordReader):
        self.name = name
        self.store = store
        self.prefix = prefix
        self.indexes = indexes
        self.reader = reader
        self._alive: Callable[[str], bool] | None = None
        self._its: dict[str, Any] = {}
        # The iterators' context managers, closed on exit (a plain list: an
        # ExitStack costs more than a one-edge edges() call spends on reading).
        self._open: list[AbstractContextManager[Any]] = []

    def __enter__(self) -> StoreGraphSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self._its.clear()
        opened, self._open = self._open, []
        err: BaseException | None = None
        for cm in reversed(opened):
            try:
                cm.__exit__(None, None, None)  # drops (and so closes) the iterator
            except BaseException as e:  # close the others too, then report the first failure
                err = err or e
        if err is not None:
            raise err

    def adjacent(
        self,
        nodes: Sequence[str],
        direction: str,
        relations: tuple[str, ...] | None,
        limit_per_node: int | None,
    ) -> dict[str, list[Adj]]:
        out: dict[str, list[Adj]] = {}
        for node in nodes:
            adj: list[Adj] = []
            if direction in ("out", "both"):
                self._scan(adj, "edges_out", node, relations, limit_per_node, False, None)
            if direction in ("in", "both"):
                self._scan(adj, "edges_in", node, relations, limit_per_node, False, None)
            out[node] = adj
        return out

    def edges(
        self,
        nodes: Sequence[str],
        direction: str,
        relations: tuple[str, ...] | None,
        limit_per_node: int | None,
        *,
        targets: Container[str] | None = None,
    ) -> dict[str, list[Edge]]:
        cf = "edges_out" if direction == "out" else "edges_in"
        out: dict[str, list[Edge]] = {}
        for node in nodes:
            found: list[Edge] = []
            self._scan(found, cf, node, relations, limit_per_node, True, targets)
            out[node] = found
        return out

    def _scan(
        self,
        out: list[Any],
        cf: str,
        node: str,
        relations: tuple[str, ...] | None,
        cap: int | None,
        whole: bool,
        targets: Container[str] | None,
    ) -> None:
        """Append ``node``'s live edges in ``cf`` to ``out`` in key order, at most ``cap`` of them.

        As :class:`~engramdb.types.Edge` objects if ``whole``, else as :class:`Adj`.
        """
        node_prefix = keyspace.edge_node_prefix(self.prefix, node)
        prefixes = (
            [node_prefix] if relations is None else [keyspace.edge_node_prefix(self.prefix, node, r) for r in relations]
        )
        it = self._its.get(cf)
        if it is None:
            # Created at the first prefix: one seek fewer for single-node reads (edges()).
            cm = self.store.iterator(cf, prefixes[0])
            it = self._its[cf] = cm.__enter__()
            self._open.append(cm)
        else:
            it.seek(prefixes[0])
        # Keys are prefix | u16 len + node | u16 len + relation | other node
        # (storage/keyspace.py); parsing just the tail after the known node prefix
        # is the hot loop of every traversal.
        off = len(node_prefix)
        outgoing = cf == "edges_out"
        valid, key, value, step = it.valid, it.key, it.value, it.next
        append = out.append
        unpack = _U16.unpack_from
        left = -1 if cap is None else cap  # never reaches 0 without a cap
        for i, p in enumerate(prefixes):
            if i:
                it.seek(p)
            while valid():
                k = key()
                if not k.startswith(p):
                    break
                (ln,) = unpack(k, off)
                other = k[off + 2 + ln :].decode()
                if targets is None or other in targets:
                    row = decode_edge(value())
                    if not row.deleted:
                        rel = k[off + 2 : off + 2 + ln].decode()
                        src, dst = (node, other) if outgoing else (other, node)
                        if whole:
                            append(Edge(src, rel, dst, row.weight, row.properties, version_str(row.version)))
                        else:
                            append(Adj(other, src, rel, dst, row.weight))
                        left -= 1
                        if not left:
                            return
                step()
            else:
                # The iterator also stops on a read error: that must not look like the end of the data.
                check_iterator(it)

    def live(self, ids: Iterable[str]) -> set[str]:
        if self._alive is None:
            self._alive = self.indexes.alive_fn()
        alive = self._alive
        return {r for r in ids if alive(r)}

    def rows(self, ids: Sequence[str]) -> list[RecordRow | None]:
        return self.reader.rows(ids)

    def records(
        self,
        pairs: Sequence[tuple[str, RecordRow | None]],
        include: frozenset[str],
        now: float,
        flt: Filter | None = None,
    ) -> list[Record | None]:
        return self.reader.records(pairs, include, now, flt)


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, size)
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _importance_factor(row: RecordRow | None) -> float:
    """``1 + importance`` (floored at 0) for records that have one; 1 otherwise."""
    if row is None or row.importance is None:
        return 1.0
    return max(0.0, 1.0 + row.importance)


def require_live(source: GraphSource, rid: str) -> None:
    """NotFound (``record_not_found``) unless ``rid`` is a live record: the start of a walk must exist."""
    if rid not in source.live((rid,)):
        raise NotFound(f"record {rid!r} does not exist in collection {source.name!r}", code="record_not_found")


def attach_records(source: GraphSource, hits: list[Hit], inc: frozenset[str]) -> list[Hit]:
    """Attach records (fields in ``inc``) to ``hits``, dropping any node deleted meanwhile."""
    if not inc or not hits:
        return hits
    now = time.time()
    out = []
    ids = [h.id for h in hits]
    pairs = list(zip(ids, source.rows(ids), strict=True))
    for h, rec in zip(hits, source.records(pairs, inc, now), strict=True):
        if rec is not None:
            h.record = rec
            out.append(h)
    return out


def list_edges(
    source: GraphSource,
    id: str,
    *,
    direction: str = "out",
    relation: str | None = None,
    limit: int = 1000,
) -> list[Edge]:
    """:meth:`Collection.edges` over ``source``: visible edges of a live record, out-edges first, in scan order."""
    rid = validation.record_ref(id)
    direction = validation.direction(direction)
    rel = None if relation is None else validation.relation_ref(relation)
    limit = validation.graph_limit(limit)
    require_live(source, rid)
    rels = None if rel is None else (rel,)
    dirs = ("out", "in") if direction == "both" else (direction,)
    # Edges to endpoints that are not live are hidden, so `limit` rows of a
    # direction may not be enough: that direction is read again with a larger
    # cap until `limit` visible edges are found or the node has no more.
    caps = dict.fromkeys(dirs, limit)
    rows: dict[str, list[Edge]] = {}
    others: dict[str, list[str]] = {}
    need: list[str] = []
    for d in dirs:
        rows[d] = source.edges([rid], d, rels, limit)[rid]
        others[d] = _others(d, rows[d])
        need += others[d]
    alive = source.live(need) if need else frozenset()
    while True:
        out: list[Edge] = []
        for d in dirs:
            # Under "both" a self-loop is listed once, with the out-edges: the
            # in-edges are used only after every out-edge was listed.
            skip_loops = d == "in" and direction == "both"
            for e, other in zip(rows[d], others[d], strict=True):
                if other in alive and not (skip_loops and e.src == e.dst):
                    out.append(e)
                    if len(out) >= limit:
                        return out
            if len(rows[d]) == caps[d]:
                break  # this direction may have more rows
        else:
            return out
        caps[d] *= 4
        rows[d] = source.edges([rid], d, rels, caps[d])[rid]
        others[d] = _others(d, rows[d])
        alive = {*alive, *source.live([o for o in others[d] if o not in alive])}


def _others(direction: str, edges: list[Edge]) -> list[str]:
    """The endpoint across each edge from the node whose ``direction`` edges these are."""
    return [e.dst for e in edges] if direction == "out" else [e.src for e in edges]


def walk_neighbors(
    source: GraphSource,
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
    """:meth:`Collection.neighbors` over ``source`` (see docs/graph.md)."""
    rid = validation.record_ref(id)
    hops = validation.hops(hops)
    rels = validation.relations(relations)
    direction = validation.direction(direction)
    limit = validation.graph_limit(limit)
    if fanout is not None:
        fanout = validation.fanout(fanout)
    inc = _include(include)
    deadline = time.monotonic() + validation.timeout_ms(timeout_ms) / 1000
    require_live(source, rid)
    visited = {rid}
    frontier: list[tuple[str, float, tuple[Adj, ...]]] = [(rid, 1.0, ())]
    found: list[tuple[str, float, int, tuple[Adj, ...]]] = []
    for hop in range(1, hops + 1):
        level: dict[str, tuple[float, tuple[Adj, ...]]] = {}
        for batch in _batches(frontier, source.batch_nodes):
            if time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"neighbors of {rid!r} took longer than {timeout_ms} ms; "
                    "lower hops, name relations, set a fanout or raise timeout_ms"
                )
            adjs = source.adjacent([u for u, _, _ in batch], direction, rels, SCAN_CAP)
            alive = source.live(a.other for lst in adjs.values() for a in lst if a.other not in visited)
            for u, score, path in batch:
                adj = [a for a in adjs[u] if a.other in alive]
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
    return attach_records(source, hits, inc)


def walk_subgraph(
    source: GraphSource,
    ids: str | Sequence[str],
    *,
    hops: int = 1,
    relations: str | Sequence[str] | None = None,
    direction: str = "both",
    limit: int = 500,
    include: Iterable[str] | None = _DEFAULT_INCLUDE,
    timeout_ms: float = DEFAULT_GRAPH_TIMEOUT_MS,
) -> dict[str, list[Any]]:
    """:meth:`Collection.subgraph` over ``source``: ``{"nodes": [Record], "edges": [Edge]}``."""
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
                f"subgraph took longer than {timeout_ms} ms; lower hops or limit, name relations or raise timeout_ms"
            )

    start_alive = source.live(starts)
    nodes: dict[str, None] = {}
    for r in starts:
        if len(nodes) < limit and r in start_alive:
            nodes[r] = None
    frontier = list(nodes)
    for _ in range(hops):
        nxt: list[str] = []
        for batch in _batches(frontier, source.batch_nodes):
            check_time()
            if len(nodes) >= limit:
                break
            adjs = source.adjacent(batch, direction, rels, SCAN_CAP)
            alive = source.live(a.other for lst in adjs.values() for a in lst if a.other not in nodes)
            for u in batch:
                for a in adjs[u]:
                    if len(nodes) >= limit:
                        break
                    if a.other in alive and a.other not in nodes:
                        nodes[a.other] = None
                        nxt.append(a.other)
        frontier = nxt
        if not frontier or len(nodes) >= limit:
            break
    now = time.time()
    records: list[Record] = []
    kept: set[str] = set()
    node_ids = list(nodes)
    pairs = list(zip(node_ids, source.rows(node_ids), strict=True))
    for rid, rec in zip(node_ids, source.records(pairs, inc, now), strict=True):
        if rec is not None:
            records.append(rec)
            kept.add(rid)
    edge_list: list[Edge] = []
    kept_ids = [rec.id for rec in records]
    for batch in _batches(kept_ids, source.batch_nodes):
        check_time()
        # Reading only out-edges lists each edge between kept nodes once.
        found = source.edges(batch, "out", rels, None, targets=kept)
        for u in batch:
            edge_list.extend(found[u])
    return {"nodes": records, "edges": edge_list}


# ------------------------------------------------------- expansion for search
@dataclass(slots=True)
class _Best:
    base: float  # seed_score * prod(decay * weight) along the path; what propagates
    hop: int
    path: tuple[Adj, ...]  # edges from the seed; turned into dicts only for returned nodes
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
    source: GraphSource,
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
    rows: dict[str, RecordRow | None] = {}

    def load_rows(ids: Iterable[str]) -> None:
        need = [r for r in dict.fromkeys(ids) if r not in rows]
        if need:
            rows.update(zip(need, source.rows(need), strict=True))

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
    for hop in range(1, spec.hops + 1):
        # Candidate edges of each frontier node, heaviest first. The frontier's
        # entries are frozen for the level: a node improved during this level is
        # walked again from its new score at the next one.
        cands: dict[str, list[Adj]] = {}
        level = {u: best[u] for u in frontier}
        for batch in _batches(frontier, source.batch_nodes):
            if time.monotonic() > deadline:
                timed_out = True
                break
            adjs = source.adjacent(batch, spec.direction, spec.relations, SCAN_CAP)
            off_path: dict[str, list[Adj]] = {}
            for u in batch:
                on_path = level[u].nodes()
                adj = [a for a in adjs[u] if a.other not in on_path]
                adj.sort(key=lambda a: -a.weight)  # stable: ties keep scan order
                off_path[u] = adj
            alive = source.live(a.other for adj in off_path.values() for a in adj)
            for u in batch:
                cands[u] = [a for a in off_path[u] if a.other in alive]
        # Pick up to `fanout` eligible edges per node. With a filter that needs
        # rows, read them in rounds (one batch per round for the whole level)
        # so a node whose first choices fail the filter reaches further.
        if flt is None:
            chosen = {u: c[: spec.fanout] for u, c in cands.items()}
        else:
            chosen = {u: [] for u in cands}
            pos = dict.fromkeys(cands, 0)
            pending = [u for u in cands if cands[u]]
            while pending:
                want: dict[str, list[Adj]] = {}
                for u in pending:
                    take = spec.fanout - len(chosen[u])
                    want[u] = cands[u][pos[u] : pos[u] + take]
                    pos[u] += take
                load_rows(a.other for batch_adj in want.values() for a in batch_adj)
                for u, batch_adj in want.items():
                    chosen[u].extend(a for a in batch_adj if eligible(a.other))
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
                got = source.records([(r, rows.get(r)) for r in expanded], inc, now, flt)
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

    def graph_source(self) -> StoreGraphSource:
        """This collection as a :class:`GraphSource`; use it in a ``with`` block."""
        return StoreGraphSource(self.name, self.store, self.prefix, self.indexes, self.reader)

    # -------------------------------------------------------------- writes
    def link(
        self, edges: Edge | Mapping[str, Any] | Sequence[Edge | Mapping[str, Any]], *, create_missing: bool = False
    ) -> list[str]:
        self._check_open()
        check_create_missing(create_missing)
        parsed = parse_new_edges(edges)
        if not parsed:
            return []
        endpoints = link_endpoints(parsed)
        if not create_missing:
            missing = self._not_live(endpoints)
            if missing:
                raise missing_endpoints_error(missing)
        now = time.time()
        muts = [edge_mutation(self.prefix, e.key, e.row(self.hlc.now(), now)) for e in parsed]
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
        keys = parse_edge_keys(edges)
        if not keys:
            return 0
        out_keys = [keyspace.edge_out_key(self.prefix, s, r, d) for s, r, d in keys]
        now = time.time()
        muts: list[Mutation] = []
        for key, raw in zip(keys, self.store.multi_get("edges_out", out_keys), strict=True):
            # Absent or already-removed edges need no tombstone: nothing to hide.
            if raw is None or decode_edge(raw).deleted:
                continue
            muts.append(edge_mutation(self.prefix, key, edge_tombstone(self.hlc.now(), now)))
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
        with self.graph_source() as source:
            return list_edges(source, id, direction=direction, relation=relation, limit=limit)

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
        with self.graph_source() as source:
            return walk_neighbors(
                source,
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
        with self.graph_source() as source:
            return walk_subgraph(
                source,
                ids,
                hops=hops,
                relations=relations,
                direction=direction,
                limit=limit,
                include=include,
                timeout_ms=timeout_ms,
            )

    # ------------------------------------------------------------- helpers
    def _not_live(self, rids: Sequence[str]) -> list[str]:
        """Ids among ``rids`` that are not live records.

        Uses the same in-memory liveness as traversal (current for every
        acknowledged write), so "may be linked" and "is visible" agree, and a
        batch of thousands of edges is checked without decoding any row.
        """
        alive = self.indexes.alive_fn()
        return [r for r in rids if not alive(r)]


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
            out.append(edge_mutation(prefix, (src, rel, dst), edge_tombstone(hlc.now(), now)))
    return out
