"""One validation authority: a bad value fails with the same code embedded and through the service.

Each case sends one bad field to the embedded engine (a ``Database`` method or a
``Collection`` method) and the same request to ``Service.execute`` on the same
database (what REST and gRPC run), and expects one error code from both. The
service's request models check shape only and publish the engine's bounds in
OpenAPI (``engramdb/validation.py``); a bound repeated in a model, with another
number or another code, makes a case here fail. The last tests pin the
published bounds to the engine's constants.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engramdb import validation
from engramdb.engine.collection import Collection
from engramdb.engine.database import Database
from engramdb.errors import EngramError
from engramdb.service import RequestContext, Service

COLL = "c"
TTL_TOO_LONG = validation.MAX_TTL_SECONDS + 1
VEC = [1.0, 0.0, 0.0]


@dataclass(frozen=True)
class Case:
    id: str
    engine: Callable[[Database, Collection], Any]
    op: str
    params: dict[str, Any]
    code: str
    # False where the model checks the value as shape: an enumeration (OpenAPI ``enum``) or a batch
    # size (refused before pydantic builds 10,000 objects); the code is still the engine's.
    same_message: bool = True


def _rec(**fields: Any) -> dict[str, Any]:
    return {"id": "r", "vector": VEC, **fields}


def _c(**kw: Any) -> dict[str, Any]:
    return {"coll": COLL, **kw}


def _nested(depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _ in range(depth):
        out = {"x": out}
    return out


CASES = [
    # ---------------------------------------------------------- collections
    Case(
        "collection-name",
        lambda db, c: db.create_collection("bad name!", 3),
        "create_collection",
        {"name": "bad name!", "dimension": 3},
        "invalid_config",
    ),
    Case(
        "dimension-zero",
        lambda db, c: db.create_collection("d0", 0),
        "create_collection",
        {"name": "d0", "dimension": 0},
        "invalid_config",
    ),
    Case(
        "dimension-too-large",
        lambda db, c: db.create_collection("d1", validation.MAX_DIMENSION + 1),
        "create_collection",
        {"name": "d1", "dimension": validation.MAX_DIMENSION + 1},
        "invalid_config",
    ),
    Case(
        "metric",
        lambda db, c: db.create_collection("m", 3, "manhattan"),
        "create_collection",
        {"name": "m", "dimension": 3, "metric": "manhattan"},
        "invalid_config",
        same_message=False,
    ),
    Case(
        "default-ttl",
        lambda db, c: db.create_collection("t", 3, default_ttl_seconds=TTL_TOO_LONG),
        "create_collection",
        {"name": "t", "dimension": 3, "default_ttl_seconds": TTL_TOO_LONG},
        "invalid_config",
    ),
    Case(
        "shards-not-a-power-of-two",
        lambda db, c: db.create_collection("s", 3, shards=3),
        "create_collection",
        {"name": "s", "dimension": 3, "shards": 3},
        "invalid_shards",
    ),
    Case(
        "shards-on-one-node",
        lambda db, c: db.create_collection("s", 3, shards=2),
        "create_collection",
        {"name": "s", "dimension": 3, "shards": 2},
        "not_a_cluster",
    ),
    Case(
        "replication-factor-too-large",
        lambda db, c: db.create_collection("s", 3, replication_factor=validation.MAX_REPLICATION_FACTOR + 1),
        "create_collection",
        {"name": "s", "dimension": 3, "replication_factor": validation.MAX_REPLICATION_FACTOR + 1},
        "invalid_replication_factor",
    ),
    Case(
        "consistency",
        lambda db, c: c.with_consistency("ALL").count(),
        "count",
        _c(consistency="ALL"),
        "invalid_consistency",
    ),
    # -------------------------------------------------------------- records
    Case("id-empty", lambda db, c: c.upsert(_rec(id="")), "upsert", _c(records=[_rec(id="")]), "invalid_id"),
    Case(
        "id-too-long",
        lambda db, c: c.upsert(_rec(id="x" * (validation.MAX_ID_BYTES + 1))),
        "upsert",
        _c(records=[_rec(id="x" * (validation.MAX_ID_BYTES + 1))]),
        "invalid_id",
    ),
    Case(
        "id-bytes",  # 200 characters, 600 bytes: the bound is in bytes
        lambda db, c: c.upsert(_rec(id="€" * 200)),
        "upsert",
        _c(records=[_rec(id="€" * 200)]),
        "invalid_id",
    ),
    Case(
        "id-control-char",
        lambda db, c: c.upsert(_rec(id="a\nb")),
        "upsert",
        _c(records=[_rec(id="a\nb")]),
        "invalid_id",
    ),
    Case(
        "vector-dimension",
        lambda db, c: c.upsert(_rec(vector=[1.0, 0.0])),
        "upsert",
        _c(records=[_rec(vector=[1.0, 0.0])]),
        "dimension_mismatch",
    ),
    Case(
        "vector-zero",
        lambda db, c: c.upsert(_rec(vector=[0.0, 0.0, 0.0])),
        "upsert",
        _c(records=[_rec(vector=[0.0, 0.0, 0.0])]),
        "invalid_vector",
    ),
    Case(
        "vector-nan",
        lambda db, c: c.upsert(_rec(vector=[math.nan, 0.0, 0.0])),
        "upsert",
        _c(records=[_rec(vector=[math.nan, 0.0, 0.0])]),
        "invalid_vector",
    ),
    Case(
        "text-too-long",
        lambda db, c: c.upsert(_rec(text="x" * (validation.MAX_TEXT_BYTES + 1))),
        "upsert",
        _c(records=[_rec(text="x" * (validation.MAX_TEXT_BYTES + 1))]),
        "invalid_text",
    ),
    Case(
        "metadata-too-deep",
        lambda db, c: c.upsert(_rec(metadata=_nested(validation.MAX_METADATA_DEPTH + 2))),
        "upsert",
        _c(records=[_rec(metadata=_nested(validation.MAX_METADATA_DEPTH + 2))]),
        "invalid_metadata",
    ),
    Case(
        "metadata-big-int",
        lambda db, c: c.upsert(_rec(metadata={"n": 2**70})),
        "upsert",
        _c(records=[_rec(metadata={"n": 2**70})]),
        "invalid_metadata",
    ),
    Case(
        "namespace-too-deep",
        lambda db, c: c.upsert(_rec(namespace=["a"] * (validation.MAX_NAMESPACE_DEPTH + 1))),
        "upsert",
        _c(records=[_rec(namespace=["a"] * (validation.MAX_NAMESPACE_DEPTH + 1))]),
        "invalid_namespace",
    ),
    Case(
        "namespace-empty-label",
        lambda db, c: c.upsert(_rec(namespace=["a", ""])),
        "upsert",
        _c(records=[_rec(namespace=["a", ""])]),
        "invalid_namespace",
    ),
    Case(
        "ttl-zero",
        lambda db, c: c.upsert(_rec(ttl_seconds=0)),
        "upsert",
        _c(records=[_rec(ttl_seconds=0)]),
        "invalid_ttl",
    ),
    Case(
        "ttl-over-a-century",  # the bound OpenAPI publishes (it said 1e10 s once; the engine says 100 years)
        lambda db, c: c.upsert(_rec(ttl_seconds=TTL_TOO_LONG)),
        "upsert",
        _c(records=[_rec(ttl_seconds=TTL_TOO_LONG)]),
        "invalid_ttl",
    ),
    Case(
        "ttl-nan",
        lambda db, c: c.upsert(_rec(ttl_seconds=math.nan)),
        "upsert",
        _c(records=[_rec(ttl_seconds=math.nan)]),
        "invalid_ttl",
    ),
    Case(
        "patch-ttl",
        lambda db, c: c.patch("a", ttl_seconds=TTL_TOO_LONG),
        "patch",
        _c(id="a", ttl_seconds=TTL_TOO_LONG),
        "invalid_ttl",
    ),
    Case(
        "expires-at-negative",
        lambda db, c: c.upsert(_rec(expires_at=-1)),
        "upsert",
        _c(records=[_rec(expires_at=-1)]),
        "invalid_ttl",
    ),
    Case(
        "expires-at-too-far",
        lambda db, c: c.upsert(_rec(expires_at=validation.MAX_EPOCH_SECONDS)),
        "upsert",
        _c(records=[_rec(expires_at=validation.MAX_EPOCH_SECONDS)]),
        "invalid_ttl",
    ),
    Case(
        "batch-too-large",
        lambda db, c: c.get_many(["a"] * (validation.MAX_BATCH + 1)),
        "get",
        _c(ids=["a"] * (validation.MAX_BATCH + 1)),
        "batch_too_large",
        same_message=False,
    ),
    Case(
        "get-include",
        lambda db, c: c.get("a", include=["colour"]),
        "get_one",
        _c(id="a", include=["colour"]),
        "invalid_include",
        same_message=False,
    ),
    # ---------------------------------------------------------------- reads
    Case("scan-limit-zero", lambda db, c: c.scan(limit=0), "scan", _c(limit=0), "invalid_limit"),
    Case(
        "scan-limit-too-large",
        lambda db, c: c.scan(limit=validation.MAX_BATCH + 1),
        "scan",
        _c(limit=validation.MAX_BATCH + 1),
        "invalid_limit",
    ),
    Case("scan-cursor", lambda db, c: c.scan(cursor="not base64!"), "scan", _c(cursor="not base64!"), "invalid_cursor"),
    Case("scan-filter", lambda db, c: c.scan(filter={"$bogus": 1}), "scan", _c(filter={"$bogus": 1}), "invalid_filter"),
    Case(
        "count-filter",
        lambda db, c: c.count(filter={"n": {"$gt": []}}),
        "count",
        _c(filter={"n": {"$gt": []}}),
        "invalid_filter",
    ),
    Case(
        "namespaces-limit",
        lambda db, c: c.list_namespaces(limit=validation.MAX_BATCH + 1),
        "list_namespaces",
        _c(limit=validation.MAX_BATCH + 1),
        "invalid_limit",
    ),
    Case(
        "namespaces-max-depth",
        lambda db, c: c.list_namespaces(max_depth=0),
        "list_namespaces",
        _c(max_depth=0),
        "invalid_argument",
    ),
    Case(
        "namespaces-offset",
        lambda db, c: c.list_namespaces(offset=-1),
        "list_namespaces",
        _c(offset=-1),
        "invalid_argument",
    ),
    # --------------------------------------------------------------- search
    Case("k-zero", lambda db, c: c.search(VEC, k=0), "search", _c(vector=VEC, k=0), "invalid_k"),
    Case(
        "k-too-large",
        lambda db, c: c.search(VEC, k=validation.MAX_K + 1),
        "search",
        _c(vector=VEC, k=validation.MAX_K + 1),
        "invalid_k",
    ),
    Case("ef-zero", lambda db, c: c.search(VEC, ef=0), "search", _c(vector=VEC, ef=0), "invalid_ef"),
    Case(
        "ef-too-large",
        lambda db, c: c.search(VEC, ef=validation.MAX_EF + 1),
        "search",
        _c(vector=VEC, ef=validation.MAX_EF + 1),
        "invalid_ef",
    ),
    Case(
        "mode",
        lambda db, c: c.search(VEC, mode="fuzzy"),
        "search",
        _c(vector=VEC, mode="fuzzy"),
        "invalid_mode",
        same_message=False,
    ),
    Case(
        "weights",
        lambda db, c: c.search(VEC, text="a", mode="hybrid", weights={"vector": validation.MAX_FUSION_WEIGHT + 1}),
        "search",
        _c(vector=VEC, text="a", mode="hybrid", weights={"vector": validation.MAX_FUSION_WEIGHT + 1}),
        "invalid_weights",
    ),
    Case(
        "search-include",
        lambda db, c: c.search(VEC, include=["colour"]),
        "search",
        _c(vector=VEC, include=["colour"]),
        "invalid_include",
        same_message=False,
    ),
    Case(
        "search-filter",
        lambda db, c: c.search(VEC, filter={"$or": 1}),
        "search",
        _c(vector=VEC, filter={"$or": 1}),
        "invalid_filter",
    ),
    Case(
        "expand-hops",
        lambda db, c: c.search(VEC, expand={"hops": validation.MAX_HOPS + 1}),
        "search",
        _c(vector=VEC, expand={"hops": validation.MAX_HOPS + 1}),
        "invalid_hops",
    ),
    Case(
        "expand-fanout",
        lambda db, c: c.search(VEC, expand={"fanout": validation.MAX_FANOUT + 1}),
        "search",
        _c(vector=VEC, expand={"fanout": validation.MAX_FANOUT + 1}),
        "invalid_expand",
    ),
    Case(
        "expand-timeout",
        lambda db, c: c.search(VEC, expand={"timeout_ms": validation.MAX_TIMEOUT_MS + 1.0}),
        "search",
        _c(vector=VEC, expand={"timeout_ms": validation.MAX_TIMEOUT_MS + 1.0}),
        "invalid_timeout",
    ),
    # ---------------------------------------------------------------- graph
    Case(
        "link-weight",
        lambda db, c: c.link([{"src": "a", "relation": "r", "dst": "b", "weight": validation.MAX_EDGE_WEIGHT * 2}]),
        "link",
        _c(edges=[{"src": "a", "relation": "r", "dst": "b", "weight": validation.MAX_EDGE_WEIGHT * 2}]),
        "invalid_weight",
    ),
    Case(
        "link-relation-too-long",
        lambda db, c: c.link([{"src": "a", "relation": "r" * (validation.MAX_RELATION_BYTES + 1), "dst": "b"}]),
        "link",
        _c(edges=[{"src": "a", "relation": "r" * (validation.MAX_RELATION_BYTES + 1), "dst": "b"}]),
        "invalid_relation",
    ),
    Case(
        "link-relation-empty",
        lambda db, c: c.link([{"src": "a", "relation": "", "dst": "b"}]),
        "link",
        _c(edges=[{"src": "a", "relation": "", "dst": "b"}]),
        "invalid_relation",
    ),
    Case(
        "link-properties",
        lambda db, c: c.link([{"src": "a", "relation": "r", "dst": "b", "properties": {"n": 2**70}}]),
        "link",
        _c(edges=[{"src": "a", "relation": "r", "dst": "b", "properties": {"n": 2**70}}]),
        "invalid_properties",
    ),
    Case("edges-limit", lambda db, c: c.edges("a", limit=0), "edges", _c(id="a", limit=0), "invalid_limit"),
    Case(
        "edges-relation", lambda db, c: c.edges("a", relation=""), "edges", _c(id="a", relation=""), "invalid_relation"
    ),
    Case(
        "neighbors-hops",
        lambda db, c: c.neighbors("a", hops=validation.MAX_HOPS + 1),
        "neighbors",
        _c(id="a", hops=validation.MAX_HOPS + 1),
        "invalid_hops",
    ),
    Case(
        "neighbors-hops-zero", lambda db, c: c.neighbors("a", hops=0), "neighbors", _c(id="a", hops=0), "invalid_hops"
    ),
    Case(
        "neighbors-fanout",
        lambda db, c: c.neighbors("a", fanout=validation.MAX_FANOUT + 1),
        "neighbors",
        _c(id="a", fanout=validation.MAX_FANOUT + 1),
        "invalid_fanout",
    ),
    Case(
        "neighbors-limit",
        lambda db, c: c.neighbors("a", limit=validation.MAX_GRAPH_LIMIT + 1),
        "neighbors",
        _c(id="a", limit=validation.MAX_GRAPH_LIMIT + 1),
        "invalid_limit",
    ),
    Case(
        "neighbors-timeout",
        lambda db, c: c.neighbors("a", timeout_ms=validation.MAX_TIMEOUT_MS + 1.0),
        "neighbors",
        _c(id="a", timeout_ms=validation.MAX_TIMEOUT_MS + 1.0),
        "invalid_timeout",
    ),
    Case(
        "neighbors-timeout-zero",
        lambda db, c: c.neighbors("a", timeout_ms=0.0),
        "neighbors",
        _c(id="a", timeout_ms=0.0),
        "invalid_timeout",
    ),
    Case(
        "subgraph-hops",
        lambda db, c: c.subgraph(["a"], hops=validation.MAX_HOPS + 1),
        "subgraph",
        _c(ids=["a"], hops=validation.MAX_HOPS + 1),
        "invalid_hops",
    ),
    Case(
        "subgraph-include",
        lambda db, c: c.subgraph(["a"], include=["colour"]),
        "subgraph",
        _c(ids=["a"], include=["colour"]),
        "invalid_include",
        same_message=False,
    ),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Database, Collection, Service]]:
    db = Database(tmp_path_factory.mktemp("parity") / "db")
    service = Service(db, db.settings)  # no key exists: auth "auto" lets the loopback caller in as admin
    service.load_all()
    coll = db.create_collection(COLL, 3)
    coll.upsert([{"id": "a", "vector": VEC}, {"id": "b", "vector": [0.0, 1.0, 0.0]}])
    coll.link([{"src": "a", "relation": "r", "dst": "b"}])
    yield db, coll, service
    service.close()
    db.close()


def _error(call: Callable[[], Any]) -> tuple[str, str]:
    try:
        call()
    except EngramError as e:
        return e.code, e.message
    return "no error", ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_field_fails_with_one_code_on_every_path(env: tuple[Database, Collection, Service], case: Case) -> None:
    db, coll, service = env
    before = (coll.count(), [c.name for c in db.list_collections()])
    engine = _error(lambda: case.engine(db, coll))
    served = _error(lambda: service.execute(RequestContext(), case.op, dict(case.params)))
    assert (engine[0], served[0]) == (case.code, case.code)
    if case.same_message:  # the rule is applied once, by the engine: the service's answer is the engine's
        assert served[1] == engine[1]
    assert (coll.count(), [c.name for c in db.list_collections()]) == before  # a refused request changes nothing


def test_every_field_the_issue_names_is_covered() -> None:
    fields = [
        "collection-name",
        "dimension",
        "metric",
        "id",
        "vector",
        "text",
        "metadata",
        "namespace",
        "ttl",
        "expires-at",
        "k",
        "ef",
        "mode",
        "hops",
        "fanout",
        "timeout",
        "weight",
        "relation",
        "limit",
        "cursor",
        "filter",
        "include",
        "consistency",
        "shards",
        "replication-factor",
    ]
    assert [f for f in fields if not any(re.search(rf"(^|-){f}(-|$)", c.id) for c in CASES)] == []


# ----------------------------------------------------- the bounds OpenAPI publishes
def _schema() -> dict[str, Any]:
    from engramdb.server.rest.openapi import build_openapi

    schemas: dict[str, Any] = build_openapi("test")["components"]["schemas"]
    return schemas


@pytest.mark.parametrize(
    ("model", "field", "keyword", "value"),
    [
        ("RecordIn", "ttl_seconds", "maximum", validation.MAX_TTL_SECONDS),
        ("CreateCollectionBody", "default_ttl_seconds", "maximum", validation.MAX_TTL_SECONDS),
        ("RecordIn", "expires_at", "exclusiveMaximum", validation.MAX_EPOCH_SECONDS),
        ("RecordIn", "id", "maxLength", validation.MAX_ID_BYTES),
        ("CreateCollectionBody", "dimension", "maximum", validation.MAX_DIMENSION),
        ("CreateCollectionBody", "name", "pattern", validation.NAME_PATTERN),
        ("SearchBody", "k", "maximum", validation.MAX_K),
        ("SearchBody", "ef", "maximum", validation.MAX_EF),
        ("NeighborsBody", "hops", "maximum", validation.MAX_HOPS),
        ("NeighborsBody", "fanout", "maximum", validation.MAX_FANOUT),
        ("NeighborsBody", "limit", "maximum", validation.MAX_GRAPH_LIMIT),
        ("NeighborsBody", "timeout_ms", "maximum", validation.MAX_TIMEOUT_MS),
        ("ScanBody", "limit", "maximum", validation.MAX_BATCH),
        ("EdgeIn", "weight", "maximum", validation.MAX_EDGE_WEIGHT),
        ("EdgeIn", "relation", "maxLength", validation.MAX_RELATION_BYTES),
        ("RotateKeyBody", "grace_seconds", "maximum", validation.MAX_TTL_SECONDS),
        ("ExtractBody", "text", "maxLength", validation.MAX_EXTRACT_TEXT_CHARS),
        ("CreateCollectionBody", "shards", "maximum", validation.MAX_SHARDS),
        ("CreateCollectionBody", "replication_factor", "maximum", validation.MAX_REPLICATION_FACTOR),
        ("SearchBody", "consistency", "enum", [*validation.CONSISTENCY_LEVELS, None]),
    ],
)
def test_openapi_publishes_the_engines_bounds(model: str, field: str, keyword: str, value: Any) -> None:
    prop = _schema()[model]["properties"][field]
    # Top level, or in the non-null branch of an optional field.
    found = [prop[keyword]] if keyword in prop else [b[keyword] for b in prop.get("anyOf", ()) if keyword in b]
    assert found == [value]


def test_openapi_links_the_filter_language() -> None:
    assert "docs/filters.md" in _schema()["SearchBody"]["properties"]["filter"]["description"]
    assert (Path(__file__).resolve().parents[2] / "docs" / "filters.md").is_file()
