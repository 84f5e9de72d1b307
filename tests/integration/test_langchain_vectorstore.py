"""EngramVectorStore against LangChain's published standard vector-store suite, plus our own extras."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")
langchain_tests = pytest.importorskip("langchain_tests.integration_tests")

import engramdb  # noqa: E402
from engramdb.integrations.langchain import EngramVectorStore  # noqa: E402

# The standard suite's async tests are plain ``async def``; anyio's pytest plugin
# (anyio ships with httpx, a core dependency) runs them on asyncio without
# depending on pytest-asyncio's mode. It leaves the sync tests alone.
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # LangChain's async paths use asyncio's executors, not trio's


class TestEngramVectorStoreStandard(langchain_tests.VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path: Path) -> Iterator[EngramVectorStore]:
        db = engramdb.open(tmp_path / "db", storage={"sync_writes": False})
        try:
            yield EngramVectorStore(self.get_embeddings(), "std", db=db)
        finally:
            db.close()
