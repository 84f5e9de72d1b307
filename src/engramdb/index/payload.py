"""In-memory payload index over a collection's declared metadata fields (docs/filters.md).

Records are identified by integer labels (uint32, the same labels the vector index uses). For
each declared field (a dotted path) the index keeps:

* ``keyword`` / ``bool`` fields: value → :class:`pyroaring.BitMap` of labels.
* ``int`` / ``float`` fields: a sorted ``(value, label)`` pair of numpy arrays answering ranges by
  binary search, plus a small sorted *delta* of values added since the arrays were built and a
  *stale* bitmap of labels whose array entries are obsolete. The arrays are rebuilt (merged in
  numpy, not in Python) once the delta reaches a bound, so writes never pay O(n) each and
  high-cardinality fields such as timestamps do not cost one bitmap object per distinct value.
* ``present`` (field resolves, any value), ``lists`` (value is a list) and, per JSON kind
  (string / number / bool / null / compound), the labels that hold a value the field's type does
  not index.

Which values are indexed (others are *not* indexed for the field, but still remembered by kind
so the index stays a correct superset):

* ``keyword``: strings. ``bool``: booleans. ``float``: numbers (not bools) exactly representable
  as float64 — integers beyond ±2**53 that float64 cannot hold exactly are not indexed.
  ``int``: those numbers that are also integral (``3`` and ``3.0``, not ``3.5``, not ``inf``).
* A list value indexes each element under the same rules; nested lists and objects are not.
* NaN is ignored entirely: no filter operand can be NaN, so a NaN can never match.

Unindexed values cost exactness only where they could match: ``{"color": "red"}`` stays exact
when some records hold ``color: 5``, but ``{"age": {"$gt": 3}}`` on an ``int`` field is inexact
while any record holds ``age: 3.5`` (those labels are added to the candidates for a re-check).

:meth:`PayloadIndex.candidates` walks the filter AST and returns a bitmap that is a superset of
the matching labels, with ``exact=True`` when no per-record check is needed. The semantics are
those of :mod:`engramdb.filters`; the property tests hold the two together.

Not thread-safe for writes: the owning collection serialises ``add``/``remove``/``clear``
against readers.
"""

from __future__ import annotations

import array
import bisect
import math
import struct
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap

from engramdb.errors import CorruptData, InvalidArgument
from engramdb.filters import (
    MISSING,
    RANGE_OPS,
    And,
    Cmp,
    Filter,
    IdPrefix,
    NamespacePrefix,
    Node,
    Not,
    Or,
    get_path,
    is_number,
)

__all__ = ["FIELD_TYPES", "FieldType", "PayloadIndex"]

FieldType: TypeAlias = Literal["keyword", "int", "float", "bool"]
FIELD_TYPES: Final[frozenset[str]] = frozenset({"keyword", "int", "float", "bool"})


class Deadline(Protocol):
    """What the index needs of a query's time budget (the engine's ``budget.Deadline``)."""

    def check(self) -> None:
        """Raise once the budget is spent."""


_Kind: TypeAlias = Literal["str", "num", "bool", "null", "compound"]
_KINDS: Final[tuple[_Kind, ...]] = ("str", "num", "bool", "null", "compound")
_OWN_KIND: Final[dict[str, _Kind]] = {"keyword": "str", "int": "num", "float": "num", "bool": "bool"}

_MAX_LABEL: Final = 2**32 - 1
# Delta bound for numeric fields: a quarter of the base arrays (rebuilds stay amortised O(1) per
# write), at least 256 (tiny indexes do not rebuild constantly), at most 8192 (a range query
# unions at most that many small delta bitmaps in Python).
_DELTA_MIN: Final = 256
_DELTA_MAX: Final = 8192

_BASE_CACHE: Final = 64  # slice bitmaps kept per numeric field

_MAGIC: Final = b"EGPX"
_FORMAT_VERSION: Final = 1
_TYPE_CODES: Final[dict[str, int]] = {"keyword": 1, "int": 2, "float": 3, "bool": 4}
_CODE_TYPES: Final[dict[int, str]] = {v: k for k, v in _TYPE_CODES.items()}

Labels: TypeAlias = npt.NDArray[np.uint32]
Floats: TypeAlias = npt.NDArray[np.float64]
Result: TypeAlias = tuple[BitMap, bool]


class _NoKey:
    """Sentinel: the value is not indexable for this field (distinct from ``False``/``0``)."""

    __slots__ = ()


_NOKEY: Final = _NoKey()


def _kind(v: Any) -> _Kind:
    if isinstance(v, str):
        return "str"
    if isinstance(v, bool):
        return "bool"
    if is_number(v):
        return "num"
    if v is None:
        return "null"
    return "compound"


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _bitmap_from(labels: Labels) -> BitMap:
    # Sorting first makes BitMap construction about ten times faster than from random order.
    if len(labels) == 0:
        return BitMap()
    return BitMap(array.array("I", np.sort(labels).tobytes()))


def _labels_of(bm: BitMap) -> Labels:
    return np.frombuffer(bm.to_array(), dtype=np.uint32)


def _float_bounds(op: str, v: float | int) -> tuple[float | None, bool, float | None, bool]:
    """(lo, lo_inclusive, hi, hi_inclusive) over float64 keys equivalent to ``key op v``.

    ``v`` may be an int float64 cannot hold exactly; then the nearest float ``f`` and the exact
    Python comparison of ``f`` with ``v`` decide inclusiveness (no float lies strictly between
    ``v`` and its nearest float, so the translated bound selects exactly the same keys).
    """
    try:
        f = float(v)
    except OverflowError:
        f = math.inf if v > 0 else -math.inf
    if op == "$gt":
        return f, f > v, None, False
    if op == "$gte":
        return f, f >= v, None, False
    if op == "$lt":
        return None, False, f, f < v
    return None, False, f, f <= v


class _NumericPostings:
    """Sorted (value, label) arrays plus a bounded delta; see the module docstring."""

    __slots__ = ("_base", "_labs", "delta", "delta_keys", "pending", "stale", "vals")

    def __init__(self) -> None:
        self.vals: Floats = np.empty(0, dtype=np.float64)
        self._labs: Labels = np.empty(0, dtype=np.uint32)
        # Bitmaps of base-array slices already built: the same equality or
        # range filter recurs across queries, and building a 10k-label bitmap
        # costs more than the filtered HNSW search it feeds.
        self._base: dict[tuple[int, int], BitMap] = {}
        self.stale = BitMap()  # labels whose entries in vals/labs no longer count
        self.delta: dict[float, BitMap] = {}  # entries added since vals/labs were built
        self.delta_keys: list[float] = []  # sorted keys of delta, for range bisection
        self.pending = 0  # delta (value, label) pairs + stale labels: drives the rebuild

    @property
    def labs(self) -> Labels:
        return self._labs

    @labs.setter
    def labs(self, labs: Labels) -> None:
        # Every assignment of the base arrays goes through here (vals is
        # always assigned together with labs), so the slice cache stays true.
        self._labs = labs
        self._base = {}

    def add(self, label: int, keys: Iterable[float]) -> None:
        for k in keys:
            bm = self.delta.get(k)
            if bm is None:
                self.delta[k] = BitMap([label])
                bisect.insort(self.delta_keys, k)
            elif label not in bm:
                bm.add(label)
            else:
                continue
            self.pending += 1
        self._maybe_compact()

    def remove(self, label: int, keys: Iterable[float]) -> None:
        # The label's current entries are either all in the base arrays (never re-added since the
        # last build) or all in the delta; marking it stale covers the first case, and is harmless
        # in the second because a later add puts its new entries in the delta anyway.
        if label not in self.stale:
            self.stale.add(label)
            self.pending += 1
        for k in keys:
            bm = self.delta.get(k)
            if bm is not None and label in bm:
                bm.discard(label)
                self.pending -= 1
                if not bm:
                    del self.delta[k]
                    del self.delta_keys[bisect.bisect_left(self.delta_keys, k)]
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        limit = min(_DELTA_MAX, max(_DELTA_MIN, len(self.vals) // 4))
        if self.pending > limit:
            self.vals, self.labs = self.merged()
            self.stale = BitMap()
            self.delta = {}
            self.delta_keys = []
            self.pending = 0

    def merged(self) -> tuple[Floats, Labels]:
        """The current content as one sorted pair of arrays (does not modify self)."""
        vals, labs = self.vals, self.labs
        if self.stale and len(labs):
            keep = ~np.isin(labs, _labels_of(self.stale))
            vals, labs = vals[keep], labs[keep]
        if self.delta:
            dl = [_labels_of(bm) for bm in self.delta.values()]
            dv = [np.full(len(a), k, dtype=np.float64) for k, a in zip(self.delta.keys(), dl, strict=True)]
            vals = np.concatenate([vals, *dv])
            labs = np.concatenate([labs, *dl])
            # Stable sort on an already sorted run plus a short tail is close to linear.
            order = np.argsort(vals, kind="stable")
            vals, labs = vals[order], labs[order]
        return vals, labs

    def range(self, lo: float | None, lo_inc: bool, hi: float | None, hi_inc: bool) -> BitMap:
        """Labels with a value inside the bounds (``None`` = unbounded). Always a new bitmap."""
        n = len(self.vals)
        i = 0 if lo is None else int(np.searchsorted(self.vals, lo, side="left" if lo_inc else "right"))
        j = n if hi is None else int(np.searchsorted(self.vals, hi, side="right" if hi_inc else "left"))
        if j > i:
            base = self._base.get((i, j))
            if base is None:
                if len(self._base) >= _BASE_CACHE:
                    self._base.clear()
                base = self._base[(i, j)] = _bitmap_from(self.labs[i:j])
            out = base.copy()
        else:
            out = BitMap()
        if self.stale and out:
            out -= self.stale
        if self.delta_keys:
            keys = self.delta_keys
            a = 0 if lo is None else (bisect.bisect_left if lo_inc else bisect.bisect_right)(keys, lo)
            b = len(keys) if hi is None else (bisect.bisect_right if hi_inc else bisect.bisect_left)(keys, hi)
            for k in keys[a:b]:
                out |= self.delta[k]
        return out

    def distinct(self) -> int:
        vals, _ = self.merged()
        return len(np.unique(vals))


class _Field:
    """Everything the index holds for one declared field."""

    __slots__ = ("_sorted_keys", "lists", "numeric", "other", "own", "parts", "path", "present", "type", "values")

    def __init__(self, path: str, ftype: str) -> None:
        self.path = path
        self.parts = tuple(path.split("."))
        self.type = ftype
        self.own: _Kind = _OWN_KIND[ftype]
        self.present = BitMap()
        self.lists = BitMap()
        self.other: dict[_Kind, BitMap] = {k: BitMap() for k in _KINDS}
        self.values: dict[Any, BitMap] = {}  # keyword and bool fields
        self.numeric: _NumericPostings | None = _NumericPostings() if ftype in ("int", "float") else None
        self._sorted_keys: list[str] | None = None  # keyword range queries; rebuilt when keys change

    # -- what gets indexed

    def key_of(self, v: Any) -> Any:
        """The index key for a scalar value, or ``_NOKEY`` if this field's type does not index it."""
        t = self.type
        if t == "keyword":
            return v if isinstance(v, str) else _NOKEY
        if t == "bool":
            return v if isinstance(v, bool) else _NOKEY
        if not is_number(v):
            return _NOKEY
        try:
            f = float(v)
        except OverflowError:
            return _NOKEY
        if f != v:  # NaN, or an int float64 cannot represent exactly
            return _NOKEY
        if t == "int" and not f.is_integer():
            return _NOKEY
        return f

    def _split(self, value: Any) -> tuple[set[Any], set[_Kind], bool]:
        """(index keys, kinds of non-indexed values, is_list) for one metadata value."""
        keys: set[Any] = set()
        kinds: set[_Kind] = set()
        is_list = isinstance(value, (list, tuple))
        for v in value if is_list else (value,):
            if _is_nan(v):
                continue
            k = self.key_of(v)
            if k is _NOKEY:
                kinds.add(_kind(v))
            else:
                keys.add(k)
        if is_list and not value:
            kinds.add("compound")  # so equality with [] can find it
        return keys, kinds, is_list

    def add(self, label: int, value: Any) -> None:
        keys, kinds, is_list = self._split(value)
        self.present.add(label)
        if is_list:
            self.lists.add(label)
        for kd in kinds:
            self.other[kd].add(label)
        if self.numeric is not None:
            self.numeric.add(label, keys)
            return
        for k in keys:
            bm = self.values.get(k)
            if bm is None:
                self.values[k] = BitMap([label])
                self._sorted_keys = None
            else:
                bm.add(label)

    def remove(self, label: int, value: Any) -> None:
        keys, _, _ = self._split(value)
        # A label has one value per field, so the per-field bitmaps can drop it wholesale.
        self.present.discard(label)
        self.lists.discard(label)
        for bm in self.other.values():
            bm.discard(label)
        if self.numeric is not None:
            self.numeric.remove(label, keys)
            return
        for k in keys:
            posting = self.values.get(k)
            if posting is not None:
                posting.discard(label)
                if not posting:
                    del self.values[k]
                    self._sorted_keys = None

    # -- answering predicates

    def lookup(self, key: Any) -> BitMap:
        if self.numeric is not None:
            return self.numeric.range(key, True, key, True)
        return self.values.get(key) or BitMap()

    def eq(self, v: Any) -> Result:
        kv = _kind(v)
        if kv == "compound":
            if not isinstance(v, (list, tuple)):
                return self.other["compound"], False
            # Whole-list equality: a matching list holds every element of v, so it sits in each
            # element's postings (or, for elements this field does not index, in their kind's
            # "other" set); a list *containing* v as an element is compound.
            acc: BitMap | None = None
            for e in v:
                bm = self.other["compound"] if _kind(e) == "compound" else self.eq(e)[0]
                acc = bm if acc is None else acc & bm
                if not acc:
                    break
            whole = acc if acc is not None else BitMap()
            return whole | self.other["compound"], False
        key = self.key_of(v)
        if key is _NOKEY:
            # Only values this field does not index can equal v (indexability depends on the
            # value alone, and equal values are indexed alike).
            return self.other[kv], False
        return self.lookup(key), True

    def range(self, op: str, v: Any) -> Result:
        kv = _kind(v)
        if kv != self.own:
            return self.other[kv], False
        if self.numeric is not None:
            out = self.numeric.range(*_float_bounds(op, v))
            odd = self.other["num"]  # e.g. 3.5 in an int field, or 2**60 + 1: they may be in range
            return (out | odd, False) if odd else (out, True)
        keys = self._keyword_keys()
        if op in ("$gt", "$gte"):
            a = (bisect.bisect_right if op == "$gt" else bisect.bisect_left)(keys, v)
            sel = keys[a:]
        else:
            b = (bisect.bisect_left if op == "$lt" else bisect.bisect_right)(keys, v)
            sel = keys[:b]
        return (BitMap.union(*(self.values[k] for k in sel)) if sel else BitMap()), True

    def contains(self, v: Any) -> Result:
        kv = _kind(v)
        # List element membership.
        if kv == "compound":
            elem: Result = (self.other["compound"], False)
        else:
            key = self.key_of(v)
            elem = (self.other[kv], False) if key is _NOKEY else (self.lookup(key) & self.lists, True)
        if kv != "str":
            return elem
        # Substring of a string value.
        if self.type == "keyword":
            hits = [bm for k, bm in self.values.items() if v in k]
            sub: Result = ((BitMap.union(*hits) if hits else BitMap()) - self.lists, True)
        else:
            sub = (self.other["str"], False)
        return elem[0] | sub[0], elem[1] and sub[1]

    def _keyword_keys(self) -> list[str]:
        if self._sorted_keys is None:
            self._sorted_keys = sorted(self.values)
        return self._sorted_keys

    def distinct(self) -> int:
        return self.numeric.distinct() if self.numeric is not None else len(self.values)


class PayloadIndex:
    """Bitmap index over declared metadata fields, answering filters as label sets.

    ``fields`` maps dotted metadata paths to ``keyword | int | float | bool``. Call :meth:`add`
    for each live record (records without any declared field may be skipped) and :meth:`remove`
    with the *old* metadata before a record is replaced or after it is deleted.
    """

    def __init__(self, fields: Mapping[str, str]) -> None:
        self._fields: dict[str, _Field] = {}
        # Fields being built from the stored records (an alter added them): maintained by every
        # add/remove like the others, but never consulted by queries until :meth:`finish_fields`,
        # so a filter on them is answered by checking records until the index is complete.
        self._building: dict[str, _Field] = {}
        for path, ftype in fields.items():
            _check_field(path, ftype)
            self._fields[path] = _Field(path, ftype)

    @property
    def fields(self) -> dict[str, str]:
        """The declared fields that answer queries, and their types (fields being built are not among them)."""
        return {p: f.type for p, f in self._fields.items()}

    @property
    def building(self) -> dict[str, str]:
        """The fields being built (see :meth:`begin_fields`) and their types."""
        return {p: f.type for p, f in self._building.items()}

    def begin_fields(self, fields: Mapping[str, str]) -> None:
        """Start indexing ``fields`` (new, or a new type for a declared one) without answering queries on them.

        Every later :meth:`add`/:meth:`remove` maintains them; :meth:`backfill` indexes the records
        that existed before; :meth:`finish_fields` makes them answer queries.
        """
        for path, ftype in fields.items():
            _check_field(path, ftype)
        for path, ftype in fields.items():
            cur = self._fields.get(path)
            if cur is not None and cur.type == ftype:
                continue
            self._fields.pop(path, None)
            self._building[path] = _Field(path, ftype)

    def drop_fields(self, paths: Iterable[str]) -> None:
        """Stop indexing ``paths`` (declared or being built); filters on them then check records."""
        for path in paths:
            self._fields.pop(path, None)
            self._building.pop(path, None)

    def backfill(self, label: int, metadata: Mapping[str, Any] | None) -> None:
        """Index a record's metadata under ``label`` for the fields being built only.

        Safe to repeat for a label that a concurrent :meth:`add` already indexed with the same
        metadata: every posting is a set.
        """
        _check_label(label)
        if not metadata:
            return
        for f in self._building.values():
            value = get_path(metadata, f.parts)
            if value is not MISSING:
                f.add(label, value)

    def building_tokens(self) -> dict[str, object]:
        """The fields being built, each with a token that :meth:`finish_fields` checks.

        A field dropped and begun again (or cleared) while a builder scanned the records gets a
        new token: the builder's scan did not cover it, so it must not be finished with the old one.
        """
        return dict(self._building)

    def finish_fields(self, tokens: Mapping[str, object]) -> list[str]:
        """Let the built fields answer queries (those whose token is still current); returns them."""
        done = []
        for path, token in tokens.items():
            f = self._building.get(path)
            if f is not None and f is token:
                del self._building[path]
                self._fields[path] = f
                done.append(path)
        return done

    def _all_fields(self) -> list[_Field]:
        return [*self._fields.values(), *self._building.values()]

    # -- maintenance

    def add(self, label: int, metadata: Mapping[str, Any] | None) -> None:
        """Index a record's metadata under ``label`` (which must not currently be indexed)."""
        _check_label(label)
        if not metadata:
            return
        for f in self._all_fields():
            value = get_path(metadata, f.parts)
            if value is not MISSING:
                f.add(label, value)

    def remove(self, label: int, metadata: Mapping[str, Any] | None) -> None:
        """Un-index ``label``; ``metadata`` must be what was passed to :meth:`add` for it."""
        _check_label(label)
        if not metadata:
            return
        for f in self._all_fields():
            value = get_path(metadata, f.parts)
            if value is not MISSING:
                f.remove(label, value)

    def remove_labels(self, labels: BitMap) -> None:
        """Un-index every label in ``labels`` without knowing their metadata.

        Crash recovery needs this: the metadata a snapshot indexed for a record
        that changed afterwards is gone from storage, so the labels are dropped
        from every posting wholesale (one bitmap difference per posting).
        """
        if not labels:
            return
        for f in self._all_fields():
            f.present -= labels
            f.lists -= labels
            for kd in list(f.other):
                f.other[kd] -= labels
            if f.numeric is not None:
                num = f.numeric
                num.stale |= labels
                num.pending += len(labels)
                for k in list(num.delta):
                    num.delta[k] -= labels
                    if not num.delta[k]:
                        del num.delta[k]
                        del num.delta_keys[bisect.bisect_left(num.delta_keys, k)]
                num._maybe_compact()
            else:
                for k in list(f.values):
                    f.values[k] -= labels
                    if not f.values[k]:
                        del f.values[k]
                        f._sorted_keys = None

    def clear(self) -> None:
        """Drop every entry, keeping the declared fields."""
        self._fields = {p: _Field(p, f.type) for p, f in self._fields.items()}
        self._building = {p: _Field(p, f.type) for p, f in self._building.items()}

    # -- queries

    def candidates(
        self, filter: Filter | Node, universe: BitMap, deadline: Deadline | None = None
    ) -> tuple[BitMap, bool]:
        """A superset of the labels in ``universe`` that match ``filter``, and whether it is exact.

        ``universe`` is the set of live labels; predicates the index cannot answer (undeclared
        fields, ``namespace_prefix``, ``id_prefix``) contribute ``universe`` and make the result
        inexact, so the caller must then check each candidate with ``Filter.matches``. The result
        is always a new bitmap the caller may modify. ``deadline`` is checked before each
        range or ``$contains`` comparison, which may walk every distinct value of a field.
        """
        node = filter.node if isinstance(filter, Filter) else filter
        bm, exact = self._eval(node, universe, deadline)
        out = bm & universe
        return (out if type(out) is BitMap else BitMap(out)), exact

    def estimate(self, filter: Filter | Node, universe: BitMap) -> int:
        """Upper bound on how many labels of ``universe`` match (the planner's cardinality)."""
        return len(self.candidates(filter, universe)[0])

    def _eval(self, node: Node, universe: BitMap, dl: Deadline | None = None) -> Result:
        if isinstance(node, Cmp):
            if dl is not None and (node.op == "$contains" or node.op in RANGE_OPS):
                dl.check()  # these may walk every distinct value of the field; lookups cost the filter's size
            f = self._fields.get(node.field)
            if f is None:
                return universe, False
            bm, exact = self._cmp(f, node, universe)
            # An empty superset proves there is no match, whatever the index could not check.
            return bm, exact or not bm
        if isinstance(node, And):
            acc: BitMap | None = None
            exact = True
            for child in node.children:
                bm, ex = self._eval(child, universe, dl)
                acc = bm if acc is None else acc & bm
                exact = exact and ex
                if not acc:
                    return BitMap(), True
            return (universe, True) if acc is None else (acc, exact)
        if isinstance(node, Or):
            parts = [self._eval(child, universe, dl) for child in node.children]
            if not parts:
                return BitMap(), True
            return BitMap.union(*(p[0] for p in parts)), all(p[1] for p in parts)
        if isinstance(node, Not):
            bm, ex = self._eval(node.child, universe, dl)
            return (universe - bm, True) if ex else (universe, False)
        if isinstance(node, NamespacePrefix):
            return universe, not node.path
        if isinstance(node, IdPrefix):
            return universe, not node.prefix
        raise TypeError(f"not a filter node: {node!r}")

    @staticmethod
    def _cmp(f: _Field, node: Cmp, universe: BitMap) -> Result:
        op, v = node.op, node.value
        if op == "$eq":
            return f.eq(v)
        if op == "$ne":
            bm, ex = f.eq(v)
            return (universe - bm, True) if ex or not bm else (universe, False)
        if op in ("$in", "$nin"):
            parts = [f.eq(x) for x in v]
            bm = BitMap.union(*(p[0] for p in parts)) if parts else BitMap()
            ex = all(p[1] for p in parts) or not bm
            if op == "$in":
                return bm, ex
            return (universe - bm, True) if ex else (universe, False)
        if op in RANGE_OPS:
            return f.range(op, v)
        if op == "$contains":
            return f.contains(v)
        if op == "$exists":
            return (f.present, True) if v else (universe - f.present, True)
        raise TypeError(f"unknown operator {op!r}")  # pragma: no cover - the filter parser rejects it

    def stats(self) -> dict[str, dict[str, int]]:
        """Per field: labels holding it, distinct indexed values, labels with unindexed values."""
        out: dict[str, dict[str, int]] = {}
        for p, f in self._fields.items():
            unindexed = BitMap.union(*f.other.values())
            out[p] = {"present": len(f.present), "distinct": f.distinct(), "unindexed": len(unindexed)}
        return out

    def nbytes(self) -> int:
        """Memory the postings hold, roughly (bitmaps and numeric arrays), for metrics.

        Safe to call while another thread changes the index: it reads copies of
        the containers (an estimate may be off by that change).
        """
        total = 0
        for f in self._all_fields():
            bitmaps = [f.present, f.lists, *f.other.values(), *list(f.values.values())]
            num = f.numeric
            if num is not None:
                total += num.vals.nbytes + num.labs.nbytes
                bitmaps += [num.stale, *list(num.delta.values())]
            total += sum(bm.__sizeof__() for bm in bitmaps)
        return total

    # -- serialisation

    def to_bytes(self) -> bytes:
        """A self-contained binary snapshot (bitmaps in roaring format, arrays little-endian)."""
        w = _Writer()
        w.u32(len(self._fields))
        for p, f in self._fields.items():
            w.text(p)
            w.u8(_TYPE_CODES[f.type])
            w.bitmap(f.present)
            w.bitmap(f.lists)
            for kd in _KINDS:
                w.bitmap(f.other[kd])
            if f.numeric is not None:
                vals, labs = f.numeric.merged()
                w.u64(len(vals))
                w.raw(vals.astype("<f8", copy=False).tobytes())
                w.raw(labs.astype("<u4", copy=False).tobytes())
            else:
                w.u32(len(f.values))
                for k, bm in f.values.items():
                    if f.type == "bool":
                        w.u8(1 if k else 0)
                    else:
                        w.text(k)
                    w.bitmap(bm)
        body = w.getvalue()
        return _MAGIC + struct.pack("<HI", _FORMAT_VERSION, zlib.crc32(body)) + body

    @classmethod
    def from_bytes(cls, data: bytes, fields: Mapping[str, str] | None = None) -> PayloadIndex:
        """Load a snapshot made by :meth:`to_bytes`.

        Raises :class:`CorruptData` if the bytes are damaged or, when ``fields`` is given, were
        written for different declared fields (the caller then rebuilds from the records).
        """
        head = len(_MAGIC) + 6
        if len(data) < head or data[: len(_MAGIC)] != _MAGIC:
            raise CorruptData("payload index snapshot: bad magic or truncated header")
        version, crc = struct.unpack_from("<HI", data, len(_MAGIC))
        if version != _FORMAT_VERSION:
            raise CorruptData(f"payload index snapshot: unsupported format version {version}")
        body = memoryview(data)[head:]
        if zlib.crc32(body) != crc:
            raise CorruptData("payload index snapshot: checksum mismatch")
        try:
            idx = cls._decode(_Reader(body))
        except CorruptData:
            raise
        except (ValueError, KeyError, struct.error, UnicodeDecodeError, OverflowError) as exc:
            raise CorruptData(f"payload index snapshot: undecodable ({exc})") from exc
        if fields is not None and idx.fields != dict(fields):
            raise CorruptData(f"payload index snapshot declares fields {idx.fields}, expected {dict(fields)}")
        return idx

    @classmethod
    def _decode(cls, r: _Reader) -> PayloadIndex:
        specs: list[tuple[str, str]] = []
        loaded: list[_Field] = []
        for _ in range(r.u32()):
            path = r.text()
            ftype = _CODE_TYPES[r.u8()]
            f = _Field(path, ftype)
            f.present = r.bitmap()
            f.lists = r.bitmap()
            for kd in _KINDS:
                f.other[kd] = r.bitmap()
            if f.numeric is not None:
                n = r.u64()
                f.numeric.vals = np.frombuffer(r.raw(8 * n), dtype="<f8").astype(np.float64)
                f.numeric.labs = np.frombuffer(r.raw(4 * n), dtype="<u4").astype(np.uint32)
                if n and bool(np.any(np.diff(f.numeric.vals) < 0)):
                    raise CorruptData("payload index snapshot: numeric values out of order")
            else:
                for _ in range(r.u32()):
                    key: Any = bool(r.u8()) if ftype == "bool" else r.text()
                    f.values[key] = r.bitmap()
            specs.append((path, ftype))
            loaded.append(f)
        if not r.at_end():
            raise CorruptData("payload index snapshot: trailing bytes")
        idx = cls(dict(specs))
        idx._fields = {f.path: f for f in loaded}
        return idx


def _check_field(path: Any, ftype: Any) -> None:
    if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
        raise InvalidArgument(f"indexed field {path!r} must be a non-empty dotted path like 'a.b'")
    if ftype not in FIELD_TYPES:
        raise InvalidArgument(f"indexed field {path!r} has type {ftype!r}; use one of {', '.join(sorted(FIELD_TYPES))}")


def _check_label(label: int) -> None:
    if not (0 <= label <= _MAX_LABEL):
        raise ValueError(f"label {label} is outside the uint32 range")


class _Writer:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> None:
        self._parts.append(struct.pack("<B", v))

    def u32(self, v: int) -> None:
        self._parts.append(struct.pack("<I", v))

    def u64(self, v: int) -> None:
        self._parts.append(struct.pack("<Q", v))

    def raw(self, b: bytes) -> None:
        self._parts.append(b)

    def text(self, s: str) -> None:
        # surrogatepass: JSON-decoded strings may carry lone surrogates; they must round-trip.
        b = s.encode("utf-8", "surrogatepass")
        self.u32(len(b))
        self._parts.append(b)

    def bitmap(self, bm: BitMap) -> None:
        b = bm.serialize()
        self.u32(len(b))
        self._parts.append(b)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf
        self._pos = 0

    def raw(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._buf):
            raise CorruptData("payload index snapshot: truncated")
        out = bytes(self._buf[self._pos : end])
        self._pos = end
        return out

    def u8(self) -> int:
        return int(self.raw(1)[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.raw(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.raw(8))[0])

    def text(self) -> str:
        return self.raw(self.u32()).decode("utf-8", "surrogatepass")

    def bitmap(self) -> BitMap:
        return BitMap.deserialize(self.raw(self.u32()))

    def at_end(self) -> bool:
        return self._pos == len(self._buf)
