"""The ``extract`` operation over REST, gRPC and both clients, against a real server.

A module-scoped ``engramdb serve`` process has extraction configured (by the
operator's settings, ``ENGRAMDB_EXTRACTION__*``) to a local fake
OpenAI-compatible server (tests/fake_openai.py), which also embeds the
collections' text. Its extraction timeout is short and only one extraction may
run at once, so timeouts and the concurrency limit are quick to provoke. The
shared ``server`` of conftest.py has no extraction configured.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest

import engramdb
from conftest import ADMIN_KEY, ServerProcess, server_env, start_server, unique_name
from engramdb.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    RateLimited,
    UpstreamError,
)
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from engramdb.server.grpc.convert import edge_to_dict, extract_to_dict, record_to_dict
from engramdb.types import ExtractResult
from engramdb.validation import MAX_EXTRACT_TEXT_CHARS
from fake_openai import FakeOpenAI, Recorded, Reply, chat_body

SC = grpc.StatusCode
DIM = 8
EXTRACT_TIMEOUT = 2.0
LLM_KEY_ENV = "EDB_TEST_LLM_KEY"
LLM_KEY = "sk-test-llm-" + "k" * 20
ANSWER = {
    "entities": [
        {"name": "Ada Lovelace", "type": "person", "description": "a mathematician"},
        {"name": "Analytical Engine", "type": "machine", "description": "a mechanical computer"},
    ],
    "relations": [{"source": "Ada Lovelace", "relation": "wrote_about", "target": "Analytical Engine", "weight": 2}],
}
TEXT = "Ada Lovelace wrote about the Analytical Engine."
ADA, ENGINE = "entity:ada lovelace", "entity:analytical engine"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(dim=DIM, chat_content=json.dumps(ANSWER)) as f:
        yield f


@pytest.fixture(scope="module")
def xserver(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose operator configured extraction (at the fake), one extraction at a time."""
    sp = start_server(
        tmp_path_factory.mktemp("extract") / "data",
        env={
            "ENGRAMDB_EXTRACTION__MODEL": "fake-chat",
            "ENGRAMDB_EXTRACTION__BASE_URL": fake.url + "/v1",
            "ENGRAMDB_EXTRACTION__API_KEY_ENV": LLM_KEY_ENV,
            LLM_KEY_ENV: LLM_KEY,
            "ENGRAMDB_EXTRACTION__TIMEOUT_SECONDS": str(EXTRACT_TIMEOUT),
            "ENGRAMDB_EXTRACTION__MAX_RETRIES": "0",
            "ENGRAMDB_EXTRACTION__MAX_CONCURRENT": "1",
            # The collections' embedder: a profile the operator configured (callers name only the profile).
            "ENGRAMDB_EMBEDDERS__FAKE__PROVIDER": "openai",
            "ENGRAMDB_EMBEDDERS__FAKE__MODEL": "fake-embed",
            "ENGRAMDB_EMBEDDERS__FAKE__BASE_URL": fake.url + "/v1",
            "ENGRAMDB_EMBEDDERS__FAKE__DIMENSION": str(DIM),
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_PER_SECOND": "100000",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_BURST": "100000",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_PER_SECOND": "100000",
            "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_BURST": "100000",
        },
    )
    yield sp
    sp.stop()


@pytest.fixture(autouse=True)
def _clean_fake(request: pytest.FixtureRequest) -> None:
    # The fake is shared by the module: no test sees another's queued replies or requests.
    if "fake" in request.fixturenames:
        request.getfixturevalue("fake").reset()


@pytest.fixture
def admin(xserver: ServerProcess) -> Iterator[httpx.Client]:
    # Longer than the server's extraction budget, so the server's own errors arrive.
    with httpx.Client(base_url=xserver.base_url, headers=xserver.headers(), timeout=60.0) as c:
        yield c


def make_collection(http: httpx.Client, fake: FakeOpenAI, *, embedder: bool = True) -> str:
    name = unique_name("kg")
    body: dict[str, Any] = {"name": name, "dimension": DIM, "indexed_fields": {"kind": "keyword"}}
    if embedder:
        body["embedder"] = {"profile": "fake"}
    r = http.post("/v1/collections", json=body)
    assert r.status_code == 201, r.text
    return name


@pytest.fixture
def coll(admin: httpx.Client, fake: FakeOpenAI) -> str:
    return make_collection(admin, fake)


@pytest.fixture
def stub(xserver: ServerProcess) -> Iterator[Callable[..., Any]]:
    """Call an RPC of the extraction server with the admin key: ``stub("Extract", request)``."""
    with grpc.insecure_channel(xserver.grpc_address) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        s = pb_grpc.EngramDBStub(ch)

        def call(method: str, request: Any, key: str = ADMIN_KEY) -> Any:
            return getattr(s, method)(request, metadata=(("authorization", f"Bearer {key}"),), timeout=60)

        yield call


def _code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def count(http: httpx.Client, coll: str) -> int:
    return int(http.post(f"/v1/collections/{coll}/count", json={}).json()["count"])


def edges_of(http: httpx.Client, coll: str, rid: str) -> list[dict[str, Any]]:
    r = http.post(f"/v1/collections/{coll}/edges/list", json={"id": rid, "direction": "both"})
    assert r.status_code == 200, r.text
    return list(r.json()["edges"])


def grpc_error(fn: Callable[[], Any], status: grpc.StatusCode, code: str) -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err: Any = info.value
    assert err.code() == status, (err.code(), err.details())
    body = json.loads(err.details())
    assert body["code"] == code, body
    assert dict(err.trailing_metadata() or ())["engramdb-error-code"] == code
    return body


def text_hits(http: httpx.Client, coll: str, query: str) -> list[str]:
    r = http.post(f"/v1/collections/{coll}/search", json={"text": query, "mode": "text", "k": 1})
    return [h["id"] for h in r.json()["hits"]]


def eventually(fn: Callable[[], Any], timeout: float = 5.0) -> Any:
    """``fn()`` once truthy (text search is near-real-time)."""
    deadline = time.monotonic() + timeout
    while not (got := fn()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def check_stored(http: httpx.Client, coll: str, source_id: str | None = None) -> None:
    """The answer's two entities are records, with the relation between them as an edge."""
    assert count(http, coll) == 2
    ada = http.get(f"/v1/collections/{coll}/records/{quote(ADA, safe='')}").json()["record"]
    assert ada["metadata"]["kind"] == "entity" and ada["metadata"]["entity_type"] == "person"
    assert ada["text"] == "a mathematician" and len(ada["vector"]) == DIM
    (edge,) = edges_of(http, coll, ADA)
    assert (edge["src"], edge["relation"], edge["dst"], edge["weight"]) == (ADA, "wrote_about", ENGINE, 2.0)
    if source_id is not None:
        assert ada["metadata"]["sources"] == [source_id]
        assert edge["properties"] == {"source_id": source_id}


# ----------------------------------------------------------------- success
def test_rest_extract_stores_entities_and_edges(admin: httpx.Client, coll: str, fake: FakeOpenAI) -> None:
    r = admin.post(
        f"/v1/collections/{coll}/extract",
        json={"text": TEXT, "instructions": "people and machines only", "namespace": ["docs"], "source_id": "doc-1"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body) == ["edges", "entities"]
    assert body["entities"] == [
        {"id": ADA, "name": "Ada Lovelace", "type": "person", "merged": False},
        {"id": ENGINE, "name": "Analytical Engine", "type": "machine", "merged": False},
    ]
    (edge,) = body["edges"]
    assert (edge["src"], edge["relation"], edge["dst"], edge["weight"]) == (ADA, "wrote_about", ENGINE, 2.0)
    assert edge["version"]
    check_stored(admin, coll, "doc-1")
    ada = admin.get(f"/v1/collections/{coll}/records/{quote(ADA, safe='')}").json()["record"]
    assert ada["namespace"] == ["docs"]
    # Entities are searchable records (vector and text).
    assert eventually(lambda: text_hits(admin, coll, "mathematician")) == [ADA]
    vec = ada["vector"]
    hits = admin.post(f"/v1/collections/{coll}/search", json={"vector": vec, "k": 1}).json()["hits"]
    assert [h["id"] for h in hits] == [ADA]
    # The model was the operator's, called with the operator's key and the caller's instructions.
    (chat,) = fake.chat_requests()
    assert chat.body["model"] == "fake-chat"
    assert chat.headers["authorization"] == f"Bearer {LLM_KEY}"
    assert "people and machines only" in chat.body["messages"][0]["content"]
    assert TEXT in chat.body["messages"][1]["content"]
    # The same text again merges into the same records.
    again = admin.post(f"/v1/collections/{coll}/extract", json={"text": TEXT}).json()
    assert [e["merged"] for e in again["entities"]] == [True, True]
    assert count(admin, coll) == 2


def test_grpc_extract(stub: Callable[..., Any], coll: str, admin: httpx.Client) -> None:
    resp = stub(
        "Extract",
        pb.ExtractRequest(coll=coll, text=TEXT, namespace=["docs"], source_id="doc-g", dedupe_threshold=0.95),
    )
    got = extract_to_dict(resp)
    assert [(e["id"], e["merged"]) for e in got["entities"]] == [(ADA, False), (ENGINE, False)]
    assert [(e["src"], e["relation"], e["dst"]) for e in got["edges"]] == [(ADA, "wrote_about", ENGINE)]
    # Readable afterwards through gRPC itself, and the answer equals what REST returns for the records.
    recs = stub("Get", pb.GetRequest(coll=coll, ids=[ADA, ENGINE]))
    assert [record_to_dict(r)["metadata"]["name"] for r in recs.records] == ["Ada Lovelace", "Analytical Engine"]
    edges = stub("Edges", pb.EdgesRequest(coll=coll, id=ADA))
    assert [edge_to_dict(e)["properties"] for e in edges.edges] == [{"source_id": "doc-g"}]
    check_stored(admin, coll, "doc-g")


def test_sync_client_extract(xserver: ServerProcess, admin: httpx.Client, coll: str) -> None:
    with engramdb.connect(xserver.base_url, ADMIN_KEY) as db:
        c = db.get_collection(coll)
        res = c.extract(TEXT, source_id="doc-s", namespace=("docs",))
        assert isinstance(res, ExtractResult)
        assert [(e["id"], e["type"], e["merged"]) for e in res.entities] == [
            (ADA, "person", False),
            (ENGINE, "machine", False),
        ]
        assert [(e["src"], e["dst"], e["weight"]) for e in res.edges] == [(ADA, ENGINE, 2.0)]
        assert c.get(ADA).metadata["sources"] == ["doc-s"]
        assert [e.relation for e in c.edges(ADA)] == ["wrote_about"]
        # The model is the server's: a caller's extractor is refused before anything is sent.
        with pytest.raises(InvalidArgument, match="server's configured model"):
            c.extract(TEXT, object())  # type: ignore[arg-type]
    check_stored(admin, coll, "doc-s")


def test_async_client_extract(xserver: ServerProcess, admin: httpx.Client, coll: str) -> None:
    async def main() -> tuple[ExtractResult, Any, list[Any]]:
        async with engramdb.AsyncClient(xserver.base_url, ADMIN_KEY) as db:
            c = await db.get_collection(coll)
            res = await c.extract(TEXT, source_id="doc-a", dedupe_threshold=1)
            return res, await c.get(ENGINE), await c.edges(ENGINE, direction="in")

    res, engine_rec, edges = asyncio.run(main())
    assert isinstance(res, ExtractResult)
    assert [e["id"] for e in res.entities] == [ADA, ENGINE]
    assert engine_rec.metadata["entity_type"] == "machine"
    assert [(e.src, e.relation) for e in edges] == [(ADA, "wrote_about")]
    check_stored(admin, coll, "doc-a")


def test_nothing_mentioned_writes_nothing(admin: httpx.Client, coll: str, fake: FakeOpenAI) -> None:
    fake.enqueue(Reply(body=chat_body(json.dumps({"entities": [], "relations": []}))))
    r = admin.post(f"/v1/collections/{coll}/extract", json={"text": "Nothing to see."})
    assert r.status_code == 200 and r.json() == {"entities": [], "edges": []}
    assert count(admin, coll) == 0


# ---------------------------------------------------------------- failures
BAD_RELATION = {
    "entities": [{"name": "A", "type": "x"}],
    "relations": [{"source": "A", "relation": "r", "target": "Nobody"}],
}
MALFORMED = [
    pytest.param(chat_body("this is not JSON"), id="not-json"),
    pytest.param(chat_body(json.dumps(BAD_RELATION)), id="relation-to-unknown-entity"),
    pytest.param(chat_body(json.dumps({"people": ["Ada"]})), id="wrong-schema"),
    pytest.param({"unexpected": "shape"}, id="not-a-chat-answer"),
]


@pytest.mark.parametrize("answer", MALFORMED)
def test_malformed_model_answer_is_rejected_and_nothing_written(
    admin: httpx.Client, coll: str, fake: FakeOpenAI, stub: Callable[..., Any], answer: Any
) -> None:
    fake.enqueue(Reply(body=answer))
    r = admin.post(f"/v1/collections/{coll}/extract", json={"text": TEXT})
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_extraction" and "rejected" in err["message"]
    fake.enqueue(Reply(body=answer))
    grpc_error(lambda: stub("Extract", pb.ExtractRequest(coll=coll, text=TEXT)), SC.UNAVAILABLE, "invalid_extraction")
    assert count(admin, coll) == 0
    assert len(fake.chat_requests()) == 2


def test_malformed_answer_through_the_client(
    xserver: ServerProcess, admin: httpx.Client, coll: str, fake: FakeOpenAI
) -> None:
    fake.enqueue(Reply(body=chat_body("{not json")))
    with engramdb.connect(xserver.base_url, ADMIN_KEY) as db, pytest.raises(UpstreamError) as ei:
        db.get_collection(coll).extract(TEXT)
    assert ei.value.code == "invalid_extraction"
    assert len(fake.chat_requests()) == 1  # not retried
    assert count(admin, coll) == 0


def test_model_timeout_is_deadline_exceeded(
    xserver: ServerProcess, admin: httpx.Client, coll: str, fake: FakeOpenAI, stub: Callable[..., Any]
) -> None:
    slow = Reply(body=chat_body(json.dumps(ANSWER)), delay=EXTRACT_TIMEOUT + 3)
    fake.enqueue(slow)
    start = time.monotonic()
    r = admin.post(f"/v1/collections/{coll}/extract", json={"text": TEXT})
    assert r.status_code == 504, r.text
    assert _code(r) == "deadline_exceeded" and "timeout_seconds" in r.json()["error"]["message"]
    assert fake.url not in r.text
    assert time.monotonic() - start < EXTRACT_TIMEOUT + 2.5
    fake.enqueue(slow)
    grpc_error(lambda: stub("Extract", pb.ExtractRequest(coll=coll, text=TEXT)), SC.DEADLINE_EXCEEDED,
               "deadline_exceeded")  # fmt: skip
    fake.enqueue(slow)
    with engramdb.connect(xserver.base_url, ADMIN_KEY) as db:
        with pytest.raises(DeadlineExceeded) as ei:
            db.get_collection(coll).extract(TEXT)
        assert ei.value.code == "deadline_exceeded"
    assert count(admin, coll) == 0


def test_upstream_http_error_keeps_its_mapping(
    xserver: ServerProcess, admin: httpx.Client, coll: str, fake: FakeOpenAI
) -> None:
    fake.enqueue(Reply(status=500, body={"error": {"message": "model crashed"}}))
    r = admin.post(f"/v1/collections/{coll}/extract", json={"text": TEXT})
    assert r.status_code == 502 and _code(r) == "upstream_error", r.text
    assert "model crashed" in r.json()["error"]["message"]
    assert LLM_KEY not in r.text
    # The operator's endpoint is internal to the deployment: callers are not told where it is,
    # the operator reads it in the log.
    assert fake.url not in r.text and "url" not in r.json()["error"].get("details", {})
    assert "extraction endpoint" in r.json()["error"]["message"]
    assert eventually(lambda: "extraction failed" in xserver.log_text() and fake.url in xserver.log_text())
    assert count(admin, coll) == 0


def test_not_configured(server: ServerProcess) -> None:
    """The shared server has no extraction settings: a clear 409 naming the setting, on every path."""
    name = unique_name("nx")
    with server.client() as http:
        assert http.post("/v1/collections", json={"name": name, "dimension": 3}).status_code == 201
        r = http.post(f"/v1/collections/{name}/extract", json={"text": TEXT})
        assert r.status_code == 409, r.text
        assert _code(r) == "extraction_not_configured"
        assert "extraction.model" in r.json()["error"]["message"]
        # A missing collection is still a 404 (what the caller may see does not depend on the settings).
        r = http.post(f"/v1/collections/{unique_name('none')}/extract", json={"text": TEXT})
        assert r.status_code == 404 and _code(r) == "collection_not_found"
    with grpc.insecure_channel(server.grpc_address) as ch:
        s = pb_grpc.EngramDBStub(ch)
        md = (("authorization", f"Bearer {server.admin_key}"),)
        grpc_error(
            lambda: s.Extract(pb.ExtractRequest(coll=name, text=TEXT), metadata=md, timeout=30),
            SC.FAILED_PRECONDITION,
            "extraction_not_configured",
        )
    with engramdb.connect(server.base_url, server.admin_key) as db:
        with pytest.raises(FailedPrecondition) as ei:
            db.get_collection(name).extract(TEXT)
        assert ei.value.code == "extraction_not_configured"


def test_collection_without_embedder(admin: httpx.Client, fake: FakeOpenAI) -> None:
    plain = make_collection(admin, fake, embedder=False)
    r = admin.post(f"/v1/collections/{plain}/extract", json={"text": TEXT})
    assert r.status_code == 409 and _code(r) == "embedder_required", r.text
    assert fake.chat_requests() == []  # refused before the model is asked


def test_reader_key_is_rejected(
    xserver: ServerProcess, admin: httpx.Client, coll: str, fake: FakeOpenAI, stub: Callable[..., Any]
) -> None:
    r = admin.post("/v1/admin/keys", json={"role": "reader"})
    reader = r.json()["key"]
    with xserver.client(reader) as http:
        r = http.post(f"/v1/collections/{coll}/extract", json={"text": TEXT})
        assert r.status_code == 403 and _code(r) == "permission_denied", r.text
    grpc_error(
        lambda: stub("Extract", pb.ExtractRequest(coll=coll, text=TEXT), key=reader),
        SC.PERMISSION_DENIED,
        "permission_denied",
    )
    with engramdb.connect(xserver.base_url, reader) as db, pytest.raises(PermissionDenied):
        db.get_collection(coll).extract(TEXT)
    # A writer scoped to another collection may not extract into this one.
    scoped = admin.post("/v1/admin/keys", json={"role": "writer", "collections": ["other"]}).json()["key"]
    with xserver.client(scoped) as http:
        r = http.post(f"/v1/collections/{coll}/extract", json={"text": TEXT})
        assert r.status_code == 403 and _code(r) == "collection_not_in_scope", r.text
    assert fake.chat_requests() == []
    assert count(admin, coll) == 0


BAD_INPUT = [
    pytest.param({"text": ""}, "invalid_text", id="empty-text"),
    pytest.param({"text": " \n\t "}, "invalid_text", id="blank-text"),
    pytest.param({"text": "x" * (MAX_EXTRACT_TEXT_CHARS + 1)}, "invalid_text", id="text-too-long"),
    pytest.param({}, "invalid_text", id="no-text"),
    pytest.param({"text": 5}, "invalid_text", id="text-not-a-string"),
    pytest.param({"text": TEXT, "dedupe_threshold": 0}, "invalid_argument", id="threshold-zero"),
    pytest.param({"text": TEXT, "dedupe_threshold": 1.5}, "invalid_argument", id="threshold-above-one"),
    pytest.param({"text": TEXT, "dedupe_threshold": -0.1}, "invalid_argument", id="threshold-negative"),
    pytest.param({"text": TEXT, "dedupe_threshold": "0.9"}, "invalid_argument", id="threshold-a-string"),
    pytest.param({"text": TEXT, "namespace": "docs"}, "invalid_namespace", id="namespace-not-a-list"),
    pytest.param({"text": TEXT, "namespace": ["a\x00b"]}, "invalid_namespace", id="namespace-control-char"),
    pytest.param({"text": TEXT, "source_id": ""}, "invalid_id", id="empty-source-id"),
    pytest.param({"text": TEXT, "instructions": "i" * 4001}, "invalid_argument", id="instructions-too-long"),
    pytest.param({"text": TEXT, "extractor": {"base_url": "http://evil"}}, "invalid_argument", id="extractor-field"),
    pytest.param({"text": TEXT, "model": "gpt-4o"}, "invalid_argument", id="model-field"),
]


@pytest.mark.parametrize(("body", "code"), BAD_INPUT)
def test_bad_input_is_400_and_writes_nothing(
    admin: httpx.Client, coll: str, fake: FakeOpenAI, body: dict[str, Any], code: str
) -> None:
    r = admin.post(f"/v1/collections/{coll}/extract", json=body)
    assert r.status_code == 400, r.text
    assert _code(r) == code, r.text
    assert r.json()["error"]["message"]
    assert fake.chat_requests() == []  # no model call is paid for a bad request
    assert count(admin, coll) == 0


def test_bad_input_over_grpc_and_clients(
    xserver: ServerProcess, admin: httpx.Client, coll: str, fake: FakeOpenAI, stub: Callable[..., Any]
) -> None:
    grpc_error(lambda: stub("Extract", pb.ExtractRequest(coll=coll, text="")), SC.INVALID_ARGUMENT, "invalid_text")
    grpc_error(
        lambda: stub("Extract", pb.ExtractRequest(coll=coll, text=TEXT, dedupe_threshold=2)),
        SC.INVALID_ARGUMENT,
        "invalid_argument",
    )
    with engramdb.connect(xserver.base_url, ADMIN_KEY) as db:
        c = db.get_collection(coll)
        for kw, code in (
            ({"text": "  "}, "invalid_text"),
            ({"text": TEXT, "dedupe_threshold": 0.0}, "invalid_argument"),
            ({"text": TEXT, "dedupe_threshold": float("nan")}, "invalid_argument"),
            ({"text": TEXT, "timeout": -1}, "invalid_timeout"),
        ):
            with pytest.raises(InvalidArgument) as ei:
                c.extract(**kw)
            assert ei.value.code == code, (kw, ei.value)
    assert fake.chat_requests() == []
    assert count(admin, coll) == 0


def test_extractions_beyond_the_limit_answer_429(admin: httpx.Client, coll: str, fake: FakeOpenAI) -> None:
    """max_concurrent=1: a second extraction while one waits for the model is refused with Retry-After."""
    arrived = threading.Event()

    def slow(req: Recorded) -> Reply:
        arrived.set()
        return Reply(body=chat_body(json.dumps(ANSWER)), delay=1.0)

    fake.enqueue(slow)
    first: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: first.append(admin.post(f"/v1/collections/{coll}/extract", json={"text": TEXT}))
    )
    t.start()
    try:
        assert arrived.wait(10)
        r = admin.post(f"/v1/collections/{coll}/extract", json={"text": TEXT})
        assert r.status_code == 429, r.text
        assert _code(r) == "extraction_busy" and r.headers["retry-after"] == "1"
    finally:
        t.join(30)
    assert first[0].status_code == 200, first[0].text
    assert len(fake.chat_requests()) == 1
    assert count(admin, coll) == 2


def test_busy_is_retried_by_the_client(
    xserver: ServerProcess, admin: httpx.Client, coll: str, fake: FakeOpenAI
) -> None:
    """extraction_busy is a 429: answered before anything ran, so even this non-idempotent call is retried."""
    arrived = threading.Event()

    def slow(req: Recorded) -> Reply:
        arrived.set()
        return Reply(body=chat_body(json.dumps(ANSWER)), delay=0.5)

    fake.enqueue(slow)
    t = threading.Thread(target=lambda: admin.post(f"/v1/collections/{coll}/extract", json={"text": TEXT}))
    t.start()
    try:
        assert arrived.wait(10)
        with engramdb.connect(xserver.base_url, ADMIN_KEY) as db:
            res = db.get_collection(coll).extract(TEXT)
        assert [e["merged"] for e in res.entities] == [True, True]
    finally:
        t.join(30)
    with engramdb.connect(xserver.base_url, ADMIN_KEY, retries=0) as db:
        fake.enqueue(slow)
        arrived.clear()
        t = threading.Thread(target=lambda: admin.post(f"/v1/collections/{coll}/extract", json={"text": TEXT}))
        t.start()
        try:
            assert arrived.wait(10)
            with pytest.raises(RateLimited) as ei:
                db.get_collection(coll).extract(TEXT)
            assert ei.value.code == "extraction_busy"
        finally:
            t.join(30)


# ---------------------------------------------------------------- contract
def test_openapi_documents_extract(xserver: ServerProcess) -> None:
    doc = httpx.get(xserver.base_url + "/openapi.json").json()
    op = doc["paths"]["/v1/collections/{coll}/extract"]["post"]
    assert op["operationId"] == "extract"
    assert {"200", "400", "403", "409", "429", "502", "504"} <= set(op["responses"])
    body = doc["components"]["schemas"]["ExtractBody"]
    assert body["required"] == ["text"]
    assert body["properties"]["text"]["maxLength"] == MAX_EXTRACT_TEXT_CHARS
    assert body["additionalProperties"] is False


def test_metrics_count_extract_outcomes(xserver: ServerProcess, admin: httpx.Client, coll: str) -> None:
    admin.post(f"/v1/collections/{coll}/extract", json={"text": ""})
    text = admin.get("/metrics").text
    assert 'engramdb_operations_total{op="extract",status="invalid_text"}' in text


def test_api_key_never_logged(xserver: ServerProcess) -> None:
    assert LLM_KEY not in xserver.log_text()


# ------------------------------------------------------------------- config
def _config_check(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engramdb.cli", "config", "check", "--data-dir", str(tmp_path / "d")],
        env=server_env({"ENGRAMDB_ADMIN_KEY": ADMIN_KEY, **env}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_check_validates_the_extraction_section(tmp_path: Path) -> None:
    r = _config_check(
        {"ENGRAMDB_EXTRACTION__MODEL": "gpt-4o-mini", "ENGRAMDB_EXTRACTION__API_KEY_ENV": "EDB_TEST_UNSET_KEY"},
        tmp_path,
    )
    assert r.returncode == 1
    assert "extraction" in r.stderr and "EDB_TEST_UNSET_KEY" in r.stderr, r.stderr
    r = _config_check({"ENGRAMDB_EXTRACTION__BASE_URL": "ftp://models", "ENGRAMDB_EXTRACTION__MAX_RETRIES": "99"},
                      tmp_path)  # fmt: skip
    assert r.returncode == 1
    assert "extraction.base_url" in r.stderr and "extraction.max_retries" in r.stderr, r.stderr
    r = _config_check(
        {"ENGRAMDB_EXTRACTION__MODEL": "gpt-4o-mini", "ENGRAMDB_EXTRACTION__API_KEY_ENV": "EDB_TEST_SET_KEY",
         "EDB_TEST_SET_KEY": "sk-abc"},
        tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sk-abc" not in r.stdout + r.stderr


def test_server_refuses_to_start_without_the_extraction_key(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="EDB_TEST_UNSET_KEY"):
        start_server(
            tmp_path / "data",
            env={
                "ENGRAMDB_EXTRACTION__MODEL": "gpt-4o-mini",
                "ENGRAMDB_EXTRACTION__API_KEY_ENV": "EDB_TEST_UNSET_KEY",
            },
        )
