"""Tests of the filter language: every operator, every error, and a property test against a
deliberately naive reference evaluator that re-interprets the raw dict on every call."""

from __future__ import annotations

import math
import operator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engramdb.errors import InvalidArgument, InvalidFilter
from engramdb.filters import (
    MISSING,
    And,
    Cmp,
    Filter,
    IdPrefix,
    NamespacePrefix,
    Not,
    Or,
    compile_filter,
    get_path,
    json_equal,
)

# --------------------------------------------------------------------------- helpers


def m(flt: dict[str, Any], md: dict[str, Any], rid: str = "r1", ns: tuple[str, ...] = ()) -> bool:
    f = compile_filter(flt)
    assert f is not None
    return f.matches(rid, ns, md)


# --------------------------------------------------------------------------- compile basics


def test_none_and_empty_mean_no_filter() -> None:
    assert compile_filter(None) is None
    assert compile_filter({}) is None


def test_compiled_filter_passes_through() -> None:
    f = compile_filter({"a": 1})
    assert compile_filter(f) is f


def test_ast_shapes() -> None:
    f = compile_filter({"age": {"$gte": 18, "$lt": 65}, "kind": "note"})
    assert f is not None
    assert f.node == And((Cmp("age", "$gte", 18), Cmp("age", "$lt", 65), Cmp("kind", "$eq", "note")))
    f = compile_filter({"$or": [{"a": 1}, {"$not": {"b": {"$in": [1, 2]}}}]})
    assert f is not None
    assert f.node == Or((Cmp("a", "$eq", 1), Not(Cmp("b", "$in", (1, 2)))))
    f = compile_filter({"namespace_prefix": ["u", "m"], "id_prefix": "x"})
    assert f is not None
    assert f.node == And((NamespacePrefix(("u", "m")), IdPrefix("x")))
    f = compile_filter({"age": {"$not": {"$gt": 5}}})
    assert f is not None
    assert f.node == Not(Cmp("age", "$gt", 5))
    # A single-item $and/$or collapses to its only child.
    f = compile_filter({"$and": [{"a": 1}]})
    assert f is not None and f.node == Cmp("a", "$eq", 1)


def test_fields_lists_metadata_paths_only() -> None:
    f = compile_filter(
        {"a": 1, "$or": [{"b.c": {"$gt": 1}}, {"$not": {"d": {"$exists": True}}}], "namespace_prefix": ["x"]}
    )
    assert f is not None
    assert f.fields() == {"a", "b.c", "d"}
    f.fields().add("zzz")  # a copy: callers cannot corrupt the filter
    assert "zzz" not in f.fields()


def test_operands_are_copied_at_compile_time() -> None:
    values = ["a", "b"]
    obj = {"t": {"$in": values}}
    f = compile_filter(obj)
    values.append("c")
    assert f is not None
    assert not f.matches("r", (), {"t": "c"})


def test_to_dict_round_trips() -> None:
    src = {"a": {"$in": [1, [2, 3]]}, "$or": [{"b": {"x": 1}}, {"$not": {"id_prefix": "q"}}], "namespace_prefix": ["u"]}
    f = compile_filter(src)
    assert f is not None
    again = compile_filter(f.to_dict())
    assert again == f
    assert isinstance(f.to_dict()["$and"][0]["a"]["$in"][1], list)


def test_filter_equality_and_hash() -> None:
    a, b = compile_filter({"x": 1}), compile_filter({"x": 1})
    assert a == b and hash(a) == hash(b)
    assert a != compile_filter({"x": 2})
    assert "Cmp" in repr(a)


def test_matcher_property_is_the_compiled_closure() -> None:
    f = compile_filter({"a": 1})
    assert f is not None
    assert f.matcher("r", (), {"a": 1}) is True


# --------------------------------------------------------------------------- equality


def test_implicit_and_explicit_equality() -> None:
    assert m({"k": "note"}, {"k": "note"})
    assert not m({"k": "note"}, {"k": "Note"})
    assert m({"k": {"$eq": "note"}}, {"k": "note"})
    assert m({"n": 1}, {"n": 1.0})  # numbers compare by value
    assert m({"n": None}, {"n": None})


def test_bool_is_not_a_number() -> None:
    assert not m({"n": 1}, {"n": True})
    assert not m({"n": True}, {"n": 1})
    assert not m({"n": 0}, {"n": False})
    assert m({"n": True}, {"n": True})
    assert not m({"n": {"$in": [1]}}, {"n": True})
    assert not m({"n": {"$in": [True]}}, {"n": 1})
    assert not m({"n": {"$gt": 0}}, {"n": True})
    assert m({"n": {"$ne": 1}}, {"n": True})


def test_null_matches_explicit_null_only() -> None:
    assert not m({"n": None}, {})
    assert m({"n": {"$ne": None}}, {})
    assert not m({"n": None}, {"n": 0})


def test_equality_on_list_fields() -> None:
    md = {"tags": ["a", "b", 3]}
    assert m({"tags": "a"}, md)
    assert m({"tags": 3}, md)
    assert not m({"tags": "c"}, md)
    assert m({"tags": ["a", "b", 3]}, md)  # whole-list equality
    assert not m({"tags": ["b", "a", 3]}, md)  # order matters for whole-list equality
    assert m({"tags": ["x"]}, {"tags": [["x"], "y"]})  # an element that is itself the list
    assert not m({"tags": {"$ne": "a"}}, md)
    assert m({"tags": {"$ne": "z"}}, md)
    assert m({"tags": []}, {"tags": []})
    assert not m({"tags": [True]}, {"tags": [1]})  # bool is not a number inside lists either
    assert not m({"tags": [1]}, {"tags": [True]})
    assert not m({"o": {"k": 1}}, {"o": {"k": True}})
    assert m({"o": {"k": 1}}, {"o": {"k": 1.0}})
    assert not m({"tags": []}, {"tags": ["a"]})


def test_object_values_are_exact_matches() -> None:
    md = {"o": {"x": 1, "y": [1, 2]}}
    assert m({"o": {"x": 1, "y": [1, 2]}}, md)
    assert not m({"o": {"x": 1}}, md)
    assert m({"o": {}}, {"o": {}})
    assert m({"o": {"y": [1.0, 2]}, "o.x": 1}, {"o": {"y": [1, 2]}, "x": 0}) is False
    assert m({"o.y": [1.0, 2]}, md)


def test_dotted_paths() -> None:
    md = {"a": {"b": {"c": 5}}, "l": [{"b": 1}], "s": "str"}
    assert m({"a.b.c": 5}, md)
    assert m({"a.b.c": {"$gt": 4}}, md)
    assert not m({"a.b.x": 5}, md)
    assert m({"a.b.x": {"$exists": False}}, md)
    assert not m({"a.b.c.d": {"$exists": True}}, md)  # 5 is not an object
    assert not m({"l.b": 1}, md)  # paths do not traverse lists
    assert not m({"s.x": {"$exists": True}}, md)
    assert m({"a.b": {"c": 5}}, md)


def test_get_path() -> None:
    assert get_path({"a": {"b": 1}}, ("a", "b")) == 1
    assert get_path({"a": {"b": 1}}, ("a", "c")) is MISSING
    assert get_path({"a": [1]}, ("a", "0")) is MISSING
    assert repr(MISSING) == "MISSING"


# --------------------------------------------------------------------------- comparison operators


@pytest.mark.parametrize(
    ("op", "operand", "value", "expected"),
    [
        ("$gt", 5, 6, True),
        ("$gt", 5, 5, False),
        ("$gte", 5, 5, True),
        ("$gte", 5, 4.9, False),
        ("$lt", 5, 4.5, True),
        ("$lt", 5, 5, False),
        ("$lte", 5, 5.0, True),
        ("$lte", 5, 6, False),
        ("$gt", "b", "c", True),
        ("$gt", "b", "b", False),
        ("$gte", "b", "b", True),
        ("$lt", "b", "a", True),
        ("$lte", "b", "ba", False),
        ("$gt", 5, "6", False),  # number vs string: simply false
        ("$lt", "5", 4, False),
        ("$gt", 0, None, False),
        ("$gt", 0, True, False),
        ("$gt", 5, [1, 7], True),  # any element
        ("$gt", 5, [1, 2], False),
        ("$gt", 5, [], False),
        ("$gt", 5, {"x": 9}, False),
        ("$gt", -1e308, math.nan, False),
        ("$lt", math.inf, 1e308, True),
        ("$gt", 2**63, 2**64, True),  # big ints compare exactly
        ("$gt", 2**53, float(2**53), False),
    ],
)
def test_range_operators(op: str, operand: Any, value: Any, expected: bool) -> None:
    assert m({"f": {op: operand}}, {"f": value}) is expected


@pytest.mark.parametrize("op", ["$gt", "$gte", "$lt", "$lte", "$eq", "$in", "$contains"])
def test_missing_field_does_not_match_positive_operators(op: str) -> None:
    operand: Any = [1] if op == "$in" else 1
    assert not m({"f": {op: operand}}, {})


def test_missing_field_matches_negations() -> None:
    assert m({"f": {"$ne": 1}}, {})
    assert m({"f": {"$nin": [1]}}, {})
    assert m({"f": {"$exists": False}}, {})
    assert m({"f": {"$not": {"$gt": 1}}}, {})
    assert m({"$not": {"f": 1}}, {})


def test_in_and_nin() -> None:
    assert m({"c": {"$in": ["red", "blue"]}}, {"c": "red"})
    assert not m({"c": {"$in": ["red", "blue"]}}, {"c": "green"})
    assert m({"c": {"$in": ["x", 2]}}, {"c": 2.0})
    assert m({"c": {"$in": [None]}}, {"c": None})
    assert not m({"c": {"$in": [None]}}, {})
    assert m({"c": {"$in": [["a", "b"]]}}, {"c": ["a", "b"]})
    assert m({"c": {"$in": [{"k": 1}]}}, {"c": {"k": 1}})
    assert m({"c": {"$in": ["b"]}}, {"c": ["a", "b"]})  # any element
    assert not m({"c": {"$in": []}}, {"c": "a"})
    assert m({"c": {"$nin": []}}, {"c": "a"})
    assert m({"c": {"$nin": ["red"]}}, {"c": "green"})
    assert not m({"c": {"$nin": ["red"]}}, {"c": ["green", "red"]})
    assert m({"c": {"$nin": ["red"]}}, {})
    assert m({"c": {"$in": (1, 2)}}, {"c": 2})  # tuples are accepted as lists


def test_exists() -> None:
    assert m({"f": {"$exists": True}}, {"f": None})
    assert not m({"f": {"$exists": True}}, {})
    assert m({"f": {"$exists": False}}, {"g": 1})
    assert not m({"f": {"$exists": False}}, {"f": 0})


def test_contains() -> None:
    assert m({"t": {"$contains": "a"}}, {"t": ["a", "b"]})
    assert not m({"t": {"$contains": "a"}}, {"t": ["ab"]})  # lists: membership, not substring
    assert m({"t": {"$contains": "ell"}}, {"t": "hello"})  # strings: substring
    assert m({"t": {"$contains": ""}}, {"t": ""})
    assert not m({"t": {"$contains": "x"}}, {"t": "hello"})
    assert m({"t": {"$contains": 1}}, {"t": [1.0, 2]})
    assert not m({"t": {"$contains": 1}}, {"t": [True]})
    assert not m({"t": {"$contains": 1}}, {"t": 1})  # a scalar number contains nothing
    assert m({"t": {"$contains": None}}, {"t": [None]})
    assert m({"t": {"$contains": [1]}}, {"t": [[1], 2]})
    assert m({"t": {"$contains": {"a": 1}}}, {"t": [{"a": 1}]})
    assert not m({"t": {"$contains": "a"}}, {})
    assert not m({"t": {"$contains": "a"}}, {"t": {"a": 1}})


# --------------------------------------------------------------------------- logic and special keys


def test_multiple_keys_are_and() -> None:
    assert m({"a": 1, "b": 2}, {"a": 1, "b": 2})
    assert not m({"a": 1, "b": 2}, {"a": 1, "b": 3})
    assert m({"age": {"$gte": 18, "$lt": 65}}, {"age": 30})
    assert not m({"age": {"$gte": 18, "$lt": 65}}, {"age": 65})


def test_and_or_not() -> None:
    md = {"a": 1, "b": "x"}
    assert m({"$and": [{"a": 1}, {"b": "x"}]}, md)
    assert not m({"$and": [{"a": 1}, {"b": "y"}]}, md)
    assert m({"$or": [{"a": 2}, {"b": "x"}]}, md)
    assert not m({"$or": [{"a": 2}, {"b": "y"}]}, md)
    assert m({"$or": [{"a": 2}, {"b": "y"}, {"a": 1}]}, md)
    assert not m({"$and": [{"a": 1}, {"b": "x"}, {"c": 1}]}, md)
    assert m({"$not": {"a": 2}}, md)
    assert not m({"$not": {"a": 1, "b": "x"}}, md)
    assert m({"$not": {"a": 1, "b": "y"}}, md)
    assert m({"a": {"$not": {"$gt": 5}}}, md)
    assert not m({"a": {"$not": {"$lt": 5}}}, md)
    assert m({"a": {"$not": {"$not": {"$lt": 5}}}}, md)
    assert m({"a": {"$not": {"$gt": 5, "$lt": 0}}}, md)
    assert m({"$and": [{}, {"a": 1}]}, md)  # {} inside $and is "anything"
    assert m({"$or": [{}, {"a": 7}]}, md)
    assert not m({"$not": {}}, md)


def test_namespace_prefix() -> None:
    assert m({"namespace_prefix": ["u1"]}, {}, ns=("u1", "mem"))
    assert m({"namespace_prefix": ["u1", "mem"]}, {}, ns=("u1", "mem"))
    assert not m({"namespace_prefix": ["u1", "mem", "x"]}, {}, ns=("u1", "mem"))
    assert not m({"namespace_prefix": ["u"]}, {}, ns=("u1",))  # whole segments, not string prefix
    assert m({"namespace_prefix": []}, {}, ns=())
    assert not m({"namespace_prefix": ["u1"]}, {}, ns=())
    f = compile_filter({"namespace_prefix": ["u1"]})
    assert f is not None and f.matches("r", ["u1", "x"], {})  # type: ignore[arg-type]


def test_id_prefix() -> None:
    assert m({"id_prefix": "mem-"}, {}, rid="mem-1")
    assert not m({"id_prefix": "mem-"}, {}, rid="me")
    assert m({"id_prefix": ""}, {}, rid="x")


def test_special_keys_inside_logic() -> None:
    flt = {"$or": [{"namespace_prefix": ["a"]}, {"id_prefix": "z", "k": 1}]}
    assert m(flt, {}, rid="q", ns=("a",))
    assert m(flt, {"k": 1}, rid="z1", ns=("b",))
    assert not m(flt, {"k": 2}, rid="z1", ns=("b",))
    assert m({"$not": {"namespace_prefix": ["a"]}}, {}, ns=("b",))


def test_json_equal() -> None:
    assert json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})
    assert not json_equal({"a": 1}, {"b": 1})
    assert not json_equal([True], [1])
    assert json_equal((1, 2), [1, 2])
    assert not json_equal(object(), object())


# --------------------------------------------------------------------------- errors

ERRORS: list[tuple[Any, str, str]] = [
    ({"$foo": 1}, "`$foo`", "unknown operator '$foo'"),
    ({"a": {"$regex": "x"}}, "`a.$regex`", "unknown operator"),
    ({"$or": [{"a": {"$size": 1}}]}, "`$or[0].a.$size`", "unknown operator"),
    ({"$gt": 1}, "`$gt`", "must be applied to a field"),
    ({"a": {"$in": 3}}, "`a.$in`", "$in needs a list"),
    ({"a": {"$nin": "abc"}}, "`a.$nin`", "$nin needs a list"),
    ({"a": {"$in": {"x": 1}}}, "`a.$in`", "got object"),
    ({"a": {"$gt": [1]}}, "`a.$gt`", "$gt needs a number or a string, got list"),
    ({"a": {"$gte": None}}, "`a.$gte`", "got null"),
    ({"a": {"$lt": True}}, "`a.$lt`", "got bool"),
    ({"a": {"$lte": {"x": 1}}}, "`a.$lte`", "got object"),
    ({"a": {"$gt": math.nan}}, "`a.$gt`", "NaN"),
    ({"a": math.nan}, "`a`", "NaN"),
    ({"a": {"$exists": 1}}, "`a.$exists`", "$exists needs true or false"),
    ({"a": {"$exists": "yes"}}, "`a.$exists`", "got string"),
    ({"$and": []}, "`$and`", "non-empty list"),
    ({"$and": {"a": 1}}, "`$and`", "got object"),
    ({"$or": "x"}, "`$or`", "got string"),
    ({"$or": [{"a": 1}, 5]}, "`$or[1]`", "items must be filter objects, got number"),
    ({"$and": [{"a": 1}, {"b": {"$bad": 1}}]}, "`$and[1].b.$bad`", "unknown operator"),
    ({"$not": [{"a": 1}]}, "`$not`", "$not needs a filter object, got list"),
    ({"$not": "x"}, "`$not`", "got string"),
    ({"a": {"$not": 5}}, "`a.$not`", "operator object"),
    ({"a": {"$not": {"b": 1}}}, "`a.$not`", "without operators"),
    ({"a": {"$and": [{"$gt": 1}]}}, "`a.$and`", "not allowed inside a field"),
    ({1: "x"}, "top level", "keys must be strings, got number"),
    ({"$and": [{None: 1}]}, "`$and[0]`", "keys must be strings, got null"),
    ({"": 1}, "top level", "field names must not be empty"),
    ({"$or": [{"": 1}]}, "`$or[0]`", "field names must not be empty"),
    ({"a..b": 1}, "`a..b`", "empty segment"),
    ({".a": 1}, "`.a`", "empty segment"),
    ({"a.": 1}, "`a.`", "empty segment"),
    ({"a.$gt": 1}, "`a.$gt`", "contains an operator"),
    ({"a": {"$gt": 1, "b": 2}}, "`a`", "cannot mix operators and plain keys"),
    ({"a": {"x": {1: 2}}}, "`a.x`", "object keys must be strings"),
    ({"a": {1: 2}}, "`a`", "object keys must be strings"),
    ({"a": {"$eq": {1, 2}}}, "`a.$eq`", "unsupported value type set"),
    ({"a": {"$in": [1, b"x"]}}, "`a.$in[1]`", "unsupported value type bytes"),
    ({"namespace_prefix": "user-1"}, "`namespace_prefix`", "list of strings"),
    ({"namespace_prefix": ["a", 1]}, "`namespace_prefix`", "list of strings"),
    ({"id_prefix": 5}, "`id_prefix`", "id_prefix needs a string"),
    (["a"], "top level", "must be an object"),
    ("a", "top level", "must be an object"),
]


@pytest.mark.parametrize(("flt", "where", "what"), ERRORS)
def test_invalid_filters_say_what_and_where(flt: Any, where: str, what: str) -> None:
    with pytest.raises(InvalidFilter) as exc_info:
        compile_filter(flt)
    err = exc_info.value
    assert where in err.message, err.message
    assert what in err.message, err.message
    assert err.code == "invalid_filter"
    assert err.http_status == 400
    assert isinstance(err, InvalidArgument)
    assert "path" in err.details


def test_deeply_nested_filter_is_rejected_cleanly() -> None:
    flt: dict[str, Any] = {"a": 1}
    for _ in range(200):
        flt = {"$not": flt}
    with pytest.raises(InvalidFilter, match="nested deeper"):
        compile_filter(flt)
    deep: dict[str, Any] = {"$gt": 1}
    for _ in range(200):
        deep = {"$not": deep}
    with pytest.raises(InvalidFilter, match="nested deeper"):
        compile_filter({"a": deep})
    val: Any = 1
    for _ in range(200):
        val = [val]
    with pytest.raises(InvalidFilter, match="nested deeper"):
        compile_filter({"a": val})


def test_special_values_accepted() -> None:
    assert m({"a": {"$lt": math.inf}}, {"a": 1e300})
    assert m({"a": {"$in": []}}, {"a": 1}) is False
    assert m({"a": {"$eq": {"b": [1, {"c": None}]}}}, {"a": {"b": [1, {"c": None}]}})


# --------------------------------------------------------------------------- reference evaluator

_ABSENT = object()
_CMP = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _is_num(x: Any) -> bool:
    return type(x) in (int, float)


def ref_same(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    if type(a) is str and type(b) is str:
        return a == b
    if a is None and b is None:
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(ref_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(ref_same(a[k], b[k]) for k in a)
    return False


def ref_lookup(md: dict[str, Any], path: str) -> Any:
    cur: Any = md
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _ABSENT
        cur = cur[part]
    return cur


def ref_op(val: Any, op: str, arg: Any) -> bool:
    if op == "$exists":
        return (val is not _ABSENT) is arg
    if op == "$not":
        return not all(ref_op(val, o, a) for o, a in arg.items())
    if op == "$ne":
        return not ref_op(val, "$eq", arg)
    if op == "$nin":
        return not ref_op(val, "$in", arg)
    if val is _ABSENT:
        return False
    options = [val, *val] if isinstance(val, list) else [val]
    if op == "$eq":
        return any(ref_same(c, arg) for c in options)
    if op == "$in":
        return any(ref_same(c, a) for c in options for a in arg)
    if op in _CMP:
        ok = []
        for c in options:
            if (_is_num(c) and _is_num(arg)) or (type(c) is str and type(arg) is str):
                ok.append(_CMP[op](c, arg))
        return any(ok)
    if op == "$contains":
        if isinstance(val, str):
            return isinstance(arg, str) and arg in val
        return isinstance(val, list) and any(ref_same(e, arg) for e in val)
    raise AssertionError(op)


def ref_match(flt: dict[str, Any], rid: str, ns: tuple[str, ...], md: dict[str, Any]) -> bool:
    for key, v in flt.items():
        if key == "$and":
            ok = all(ref_match(x, rid, ns, md) for x in v)
        elif key == "$or":
            ok = any(ref_match(x, rid, ns, md) for x in v)
        elif key == "$not":
            ok = not ref_match(v, rid, ns, md)
        elif key == "namespace_prefix":
            ok = list(ns[: len(v)]) == list(v)
        elif key == "id_prefix":
            ok = rid.startswith(v)
        else:
            val = ref_lookup(md, key)
            if isinstance(v, dict) and v and all(k.startswith("$") for k in v):
                ok = all(ref_op(val, op, arg) for op, arg in v.items())
            else:
                ok = ref_op(val, "$eq", v)
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- strategies

FIELDS = ["a", "b", "tags", "n", "o.x", "o.y", "zz"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-2, 0, 1, 2, 3, 2**53 + 1, 10**20]),
    st.sampled_from([-1.5, 0.0, 1.0, 2.5, math.inf, -math.inf]),
    st.sampled_from(["", "a", "ab", "b", "ba", "x"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["k", "j"]), scalars, max_size=2),
)
metadata_values = st.one_of(values, st.just(math.nan), st.lists(st.one_of(scalars, st.just(math.nan)), max_size=3))


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, Any]:
    md: dict[str, Any] = draw(st.dictionaries(st.sampled_from(["a", "b", "tags", "n"]), metadata_values, max_size=4))
    shape = draw(st.integers(0, 2))
    if shape == 1:
        md["o"] = draw(st.dictionaries(st.sampled_from(["x", "y"]), metadata_values, max_size=2))
    elif shape == 2:
        md["o"] = draw(metadata_values)
    return md


range_operands = st.one_of(
    st.sampled_from([-2, 0, 1, 2, 2**53, 2**53 + 1, 10**20]),
    st.sampled_from([-1.5, 0.5, 2.5, math.inf, -math.inf]),
    st.sampled_from(["", "a", "ab", "b", "c"]),
)


def op_expr() -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        st.tuples(st.sampled_from(["$eq", "$ne", "$contains"]), values),
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), range_operands),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(values, max_size=3)),
        st.tuples(st.just("$exists"), st.booleans()),
    )


@st.composite
def field_expr(draw: st.DrawFn) -> tuple[str, Any]:
    field = draw(st.sampled_from(FIELDS))
    form = draw(st.integers(0, 3))
    if form == 0:
        v = draw(values)
        # A dict whose keys look like operators would be parsed as operators; values never do.
        return field, v
    ops = draw(st.lists(op_expr(), min_size=1, max_size=2))
    body: dict[str, Any] = dict(ops)
    if form == 3:
        body = {"$not": body}
    return field, body


special = st.one_of(
    st.tuples(st.just("namespace_prefix"), st.lists(st.sampled_from(["u1", "u2", "m"]), max_size=2)),
    st.tuples(st.just("id_prefix"), st.sampled_from(["", "r", "r1", "x"])),
)


def filters() -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.lists(st.one_of(field_expr(), special), min_size=1, max_size=3).map(dict)

    def extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        return st.one_of(
            st.lists(children, min_size=1, max_size=3).map(lambda xs: {"$and": xs}),
            st.lists(children, min_size=1, max_size=3).map(lambda xs: {"$or": xs}),
            children.map(lambda x: {"$not": x}),
            st.tuples(children, field_expr()).map(lambda t: {**t[0], t[1][0]: t[1][1]}),
        )

    return st.recursive(leaf, extend, max_leaves=8)


record_ids = st.sampled_from(["r1", "r12", "x9", "q"])
namespaces = st.lists(st.sampled_from(["u1", "u2", "m"]), max_size=3).map(tuple)


@settings(max_examples=300, deadline=None)
@given(flt=filters(), rid=record_ids, ns=namespaces, mds=st.lists(metadata(), min_size=1, max_size=6))
def test_matches_agrees_with_reference(
    flt: dict[str, Any], rid: str, ns: tuple[str, ...], mds: list[dict[str, Any]]
) -> None:
    f = compile_filter(flt)
    assert f is not None
    roundtrip = compile_filter(f.to_dict())
    assert roundtrip is not None
    for md in mds:
        expected = ref_match(flt, rid, ns, md)
        assert f.matches(rid, ns, md) is expected, (flt, md)
        assert roundtrip.matches(rid, ns, md) is expected


POOL: list[Any] = [None, True, False, -2, 0, 1, 1.0, 2.5, 2**53 + 1, math.inf, "", "a", "ab", "b", "ba"]
pool_values = st.one_of(
    st.sampled_from(POOL),
    st.lists(st.sampled_from(POOL), max_size=3),
    st.lists(st.sampled_from(POOL), max_size=2).map(lambda xs: [xs]),
    st.dictionaries(st.sampled_from(["k"]), st.sampled_from(POOL), max_size=1),
)
dense_metadata = st.fixed_dictionaries(
    {"a": pool_values, "b": pool_values, "o": st.fixed_dictionaries({"x": pool_values})},
    optional={"c": pool_values},
)
probe = st.tuples(
    st.sampled_from(["a", "b", "c", "o.x", "o"]),
    pool_values,
    st.sampled_from([-2, 0, 1, 2.5, 2**53, math.inf, "", "a", "b", "bb"]),
)


def every_operator(p: str, v: Any, r: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{p: v}]
    out += [{p: {op: v}} for op in ("$eq", "$ne", "$contains")]
    out += [{p: {op: [v, r]}} for op in ("$in", "$nin")]
    out += [{p: {op: r}} for op in ("$gt", "$gte", "$lt", "$lte")]
    out += [{p: {"$exists": True}}, {p: {"$not": {"$lt": r}}}]
    return [f for f in out if not (isinstance(v, dict) and p in f and f[p] is v)]


@settings(max_examples=300, deadline=None)
@given(mds=st.lists(dense_metadata, min_size=3, max_size=8), probes=st.lists(probe, min_size=2, max_size=5))
def test_every_operator_agrees_with_reference(mds: list[dict[str, Any]], probes: list[tuple[str, Any, Any]]) -> None:
    # Dense: every operator on fields that are nearly always present, with colliding values.
    for p, v, r in probes:
        for flt in every_operator(p, v, r):
            f = compile_filter(flt)
            assert f is not None
            for md in mds:
                assert f.matches("r", (), md) is ref_match(flt, "r", (), md), (flt, md)


@settings(max_examples=100, deadline=None)
@given(flt=filters())
def test_fields_are_exactly_the_metadata_paths(flt: dict[str, Any]) -> None:
    f = compile_filter(flt)
    assert f is not None

    def walk(obj: Any, out: set[str]) -> None:
        for k, v in obj.items():
            if k in ("$and", "$or"):
                for x in v:
                    walk(x, out)
            elif k == "$not":
                walk(v, out)
            elif k not in ("namespace_prefix", "id_prefix"):
                out.add(k)

    expected: set[str] = set()
    walk(flt, expected)
    assert f.fields() == expected


def test_filter_is_public_type() -> None:
    assert isinstance(compile_filter({"a": 1}), Filter)


def test_flat_filters_are_compiled_once_and_kept_apart_by_type() -> None:
    f = compile_filter({"tenant": 3, "user": "u1"})
    assert compile_filter({"tenant": 3, "user": "u1"}) is f  # cached: repeated tenant filters cost nothing
    # Equal in Python, different as filter values: each gets its own compiled filter.
    as_bool = compile_filter({"tenant": True})
    as_int = compile_filter({"tenant": 1})
    assert as_bool is not None and as_int is not None
    assert as_bool.matches("r", (), {"tenant": True}) and not as_bool.matches("r", (), {"tenant": 1})
    assert as_int.matches("r", (), {"tenant": 1}) and not as_int.matches("r", (), {"tenant": True})


def test_a_bad_flat_filter_is_refused_every_time() -> None:
    for _ in range(2):  # nothing cached on failure
        with pytest.raises(InvalidFilter):
            compile_filter({"$unknown": 1})
        with pytest.raises(InvalidFilter):
            compile_filter({"": "x"})
