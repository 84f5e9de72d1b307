"""Server-side embedding providers behind one interface (a collection's ``embedder``).

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
    if isinstance(config, EmbedderConfig):
        cfg = config
    else:
        try:
            cfg = EmbedderConfig.model_validate(dict(config))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'embedder'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidArgument(f"invalid embedder config: {problems}") from None

    if cfg.provider == "none":
        return None
    if cfg.provider == "local":
        # Silently ignoring these would hide a config that was meant for
        # another provider.
        stray = [f for f in ("base_url", "api_key_env", "api_key_file") if getattr(cfg, f) is not None]
        if stray:
            raise InvalidArgument(f"embedder provider 'local' runs in-process; remove {', '.join(stray)}")
        return LocalEmbedder(cfg.model, dimension=cfg.dimension)
    if cfg.provider == "openai":
        return OpenAIEmbedder(
            cfg.model or "",
            base_url=cfg.base_url or DEFAULT_BASE_URL,
            api_key_env=cfg.api_key_env,
            api_key_file=cfg.api_key_file,
            timeout_seconds=cfg.timeout_seconds,
            max_retries=cfg.max_retries,
            dimension=cfg.dimension,
        )
    raise InvalidArgument(f"unknown embedder provider {cfg.provider!r}; use 'none', 'local' or 'openai'")
