"""Server-side embedding providers behind one interface (design §6).

- ``none``: the client sends vectors; :func:`make_embedder` returns ``None``.
- ``local``: sentence-transformers all-MiniLM-L6-v2, offline (extra ``engramdb[local]``).
- ``openai``: any OpenAI-compatible ``/v1/embeddings`` endpoint.

Importing this package never imports torch; the local model loads on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from engramdb.embed.base import Embedder, FloatMatrix, check_texts
from engramdb.embed.local import LocalEmbedder
from engramdb.embed.openai import DEFAULT_BASE_URL, OpenAIEmbedder
from engramdb.errors import InvalidArgument
from engramdb.types import EmbedderConfig

__all__ = [
    "Embedder",
    "FloatMatrix",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "check_texts",
    "make_embedder",
]


def make_embedder(config: EmbedderConfig | Mapping[str, Any] | None) -> Embedder | None:
    """Build the embedder a collection's ``embedder`` config describes, or ``None`` for provider ``none``.

    Configuration mistakes (unknown provider, missing model, unreadable key
    file, options that mean nothing for the provider) raise
    :class:`~engramdb.errors.InvalidArgument` here, at collection creation,
    rather than at the first write.
    """
    if config is None:
        return None
    if not isinstance(config, EmbedderConfig):
        try:
            config = EmbedderConfig.model_validate(dict(config))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'embedder'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidArgument(f"invalid embedder config: {problems}") from None

    if config.provider == "none":
        return None
    if config.provider == "local":
        # Silently ignoring these would hide a config that was meant for
        # another provider.
        stray = [f for f in ("base_url", "api_key_env", "api_key_file") if getattr(config, f) is not None]
        if stray:
            raise InvalidArgument(f"embedder provider 'local' runs in-process; remove {', '.join(stray)}")
        return LocalEmbedder(config.model, dimension=config.dimension)
    if config.provider == "openai":
        return OpenAIEmbedder(
            config.model or "",
            base_url=config.base_url or DEFAULT_BASE_URL,
            api_key_env=config.api_key_env,
            api_key_file=config.api_key_file,
            timeout_seconds=config.timeout_seconds,
            max_retries=config.max_retries,
            dimension=config.dimension,
        )
    raise InvalidArgument(f"unknown embedder provider {config.provider!r}; use 'none', 'local' or 'openai'")
