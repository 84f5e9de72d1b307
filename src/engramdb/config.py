"""Settings: a YAML file, then ``ENGRAMDB_*`` environment variables, then flags.

Nested keys use ``__`` in the environment: ``ENGRAMDB_STORAGE__SYNC_WRITES=false``.
Everything is validated before anything starts, and every problem is reported
at once (see :func:`check`).
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import InvalidArgument


class StorageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sync_writes: bool = Field(True, description="fsync the write-ahead log before acknowledging a write")
    write_buffer_mb: int = Field(
        16, ge=1, le=65536, description="memtable size per column family; all share a budget of twice this"
    )
    max_background_jobs: int = Field(2, ge=1, le=64)
    max_wal_mb: int = Field(512, ge=16, le=1_048_576)
    block_cache_mb: int = Field(128, ge=8, le=1_048_576)
    tombstone_grace_seconds: float = Field(10 * 86400, ge=0)
    ttl_sweep_interval_seconds: float = Field(1.0, gt=0, le=3600)


class IndexSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    snapshot_interval_seconds: float = Field(300.0, gt=0)
    snapshot_after_changes: int = Field(50_000, ge=1)
    exact_search_threshold: int = Field(
        2048, ge=0, description="filtered searches with at most this many candidates are exact"
    )
    text_refresh_seconds: float = Field(0.2, gt=0, le=1.0, description="near-real-time bound of text search")


class TLSSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    dev_insecure: bool = Field(False, description="development only: allow self-signed peers without verification")

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class RateLimitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_key_per_second: float = Field(1000.0, gt=0)
    per_key_burst: int = Field(2000, ge=1)
    per_ip_per_second: float = Field(2000.0, gt=0)
    per_ip_burst: int = Field(4000, ge=1)
    auth_failures_per_minute: int = Field(20, ge=1)


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(7878, ge=0, le=65535)
    grpc_port: int = Field(7879, ge=0, le=65535)
    grpc_enabled: bool = True
    auth: Literal["auto", "required", "disabled"] = Field(
        "auto", description="auto = required unless bound to a loopback address"
    )
    admin_key_file: Path | None = None
    shutdown_timeout_seconds: float = Field(30.0, ge=0, le=3600)
    max_request_mb: int = Field(64, ge=1, le=4096)
    tls: TLSSettings = Field(default_factory=TLSSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerSettings:
        if self.grpc_enabled and self.port and self.port == self.grpc_port:
            raise ValueError("server.port and server.grpc_port must differ")
        return self

    def auth_required(self) -> bool:
        if self.auth != "auto":
            return self.auth == "required"
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"


DEFAULT_EXTRACTION_BASE_URL = "https://api.openai.com/v1"


class ExtractionSettings(BaseModel):
    """The chat model behind the ``extract`` operation (DESIGN.md §6), chosen by the operator.

    API callers cannot name an endpoint: a caller-supplied URL would let any
    writer make the server send requests (with its API key) to any address
    it can reach. Extraction is off until ``model`` is set.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="chat model name, e.g. gpt-4o-mini; unset = extraction disabled")
    base_url: str = Field(
        DEFAULT_EXTRACTION_BASE_URL, description="an OpenAI-compatible endpoint: OpenAI, Ollama, vLLM, ..."
    )
    api_key_env: str | None = Field(None, description="environment variable that holds the endpoint's API key")
    api_key_file: Path | None = Field(None, description="file that holds the endpoint's API key")
    timeout_seconds: float = Field(60.0, gt=0, le=600, description="per attempt; a timed-out attempt is not retried")
    max_retries: int = Field(2, ge=0, le=10, description="extra attempts after connect errors, 429 and 5xx")
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="cap on the answer's length")
    max_concurrent: int = Field(
        8, ge=1, le=1024, description="extractions running at once; more answer 429 extraction_busy"
    )

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a model name, or left unset to disable extraction")
        return v.strip() if v is not None else None

    @field_validator("base_url")
    @classmethod
    def _url_ok(cls, v: str) -> str:
        from .embed.openai_http import endpoint_url

        try:
            endpoint_url(v, "chat/completions")
        except InvalidArgument as e:
            raise ValueError(e.message) from None
        return v

    @model_validator(mode="after")
    def _one_key_source(self) -> ExtractionSettings:
        if self.api_key_env and self.api_key_file:
            raise ValueError("set only one of api_key_env and api_key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.model is not None


class Settings(BaseSettings):
    """All EngramDB settings."""

    model_config = SettingsConfigDict(env_prefix="ENGRAMDB_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path("./engramdb-data")
    node_id: int = Field(0, ge=0, lt=65536)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    extraction: ExtractionSettings = Field(default_factory=ExtractionSettings)

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
        return (init_settings, env_settings, _YamlSource(settings_cls))


_yaml_data: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("engramdb_yaml", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_yaml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


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
    token = _yaml_data.set(_read_yaml(config_file) if config_file else {})
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise InvalidArgument(format_errors(e), code="invalid_config") from e
    finally:
        _yaml_data.reset(token)


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
