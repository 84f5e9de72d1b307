"""Extraction: the pydantic schema, name normalisation, and ChatExtractor against a local fake server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from engramdb.errors import DeadlineExceeded, InvalidArgument, UpstreamError
from engramdb.extract import (
    ChatExtractor,
    ExtractedEntity,
    ExtractedRelation,
    Extraction,
    normalise_name,
    parse_json_object,
)
from fake_openai import FakeOpenAI, Recorded, Reply, chat_body

SECRET = "sk-chat-5ecret-value-9876543210"

GOOD: dict[str, Any] = {
    "entities": [
        {"name": "Ada Lovelace", "type": "person", "description": "Mathematician.", "attributes": {"born": 1815}},
        {"name": "Analytical Engine", "type": "product"},
    ],
    "relations": [{"source": "ada lovelace", "relation": "wrote_about", "target": "Analytical Engine", "weight": 2}],
}


ENT_A = {"name": "A", "type": "t"}
ADA = {"name": "Ada", "type": "person"}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(chat_content=json.dumps(GOOD)) as server:
        yield server


def make(fake: FakeOpenAI, **kw: Any) -> ChatExtractor:
    kw.setdefault("backoff_base", 0.01)
    return ChatExtractor(fake.url, "fake-chat", **kw)


def answer(content: str | None, **kw: Any) -> Reply:
    return Reply(body=chat_body(content, **kw))


# --- schema -----------------------------------------------------------------------------------------------------------


def test_valid_extraction_and_case_insensitive_references() -> None:
    ex = Extraction.model_validate(GOOD)
    assert [e.name for e in ex.entities] == ["Ada Lovelace", "Analytical Engine"]
    assert ex.entities[1].description == "" and ex.entities[1].attributes == {}
    assert ex.relations[0].weight == 2.0
    assert ex.find_entity("  ADA lovelace.") is ex.entities[0]
    assert ex.find_entity("Babbage") is None


def test_relations_default_to_empty() -> None:
    assert Extraction.model_validate({"entities": []}).relations == []


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"relations": []}, "entities"),
        ({"entities": [{"name": "  ", "type": "person"}]}, "name"),
        ({"entities": [{"name": "...", "type": "person"}]}, "at least one letter"),
        ({"entities": [{"name": "Ada"}]}, "type"),
        ({"entities": [ENT_A], "relations": [{"source": "A", "relation": "r", "target": "A", "weight": 11}]}, "weight"),
        ({"entities": [ENT_A], "relations": [{"source": "A", "relation": "r", "target": "B"}]}, "'B' is not the name"),
    ],
)
def test_schema_violations(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        Extraction.model_validate(data)


def test_models_construct_directly() -> None:
    ent = ExtractedEntity(name=" Grace Hopper ", type="person")
    rel = ExtractedRelation(source="Grace Hopper", relation="invented", target="COBOL")
    assert ent.name == "Grace Hopper" and rel.weight == 1.0


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("  The   Beatles. ", "the beatles"),
        ('"Ada Lovelace"', "ada lovelace"),
        ("ÉCOLE  Normale", "école normale"),
        ("Straße", "strasse"),
        ("C++", "c++"),
        ("C#", "c#"),
        ("AT&T", "at&t"),
        ("Mercury (planet)", "mercury (planet)"),
        ("Mercury (planet", "mercury (planet"),
        ("Apple, Inc.", "apple, inc"),
        ("ﬁre", "fire"),  # NFKC folds the ligature
    ],
)
def test_normalise_name(raw: str, norm: str) -> None:
    assert normalise_name(raw) == norm


@pytest.mark.parametrize(
    "content",
    [
        '{"a": 1}',
        '```json\n{"a": 1}\n```',
        '```\n{"a": 1}\n```',
        'Here is the JSON you asked for:\n```json\n{"a": 1}\n```\nHope it helps.',
        'Sure! {"a": 1}',
    ],
)
def test_parse_json_object_tolerates_fences_and_prose(content: str) -> None:
    assert parse_json_object(content) == {"a": 1}


def test_parse_json_object_reports_position() -> None:
    with pytest.raises(ValueError, match="line 1 column"):
        parse_json_object('{"a": ')


# --- ChatExtractor ----------------------------------------------------------------------------------------------------


def test_extract_sends_schema_prompt_and_json_mode(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHAT_KEY", SECRET)
    with make(fake, api_key_env="FAKE_CHAT_KEY") as ex:
        result = ex.extract("Ada Lovelace wrote about the Analytical Engine.", instructions="Only people and machines.")
    assert result == Extraction.model_validate(GOOD)
    [req] = fake.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {SECRET}"
    body = req.body
    assert body["model"] == "fake-chat"
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.0
    system, user = body["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert json.dumps(Extraction.model_json_schema(), separators=(",", ":")) in system["content"]
    assert "Only people and machines." in system["content"]
    assert "Ada Lovelace wrote about the Analytical Engine." in user["content"]


def test_fenced_json_answer_is_accepted(fake: FakeOpenAI) -> None:
    fake.enqueue(answer("```json\n" + json.dumps(GOOD, indent=2) + "\n```"))
    with make(fake) as ex:
        assert len(ex.extract("text").entities) == 2


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        (answer("I could not find any entities, sorry."), "not valid JSON"),
        (answer('{"entities": [{"name": "Ada", "type": "person"}'), "not valid JSON"),
        (answer("[1, 2, 3]"), "expected a JSON object, got a JSON list"),
        (answer('{"people": ["Ada"]}'), "entities: Field required"),
        (
            answer(
                json.dumps(
                    {
                        "entities": [ADA],
                        "relations": [{"source": "Ada", "relation": "r", "target": "Ada", "weight": 42}],
                    }
                )
            ),
            "relations.0.weight",
        ),
        (
            answer(
                json.dumps(
                    {
                        "entities": [ADA],
                        "relations": [{"source": "Ada", "relation": "knew", "target": "Charles Babbage"}],
                    }
                )
            ),
            "relations[0].target 'Charles Babbage' is not the name of any entity",
        ),
        (answer('{"entities": [', finish_reason="length"), "max_tokens"),
        (answer(None), "no text content"),
        (Reply(body={"choices": []}), "no choices[0].message"),
    ],
)
def test_invalid_answers_raise_invalid_extraction(fake: FakeOpenAI, reply: Reply, needle: str) -> None:
    fake.enqueue(reply)
    with make(fake) as ex, pytest.raises(UpstreamError) as info:
        ex.extract("Ada Lovelace met Charles Babbage.")
    assert info.value.code == "invalid_extraction"
    assert needle in info.value.message
    assert len(fake.requests) == 1  # a bad answer is reported, not silently re-asked


def test_invalid_extraction_keeps_the_output_for_debugging(fake: FakeOpenAI) -> None:
    fake.enqueue(answer("nope"))
    with make(fake) as ex, pytest.raises(UpstreamError) as info:
        ex.extract("text")
    assert info.value.details["output"] == "nope"


def test_server_error_then_success_is_retried(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply(status=502, body="bad gateway"), Reply(status=429, body={}, headers={"Retry-After": "0"}))
    with make(fake, max_retries=2) as ex:
        assert len(ex.extract("text").relations) == 1
    assert len(fake.requests) == 3


def test_timeout_raises_deadline_exceeded(fake: FakeOpenAI) -> None:
    fake.enqueue(Reply(delay=3.0, body=chat_body("{}")))
    with make(fake, timeout_seconds=0.3) as ex:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            ex.extract("text")
    assert time.monotonic() - start < 2.0


def test_key_is_never_in_error_messages(fake: FakeOpenAI, tmp_path: Any) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET)

    def echo(req: Recorded) -> Reply:
        return Reply(status=403, body={"error": {"message": f"forbidden: {req.headers['authorization']}"}})

    fake.enqueue(echo)
    with make(fake, api_key_file=str(key_file)) as ex, pytest.raises(UpstreamError) as info:
        ex.extract("text")
    assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in info.value.message and SECRET not in str(info.value.to_dict())
    assert SECRET not in repr(ex)


def test_bad_arguments() -> None:
    with pytest.raises(InvalidArgument, match="model"):
        ChatExtractor("http://127.0.0.1:1", " ")
    with pytest.raises(InvalidArgument, match="base_url"):
        ChatExtractor("not a url", "m")
    with ChatExtractor("http://127.0.0.1:1", "m") as ex, pytest.raises(InvalidArgument, match="non-empty text"):
        ex.extract("   ")
