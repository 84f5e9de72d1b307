"""collection.extract(): LLM output validated, deduplicated and written atomically."""

from __future__ import annotations

import json

import pytest

from engramdb import EngramError, FailedPrecondition
from engramdb.extract import ChatExtractor
from fake_openai import FakeOpenAI, Reply, chat_body

ANSWER = {
    "entities": [
        {"name": "Ada Lovelace", "type": "person", "description": "a mathematician"},
        {"name": "Analytical Engine", "type": "machine", "description": "a mechanical computer"},
        {"name": "ada lovelace.", "type": "person"},
    ],
    "relations": [{"source": "Ada Lovelace", "relation": "wrote_about", "target": "Analytical Engine", "weight": 2}],
}


@pytest.fixture
def fake():
    with FakeOpenAI(dim=8, chat_content=json.dumps(ANSWER)) as f:
        yield f


@pytest.fixture
def coll(db, fake):
    return db.create_collection(
        "kg",
        dimension=8,
        embedder={"provider": "openai", "model": "fake-embed", "base_url": fake.url + "/v1", "dimension": 8},
        indexed_fields={"kind": "keyword", "entity_type": "keyword"},
    )


def test_extract_writes_entities_and_edges(coll, fake):
    ex = ChatExtractor(fake.url + "/v1", "fake-chat", max_retries=0)
    res = coll.extract("Ada Lovelace wrote about the Analytical Engine.", ex, namespace=["docs"], source_id="doc-1")
    ids = sorted(e["id"] for e in res.entities)
    assert ids == ["entity:ada lovelace", "entity:analytical engine"]
    ada = coll.get("entity:ada lovelace")
    assert ada.metadata["entity_type"] == "person" and ada.metadata["sources"] == ["doc-1"]
    assert ada.namespace == ("docs",)
    (edge,) = coll.store.iter_prefix("edges_out", coll.prefix)
    assert b"wrote_about" in edge[0]
    # The same extraction again merges into the same records instead of duplicating.
    res2 = coll.extract("again", ex, source_id="doc-2")
    assert all(e["merged"] for e in res2.entities)
    assert coll.count() == 2
    assert coll.get("entity:ada lovelace").metadata["mentions"] == 2


def test_invalid_llm_output_writes_nothing(coll, fake):
    ex = ChatExtractor(fake.url + "/v1", "fake-chat", max_retries=0)
    bad = {
        "entities": [{"name": "A", "type": "x"}],
        "relations": [{"source": "A", "relation": "r", "target": "Nobody"}],
    }
    fake.enqueue(Reply(body=chat_body(json.dumps(bad))))
    with pytest.raises(EngramError) as ei:
        coll.extract("text", ex)
    assert ei.value.code == "invalid_extraction"
    fake.enqueue(Reply(body=chat_body("not json at all")))
    with pytest.raises(EngramError):
        coll.extract("text", ex)
    assert coll.count() == 0


def test_extract_needs_embedder(db, fake):
    c = db.create_collection("plain", dimension=8)
    with pytest.raises(FailedPrecondition):
        c.extract("text", ChatExtractor(fake.url + "/v1", "fake-chat"))
