"""EngramVectorStore against LangChain's published standard vector-store suite, plus our own extras."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests.integration_tests")

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import engramdb
from engramdb.integrations.langchain import EngramVectorStore

# The standard suite's async tests are plain ``async def``; anyio's pytest plugin
# (anyio ships with httpx, a core dependency) runs them on asyncio without
# depending on pytest-asyncio's mode. It leaves the sync tests alone.
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # LangChain's async paths use asyncio's executors, not trio's


class TestEngramVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path: Path) -> Iterator[EngramVectorStore]:
        db = engramdb.open(tmp_path / "db", storage={"sync_writes": False})
        try:
            yield EngramVectorStore(self.get_embeddings(), "std", db=db)
        finally:
            db.close()


# --------------------------------------------------------------------- beyond the standard suite
DIMS = 8


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Any]:
    d = engramdb.open(tmp_path / "db", storage={"sync_writes": False})
    yield d
    d.close()


def _store(db: Any, **kw: Any) -> EngramVectorStore:
    return EngramVectorStore(DeterministicFakeEmbedding(size=DIMS), "docs", db=db, **kw)


DOCS = [
    Document(id="a", page_content="the quick brown fox", metadata={"source": "a.md", "page": 1, "tags": ["x"]}),
    Document(id="b", page_content="jumps over the lazy dog", metadata={"source": "b.md", "page": 2}),
    Document(id="c", page_content="lorem ipsum dolor", metadata={"source": "a.md", "page": 3, "meta": {"lang": "la"}}),
    Document(id="d", page_content="sit amet consectetur", metadata={"source": "c.md", "page": 4}),
]


def test_scores_filters_and_by_vector(db: Any) -> None:
    store = _store(db)
    assert store.add_documents(DOCS) == ["a", "b", "c", "d"]
    emb = store.embeddings
    assert isinstance(emb, DeterministicFakeEmbedding)
    scored = store.similarity_search_with_score("lorem ipsum dolor", k=4)
    assert len(scored) == 4 and scored[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    assert scored[0][0] == DOCS[2]
    # Filters are engine filters over metadata: equality, operators, nested keys, logic.
    assert {d.id for d in store.similarity_search("x", k=10, filter={"source": "a.md"})} == {"a", "c"}
    assert {d.id for d in store.similarity_search("x", k=10, filter={"page": {"$gte": 3}})} == {"c", "d"}
    assert [d.id for d in store.similarity_search("x", k=10, filter={"meta.lang": "la"})] == ["c"]
    flt = {"$or": [{"tags": {"$contains": "x"}}, {"source": "c.md"}]}
    assert {d.id for d in store.similarity_search("x", k=10, filter=flt)} == {"a", "d"}
    with pytest.raises(engramdb.InvalidFilter):
        store.similarity_search("x", filter={"page": {"$near": 1}})
    by_vec = store.similarity_search_by_vector(emb.embed_query("sit amet consectetur"), k=1)
    assert by_vec == [DOCS[3]]
    rel = store.similarity_search_with_relevance_scores("the quick brown fox", k=4)
    assert rel[0][0].id == "a" and rel[0][1] == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= s <= 1.0 for _, s in rel)
    retriever = store.as_retriever(search_kwargs={"k": 2, "filter": {"source": "a.md"}})
    assert {d.id for d in retriever.invoke("fox")} == {"a", "c"}


def test_mmr(db: Any) -> None:
    store = _store(db)
    store.add_texts(["alpha", "alpha", "beta", "gamma"], ids=["1", "2", "3", "4"])
    # Two identical vectors: MMR takes one of them, then something different.
    chosen = store.max_marginal_relevance_search("alpha", k=2, fetch_k=4, lambda_mult=0.3)
    assert chosen[0].page_content == "alpha" and chosen[1].page_content != "alpha"
    assert len(store.max_marginal_relevance_search("alpha", k=3, filter={"$not": {"id_prefix": "1"}})) == 3
    achosen = asyncio.run(store.amax_marginal_relevance_search("alpha", k=2, fetch_k=4, lambda_mult=0.3))
    assert [d.id for d in achosen] == [d.id for d in chosen]


def test_delete_variants_and_get_by_ids_order(db: Any) -> None:
    store = _store(db)
    store.add_documents(DOCS)
    assert [d.id for d in store.get_by_ids(["d", "zz", "a", "d"])] == ["d", "a"]
    store.delete(filter={"source": "a.md"})
    assert {d.id for d in store.similarity_search("x", k=10)} == {"b", "d"}
    store.delete()  # no ids: everything
    assert store.similarity_search("x", k=10) == []


def test_namespace_ttl_and_async_add(db: Any) -> None:
    store = _store(db)
    store.add_texts(["kept"], ids=["k"], namespace=["user-1"])
    store.add_texts(["short-lived"], ids=["s"], ttl_seconds=0.3)
    asyncio.run(store.aadd_texts(["async one"], [{"n": 1}], ids=["as"], namespace=["user-2"]))
    assert [d.id for d in store.similarity_search("x", k=10, filter={"namespace_prefix": ["user-1"]})] == ["k"]
    hits = asyncio.run(store.asimilarity_search("async one", k=1, filter={"n": 1}))
    assert hits == [Document(id="as", page_content="async one", metadata={"n": 1})]
    time.sleep(0.4)
    assert {d.id for d in store.similarity_search("x", k=10)} == {"k", "as"}


def test_constructors(tmp_path: Path, db: Any) -> None:
    emb = DeterministicFakeEmbedding(size=DIMS)
    store = EngramVectorStore.from_texts(["one", "two"], emb, [{"i": 1}, {"i": 2}], ids=["1", "2"], path=tmp_path / "p")
    try:
        assert store.similarity_search("two", k=1)[0].metadata == {"i": 2}
    finally:
        store.close()
    reopened = engramdb.open(tmp_path / "p")
    try:
        assert reopened.get_collection("langchain").count() == 2
    finally:
        reopened.close()
    from_docs = EngramVectorStore.from_documents(DOCS, emb, db=db, collection="fd", metric="l2")
    assert from_docs.get_by_ids(["b"]) == [DOCS[1]]
    assert db.get_collection("fd").metric == "l2"
    top = from_docs.similarity_search_with_relevance_scores("jumps over the lazy dog", k=1)
    assert top[0][1] == pytest.approx(1.0, abs=1e-5)  # l2 scores are 1 / (1 + distance)
    # An existing collection object is used as is; dimension= creates eagerly.
    eager = EngramVectorStore(emb, "eager", db=db, dimension=DIMS)
    assert eager.collection is not None and eager.collection.dimension == DIMS
    same = EngramVectorStore(emb, db.get_collection("eager"))
    same.add_texts(["hello"], ids=["h"])
    assert eager.get_by_ids(["h"])[0].page_content == "hello"
    with pytest.raises(ValueError, match="db="):
        EngramVectorStore(emb, "no-db")
    with pytest.raises(TypeError, match="synchronous"):
        EngramVectorStore(emb, "x", db=engramdb.AsyncClient("http://127.0.0.1:9", api_key="k"))
    # A store made before its collection existed finds it once another store created it.
    early = EngramVectorStore(emb, "late", db=db)
    assert early.similarity_search("x") == [] and early.collection is None
    EngramVectorStore(emb, "late", db=db).add_texts(["made elsewhere"], ids=["m"])
    assert [d.id for d in early.similarity_search("x")] == ["m"]
    with pytest.raises(engramdb.InvalidArgument):
        eager.add_texts(["bad metadata"], [{"when": object()}])


@pytest.mark.slow
def test_remote_client(server: Any) -> None:
    client = engramdb.connect(server.base_url, server.admin_key)
    try:
        name = f"lc-{uuid.uuid4().hex[:12]}"  # the session's server is shared
        store = EngramVectorStore(DeterministicFakeEmbedding(size=DIMS), name, db=client)
        store.add_documents(DOCS)
        assert store.similarity_search("lorem ipsum dolor", k=1, filter={"source": "a.md"}) == [DOCS[2]]
        assert [d.id for d in store.max_marginal_relevance_search("fox", k=2, fetch_k=4)]
        assert {d.id for d in store.get_by_ids(["a", "b"])} == {"a", "b"}
        store.delete(["a"])
        assert store.get_by_ids(["a"]) == []
        client.delete_collection(name)
    finally:
        client.close()


@pytest.mark.slow
def test_a_cluster_node(tmp_path: Path) -> None:
    """The vector store through a node of a real 3-node cluster (RF 3, 4 shards): unchanged code."""
    import shutil

    if shutil.which("etcd") is None:
        pytest.skip("etcd (Debian etcd-server) is not installed")
    from engramdb.cluster.local import LocalCluster

    key = "lc-cluster-" + uuid.uuid4().hex
    with (
        LocalCluster(tmp_path / "cluster", 3, admin_key=key) as cluster,
        engramdb.connect(cluster.node(1).url, key) as client,
    ):
        store = EngramVectorStore(DeterministicFakeEmbedding(size=DIMS), "lc", db=client)
        store.add_documents(DOCS)
        assert store.similarity_search("lorem ipsum dolor", k=1, filter={"source": "a.md"}) == [DOCS[2]]
        assert [d.id for d in store.max_marginal_relevance_search("fox", k=2, fetch_k=4)]
        assert {d.id for d in store.get_by_ids(["a", "b"])} == {"a", "b"}
        store.delete(["a"])
        assert store.get_by_ids(["a"]) == []
