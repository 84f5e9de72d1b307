"""Settings: a YAML file, then ``ENGRAMDB_*`` environment variables, then flags.

Nested keys use ``__`` in the environment: ``ENGRAMDB_STORAGE__SYNC_WRITES=false``.
Everything is validated before anything starts, and every problem is reported
at once (see :func:`check`).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from .errors import InvalidArgument
from .types import Bounds, FieldCheck, pydantic_fields, type_adapter

if TYPE_CHECKING:
    from pydantic import ValidationError

# The settings are plain dataclasses, validated by pydantic only when there is
# something to validate (flags, environment, a file): an embedded
# ``engramdb.open(path)`` then never imports pydantic, a third of a cold
# start. pydantic reads the ``Annotated`` bounds, ``__pydantic_config__`` and
# ``__post_init__`` checks below exactly as it would on its own models.
_STRICT_KEYS: dict[str, Any] = {"extra": "forbid"}


@dataclass
class StorageSettings:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    sync_writes: bool = True  # fsync the write-ahead log before acknowledging a write
    # memtable size per column family; all share a budget of twice this
    write_buffer_mb: Annotated[int, Bounds(ge=1, le=65536)] = 16
    max_background_jobs: Annotated[int, Bounds(ge=1, le=64)] = 2
    max_wal_mb: Annotated[int, Bounds(ge=16, le=1_048_576)] = 512
    block_cache_mb: Annotated[int, Bounds(ge=8, le=1_048_576)] = 128
    tombstone_grace_seconds: Annotated[float, Bounds(ge=0)] = 10 * 86400
    ttl_sweep_interval_seconds: Annotated[float, Bounds(gt=0, le=3600)] = 1.0
    # once writes have paused this long, memtables holding over 1 MiB are flushed (0 = never)
    idle_flush_seconds: Annotated[float, Bounds(ge=0, le=86400)] = 5.0


@dataclass
class IndexSettings:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    snapshot_interval_seconds: Annotated[float, Bounds(gt=0)] = 300.0
    snapshot_after_changes: Annotated[int, Bounds(ge=1)] = 50_000
    # background snapshots written by a forked child, so the process keeps serving (POSIX only)
    snapshot_in_child: bool = True
    # a ceiling for exact search over a filter's candidates (the planner may choose less)
    exact_search_threshold: Annotated[int, Bounds(ge=0)] = 2048
    text_refresh_seconds: Annotated[float, Bounds(gt=0, le=1.0)] = 0.2  # near-real-time bound of text search


@dataclass
class TLSSettings:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    dev_insecure: bool = False  # development only: allow self-signed peers without verification

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass
class RateLimitSettings:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    per_key_per_second: Annotated[float, Bounds(gt=0)] = 1000.0
    per_key_burst: Annotated[int, Bounds(ge=1)] = 2000
    per_ip_per_second: Annotated[float, Bounds(gt=0)] = 2000.0
    per_ip_burst: Annotated[int, Bounds(ge=1)] = 4000
    auth_failures_per_minute: Annotated[int, Bounds(ge=1)] = 20


@dataclass
class ServerSettings:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    host: str = "127.0.0.1"
    port: Annotated[int, Bounds(ge=0, le=65535)] = 7878
    grpc_port: Annotated[int, Bounds(ge=0, le=65535)] = 7879
    grpc_enabled: bool = True
    auth: Literal["auto", "required", "disabled"] = "auto"  # auto = required unless bound to a loopback address
    admin_key_file: Path | None = None
    shutdown_timeout_seconds: Annotated[float, Bounds(ge=0, le=3600)] = 30.0
    max_request_mb: Annotated[int, Bounds(ge=1, le=4096)] = 64
    tls: TLSSettings = field(default_factory=TLSSettings)
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        if self.grpc_enabled and self.port and self.port == self.grpc_port:
            raise ValueError("server.port and server.grpc_port must differ")

    def auth_required(self) -> bool:
        if self.auth != "auto":
            return self.auth == "required"
        import ipaddress

        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"


DEFAULT_EXTRACTION_BASE_URL = "https://api.openai.com/v1"


def _model_name(v: str | None) -> str | None:
    if v is not None and not v.strip():
        raise ValueError("must be a model name, or left unset to disable extraction")
    return v.strip() if v is not None else None


def _chat_url(v: str) -> str:
    if v != DEFAULT_EXTRACTION_BASE_URL:
        from .embed.openai_http import endpoint_url

        try:
            endpoint_url(v, "chat/completions")
        except InvalidArgument as e:
            raise ValueError(e.message) from None
    return v


@dataclass
class ExtractionSettings:
    """The chat model behind the ``extract`` operation (DESIGN.md §6), chosen by the operator.

    API callers cannot name an endpoint: a caller-supplied URL would let any
    writer make the server send requests (with its API key) to any address
    it can reach. Extraction is off until ``model`` is set.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    # chat model name, e.g. gpt-4o-mini; unset = extraction disabled
    model: Annotated[str | None, FieldCheck(_model_name)] = None
    # an OpenAI-compatible endpoint: OpenAI, Ollama, vLLM, ...
    base_url: Annotated[str, FieldCheck(_chat_url)] = DEFAULT_EXTRACTION_BASE_URL
    api_key_env: str | None = None  # environment variable that holds the endpoint's API key
    api_key_file: Path | None = None  # file that holds the endpoint's API key
    timeout_seconds: Annotated[float, Bounds(gt=0, le=600)] = 60.0  # per attempt; a timed-out attempt is not retried
    max_retries: Annotated[int, Bounds(ge=0, le=10)] = 2  # extra attempts after connect errors, 429 and 5xx
    temperature: Annotated[float, Bounds(ge=0, le=2)] = 0.0
    max_tokens: Annotated[int, Bounds(ge=1, le=1_000_000)] | None = None  # cap on the answer's length
    max_concurrent: Annotated[int, Bounds(ge=1, le=1024)] = 8  # extractions running at once; more answer 429

    def __post_init__(self) -> None:
        # pydantic has run the field checks already; direct construction has not.
        self.model = _model_name(self.model)
        _chat_url(self.base_url)
        if self.api_key_env and self.api_key_file:
            raise ValueError("set only one of api_key_env and api_key_file")

    @property
    def enabled(self) -> bool:
        return self.model is not None

    def customised(self) -> bool:
        """True if any setting besides ``model`` differs from its default."""
        return dataclasses.replace(self, model=None) != ExtractionSettings()


ENV_PREFIX = "ENGRAMDB_"


@dataclass
class Settings:
    """All EngramDB settings."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    data_dir: Path = Path("./engramdb-data")
    node_id: Annotated[int, Bounds(ge=0, lt=65536)] = 0
    storage: StorageSettings = field(default_factory=StorageSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    extraction: ExtractionSettings = field(default_factory=ExtractionSettings)


_yaml_data: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("engramdb_yaml", default=None)


@functools.cache
def _sourced_settings() -> Any:
    """A pydantic-settings model with ``Settings``' fields that also reads the environment and the YAML file."""
    from pydantic import create_model
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

    class YamlSource(PydanticBaseSettingsSource):
        def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
            return (_yaml_data.get() or {}).get(field_name), field_name, False

        def __call__(self) -> dict[str, Any]:
            return dict(_yaml_data.get() or {})

    class Sourced(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # Precedence: flags (init) > environment > YAML file.
            return (init_settings, env_settings, YamlSource(settings_cls))

    return create_model("SourcedSettings", __base__=Sourced, **pydantic_fields(Settings))


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    import yaml  # only with a config file: keeps it off the import path of engramdb.open()

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidArgument(f"cannot read config file {path}: {e.strerror}", code="invalid_config") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise InvalidArgument(f"config file {path} is not valid YAML: {e}", code="invalid_config") from e
    if not isinstance(data, dict):
        raise InvalidArgument(f"config file {path} must hold a mapping at the top level", code="invalid_config")
    return data


def load(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings from file + env + overrides; raises InvalidArgument listing every problem.

    ``overrides`` are flag values, given as nested dicts (``server={"port": 1}``);
    None values are ignored so unset flags do not mask the file or environment.
    """
    flags = {k: v for k, v in overrides.items() if v is not None}
    # Environment variable names are matched case-insensitively, as pydantic-settings does.
    from_env = any(name.upper().startswith(ENV_PREFIX) for name in os.environ)
    if config_file is None and not from_env and set(flags) <= {"data_dir"} and _is_path(flags.get("data_dir")):
        # Defaults and a directory: nothing to validate.
        return Settings(data_dir=Path(flags["data_dir"])) if "data_dir" in flags else Settings()
    from pydantic import ValidationError

    token = _yaml_data.set(_read_yaml(config_file) if config_file else {})
    try:
        if config_file is None and not from_env:
            return type_adapter(Settings).validate_python(flags)
        sourced = _sourced_settings()(**flags)
        return Settings(**{f.name: getattr(sourced, f.name) for f in dataclasses.fields(Settings)})
    except ValidationError as e:
        raise InvalidArgument(format_errors(e), code="invalid_config") from e
    finally:
        _yaml_data.reset(token)


def _is_path(v: Any) -> bool:
    return v is None or (isinstance(v, (str, os.PathLike)) and str(v) != "")


def format_errors(e: ValidationError) -> str:
    lines = [f"{len(e.errors())} configuration problem(s):"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  - {loc}: {err['msg']}")
    return "\n".join(lines)


def check(settings: Settings, *, for_server: bool = True) -> list[str]:
    """Problems that need the file system (paths, TLS files); empty when all is well."""
    problems: list[str] = []
    d = settings.data_dir
    probe = d if d.exists() else next((p for p in d.resolve().parents if p.exists()), None)
    if d.exists() and not d.is_dir():
        problems.append(f"data_dir: {d} exists and is not a directory")
    elif probe is None or not os.access(probe, os.W_OK):
        problems.append(f"data_dir: {d} is not writable")
    if for_server:
        tls = settings.server.tls
        if (tls.cert_file is None) != (tls.key_file is None):
            problems.append("server.tls: cert_file and key_file must be given together")
        for name in ("cert_file", "key_file", "client_ca_file"):
            p = getattr(tls, name)
            if p is not None and not Path(p).is_file():
                problems.append(f"server.tls.{name}: {p} does not exist or is not a file")
        if tls.cert_file and tls.key_file and Path(tls.cert_file).is_file() and Path(tls.key_file).is_file():
            import ssl

            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            except (ssl.SSLError, OSError) as e:
                problems.append(f"server.tls: cannot load certificate/key: {e}")
        akf = settings.server.admin_key_file
        if akf is not None and not Path(akf).is_file():
            problems.append(f"server.admin_key_file: {akf} does not exist")
        problems.extend(check_extraction(settings.extraction))
    return problems


def check_extraction(ext: ExtractionSettings) -> list[str]:
    """Problems of an enabled extraction section that need the environment or files (its API key)."""
    if not ext.enabled:
        return []
    from .embed.openai_http import resolve_api_key

    try:
        # Reads the key exactly as the extractor will, so a missing variable or
        # unreadable file stops the start instead of failing the first request.
        resolve_api_key(ext.api_key_env, str(ext.api_key_file) if ext.api_key_file else None)
    except InvalidArgument as e:
        return [f"extraction: {e.message}"]
    return []
