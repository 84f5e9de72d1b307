"""LangGraph long-term memory on EngramDB: :class:`EngramStore`, a ``BaseStore``.

The store behaves like LangGraph's own ``InMemoryStore`` on the documented
semantics (items, namespaces, semantic search, filters, pagination,
``list_namespaces``), but keeps its data in an EngramDB collection, so it is
durable, shared between processes (through the server) and supports TTL.

How items map onto records (one collection holds everything)
------------------------------------------------------------

* **Item record** — id ``"i:" + JSON([*namespace, key])`` (ASCII-escaped; a
  SHA-256 digest ``"h:<hex>"`` when that would be longer than 400 bytes), so ids
  never collide and never need parsing: namespace and key are read back from the
  record. ``record.namespace`` is the item's namespace, which gives
  ``namespace_prefix`` filtering and ``list_namespaces`` from the engine's
  namespace index. ``metadata`` holds ``key``, ``value`` (filters become engine
  filters on ``value.<field>``), the item's own ``created_us``/``updated_us``
  timestamps, insertion-order counters (``seq``, ``ns_seq``), ``part`` (0),
  ``embedded`` and ``nvec``.
* **Extra vector records** — an item whose indexed fields yield several texts
  (``fields=["a", "b"]`` or ``"list[*].text"``) gets one record per extra text,
  id ``<item id>#<n>``, carrying the same metadata with ``part = n``, so filters
  apply to them directly. Search takes the best-scoring record per item, which
  is InMemoryStore's max-pooling.
* **Namespace registry records** — id ``"n:" + JSON(namespace)``, without a
  namespace and with ``part = -1``. They remember when a namespace was first
  used, because InMemoryStore lists items without a query grouped by namespace
  in first-use order, and that order must survive the namespace emptying.
* **Items without a vector.** The engine requires a vector per record. Without
  an ``index`` config the store's collection has ``dimension=1`` and every record
  carries ``[1.0]``. With an index, items that are not embedded (``index=False``,
  no text at the configured paths) carry the unit vector ``[1, 0, …, 0]`` (zero
  vectors are invalid under cosine) with ``embedded = False``, and every
  semantic query filters on ``embedded = True``, so placeholders never score.

Deliberate differences from ``InMemoryStore`` (documented in docs/integrations.md):
``created_at`` is the first creation time and survives updates (InMemoryStore
resets it on every put; the Postgres store keeps it, as ``Item`` documents);
updating an item with ``index=False`` removes its old vectors (InMemoryStore
keeps stale ones); a namespace is listed only while it holds items; range
operators on a missing or non-numeric field do not match (InMemoryStore raises
``TypeError``); values must be JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
)

from engramdb import validation
from engramdb.errors import AlreadyExists, InvalidArgument, NotFound

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from engramdb.types import Hit, Record, ScanPage

__all__ = ["EngramStore"]

# The engine's limits (engramdb/validation.py): the id bytes, the records or ids of one call, a search's k.
_MAX_ID_BYTES = validation.MAX_ID_BYTES - 112  # leaves room for the "#<n>" suffix of extra vector records
_MAX_BATCH = validation.MAX_BATCH
_MAX_K = validation.MAX_K
_INCLUDE = ("metadata", "namespace", "expires_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RANGE_OPS = frozenset({"$gt", "$gte", "$lt", "$lte"})
_FILTER_OPS = _RANGE_OPS | {"$eq", "$ne"}
_NS_CACHE_MAX = 100_000

# Metadata keys of the records this store writes.
_KEY, _VALUE, _PART, _EMB, _NVEC = "key", "value", "part", "embedded", "nvec"
_SEQ, _NS_SEQ, _CREATED, _UPDATED = "seq", "ns_seq", "created_us", "updated_us"


class _CollectionLike(Protocol):
    """The part of an EngramDB collection this store uses (embedded or remote)."""

    @property
    def dimension(self) -> int: ...

    def upsert(self, records: Any) -> list[str]: ...

    def delete(self, ids: Any = None, *, filter: Mapping[str, Any] | None = None) -> int: ...

    def refresh_ttl(self, ids: Any) -> int: ...

    def get_many(
        self, ids: Sequence[str], *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> list[Record]: ...

    def scan(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        id_prefix: str | None = None,
        namespace_prefix: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        include: Iterable[str] | None = None,
    ) -> ScanPage: ...

    def list_namespaces(
        self,
        prefix: Sequence[str] | None = None,
        *,
        suffix: Sequence[str] | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]: ...

    def search(self, vector: Any = None, k: int = 10, **kwargs: Any) -> list[Hit]: ...


# ----------------------------------------------------------------------------- ids


def _short_id(prefix: str, parts: Sequence[str]) -> str:
    # ASCII escaping keeps every id valid UTF-8 (even for keys with lone
    # surrogates) and free of control characters (escaped too, DEL included),
    # and JSON quoting makes the encoding injective.
    enc = json.dumps(list(parts), ensure_ascii=True, separators=(",", ":"))
    if len(enc) + len(prefix) + 2 <= _MAX_ID_BYTES:
        return f"{prefix}:{enc}"
    return f"{prefix.upper()}:{hashlib.sha256(enc.encode()).hexdigest()}"


def _item_id(namespace: tuple[str, ...], key: str) -> str:
    return _short_id("i", [*namespace, key])


def _registry_id(namespace: tuple[str, ...]) -> str:
    return _short_id("n", namespace)


def _part_ids(item_id: str, start: int, stop: int) -> list[str]:
    """Ids of the extra vector records ``start <= n < stop`` of an item (part 0 is the item itself)."""
    return [f"{item_id}#{n}" for n in range(max(start, 1), stop)]


# ----------------------------------------------------------------------- filters


def _check_filter(flt: Any, where: str = "filter") -> None:
    """Reject operators InMemoryStore does not know, up front (it raises only when it meets an item)."""
    if isinstance(flt, Mapping):
        if any(isinstance(k, str) and k.startswith("$") for k in flt):
            for op, val in flt.items():
                if op not in _FILTER_OPS:
                    raise ValueError(
                        f"Unsupported operator {op!r} in {where}; supported: {', '.join(sorted(_FILTER_OPS))}"
                    )
                if op in ("$eq", "$ne"):
                    continue
                _check_filter(val, f"{where}.{op}")
        else:
            for k, v in flt.items():
                _check_filter(v, f"{where}.{k}")
    elif isinstance(flt, (list, tuple)):
        for i, v in enumerate(flt):
            _check_filter(v, f"{where}[{i}]")


def _lookup(value: Mapping[str, Any], key: str) -> Any:
    """A value field for a filter key: the literal key, else a dotted path into nested objects."""
    if key in value:
        return value[key]
    if "." in key:
        cur: Any = value
        for part in key.split("."):
            if not isinstance(cur, Mapping) or part not in cur:
                return None
            cur = cur[part]
        return cur
    return None


def _compare(item_value: Any, filter_value: Any) -> bool:
    """InMemoryStore's comparison (JSONB-like): partial match for objects, element-wise for lists."""
    if isinstance(filter_value, Mapping):
        if any(isinstance(k, str) and k.startswith("$") for k in filter_value):
            return all(_apply_op(item_value, op, v) for op, v in filter_value.items())
        if not isinstance(item_value, Mapping):
            return False
        return all(_compare(item_value.get(k), v) for k, v in filter_value.items())
    if isinstance(filter_value, (list, tuple)):
        return (
            isinstance(item_value, (list, tuple))
            and len(item_value) == len(filter_value)
            and all(_compare(a, b) for a, b in zip(item_value, filter_value, strict=True))
        )
    return bool(item_value == filter_value)


def _apply_op(item_value: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return bool(item_value == operand)
    if op == "$ne":
        return bool(item_value != operand)
    try:
        a, b = float(item_value), float(operand)
    except (TypeError, ValueError):
        # InMemoryStore raises here (e.g. on a missing field); a store must
        # not fail a whole search because one item lacks a field.
        return False
    if op == "$gt":
        return a > b
    if op == "$gte":
        return a >= b
    if op == "$lt":
        return a < b
    return a <= b


def _matches(value: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    return not flt or all(_compare(_lookup(value, k), v) for k, v in flt.items())


def _plain_key(k: Any) -> bool:
    """Keys the engine can address as one path segment of ``value.<...>``."""
    return isinstance(k, str) and bool(k) and "." not in k and not k.startswith("$")


def _all_of(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _engine_eq(path: str, v: Any) -> dict[str, Any] | None:
    """An engine filter matching at least every item whose field ``== v`` in Python."""
    if v is None:
        # Python's dict.get makes a missing field equal None.
        return {"$or": [{path: {"$eq": None}}, {path: {"$exists": False}}]}
    if isinstance(v, bool):
        return {path: {"$in": [v, int(v)]}}  # True == 1 in Python, not in the engine
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return None
        return {path: {"$in": [v, bool(v)]}} if v in (0, 1) else {path: {"$eq": v}}
    if isinstance(v, str):
        return {path: {"$eq": v}}
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
        return {path: {"$eq": list(v)}}
    return None


def _engine_condition(path: str, fv: Any) -> dict[str, Any] | None:
    """Translate one filter condition on ``path`` to the engine language, or None if it cannot be.

    The translation may match *more* items than the filter (never fewer): the
    exact InMemoryStore comparison runs on every candidate afterwards. What the
    engine can express it evaluates with its indexes, before the vector search.
    """
    if isinstance(fv, Mapping):
        parts: list[dict[str, Any] | None] = []
        if any(isinstance(k, str) and k.startswith("$") for k in fv):
            for op, operand in fv.items():
                if op == "$eq":
                    parts.append(_engine_eq(path, operand))
                elif op in _RANGE_OPS:
                    parts.append(_engine_range(path, op, operand))
                # $ne: the engine negates its any-element list semantics, which
                # would drop items Python keeps; evaluated afterwards only.
        else:
            parts = [_engine_condition(f"{path}.{k}", v) for k, v in fv.items() if _plain_key(k)]
        return _all_of([p for p in parts if p is not None])
    return _engine_eq(path, fv)


def _engine_range(path: str, op: str, operand: Any) -> dict[str, Any] | None:
    try:
        bound = float(operand)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(bound):
        return None
    # InMemoryStore compares float(field), so numeric strings and booleans can
    # match too: keep every string and bool as a candidate.
    return {"$or": [{path: {op: bound}}, {path: {"$gte": ""}}, {path: {"$in": [True, False]}}]}


def _engine_value_filter(flt: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not flt:
        return []
    out = []
    for k, fv in flt.items():
        if _plain_key(k):
            cond = _engine_condition(f"{_VALUE}.{k}", fv)
            if cond is not None:
                out.append(cond)
    return out


# ------------------------------------------------------------------ namespaces


def _check_labels(namespace: Sequence[Any], what: str = "namespace") -> None:
    """LangGraph's label rules, also for ops given to ``batch`` directly (which skips them)."""
    for label in namespace:
        if not isinstance(label, str):
            raise InvalidNamespaceError(
                f"Invalid {what} label {label!r} in {tuple(namespace)}: labels must be strings, "
                f"got {type(label).__name__}."
            )
        if not label:
            raise InvalidNamespaceError(f"{what} labels cannot be empty strings. Got {tuple(namespace)}.")
        if "." in label or "\x00" in label:
            raise InvalidNamespaceError(
                f"Invalid {what} label {label!r} in {tuple(namespace)}: labels cannot contain '.' or NUL."
            )


def _ns_matches(ns: tuple[str, ...], cond: MatchCondition) -> bool:
    path = tuple(cond.path)
    if len(ns) < len(path):
        return False
    seg = ns[: len(path)] if cond.match_type == "prefix" else ns[len(ns) - len(path) :]
    return all(p == "*" or p == s for p, s in zip(path, seg, strict=True))


# ----------------------------------------------------------------------- store


def _to_dt(us: Any) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _now_us() -> int:
    return time.time_ns() // 1000


def _ttl_seconds(ttl: Any) -> float | None:
    """A put's TTL in seconds. LangGraph gives minutes; newer releases may pass a timedelta or an expiry time."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, datetime):
        expiry = ttl if ttl.tzinfo is not None else ttl.astimezone()  # naive means local time
        seconds = (expiry - datetime.now(UTC)).total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        seconds = float(ttl) * 60.0
    else:
        raise ValueError(f"ttl must be a number of minutes, a timedelta or None, got {ttl!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"ttl must be positive, got {ttl!r}")
    if seconds > validation.MAX_TTL_SECONDS:
        raise ValueError(f"ttl must be at most 100 years, got {ttl!r}")
    return seconds


# Stand-ins for the store's own metadata fields when a put is checked before the batch runs:
# the largest values they can take, so the size the engine checks is never underestimated.
_MAX_INT = 2**63 - 1
_META_BOUND = {_SEQ: _MAX_INT, _NS_SEQ: _MAX_INT, _CREATED: _MAX_INT, _UPDATED: _MAX_INT, _PART: _MAX_INT}
_META_BOUND.update({_EMB: False, _NVEC: _MAX_INT})


def _check_put(op: PutOp) -> None:
    """Refuse a put the engine would refuse when writing it, so a failing batch writes nothing."""
    if op.value is None:
        return  # a delete writes no namespace or value (and may name an item stored under older rules)
    try:
        validation.namespace(op.namespace)
    except InvalidArgument as e:
        raise InvalidNamespaceError(f"Invalid namespace {tuple(op.namespace)!r}: {e.message}") from None
    if not isinstance(op.value, Mapping):
        raise ValueError(f"value must be a dict, got {type(op.value).__name__}")
    # The metadata this put would write, with every number at its largest (engine rules: JSON
    # values, 64-bit integers, depth and size caps). Raises the engine's InvalidArgument.
    validation.metadata({_KEY: str(op.key), _VALUE: dict(op.value), **_META_BOUND}, "item")


@dataclass
class _Write:
    """One item to write, planned before its texts are embedded."""

    namespace: tuple[str, ...]
    key: str
    item_id: str
    meta: dict[str, Any]
    texts: list[str]
    ttl_seconds: float | None
    old_nvec: int


@dataclass
class _PutPlan:
    """Everything one batch writes: items, stale extra vectors to delete, new namespace registrations."""

    writes: list[_Write] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    registry: list[dict[str, Any]] = field(default_factory=list)
    registered: dict[tuple[str, ...], int] = field(default_factory=dict)

    def texts(self) -> list[str]:
        return list(dict.fromkeys(t for w in self.writes for t in w.texts))


class EngramStore(BaseStore):
    """A LangGraph ``BaseStore`` backed by an EngramDB collection (sync and async).

    Args:
        target: where the data lives — an EngramDB ``Database`` (``engramdb.open(path)``)
            or a remote client (``engramdb.connect(url, api_key=...)``), in which case
            the collection ``collection`` is created if needed; or a collection
            object itself (embedded or remote), used as is.
        index: LangGraph's ``IndexConfig`` for semantic search: ``dims``, ``embed``
            (an ``Embeddings`` object, a sync or async function of a list of texts,
            or a ``"provider:model"`` string, which needs ``langchain``) and ``fields``
            (JSON paths of the value to embed, default ``["$"]``, the whole value).
            Without it, ``query`` is ignored and search lists items like InMemoryStore.
        ttl: LangGraph's ``TTLConfig``: ``default_ttl`` (minutes) for puts that give
            no ``ttl``, ``refresh_on_read`` (default True). Expired items are never
            returned (the engine hides them at once and its sweeper deletes them), so
            ``sweep_interval_minutes`` and ``omit_expired`` need no action.
        collection: name of the collection to use when ``target`` is a database or client.
        tenant: tenant of that collection (embedded database only; a client's key
            decides its tenant).
        exact_search: rank semantic queries by brute force. By default the engine
            searches exactly only below its ``index.exact_search_threshold`` (2048
            candidates) and uses HNSW above it, which may miss a few distant items
            that InMemoryStore's brute force would rank.

    The store's own collection is cosine, has no text index and no default TTL, and
    indexes the ``part`` and ``embedded`` metadata fields it filters on.
    """

    supports_ttl = True

    def __init__(
        self,
        target: Any,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        collection: str = "langgraph_store",
        tenant: str | None = None,
        exact_search: bool = False,
    ) -> None:
        self.index_config: IndexConfig | None = None
        self.embeddings: Embeddings | None = None
        self._fields: list[tuple[str, str | list[str]]] = []
        dimension = 1
        if index:
            if "dims" not in index:
                raise ValueError("index config needs 'dims', the length of the embedding vectors")
            if index.get("embed") is None:
                raise ValueError("index config needs 'embed': an Embeddings object or an embedding function")
            self.index_config = cast(IndexConfig, dict(index))
            self.embeddings = ensure_embeddings(index["embed"])
            self._fields = self._tokenize(index.get("fields") or ["$"])
            dimension = int(index["dims"])
        self.ttl_config = ttl
        self._owned: Any = None
        self._coll = cast(_CollectionLike, self._resolve(target, collection, dimension, tenant))
        if int(self._coll.dimension) != dimension:
            raise ValueError(
                f"collection has dimension {self._coll.dimension} but this store needs {dimension} "
                + ("(index['dims'])" if index else "(no index config: items carry a 1-dimensional placeholder)")
            )
        self._placeholder = [1.0] + [0.0] * (dimension - 1)
        self._seq_lock = threading.Lock()
        self._last_seq = 0
        self._ns_seq: dict[tuple[str, ...], int] = {}
        self._exact = exact_search

    @property
    def collection(self) -> Any:
        """The EngramDB collection (embedded or remote) that holds this store's records."""
        return self._coll

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        collection: str = "langgraph_store",
        exact_search: bool = False,
        **settings: Any,
    ) -> EngramStore:
        """Open (creating if needed) an embedded database at ``path``; :meth:`close` closes it.

        ``settings`` are passed to :func:`engramdb.open`, e.g. ``storage={"sync_writes": False}``.
        """
        import engramdb

        db = engramdb.open(path, **settings)
        try:
            store = cls(db, index=index, ttl=ttl, collection=collection, exact_search=exact_search)
        except BaseException:
            db.close()
            raise
        store._owned = db
        return store

    def close(self) -> None:
        """Close the database this store opened itself (:meth:`from_path`); otherwise do nothing."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> EngramStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _tokenize(paths: Sequence[str]) -> list[tuple[str, str | list[str]]]:
        return [(p, p if p == "$" else tokenize_path(p)) for p in paths]

    @staticmethod
    def _resolve(target: Any, name: str, dimension: int, tenant: str | None) -> Any:
        for method in ("upsert", "get_collection"):
            if inspect.iscoroutinefunction(getattr(target, method, None)):
                raise TypeError(
                    "EngramStore needs a synchronous database, client or collection (engramdb.open or "
                    "engramdb.connect); its async methods already run engine calls in a worker thread"
                )
        if hasattr(target, "upsert") and hasattr(target, "search"):
            return target
        if not hasattr(target, "create_collection"):
            raise TypeError(
                "target must be an EngramDB Database, a client from engramdb.connect(), or a collection; "
                f"got {type(target).__name__}"
            )
        kw: dict[str, Any] = {"tenant": tenant} if tenant is not None else {}
        try:
            return target.get_collection(name, **kw)
        except NotFound:
            pass
        try:
            return target.create_collection(
                name,
                dimension,
                "cosine",
                indexed_fields={_PART: "int", _EMB: "bool"},
                text_index=False,
                **kw,
            )
        except AlreadyExists:  # created concurrently by another store
            return target.get_collection(name, **kw)

    # ------------------------------------------------------------------ batch
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ops like InMemoryStore: reads see the state before this batch's puts."""
        ops = list(ops)
        puts = self._validate(ops)
        queries = self._queries(ops)
        qvecs = {q: self.embeddings.embed_query(q) for q in queries} if self.embeddings else {}
        results = self._reads(ops, qvecs)
        if puts:
            plan = self._plan_puts(puts)
            texts = plan.texts()
            vecs = self.embeddings.embed_documents(texts) if texts and self.embeddings else []
            self._apply_puts(plan, dict(zip(texts, vecs, strict=True)))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Async :meth:`batch`: embeddings are awaited, engine calls run in a worker thread."""
        ops = list(ops)
        puts = self._validate(ops)
        queries = self._queries(ops)
        qvecs: dict[str, list[float]] = {}
        if queries and self.embeddings:
            embedded = await asyncio.gather(*(self.embeddings.aembed_query(q) for q in queries))
            qvecs = dict(zip(queries, embedded, strict=True))
        results = await asyncio.to_thread(self._reads, ops, qvecs)
        if puts:
            plan = await asyncio.to_thread(self._plan_puts, puts)
            texts = plan.texts()
            vecs = await self.embeddings.aembed_documents(texts) if texts and self.embeddings else []
            await asyncio.to_thread(self._apply_puts, plan, dict(zip(texts, vecs, strict=True)))
        return results

    def _validate(self, ops: list[Op]) -> dict[tuple[tuple[str, ...], str], PutOp]:
        """Check every op before running any; returns the puts, the last one per item winning."""
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            if isinstance(op, PutOp):
                _check_labels(op.namespace)
                # The "langgraph" root label is refused by BaseStore.put only; batch() takes it,
                # as LangGraph's own stores do.
                if op.value is not None:
                    if not op.namespace:
                        raise InvalidNamespaceError("Namespace cannot be empty.")
                    _ttl_seconds(op.ttl)  # fail before anything is written
                _check_put(op)
                puts[(tuple(op.namespace), str(op.key))] = op
            elif isinstance(op, GetOp):
                _check_labels(op.namespace)
            elif isinstance(op, SearchOp):
                _check_labels(op.namespace_prefix, "namespace_prefix")
                if op.filter is not None and not isinstance(op.filter, Mapping):
                    raise ValueError(f"filter must be a dict of value fields, got {type(op.filter).__name__}")
                _check_filter(op.filter)
            elif isinstance(op, ListNamespacesOp):
                for cond in op.match_conditions or ():
                    _check_labels([p for p in cond.path if p != "*"], cond.match_type)
                    if cond.match_type not in ("prefix", "suffix"):
                        raise ValueError(f"Unsupported match type: {cond.match_type}")
            else:
                raise ValueError(f"Unknown operation type: {type(op)}")
        return puts

    def _queries(self, ops: list[Op]) -> list[str]:
        if not self.embeddings:
            return []
        return list(dict.fromkeys(op.query for op in ops if isinstance(op, SearchOp) and op.query))

    def _reads(self, ops: list[Op], qvecs: Mapping[str, list[float]]) -> list[Result]:
        results: list[Result] = [None] * len(ops)
        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        if gets:
            for (i, _), item in zip(gets, self._get_items([op for _, op in gets]), strict=True):
                results[i] = item
        for i, op in enumerate(ops):
            if isinstance(op, SearchOp):
                results[i] = self._search(op, qvecs.get(op.query) if op.query else None)
            elif isinstance(op, ListNamespacesOp):
                results[i] = self._list_namespaces(op)
        return results

    # -------------------------------------------------------------- records
    @staticmethod
    def _item(rec: Record, score: float | None = None, search: bool = False) -> Item:
        md = rec.metadata
        ns, key, value = tuple(rec.namespace), md[_KEY], md[_VALUE]
        created, updated = _to_dt(md[_CREATED]), _to_dt(md[_UPDATED])
        if search:
            return SearchItem(ns, key, value, created, updated, score)
        return Item(value=value, key=key, namespace=ns, created_at=created, updated_at=updated)

    def _get_many(self, ids: Sequence[str]) -> list[Record]:
        out: list[Record] = []
        for start in range(0, len(ids), _MAX_BATCH):
            out.extend(self._coll.get_many(list(ids[start : start + _MAX_BATCH]), include=_INCLUDE))
        return out

    def _refresh(self, recs: Iterable[Record]) -> None:
        """Restart the TTL of these items and of their extra vector records."""
        ids: list[str] = []
        for rec in recs:
            if rec.ttl_seconds is None:
                continue
            item_id = _item_id(tuple(rec.namespace), rec.metadata[_KEY])
            ids.append(item_id)
            ids.extend(_part_ids(item_id, 1, int(rec.metadata.get(_NVEC, 1))))
        for start in range(0, len(ids), _MAX_BATCH):
            self._coll.refresh_ttl(ids[start : start + _MAX_BATCH])

    def _get_items(self, ops: list[GetOp]) -> list[Item | None]:
        ids = [_item_id(tuple(op.namespace), str(op.key)) for op in ops]
        found = {rec.id: rec for rec in self._get_many(list(dict.fromkeys(ids)))}
        self._refresh(found[i] for i, op in zip(ids, ops, strict=True) if i in found and op.refresh_ttl)
        return [self._item(found[i]) if i in found else None for i in ids]

    # ---------------------------------------------------------------- search
    def _filter(self, base: dict[str, Any], op: SearchOp) -> dict[str, Any]:
        parts = [base]
        if op.namespace_prefix:
            parts.append({"namespace_prefix": list(op.namespace_prefix)})
        parts.extend(_engine_value_filter(op.filter))
        return _all_of(parts) or {}

    def _listed(self, op: SearchOp, base: dict[str, Any]) -> list[Record]:
        """Every live item matching the op, in InMemoryStore order (namespace first use, then insertion)."""
        flt = self._filter(base, op)
        prefix = list(op.namespace_prefix) or None
        out: list[Record] = []
        cursor: str | None = None
        while True:
            page = self._coll.scan(
                cursor=cursor, limit=_MAX_BATCH, namespace_prefix=prefix, filter=flt, include=_INCLUDE
            )
            out.extend(r for r in page.records if _matches(r.metadata[_VALUE], op.filter))
            cursor = page.next_cursor
            if cursor is None:
                break
        out.sort(key=lambda r: (r.metadata[_NS_SEQ], r.metadata[_SEQ]))
        return out

    def _search(self, op: SearchOp, qvec: list[float] | None) -> list[SearchItem]:
        offset, limit = max(op.offset, 0), op.limit
        if limit <= 0:
            return []
        if qvec is None:
            recs = self._listed(op, {_PART: 0})[offset : offset + limit]
            scored: list[tuple[Record, float | None]] = [(r, None) for r in recs]
        else:
            scored = list(self._semantic(op, qvec, offset, limit))
            if len(scored) < limit:
                # InMemoryStore fills a short page with the items that have no
                # vector, unscored (and without applying the offset to them).
                rest = self._listed(op, {_PART: 0, _EMB: False})
                scored.extend((r, None) for r in rest[: limit - len(scored)])
        if op.refresh_ttl:
            self._refresh(r for r, _ in scored)
        return [cast(SearchItem, self._item(r, s, search=True)) for r, s in scored]

    def _semantic(self, op: SearchOp, qvec: list[float], offset: int, limit: int) -> list[tuple[Record, float]]:
        flt = self._filter({_EMB: True}, op)
        want = offset + limit
        k = min(_MAX_K, max(want, 10))
        while True:
            hits = self._coll.search(qvec, k, filter=flt, include=list(_INCLUDE), exact=self._exact)
            best: dict[tuple[tuple[str, ...], str], tuple[Record, float]] = {}
            for hit in hits:
                rec = hit.record
                if rec is None:
                    continue
                ident = (tuple(rec.namespace), rec.metadata[_KEY])
                # Hits come best first, so the first record of an item is its
                # max-pooled score over all its vectors.
                if ident not in best and _matches(rec.metadata[_VALUE], op.filter):
                    best[ident] = (rec, float(hit.score))
            if len(best) >= want or len(hits) < k or k >= _MAX_K:
                return list(best.values())[offset:want]
            k = min(_MAX_K, k * 4)  # duplicates or post-filtered hits: widen and retry

    # ------------------------------------------------------------ namespaces
    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        if op.limit <= 0:
            return []
        conds = list(op.match_conditions or ())
        prefix = next((c for c in conds if c.match_type == "prefix"), None)
        suffix = next((c for c in conds if c.match_type == "suffix"), None)
        rest = [c for c in conds if c is not prefix and c is not suffix]
        kw: dict[str, Any] = {
            "suffix": list(suffix.path) if suffix else None,
            "max_depth": op.max_depth,
        }
        pre = list(prefix.path) if prefix else None
        if not rest:
            out: list[tuple[str, ...]] = []
            offset, want = max(op.offset, 0), op.limit
            while len(out) < want:
                n = min(_MAX_BATCH, want - len(out))
                page = self._coll.list_namespaces(pre, limit=n, offset=offset, **kw)
                out.extend(tuple(ns) for ns in page)
                if len(page) < n:
                    break
                offset += n
            return out
        # More than one prefix or suffix condition (only possible through batch()):
        # list everything the first ones allow and apply the rest here.
        everything: list[tuple[str, ...]] = []
        offset = 0
        while True:
            page = self._coll.list_namespaces(pre, limit=_MAX_BATCH, offset=offset, max_depth=None)
            everything.extend(tuple(ns) for ns in page)
            if len(page) < _MAX_BATCH:
                break
            offset += _MAX_BATCH
        kept = [ns for ns in everything if all(_ns_matches(ns, c) for c in conds)]
        if op.max_depth is not None:
            kept = sorted({ns[: op.max_depth] for ns in kept})
        return kept[max(op.offset, 0) : max(op.offset, 0) + op.limit]

    # ------------------------------------------------------------------ puts
    def _next_seq(self) -> int:
        # Nanosecond clock, strictly increasing within the process: insertion
        # order that also holds across restarts and between processes.
        with self._seq_lock:
            self._last_seq = max(time.time_ns(), self._last_seq + 1)
            return self._last_seq

    def _texts(self, op: PutOp) -> list[str]:
        if self.embeddings is None or op.index is False or op.value is None:
            return []
        paths = self._fields if op.index is None else self._tokenize(op.index)
        texts: list[str] = []
        for _, tokens in paths:
            texts.extend(get_text_at_path(op.value, tokens))
        return list(dict.fromkeys(texts))  # the same text twice adds nothing to max pooling

    def _plan_puts(self, puts: Mapping[tuple[tuple[str, ...], str], PutOp]) -> _PutPlan:
        plan = _PutPlan()
        new_ns = [ns for (ns, _), op in puts.items() if op.value is not None and ns not in self._ns_seq]
        reg_ids = {ns: _registry_id(ns) for ns in dict.fromkeys(new_ns)}
        item_ids = {ik: _item_id(*ik) for ik in puts}
        found = {r.id: r for r in self._get_many([*item_ids.values(), *reg_ids.values()])}
        known = dict(self._ns_seq)
        for ns, rid in reg_ids.items():
            if rid in found:
                known[ns] = int(found[rid].metadata[_NS_SEQ])
        for (ns, key), op in puts.items():
            item_id = item_ids[(ns, key)]
            old = found.get(item_id)
            old_nvec = int(old.metadata.get(_NVEC, 1)) if old is not None else 0
            if op.value is None:
                if old is not None:
                    plan.deletes.append(item_id)
                    plan.deletes.extend(_part_ids(item_id, 1, old_nvec))
                continue
            now = _now_us()
            if ns not in known:
                known[ns] = self._next_seq()
                plan.registered[ns] = known[ns]
                plan.registry.append(
                    {
                        "id": reg_ids[ns],
                        "vector": self._placeholder,
                        "metadata": {_PART: -1, _EMB: False, _NS_SEQ: known[ns], "namespace": list(ns)},
                    }
                )
            meta = {
                _KEY: key,
                _VALUE: dict(op.value),
                _SEQ: int(old.metadata[_SEQ]) if old is not None else self._next_seq(),
                _NS_SEQ: int(old.metadata[_NS_SEQ]) if old is not None else known[ns],
                _CREATED: int(old.metadata[_CREATED]) if old is not None else now,
                _UPDATED: now,
            }
            plan.writes.append(_Write(ns, key, item_id, meta, self._texts(op), _ttl_seconds(op.ttl), old_nvec))
        for ns in reg_ids:
            if ns in known and ns not in plan.registered:
                plan.registered[ns] = known[ns]
        return plan

    def _apply_puts(self, plan: _PutPlan, vectors: Mapping[str, list[float]]) -> None:
        records: list[dict[str, Any]] = list(plan.registry)
        deletes = list(plan.deletes)
        for w in plan.writes:
            # A zero vector has no direction under cosine (the engine rejects it);
            # such a text is treated like one that was not embedded.
            vecs = [vectors[t] for t in w.texts if any(x != 0 for x in vectors[t])]
            nvec = max(len(vecs), 1)
            for part, vec in enumerate(vecs or [self._placeholder]):
                rec: dict[str, Any] = {
                    "id": w.item_id if part == 0 else f"{w.item_id}#{part}",
                    "vector": list(vec),
                    "namespace": list(w.namespace),
                    "metadata": {**w.meta, _PART: part, _EMB: bool(vecs), _NVEC: nvec},
                }
                if w.ttl_seconds is not None:
                    rec["ttl_seconds"] = w.ttl_seconds
                records.append(rec)
            deletes.extend(_part_ids(w.item_id, nvec, w.old_nvec))
        # Every record passes the engine's checks before anything is written (the vectors come
        # from the embedder, after _validate), so a refused batch has not applied its deletes.
        dim = int(self._coll.dimension)
        for i, rec in enumerate(records):
            validation.record_id(rec["id"], f"records[{i}].id")
            validation.vector(rec["vector"], dim, "dot", f"records[{i}].vector")  # "dot": no normalisation, just checks
        # Deletes first: a failure in between then leaves an item with fewer
        # vectors, never a stale extra vector record carrying an old value.
        for start in range(0, len(deletes), _MAX_BATCH):
            self._coll.delete(deletes[start : start + _MAX_BATCH])
        for start in range(0, len(records), _MAX_BATCH):
            self._coll.upsert(records[start : start + _MAX_BATCH])
        if len(self._ns_seq) > _NS_CACHE_MAX:
            self._ns_seq.clear()
        self._ns_seq.update(plan.registered)
