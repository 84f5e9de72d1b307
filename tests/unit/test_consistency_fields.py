"""The cluster knobs of the public API on one node: ``consistency`` per request, ``shards`` and
``replication_factor`` at create (docs/cluster.md, docs/api-contract.md).

A single node is every replica of everything: a valid consistency is accepted and changes nothing,
a bad one is refused with ``invalid_consistency`` before anything runs; ``shards`` and
``replication_factor`` are validated, and above 1 refused with ``not_a_cluster``, creating nothing.
The same rules hold embedded, through the service (what REST and gRPC run) and in the clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engramdb import validation
from engramdb.client import AsyncClient, AsyncRemoteCollection, Client, RemoteCollection
from engramdb.cluster.ring import placement
from engramdb.engine.collection import Collection
from engramdb.engine.database import Database
from engramdb.errors import EngramError, FailedPrecondition, InvalidArgument
from engramdb.service import RequestContext, Service
from engramdb.storage import keyspace
from engramdb.storage.codec import pack, unpack
from engramdb.types import CollectionConfig

LEVELS = ["one", "quorum", "all"]
BAD_LEVELS: list[Any] = ["ONE", "Quorum", "", "two", "any", " one", 1, True, b"one", ["one"], {"level": "one"}]
VEC = [1.0, 0.0, 0.0]


def _code(call: Callable[[], Any]) -> str:
    try:
        call()
    except EngramError as e:
        return e.code
    return "no error"


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("level", [*LEVELS, None])
def test_consistency_accepts_the_three_levels_and_none(level: str | None) -> None:
    assert validation.consistency(level) == level


@pytest.mark.parametrize("level", BAD_LEVELS, ids=repr)
def test_consistency_refuses_anything_else(level: Any) -> None:
    with pytest.raises(InvalidArgument) as e:
        validation.consistency(level)
    assert e.value.code == "invalid_consistency"
    assert all(f"'{x}'" in e.value.message for x in LEVELS)  # says what is allowed


def test_a_huge_bad_value_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidArgument) as e:
        validation.consistency("q" * 1_000_000)
    assert len(e.value.message) < 300


@pytest.mark.parametrize("n", [1 << i for i in range(13)])
def test_shards_are_powers_of_two_up_to_4096(n: int) -> None:
    assert validation.shards(n) == n


@pytest.mark.parametrize("n", [0, -1, -2, 3, 6, 12, 4095, 8192, True, False, 2.0, "2", None])
def test_other_shard_counts_are_refused(n: Any) -> None:
    with pytest.raises(InvalidArgument) as e:
        validation.shards(n)
    assert e.value.code == "invalid_shards" and "power of two" in e.value.message


@pytest.mark.parametrize("n", range(1, 17))
def test_replication_factor_is_1_to_16(n: int) -> None:
    assert validation.replication_factor(n) == n


@pytest.mark.parametrize("n", [0, -1, 17, 100, True, 1.0, "3", None])
def test_other_replication_factors_are_refused(n: Any) -> None:
    with pytest.raises(InvalidArgument) as e:
        validation.replication_factor(n)
    assert e.value.code == "invalid_replication_factor"


def test_the_ring_applies_the_same_replication_bound() -> None:
    nodes = [f"n{i}" for i in range(20)]
    with pytest.raises(InvalidArgument) as e:
        placement("t", "c", 8, 17, nodes)  # enough nodes, but beyond the bound every API caller meets
    assert e.value.code == "invalid_replication_factor"
    assert len(placement("t", "c", 8, 16, nodes)[0]) == 16


# --------------------------------------------------------------------- engine
@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / "db")
    yield d
    d.close()


@pytest.mark.parametrize("level", LEVELS)
def test_engine_view_is_the_collection_itself(db: Database, level: str) -> None:
    c = db.create_collection("c", 3)
    view = c.with_consistency(level)
    assert view is c  # one node: every level is met by this node alone
    view.upsert({"id": "a", "vector": VEC})
    assert c.count() == 1


@pytest.mark.parametrize("level", BAD_LEVELS, ids=repr)
def test_engine_refuses_a_bad_level(db: Database, level: Any) -> None:
    c = db.create_collection("c", 3)
    with pytest.raises(InvalidArgument) as e:
        c.with_consistency(level)
    assert e.value.code == "invalid_consistency"


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"shards": 3}, "invalid_shards"),
        ({"shards": 0}, "invalid_shards"),
        ({"shards": 8192}, "invalid_shards"),
        ({"shards": True}, "invalid_shards"),
        ({"shards": "2"}, "invalid_shards"),
        ({"replication_factor": 0}, "invalid_replication_factor"),
        ({"replication_factor": 17}, "invalid_replication_factor"),
        ({"replication_factor": 2.0}, "invalid_replication_factor"),
        ({"shards": 2}, "not_a_cluster"),
        ({"shards": 4096}, "not_a_cluster"),
        ({"replication_factor": 3}, "not_a_cluster"),
        ({"shards": 1, "replication_factor": 2}, "not_a_cluster"),
    ],
)
def test_engine_create_refuses_a_layout_it_cannot_hold(db: Database, kw: dict[str, Any], code: str) -> None:
    with pytest.raises(EngramError) as e:
        db.create_collection("c", 3, **kw)
    assert e.value.code == code
    if code == "not_a_cluster":
        assert isinstance(e.value, FailedPrecondition) and "cluster mode" in e.value.message
    assert db.list_collections() == []  # nothing created


def test_engine_create_with_one_shard_and_one_copy(db: Database) -> None:
    c = db.create_collection("c", 3, shards=1, replication_factor=1)
    assert (c.config.shards, c.config.replication_factor) == (1, 1)
    # Left out or given as 1: the same configuration, so exist_ok finds it identical.
    assert db.create_collection("c", 3, exist_ok=True) is c
    assert db.create_collection("c", 3, exist_ok=True, shards=1) is c
    [cfg] = db.list_collections()
    assert (cfg.shards, cfg.replication_factor) == (1, 1)


def test_a_configuration_stored_before_these_fields_loads_as_one_and_one(tmp_path: Path) -> None:
    d = Database(tmp_path / "db")
    c = d.create_collection("old", 3)
    c.upsert({"id": "a", "vector": VEC})
    key = keyspace.collection_key(c.tenant_id, "old")
    meta = unpack(d.store.get("meta", key))
    for f in ("shards", "replication_factor"):
        del meta["config"][f]  # what an older version wrote
    d.store.write_meta({key: pack(meta)})
    d.close()

    d = Database(tmp_path / "db")
    try:
        c = d.get_collection("old")
        assert (c.config.shards, c.config.replication_factor) == (1, 1)
        assert [(x.shards, x.replication_factor) for x in d.list_collections()] == [(1, 1)]
        assert d.create_collection("old", 3, exist_ok=True) is c
        assert c.count() == 1
    finally:
        d.close()


def test_config_equality_includes_the_layout() -> None:
    base = CollectionConfig(name="c", dimension=3)
    assert (base.shards, base.replication_factor) == (1, 1)
    assert dataclasses.replace(base, shards=2) != base
    assert dataclasses.replace(base, replication_factor=3) != base
    assert CollectionConfig.from_stored({"name": "c", "dimension": 3}) == base


@pytest.mark.parametrize("kw", [{"shards": 3}, {"shards": 0}, {"replication_factor": 0}, {"replication_factor": 17}])
def test_config_refuses_a_bad_layout(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CollectionConfig(name="c", dimension=3, **kw)
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        CollectionConfig.model_validate({"name": "c", "dimension": 3, **kw})


# -------------------------------------------------------------------- service
@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Database, Collection, Service]]:
    d = Database(tmp_path / "db")
    service = Service(d, d.settings)  # no key exists: auth "auto" lets the loopback caller in as admin
    service.load_all()
    c = d.create_collection("c", 3)
    c.upsert([{"id": "a", "vector": VEC}, {"id": "b", "vector": [0.0, 1.0, 0.0]}])
    c.link([{"src": "a", "relation": "r", "dst": "b"}])
    yield d, c, service
    service.close()
    d.close()


# One request per operation that takes ``consistency``; the writes are chosen to change something.
SERVICE_OPS: dict[str, dict[str, Any]] = {
    "get_collection": {},
    "upsert": {"records": [{"id": "new", "vector": VEC}]},
    "get": {"ids": ["a"]},
    "get_one": {"id": "a"},
    "patch": {"id": "a", "text": "changed"},
    "delete": {"ids": ["a"]},
    "delete_one": {"id": "a"},
    "scan": {},
    "count": {},
    "refresh_ttl": {"ids": ["a"]},
    "search": {"vector": VEC, "k": 1},
    "list_namespaces": {},
    "link": {"edges": [{"src": "b", "relation": "r", "dst": "a"}]},
    "unlink": {"edges": [{"src": "a", "relation": "r", "dst": "b"}]},
    "edges": {"id": "a"},
    "neighbors": {"id": "a"},
    "subgraph": {"ids": ["a"]},
    "extract": {"text": "Ada wrote about the engine."},
}


def _state(c: Collection) -> Any:
    page = c.scan(include=["text", "metadata"])
    return [(r.id, r.text, r.version) for r in page.records], [e.to_dict() for e in c.edges("a")]


@pytest.mark.parametrize("op", sorted(SERVICE_OPS))
def test_service_refuses_a_bad_level_before_anything_runs(
    served: tuple[Database, Collection, Service], op: str
) -> None:
    _, c, service = served
    before = _state(c)
    for bad in ("ALL", "two", 3, ["one", "all"]):
        params = {"coll": "c", **SERVICE_OPS[op], "consistency": bad}
        assert _code(lambda p=params: service.execute(RequestContext(), op, p)) == "invalid_consistency", bad
    assert _state(c) == before  # nothing was written


@pytest.mark.parametrize("op", sorted(set(SERVICE_OPS) - {"extract"}))  # extract needs a model: see the REST test
@pytest.mark.parametrize("level", LEVELS)
def test_service_accepts_every_level(served: tuple[Database, Collection, Service], op: str, level: str) -> None:
    _, _, service = served
    out = service.execute(RequestContext(), op, {"coll": "c", **SERVICE_OPS[op], "consistency": level})
    assert isinstance(out, dict)


def test_service_create_collection_layout(served: tuple[Database, Collection, Service]) -> None:
    d, _, service = served

    def create(**kw: Any) -> str:
        return _code(
            lambda: service.execute(RequestContext(), "create_collection", {"name": "n", "dimension": 3, **kw})
        )

    # A bad number gets the engine's code; a bad type (which the model refuses) gets the same one.
    for kw, code in (
        ({"shards": 3}, "invalid_shards"),
        ({"shards": "2"}, "invalid_shards"),
        ({"shards": True}, "invalid_shards"),
        ({"shards": 8192}, "invalid_shards"),
        ({"replication_factor": 17}, "invalid_replication_factor"),
        ({"replication_factor": 1.5}, "invalid_replication_factor"),
        ({"shards": 2}, "not_a_cluster"),
        ({"replication_factor": 3}, "not_a_cluster"),
    ):
        assert create(**kw) == code, kw
    assert [x.name for x in d.list_collections()] == ["c"]
    out = service.execute(
        RequestContext(), "create_collection", {"name": "n", "dimension": 3, "shards": 1, "replication_factor": 1}
    )
    assert (out["collection"]["shards"], out["collection"]["replication_factor"]) == (1, 1)
    listed = service.execute(RequestContext(), "list_collections", {})["collections"]
    assert {(x["name"], x["shards"], x["replication_factor"]) for x in listed} == {("c", 1, 1), ("n", 1, 1)}


@pytest.mark.parametrize("field", ["shards", "replication_factor"])
def test_the_layout_cannot_be_altered(served: tuple[Database, Collection, Service], field: str) -> None:
    d, _, service = served
    with pytest.raises(InvalidArgument) as e:
        service.execute(RequestContext(), "alter_collection", {"coll": "c", field: 1, "ef_search": 5})
    assert e.value.code == "immutable_field" and e.value.details["field"] == field
    assert d.get_collection("c").config.index.ef_search != 5


# -------------------------------------------------------------------- clients
CONFIG = CollectionConfig(name="c", dimension=3)
COLL_CALLS: dict[str, Callable[[Any], Any]] = {
    "upsert": lambda c: c.upsert({"id": "a", "vector": VEC}),
    "patch": lambda c: c.patch("a", text="t"),
    "delete": lambda c: c.delete(["a"]),
    "refresh_ttl": lambda c: c.refresh_ttl(["a"]),
    "get": lambda c: c.get("a"),
    "get_many": lambda c: c.get_many(["a"]),
    "count": lambda c: c.count(),
    "scan": lambda c: c.scan(),
    "list_namespaces": lambda c: c.list_namespaces(),
    "search": lambda c: c.search(VEC),
    "link": lambda c: c.link({"src": "a", "relation": "r", "dst": "b"}),
    "unlink": lambda c: c.unlink([("a", "r", "b")]),
    "edges": lambda c: c.edges("a"),
    "neighbors": lambda c: c.neighbors("a"),
    "subgraph": lambda c: c.subgraph(["a"]),
    "extract": lambda c: c.extract("Ada wrote about the engine."),
}


def _recorder(bodies: list[Any]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content) if request.content else None)
        return httpx.Response(400, json={"error": {"code": "invalid_argument", "message": "refused by the test"}})

    return httpx.MockTransport(handle)


def _sent(kind: str, level: str | None, call: Callable[[Any], Any]) -> Any:
    """The JSON body the client sends for ``call`` on a view at ``level`` (None: the plain collection)."""
    bodies: list[Any] = []
    if kind == "sync":
        client = Client("http://engramdb.test", "k", retries=0, transport=_recorder(bodies))
        coll: Any = RemoteCollection(client, CONFIG)
        with pytest.raises(InvalidArgument):
            call(coll if level is None else coll.with_consistency(level))
        client.close()
    else:

        async def run() -> None:
            client = AsyncClient("http://engramdb.test", "k", retries=0, transport=_recorder(bodies))
            coll: Any = AsyncRemoteCollection(client, CONFIG)
            with pytest.raises(InvalidArgument):
                await call(coll if level is None else coll.with_consistency(level))
            await client.close()

        asyncio.run(run())
    assert len(bodies) == 1
    return bodies[0]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("method", sorted(COLL_CALLS))
def test_a_client_view_sends_its_level_with_every_request(kind: str, method: str) -> None:
    assert _sent(kind, "all", COLL_CALLS[method])["consistency"] == "all"
    assert "consistency" not in _sent(kind, None, COLL_CALLS[method])  # the server's default


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_refuses_a_bad_level_without_a_request(kind: str) -> None:
    bodies: list[Any] = []
    cls: Any = RemoteCollection if kind == "sync" else AsyncRemoteCollection
    client: Any = (Client if kind == "sync" else AsyncClient)("http://engramdb.test", "k", transport=_recorder(bodies))
    coll = cls(client, CONFIG)
    for bad in BAD_LEVELS:
        with pytest.raises(InvalidArgument) as e:
            coll.with_consistency(bad)
        assert e.value.code == "invalid_consistency"
    view = coll.with_consistency("one")
    assert view is not coll and view.config is coll.config and view.name == "c"
    assert coll.with_consistency("quorum")._consistency == "quorum" and coll._consistency is None
    assert bodies == []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_sends_the_layout_on_create(kind: str) -> None:
    bodies: list[Any] = []

    async def arun() -> None:
        client = AsyncClient("http://engramdb.test", "k", retries=0, transport=_recorder(bodies))
        with pytest.raises(InvalidArgument):
            await client.create_collection("c", 3, shards=4, replication_factor=2)
        with pytest.raises(InvalidArgument):
            await client.create_collection("c", 3)
        await client.close()

    if kind == "sync":
        with Client("http://engramdb.test", "k", retries=0, transport=_recorder(bodies)) as client:
            with pytest.raises(InvalidArgument):
                client.create_collection("c", 3, shards=4, replication_factor=2)
            with pytest.raises(InvalidArgument):
                client.create_collection("c", 3)
    else:
        asyncio.run(arun())
    assert (bodies[0]["shards"], bodies[0]["replication_factor"]) == (4, 2)
    assert "shards" not in bodies[1] and "replication_factor" not in bodies[1]  # the server's default
