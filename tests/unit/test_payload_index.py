"""Tests of the payload index: per-operator answers and exactness, maintenance, serialisation, and
property tests holding ``candidates()`` to ``Filter.matches`` (superset always, equal when exact)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from engramdb.errors import CorruptData, InvalidArgument
from engramdb.filters import Filter, compile_filter
from engramdb.index import payload as payload_mod
from engramdb.index.payload import PayloadIndex

# --------------------------------------------------------------------------- helpers


def F(obj: dict[str, Any]) -> Filter:
    f = compile_filter(obj)
    assert f is not None
    return f


class World:
    """An index plus the records it holds, to compare candidates with the true matches."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.index = PayloadIndex(fields)
        self.records: dict[int, dict[str, Any]] = {}

    def put(self, label: int, md: dict[str, Any]) -> None:
        old = self.records.get(label)
        if old is not None:
            self.index.remove(label, old)
        self.index.add(label, md)
        self.records[label] = md

    def delete(self, label: int) -> None:
        self.index.remove(label, self.records.pop(label))

    @property
    def universe(self) -> BitMap:
        return BitMap(self.records)

    def truth(self, f: Filter) -> BitMap:
        return BitMap(lb for lb, md in self.records.items() if f.matches(f"r{lb}", (), md))

    def cand(self, obj: dict[str, Any], index: PayloadIndex | None = None) -> tuple[BitMap, bool]:
        return (index or self.index).candidates(F(obj), self.universe)

    def check(self, obj: dict[str, Any] | Filter, index: PayloadIndex | None = None) -> tuple[BitMap, bool]:
        f = obj if isinstance(obj, Filter) else F(obj)
        got, exact = (index or self.index).candidates(f, self.universe)
        want = self.truth(f)
        assert want.issubset(got), (f, want - got)
        if exact:
            assert got == want, (f, got, want)
        return got, exact


@pytest.fixture
def world() -> World:
    w = World({"kind": "keyword", "age": "int", "score": "float", "ok": "bool", "tags": "keyword", "o.x": "int"})
    w.put(0, {"kind": "note", "age": 30, "score": 0.5, "ok": True, "tags": ["a", "b"], "o": {"x": 1}})
    w.put(1, {"kind": "fact", "age": 17, "score": 2, "ok": False, "tags": "hello"})
    w.put(2, {"kind": "note", "age": 65.0, "score": -1.25, "tags": ["b"], "o": {"x": 2}})
    w.put(3, {"age": 18, "ok": True, "tags": [], "o": "flat"})
    w.put(4, {})
    return w


# --------------------------------------------------------------------------- construction


def test_declared_fields() -> None:
    idx = PayloadIndex({"a": "keyword", "b.c": "int"})
    assert idx.fields == {"a": "keyword", "b.c": "int"}


@pytest.mark.parametrize(
    ("fields", "msg"),
    [
        ({"a": "text"}, "use one of bool, float, int, keyword"),
        ({"": "int"}, "non-empty dotted path"),
        ({"a..b": "int"}, "non-empty dotted path"),
    ],
)
def test_bad_declarations(fields: dict[str, str], msg: str) -> None:
    with pytest.raises(InvalidArgument, match=msg):
        PayloadIndex(fields)


@pytest.mark.parametrize("label", [-1, 2**32])
def test_labels_must_be_uint32(label: int) -> None:
    idx = PayloadIndex({"a": "keyword"})
    with pytest.raises(ValueError, match="uint32"):
        idx.add(label, {"a": "x"})
    with pytest.raises(ValueError, match="uint32"):
        idx.remove(label, {"a": "x"})


def test_max_label_works() -> None:
    idx = PayloadIndex({"a": "keyword"})
    idx.add(2**32 - 1, {"a": "x"})
    assert idx.candidates(F({"a": "x"}), BitMap([2**32 - 1])) == (BitMap([2**32 - 1]), True)


# --------------------------------------------------------------------------- operators


def test_keyword_equality_and_sets(world: World) -> None:
    assert world.check({"kind": "note"}) == (BitMap([0, 2]), True)
    assert world.check({"kind": "nope"}) == (BitMap(), True)
    assert world.check({"kind": {"$in": ["note", "fact"]}}) == (BitMap([0, 1, 2]), True)
    assert world.check({"kind": {"$ne": "note"}}) == (BitMap([1, 3, 4]), True)
    assert world.check({"kind": {"$nin": ["note", "fact"]}}) == (BitMap([3, 4]), True)
    assert world.check({"kind": {"$in": []}}) == (BitMap(), True)
    assert world.check({"kind": {"$nin": []}}) == (BitMap([0, 1, 2, 3, 4]), True)


def test_exists(world: World) -> None:
    assert world.check({"ok": {"$exists": True}}) == (BitMap([0, 1, 3]), True)
    assert world.check({"ok": {"$exists": False}}) == (BitMap([2, 4]), True)
    # "o" is a string in record 3, so "o.x" does not exist there.
    assert world.check({"o.x": {"$exists": True}}) == (BitMap([0, 2]), True)


def test_bool_field(world: World) -> None:
    assert world.check({"ok": True}) == (BitMap([0, 3]), True)
    assert world.check({"ok": False}) == (BitMap([1]), True)
    # 1 is not True, and no record holds a number in "ok": provably empty.
    assert world.check({"ok": 1}) == (BitMap(), True)
    assert world.check({"ok": {"$gt": 0}}) == (BitMap(), True)


def test_int_field_ranges(world: World) -> None:
    assert world.check({"age": {"$gte": 18}}) == (BitMap([0, 2, 3]), True)
    assert world.check({"age": {"$gt": 18}}) == (BitMap([0, 2]), True)
    assert world.check({"age": {"$lt": 18}}) == (BitMap([1]), True)
    assert world.check({"age": {"$lte": 18}}) == (BitMap([1, 3]), True)
    assert world.check({"age": {"$gte": 18, "$lt": 65}}) == (BitMap([0, 3]), True)
    assert world.check({"age": {"$gt": 17.5}}) == (BitMap([0, 2, 3]), True)
    assert world.check({"age": 65}) == (BitMap([2]), True)  # 65.0 is an integral value
    assert world.check({"age": 17.5}) == (BitMap(), True)
    assert world.check({"age": {"$gt": "a"}}) == (BitMap(), True)


def test_float_field(world: World) -> None:
    assert world.check({"score": 2}) == (BitMap([1]), True)
    assert world.check({"score": 2.0}) == (BitMap([1]), True)
    assert world.check({"score": {"$lt": 0}}) == (BitMap([2]), True)
    assert world.check({"score": {"$gte": -1.25, "$lte": 0.5}}) == (BitMap([0, 2]), True)
    assert world.check({"score": {"$lt": math.inf}}) == (BitMap([0, 1, 2]), True)


def test_list_fields_index_each_element(world: World) -> None:
    assert world.check({"tags": "b"}) == (BitMap([0, 2]), True)
    assert world.check({"tags": {"$in": ["a", "hello"]}}) == (BitMap([0, 1]), True)
    assert world.check({"tags": {"$gte": "b"}}) == (BitMap([0, 1, 2]), True)
    assert world.check({"tags": {"$ne": "b"}}) == (BitMap([1, 3, 4]), True)


def test_contains(world: World) -> None:
    assert world.check({"tags": {"$contains": "b"}}) == (BitMap([0, 2]), True)  # list membership
    assert world.check({"tags": {"$contains": "ell"}}) == (BitMap([1]), True)  # substring of a string
    assert world.check({"tags": {"$contains": "hello"}}) == (BitMap([1]), True)
    assert world.check({"kind": {"$contains": "o"}}) == (BitMap([0, 2]), True)
    assert world.check({"age": {"$contains": 30}}) == (BitMap(), True)  # a scalar contains nothing
    world.put(5, {"tags": ["hello", "ab"], "age": [30, 31]})
    assert world.check({"tags": {"$contains": "ell"}}) == (BitMap([1]), True)  # no substring inside lists
    assert world.check({"tags": {"$contains": "ab"}}) == (BitMap([5]), True)
    assert world.check({"age": {"$contains": 30}}) == (BitMap([5]), True)
    assert world.check({"age": {"$contains": "30"}}) == (BitMap(), True)


def test_whole_list_equality_is_a_superset(world: World) -> None:
    # Record 0 holds both elements; record 3 holds [] (kept with other compound values).
    assert world.check({"tags": ["a", "b"]}) == (BitMap([0, 3]), False)
    got, exact = world.check({"tags": []})
    assert 3 in got and not exact


def test_wrong_types_are_not_indexed_but_still_found() -> None:
    w = World({"k": "keyword", "i": "int", "f": "float", "b": "bool"})
    w.put(0, {"k": 5, "i": "7", "f": None, "b": "yes"})
    w.put(1, {"k": "5", "i": 7, "f": 1.5, "b": True})
    w.put(2, {"k": ["x", 5], "i": 3.5, "f": 2**53 + 1, "b": [True, 0]})
    w.put(3, {"k": {"nested": 1}, "i": 2**70, "f": math.nan, "b": None})
    # Operands of the declared type are exact; others fall back to the unindexed sets.
    assert w.check({"k": "5"}) == (BitMap([1]), True)
    assert w.check({"k": 5}) == (BitMap([0, 2]), False)
    assert w.check({"i": 7}) == (BitMap([1]), True)
    assert w.check({"i": "7"}) == (BitMap([0]), False)
    got, exact = w.check({"i": {"$gt": 3}})  # 3.5 is not an int, so the answer is inexact
    assert got >= BitMap([1, 2]) and not exact
    assert w.check({"f": {"$gt": 2**53}}) == (BitMap([2]), False)
    assert w.check({"f": 1.5}) == (BitMap([1]), True)
    assert w.check({"f": None}) == (BitMap([0]), False)
    assert w.check({"b": True}) == (BitMap([1, 2]), True)
    assert w.check({"b": "yes"}) == (BitMap([0]), False)
    assert w.check({"k": {"nested": 1}}) == (BitMap([3]), False)
    assert w.check({"k": {"$contains": 5}}) == (BitMap([0, 2]), False)
    stats = w.index.stats()
    assert stats["k"]["unindexed"] == 3 and stats["k"]["present"] == 4


def test_big_numbers_in_float_fields_compare_exactly() -> None:
    w = World({"f": "float", "i": "int"})
    big = 2**53
    w.put(0, {"f": float(big), "i": big})
    w.put(1, {"f": float(big + 2), "i": big + 2})
    w.put(2, {"f": 1e300, "i": 10**400})
    w.put(3, {"f": -math.inf, "i": -(10**400)})
    w.put(4, {"f": float(big + 4), "i": big + 4})  # big + 3 rounds up to this float, big + 1 rounds down
    for op in ("$gt", "$gte", "$lt", "$lte"):
        for v in (big - 1, big, big + 1, big + 2, big + 3, 10**400, -(10**400), 1e300, -math.inf):
            w.check({"f": {op: v}})
            w.check({"i": {op: v}})
    assert w.check({"f": {"$gt": big + 1}}) == (BitMap([1, 2, 4]), True)
    assert w.check({"f": {"$gt": big + 3}}) == (BitMap([2, 4]), True)
    assert w.check({"f": {"$gte": big + 3}}) == (BitMap([2, 4]), True)
    assert w.check({"f": {"$lte": big + 3}}) == (BitMap([0, 1, 3]), True)
    assert w.check({"f": {"$lt": big + 3}}) == (BitMap([0, 1, 3]), True)
    assert w.check({"f": {"$lte": big + 1}}) == (BitMap([0, 3]), True)
    assert w.check({"f": {"$lt": big + 1}}) == (BitMap([0, 3]), True)
    assert w.check({"f": {"$gt": 10**400}}) == (BitMap(), True)
    assert w.check({"f": big + 1}) == (BitMap(), True)


def test_unanswerable_predicates_return_the_universe(world: World) -> None:
    universe = world.universe
    assert world.cand({"undeclared": 1}) == (universe, False)
    assert world.cand({"namespace_prefix": ["u"]}) == (universe, False)
    assert world.cand({"id_prefix": "r1"}) == (universe, False)
    assert world.cand({"namespace_prefix": []}) == (universe, True)
    assert world.cand({"id_prefix": ""}) == (universe, True)


def test_logic(world: World) -> None:
    assert world.check({"kind": "note", "age": {"$gt": 40}}) == (BitMap([2]), True)
    assert world.check({"$or": [{"kind": "fact"}, {"ok": True}]}) == (BitMap([0, 1, 3]), True)
    assert world.check({"$not": {"kind": "note"}}) == (BitMap([1, 3, 4]), True)
    # An exact empty side proves the AND empty even with an unanswerable side.
    assert world.check({"kind": "none", "id_prefix": "r"}) == (BitMap(), True)
    got, exact = world.check({"kind": "note", "id_prefix": "r"})
    assert got == BitMap([0, 2]) and not exact
    assert world.check({"$or": [{"kind": "fact"}, {"id_prefix": "r"}]}) == (world.universe, False)
    assert world.check({"$not": {"id_prefix": "r"}}) == (world.universe, False)
    assert world.check({"$and": [{}, {"kind": "fact"}]}) == (BitMap([1]), True)
    assert world.check({"$or": [{}, {"kind": "fact"}]}) == (world.universe, True)
    assert world.check({"age": {"$not": {"$lt": 18}}}) == (BitMap([0, 2, 3, 4]), True)


def test_candidates_are_limited_to_the_universe_and_fresh(world: World) -> None:
    got, exact = world.index.candidates(F({"kind": "note"}), BitMap([2, 3]))
    assert (got, exact) == (BitMap([2]), True)
    got.add(99)
    got.clear()
    assert world.check({"kind": "note"}) == (BitMap([0, 2]), True)
    got, _ = world.index.candidates(F({"undeclared": 1}), world.universe)
    got.clear()
    assert len(world.universe) == 5


def test_accepts_ast_nodes_and_estimates(world: World) -> None:
    f = F({"kind": "note"})
    assert world.index.candidates(f.node, world.universe) == (BitMap([0, 2]), True)
    assert world.index.estimate(f, world.universe) == 2
    assert world.index.estimate(F({"id_prefix": "x"}), world.universe) == 5


# --------------------------------------------------------------------------- maintenance


def test_replace_and_delete(world: World) -> None:
    world.put(0, {"kind": "fact", "age": 50, "tags": ["z"]})
    assert world.check({"kind": "note"}) == (BitMap([2]), True)
    assert world.check({"kind": "fact"}) == (BitMap([0, 1]), True)
    assert world.check({"age": {"$gte": 50}}) == (BitMap([0, 2]), True)
    assert world.check({"ok": {"$exists": False}}) == (BitMap([0, 2, 4]), True)
    world.delete(2)
    assert world.check({"kind": "note"}) == (BitMap(), True)
    assert world.check({"age": {"$gte": 50}}) == (BitMap([0]), True)
    assert world.index.stats()["kind"] == {"present": 2, "distinct": 1, "unindexed": 0}


def test_add_and_remove_ignore_empty_metadata() -> None:
    idx = PayloadIndex({"a": "keyword"})
    idx.add(1, {})
    idx.add(2, None)
    idx.remove(2, None)
    assert idx.candidates(F({"a": {"$exists": False}}), BitMap([1, 2])) == (BitMap([1, 2]), True)


def test_clear(world: World) -> None:
    world.index.clear()
    assert world.index.fields["age"] == "int"
    assert world.index.candidates(F({"kind": "note"}), world.universe) == (BitMap(), True)
    assert world.index.candidates(F({"age": {"$gt": 0}}), world.universe) == (BitMap(), True)


@pytest.fixture
def tiny_delta(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Force the numeric arrays to be rebuilt every few writes so the merge path is exercised.
    monkeypatch.setattr(payload_mod, "_DELTA_MIN", 3)
    monkeypatch.setattr(payload_mod, "_DELTA_MAX", 5)
    yield


@pytest.mark.usefixtures("tiny_delta")
def test_numeric_delta_and_rebuild_stay_correct() -> None:
    import random

    rng = random.Random(7)
    w = World({"n": "float", "i": "int"})
    for step in range(600):
        label = rng.randrange(40)
        if label in w.records and rng.random() < 0.3:
            w.delete(label)
        else:
            vals = [rng.choice([0, 1, 2.5, 3, -4, 7.0]) for _ in range(rng.randrange(3))]
            w.put(label, {"n": vals if rng.random() < 0.3 else (vals[0] if vals else 9), "i": rng.randrange(5)})
        if step % 25 == 0:
            for v in (-5, 0, 1, 2.5, 3, 8):
                for op in ("$gt", "$gte", "$lt", "$lte", "$eq"):
                    assert w.check({"n": {op: v}})[1]
                    assert w.check({"i": {op: v}})[1]


def test_numeric_rebuild_with_default_bounds() -> None:
    w = World({"n": "int"})
    for lb in range(1200):
        w.put(lb, {"n": lb % 97})
    for lb in range(0, 1200, 3):
        w.put(lb, {"n": 1000 + lb})
    for lb in range(0, 1200, 7):
        if lb in w.records:
            w.delete(lb)
    assert w.check({"n": {"$gte": 1000}})[1]
    assert w.check({"n": {"$lt": 50}})[1]
    assert w.check({"n": 5})[1]
    assert w.index.stats()["n"]["present"] == len(w.records)


# --------------------------------------------------------------------------- serialisation


def test_round_trip(world: World) -> None:
    world.put(7, {"kind": "\ud800odd", "score": 2**53 + 1, "age": [1, 2, 1], "ok": [True, 1]})
    data = world.index.to_bytes()
    again = PayloadIndex.from_bytes(data, fields=world.index.fields)
    assert again.fields == world.index.fields
    assert again.to_bytes() == data
    for obj in (
        {"kind": "note"},
        {"kind": "\ud800odd"},
        {"age": {"$gte": 18}},
        {"age": 2},
        {"score": {"$gt": 0}},
        {"ok": True},
        {"tags": {"$contains": "ell"}},
        {"o.x": {"$exists": True}},
        {"score": 2**53 + 1},
    ):
        assert world.cand(obj) == world.cand(obj, again)
        world.check(obj, again)
    # The loaded index keeps working under maintenance.
    again.remove(0, world.records[0])
    again.add(0, {"kind": "fact", "age": 99})
    assert again.candidates(F({"age": {"$gt": 90}}), world.universe) == (BitMap([0]), True)


def test_round_trip_empty_index() -> None:
    idx = PayloadIndex({})
    assert PayloadIndex.from_bytes(idx.to_bytes()).fields == {}


def _corrupt(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def test_corrupt_snapshots_are_rejected(world: World) -> None:
    data = world.index.to_bytes()
    with pytest.raises(CorruptData, match="magic"):
        PayloadIndex.from_bytes(b"nope" + data[4:])
    with pytest.raises(CorruptData, match="truncated"):
        PayloadIndex.from_bytes(data[:5])
    with pytest.raises(CorruptData, match="checksum"):
        PayloadIndex.from_bytes(data[:-3])
    with pytest.raises(CorruptData, match="checksum"):
        PayloadIndex.from_bytes(_corrupt(data, len(data) // 2))
    with pytest.raises(CorruptData, match="version"):
        PayloadIndex.from_bytes(data[:4] + struct.pack("<H", 99) + data[6:])
    with pytest.raises(CorruptData, match="expected"):
        PayloadIndex.from_bytes(data, fields={"kind": "keyword"})


def test_structurally_bad_body_with_valid_checksum() -> None:
    import zlib

    def wrap(body: bytes) -> bytes:
        return b"EGPX" + struct.pack("<HI", 1, zlib.crc32(body)) + body

    good = PayloadIndex({"a": "keyword"}).to_bytes()
    with pytest.raises(CorruptData, match="trailing"):
        PayloadIndex.from_bytes(wrap(good[10:] + b"x"))
    with pytest.raises(CorruptData, match="truncated"):
        PayloadIndex.from_bytes(wrap(good[10:-2]))
    with pytest.raises(CorruptData, match="undecodable"):
        PayloadIndex.from_bytes(wrap(struct.pack("<I", 1) + struct.pack("<I", 1) + b"a" + b"\x09"))


# --------------------------------------------------------------------------- property tests

# Small value pools so equal values, shared substrings and range boundaries collide often. All
# strategies are module constants: building strategies inside a test makes hypothesis slow.
STRS = ["", "a", "ab", "b", "ba", "xyz"]
NUMS = [-3, 0, 1, 2, 7, 2.0, 2.5, -1.5, 2**53, 2**53 + 1, 10**30, math.inf, -math.inf]
POOL = [*STRS, *NUMS, True, False, None]
scalars = st.one_of(st.sampled_from(POOL), st.just(math.nan))
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["p", "q"]), scalars, max_size=2),
    st.lists(st.lists(scalars, max_size=2), min_size=1, max_size=2),
)


def _typed(nat: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Mostly values of the declared type, as scalars and lists, sometimes anything at all.
    return st.one_of(nat, st.lists(st.one_of(nat, nat, scalars), max_size=3), nat, values)


VALUE_FOR: dict[str, st.SearchStrategy[Any]] = {
    "keyword": _typed(st.sampled_from(STRS)),
    "int": _typed(st.sampled_from([-3, 0, 1, 2, 7, 2.0, 2**53 + 1])),
    "float": _typed(st.sampled_from(NUMS)),
    "bool": _typed(st.booleans()),
}
NATURAL_TYPES = {"k": "keyword", "i": "int", "f": "float", "b": "bool", "t": "keyword", "o.x": "int"}
PATHS = list(NATURAL_TYPES)
# Usually the natural type for the path, often any type (so values of the wrong type are common).
declarations = st.fixed_dictionaries(
    {p: st.one_of(st.just(t), st.sampled_from(sorted(VALUE_FOR))) for p, t in NATURAL_TYPES.items()}
)

operand = st.one_of(
    st.sampled_from(POOL),
    st.sampled_from(STRS),
    st.lists(st.sampled_from(POOL), max_size=2),
    st.dictionaries(st.sampled_from(["p"]), st.sampled_from([1, "a"]), max_size=1),
)
range_operand = st.sampled_from([*STRS, "c", *NUMS, 1.5, 10**400])
path = st.sampled_from([*PATHS, "u"])
leaf = st.one_of(
    st.tuples(path, operand).map(lambda x: {x[0]: x[1]}),
    st.tuples(path, st.sampled_from(["$eq", "$ne", "$contains"]), operand).map(lambda x: {x[0]: {x[1]: x[2]}}),
    st.tuples(path, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), range_operand).map(lambda x: {x[0]: {x[1]: x[2]}}),
    st.tuples(path, st.sampled_from(["$in", "$nin"]), st.lists(operand, max_size=3)).map(
        lambda x: {x[0]: {x[1]: x[2]}}
    ),
    st.tuples(path, st.booleans()).map(lambda x: {x[0]: {"$exists": x[1]}}),
    st.sampled_from([{"id_prefix": "r1"}, {"id_prefix": ""}, {"namespace_prefix": []}]),
)
filter_objs = st.recursive(
    leaf,
    lambda kids: st.one_of(
        st.lists(kids, min_size=1, max_size=3).map(lambda xs: {"$and": xs}),
        st.lists(kids, min_size=1, max_size=3).map(lambda xs: {"$or": xs}),
        kids.map(lambda x: {"$not": x}),
    ),
    max_leaves=6,
)


@st.composite
def metadata_for(draw: st.DrawFn, fields: dict[str, str]) -> dict[str, Any]:
    md: dict[str, Any] = {}
    for key in ["k", "i", "f", "b", "t"]:
        if draw(st.integers(0, 4)) > 0:  # each field is missing one time in five
            md[key] = draw(VALUE_FOR[fields[key]])
    shape = draw(st.integers(0, 3))
    if shape < 2:
        md["o"] = {"x": draw(VALUE_FOR[fields["o.x"]])}
    elif shape == 2:
        md["o"] = draw(values)
    if draw(st.booleans()):
        md["u"] = draw(values)  # undeclared
    return md


def predicates(p: str, v: Any, r: Any) -> list[dict[str, Any]]:
    """Every field operator for one path, operand and range operand."""
    ops: list[dict[str, Any]] = [{p: v}]
    ops += [{p: {op: v}} for op in ("$eq", "$ne", "$contains")]
    ops += [{p: {op: [v, r]}} for op in ("$in", "$nin")]
    ops += [{p: {op: r}} for op in ("$gt", "$gte", "$lt", "$lte")]
    ops += [{p: {"$exists": True}}, {p: {"$exists": False}}, {p: {"$not": {"$gte": r}}}]
    return ops


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    fields=declarations,
    probes=st.lists(st.tuples(path, operand, range_operand), min_size=3, max_size=8),
)
def test_every_operator_superset_and_exact(
    data: st.DataObject, fields: dict[str, str], probes: list[tuple[str, Any, Any]]
) -> None:
    # Many records, every operator on each probe: the densest check of each operator's bitmap logic.
    w = World(fields)
    for lb, md in enumerate(data.draw(st.lists(metadata_for(fields), min_size=5, max_size=25))):
        w.put(lb, md)
    for p, v, r in probes:
        for obj in predicates(p, v, r):
            w.check(obj)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), fields=declarations, flts=st.lists(filter_objs, min_size=1, max_size=5))
def test_candidates_superset_and_exact(data: st.DataObject, fields: dict[str, str], flts: list[dict[str, Any]]) -> None:
    w = World(fields)
    for lb, md in enumerate(data.draw(st.lists(metadata_for(fields), max_size=15))):
        w.put(lb * 3, md)  # sparse labels: the universe is not 0..n
    for obj in flts:
        w.check(obj)


@pytest.mark.usefixtures("tiny_delta")
@settings(max_examples=100, deadline=None)
@given(data=st.data(), fields=declarations, flts=st.lists(filter_objs, min_size=1, max_size=4))
def test_candidates_after_updates_and_reload(
    data: st.DataObject, fields: dict[str, str], flts: list[dict[str, Any]]
) -> None:
    w = World(fields)
    ops = data.draw(st.lists(st.tuples(st.integers(0, 9), st.one_of(st.none(), metadata_for(fields))), max_size=40))
    for label, md in ops:
        if md is None:
            if label in w.records:
                w.delete(label)
        else:
            w.put(label, md)
    reloaded = PayloadIndex.from_bytes(w.index.to_bytes(), fields=fields)
    for obj in flts:
        got = w.check(obj)
        assert w.check(obj, reloaded) == got
