"""Item 1 of issue 14: a writer must not make the server send requests, or its secrets, where the writer likes.

Before the fix ``create_collection`` took an ``embedder`` with ``base_url``,
``api_key_env`` and ``api_key_file`` from any writer, and the first text upsert
POSTed to that URL with ``Authorization: Bearer <that variable or file>``, e.g.
``ENGRAMDB_ADMIN_KEY``. Now API callers name an embedder *profile* that the
operator configured (``ENGRAMDB_EMBEDDERS__<NAME>__...``) and nothing else.

The module's server has the bootstrap admin key in ``ENGRAMDB_ADMIN_KEY`` and a
profile ``oai`` pointing at a fake OpenAI-compatible server; a second fake
plays the attacker's listener and must never receive anything. Every attack
runs as a writer key scoped to a few collections, over REST and gRPC.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

import engramdb
from engramdb.errors import EngramError
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from fake_openai import FakeOpenAI, Reply
from integration.conftest import ADMIN_KEY, ServerProcess, start_server

DIM = 8
EMBED_KEY_ENV = "EDB_TEST_EMBED_KEY"
EMBED_KEY = "sk-embed-" + "e" * 24
SCOPE = [f"c{i}" for i in range(40)]
CANARY = "CANARY-7f3a9c-upstream-body"


def profile_env(name: str, url: str, **extra: str | None) -> dict[str, str]:
    """The environment variables that define embedder profile ``name`` at ``url`` (``None`` leaves a setting out)."""
    settings = {"provider": "openai", "model": "fake-embed", "base_url": url + "/v1", "dimension": str(DIM), **extra}
    return {f"ENGRAMDB_EMBEDDERS__{name.upper()}__{k.upper()}": v for k, v in settings.items() if v is not None}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    """The operator's embedding endpoint."""
    with FakeOpenAI(dim=DIM) as f:
        yield f


@pytest.fixture(scope="module")
def trap() -> Iterator[FakeOpenAI]:
    """The attacker's listener: records every request (with its Authorization header) and answers like OpenAI."""
    with FakeOpenAI(dim=DIM) as f:
        yield f


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> Iterator[None]:
    for name in ("fake", "trap"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()
    yield
    if "trap" in request.fixturenames:
        assert request.getfixturevalue("trap").requests == [], "the attacker's listener was contacted"


@pytest.fixture(scope="module")
def srv(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        **profile_env("oai", fake.url, api_key_env=EMBED_KEY_ENV, max_retries="0"),
        EMBED_KEY_ENV: EMBED_KEY,
        "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_PER_SECOND": "100000",
        "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_BURST": "100000",
        "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_PER_SECOND": "100000",
        "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_BURST": "100000",
    }
    sp = start_server(tmp_path_factory.mktemp("ssrf") / "data", env=env)
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def writer_key(srv: ServerProcess) -> str:
    """A writer key of tenant default, scoped to the collections in SCOPE."""
    with srv.client() as http:
        r = http.post("/v1/admin/keys", json={"role": "writer", "collections": SCOPE})
        assert r.status_code in (200, 201), r.text
        return str(r.json()["key"])


_names = iter(SCOPE)


@pytest.fixture
def name() -> str:
    return next(_names)


@pytest.fixture
def writer(srv: ServerProcess, writer_key: str) -> Iterator[httpx.Client]:
    with srv.client(writer_key) as c:
        yield c


@pytest.fixture(scope="module")
def channel(srv: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(srv.grpc_address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


@pytest.fixture
def rpc(channel: grpc.Channel, writer_key: str) -> Callable[[str, Any], Any]:
    stub = pb_grpc.EngramDBStub(channel)

    def call(method: str, request: Any) -> Any:
        return getattr(stub, method)(request, metadata=(("authorization", f"Bearer {writer_key}"),), timeout=30)

    return call


def rest_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    return err


def grpc_error(fn: Callable[[], Any], status: grpc.StatusCode, code: str) -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    assert err.code() == status, (err.code(), err.details())
    body: dict[str, Any] = json.loads(err.details())
    assert body["code"] == code, body
    return body


def assert_no_secrets(text: str, *also: str) -> None:
    for secret in (ADMIN_KEY, EMBED_KEY, EMBED_KEY_ENV, "ENGRAMDB_ADMIN_KEY", "/etc/passwd", *also):
        assert secret not in text, f"{secret!r} leaked: {text}"


def wait_for(fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := fn()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


# --------------------------------------------------------------- the attacks
ATTACKS = {
    "base_url": {"provider": "openai", "model": "m", "base_url": "{trap}/v1"},
    "admin-key-env": {"provider": "openai", "model": "m", "base_url": "{trap}/v1", "api_key_env": "ENGRAMDB_ADMIN_KEY"},
    "key-env-only": {"api_key_env": "ENGRAMDB_ADMIN_KEY"},
    "etc-passwd": {"provider": "openai", "model": "m", "base_url": "{trap}/v1", "api_key_file": "/etc/passwd"},
    "missing-file": {"provider": "openai", "model": "m", "base_url": "{trap}/v1", "api_key_file": "/nonexistent/k"},
    "local-model-path": {"provider": "local", "model": "{tmp}"},
    "local-missing-path": {"provider": "local", "model": "/nonexistent/model"},
    "local-builtin-inline": {"provider": "local"},
    "profile-plus-url": {"profile": "oai", "base_url": "{trap}/v1"},
    "profile-plus-key-env": {"profile": "oai", "api_key_env": "ENGRAMDB_ADMIN_KEY"},
    "not-an-object": "oai",
}


def attack(kind: str, trap_url: str, tmp: Path) -> Any:
    raw = ATTACKS[kind]
    if isinstance(raw, str):
        return raw
    return {k: v.format(trap=trap_url, tmp=tmp) for k, v in raw.items()}


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_rest_refuses_caller_chosen_embedders(
    kind: str, writer: httpx.Client, trap: FakeOpenAI, name: str, tmp_path: Path
) -> None:
    r = writer.post(
        "/v1/collections", json={"name": name, "dimension": DIM, "embedder": attack(kind, trap.url, tmp_path)}
    )
    err = rest_error(r, 400, "embedder_not_allowed")
    assert '"profile"' in err["message"]  # says what to send instead
    assert_no_secrets(r.text, trap.url, str(tmp_path))
    # Nothing was created, and text cannot reach the listener by any route.
    rest_error(writer.get(f"/v1/collections/{name}"), 404, "collection_not_found")
    r = writer.post(f"/v1/collections/{name}/records", json={"records": [{"id": "a", "text": "steal"}]})
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_grpc_refuses_caller_chosen_embedders(
    kind: str, rpc: Callable[[str, Any], Any], writer: httpx.Client, trap: FakeOpenAI, name: str, tmp_path: Path
) -> None:
    request = pb.CreateCollectionRequest(
        name=name, dimension=DIM, embedder_json=json.dumps(attack(kind, trap.url, tmp_path))
    )
    body = grpc_error(
        lambda: rpc("CreateCollection", request), grpc.StatusCode.INVALID_ARGUMENT, "embedder_not_allowed"
    )
    assert_no_secrets(json.dumps(body), trap.url, str(tmp_path))
    rest_error(writer.get(f"/v1/collections/{name}"), 404, "collection_not_found")


def test_key_file_errors_do_not_reveal_which_files_exist(writer: httpx.Client, trap: FakeOpenAI, name: str) -> None:
    answers = []
    for path in ("/etc/passwd", "/nonexistent/k", "/etc", "/root/.ssh/id_rsa"):
        emb = {"provider": "openai", "model": "m", "base_url": trap.url + "/v1", "api_key_file": path}
        r = writer.post("/v1/collections", json={"name": name, "dimension": DIM, "embedder": emb})
        answers.append((r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]))
    assert len(set(answers)) == 1, answers
    for path in ("/tmp", "/nonexistent/model"):
        r = writer.post("/v1/collections", json={"name": name, "embedder": {"provider": "local", "model": path}})
        answers.append((r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]))
    assert len(set(answers)) == 1, answers


def test_unknown_profile(writer: httpx.Client, rpc: Callable[[str, Any], Any], fake: FakeOpenAI, name: str) -> None:
    r = writer.post("/v1/collections", json={"name": name, "dimension": DIM, "embedder": {"profile": "nope"}})
    err = rest_error(r, 400, "unknown_embedder_profile")
    assert "offers: local, oai" in err["message"] and "'nope'" in err["message"]
    assert_no_secrets(r.text, fake.url)
    request = pb.CreateCollectionRequest(name=name, dimension=DIM, embedder_json=json.dumps({"profile": "nope"}))
    body = grpc_error(
        lambda: rpc("CreateCollection", request), grpc.StatusCode.INVALID_ARGUMENT, "unknown_embedder_profile"
    )
    assert_no_secrets(json.dumps(body), fake.url)
    rest_error(writer.get(f"/v1/collections/{name}"), 404, "collection_not_found")
    assert fake.requests == []


# ---------------------------------------------------------------- happy path
def _shows_profile_only(config: dict[str, Any]) -> None:
    assert config["embedder"] == {"profile": "oai"}, config
    assert config["dimension"] == DIM


def test_profile_over_rest(writer: httpx.Client, fake: FakeOpenAI, name: str) -> None:
    r = writer.post(
        "/v1/collections", json={"name": name, "embedder": {"profile": "oai"}}
    )  # dimension from the profile
    assert r.status_code == 201, r.text
    _shows_profile_only(r.json()["collection"])
    r = writer.post(f"/v1/collections/{name}/records", json={"records": [{"id": "a", "text": "hello world"}]})
    assert r.status_code == 200, r.text
    sent = [q for q in fake.requests if q.path.endswith("/embeddings")]
    assert len(sent) == 1 and sent[0].body["input"] == ["hello world"]
    assert sent[0].headers["authorization"] == f"Bearer {EMBED_KEY}"  # the operator's key, to the operator's endpoint
    got = writer.get(f"/v1/collections/{name}")
    _shows_profile_only(got.json()["collection"])
    listed = [c for c in writer.get("/v1/collections").json()["collections"] if c["name"] == name]
    _shows_profile_only(listed[0])
    for text in (r.text, got.text):
        assert_no_secrets(text, fake.url, "fake-embed")
    hits = writer.post(f"/v1/collections/{name}/search", json={"text": "hello world", "k": 1}).json()["hits"]
    assert [h["id"] for h in hits] == ["a"]


def test_profile_over_grpc(rpc: Callable[[str, Any], Any], fake: FakeOpenAI, name: str) -> None:
    created = rpc("CreateCollection", pb.CreateCollectionRequest(name=name, embedder_json='{"profile": "oai"}'))
    assert json.loads(created.collection.embedder_json) == {"profile": "oai"}
    rpc("Upsert", pb.UpsertRequest(coll=name, records=[pb.Record(id="a", text="hello grpc")]))
    assert [q.body["input"] for q in fake.requests] == [["hello grpc"]]
    got = rpc("GetCollection", pb.GetCollectionRequest(coll=name))
    assert json.loads(got.collection.embedder_json) == {"profile": "oai"} and got.count == 1
    listed = rpc("ListCollections", pb.ListCollectionsRequest())
    assert all(fake.url not in c.embedder_json for c in listed.collections)


def test_clients_choose_profiles(srv: ServerProcess, writer_key: str, fake: FakeOpenAI, name: str) -> None:
    with engramdb.connect(srv.base_url, writer_key) as db:
        coll = db.create_collection(name, embedder={"profile": "oai"})
        assert coll.config.embedder is not None and coll.config.embedder.profile == "oai"
        coll.upsert([{"id": "a", "text": "from the client"}])
        with pytest.raises(EngramError) as ei:
            db.create_collection(next(_names), DIM, embedder={"provider": "openai", "model": "m", "base_url": fake.url})
        assert ei.value.code == "embedder_not_allowed"
    assert len(fake.requests) == 1


# -------------------------------------------------------- upstream failures
UPSTREAM_FAILURES = {
    "500": Reply(status=500, body={"error": {"message": f"{CANARY} internal at 10.0.0.7"}}),
    "400": Reply(status=400, body={"error": {"message": f"{CANARY} bad input"}}),
    "401": Reply(status=401, body={"error": {"message": f"{CANARY} key rejected"}}),
    "not-json": Reply(status=200, body=f"<html>{CANARY}</html>"),
    "bad-vectors": Reply(status=200, body={"data": [{"index": 0, "embedding": [CANARY]}]}),
}


@pytest.fixture
def coll(writer: httpx.Client, name: str) -> str:
    r = writer.post("/v1/collections", json={"name": name, "dimension": DIM, "embedder": {"profile": "oai"}})
    assert r.status_code == 201, r.text
    return name


@pytest.mark.parametrize("failure", list(UPSTREAM_FAILURES))
def test_upstream_errors_are_generic(
    failure: str,
    srv: ServerProcess,
    writer: httpx.Client,
    rpc: Callable[[str, Any], Any],
    fake: FakeOpenAI,
    coll: str,
) -> None:
    reply = UPSTREAM_FAILURES[failure]
    fake.enqueue(reply)
    r = writer.post(f"/v1/collections/{coll}/records", json={"records": [{"id": "a", "text": "t"}]})
    err = rest_error(r, 502, r.json()["error"]["code"])
    assert err["kind"] == "upstream_error", err
    request_id = r.headers["x-request-id"]
    assert "profile 'oai'" in err["message"] and request_id in err["message"], err
    assert_no_secrets(r.text, CANARY, fake.url, "10.0.0.7", "HTTP")
    assert err.get("details") == {"embedder_profile": "oai"}
    # The operator finds the details in the log, under the same request id.
    assert wait_for(lambda: request_id in srv.log_text())
    if failure != "bad-vectors":  # whose message describes the answer rather than quoting it
        assert CANARY in srv.log_text()
    assert EMBED_KEY not in srv.log_text()
    fake.enqueue(reply)
    request = pb.UpsertRequest(coll=coll, records=[pb.Record(id="a", text="t")])
    body = grpc_error(lambda: rpc("Upsert", request), grpc.StatusCode.UNAVAILABLE, err["code"])
    assert_no_secrets(json.dumps(body), CANARY, fake.url)
    fake.enqueue(reply)  # search embeds its query through the same profile
    r = writer.post(f"/v1/collections/{coll}/search", json={"text": "t", "mode": "vector"})
    assert r.status_code == 502, r.text
    assert_no_secrets(r.text, CANARY, fake.url)
    assert writer.get(f"/v1/collections/{coll}").json()["count"] == 0


def test_unreachable_endpoint_is_generic(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, fake: FakeOpenAI
) -> None:
    from integration.conftest import free_port

    down = f"http://127.0.0.1:{free_port()}"
    env = {
        **profile_env("down", down, max_retries="0", timeout_seconds="2"),
        **profile_env("probe", down, max_retries="0", timeout_seconds="2", dimension=None),
    }
    sp = server_factory(env=env)
    with sp.client() as http:
        r = http.post("/v1/collections", json={"name": "d", "dimension": DIM, "embedder": {"profile": "down"}})
        assert r.status_code == 201, r.text
        r = http.post("/v1/collections/d/records", json={"records": [{"id": "a", "text": "t"}]})
        err = rest_error(r, 502, "upstream_error")
        assert "profile 'down'" in err["message"]
        assert_no_secrets(r.text, down, "127.0.0.1", "ConnectError")
        # Without a dimension the profile's is learned by a probe: its failure is just as generic.
        r = http.post("/v1/collections", json={"name": "e", "embedder": {"profile": "probe"}})
        rest_error(r, 502, "upstream_error")
        assert_no_secrets(r.text, down, "127.0.0.1")
        assert http.get("/v1/collections/e").status_code == 404
    assert wait_for(lambda: down in sp.log_text())


# -------------------------------------- collections created before profiles
def store_inline(db: Any, name: str, embedder: dict[str, Any]) -> None:
    """Create collection ``name`` with ``embedder`` stored inline, as a server before profiles stored it
    (without building the embedder, which for a model directory would load the model)."""
    from engramdb.storage import keyspace
    from engramdb.storage.codec import pack, unpack
    from engramdb.types import EmbedderConfig

    coll = db.create_collection(name, DIM)
    key = keyspace.collection_key(coll.tenant_id, name)
    meta = unpack(db.store.get("meta", key))
    meta["config"]["embedder"] = EmbedderConfig(**embedder).model_dump(mode="json")
    db.store.write_meta({key: pack(meta)})


def test_stored_inline_configs_are_not_acted_on(
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    fake: FakeOpenAI,
    trap: FakeOpenAI,
) -> None:
    """Collections created with inline configs (before the fix, or embedded) load, but the server never calls out
    for them unless the operator configured a profile with exactly the same endpoint and key source."""
    data = tmp_path / "data"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    # Written by the embedded engine, which stores the same inline configs the old server stored.
    gone = {"provider": "openai", "model": "fake-embed", "base_url": fake.url + "/v1", "dimension": DIM}
    db = engramdb.open(data, storage={"sync_writes": False}, embedders={"gone": gone})
    try:
        steal = {"provider": "openai", "model": "m", "base_url": trap.url + "/v1", "api_key_env": "ENGRAMDB_ADMIN_KEY"}
        store_inline(db, "steal", steal)
        store_inline(db, "path", {"provider": "local", "model": str(model_dir)})
        same = {**gone, "api_key_env": EMBED_KEY_ENV}
        store_inline(db, "same", same)  # what the operator's profile "oai" names
        # Like the profile but for one thing: the destination, or the key sent there.
        store_inline(db, "other-url", {**same, "base_url": trap.url + "/v1"})
        store_inline(db, "other-key", {**same, "api_key_env": "ENGRAMDB_ADMIN_KEY"})
        store_inline(db, "key-file", {**gone, "api_key_file": "/etc/passwd"})
        db.create_collection("orphan", embedder={"profile": "gone"})
    finally:
        db.close()
    sp = server_factory(
        data_dir=data, env={**profile_env("oai", fake.url, api_key_env=EMBED_KEY_ENV), EMBED_KEY_ENV: EMBED_KEY}
    )
    with sp.client() as http:
        assert http.get("/ready").status_code == 200
        for name, code in (
            ("steal", "embedder_not_allowed"),
            ("path", "embedder_not_allowed"),
            ("other-url", "embedder_not_allowed"),
            ("other-key", "embedder_not_allowed"),
            ("key-file", "embedder_not_allowed"),
            ("orphan", "embedder_profile_missing"),
        ):
            r = http.post(f"/v1/collections/{name}/records", json={"records": [{"id": "a", "text": "t"}]})
            err = rest_error(r, 409, code)
            assert_no_secrets(r.text, trap.url, str(model_dir), fake.url)
            got = http.get(f"/v1/collections/{name}")
            assert_no_secrets(got.text, trap.url, str(model_dir), fake.url)
            # Records that carry vectors still work.
            r = http.post(f"/v1/collections/{name}/records", json={"records": [{"id": "v", "vector": [1.0] * DIM}]})
            assert r.status_code == 200, r.text
        assert "'gone'" in err["message"] and "ENGRAMDB_EMBEDDERS__GONE__" in err["message"]
        assert http.get("/v1/collections/steal").json()["collection"]["embedder"] == {"provider": "openai"}
        assert http.get("/v1/collections/orphan").json()["collection"]["embedder"] == {"profile": "gone"}
        # The operator's profile names exactly this endpoint and key source: it is used.
        r = http.post("/v1/collections/same/records", json={"records": [{"id": "a", "text": "known endpoint"}]})
        assert r.status_code == 200, r.text
    assert [q.body["input"] for q in fake.requests] == [["known endpoint"]]
    assert fake.requests[0].headers["authorization"] == f"Bearer {EMBED_KEY}"
    assert "steal" in sp.log_text()  # the operator is told which collections need a profile


# ------------------------------------------------ each layer on its own (no server)
@pytest.mark.parametrize("kind", list(ATTACKS))
def test_request_model_takes_only_a_profile(kind: str, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from engramdb.service import models
    from engramdb.service.executor import validation_error

    body = {"name": "c", "dimension": DIM, "embedder": attack(kind, "http://127.0.0.1:9", tmp_path)}
    with pytest.raises(ValidationError) as ei:
        models.CreateCollectionBody.model_validate(body)
    assert validation_error(ei.value, "create_collection").code == "embedder_not_allowed"
    ok = models.CreateCollectionBody.model_validate({"name": "c", "embedder": {"profile": "oai"}})
    assert ok.embedder is not None and ok.model_dump(exclude_unset=True)["embedder"] == {"profile": "oai"}
    for bad in ("OAI", "a__b", "-x", "", "x" * 65):
        with pytest.raises(ValidationError) as ei:
            models.CreateCollectionBody.model_validate({"name": "c", "embedder": {"profile": bad}})
        assert validation_error(ei.value, "create_collection").code == "invalid_config"


def test_server_database_refuses_inline_configs(tmp_path: Path, trap: FakeOpenAI) -> None:
    """The engine of a server (refuse_inline_embedders) acts on profiles only, even if a request got past the API."""
    inline = {"provider": "openai", "model": "m", "base_url": trap.url + "/v1", "dimension": DIM}
    db = engramdb.open(tmp_path / "db", storage={"sync_writes": False})
    try:
        early = db.create_collection("early", DIM, embedder=inline)  # embedded use: trusted
        db.refuse_inline_embedders()
        for emb in (inline, {"provider": "local"}, {"provider": "openai", "model": "m", "api_key_env": "HOME"}):
            with pytest.raises(EngramError) as ei:
                db.create_collection("late", DIM, embedder=emb)
            assert ei.value.code == "embedder_not_allowed"
        assert [c.name for c in db.list_collections()] == ["early"]
        # A collection opened before the switch loses its inline embedder too.
        with pytest.raises(EngramError) as ei:
            early.upsert([{"id": "a", "text": "t"}])
        assert ei.value.code == "embedder_not_allowed"
        assert trap.url not in ei.value.message
        db.create_collection("none", DIM, embedder={"provider": "none"})  # no embedder at all is harmless
    finally:
        db.close()


def test_embedded_users_keep_inline_configs_and_get_profiles(tmp_path: Path, fake: FakeOpenAI) -> None:
    inline = {"provider": "openai", "model": "fake-embed", "base_url": fake.url + "/v1", "dimension": DIM}
    with engramdb.open(tmp_path / "db", storage={"sync_writes": False}, embedders={"oai": inline}) as db:
        a = db.create_collection("inline", DIM, embedder=inline)
        b = db.create_collection("profile", embedder={"profile": "oai"})
        a.upsert([{"id": "a", "text": "x"}])
        b.upsert([{"id": "a", "text": "x"}])
        assert b.config.embedder is not None and b.config.embedder.profile == "oai" and b.dimension == DIM
        fake.enqueue(Reply(status=400, body={"error": {"message": CANARY}}))
        with pytest.raises(EngramError) as ei:
            b.upsert([{"id": "b", "text": "y"}])
        # The operator sees everything, the profile named.
        assert CANARY in ei.value.message and "embedder profile 'oai'" in ei.value.message
    assert len(fake.requests) == 3


def test_profile_settings_are_validated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from engramdb import config

    monkeypatch.setenv("ENGRAMDB_EMBEDDERS__OPENAI_SMALL__PROVIDER", "openai")
    monkeypatch.setenv("ENGRAMDB_EMBEDDERS__OPENAI_SMALL__MODEL", "text-embedding-3-small")
    monkeypatch.setenv("ENGRAMDB_EMBEDDERS__OPENAI_SMALL__API_KEY_ENV", "EDB_TEST_UNSET_KEY")
    monkeypatch.delenv("EDB_TEST_UNSET_KEY", raising=False)
    s = config.load(None, data_dir=str(tmp_path))
    prof = s.embedders["openai_small"]
    assert (prof.provider, prof.model, prof.api_key_env) == ("openai", "text-embedding-3-small", "EDB_TEST_UNSET_KEY")
    assert set(config.embedder_profiles(s)) == {"local", "openai_small"}
    problems = config.check_embedders(s)
    assert len(problems) == 1 and problems[0].startswith("embedders.openai_small:"), problems
    assert "EDB_TEST_UNSET_KEY" in problems[0]
    assert any(p.startswith("embedders.openai_small:") for p in config.check(s))
    bad: list[dict[str, Any]] = [
        {"Big": {"provider": "local"}},
        {"a__b": {"provider": "local"}},
        {"x": {"provider": "openai"}},  # no model
        {"x": {"provider": "local", "base_url": "http://h"}},
        {"x": {"provider": "local", "api_key_file": "/etc/passwd"}},
        {"x": {"provider": "openai", "model": "m", "api_key_env": "A", "api_key_file": "/k"}},
        {"x": {"provider": "openai", "model": "m", "base_url": "file:///etc/passwd"}},
        {"x": {"provider": "ollama", "model": "m"}},
        {"x": {"provider": "openai", "model": "m", "surprise": 1}},
    ]
    monkeypatch.delenv("ENGRAMDB_EMBEDDERS__OPENAI_SMALL__PROVIDER")
    monkeypatch.delenv("ENGRAMDB_EMBEDDERS__OPENAI_SMALL__MODEL")
    monkeypatch.delenv("ENGRAMDB_EMBEDDERS__OPENAI_SMALL__API_KEY_ENV")
    for embedders in bad:
        with pytest.raises(EngramError) as ei:
            config.load(None, data_dir=str(tmp_path), embedders=embedders)
        assert ei.value.code == "invalid_config" and "embedders" in ei.value.message, embedders
    # The built-in "local" can be withdrawn.
    s = config.load(None, data_dir=str(tmp_path), embedders={"local": {"provider": "local", "enabled": False}})
    with engramdb.Database(tmp_path / "db", s) as db, pytest.raises(EngramError) as ei:
        db.create_collection("c", embedder={"profile": "local"})
    assert ei.value.code == "unknown_embedder_profile" and "offers none" in ei.value.message


def test_profile_reference_takes_nothing_else() -> None:
    from pydantic import ValidationError

    from engramdb.types import EmbedderConfig

    assert EmbedderConfig(profile="oai").profile == "oai"
    for extra in ({"base_url": "http://x"}, {"api_key_env": "HOME"}, {"provider": "openai"}, {"model": "/tmp"}):
        with pytest.raises(ValidationError):
            EmbedderConfig.model_validate({"profile": "oai", **extra})
