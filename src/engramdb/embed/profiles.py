"""Collection embedders resolved from the operator's embedder profiles (``embedders.<name>`` settings).

A collection created with ``{"profile": "<name>"}`` stores only the name; the
engine builds the embedder from the profile each time it opens the
collection, so the operator can move the endpoint or rotate the key in the
configuration. One embedder per profile is shared by all its collections
(one connection pool per endpoint).

On a server (``allow_inline=False``) inline provider configurations are never
acted on: they may have come from an API caller (collections created before
profiles existed) and could name any URL, key variable, key file or model
directory. Such a collection still loads; its embedder is an
:class:`UnavailableEmbedder` whose error tells the operator what to configure,
unless the operator defined a profile with exactly the same provider, model,
endpoint and key source, which is then used (the operator vouched for it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

from engramdb.embed.base import Embedder, FloatMatrix, check_texts
from engramdb.errors import EngramError, FailedPrecondition, InvalidArgument
from engramdb.types import CollectionConfig, EmbedderConfig

log = logging.getLogger("engramdb.embed")


class EmbedderProfile(Protocol):
    """What the resolver reads of an operator's embedder profile (``config.EmbedderProfile``, one layer up)."""

    @property
    def provider(self) -> Literal["local", "openai"]: ...
    @property
    def model(self) -> str | None: ...
    @property
    def base_url(self) -> str | None: ...
    @property
    def api_key_env(self) -> str | None: ...
    @property
    def api_key_file(self) -> Path | None: ...
    @property
    def timeout_seconds(self) -> float: ...
    @property
    def max_retries(self) -> int: ...
    @property
    def dimension(self) -> int | None: ...
    @property
    def enabled(self) -> bool: ...


PROFILE_DETAIL = "embedder_profile"
"""``details`` key naming the profile whose embedder raised an error; the server makes such errors generic."""

NOT_ALLOWED = (
    "this server embeds text only with embedder profiles its operator configured: send "
    '"embedder": {"profile": "<name>"}; a provider, model, base_url, api_key_env or api_key_file '
    "cannot be chosen over the API"
)


def _tagged(e: EngramError, profile: str) -> EngramError:
    """``e`` (same class and code) naming the profile, with the profile in ``details[PROFILE_DETAIL]``."""
    return type(e)(
        f"embedder profile {profile!r}: {e.message}", code=e.code, details={**e.details, PROFILE_DETAIL: profile}
    )


class ProfileEmbedder(Embedder):
    """A profile's embedder: errors of the provider (not of the caller's input) are tagged with the profile."""

    def __init__(self, profile: str, inner: Embedder):
        self.profile = profile
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimension(self) -> int:
        try:
            return self.inner.dimension
        except EngramError as e:
            raise _tagged(e, self.profile) from e

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        items = check_texts(texts)  # the caller's mistakes keep their own, untagged error
        try:
            return self.inner.embed(items)
        except EngramError as e:
            raise _tagged(e, self.profile) from e

    def embed_query(self, text: str) -> FloatMatrix:
        check_texts([text])
        try:
            return self.inner.embed_query(text)
        except EngramError as e:
            raise _tagged(e, self.profile) from e

    def close(self) -> None:
        self.inner.close()


class UnavailableEmbedder(Embedder):
    """Stands in for an embedder that cannot be used; every embedding raises ``error``.

    The collection stays usable for everything else (records with vectors,
    text search, reads), and the error says what the operator must configure.
    """

    def __init__(self, error: EngramError, dimension: int, label: str):
        self._error = error
        self._dimension = dimension
        self._label = label

    @property
    def name(self) -> str:
        return f"unavailable:{self._label}"

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        check_texts(texts)
        e = self._error
        raise type(e)(e.message, code=e.code, details=dict(e.details))


def _path(p: str | Path | None) -> str | None:
    return str(Path(p).expanduser()) if p is not None else None


def _endpoint(base_url: str | None) -> str | None:
    from engramdb.embed.openai import DEFAULT_BASE_URL
    from engramdb.openai_http import endpoint_url

    try:
        return endpoint_url(base_url or DEFAULT_BASE_URL, "embeddings")
    except InvalidArgument:
        return None


def same_embedder(cfg: EmbedderConfig, prof: EmbedderProfile) -> bool:
    """True if the inline ``cfg`` names the same provider, model, endpoint and key source as ``prof``."""
    from engramdb.embed.local import is_bundled_model

    if cfg.provider != prof.provider:
        return False
    if cfg.provider == "local":
        if cfg.base_url is not None or cfg.api_key_env is not None or cfg.api_key_file is not None:
            return False
        if is_bundled_model(cfg.model) or is_bundled_model(prof.model):
            return is_bundled_model(cfg.model) and is_bundled_model(prof.model)
        return _path(cfg.model) == _path(prof.model)
    url = _endpoint(cfg.base_url)
    return (
        url is not None
        and url == _endpoint(prof.base_url)
        and (cfg.model or "").strip() == (prof.model or "").strip()
        and (cfg.api_key_env or None) == (prof.api_key_env or None)
        and _path(cfg.api_key_file) == _path(prof.api_key_file)
    )


def known_dimension(prof: EmbedderProfile) -> int | None:
    """The dimension a profile's vectors have, when known without loading a model or calling an endpoint."""
    from engramdb.embed.local import DEFAULT_DIMENSION, is_bundled_model

    if prof.dimension is not None:
        return prof.dimension
    if prof.provider == "local" and is_bundled_model(prof.model):
        return DEFAULT_DIMENSION
    return None


class EmbedderResolver:
    """Builds collection embedders from profiles (one shared embedder per profile) and inline configs."""

    def __init__(self, profiles: Mapping[str, EmbedderProfile]):
        self.profiles = dict(profiles)
        self._built: dict[str, ProfileEmbedder] = {}
        self._lock = threading.Lock()

    def offered(self) -> list[str]:
        """Names of the enabled profiles."""
        return sorted(name for name, p in self.profiles.items() if p.enabled)

    def profile_embedder(self, name: str) -> ProfileEmbedder:
        """The embedder of profile ``name``.

        Raises InvalidArgument ``unknown_embedder_profile`` for a name that is
        not offered, and the provider's error, tagged with the profile, when
        the embedder cannot be built (e.g. its key variable is unset).
        """
        prof = self.profiles.get(name)
        if prof is None or not prof.enabled:
            offered = self.offered()
            raise InvalidArgument(
                f"this server has no embedder profile {name!r}; "
                + (f"it offers: {', '.join(offered)}" if offered else "it offers none")
                + " (the operator defines profiles under 'embedders' in the server configuration)",
                code="unknown_embedder_profile",
            )
        with self._lock:
            emb = self._built.get(name)
            if emb is None:
                from engramdb.embed import make_embedder

                cfg = EmbedderConfig(
                    provider=prof.provider,
                    model=prof.model,
                    base_url=prof.base_url,
                    api_key_env=prof.api_key_env,
                    api_key_file=str(prof.api_key_file) if prof.api_key_file is not None else None,
                    timeout_seconds=prof.timeout_seconds,
                    max_retries=prof.max_retries,
                    dimension=prof.dimension,
                )
                try:
                    inner = make_embedder(cfg)
                except EngramError as e:
                    raise _tagged(e, name) from e
                assert inner is not None  # profiles have a real provider
                emb = self._built[name] = ProfileEmbedder(name, inner)
            return emb

    def for_create(self, cfg: EmbedderConfig, *, allow_inline: bool) -> Embedder | None:
        """The embedder of a collection being created (errors are raised: nothing is created)."""
        if cfg.profile is not None:
            return self.profile_embedder(cfg.profile)
        if cfg.provider == "none":
            return None
        if not allow_inline:
            raise InvalidArgument(NOT_ALLOWED, code="embedder_not_allowed")
        from engramdb.embed import make_embedder

        return make_embedder(cfg)

    def for_collection(self, cfg: CollectionConfig, *, allow_inline: bool) -> Embedder | None:
        """The embedder of a stored collection.

        Inline configs with ``allow_inline`` are built as they always were
        (their errors raise). Otherwise this never raises: a profile that is
        gone, disabled, of another dimension or unbuildable, and an inline
        config on a server, give an :class:`UnavailableEmbedder`.
        """
        ecfg = cfg.embedder
        if ecfg is None or (ecfg.profile is None and ecfg.provider == "none"):
            return None
        if ecfg.profile is None:
            if allow_inline:
                from engramdb.embed import make_embedder

                return make_embedder(ecfg)
            name = next((n for n in self.offered() if same_embedder(ecfg, self.profiles[n])), None)
            if name is None:
                # The log may name what the stored config points at: the operator decides whether to offer it.
                log.warning(
                    "collection %r has an inline %s embedder configuration, which this server does not act on; "
                    "define an embedder profile with the same provider, model, base_url and key source to use it",
                    cfg.name,
                    ecfg.provider,
                )
                return UnavailableEmbedder(
                    FailedPrecondition(
                        f"collection {cfg.name!r} has an embedder configuration from before embedder profiles, which "
                        "this server does not use; the server operator can offer it as an embedder profile (see "
                        "'Embedder profiles' in docs/server.md); records that carry vectors can still be written",
                        code="embedder_not_allowed",
                    ),
                    cfg.dimension,
                    "inline",
                )
        else:
            name = ecfg.profile
            prof = self.profiles.get(name)
            if prof is None or not prof.enabled:
                state = "disables" if prof is not None else "does not define"
                return UnavailableEmbedder(
                    FailedPrecondition(
                        f"collection {cfg.name!r} embeds text with embedder profile {name!r}, which this server "
                        f"{state}; the server operator must configure it (embedders.{name} in the configuration file "
                        f"or ENGRAMDB_EMBEDDERS__{name.upper()}__PROVIDER and related variables); records that carry "
                        "vectors can still be written",
                        code="embedder_profile_missing",
                        details={"profile": name},
                    ),
                    cfg.dimension,
                    name,
                )
        prof = self.profiles[name]
        dim = known_dimension(prof)
        if dim is not None and dim != cfg.dimension:
            return UnavailableEmbedder(
                FailedPrecondition(
                    f"embedder profile {name!r} now produces {dim}-dimensional vectors but collection {cfg.name!r} "
                    f"has dimension {cfg.dimension}; the server operator must point the profile back at a model of "
                    f"dimension {cfg.dimension}",
                    code="embedder_dimension_mismatch",
                    details={"profile": name},
                ),
                cfg.dimension,
                name,
            )
        try:
            return self.profile_embedder(name)
        except EngramError as e:
            log.warning("embedder profile %r cannot be built for collection %r: %s", name, cfg.name, e.message)
            return UnavailableEmbedder(
                FailedPrecondition(
                    f"embedder profile {name!r} cannot be used on this server at the moment; the server log has "
                    "the details",
                    code="embedder_unavailable",
                    details={"profile": name},
                ),
                cfg.dimension,
                name,
            )

    def close(self) -> None:
        with self._lock:
            built, self._built = list(self._built.values()), {}
        for emb in built:
            try:
                emb.close()
            except Exception:
                log.exception("closing the embedder of profile %r failed", emb.profile)
