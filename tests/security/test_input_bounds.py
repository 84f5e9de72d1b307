"""Input bounds on every path: REST, gRPC and the embedded engine answer the same error code.

Each test names the guard it covers (engramdb/validation.py unless said otherwise)
and checks that nothing changed after the refusal:

- API-key expiry (create, rotate) is finite, in the future and at most 100
  years ahead, grace periods too (``invalid_expiry``); a non-finite expiry
  stored before the fix counts as expired and is shown as 0, never as bare NaN;
- record ids, edge endpoints, relations and namespace labels being written
  hold no control characters; every id that can be written is reachable by
  every REST route; records stored before the rule stay readable and deletable;
- integers beyond 64 bits in metadata and edge properties are refused over
  REST and gRPC as the engine refuses them (not stored as floats);
- edge weights are bounded and no score is ever infinite or NaN;
- a record's out-of-range ``expires_at`` is ``invalid_ttl``; metadata and edge
  properties have a size cap and a key-length cap;
- batches are validated whole before anything is written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest

import engramdb
from engramdb import validation
from engramdb.client.calls import _seg as path_segment
from engramdb.errors import EngramError
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from engramdb.server.grpc.convert import pack_vector
from engramdb.service.api_keys import KeyStore
from integration.conftest import ADMIN_KEY, ServerProcess, server_env, unique_name

SC = grpc.StatusCode
MD = (("authorization", f"Bearer {ADMIN_KEY}"),)
JSON = {"Content-Type": "application/json"}
ServerFactory = Callable[..., ServerProcess]
CONTROL_CHARS = ["\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\x9f"]
BIG_INTS = [2**64, -(2**63) - 1, 10**30]


# -------------------------------------------------------------------- helpers
def _strict_json(text: str) -> Any:
    """JSON as a strict parser reads it: bare NaN or Infinity is an error."""

    def refuse(name: str) -> Any:
        raise ValueError(f"bare {name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def rest_error(r: httpx.Response, code: str, status: int = 400) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json()["error"]["code"] == code, r.text


def grpc_error(fn: Callable[[], Any], code: str, status: grpc.StatusCode = SC.INVALID_ARGUMENT) -> None:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    assert err.code() == status, (err.code(), err.details())
    assert json.loads(err.details())["code"] == code, err.details()


def engine_error(fn: Callable[[], Any], code: str) -> None:
    with pytest.raises(EngramError) as info:
        fn()
    assert info.value.code == code, info.value


class Grpc:
    """The generated stub with the admin key on every call."""

    def __init__(self, channel: grpc.Channel):
        self._stub = pb_grpc.EngramDBStub(channel)

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        method = getattr(self._stub, name)
        return lambda request: method(request, metadata=MD, timeout=30)


@pytest.fixture(scope="module")
def rpc(server: ServerProcess) -> Iterator[Grpc]:
    with grpc.insecure_channel(server.grpc_address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield Grpc(ch)


@pytest.fixture
def coll(admin: httpx.Client) -> Iterator[str]:
    """A 2-d cosine collection on the shared server with records a and b and an int-indexed field n."""
    name = unique_name("bounds")
    r = admin.post("/v1/collections", json={"name": name, "dimension": 2, "indexed_fields": {"n": "int"}})
    assert r.status_code == 201, r.text
    recs = [{"id": "a", "vector": [1, 0], "metadata": {"n": 1}}, {"id": "b", "vector": [0, 1]}]
    assert admin.post(f"/v1/collections/{name}/records", json={"records": recs}).status_code == 200
    yield name
    admin.delete(f"/v1/collections/{name}")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Any]:
    d = engramdb.open(tmp_path / "embedded", storage={"sync_writes": False})
    yield d
    d.close()


@pytest.fixture
def ecoll(db: Any) -> Any:
    """The embedded twin of ``coll``."""
    c = db.create_collection("c", 2, "cosine", indexed_fields={"n": "int"})
    c.upsert([{"id": "a", "vector": [1, 0], "metadata": {"n": 1}}, {"id": "b", "vector": [0, 1]}])
    return c


def _snapshot(admin: httpx.Client, coll: str) -> Any:
    """Everything a refused write could have changed: records (with metadata) and edges."""
    recs = admin.post(f"/v1/collections/{coll}/records/scan", json={"limit": 1000, "include": ["metadata"]}).json()
    edges = {
        rid: admin.post(f"/v1/collections/{coll}/edges/list", json={"id": rid, "direction": "both"}).json()
        for rid in ("a", "b")
    }
    return recs["records"], edges


def _rec(rid: str, **kw: Any) -> pb.Record:
    return pb.Record(id=rid, vector=pack_vector([1.0, 0.0]), **kw)


# ------------------------------------------------------------ item 8: keys
BAD_EXPIRY: list[Any] = [1e300, -1.0, 0.0, True, "soon"]


def _key_count(admin: httpx.Client) -> int:
    return len(admin.get("/v1/admin/keys").json()["keys"])


@pytest.mark.parametrize("expires_at", [*BAD_EXPIRY, "past", "beyond_century"])
def test_key_expiry_is_validated_over_rest(admin: httpx.Client, expires_at: Any) -> None:
    now = time.time()
    value = {"past": now - 10, "beyond_century": now + validation.MAX_TTL_SECONDS + 86400}.get(expires_at, expires_at)
    before = _key_count(admin)
    rest_error(admin.post("/v1/admin/keys", json={"role": "reader", "expires_at": value}), "invalid_expiry")
    assert _key_count(admin) == before


@pytest.mark.parametrize("expires_at", [math.nan, math.inf, -math.inf, 1e300, 1.0])
def test_key_expiry_is_validated_over_grpc(rpc: Grpc, admin: httpx.Client, expires_at: float) -> None:
    before = _key_count(admin)
    grpc_error(lambda: rpc.CreateKey(pb.CreateKeyRequest(role="reader", expires_at=expires_at)), "invalid_expiry")
    assert _key_count(admin) == before


@pytest.mark.parametrize("expires_at", [math.nan, math.inf, 1e300, 1.0, True])
def test_key_expiry_is_validated_by_the_keystore(db: Any, expires_at: Any) -> None:
    ks = KeyStore(db.metadata)
    engine_error(lambda: ks.create(tenant="default", role="reader", expires_at=expires_at), "invalid_expiry")
    assert ks.list_keys() == []
    ok = time.time() + validation.MAX_TTL_SECONDS - 60
    assert ks.create(tenant="default", role="reader", expires_at=ok)[1].expires_at == ok


def test_rotation_grace_is_validated_everywhere(admin: httpx.Client, rpc: Grpc, db: Any) -> None:
    key = admin.post("/v1/admin/keys", json={"role": "reader"}).json()
    for grace in (1e300, -1, validation.MAX_TTL_SECONDS + 1, True):
        rest_error(admin.post(f"/v1/admin/keys/{key['id']}/rotate", json={"grace_seconds": grace}), "invalid_expiry")
    for g in (math.nan, math.inf, -1.0, 1e300):
        grpc_error(lambda g=g: rpc.RotateKey(pb.RotateKeyRequest(key_id=key["id"], grace_seconds=g)), "invalid_expiry")
    # Nothing rotated: the key is neither replaced nor given an expiry, and still works.
    info = next(k for k in admin.get("/v1/admin/keys").json()["keys"] if k["id"] == key["id"])
    assert info["replaced_by"] is None and info["expires_at"] is None
    assert httpx.get(
        admin.base_url.join("/v1/collections"), headers={"Authorization": f"Bearer {key['key']}"}
    ).is_success
    ks = KeyStore(db.metadata)
    _, k = ks.create(tenant="default", role="reader")
    for g in (math.nan, math.inf, -1.0):
        engine_error(lambda g=g: ks.rotate(k.id, grace_seconds=g), "invalid_expiry")
    assert ks.get(k.id) == k
    _, new = ks.rotate(k.id, grace_seconds=0)  # zero grace: the old key stops at once
    old = ks.get(k.id)
    assert old is not None and old.expired(time.time()) and old.replaced_by == new.id


def test_nan_expiry_stored_before_the_fix_counts_as_expired(db: Any) -> None:
    ks = KeyStore(db.metadata)
    for bad in (math.nan, math.inf):
        _, key = ks.create(tenant="default", role="admin")
        key.expires_at = bad
        ks._put(key)  # what an unvalidated create stored
        stored = ks.get(key.id)
        assert stored is not None and stored.expired(time.time())
        assert stored.info()["expires_at"] == 0.0
        engine_error(lambda k=key: ks.rotate(k.id, grace_seconds=0), "key_not_rotatable")


# -------------------------------------------- items 8, 10, 12: data from before
@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A data directory holding what older versions accepted, and a server started on it.

    A key with a NaN expiry; records whose ids hold a newline and DEL; edges
    weighing 1e308; vectors whose dot products overflow float32.
    """
    from integration.conftest import start_server

    root = tmp_path_factory.mktemp("legacy")
    data = root / "data"
    out: dict[str, Any] = {"data": data}
    mp = pytest.MonkeyPatch()
    # The checks of older versions: ids and weights unrestricted.
    mp.setattr(validation, "record_id", validation.record_ref)
    mp.setattr(validation, "edge_weight", lambda v, where="weight": 1.0 if v is None else float(v))
    try:
        db = engramdb.open(data)
        try:
            ks = KeyStore(db.metadata)
            secret, key = ks.create(tenant="default", role="admin", name="nan-expiry")
            key.expires_at = math.nan
            ks._put(key)
            out["nan_key"], out["nan_key_id"] = secret, key.id
            c = db.create_collection("legacy", 2, "dot")
            c.upsert(
                [
                    {"id": "line\nbreak", "vector": [1, 0]},
                    {"id": "del\x7fchar", "vector": [0, 1]},
                    {"id": "x", "vector": [3e38, 3e38]},
                    {"id": "y", "vector": [-3e38, 3e38]},
                    {"id": "z", "vector": [1, 1]},
                ]
            )
            c.link(
                [
                    {"src": "x", "relation": "r", "dst": "y", "weight": 1e308},
                    {"src": "y", "relation": "r", "dst": "z", "weight": 1e308},
                    {"src": "line\nbreak", "relation": "r", "dst": "x"},
                ]
            )
        finally:
            db.close()
    finally:
        mp.undo()
    sp = start_server(data)
    out["server"] = sp
    yield out
    sp.stop()


def test_legacy_nan_key_is_expired_and_listed_without_nan(legacy: dict[str, Any]) -> None:
    sp: ServerProcess = legacy["server"]
    r = httpx.get(sp.base_url + "/v1/collections", headers=sp.headers(legacy["nan_key"]))
    rest_error(r, "api_key_expired", 401)
    listed = httpx.get(sp.base_url + "/v1/admin/keys", headers=sp.headers())
    info = next(k for k in _strict_json(listed.text)["keys"] if k["id"] == legacy["nan_key_id"])
    assert info["expires_at"] == 0.0  # not null, which would read as "never expires"
    r = httpx.post(
        sp.base_url + f"/v1/admin/keys/{legacy['nan_key_id']}/rotate", json={"grace_seconds": 0}, headers=sp.headers()
    )
    rest_error(r, "key_not_rotatable", 400)
    with grpc.insecure_channel(sp.grpc_address) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        with pytest.raises(grpc.RpcError) as info_err:
            stub.ListCollections(
                pb.ListCollectionsRequest(), metadata=(("authorization", f"Bearer {legacy['nan_key']}"),), timeout=30
            )
        assert info_err.value.code() == SC.UNAUTHENTICATED  # type: ignore[attr-defined]
        keys = stub.ListKeys(pb.ListKeysRequest(), metadata=(("authorization", f"Bearer {ADMIN_KEY}"),), timeout=30)
        got = next(k for k in keys.keys if k.id == legacy["nan_key_id"])
        assert got.expires_at == 0.0


def test_legacy_control_character_ids_stay_readable_and_deletable(legacy: dict[str, Any]) -> None:
    sp: ServerProcess = legacy["server"]
    base = sp.base_url + "/v1/collections/legacy/records"
    h = sp.headers()
    got = httpx.post(base + "/get", json={"ids": ["line\nbreak", "del\x7fchar"]}, headers=h).json()["records"]
    assert [r["id"] for r in got] == ["line\nbreak", "del\x7fchar"]
    del_id = "del\x7fchar"
    r = httpx.patch(f"{base}/{quote(del_id, safe='')}", json={"metadata": {"k": 1}}, headers=h)
    assert r.status_code == 200, r.text
    with grpc.insecure_channel(sp.grpc_address) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        md = (("authorization", f"Bearer {ADMIN_KEY}"),)
        assert [x.id for x in stub.Get(pb.GetRequest(coll="legacy", ids=["del\x7fchar"]), metadata=md).records] == [
            "del\x7fchar"
        ]
        assert stub.Delete(pb.DeleteRequest(coll="legacy", ids=["del\x7fchar"]), metadata=md).deleted == 1
        # Its edge can still be removed by name; no new one can be made with that id.
        unlink = pb.UnlinkRequest(coll="legacy", edges=[pb.EdgeKey(src="line\nbreak", relation="r", dst="x")])
        assert stub.Unlink(unlink, metadata=md).deleted == 1
    r = httpx.post(base + "/delete", json={"ids": ["line\nbreak"]}, headers=h)
    assert r.json() == {"deleted": 1}
    assert httpx.post(base + "/get", json={"ids": ["line\nbreak"]}, headers=h).json()["records"] == []


def test_legacy_heavy_edges_and_huge_vectors_score_finite(legacy: dict[str, Any]) -> None:
    sp: ServerProcess = legacy["server"]
    h = sp.headers()
    base = sp.base_url + "/v1/collections/legacy"
    scores: list[float] = []
    r = httpx.post(base + "/neighbors", json={"id": "x", "hops": 2, "include": []}, headers=h)
    assert r.status_code == 200, r.text
    scores += [hit["score"] for hit in _strict_json(r.text)["hits"]]
    assert {hit["id"] for hit in r.json()["hits"]} == {"y", "z"}
    for body in (
        {"vector": [3e38, 3e38], "k": 3, "include": []},
        {"vector": [3e38, 3e38], "k": 3, "include": [], "exact": True},
        {"vector": [3e38, 3e38], "k": 1, "include": [], "expand": {"hops": 2, "decay": 1, "use_importance": True}},
    ):
        r = httpx.post(base + "/search", json=body, headers=h)
        assert r.status_code == 200, r.text
        hits = _strict_json(r.text)["hits"]
        assert hits
        scores += [hit["score"] for hit in hits]
        scores += [s for hit in hits for s in hit["signals"].values()]
    assert scores and all(isinstance(s, float) and math.isfinite(s) for s in scores), scores
    with grpc.insecure_channel(sp.grpc_address) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        md = (("authorization", f"Bearer {ADMIN_KEY}"),)
        got = stub.Neighbors(pb.NeighborsRequest(coll="legacy", id="x", hops=2), metadata=md)
        assert got.hits and all(math.isfinite(hit.score) for hit in got.hits)


def test_cli_keys_validate_expiry_and_never_print_nan(legacy: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "cli-data"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engramdb.cli", "keys", *args, "--data-dir", str(data)],
            capture_output=True,
            text=True,
            env=server_env(admin_key=None),
            timeout=120,
        )

    for bad in ("0", "999999999999d"):
        r = cli("create", "--role", "reader", "--expires-in", bad)
        assert r.returncode == 1 and "expires_at" in r.stderr, (r.stdout, r.stderr)
    ok = cli("create", "--role", "reader", "--json", "--expires-in", "1h")
    assert ok.returncode == 0, ok.stderr
    key = _strict_json(ok.stdout)
    r = cli("rotate", key["id"], "--grace", "999999999999d")
    assert r.returncode == 1 and "grace_seconds" in r.stderr
    listed = cli("list", "--json")
    assert [k["id"] for k in _strict_json(listed.stdout)] == [key["id"]]  # nothing else was created
    assert _strict_json(listed.stdout)[0]["replaced_by"] is None
    # The NaN key of the legacy directory (its server stopped first: one process per directory).
    legacy["server"].stop()
    data = legacy["data"]
    out = cli("list", "--json")
    assert out.returncode == 0, out.stderr
    nan_key = next(k for k in _strict_json(out.stdout) if k["id"] == legacy["nan_key_id"])
    assert nan_key["expires_at"] == 0.0
    text = cli("list")
    line = next(x for x in text.stdout.splitlines() if x.startswith(legacy["nan_key_id"]))
    assert " expired " in line


# -------------------------------------------------------- item 10: record ids
@pytest.mark.parametrize("ch", CONTROL_CHARS)
def test_control_characters_are_refused_in_written_ids(
    admin: httpx.Client, rpc: Grpc, coll: str, ecoll: Any, ch: str
) -> None:
    before = _snapshot(admin, coll)
    rid = f"bad{ch}id"
    good = {"id": "c", "vector": [1, 0]}
    rest_error(
        admin.post(f"/v1/collections/{coll}/records", json={"records": [good, {"id": rid, "vector": [1, 0]}]}),
        "invalid_id",
    )
    edge = {"src": "a", "relation": "r", "dst": rid}
    rest_error(
        admin.post(f"/v1/collections/{coll}/edges", json={"edges": [edge], "create_missing": True}), "invalid_id"
    )
    rest_error(
        admin.post(f"/v1/collections/{coll}/edges", json={"edges": [{**edge, "dst": "b", "relation": f"r{ch}"}]}),
        "invalid_relation",
    )
    rest_error(
        admin.post(
            f"/v1/collections/{coll}/records",
            json={"records": [{"id": "c", "vector": [1, 0], "namespace": ["u", f"n{ch}"]}]},
        ),
        "invalid_namespace",
    )
    grpc_error(lambda: rpc.Upsert(pb.UpsertRequest(coll=coll, records=[_rec("c"), _rec(rid)])), "invalid_id")
    grpc_error(
        lambda: rpc.Link(
            pb.LinkRequest(coll=coll, edges=[pb.Edge(src=rid, relation="r", dst="a")], create_missing=True)
        ),
        "invalid_id",
    )
    grpc_error(
        lambda: rpc.Link(pb.LinkRequest(coll=coll, edges=[pb.Edge(src="a", relation=f"r{ch}", dst="b")])),
        "invalid_relation",
    )
    grpc_error(
        lambda: rpc.Upsert(pb.UpsertRequest(coll=coll, records=[_rec("c", namespace=[f"n{ch}"])])), "invalid_namespace"
    )
    assert _snapshot(admin, coll) == before
    engine_error(lambda: ecoll.upsert([good, {"id": rid, "vector": [1, 0]}]), "invalid_id")
    engine_error(lambda: ecoll.link([edge], create_missing=True), "invalid_id")
    engine_error(lambda: ecoll.link([{**edge, "dst": "b", "relation": f"r{ch}"}]), "invalid_relation")
    engine_error(lambda: ecoll.upsert({"id": "c", "vector": [1, 0], "namespace": [f"n{ch}"]}), "invalid_namespace")
    assert ecoll.count() == 2 and ecoll.edges("a", direction="both") == []


def test_lone_surrogates_are_refused_by_the_engine(ecoll: Any) -> None:
    # The wire formats cannot carry them (UTF-8); the embedded API can, and must not fail with a raw UnicodeError.
    engine_error(lambda: ecoll.upsert({"id": "s\ud800", "vector": [1, 0]}), "invalid_id")
    engine_error(lambda: ecoll.upsert({"id": "c", "vector": [1, 0], "namespace": ["\udfff"]}), "invalid_namespace")
    engine_error(lambda: ecoll.upsert({"id": "c", "vector": [1, 0], "metadata": {"k": "\ud800"}}), "invalid_metadata")
    engine_error(lambda: ecoll.upsert({"id": "c", "vector": [1, 0], "metadata": {"\ud800": 1}}), "invalid_metadata")
    engine_error(lambda: ecoll.upsert({"id": "c", "vector": [1, 0], "text": "\ud800"}), "invalid_text")
    engine_error(lambda: ecoll.link({"src": "a", "relation": "\ud800", "dst": "b"}), "invalid_relation")
    assert ecoll.count() == 2


REACHABLE_IDS = [
    "a/b",
    "/lead",
    "trail/",
    "a//b",
    "100%",
    "a%2Fb",
    "%",
    "what?",
    "q?x=1&y=2",
    "#frag",
    "sp ace",
    " ",
    "+plus",
    "semi;colon",
    "back\\slash",
    "ü日本",
    "emoji😀",
    ".",
    "..",
    "a/../b",
    "./x",
    "get",
    "delete",
    "scan",
    "refresh_ttl",
    "\u2028sep",
    "tab-free\u00a0nbsp",
    "x" * 500,
]


def test_every_writable_id_is_reachable_by_every_route(admin: httpx.Client, rpc: Grpc, coll: str) -> None:
    base = f"/v1/collections/{coll}/records"
    recs = [{"id": rid, "vector": [1, 0], "metadata": {"i": i}} for i, rid in enumerate(REACHABLE_IDS)]
    assert admin.post(base, json={"records": recs}).status_code == 200
    for i, rid in enumerate(REACHABLE_IDS):
        # Percent-encoded, with "." and ".." as %2E (else URL normalisation drops them), as the client does.
        url = f"{base}/{path_segment(rid)}"
        r = admin.get(url)
        assert r.status_code == 200 and r.json()["record"]["id"] == rid, (rid, r.status_code, r.text)
        r = admin.patch(url, json={"metadata": {"patched": True}})
        assert r.status_code == 200 and r.json()["record"]["metadata"] == {"i": i, "patched": True}, (rid, r.text)
        got = rpc.Get(pb.GetRequest(coll=coll, ids=[rid])).records
        assert [g.id for g in got] == [rid]
        rpc.Patch(pb.PatchRequest(coll=coll, id=rid, metadata_json='{"grpc": 1}'))
        r = admin.delete(url)
        assert r.status_code == 200 and r.json() == {"deleted": 1}, (rid, r.text)
    # The engramdb client reaches them the same way.
    client = engramdb.connect(str(admin.base_url), ADMIN_KEY)
    try:
        c = client.get_collection(coll)
        c.upsert(recs)
        for rid in REACHABLE_IDS:
            rec = c.get(rid)
            assert rec is not None and rec.id == rid, rid
            assert c.patch(rid, metadata={"c": 1}).id == rid
        assert rpc.Delete(pb.DeleteRequest(coll=coll, ids=REACHABLE_IDS)).deleted == len(REACHABLE_IDS)
    finally:
        client.close()


# ------------------------------------------------- item 11: 64-bit integers
@pytest.mark.parametrize("big", BIG_INTS)
def test_integers_beyond_64_bits_are_refused_on_every_path(
    admin: httpx.Client, rpc: Grpc, coll: str, ecoll: Any, big: int
) -> None:
    before = _snapshot(admin, coll)
    url = f"/v1/collections/{coll}"
    # Raw bodies: the literal must reach the server as written.
    for md in (f'{{"n": {big}}}', f'{{"deep": [1, {{"v": {big}}}]}}'):
        body = f'{{"records": [{{"id": "c", "vector": [1, 0], "metadata": {md}}}]}}'
        rest_error(admin.post(url + "/records", content=body, headers=JSON), "invalid_metadata")
        rest_error(admin.patch(url + "/records/a", content=f'{{"metadata": {md}}}', headers=JSON), "invalid_metadata")
        link = f'{{"edges": [{{"src": "a", "relation": "r", "dst": "b", "properties": {md}}}]}}'
        rest_error(admin.post(url + "/edges", content=link, headers=JSON), "invalid_properties")
        grpc_error(
            lambda md=md: rpc.Upsert(pb.UpsertRequest(coll=coll, records=[_rec("c", metadata_json=md)])),
            "invalid_metadata",
        )
        grpc_error(lambda md=md: rpc.Patch(pb.PatchRequest(coll=coll, id="a", metadata_json=md)), "invalid_metadata")
        edge = pb.Edge(src="a", relation="r", dst="b", properties_json=md)
        grpc_error(lambda e=edge: rpc.Link(pb.LinkRequest(coll=coll, edges=[e])), "invalid_properties")
    assert _snapshot(admin, coll) == before
    engine_error(lambda: ecoll.upsert({"id": "c", "vector": [1, 0], "metadata": {"n": big}}), "invalid_metadata")
    engine_error(lambda: ecoll.patch("a", metadata={"n": big}), "invalid_metadata")
    engine_error(
        lambda: ecoll.link({"src": "a", "relation": "r", "dst": "b", "properties": {"v": big}}), "invalid_properties"
    )
    assert ecoll.get("a").metadata == {"n": 1} and ecoll.count() == 2


def test_large_integers_and_floats_that_fit_round_trip(admin: httpx.Client, rpc: Grpc, coll: str) -> None:
    md = {"max_u64": 2**64 - 1, "min_i64": -(2**63), "n": 2**62, "float": 1e30, "neg": -1.5e19}
    body = json.dumps({"records": [{"id": "c", "vector": [1, 0], "metadata": md}]})
    assert admin.post(f"/v1/collections/{coll}/records", content=body, headers=JSON).status_code == 200
    got = admin.get(f"/v1/collections/{coll}/records/c").json()["record"]["metadata"]
    assert got == md and isinstance(got["float"], float) and isinstance(got["max_u64"], int)
    rpc.Upsert(pb.UpsertRequest(coll=coll, records=[_rec("d", metadata_json=json.dumps(md))]))
    got = admin.get(f"/v1/collections/{coll}/records/d").json()["record"]["metadata"]
    assert got == md


# ------------------------------------------------------ item 12: edge weights
@pytest.mark.parametrize("weight", [1e308, -1e308, validation.MAX_EDGE_WEIGHT * 1.5, -validation.MAX_EDGE_WEIGHT * 2])
def test_edge_weights_are_bounded_on_every_path(
    admin: httpx.Client, rpc: Grpc, coll: str, ecoll: Any, weight: float
) -> None:
    before = _snapshot(admin, coll)
    edges = [{"src": "a", "relation": "ok", "dst": "b"}, {"src": "b", "relation": "r", "dst": "a", "weight": weight}]
    rest_error(admin.post(f"/v1/collections/{coll}/edges", json={"edges": edges}), "invalid_weight")
    grpc_edges = [pb.Edge(src="a", relation="ok", dst="b"), pb.Edge(src="b", relation="r", dst="a", weight=weight)]
    grpc_error(lambda: rpc.Link(pb.LinkRequest(coll=coll, edges=grpc_edges)), "invalid_weight")
    assert _snapshot(admin, coll) == before  # the valid first edge was not written either
    engine_error(lambda: ecoll.link(edges), "invalid_weight")
    assert ecoll.edges("a", direction="both") == []


@pytest.mark.parametrize("weight", [math.nan, math.inf])
def test_non_finite_weights_are_refused_over_grpc(rpc: Grpc, coll: str, weight: float) -> None:
    grpc_error(
        lambda: rpc.Link(pb.LinkRequest(coll=coll, edges=[pb.Edge(src="a", relation="r", dst="b", weight=weight)])),
        "invalid_weight",
    )


def test_bounded_weights_keep_graph_scores_finite(admin: httpx.Client, coll: str, ecoll: Any) -> None:
    w = validation.MAX_EDGE_WEIGHT
    ids = [f"n{i}" for i in range(6)]
    recs = [{"id": rid, "vector": [1, 0]} for rid in ids]
    edges = [{"src": ids[i], "relation": "r", "dst": ids[i + 1], "weight": w} for i in range(5)]
    edges.append({"src": "a", "relation": "neg", "dst": "b", "weight": -w})  # negative weights stay allowed
    assert admin.post(f"/v1/collections/{coll}/records", json={"records": recs}).status_code == 200
    assert admin.post(f"/v1/collections/{coll}/edges", json={"edges": edges}).status_code == 200
    r = admin.post(f"/v1/collections/{coll}/neighbors", json={"id": "n0", "hops": 5, "include": []})
    scores = [h["score"] for h in _strict_json(r.text)["hits"]]
    assert len(scores) == 5 and scores[-1] == pytest.approx(w**5)
    ecoll.upsert(recs)
    ecoll.link(edges)
    assert [h.score for h in ecoll.neighbors("n0", hops=5, include=[])] == pytest.approx(scores)


def test_scores_never_overflow_in_the_engine(db: Any) -> None:
    c = db.create_collection("dot", 2, "dot", indexed_fields={"n": "int"})
    c.upsert(
        [
            {"id": "x", "vector": [3e38, 3e38], "importance": 1e308, "metadata": {"n": 1}},
            {"id": "y", "vector": [-3e38, 3e38], "metadata": {"n": 1}},
            {"id": "z", "vector": [1, 1], "text": "z", "importance": 1e308, "metadata": {"n": 1}},
        ]
    )
    c.link(
        [
            {"src": "x", "relation": "r", "dst": "y", "weight": 1e6},
            {"src": "y", "relation": "r", "dst": "z", "weight": 1e6},
        ]
    )
    q = [3e38, 3e38]
    runs = [
        c.search(q, k=3, include=[]),
        c.search(q, k=3, include=[], exact=True),
        c.search(q, k=3, include=[], filter={"n": 1}),
        c.search(q, k=1, include=[], expand={"hops": 2, "decay": 1}),
        c.search(q, k=1, include=[], expand={"hops": 2, "decay": 1, "use_importance": True}),
        c.search(q, k=3, include=[], text="z", mode="hybrid"),
        c.neighbors("x", hops=2, include=[]),
    ]
    for hits in runs:
        assert hits
        for h in hits:
            assert math.isfinite(h.score), hits
            assert all(math.isfinite(s) for s in h.signals.values()), hits


# --------------------------------------------- item 15: record expiry, caps
@pytest.mark.parametrize(
    "field,value", [("expires_at", 1e12), ("expires_at", -1.0), ("ttl_seconds", 1e10), ("ttl_seconds", 0.0)]
)
def test_out_of_range_record_expiry_is_invalid_ttl(
    admin: httpx.Client, rpc: Grpc, coll: str, ecoll: Any, field: str, value: float
) -> None:
    before = _snapshot(admin, coll)
    rest_error(
        admin.post(f"/v1/collections/{coll}/records", json={"records": [{"id": "c", "vector": [1, 0], field: value}]}),
        "invalid_ttl",
    )
    grpc_error(lambda: rpc.Upsert(pb.UpsertRequest(coll=coll, records=[_rec("c", **{field: value})])), "invalid_ttl")
    if field == "ttl_seconds":
        rest_error(admin.patch(f"/v1/collections/{coll}/records/a", json={field: value}), "invalid_ttl")
        grpc_error(lambda: rpc.Patch(pb.PatchRequest(coll=coll, id="a", ttl_seconds=value)), "invalid_ttl")
    assert _snapshot(admin, coll) == before
    engine_error(lambda: ecoll.upsert({"id": "c", "vector": [1, 0], field: value}), "invalid_ttl")
    assert ecoll.count() == 2


@pytest.mark.parametrize("what", ["big_string", "long_key", "many_keys"])
def test_metadata_and_properties_have_a_size_cap(
    admin: httpx.Client, rpc: Grpc, coll: str, ecoll: Any, what: str
) -> None:
    md = {
        "big_string": {"s": "x" * validation.MAX_METADATA_BYTES},
        "long_key": {"k" * (validation.MAX_METADATA_KEY_BYTES + 1): 1},
        "many_keys": {f"k{i}": "v" * 100 for i in range(validation.MAX_METADATA_BYTES // 100)},
    }[what]
    before = _snapshot(admin, coll)
    url = f"/v1/collections/{coll}"
    rest_error(
        admin.post(url + "/records", json={"records": [{"id": "c", "vector": [1, 0], "metadata": md}]}),
        "invalid_metadata",
    )
    rest_error(admin.patch(url + "/records/a", json={"metadata": md}), "invalid_metadata")
    rest_error(
        admin.post(url + "/edges", json={"edges": [{"src": "a", "relation": "r", "dst": "b", "properties": md}]}),
        "invalid_properties",
    )
    text = json.dumps(md)
    grpc_error(
        lambda: rpc.Upsert(pb.UpsertRequest(coll=coll, records=[_rec("c", metadata_json=text)])), "invalid_metadata"
    )
    grpc_error(lambda: rpc.Patch(pb.PatchRequest(coll=coll, id="a", metadata_json=text)), "invalid_metadata")
    grpc_error(
        lambda: rpc.Link(
            pb.LinkRequest(coll=coll, edges=[pb.Edge(src="a", relation="r", dst="b", properties_json=text)])
        ),
        "invalid_properties",
    )
    assert _snapshot(admin, coll) == before
    engine_error(lambda: ecoll.upsert({"id": "c", "vector": [1, 0], "metadata": md}), "invalid_metadata")
    engine_error(lambda: ecoll.patch("a", metadata=md), "invalid_metadata")
    engine_error(lambda: ecoll.link({"src": "a", "relation": "r", "dst": "b", "properties": md}), "invalid_properties")
    assert ecoll.count() == 2 and ecoll.get("a").metadata == {"n": 1}


def test_patches_cannot_grow_metadata_past_the_cap(admin: httpx.Client, rpc: Grpc, coll: str, ecoll: Any) -> None:
    half = "x" * (validation.MAX_METADATA_BYTES // 2 + 10)
    url = f"/v1/collections/{coll}/records/a"
    assert admin.patch(url, json={"metadata": {"one": half}}).status_code == 200
    rest_error(admin.patch(url, json={"metadata": {"two": half}}), "invalid_metadata")
    grpc_error(
        lambda: rpc.Patch(pb.PatchRequest(coll=coll, id="a", metadata_json=json.dumps({"two": half}))),
        "invalid_metadata",
    )
    assert set(admin.get(url).json()["record"]["metadata"]) == {"n", "one"}
    assert admin.patch(url, json={"metadata": {"one": None, "two": half}}).status_code == 200  # replacing fits
    ecoll.patch("a", metadata={"one": half})
    engine_error(lambda: ecoll.patch("a", metadata={"two": half}), "invalid_metadata")
    assert set(ecoll.get("a").metadata) == {"n", "one"}


def test_metadata_just_under_the_cap_is_accepted(admin: httpx.Client, coll: str) -> None:
    md = {"s": "x" * (validation.MAX_METADATA_BYTES - 100)}
    r = admin.post(f"/v1/collections/{coll}/records", json={"records": [{"id": "c", "vector": [1, 0], "metadata": md}]})
    assert r.status_code == 200, r.text


# ------------------------------------------- batches are validated as a whole
def test_batch_endpoints_write_nothing_when_one_item_is_bad(admin: httpx.Client, rpc: Grpc, coll: str) -> None:
    url = f"/v1/collections/{coll}"
    before = _snapshot(admin, coll)
    rest_error(admin.post(url + "/records/delete", json={"ids": ["a", 7]}), "invalid_id")
    rest_error(
        admin.post(url + "/records/delete", json={"ids": ["a"], "filter": {"n": {"$bogus": 1}}}), "invalid_filter"
    )
    unlink = {"edges": [{"src": "a", "relation": "r", "dst": "b"}, {"src": "a", "relation": "", "dst": "b"}]}
    assert admin.post(url + "/edges", json={"edges": [unlink["edges"][0]]}).status_code == 200
    before = _snapshot(admin, coll)
    rest_error(admin.post(url + "/edges/delete", json=unlink), "invalid_relation")
    grpc_error(
        lambda: rpc.Delete(pb.DeleteRequest(coll=coll, ids=["a"], filter_json='{"n": {"$bogus": 1}}')), "invalid_filter"
    )
    grpc_error(
        lambda: rpc.Unlink(
            pb.UnlinkRequest(
                coll=coll, edges=[pb.EdgeKey(src="a", relation="r", dst="b"), pb.EdgeKey(src="a", relation="", dst="b")]
            )
        ),
        "invalid_relation",
    )
    assert _snapshot(admin, coll) == before


def test_langchain_store_validates_whole_writes_before_the_first_chunk(db: Any) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from engramdb.integrations.langchain import EngramVectorStore

    store = EngramVectorStore(DeterministicFakeEmbedding(size=4), collection="lc", db=db)
    store.add_texts(["keep"], ids=["keep"])
    n = 10_001  # more than one engine call
    texts = [f"t{i}" for i in range(n)]
    ids = [f"id{i}" for i in range(n - 1)] + ["bad\nid"]
    engine_error(lambda: store.add_texts(texts, ids=ids), "invalid_id")
    coll = db.get_collection("lc")
    assert coll.count() == 1  # the first 10,000 were not written
    engine_error(lambda: store.delete(["keep"], filter={"n": {"$bogus": 1}}), "invalid_filter")
    engine_error(lambda: store.delete(["keep"] + [f"x{i}" for i in range(n)] + [7]), "invalid_id")  # type: ignore[list-item]
    assert coll.count() == 1 and coll.get("keep") is not None
