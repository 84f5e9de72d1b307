"""The interface every embedding provider implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import numpy as np
from numpy.typing import NDArray

from engramdb.errors import InvalidArgument

FloatMatrix = NDArray[np.float32]
"""A float32 array of shape ``[n, dimension]`` (or ``[dimension]`` for one query)."""


class Closing:
    """``with obj:`` closes ``obj`` at the end of the block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Embedder(Closing, abc.ABC):
    """Turns text into float32 vectors of a fixed dimension.

    Implementations are thread-safe: the engine and the servers call one
    embedder from several threads at once.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short, stable description such as ``"local:all-MiniLM-L6-v2"``."""

    @property
    @abc.abstractmethod
    def dimension(self) -> int:
        """Length of every vector this embedder returns."""

    @abc.abstractmethod
    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Embed ``texts``; returns float32 ``[len(texts), dimension]``, rows in input order."""

    def embed_query(self, text: str) -> FloatMatrix:
        """Embed one search query; returns float32 ``[dimension]``.

        Same as :meth:`embed` by default; a provider whose model wants a query
        prefix (e5, bge) overrides this.
        """
        return self.embed([text])[0]

    def close(self) -> None:
        """Release connections or model memory. The default holds nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate the input of :meth:`Embedder.embed` and return it as a list.

    A bare string is a Sequence[str] too, and embedding it character by
    character is never what the caller meant, so it is refused. Empty strings
    are refused on every provider alike (OpenAI rejects them; a local model
    would return a meaningless vector) so behaviour does not depend on the
    provider.
    """
    if isinstance(texts, (str, bytes)):
        raise InvalidArgument("embed() takes a list of strings, not a single string; use embed_query() for one text")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InvalidArgument(f"texts[{i}] is a {type(text).__name__}; every text to embed must be a string")
        if not text:
            raise InvalidArgument(f"texts[{i}] is empty; every text to embed must have at least one character")
    return out
