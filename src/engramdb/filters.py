"""The filter language: Mongo-style metadata filters, compiled once, matched fast.

One language is used everywhere (REST, gRPC, Python; the user's guide is docs/filters.md)::

    {"kind": "note"}                                   implicit equality
    {"age": {"$gte": 18, "$lt": 65}}                   several operators on one field = AND
    {"user.tier": {"$in": ["gold", "silver"]}}         dotted paths look into nested objects
    {"$or": [{"tags": {"$contains": "x"}}, {"$not": {"done": true}}]}
    {"namespace_prefix": ["user-42"], "id_prefix": "mem-"}

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $contains`` on fields, ``$and $or $not``
as logic (``$not`` also works inside a field: ``{"age": {"$not": {"$gt": 5}}}``), and the two
special keys ``namespace_prefix`` (list of strings) and ``id_prefix`` (string), which may appear
anywhere a field may. Several keys in one object are ANDed.

Matching rules (documented here because users and the payload index both rely on them):

* Values are JSON values. ``bool`` is not a number (``True`` never equals ``1``), ints and floats
  compare by numeric value (``1 == 1.0``).
* Comparisons between incompatible types (number vs string, anything vs null) are false, never
  errors. ``$gt``/``$gte``/``$lt``/``$lte`` compare numbers with numbers and strings with strings.
* A missing field matches only ``$ne``, ``$nin``, ``$exists: false`` and negations (``$not``);
  everything else is false. ``{"f": null}`` matches an explicit ``null`` only, not a missing field.
* List-valued fields (Mongo semantics): equality, ``$in`` and range operators match when the whole
  list matches or when *any element* does; ``$ne``/``$nin`` are their exact negations. Operators on
  one field are evaluated independently per element (there is no ``$elemMatch``).
  ``$contains`` is element membership for lists and substring for strings.
* A nested object given as a plain value (``{"a": {"b": 1}}``) is an exact equality against that
  object; use the dotted path ``"a.b"`` to look inside. Dots always mean nesting, so a metadata key
  that itself contains a dot cannot be addressed; paths do not traverse lists.
* ``namespace_prefix`` and ``id_prefix`` are reserved: a metadata field of that name cannot be
  filtered on at the top level of an object.

``compile_filter`` validates the whole expression up front and raises :class:`InvalidFilter`
naming the exact place (``$and[1].age.$gte``) and what to change; nothing is ignored silently.

Size bounds (``MAX_FILTER_*`` below, documented in docs/api-contract.md): a filter is evaluated
against every candidate record, so its size multiplies the cost of a query. The parser counts
as it goes and refuses an oversized filter with code ``filter_too_large`` before any record is
read, whichever entry point (engine, REST, gRPC) it came through.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from engramdb.errors import InvalidFilter

__all__ = [
    "MISSING",
    "And",
    "Cmp",
    "CmpOp",
    "Filter",
    "IdPrefix",
    "Matcher",
    "NamespacePrefix",
    "Node",
    "Not",
    "Or",
    "compile_filter",
    "get_path",
    "is_number",
    "json_equal",
]


class _Missing:
    """Sentinel for "the path does not resolve"; distinct from an explicit ``null``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

CmpOp: TypeAlias = Literal["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains"]
FIELD_OPS: Final[frozenset[str]] = frozenset(
    {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains"}
)
RANGE_OPS: Final[frozenset[str]] = frozenset({"$gt", "$gte", "$lt", "$lte"})
LOGICAL_OPS: Final[frozenset[str]] = frozenset({"$and", "$or", "$not"})
SPECIAL_KEYS: Final[frozenset[str]] = frozenset({"namespace_prefix", "id_prefix"})
# Deep enough for any hand-written or generated filter, shallow enough that a hostile
# request cannot exhaust the interpreter stack while we parse or match it.
MAX_DEPTH: Final = 64
# Size bounds, far above any hand-written or generated filter (a long list of alternatives belongs
# in one ``$in``), low enough that one request cannot make every record cost thousands of tests.
MAX_FILTER_NODES: Final = 1_000  # conditions and logical operators ($and/$or/$not) in one filter
MAX_IN_VALUES: Final = 10_000  # values in one $in/$nin list (= the largest batch of ids)
MAX_FILTER_VALUES: Final = 20_000  # operand values in the whole filter (list and object items count)
MAX_FILTER_STRING_CHARS: Final = 16_384  # one string operand, object key, id_prefix or namespace label
MAX_FIELD_PATH_CHARS: Final = 1_024  # one dotted field path
MAX_NAMESPACE_PREFIX_DEPTH: Final = 32  # labels in namespace_prefix (= the deepest namespace a record has)

_SUPPORTED = ", ".join(sorted(FIELD_OPS | LOGICAL_OPS))


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True, slots=True)
class Cmp:
    """``field op value``. ``field`` is a dotted metadata path; ``$in``/``$nin`` hold a tuple.

    Lists in ``value`` are stored as tuples so the AST cannot be changed through the caller's
    objects after compilation.
    """

    field: str
    op: CmpOp
    value: Any

    @property
    def parts(self) -> tuple[str, ...]:
        """The path split into its nested keys."""
        return tuple(self.field.split("."))


@dataclass(frozen=True, slots=True)
class And:
    """All children match. ``And(())`` matches everything (it comes from ``{}`` in ``$and``/``$or``)."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one child matches."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The child does not match."""

    child: Node


@dataclass(frozen=True, slots=True)
class NamespacePrefix:
    """The record's namespace tuple starts with ``path`` (``()`` matches every record)."""

    path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IdPrefix:
    """The record id starts with ``prefix``."""

    prefix: str


Node: TypeAlias = Cmp | And | Or | Not | NamespacePrefix | IdPrefix
Matcher: TypeAlias = Callable[[str, tuple[str, ...], Mapping[str, Any]], bool]


# --------------------------------------------------------------------------- value semantics


def is_number(x: Any) -> bool:
    """True for ints and floats, False for bools (``True`` is not the number 1 in filters)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_seq(x: Any) -> bool:
    # Tuples count as lists so Python callers and the compiled AST (which freezes lists) agree.
    return isinstance(x, (list, tuple))


def json_equal(a: Any, b: Any) -> bool:
    """Type-aware deep equality of JSON values: bools only equal bools, numbers compare numerically."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if is_number(a):
        return is_number(b) and a == b
    if isinstance(a, str):
        return isinstance(b, str) and a == b
    if a is None:
        return b is None
    if _is_seq(a):
        return _is_seq(b) and len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and len(a) == len(b) and all(k in b and json_equal(v, b[k]) for k, v in a.items())
    return False


def get_path(metadata: Mapping[str, Any], parts: tuple[str, ...]) -> Any:
    """The value at a nested path, or :data:`MISSING`. Only objects are traversed, never lists."""
    cur: Any = metadata
    for p in parts:
        if type(cur) is dict or isinstance(cur, Mapping):
            cur = cur.get(p, MISSING)
        else:
            return MISSING
    return cur


# --------------------------------------------------------------------------- parsing


def _type_name(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "bool"
    if is_number(x):
        return "number"
    if isinstance(x, str):
        return "string"
    if _is_seq(x):
        return "list"
    if isinstance(x, Mapping):
        return "object"
    return type(x).__name__


def _err(path: str, msg: str) -> InvalidFilter:
    where = f" at `{path}`" if path else " at the top level"
    return InvalidFilter(f"invalid filter{where}: {msg}", details={"path": path})


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _too_large(path: str, msg: str, limit: int) -> InvalidFilter:
    where = f" at `{path}`" if path else ""
    return InvalidFilter(
        f"filter too large{where}: {msg}", code="filter_too_large", details={"path": path, "limit": limit}
    )


def _check_string(s: str, path: str, what: str) -> None:
    if len(s) > MAX_FILTER_STRING_CHARS:
        raise _too_large(path, f"{what} is longer than {MAX_FILTER_STRING_CHARS} characters", MAX_FILTER_STRING_CHARS)


class _Sizes:
    """Running totals of one parse: an oversized filter is refused after a bounded amount of work."""

    __slots__ = ("nodes", "values")

    def __init__(self) -> None:
        self.nodes = 0
        self.values = 0

    def node(self, path: str) -> None:
        self.nodes += 1
        if self.nodes > MAX_FILTER_NODES:
            raise _too_large(
                path,
                f"more than {MAX_FILTER_NODES} conditions and operators; write alternatives for one field as "
                '{"field": {"$in": [...]}}, or split the query',
                MAX_FILTER_NODES,
            )

    def value(self, path: str) -> None:
        self.values += 1
        if self.values > MAX_FILTER_VALUES:
            raise _too_large(
                path,
                f"more than {MAX_FILTER_VALUES} values in all operands together; split the query",
                MAX_FILTER_VALUES,
            )


def _freeze(value: Any, path: str, depth: int, sz: _Sizes) -> Any:
    """Validate a JSON operand and copy it (lists → tuples) so later caller mutation cannot leak in."""
    if depth > MAX_DEPTH:
        raise _err(path, f"value nested deeper than {MAX_DEPTH} levels")
    sz.value(path)
    if isinstance(value, str):
        _check_string(value, path, "a string value")
        return value
    if value is None or isinstance(value, bool):
        return value
    if is_number(value):
        if isinstance(value, float) and math.isnan(value):
            raise _err(path, "NaN is not a valid filter value (it equals nothing)")
        return value
    if _is_seq(value):
        return tuple(_freeze(v, f"{path}[{i}]", depth + 1, sz) for i, v in enumerate(value))
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _err(path, f"object keys must be strings, got {_type_name(k)} {k!r}")
            _check_string(k, path, "an object key")
            out[k] = _freeze(v, _join(path, k), depth + 1, sz)
        return out
    raise _err(
        path,
        f"unsupported value type {type(value).__name__}; use JSON values (null, bool, number, string, list, object)",
    )


def _check_field_name(key: str, path: str) -> None:
    if not key:
        raise _err(path, "field names must not be empty")
    if any(not part for part in key.split(".")):
        raise _err(path, f"field path {key!r} has an empty segment; write nested paths like 'a.b.c'")
    if any(part.startswith("$") for part in key.split(".")):
        # A '$' inside a dotted path is almost always a misplaced operator ("age.$gt").
        raise _err(path, f"field path {key!r} contains an operator; write {{'field': {{'$op': value}}}}")


def _parse_object(obj: Mapping[Any, Any], path: str, depth: int, sz: _Sizes) -> Node:
    if depth > MAX_DEPTH:
        raise _err(path, f"filter nested deeper than {MAX_DEPTH} levels")
    children: list[Node] = []
    for key, val in obj.items():
        if not isinstance(key, str):
            raise _err(path, f"keys must be strings, got {_type_name(key)} {key!r}")
        if len(key) > MAX_FIELD_PATH_CHARS:
            # Before the key is copied into any path or message.
            raise _too_large(path, f"a key is longer than {MAX_FIELD_PATH_CHARS} characters", MAX_FIELD_PATH_CHARS)
        kpath = _join(path, key)
        if key.startswith("$"):
            children.append(_parse_logical(key, val, kpath, depth, sz))
        elif key == "namespace_prefix":
            if not _is_seq(val) or not all(isinstance(p, str) for p in val):
                raise _err(kpath, f'namespace_prefix needs a list of strings like ["user-42"], got {_type_name(val)}')
            if len(val) > MAX_NAMESPACE_PREFIX_DEPTH:
                raise _too_large(
                    kpath,
                    f"namespace_prefix has more than {MAX_NAMESPACE_PREFIX_DEPTH} labels (no namespace is deeper)",
                    MAX_NAMESPACE_PREFIX_DEPTH,
                )
            for i, label in enumerate(val):
                _check_string(label, f"{kpath}[{i}]", "a namespace label")
            sz.node(kpath)
            children.append(NamespacePrefix(tuple(val)))
        elif key == "id_prefix":
            if not isinstance(val, str):
                raise _err(kpath, f"id_prefix needs a string, got {_type_name(val)}")
            _check_string(val, kpath, "id_prefix")
            sz.node(kpath)
            children.append(IdPrefix(val))
        else:
            _check_field_name(key, path if not key else kpath)
            children.extend(_parse_field(key, val, kpath, depth, sz))
    if len(children) == 1:
        return children[0]
    sz.node(path)
    return And(tuple(children))


def _parse_logical(key: str, val: Any, path: str, depth: int, sz: _Sizes) -> Node:
    if key in ("$and", "$or"):
        if not _is_seq(val) or not val:
            got = "an empty list" if _is_seq(val) else _type_name(val)
            raise _err(path, f"{key} needs a non-empty list of filter objects, got {got}")
        sz.node(path)
        kids: list[Node] = []
        for i, item in enumerate(val):
            ipath = f"{path}[{i}]"
            if not isinstance(item, Mapping):
                raise _err(ipath, f"{key} items must be filter objects, got {_type_name(item)}")
            if not item:
                sz.node(ipath)
            kids.append(_parse_object(item, ipath, depth + 1, sz) if item else And(()))
        if len(kids) == 1:
            return kids[0]
        return And(tuple(kids)) if key == "$and" else Or(tuple(kids))
    if key == "$not":
        if not isinstance(val, Mapping):
            raise _err(path, f"$not needs a filter object, got {_type_name(val)}")
        sz.node(path)
        if not val:
            sz.node(path)
        return Not(_parse_object(val, path, depth + 1, sz) if val else And(()))
    if key in FIELD_OPS:
        raise _err(path, f'{key} must be applied to a field, like {{"age": {{"{key}": ...}}}}')
    raise _err(path, f"unknown operator {key!r}; supported: {_SUPPORTED}")


def _parse_field(field: str, val: Any, path: str, depth: int, sz: _Sizes) -> list[Node]:
    if not (isinstance(val, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in val)):
        # No operator keys: implicit equality (an object value is an exact object match).
        sz.node(path)
        return [Cmp(field, "$eq", _freeze(val, path, depth + 1, sz))]
    out: list[Node] = []
    for op, operand in val.items():
        if not isinstance(op, str) or not op.startswith("$"):
            raise _err(
                path,
                f"cannot mix operators and plain keys ({op!r}) in one object; "
                f'use only operators, or use a dotted path like "{field}.{op}" for nested fields',
            )
        out.append(_parse_op(field, op, operand, _join(path, op), depth + 1, sz))
    return out


def _parse_op(field: str, op: str, operand: Any, path: str, depth: int, sz: _Sizes) -> Node:
    if depth > MAX_DEPTH:
        raise _err(path, f"filter nested deeper than {MAX_DEPTH} levels")
    if op in FIELD_OPS:
        sz.node(path)
    if op in ("$eq", "$ne"):
        return Cmp(field, op, _freeze(operand, path, depth, sz))  # type: ignore[arg-type]
    if op in RANGE_OPS:
        if not (is_number(operand) or isinstance(operand, str)):
            raise _err(path, f"{op} needs a number or a string, got {_type_name(operand)}")
        return Cmp(field, op, _freeze(operand, path, depth, sz))  # type: ignore[arg-type]
    if op in ("$in", "$nin"):
        if not _is_seq(operand):
            raise _err(path, f"{op} needs a list of values, got {_type_name(operand)}")
        if len(operand) > MAX_IN_VALUES:
            raise _too_large(path, f"{op} has more than {MAX_IN_VALUES} values; split the query", MAX_IN_VALUES)
        return Cmp(field, op, _freeze(operand, path, depth, sz))  # type: ignore[arg-type]
    if op == "$exists":
        if not isinstance(operand, bool):
            raise _err(path, f"$exists needs true or false, got {_type_name(operand)}")
        return Cmp(field, "$exists", operand)
    if op == "$contains":
        return Cmp(field, "$contains", _freeze(operand, path, depth, sz))
    if op == "$not":
        if not (isinstance(operand, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in operand)):
            shown = "an object without operators" if isinstance(operand, Mapping) else _type_name(operand)
            raise _err(path, f'$not inside a field needs an operator object like {{"$gt": 5}}, got {shown}')
        sz.node(path)
        kids = _parse_field(field, operand, path, depth, sz)
        if len(kids) > 1:
            sz.node(path)
        return Not(kids[0] if len(kids) == 1 else And(tuple(kids)))
    if op in ("$and", "$or"):
        raise _err(path, f'{op} is not allowed inside a field; write {{"{op}": [{{"{field}": ...}}, ...]}}')
    raise _err(path, f"unknown operator {op!r}; supported: {_SUPPORTED}")


# --------------------------------------------------------------------------- compilation to closures


def _getter(parts: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    # Specialised for the common one- and two-segment paths: this runs once per candidate record.
    if len(parts) == 1:
        key = parts[0]

        def get1(md: Mapping[str, Any]) -> Any:
            return md.get(key, MISSING)

        return get1
    if len(parts) == 2:
        k1, k2 = parts

        def get2(md: Mapping[str, Any]) -> Any:
            cur = md.get(k1, MISSING)
            if type(cur) is dict or (cur is not MISSING and isinstance(cur, Mapping)):
                return cur.get(k2, MISSING)
            return MISSING

        return get2
    return lambda md: get_path(md, parts)


def _scalar_eq_test(v: Any) -> Callable[[Any], bool]:
    """Equality against one operand value, without list-element semantics."""
    if isinstance(v, bool):
        return lambda x: x is v or (isinstance(x, bool) and x == v)
    if is_number(v):
        return lambda x: is_number(x) and x == v
    if isinstance(v, str):
        return lambda x: isinstance(x, str) and x == v
    if v is None:
        return lambda x: x is None
    return lambda x: json_equal(x, v)


def _eq_test(v: Any) -> Callable[[Any], bool]:
    """Field equality with Mongo list semantics: the whole value or any list element equals ``v``."""
    if isinstance(v, str):
        # ``==`` between a str and any non-str JSON value is False, so list ``in`` is exact here.
        def eq_str(x: Any) -> bool:
            if isinstance(x, str):
                return x == v
            return _is_seq(x) and v in x

        return eq_str
    single = _scalar_eq_test(v)

    def eq_any(x: Any) -> bool:
        if single(x):
            return True
        return _is_seq(x) and any(single(e) for e in x)

    return eq_any


def _in_test(values: tuple[Any, ...]) -> Callable[[Any], bool]:
    # Bucket the operands by type so the common case is one hash lookup; the type guards keep
    # True out of {1} and 1 out of {True} (Python sets consider them equal).
    strs = frozenset(v for v in values if isinstance(v, str))
    bools = frozenset(v for v in values if isinstance(v, bool))
    nums = frozenset(v for v in values if is_number(v))
    has_none = any(v is None for v in values)
    compounds = tuple(v for v in values if _is_seq(v) or isinstance(v, Mapping))

    def one(x: Any) -> bool:
        if isinstance(x, str):
            return x in strs
        if isinstance(x, bool):
            return x in bools
        if is_number(x):
            return x in nums
        if x is None:
            return has_none
        return any(json_equal(x, c) for c in compounds) if compounds else False

    def test(x: Any) -> bool:
        if one(x):
            return True
        return _is_seq(x) and any(one(e) for e in x)

    return test


_RANGE_FN: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def _range_test(op: str, v: Any) -> Callable[[Any], bool]:
    fn = _RANGE_FN[op]
    if is_number(v):
        # Exact-type fast path first (bool's type is not int, so True never compares with 5);
        # int/float subclasses other than bool still count as numbers via the slow path.
        def num_test(x: Any) -> bool:
            t = type(x)
            if t is int or t is float:
                return fn(x, v)
            if is_number(x):
                return fn(x, v)
            return _is_seq(x) and any(is_number(e) and fn(e, v) for e in x)

        return num_test

    def str_test(x: Any) -> bool:
        if isinstance(x, str):
            return fn(x, v)
        return _is_seq(x) and any(isinstance(e, str) and fn(e, v) for e in x)

    return str_test


def _contains_test(v: Any) -> Callable[[Any], bool]:
    if isinstance(v, str):

        def contains_str(x: Any) -> bool:
            # Substring for strings, element membership for lists (str == non-str is False).
            return (isinstance(x, str) or _is_seq(x)) and v in x

        return contains_str
    single = _scalar_eq_test(v)
    return lambda x: _is_seq(x) and any(single(e) for e in x)


def _value_test(op: str, v: Any) -> Callable[[Any], bool]:
    if op == "$eq":
        return _eq_test(v)
    if op == "$ne":
        eq = _eq_test(v)
        return lambda x: not eq(x)
    if op in RANGE_OPS:
        return _range_test(op, v)
    if op == "$in":
        return _in_test(v)
    if op == "$nin":
        isin = _in_test(v)
        return lambda x: not isin(x)
    if op == "$contains":
        return _contains_test(v)
    if op == "$exists":
        return (lambda x: x is not MISSING) if v else (lambda x: x is MISSING)
    raise AssertionError(f"unhandled operator {op}")  # pragma: no cover - the parser rejects it first


def _always(rid: str, ns: tuple[str, ...], md: Mapping[str, Any]) -> bool:
    return True


def _compile_field(parts: tuple[str, ...], tests: list[Callable[[Any], bool]]) -> Matcher:
    """One matcher for all the conditions on one path, reading the value once."""
    if len(tests) == 1:
        test = tests[0]
        if len(parts) == 1:
            key = parts[0]
            return lambda rid, ns, md: test(md.get(key, MISSING))
        get = _getter(parts)
        return lambda rid, ns, md: test(get(md))
    get = _getter(parts)
    if len(tests) == 2:
        t1, t2 = tests

        def both(rid: str, ns: tuple[str, ...], md: Mapping[str, Any]) -> bool:
            x = get(md)
            return t1(x) and t2(x)

        return both
    ts = tuple(tests)

    def every(rid: str, ns: tuple[str, ...], md: Mapping[str, Any]) -> bool:
        x = get(md)
        return all(t(x) for t in ts)

    return every


def _compile_and(children: tuple[Node, ...]) -> Matcher:
    # Conditions on the same path (``{"age": {"$gte": 18, "$lt": 65}}``) share one lookup, and
    # prefix checks run first: they are the cheapest and AND is order-independent here.
    by_path: dict[str, list[Callable[[Any], bool]]] = {}
    rest: list[Node] = []
    for c in children:
        if isinstance(c, Cmp):
            by_path.setdefault(c.field, []).append(_value_test(c.op, c.value))
        else:
            rest.append(c)
    cheap = [_compile(c) for c in rest if isinstance(c, (IdPrefix, NamespacePrefix))]
    fields = [_compile_field(tuple(p.split(".")), tests) for p, tests in by_path.items()]
    other = [_compile(c) for c in rest if not isinstance(c, (IdPrefix, NamespacePrefix))]
    fs = tuple(cheap + fields + other)
    if not fs:
        return _always
    if len(fs) == 1:
        return fs[0]
    if len(fs) == 2:
        a, b = fs
        return lambda rid, ns, md: a(rid, ns, md) and b(rid, ns, md)

    def all_of(rid: str, ns: tuple[str, ...], md: Mapping[str, Any]) -> bool:
        for f in fs:  # noqa: SIM110 - a plain loop is faster than all(<genexpr>) on this hot path
            if not f(rid, ns, md):
                return False
        return True

    return all_of


def _merge_alternatives(children: tuple[Node, ...]) -> tuple[Node, ...]:
    """``$or`` children with every ``$eq``/``$in`` on one path merged into one ``$in``.

    ``{"$or": [{"u": 1}, {"u": 2}, ...]}`` then costs one hash lookup per record instead of one
    closure call per branch. Exact: ``$eq v`` is ``$in [v]`` (both match the whole value or any
    list element), and an OR of ``$in`` tests is the ``$in`` of the union of their values.
    """
    by_field: dict[str, list[Any]] = {}
    first: dict[str, int] = {}
    out: list[Node | None] = []
    for c in children:
        if isinstance(c, Cmp) and c.op in ("$eq", "$in"):
            if c.field not in by_field:
                by_field[c.field] = []
                first[c.field] = len(out)
                out.append(None)  # placeholder: the merged test keeps the first branch's position
            if c.op == "$eq":
                by_field[c.field].append(c.value)
            else:
                by_field[c.field].extend(c.value)
        else:
            out.append(c)
    if len(out) == len(children):
        return children  # no path appears twice: nothing to merge
    for field, values in by_field.items():
        out[first[field]] = Cmp(field, "$in", tuple(values))
    return tuple(n for n in out if n is not None)


def _compile(node: Node) -> Matcher:
    if isinstance(node, Cmp):
        return _compile_field(node.parts, [_value_test(node.op, node.value)])
    if isinstance(node, And):
        return _compile_and(node.children)
    if isinstance(node, Or):
        fs = tuple(_compile(c) for c in _merge_alternatives(node.children))
        if len(fs) == 1:
            return fs[0]
        if not fs:
            return lambda rid, ns, md: False
        if len(fs) == 2:
            a, b = fs
            return lambda rid, ns, md: a(rid, ns, md) or b(rid, ns, md)

        def any_of(rid: str, ns: tuple[str, ...], md: Mapping[str, Any]) -> bool:
            for f in fs:  # noqa: SIM110 - a plain loop is faster than any(<genexpr>) on this hot path
                if f(rid, ns, md):
                    return True
            return False

        return any_of
    if isinstance(node, Not):
        f = _compile(node.child)
        return lambda rid, ns, md: not f(rid, ns, md)
    if isinstance(node, NamespacePrefix):
        path = node.path
        n = len(path)
        if n == 0:
            return _always
        # Lists are accepted too so callers holding a JSON namespace need not convert it first.
        return lambda rid, ns, md: (ns[:n] if type(ns) is tuple else tuple(ns[:n])) == path
    if isinstance(node, IdPrefix):
        prefix = node.prefix
        return lambda rid, ns, md: rid.startswith(prefix)
    raise TypeError(f"not a filter node: {node!r}")


def _fields(node: Node, out: set[str]) -> None:
    if isinstance(node, Cmp):
        out.add(node.field)
    elif isinstance(node, (And, Or)):
        for c in node.children:
            _fields(c, out)
    elif isinstance(node, Not):
        _fields(node.child, out)


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    if isinstance(v, dict):
        return {k: _thaw(x) for k, x in v.items()}
    return v


def _to_obj(node: Node) -> dict[str, Any]:
    if isinstance(node, Cmp):
        return {node.field: {node.op: _thaw(node.value)}}
    if isinstance(node, And):
        return {"$and": [_to_obj(c) for c in node.children]} if node.children else {}
    if isinstance(node, Or):
        return {"$or": [_to_obj(c) for c in node.children]}
    if isinstance(node, Not):
        return {"$not": _to_obj(node.child)}
    if isinstance(node, NamespacePrefix):
        return {"namespace_prefix": list(node.path)}
    return {"id_prefix": node.prefix}


# --------------------------------------------------------------------------- public API


class Filter:
    """A validated, compiled filter.

    ``node`` is the AST (walked by the payload index and the planner); ``matches`` runs the
    pre-built closures, so no dict is re-interpreted per record.
    """

    __slots__ = ("_fields", "_key", "_match", "node")

    def __init__(self, node: Node) -> None:
        self.node: Node = node
        self._key: str | None = None
        self._match: Matcher = _compile(node)
        acc: set[str] = set()
        _fields(node, acc)
        self._fields: frozenset[str] = frozenset(acc)

    def matches(self, record_id: str, namespace: tuple[str, ...], metadata: Mapping[str, Any]) -> bool:
        """True if the record with this id, namespace and metadata satisfies the filter."""
        return self._match(record_id, namespace, metadata)

    @property
    def matcher(self) -> Matcher:
        """The compiled ``(record_id, namespace, metadata) -> bool`` closure, for hot loops."""
        return self._match

    def fields(self) -> set[str]:
        """The metadata paths the filter reads (dotted), excluding namespace and id prefixes."""
        return set(self._fields)

    def to_dict(self) -> dict[str, Any]:
        """An equivalent filter expression in canonical form (explicit operators, lists not tuples)."""
        return _to_obj(self.node)

    @property
    def cache_key(self) -> str:
        """A string equal for equal filters, for caches of their results.

        ``repr`` keeps ``True``, ``1`` and ``1.0`` apart, which equality of the nodes does not.
        """
        if self._key is None:
            self._key = repr(self.node)
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other.node == self.node

    def __hash__(self) -> int:
        return hash(self.cache_key)

    def __repr__(self) -> str:
        return f"Filter({self.node!r})"


def compile_filter(obj: Mapping[str, Any] | Filter | None) -> Filter | None:
    """Validate and compile a filter expression.

    Returns ``None`` for ``None`` or ``{}`` (no filtering), passes an already compiled
    :class:`Filter` through, and raises :class:`InvalidFilter` naming the path of the first
    problem (unknown operator, wrong operand type, bad key) otherwise.
    """
    if obj is None:
        return None
    if isinstance(obj, Filter):
        return obj
    if not isinstance(obj, Mapping):
        raise _err("", f"a filter must be an object like {{'field': value}}, got {_type_name(obj)}")
    if not obj:
        return None
    key = _flat_key(obj)
    if key is None:
        return Filter(_parse_object(obj, "", 0, _Sizes()))
    flt = _COMPILED.get(key)
    if flt is None:
        flt = Filter(_parse_object(obj, "", 0, _Sizes()))  # raises before anything is cached
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[key] = flt
    return flt


# Compiled filters of the commonest shape, ``{"field": value, ...}`` with str/int/bool values
# (a tenant, a user, a session): most queries repeat one, and compiling it again costs as much as
# the rest of a search's Python. Filters are immutable, so one compiled object is shared.
_COMPILED: dict[tuple[tuple[str, type, Any], ...], Filter] = {}
_COMPILED_MAX = 1024
_FLAT_TYPES: Final = (str, int, bool)


def _flat_key(obj: Mapping[str, Any]) -> tuple[tuple[str, type, Any], ...] | None:
    """A cache key for a plain dict of field -> str/int/bool, else None (compiled every time).

    The value's exact type is part of the key: ``1`` and ``True`` are equal in Python but not as
    filter values. Floats are left out (``-0.0 == 0.0``), as are subclasses of dict or str.
    """
    if type(obj) is not dict or len(obj) > 8:
        return None
    key = []
    for k, v in obj.items():
        t = type(v)
        if type(k) is not str or t not in _FLAT_TYPES:
            return None
        key.append((k, t, v))
    return tuple(key)
