"""Filter cost attacks (issue 14, item 5): one request must not buy minutes of CPU.

A 5,000-branch ``$or`` over 4,000 records once took 8 s of CPU and slowed every other tenant.
Guards, each with tests that fail without it:

- size bounds of a filter (``filters.py``: ``MAX_FILTER_NODES``, ``MAX_IN_VALUES``,
  ``MAX_FILTER_VALUES``, ``MAX_FILTER_STRING_CHARS``, ``MAX_FIELD_PATH_CHARS``,
  ``MAX_NAMESPACE_PREFIX_DEPTH``): refused with code ``filter_too_large`` on the engine, REST
  and gRPC, before anything is read or changed; filters at the bounds still work;
- a time budget on count, scan and search (``engine.budget.query_budget`` on the engine,
  ``server.query_timeout_seconds`` on a server): past it the query fails with
  ``deadline_exceeded`` and a message that says how to narrow it;
- ``$or`` of equalities is answered through the payload index and a merged set test, with
  exactly the evaluator's results (property tests on random data).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

import engramdb
from engramdb.engine.budget import query_budget
from engramdb.errors import DeadlineExceeded, InvalidArgument, InvalidFilter
from engramdb.filters import (
    MAX_FIELD_PATH_CHARS,
    MAX_FILTER_NODES,
    MAX_FILTER_STRING_CHARS,
    MAX_IN_VALUES,
    MAX_NAMESPACE_PREFIX_DEPTH,
    Or,
    compile_filter,
)
from engramdb.index.payload import PayloadIndex
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from engramdb.server.grpc.convert import pack_vector
from integration.conftest import ServerProcess, unique_name

SC = grpc.StatusCode
ServerFactory = Callable[..., ServerProcess]


def _or(n: int, field: str = "tag") -> dict[str, Any]:
    return {"$or": [{field: f"v{i}"} for i in range(n)]}


# Each breaks exactly one bound, by one.
OVERSIZE: dict[str, dict[str, Any]] = {
    "nodes": _or(MAX_FILTER_NODES + 1),
    "nodes-nested": {"$and": [{"$not": {"a": i}} for i in range(MAX_FILTER_NODES // 2 + 1)]},
    "in-list": {"tag": {"$in": list(range(MAX_IN_VALUES + 1))}},
    "nin-list": {"tag": {"$nin": [str(i) for i in range(MAX_IN_VALUES + 1)]}},
    # a list operand counts as one value plus its items: 10,001 + 10,000
    "values-total": {"a": {"$in": list(range(MAX_IN_VALUES))}, "b": {"$in": list(range(MAX_IN_VALUES - 1))}},
    "string": {"tag": "x" * (MAX_FILTER_STRING_CHARS + 1)},
    "string-in-list": {"tag": {"$in": ["ok", "x" * (MAX_FILTER_STRING_CHARS + 1)]}},
    "object-key": {"tag": {"k" * (MAX_FILTER_STRING_CHARS + 1): 1}},
    "field-path": {"f" * (MAX_FIELD_PATH_CHARS + 1): 1},
    "id-prefix": {"id_prefix": "i" * (MAX_FILTER_STRING_CHARS + 1)},
    "namespace-depth": {"namespace_prefix": ["n"] * (MAX_NAMESPACE_PREFIX_DEPTH + 1)},
    "namespace-label": {"namespace_prefix": ["n" * (MAX_FILTER_STRING_CHARS + 1)]},
}

# At the bounds: accepted.
AT_BOUND: dict[str, dict[str, Any]] = {
    "nodes": _or(MAX_FILTER_NODES - 1),  # the $or itself is a node
    "in-list": {"tag": {"$in": list(range(MAX_IN_VALUES))}},
    "values-total": {"a": {"$in": list(range(MAX_IN_VALUES))}, "b": {"$in": list(range(MAX_IN_VALUES - 2))}},
    "string": {"tag": "x" * MAX_FILTER_STRING_CHARS},
    "field-path": {"f" * MAX_FIELD_PATH_CHARS: 1},
    "namespace-depth": {"namespace_prefix": ["n"] * MAX_NAMESPACE_PREFIX_DEPTH},
}


# ------------------------------------------------------------------- engine


@pytest.mark.parametrize("name", sorted(OVERSIZE))
def test_oversize_filter_is_refused_with_filter_too_large(name: str) -> None:
    with pytest.raises(InvalidFilter) as info:
        compile_filter(OVERSIZE[name])
    err = info.value
    assert err.code == "filter_too_large" and err.http_status == 400
    assert "limit" in err.details and "path" in err.details
    assert "filter too large" in err.message


@pytest.mark.parametrize("name", sorted(AT_BOUND))
def test_filters_at_the_bounds_are_accepted(name: str) -> None:
    assert compile_filter(AT_BOUND[name]) is not None


def test_the_reported_5000_branch_or_is_refused_after_bounded_work() -> None:
    with pytest.raises(InvalidFilter) as info:
        compile_filter(_or(5_000))
    assert info.value.code == "filter_too_large"
    # Refused where the bound was crossed, not after reading the rest.
    assert info.value.details["path"].startswith(f"$or[{MAX_FILTER_NODES - 1}]")
    assert "$in" in info.value.message  # tells the caller what to write instead


@pytest.fixture
def db(tmp_path: Path) -> Iterator[engramdb.Database]:
    d = engramdb.open(tmp_path / "data")
    yield d
    d.close()


def _fill(c: engramdb.Collection, n: int) -> None:
    c.upsert(
        [
            {"id": f"r{i:05d}", "vector": [1.0, (i % 7) / 7], "metadata": {"user": f"u{i % 50}", "tag": f"t{i % 50}"}}
            for i in range(n)
        ]
    )


@pytest.mark.parametrize("name", ["nodes", "in-list", "string"])
def test_engine_operations_refuse_oversize_filters_and_change_nothing(db: engramdb.Database, name: str) -> None:
    c = db.create_collection("c", dimension=2, indexed_fields={"user": "keyword"})
    _fill(c, 20)
    flt = OVERSIZE[name]
    calls: list[Callable[[], Any]] = [
        lambda: c.count(flt),
        lambda: c.scan(filter=flt),
        lambda: c.search([1, 0], k=3, filter=flt),
        lambda: c.delete(filter=flt),
        lambda: c.delete(["r00001"], filter=flt),
    ]
    for call in calls:
        with pytest.raises(InvalidFilter) as info:
            call()
        assert info.value.code == "filter_too_large"
    assert c.count() == 20 and c.get("r00001") is not None


def test_scan_namespace_prefix_argument_does_not_count_against_the_filter_bound(db: engramdb.Database) -> None:
    c = db.create_collection("c", dimension=2)
    c.upsert({"id": "a", "vector": [1, 0], "metadata": {"tag": "v3"}, "namespace": ["x"]})
    got = c.scan(filter=_or(MAX_FILTER_NODES - 1), namespace_prefix=["x"])
    assert [r.id for r in got.records] == ["a"]


# Deadline: a budget of a nanosecond has always passed when the loops first look at the clock.
TINY = 1e-9


def test_engine_time_budget_stops_count_scan_and_search(db: engramdb.Database) -> None:
    c = db.create_collection("c", dimension=2, indexed_fields={"user": "keyword"})
    _fill(c, 600)
    slow = {"tag": {"$in": ["t1", "t2"]}}  # not indexed: every record's row is read and tested
    calls: dict[str, Callable[[], Any]] = {
        "count": lambda: c.count(slow),
        "scan": lambda: c.scan(filter={"tag": "nope"}),
        "search": lambda: c.search([1, 0], k=3, filter=slow),
    }
    for op, call in calls.items():
        with pytest.raises(DeadlineExceeded) as info, query_budget(TINY):
            call()
        err = info.value
        assert err.code == "deadline_exceeded" and err.http_status == 504, op
        assert op in err.message and "indexed_fields" in err.message, err.message
        assert err.details["timeout_seconds"] == TINY
        call()  # no budget: answers
        with query_budget(30.0):
            call()  # a budget that is not exceeded: answers
        with query_budget(None):
            call()
    with query_budget(30.0):
        assert c.count(slow) == 24
    with query_budget(TINY):
        # The payload index answers an indexed filter without reading records: within any budget.
        assert c.count({"user": {"$in": ["u1", "u2"]}}) == 24
        assert c.count() == 600
    # The budget ends with its block.
    assert c.count(slow) == 24


def test_engine_time_budget_covers_payload_index_scans(db: engramdb.Database) -> None:
    # A substring $contains or a keyword range walks every distinct value of the field in the index.
    c = db.create_collection("c", dimension=2, indexed_fields={"user": "keyword"})
    _fill(c, 300)
    users = [f"u{i % 50}" for i in range(300)]
    expected = {"$contains": sum("1" in u for u in users), "$gte": sum(u >= "u3" for u in users)}
    for op, operand in (("$contains", "1"), ("$gte", "u3")):
        flt = {"user": {op: operand}}
        # First (a cached candidate set would answer without walking the index again).
        with pytest.raises(DeadlineExceeded), query_budget(TINY):
            c.count(flt)
        with query_budget(30.0):
            assert c.count(flt) == expected[op]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), 1e9, True, "5"])
def test_engine_time_budget_is_validated(bad: Any) -> None:
    with pytest.raises(InvalidArgument) as info, query_budget(bad):
        pass
    assert info.value.code == "invalid_timeout"


def test_text_search_budget_is_checked_while_filtering_hits(db: engramdb.Database) -> None:
    c = db.create_collection("c", dimension=2)
    c.upsert(
        [{"id": f"r{i:04d}", "vector": [1, i / 600], "text": "apple", "metadata": {"tag": "t"}} for i in range(600)]
    )
    text_index = c.indexes.text_index
    assert text_index is not None
    text_index.flush()
    nothing = {"tag": "nope"}  # unindexed, matches nothing: every text hit is checked, none kept
    assert c.search(text="apple", mode="text", k=3, filter=nothing) == []
    with pytest.raises(DeadlineExceeded), query_budget(TINY):
        c.search(text="apple", mode="text", k=3, filter=nothing)


# ---------------------------------------------- $or of equalities: index and evaluator agree

scalars = st.one_of(
    st.sampled_from(["a", "b", "c", "", "A"]),
    st.integers(-3, 3),
    st.sampled_from([0.5, 1.0, -2.0]),
    st.booleans(),
    st.none(),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
FIELDS = ("kw", "num", "flag", "raw")  # raw is not indexed
metadata = st.dictionaries(st.sampled_from(FIELDS), values, max_size=4)
branch = st.one_of(
    st.tuples(st.sampled_from(FIELDS), st.just("$eq"), values),
    st.tuples(st.sampled_from(FIELDS), st.just("$in"), st.lists(scalars, max_size=4)),
)


def _branch_filter(b: tuple[str, str, Any]) -> dict[str, Any]:
    field, op, v = b
    return {field: {op: v}}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(metadata, min_size=1, max_size=25), branches=st.lists(branch, min_size=2, max_size=12))
def test_or_of_equalities_index_and_evaluator_agree(
    rows: list[dict[str, Any]], branches: list[tuple[str, str, Any]]
) -> None:
    flt = compile_filter({"$or": [_branch_filter(b) for b in branches]})
    assert flt is not None
    # The compiled (merged) evaluator agrees with evaluating every branch on its own.
    singles = [compile_filter(_branch_filter(b)) for b in branches]
    expected = {i for i, md in enumerate(rows) if any(f is not None and f.matches("r", (), md) for f in singles)}
    got = {i for i, md in enumerate(rows) if flt.matches("r", (), md)}
    assert got == expected
    # The payload index's union of bitmaps is exactly the matches when it says so, else a superset.
    idx = PayloadIndex({"kw": "keyword", "num": "int", "flag": "bool"})
    for i, md in enumerate(rows):
        idx.add(i, md)
    cands, exact = idx.candidates(flt, BitMap(range(len(rows))))
    if exact:
        assert set(cands) == expected
    else:
        assert set(cands) >= expected
    if all(b[0] != "raw" for b in branches):
        assert isinstance(flt.node, Or)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(metadata, min_size=1, max_size=30), branches=st.lists(branch, min_size=1, max_size=8))
def test_or_of_equalities_counts_and_scans_agree_on_a_collection(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]], branches: list[tuple[str, str, Any]]
) -> None:
    db = engramdb.open(tmp_path_factory.mktemp("or") / "data")
    try:
        c = db.create_collection("c", dimension=2, indexed_fields={"kw": "keyword", "num": "int", "flag": "bool"})
        c.upsert([{"id": f"r{i:03d}", "vector": [1, i], "metadata": md} for i, md in enumerate(rows)])
        raw = {"$or": [_branch_filter(b) for b in branches]}
        singles = [compile_filter(_branch_filter(b)) for b in branches]
        expected = sorted(
            f"r{i:03d}" for i, md in enumerate(rows) if any(f is not None and f.matches("", (), md) for f in singles)
        )
        assert c.count(raw) == len(expected)
        assert [r.id for r in c.scan(filter=raw, limit=100, include=[]).records] == expected
        assert sorted(h.id for h in c.search([1, 0], k=100, filter=raw, exact=True, include=[])) == expected
    finally:
        db.close()


# --------------------------------------------------------------- REST and gRPC


@pytest.fixture(scope="module")
def rest_coll(server: ServerProcess) -> str:
    name = unique_name("fc")
    with server.client() as c:
        r = c.post("/v1/collections", json={"name": name, "dimension": 2, "indexed_fields": {"user": "keyword"}})
        assert r.status_code in (200, 201), r.text
        recs = [{"id": f"r{i}", "vector": [1, i], "metadata": {"user": f"u{i}"}} for i in range(5)]
        r = c.post(f"/v1/collections/{name}/records", json={"records": recs})
        assert r.status_code == 200, r.text
    return name


REST_OPS: dict[str, tuple[str, dict[str, Any]]] = {
    "count": ("/count", {}),
    "scan": ("/records/scan", {}),
    "search": ("/search", {"vector": [1, 0], "k": 3}),
    "delete": ("/records/delete", {}),
    "delete-ids": ("/records/delete", {"ids": ["r1"]}),
}


@pytest.mark.parametrize("op", sorted(REST_OPS))
@pytest.mark.parametrize("name", ["nodes", "in-list", "values-total", "string", "field-path", "namespace-depth"])
def test_rest_refuses_oversize_filters_and_changes_nothing(
    server: ServerProcess, admin: httpx.Client, rest_coll: str, op: str, name: str
) -> None:
    path, body = REST_OPS[op]
    r = admin.post(f"/v1/collections/{rest_coll}{path}", json={**body, "filter": OVERSIZE[name]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "filter_too_large", r.text
    assert admin.post(f"/v1/collections/{rest_coll}/count", json={}).json()["count"] == 5


def test_rest_accepts_a_filter_at_the_bounds(admin: httpx.Client, rest_coll: str) -> None:
    flt = {"$or": [{"user": f"u{i}"} for i in range(MAX_FILTER_NODES - 1)]}
    r = admin.post(f"/v1/collections/{rest_coll}/count", json={"filter": flt})
    assert r.status_code == 200 and r.json()["count"] == 5, r.text


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield pb_grpc.EngramDBStub(ch)


def _grpc_error(fn: Callable[[], Any], status: grpc.StatusCode) -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    assert err.code() == status, (err.code(), err.details())
    return dict(json.loads(err.details()))


@pytest.mark.parametrize("name", ["nodes", "in-list", "values-total", "string", "field-path", "namespace-depth"])
def test_grpc_refuses_oversize_filters_and_changes_nothing(
    server: ServerProcess, stub: Any, rest_coll: str, name: str
) -> None:
    md = (("authorization", f"Bearer {server.admin_key}"),)
    fj = json.dumps(OVERSIZE[name])
    calls = [
        lambda: stub.Count(pb.CountRequest(coll=rest_coll, filter_json=fj), metadata=md, timeout=30),
        lambda: stub.Scan(pb.ScanRequest(coll=rest_coll, filter_json=fj), metadata=md, timeout=30),
        lambda: stub.Search(
            pb.SearchRequest(coll=rest_coll, vector=pack_vector([1, 0]), k=3, filter_json=fj), metadata=md, timeout=30
        ),
        lambda: stub.Delete(pb.DeleteRequest(coll=rest_coll, filter_json=fj), metadata=md, timeout=30),
        lambda: stub.Delete(pb.DeleteRequest(coll=rest_coll, ids=["r1"], filter_json=fj), metadata=md, timeout=30),
    ]
    for call in calls:
        assert _grpc_error(call, SC.INVALID_ARGUMENT)["code"] == "filter_too_large"
    assert stub.Count(pb.CountRequest(coll=rest_coll), metadata=md, timeout=30).count == 5


def test_server_time_budget_stops_expensive_queries_on_rest_and_grpc(server_factory: ServerFactory) -> None:
    s = server_factory(env={"ENGRAMDB_SERVER__QUERY_TIMEOUT_SECONDS": str(TINY)})
    name = unique_name("budget")
    slow = {"tag": {"$in": ["t1", "t2"]}}  # "tag" is not indexed: every row is read and tested
    with s.client() as c:
        r = c.post("/v1/collections", json={"name": name, "dimension": 2, "indexed_fields": {"user": "keyword"}})
        assert r.status_code in (200, 201), r.text
        recs = [
            {"id": f"r{i:04d}", "vector": [1, i % 7], "metadata": {"user": f"u{i % 50}", "tag": f"t{i % 50}"}}
            for i in range(600)
        ]
        assert c.post(f"/v1/collections/{name}/records", json={"records": recs}).status_code == 200
        base = f"/v1/collections/{name}"
        for path, body in (
            ("/count", {"filter": slow}),
            ("/records/scan", {"filter": slow}),
            ("/search", {"vector": [1, 0], "k": 3, "filter": slow}),
        ):
            r = c.post(base + path, json=body)
            assert r.status_code == 504, (path, r.text)
            err = r.json()["error"]
            assert err["code"] == "deadline_exceeded", err
            assert "narrow the query" in err["message"] and "indexed_fields" in err["message"], err
        # Answered from the indexes without reading records: within any budget.
        assert c.post(base + "/count", json={}).json()["count"] == 600
        assert c.post(base + "/count", json={"filter": {"user": "u1"}}).json()["count"] == 12
    md = (("authorization", f"Bearer {s.admin_key}"),)
    fj = json.dumps(slow)
    with grpc.insecure_channel(s.grpc_address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        g = pb_grpc.EngramDBStub(ch)
        for call in (
            lambda: g.Count(pb.CountRequest(coll=name, filter_json=fj), metadata=md, timeout=30),
            lambda: g.Scan(pb.ScanRequest(coll=name, filter_json=fj), metadata=md, timeout=30),
            lambda: g.Search(
                pb.SearchRequest(coll=name, vector=pack_vector([1, 0]), k=3, filter_json=fj), metadata=md, timeout=30
            ),
        ):
            body = _grpc_error(call, SC.DEADLINE_EXCEEDED)
            assert body["code"] == "deadline_exceeded" and "narrow the query" in body["message"]
