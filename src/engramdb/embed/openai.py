"""Embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint.

Works with OpenAI, Azure-style proxies, Ollama, vLLM and Hugging Face TEI.
Vectors are returned as the server sends them (OpenAI's are unit length
already); the collection's metric decides what to do with the norm.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from engramdb.embed.base import Embedder, FloatMatrix, check_texts
from engramdb.errors import InvalidArgument, UpstreamError
from engramdb.openai_http import OpenAICompatClient

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_BATCH_SIZE = 256
# Tiny input used once to learn the dimension when it is not configured.
_PROBE_TEXT = "dimension probe"


class OpenAIEmbedder(Embedder):
    """Embeds text through an OpenAI-compatible HTTP endpoint.

    Inputs are sent in batches of ``batch_size``; each answer is checked (one
    vector per input, ``index`` ordering, finite numbers, one dimension) before
    anything is returned, so a misbehaving server can never put a wrong vector
    in the store. When ``dimension`` is ``None`` it is learned from the first
    answer, or from a one-word probe if :attr:`dimension` is read first.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str | None = None,
        api_key_file: str | None = None,
        timeout_seconds: float = 30.0,
        max_retries: int = 3,
        dimension: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        backoff_base: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ):
        if not model or not model.strip():
            raise InvalidArgument(
                "the openai embedder needs a model name (embedder.model), e.g. 'text-embedding-3-small' "
                "or the name your Ollama/vLLM/TEI server serves"
            )
        if dimension is not None and dimension < 1:
            raise InvalidArgument(f"embedder dimension must be >= 1, got {dimension}")
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.strip()
        self.batch_size = batch_size
        self._dimension = dimension
        self._configured_dimension = dimension is not None
        self._lock = threading.Lock()
        self._http = OpenAICompatClient(
            base_url,
            what="embedding endpoint",
            api_key_env=api_key_env,
            api_key_file=api_key_file,
            timeout_seconds=timeout_seconds,
            max_retries=max_retries,
            backoff_base=backoff_base,
            transport=transport,
        )

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            # Probe outside the lock: embed() takes it to record the dimension,
            # and two threads probing at once is harmless (same answer).
            self.embed([_PROBE_TEXT])
        assert self._dimension is not None  # set by embed() or the constructor
        return self._dimension

    def close(self) -> None:
        self._http.close()

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        items = check_texts(texts)
        if not items:
            # No request for nothing: when the dimension is still unknown the
            # empty result has 0 columns rather than costing a probe.
            return np.zeros((0, self._dimension or 0), dtype=np.float32)
        parts = [
            self._embed_batch(items[start : start + self.batch_size]) for start in range(0, len(items), self.batch_size)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def _embed_batch(self, batch: list[str]) -> FloatMatrix:
        body = self._http.post_json("embeddings", {"model": self.model, "input": batch})
        matrix = self._parse(body, len(batch))
        self._check_dimension(matrix.shape[1])
        return matrix

    def _check_dimension(self, got: int) -> None:
        with self._lock:
            if self._dimension is None:
                self._dimension = got
                return
            expected = self._dimension
        if got != expected:
            if self._configured_dimension:
                hint = (
                    f"the embedder is configured with dimension {expected}; set embedder.dimension to {got} "
                    "(and a collection of that dimension) or use a model that produces "
                    f"{expected}-dimensional vectors"
                )
            else:
                hint = f"earlier answers had dimension {expected}; the model behind the endpoint changed"
            # Not the "dimension_mismatch" code: that one means the caller's
            # input was wrong (HTTP 400) and clients would re-raise it as such.
            raise UpstreamError(
                f"the embedding endpoint returned {got}-dimensional vectors for model {self.model!r}, but {hint}",
                code="embedding_dimension_mismatch",
                details={"expected": expected, "got": got},
            )

    def _bad(self, what: str) -> UpstreamError:
        return UpstreamError(
            f"the embedding endpoint returned an invalid answer for model {self.model!r}: {what}",
            code="invalid_embedding_response",
        )

    def _parse(self, body: Any, count: int) -> FloatMatrix:
        """Check an ``/embeddings`` answer and return its vectors in input order."""
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise self._bad("expected a JSON object with a 'data' list")
        data: list[Any] = body["data"]
        if len(data) != count:
            raise self._bad(f"sent {count} input(s) but received {len(data)} embedding(s)")
        if not all(isinstance(item, dict) for item in data):
            raise self._bad("every element of 'data' must be an object")
        has_index = ["index" in item for item in data]
        if all(has_index):
            indexes = [item["index"] for item in data]
            if any(isinstance(i, bool) or not isinstance(i, int) for i in indexes):
                raise self._bad("'index' must be an integer")
            if sorted(indexes) != list(range(count)):
                raise self._bad(f"'index' values must be 0..{count - 1}, each once; got {sorted(indexes)[:10]}")
            # Servers may answer out of order (OpenAI documents the index for
            # this reason); rows must follow the input.
            ordered = [item for _, item in sorted(zip(indexes, data, strict=True), key=lambda pair: pair[0])]
        elif not any(has_index):
            # Some compatible servers omit 'index'; their answers are in input order.
            ordered = data
        else:
            raise self._bad("some elements of 'data' have an 'index' and some do not")

        dim: int | None = None
        rows: list[list[float]] = []
        for pos, item in enumerate(ordered):
            vec = item.get("embedding")
            if not isinstance(vec, list) or not vec:
                raise self._bad(f"embedding {pos} is not a non-empty list of numbers")
            if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in vec):
                raise self._bad(f"embedding {pos} contains a value that is not a number")
            if not all(math.isfinite(x) for x in vec):
                raise self._bad(f"embedding {pos} contains NaN or infinity")
            if dim is None:
                dim = len(vec)
            elif len(vec) != dim:
                raise self._bad(f"embeddings in one answer have different lengths ({dim} and {len(vec)})")
            rows.append(vec)
        matrix = np.asarray(rows, dtype=np.float32)
        # A value finite in float64 can overflow float32.
        if not np.isfinite(matrix).all():
            raise self._bad("an embedding value does not fit in float32")
        return matrix
