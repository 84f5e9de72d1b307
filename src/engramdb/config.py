"""Settings: a YAML file, then ``ENGRAMDB_*`` environment variables, then flags.

Nested keys use ``__`` in the environment: ``ENGRAMDB_STORAGE__SYNC_WRITES=false``.
Everything is validated before anything starts, and every problem is reported
at once: :func:`gather` (file, environment, schema) and :func:`check` (file system).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import stat
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from engramdb.errors import InvalidArgument
from engramdb.types import Bounds, FieldCheck, pydantic_fields, type_adapter

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
    # deleted records, edges, collections and tenants are gone from every file within this (0 = no bound)
    erase_within_seconds: Annotated[float, Bounds(ge=0, le=30 * 86400)] = 3600.0
    # RocksDB statistics (block-cache hits and misses in /metrics); they cost 10-20 % on point reads
    statistics: bool = False


@dataclass
class IndexSettings:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    snapshot_interval_seconds: Annotated[float, Bounds(gt=0)] = 300.0
    snapshot_after_changes: Annotated[int, Bounds(ge=1)] = 50_000
    # background snapshots written by a forked child, so the process keeps serving (POSIX only)
    snapshot_in_child: bool = True
    # keep each live vector in the snapshot file too (hnswlib's own format): loading skips reading
    # them back from storage (faster cold start) for twice the disk (docs/decisions.md)
    snapshot_vectors: bool = False
    # a ceiling for exact search over a filter's candidates (the planner may choose less)
    exact_search_threshold: Annotated[int, Bounds(ge=0)] = 2048
    text_refresh_seconds: Annotated[float, Bounds(gt=0, le=1.0)] = 0.2  # near-real-time bound of text search


@dataclass
class TLSSettings:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

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


class _ListFromText:
    """``Annotated`` metadata: a list setting may also be given as text (an environment variable).

    ``a,b`` and the JSON ``["a", "b"]`` both work; nested settings read from
    the environment reach pydantic as plain strings.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def split(v: Any) -> Any:
            if not isinstance(v, str):
                return v
            text = v.strip()
            if text.startswith("["):
                import json

                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError("is not a JSON list; give a JSON list or comma-separated names") from None
            return [part for part in (p.strip() for p in text.split(",")) if part]

        return core_schema.no_info_before_validator_function(split, handler(source))


def _host_names(v: list[str] | None) -> list[str] | None:
    """``server.allowed_hosts``: bare host names or addresses, normalised (lower case, IPv6 without brackets)."""
    if v is None:
        return None
    if not v:
        raise ValueError('list at least one host name, or ["*"] to accept any Host header')
    out: list[str] = []
    for raw in v:
        name = raw.strip().lower().rstrip(".")
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        bare = name[2:] if name.startswith("*.") else name
        if name != "*" and not _is_host_name(bare):
            raise ValueError(
                f"{raw!r} is not a host name or IP address (give names without scheme or port: any port is accepted)"
            )
        out.append(name)
    return out


def _is_host_name(name: str) -> bool:
    import ipaddress
    import re

    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return re.fullmatch(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*", name) is not None


def is_loopback_host(host: str) -> bool:
    """Whether a bind address or host name stays on this machine (a loopback IP, or ``localhost``)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _loopback_host(v: str) -> str:
    """``server.metrics_host``: a loopback address only, since that port serves /metrics without a key."""
    import ipaddress

    host = v.strip().strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"{v!r} is not a loopback address: the metrics port serves /metrics without a key, so it listens on "
            "127.0.0.1 or ::1 only; scrape from another host over server.port with the metrics key "
            "(ENGRAMDB_METRICS_KEY)"
        )
    return host


@dataclass
class ServerSettings:
    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    host: str = "127.0.0.1"
    port: Annotated[int, Bounds(ge=0, le=65535)] = 7878
    grpc_port: Annotated[int, Bounds(ge=0, le=65535)] = 7879
    grpc_enabled: bool = True
    # auto = required unless bound to a loopback address with no key at all (see auth_required)
    auth: Literal["auto", "required", "disabled"] = "auto"
    admin_key_file: Path | None = None
    metrics_key_file: Path | None = None  # a key that grants /metrics only (or ENGRAMDB_METRICS_KEY)
    shutdown_timeout_seconds: Annotated[float, Bounds(ge=0, le=3600)] = 30.0
    max_request_mb: Annotated[int, Bounds(ge=1, le=4096)] = 64
    # Host names REST answers to (any port; "*.example.com" for subdomains, "*" for any); unset = derived,
    # see engramdb.server.rest.guards.allowed_hosts. Requests naming another Host get 421 (DNS rebinding).
    allowed_hosts: Annotated[list[str] | None, _ListFromText(), FieldCheck(_host_names)] = None
    # open REST connections; beyond it idle or half-sent ones are closed first, else new ones are refused
    max_connections: Annotated[int, Bounds(ge=1, le=1_000_000)] = 1000
    max_header_kb: Annotated[int, Bounds(ge=1, le=1024)] = 32  # request line + headers of one REST request
    # to receive a request's head; a body must also bring at least 1 KiB per such period
    header_timeout_seconds: Annotated[float, Bounds(gt=0, le=600)] = 10.0
    # threads serving gRPC calls (each call holds one until it ends); 0 = min(64, 16 x CPUs). Fewer threads
    # contend less for the GIL: 4 gave read-heavy loads ~1.1x the QPS and a lower p99 (docs/benchmarks.md),
    # at the price of fewer durable writes waiting on one group commit at once
    grpc_max_workers: Annotated[int, Bounds(ge=0, le=1024)] = 0
    # time budget of one count, scan or search; past it the request fails with deadline_exceeded
    query_timeout_seconds: Annotated[float, Bounds(gt=0, le=3600)] = 10.0
    tls: TLSSettings = field(default_factory=TLSSettings)
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # a second port serving only /metrics, without a key, on a loopback address (0 = off)
    metrics_port: Annotated[int, Bounds(ge=0, le=65535)] = 0
    metrics_host: Annotated[str, FieldCheck(_loopback_host)] = "127.0.0.1"
    # collections with their own tenant/collection labels in /metrics; the rest are summed under "_other"
    metrics_max_collections: Annotated[int, Bounds(ge=0, le=10_000)] = 100
    # /ready answers 503 while the data directory's file system has less free space than this (0 = no check)
    min_free_disk_mb: Annotated[int, Bounds(ge=0, le=1_048_576)] = 100

    def __post_init__(self) -> None:
        if self.grpc_enabled and self.port and self.port == self.grpc_port:
            raise ValueError("server.port and server.grpc_port must differ")
        _loopback_host(self.metrics_host)
        if self.metrics_port and self.metrics_port in (self.port, self.grpc_port if self.grpc_enabled else -1):
            raise ValueError("server.metrics_port must differ from server.port and server.grpc_port")

    def auth_required(self, *, any_key: bool = False) -> bool:
        """Whether every request needs a key.

        ``auto`` allows requests without a key (development mode, confined to
        tenant ``default``) only on a loopback address and only while no key
        exists at all: ``any_key`` is true once a bootstrap or metrics key is
        configured or an API key is stored.
        """
        if self.auth != "auto":
            return self.auth == "required"
        if any_key:
            return True
        return not is_loopback_host(self.host)


def _otlp_url(v: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL of an OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces")
    return v


def _service_name(v: str) -> str:
    if not v.strip() or len(v) > 200 or not v.isprintable():
        raise ValueError("must be 1-200 printable characters, e.g. engramdb")
    return v


@dataclass
class TracingSettings:
    """OpenTelemetry tracing (docs/observability.md); off unless ``enabled``, needs the ``otel`` extra."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    enabled: bool = False
    # where spans are sent (OTLP over HTTP, protobuf); chosen by the operator, never by an API caller
    otlp_endpoint: Annotated[str, FieldCheck(_otlp_url)] = "http://127.0.0.1:4318/v1/traces"
    service_name: Annotated[str, FieldCheck(_service_name)] = "engramdb"  # the service.name resource attribute
    # share of new traces recorded; a request that arrives with a sampled traceparent is always recorded
    sample_ratio: Annotated[float, Bounds(ge=0, le=1)] = 1.0

    def __post_init__(self) -> None:
        _otlp_url(self.otlp_endpoint)
        _service_name(self.service_name)


@dataclass
class BackupSettings:
    """Backups through the admin API (docs/backup.md): callers name a backup, the operator chooses where."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    # the directory the admin API writes backups into (unset = no backups through the API); outside data_dir
    dir: Path | None = None


DEFAULT_EXTRACTION_BASE_URL = "https://api.openai.com/v1"


def _model_name(v: str | None) -> str | None:
    if v is not None and not v.strip():
        raise ValueError("must be a model name, or left unset to disable extraction")
    return v.strip() if v is not None else None


def _chat_url(v: str) -> str:
    if v != DEFAULT_EXTRACTION_BASE_URL:
        from engramdb.openai_http import endpoint_url

        try:
            endpoint_url(v, "chat/completions")
        except InvalidArgument as e:
            raise ValueError(e.message) from None
    return v


@dataclass
class ExtractionSettings:
    """The chat model behind the ``extract`` operation (docs/api-contract.md), chosen by the operator.

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


def _embed_url(v: str | None) -> str | None:
    if v is not None:
        from engramdb.openai_http import endpoint_url

        try:
            endpoint_url(v, "embeddings")
        except InvalidArgument as e:
            raise ValueError(e.message) from None
    return v


@dataclass
class EmbedderProfile:
    """An embedder the operator offers to API callers by name (``embedders.<name>``).

    API callers pick a profile (``"embedder": {"profile": "<name>"}``) and
    never name an endpoint, key or model path themselves: a caller-chosen URL
    with a server-side key would let any writer send that key anywhere.
    Collections store the profile's name only, so the endpoint and key can be
    changed here later.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    provider: Literal["local", "openai"]
    # local: unset (the bundled all-MiniLM-L6-v2) or a model directory; openai: the model name
    model: str | None = None
    # openai only: the OpenAI-compatible endpoint; unset = https://api.openai.com/v1
    base_url: Annotated[str | None, FieldCheck(_embed_url)] = None
    api_key_env: str | None = None  # environment variable that holds the endpoint's API key
    api_key_file: Path | None = None  # file that holds the endpoint's API key
    timeout_seconds: Annotated[float, Bounds(gt=0, le=600)] = 30.0  # per attempt
    max_retries: Annotated[int, Bounds(ge=0, le=10)] = 3
    dimension: Annotated[int, Bounds(ge=1, le=4096)] | None = None  # unset = learned from the model
    enabled: bool = True  # false withdraws the profile (e.g. the built-in "local") without forgetting its name

    def __post_init__(self) -> None:
        _embed_url(self.base_url)
        if self.api_key_env and self.api_key_file:
            raise ValueError("set only one of api_key_env and api_key_file")
        if self.provider == "openai" and not (self.model and self.model.strip()):
            raise ValueError("provider 'openai' needs model (e.g. text-embedding-3-small)")
        if self.provider == "local":
            stray = [f for f in ("base_url", "api_key_env", "api_key_file") if getattr(self, f) is not None]
            if stray:
                raise ValueError(f"provider 'local' runs in-process; remove {', '.join(stray)}")


# Available unless the operator defines a profile of the same name: the packaged model runs in-process,
# so it reaches no network, reads no key and loads nothing a caller names.
BUILTIN_EMBEDDERS: dict[str, EmbedderProfile] = {"local": EmbedderProfile(provider="local")}


def _embedder_names(v: dict[str, EmbedderProfile]) -> dict[str, EmbedderProfile]:
    from engramdb.types import EMBEDDER_PROFILE_RULE, is_profile_name

    bad = sorted(name for name in v if not is_profile_name(name))
    if bad:
        raise ValueError(f"embedder profile names are {EMBEDDER_PROFILE_RULE}; not {', '.join(map(repr, bad))}")
    return v


def embedder_profiles(settings: Settings) -> dict[str, EmbedderProfile]:
    """Every embedder profile: the built-in ones, overridden by the operator's ``embedders``."""
    return {**BUILTIN_EMBEDDERS, **settings.embedders}


def check_embedders(settings: Settings) -> list[str]:
    """Problems of enabled embedder profiles that need the environment or files (API keys, model directories)."""
    from engramdb.openai_http import resolve_api_key

    problems = []
    for name, prof in sorted(settings.embedders.items()):
        if not prof.enabled:
            continue
        try:
            # Read exactly as the embedder will, so a missing key stops the start instead of the first write.
            resolve_api_key(prof.api_key_env, str(prof.api_key_file) if prof.api_key_file else None)
        except InvalidArgument as e:
            problems.append(f"embedders.{name}: {e.message}")
        if prof.provider == "local" and prof.model is not None:
            from engramdb.embed.local import is_bundled_model

            if not is_bundled_model(prof.model) and not Path(prof.model).expanduser().is_dir():
                problems.append(f"embedders.{name}.model: {prof.model} is not a sentence-transformers model directory")
    return problems


# The bound of engramdb.cluster.ring.MAX_SHARDS, repeated because the cluster layer sits above the settings
# (tests/unit/test_cluster_config.py pins the two equal).
CLUSTER_MAX_SHARDS = 4096
CLUSTER_MAX_ETCD_ENDPOINTS = 16
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


def _cluster_name(v: str) -> str:
    from engramdb.validation import NAME_RE, NAME_RULE

    if not NAME_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not a valid name: use {NAME_RULE}")
    return v


def _node_id(v: str | None) -> str | None:
    return None if v is None else _cluster_name(v)


def _etcd_endpoints(v: list[str]) -> list[str]:
    from urllib.parse import urlsplit

    if not v:
        raise ValueError("list at least one etcd endpoint, e.g. http://127.0.0.1:2379")
    if len(v) > CLUSTER_MAX_ETCD_ENDPOINTS:
        raise ValueError(f"at most {CLUSTER_MAX_ETCD_ENDPOINTS} etcd endpoints, got {len(v)}")
    for url in v:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or port is None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ValueError(
                f"{url!r} is not an etcd client URL: give http(s)://host:port with nothing after the port "
                "(e.g. http://127.0.0.1:2379; etcd credentials are client certificates, not URL user info)"
            )
    return v


def _split_host_port(v: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{v!r}: write an IPv6 address in brackets, e.g. [::1]:7880")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{v!r} is not host:port (a port from 1 to 65535), e.g. 10.0.0.5:7880")
    return host, int(port)


def _peer_host(v: str) -> str:
    host = v.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not _is_host_name(host):
        raise ValueError(f"{v!r} is not a host name or IP address (no scheme or port: the port is cluster.peer_port)")
    return host


def _advertise(v: str | None) -> str | None:
    if v is None:
        return None
    host, _ = _split_host_port(v.strip())
    if not _is_host_name(host.lower()):
        raise ValueError(f"{v!r}: {host!r} is not a host name or IP address")
    if host in _WILDCARD_HOSTS:
        raise ValueError(f"{v!r}: other nodes cannot dial a wildcard address; give this node's own address or name")
    return v.strip()


def _cluster_shards(v: int) -> int:
    if not 1 <= v <= CLUSTER_MAX_SHARDS or v & (v - 1):
        raise ValueError(f"must be a power of two from 1 to {CLUSTER_MAX_SHARDS} (1, 2, 4, 8, ...), got {v}")
    return v


Consistency = Literal["one", "quorum", "all"]


@dataclass
class ClusterSettings:
    """Cluster mode (docs/cluster.md): this node's identity, etcd, the node-to-node service, defaults.

    Off unless ``enabled``; needs the ``cluster`` extra. Every address here is the operator's: API
    callers never choose an etcd endpoint or a peer.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = _STRICT_KEYS

    enabled: bool = False
    name: Annotated[str, FieldCheck(_cluster_name)] = "engramdb"  # etcd key prefix /engramdb/<name>/
    # unset = generated at the first start and kept in <data_dir>/cluster-node-id
    node_id: Annotated[str | None, FieldCheck(_node_id)] = None
    etcd_endpoints: Annotated[list[str], _ListFromText(), FieldCheck(_etcd_endpoints)] = field(
        default_factory=lambda: ["http://127.0.0.1:2379"]
    )
    etcd_ca_file: Path | None = None  # CA bundle that signed etcd's certificate
    etcd_cert_file: Path | None = None  # client certificate for etcd (with etcd_key_file)
    etcd_key_file: Path | None = None
    peer_host: Annotated[str, FieldCheck(_peer_host)] = "127.0.0.1"  # where the node-to-node gRPC service listens
    peer_port: Annotated[int, Bounds(ge=1, le=65535)] = 7880
    advertise: Annotated[str | None, FieldCheck(_advertise)] = None  # host:port other nodes dial; unset = peer_host
    default_replication_factor: Annotated[int, Bounds(ge=1, le=16)] = 3
    default_shards: Annotated[int, FieldCheck(_cluster_shards)] = 8
    write_consistency: Consistency = "quorum"
    read_consistency: Consistency = "quorum"
    search_consistency: Consistency = "one"
    lease_ttl_seconds: Annotated[int, Bounds(ge=2, le=300)] = 10  # a node silent this long is down
    peer_timeout_seconds: Annotated[float, Bounds(gt=0, le=600)] = 5.0  # deadline of one node-to-node call
    breaker_failures: Annotated[int, Bounds(ge=1, le=1000)] = 5  # failures in a row that open a peer's breaker
    breaker_open_seconds: Annotated[float, Bounds(gt=0, le=3600)] = 5.0  # how long it stays open
    vnodes: Annotated[int, Bounds(ge=1, le=1024)] = 256  # virtual nodes per node on the token ring
    gc_grace_seconds: Annotated[float, Bounds(ge=0)] = 864000.0
    # after a write has its acks, how long it waits for the other replicas' (0: not at all)
    write_settle_ms: Annotated[int, Bounds(ge=0, le=1000)] = 100

    def __post_init__(self) -> None:
        # pydantic has run the field checks already; direct construction has not.
        _cluster_name(self.name)
        _node_id(self.node_id)
        _etcd_endpoints(self.etcd_endpoints)
        self.peer_host = _peer_host(self.peer_host)
        self.advertise = _advertise(self.advertise)
        _cluster_shards(self.default_shards)

    def advertised(self) -> str:
        """The ``host:port`` other nodes dial to reach this one's node-to-node service."""
        if self.advertise is not None:
            return self.advertise
        if self.peer_host in _WILDCARD_HOSTS:
            raise InvalidArgument(
                f"cluster.advertise is needed: cluster.peer_host {self.peer_host} listens on every address, "
                "so other nodes need to be told which one to dial",
                code="invalid_config",
            )
        host = f"[{self.peer_host}]" if ":" in self.peer_host else self.peer_host
        return f"{host}:{self.peer_port}"


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
    tracing: TracingSettings = field(default_factory=TracingSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    # named embedder profiles API callers may choose (ENGRAMDB_EMBEDDERS__<NAME>__<SETTING>)
    embedders: Annotated[dict[str, EmbedderProfile], FieldCheck(_embedder_names)] = field(default_factory=dict)


# ENGRAMDB_* environment variables that are not settings, and who reads them. Every other ENGRAMDB_* name
# must be a setting: an unknown one (a misspelled section or setting name) is a configuration problem,
# never silently ignored. tests/unit/test_config_docs.py fails on an ENGRAMDB_* name used in the code base,
# tests or docs that is neither a setting nor listed here.
NON_SETTING_ENV: dict[str, str] = {
    "ENGRAMDB_ADMIN_KEY": "the server's bootstrap admin key",
    "ENGRAMDB_METRICS_KEY": "the server's key for /metrics only",
    "ENGRAMDB_API_KEY": "the client's default API key",
    "ENGRAMDB_DATA": "the dataset folder of EngramDB's own tests and benchmarks",
    "ENGRAMDB_SOAK_CYCLES": "the kill -9 cycles of EngramDB's soak tests",
    "ENGRAMDB_TEST_FUZZ_EXAMPLES": "the examples per operation of EngramDB's API fuzz test",
    "ENGRAMDB_SRC": "the source tree EngramDB's filter-cost benchmark measures",
}
# Of those, the ones only EngramDB's own tests and benchmarks read: the server warns that it ignores them.
DEV_ONLY_ENV = frozenset({"ENGRAMDB_DATA", "ENGRAMDB_SOAK_CYCLES", "ENGRAMDB_TEST_FUZZ_EXAMPLES", "ENGRAMDB_SRC"})

# Settings that no longer exist, and what to do instead. A configuration that still names one is refused
# with this explanation (rather than pydantic's "extra inputs are not permitted").
REMOVED_SETTINGS: dict[str, str] = {
    "server.tls.dev_insecure": (
        "was removed: it never changed any certificate check (client certificates are verified against "
        "server.tls.client_ca_file, the HTTPS endpoints of embedders and extraction always); delete it, and to "
        "accept a self-signed client certificate add that certificate to server.tls.client_ca_file"
    ),
}


def setting_names() -> list[tuple[str, bool]]:
    """Every setting's dotted name with whether it is a section (a group of settings), each before its settings.

    Walks the ``Settings`` dataclasses, so a new field is known here at once. A mapping field
    (``embedders``) accepts any key: ``*`` stands for it (``embedders.*.base_url``).
    """
    return list(_setting_names())


@functools.cache
def _setting_names() -> tuple[tuple[str, bool], ...]:
    import typing

    def unwrap(tp: Any) -> Any:
        while typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, UnionType) and len(args) == 1:
            return unwrap(args[0])
        return tp

    def walk(cls: type, prefix: str) -> Iterator[tuple[str, bool]]:
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            name, tp = prefix + f.name, unwrap(hints[f.name])
            if dataclasses.is_dataclass(tp):
                yield name, True
                yield from walk(tp, name + ".")  # type: ignore[arg-type]
            elif typing.get_origin(tp) is dict:
                yield name, True
                value = unwrap(typing.get_args(tp)[1])
                yield name + ".*", dataclasses.is_dataclass(value)
                if dataclasses.is_dataclass(value):
                    yield from walk(value, name + ".*.")  # type: ignore[arg-type]
            else:
                yield name, False

    return tuple(walk(Settings, ""))


def _env_segments(name: str) -> list[str]:
    return name[len(ENV_PREFIX) :].lower().split("__")


def _env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "__").upper()


def _is_setting(segments: list[str]) -> bool:
    for dotted, _ in _setting_names():
        pattern = dotted.split(".")
        if len(pattern) == len(segments) and all(p in ("*", s) for p, s in zip(pattern, segments, strict=True)):
            return True
    return False


def _suggest(name: str, segments: list[str]) -> str | None:
    """The valid ``ENGRAMDB_*`` name closest to ``name``, if any is close."""
    import difflib

    candidates: dict[str, str] = {}
    for dotted, _ in _setting_names():
        pattern = dotted.split(".")
        # A mapping key keeps the user's spelling when the lengths agree: a misspelled setting of embedder
        # profile "mine" suggests the right setting of "mine", not of "<NAME>".
        fill = [s if p == "*" else p for p, s in zip(pattern, segments, strict=False)] + pattern[len(segments) :]
        full = _env_name(".".join(p if p != "*" else "<NAME>" for p in fill))
        candidates[full[len(ENV_PREFIX) :]] = full
    for other in NON_SETTING_ENV:
        candidates[other[len(ENV_PREFIX) :]] = other
    close = difflib.get_close_matches(name.upper()[len(ENV_PREFIX) :], list(candidates), n=1, cutoff=0.8)
    return candidates[close[0]] if close else None


def env_problems(environ: Mapping[str, str] | None = None, *, allowed: Collection[str] = ()) -> list[str]:
    """Every ``ENGRAMDB_*`` environment variable that is neither a setting nor a known non-setting name.

    ``allowed``: more names (upper case) that are not problems, e.g. those ``api_key_env`` settings name.
    """
    environ = os.environ if environ is None else environ
    problems = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in NON_SETTING_ENV or name.upper() in allowed:
            continue
        segments = _env_segments(name)
        if _is_setting(segments):
            continue
        removed = ".".join(segments)
        if removed in REMOVED_SETTINGS:
            problems.append(f"{name}: {removed} {REMOVED_SETTINGS[removed]}")
            continue
        hint = _suggest(name, segments)
        problems.append(
            f"{name}: not an EngramDB setting"
            + (f" (did you mean {hint}?)" if hint else "; names are like ENGRAMDB_STORAGE__SYNC_WRITES")
            + "; rename or unset it (settings: docs/server.md)"
        )
    return problems


def _named_key_vars(raw: Any) -> set[str]:
    """The environment variables that ``*.api_key_env`` settings name, in upper case."""
    if not isinstance(raw, dict):
        return set()
    found = {v.upper() for k, v in raw.items() if k == "api_key_env" and isinstance(v, str)}
    for v in raw.values():
        found |= _named_key_vars(v)
    return found


def dev_only_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings for ``ENGRAMDB_*`` variables that only EngramDB's own tests and benchmarks read."""
    environ = os.environ if environ is None else environ
    names = sorted(n for n in environ if n.upper() in DEV_ONLY_ENV)
    return [
        f"{n} is {NON_SETTING_ENV[n.upper()]}; the server ignores it"
        + (" (its data directory is data_dir, ENGRAMDB_DATA_DIR)" if n.upper() == "ENGRAMDB_DATA" else "")
        for n in names
    ]


@functools.cache
def _env_readers() -> dict[str, Any]:
    """One pydantic-settings model per top-level setting, so that a bad value in one is reported alone."""
    from pydantic import create_model
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Sourced(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    return {
        name: create_model(f"Env_{name}", __base__=Sourced, **{name: spec})
        for name, spec in pydantic_fields(Settings).items()
    }


def _read_env(problems: list[str]) -> dict[str, Any]:
    """The settings given by ``ENGRAMDB_*`` variables, as raw values (pydantic-settings' parsing)."""
    from pydantic_settings import EnvSettingsSource, SettingsError

    values: dict[str, Any] = {}
    for name, model in _env_readers().items():
        try:
            values.update(EnvSettingsSource(model)())
        except SettingsError as e:
            var = _env_name(name)
            problems.append(f"{var} or {var}__*: cannot parse the value: {e.__cause__ or e}")
    # Unknown and removed names under a known section (a misspelled server setting) are reported by env_problems;
    # dropped here so the schema does not report them a second time as "extra inputs".
    for var in os.environ:
        if var.upper().startswith(ENV_PREFIX) and var.upper() not in NON_SETTING_ENV:
            segments = _env_segments(var)
            if not _is_setting(segments):
                _pop(values, segments, prune=True)
    return values


def _pop(data: dict[str, Any], path: list[str], *, prune: bool = False) -> bool:
    """Remove ``path`` from nested dicts; whether it was there. ``prune`` also removes parents left empty."""
    parents = []
    for key in path[:-1]:
        parents.append((data, key))
        data = data.get(key)  # type: ignore[assignment]
        if not isinstance(data, dict):
            return False
    if data.pop(path[-1], _MISSING) is _MISSING:
        return False
    for parent, key in reversed(parents if prune else []):
        if parent[key]:
            break
        del parent[key]
    return True


_MISSING = object()


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, merging nested dicts (a section set in the file and one key of it in the env)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class Gathered:
    """The whole configuration with every problem found in it, for ``config check`` and ``serve``.

    ``settings`` is usable even when ``problems`` is not empty: each invalid value is replaced by its
    default, and ``invalid`` names those settings, so that the file-system checks still run on the rest
    without reporting on defaults the user did not choose (see :func:`affected`).
    """

    settings: Settings
    problems: list[str]
    invalid: frozenset[str] = frozenset()


def gather(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Gathered:
    """Settings from file + env + overrides, and every problem in them at once (nothing raises).

    Problems: an unreadable or malformed file, an unparsable or unknown ``ENGRAMDB_*`` variable, a removed
    setting, and every schema error (types, ranges, unknown keys). Precedence: flags > environment > file.
    """
    from pydantic import ValidationError

    flags = {k: v for k, v in overrides.items() if v is not None}
    problems: list[str] = []
    file_data: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_data = _read_yaml(config_file)
        except InvalidArgument as e:
            problems.append(e.message)
    env_data = _read_env(problems)
    raw = _merge(_merge(file_data, env_data), flags)
    # A variable that the configuration names as an API key's holder is the operator's, whatever its name.
    problems.extend(env_problems(allowed=_named_key_vars(raw)))
    for dotted, why in REMOVED_SETTINGS.items():
        if _pop(raw, dotted.split(".")):
            problems.append(f"{dotted} {why}")
    adapter = type_adapter(Settings)
    invalid: set[str] = set()
    # Drop what the schema rejects and validate again: the rest is still checked against the file system.
    for attempt in range(10):
        try:
            settings = adapter.validate_python(raw)
            break
        except ValidationError as e:
            if attempt == 0:
                problems.extend(_error_lines(e))
            # Every target is found before any is removed: removing one must not widen the next.
            targets = [_present(raw, [str(p) for p in err["loc"]]) for err in e.errors()]
            if any(not t for t in targets):
                raw.clear()
            for t in targets:
                if t:
                    _pop(raw, t)
                invalid.add(".".join(t))  # "" = everything
    else:
        settings, invalid = Settings(), {""}
    return Gathered(settings, problems, frozenset(invalid))


def _present(raw: dict[str, Any], loc: list[str]) -> list[str]:
    """The longest start of ``loc`` that is a key path in ``raw`` ([] when not even its first key is)."""
    node, depth = raw, 0
    for key in loc:
        if not isinstance(node, dict) or key not in node:
            break
        node, depth = node[key], depth + 1
    return loc[:depth]


def affected(problem: str, invalid: Collection[str]) -> bool:
    """Whether ``problem`` (``"server.tls: ..."``) concerns a setting whose invalid value was replaced."""
    name = problem.split(":", 1)[0]
    return any(inv == "" or name == inv or name.startswith(inv + ".") or inv.startswith(name + ".") for inv in invalid)


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
    Problems are those of :func:`gather`; the file system is not looked at (see :func:`check`).
    """
    flags = {k: v for k, v in overrides.items() if v is not None}
    # Environment variable names are matched case-insensitively, as pydantic-settings does.
    from_env = any(n.upper().startswith(ENV_PREFIX) and n.upper() not in NON_SETTING_ENV for n in os.environ)
    if config_file is None and not from_env and set(flags) <= {"data_dir"} and _is_path(flags.get("data_dir")):
        # Defaults and a directory: nothing to validate.
        return Settings(data_dir=Path(flags["data_dir"])) if "data_dir" in flags else Settings()
    got = gather(config_file, **flags)
    if got.problems:
        raise InvalidArgument(format_problems(got.problems), code="invalid_config")
    return got.settings


def _is_path(v: Any) -> bool:
    return v is None or (isinstance(v, (str, os.PathLike)) and str(v) != "")


def _error_lines(e: ValidationError) -> list[str]:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            lines.append(f"{loc}: not an EngramDB setting{_did_you_mean(loc)}")
        else:
            lines.append(f"{loc}: {err['msg']}")
    return lines


def _did_you_mean(dotted: str) -> str:
    import difflib

    # Among the siblings only: the section is right (else the error would be about the section).
    *parent, leaf = dotted.split(".")
    siblings = set()
    for pattern, _ in _setting_names():
        *p_parent, p_leaf = pattern.split(".")
        if len(p_parent) == len(parent) and all(p in ("*", g) for p, g in zip(p_parent, parent, strict=True)):
            siblings.add(p_leaf)
    close = difflib.get_close_matches(leaf, sorted(siblings), n=1, cutoff=0.7)
    return f" (did you mean {'.'.join([*parent, close[0]])}?)" if close else ""


def format_problems(problems: Sequence[str]) -> str:
    """The one report of every configuration problem that ``config check``, ``serve`` and ``load`` print."""
    return "\n".join([f"{len(problems)} configuration problem(s):", *(f"  - {p}" for p in problems)])


def format_errors(e: ValidationError) -> str:
    return format_problems(_error_lines(e))


def check(settings: Settings, *, for_server: bool = True) -> list[str]:
    """Problems that need the file system (paths, TLS files); empty when all is well."""
    problems = check_data_dir(settings.data_dir)
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
        mkf = settings.server.metrics_key_file
        if mkf is not None and not Path(mkf).is_file():
            problems.append(f"server.metrics_key_file: {mkf} does not exist")
        problems.extend(check_extraction(settings.extraction))
        problems.extend(check_embedders(settings))
        problems.extend(check_tracing(settings.tracing))
        problems.extend(check_backup(settings))
        problems.extend(check_cluster(settings))
    return problems


def check_cluster(settings: Settings) -> list[str]:
    """Problems of the cluster section that the schema cannot see: other sections, files, installed modules."""
    c = settings.cluster
    problems = []
    if (c.etcd_cert_file is None) != (c.etcd_key_file is None):
        problems.append("cluster: etcd_cert_file and etcd_key_file must be given together (etcd client TLS)")
    for name in ("etcd_ca_file", "etcd_cert_file", "etcd_key_file"):
        p = getattr(c, name)
        if p is not None and not Path(p).is_file():
            problems.append(f"cluster.{name}: {p} does not exist or is not a file")
    if not c.enabled:
        return problems
    if _missing_module("etcd3gw"):
        problems.append(
            "cluster.enabled: the etcd client is not installed (etcd3gw); install it with "
            "pip install 'engramdb[cluster]' or set cluster.enabled: false"
        )
    srv = settings.server
    taken = {"server.port": srv.port, "server.metrics_port": srv.metrics_port}
    if srv.grpc_enabled:
        taken["server.grpc_port"] = srv.grpc_port
    for other, port in taken.items():
        if port == c.peer_port:
            problems.append(
                f"cluster.peer_port: {c.peer_port} is also {other}; the node-to-node service needs its own port"
            )
    if c.advertise is None and c.peer_host in _WILDCARD_HOSTS:
        problems.append(
            f"cluster.advertise: cluster.peer_host {c.peer_host} listens on every address; set cluster.advertise to "
            "the host:port other nodes dial to reach this one (e.g. 10.0.0.5:7880)"
        )
    if srv.tls.enabled and srv.tls.client_ca_file is None:
        problems.append(
            "server.tls.client_ca_file: cluster mode with TLS needs the cluster CA here: the node-to-node service "
            "uses mutual TLS with server.tls.cert_file/key_file, and a node accepts only peers whose certificate "
            "this CA signed (it then also requires client certificates of API clients)"
        )
    return problems


def check_backup(settings: Settings) -> list[str]:
    """``backup.dir`` must be a directory (or creatable) outside the data directory, which a restore replaces."""
    d = settings.backup.dir
    if d is None:
        return []
    try:
        b, data = d.expanduser().resolve(), settings.data_dir.expanduser().resolve()
    except (OSError, RuntimeError) as e:
        return [f"backup.dir: {d}: {e}"]
    if b == data or data in b.parents or b in data.parents:
        return [
            f"backup.dir: {d} must be outside data_dir {settings.data_dir} (and not contain it): "
            "restoring a backup replaces the data directory with everything in it"
        ]
    if b.exists() and not b.is_dir():
        return [f"backup.dir: {d} exists and is not a directory"]
    return []


def check_tracing(cfg: TracingSettings) -> list[str]:
    """Problems of enabled tracing that the schema cannot see: the OpenTelemetry SDK must be installed."""
    if not cfg.enabled:
        return []
    missing = [m for m in ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http") if _missing_module(m)]
    if missing:
        return [
            f"tracing.enabled: the OpenTelemetry SDK and OTLP exporter are not installed ({', '.join(missing)}); "
            "install them with pip install 'engramdb[otel]' or set tracing.enabled: false"
        ]
    return []


def _missing_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:  # a parent package is missing
        return True


def check_data_dir(d: Path) -> list[str]:
    """Why the data directory could not be used or created (as ``Database`` will: ``mkdir -p``), creating nothing."""
    try:
        target = d.expanduser().resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        return [f"data_dir: {d}: {e}"]
    for p in (target, *target.parents):
        try:
            st = p.stat()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            # Missing (to be created), or under a file or an unreadable directory: the nearest
            # existing ancestor says which.
            continue
        except OSError as e:
            return [f"data_dir: {d}: cannot inspect {p}: {e.strerror}"]
        if not stat.S_ISDIR(st.st_mode):
            if p == target:
                return [f"data_dir: {d} exists and is not a directory"]
            return [f"data_dir: {d} cannot be created: {p} is a file, not a directory"]
        if p == target:
            if not os.access(p, os.R_OK | os.W_OK | os.X_OK):
                return [f"data_dir: {d} is not writable (needs read, write and search permission)"]
        elif not os.access(p, os.W_OK | os.X_OK):
            return [f"data_dir: {d} cannot be created: {p} is not writable"]
        return []
    return [f"data_dir: {d} cannot be created: no part of it exists"]


def check_extraction(ext: ExtractionSettings) -> list[str]:
    """Problems of an enabled extraction section that need the environment or files (its API key)."""
    if not ext.enabled:
        return []
    from engramdb.openai_http import resolve_api_key

    try:
        # Reads the key exactly as the extractor will, so a missing variable or
        # unreadable file stops the start instead of failing the first request.
        resolve_api_key(ext.api_key_env, str(ext.api_key_file) if ext.api_key_file else None)
    except InvalidArgument as e:
        return [f"extraction: {e.message}"]
    return []
