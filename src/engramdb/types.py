"""Public data types shared by the engine, the servers and the clients."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, TypeVar

from engramdb import validation
from engramdb.errors import InvalidArgument

# The bounds live with the rules that apply them (validation.py); these names stay importable from here.
from engramdb.validation import (  # noqa: F401
    INCLUDE_FIELDS,
    MAX_DIMENSION,
    MAX_ID_BYTES,
    MAX_K,
    MAX_REPLICATION_FACTOR,
    MAX_SHARDS,
    MAX_TTL_SECONDS,
    NAME_RE,
)

if TYPE_CHECKING:
    from pydantic import TypeAdapter

Metric = Literal["cosine", "dot", "l2"]
FieldType = Literal["keyword", "int", "float", "bool"]
Direction = Literal["out", "in", "both"]
SearchMode = Literal["vector", "text", "hybrid"]

T = TypeVar("T")


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def type_adapter(cls: type[T]) -> TypeAdapter[T]:
    """pydantic's validator for ``cls``, built once (pydantic is imported on first use)."""
    ta = _ADAPTERS.get(cls)
    if ta is None:
        from pydantic import TypeAdapter

        ta = _ADAPTERS[cls] = TypeAdapter(cls)
    return ta


class Bounds:
    """``Annotated`` metadata: numeric bounds that pydantic enforces and documents.

    Plain data until pydantic builds a validator (no import of pydantic or
    annotated-types on the way to ``engramdb.open()``).
    """

    __slots__ = ("ge", "gt", "le", "lt")

    def __init__(
        self, *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
    ):
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt

    def __get_pydantic_core_schema__(self, source: Any, handler: Callable[[Any], Any]) -> Any:
        schema = handler(source)
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None:
                schema[name] = value
        return schema


class FieldCheck:
    """``Annotated`` metadata: a check pydantic runs on a field after its type (a ``ValueError`` fails it).

    Errors name the field and come together with the other fields' errors;
    pydantic is imported only when it validates.
    """

    def __init__(self, check: Callable[[Any], Any]):
        self.check = check

    def __get_pydantic_core_schema__(self, source: Any, handler: Callable[[Any], Any]) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(self.check, handler(source))


def pydantic_fields(cls: type) -> dict[str, Any]:
    """A dataclass's fields as ``pydantic.create_model`` arguments (type, default), for models built from it."""
    import dataclasses
    import typing

    from pydantic import Field

    hints = typing.get_type_hints(cls, include_extras=True)
    spec: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            spec[f.name] = (hints[f.name], Field(default_factory=f.default_factory))
        elif f.default is not dataclasses.MISSING:
            spec[f.name] = (hints[f.name], Field(default=f.default))
        else:
            spec[f.name] = (hints[f.name], ...)
    return spec


class _Validated:
    """``model_validate`` / ``model_dump`` for the configuration dataclasses.

    They are plain dataclasses, so that opening a database does not import
    pydantic (a third of a cold start); pydantic validates them, reading the
    ``Annotated`` bounds, ``__pydantic_config__`` and ``__post_init__``, only
    when untrusted input arrives.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        """Validate a mapping (or an instance); raises ``pydantic.ValidationError``."""
        return type_adapter(cls).validate_python(data)

    def model_dump(self, *, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """The fields as a dict (``mode="json"``: JSON-compatible values)."""
        out: dict[str, Any] = type_adapter(type(self)).dump_python(self, mode=mode)
        return out


@dataclass
class IndexParams(_Validated):
    """HNSW parameters of a collection's vector index."""

    m: Annotated[int, Bounds(ge=2, le=128)] = 16  # HNSW graph degree
    ef_construction: Annotated[int, Bounds(ge=8, le=4096)] = 200
    ef_search: Annotated[int, Bounds(ge=1, le=10_000)] = 64


# Names of operator-configured embedder profiles (``embedders.<name>`` in the settings). Lowercase, because
# environment variable names reach the settings lowercased; no "__", the nesting separator of those names.
EMBEDDER_PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
EMBEDDER_PROFILE_RULE = "1-64 lowercase letters, digits, '-' and '_' (never '__'), starting with a letter or digit"


def is_profile_name(name: object) -> bool:
    """True if ``name`` follows EMBEDDER_PROFILE_RULE."""
    return isinstance(name, str) and EMBEDDER_PROFILE_RE.fullmatch(name) is not None and "__" not in name


@dataclass
class EmbedderConfig(_Validated):
    """Server-side embedding of text for a collection.

    Either ``profile``, the name of an embedder profile the operator
    configured (``embedders.<name>`` in the settings; the only form a server
    accepts from API callers), or an inline provider configuration (embedded
    use: whoever opens the database is its operator).
    """

    provider: Literal["none", "local", "openai"] = "none"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None  # environment variable that holds the provider's key
    api_key_file: str | None = None
    timeout_seconds: Annotated[float, Bounds(gt=0, le=600)] = 30.0
    max_retries: Annotated[int, Bounds(ge=0, le=10)] = 3
    dimension: Annotated[int, Bounds(ge=1, le=MAX_DIMENSION)] | None = None
    profile: str | None = None  # an operator-configured embedder profile; excludes every other field

    def __post_init__(self) -> None:
        if self.profile is None:
            return
        if not is_profile_name(self.profile):
            raise ValueError(f"embedder profile names are {EMBEDDER_PROFILE_RULE}")
        import dataclasses

        # The profile defines the provider, endpoint, key and model; a second source would be ambiguous.
        others = [
            f.name for f in dataclasses.fields(self) if f.name != "profile" and getattr(self, f.name) != f.default
        ]
        if others:
            raise ValueError(f"an embedder profile takes no other settings; remove {', '.join(others)}")

    @property
    def inline(self) -> bool:
        """True for an inline provider configuration (not a profile, not provider ``none``)."""
        return self.profile is None and self.provider != "none"


@dataclass
class CollectionConfig(_Validated):
    """How a collection is created; ``alter_collection`` may change indexed fields, default TTL and ef_search."""

    name: str
    dimension: Annotated[int, Bounds(ge=1, le=MAX_DIMENSION)]
    metric: Metric = "cosine"
    index: IndexParams = field(default_factory=IndexParams)
    embedder: EmbedderConfig | None = None
    default_ttl_seconds: Annotated[float, Bounds(gt=0, le=MAX_TTL_SECONDS)] | None = None
    # metadata fields that get a payload index (dotted paths)
    indexed_fields: dict[str, FieldType] = field(default_factory=dict)
    text_index: bool = True  # keep a BM25 index over record text
    # The cluster layout (docs/cluster.md), fixed at creation. A single node holds one copy of everything: 1 and 1.
    # Configurations stored before these fields existed load with those values.
    shards: Annotated[int, Bounds(ge=1, le=MAX_SHARDS)] = 1
    replication_factor: Annotated[int, Bounds(ge=1, le=MAX_REPLICATION_FACTOR)] = 1

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(
                "collection names are 1-128 letters, digits, '_', '.', '-', starting with a letter or digit"
            )
        try:
            validation.shards(self.shards)
            validation.replication_factor(self.replication_factor)
        except InvalidArgument as e:
            raise ValueError(e.message) from None
        for name in self.indexed_fields:
            if not name or any(not part for part in name.split(".")):
                raise ValueError(f"indexed field {name!r} must be a non-empty dotted path")

    @classmethod
    def from_stored(cls, d: dict[str, Any]) -> CollectionConfig:
        """Rebuild a configuration this package validated and stored (no pydantic needed)."""
        emb = d.get("embedder")
        return cls(
            **{
                **d,
                "index": IndexParams(**d.get("index", {})),
                "embedder": EmbedderConfig(**emb) if emb is not None else None,
                "indexed_fields": dict(d.get("indexed_fields", {})),
            }
        )


@dataclass
class Record:
    """One stored item: vector, text, metadata, namespace path and expiry.

    ``version``, ``created_at`` and ``updated_at`` are set by the engine; values
    passed in are ignored on upsert.
    """

    id: str
    vector: list[float] | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    namespace: tuple[str, ...] = ()
    ttl_seconds: float | None = None
    expires_at: float | None = None
    importance: float | None = None
    created_at: float | None = None
    updated_at: float | None = None
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (namespace as a list)."""
        return {
            "id": self.id,
            "vector": self.vector,
            "text": self.text,
            "metadata": self.metadata,
            "namespace": list(self.namespace),
            "expires_at": self.expires_at,
            "ttl_seconds": self.ttl_seconds,
            "importance": self.importance,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            id=d["id"],
            vector=d.get("vector"),
            text=d.get("text"),
            metadata=d.get("metadata") or {},
            namespace=tuple(d.get("namespace") or ()),
            ttl_seconds=d.get("ttl_seconds"),
            expires_at=d.get("expires_at"),
            importance=d.get("importance"),
            created_at=d.get("created_at"),
            updated_at=d.get("updated_at"),
            version=d.get("version"),
        )


@dataclass
class Edge:
    """A directed, typed, weighted link between two records of one collection."""

    src: str
    relation: str
    dst: str
    weight: float = 1.0
    properties: dict[str, Any] = field(default_factory=dict)
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "relation": self.relation,
            "dst": self.dst,
            "weight": self.weight,
            "properties": self.properties,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Edge:
        return cls(
            src=d["src"],
            relation=d["relation"],
            dst=d["dst"],
            weight=float(d.get("weight", 1.0)),
            properties=d.get("properties") or {},
            version=d.get("version"),
        )


@dataclass
class Hit:
    """One search result. ``record`` holds the fields asked for in ``include``.

    ``hop`` and ``path`` are set for nodes reached by graph expansion (seeds have
    hop 0); ``signals`` says which rankings matched in hybrid search.
    """

    id: str
    score: float
    record: Record | None = None
    hop: int = 0
    path: list[dict[str, Any]] = field(default_factory=list)
    signals: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "score": self.score,
            "record": self.record.to_dict() if self.record is not None else None,
            "hop": self.hop,
            "path": self.path,
            "signals": self.signals,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hit:
        rec = d.get("record")
        return cls(
            id=d["id"],
            score=float(d["score"]),
            record=Record.from_dict(rec) if rec else None,
            hop=int(d.get("hop", 0)),
            path=list(d.get("path") or []),
            signals=dict(d.get("signals") or {}),
        )


@dataclass
class ScanPage:
    """A page of a scan; pass ``next_cursor`` back to continue, ``None`` at the end."""

    records: list[Record]
    next_cursor: str | None


@dataclass
class ExtractResult:
    """What an extraction wrote (``Collection.extract``).

    ``entities``: one dict per entity record written, ``{"id", "name", "type",
    "merged"}`` (``merged`` is true when the entity was merged into a record
    that existed before, false when the record was created). ``edges``: one
    dict per relation stored, ``{"src", "relation", "dst", "weight",
    "version"}``. Both are empty when the text mentions nothing.
    """

    entities: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"entities": self.entities, "edges": self.edges}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExtractResult:
        return cls(
            entities=[dict(e) for e in d.get("entities") or ()],
            edges=[{**e, "weight": float(e["weight"])} for e in d.get("edges") or ()],
        )


@dataclass
class ApiKeyInfo:
    """An API key as an admin sees it: never its secret or digest (``Client.list_keys``)."""

    id: str
    tenant: str
    role: str
    collections: list[str] | None
    expires_at: float | None
    revoked: bool
    name: str | None
    created_at: float
    replaced_by: str | None = None


@dataclass
class NewApiKey:
    """A key just created or rotated. ``key`` is the secret: shown only this once, kept out of ``repr``."""

    key: str = field(repr=False)
    id: str = ""
    role: str = ""
    tenant: str = ""
    collections: list[str] | None = None
    expires_at: float | None = None
    name: str | None = None


@dataclass
class TenantErased:
    """What ``Client.erase_tenant`` deleted and erased from disk: the tenant's collections and API keys."""

    tenant: str
    collections: int
    keys: int


@dataclass
class BackupInfo:
    """A backup in the server's backup directory (``Client.create_backup``, ``list_backups``, ``verify_backup``).

    ``status`` comes from the manifest alone (``complete``, ``incomplete``,
    ``invalid``, with ``problem`` saying why); ``verify_backup`` checks every
    file. ``seq`` is the changelog sequence the backup is consistent at.
    """

    name: str
    status: str = "complete"
    created_at: float | None = None
    seq: int | None = None
    engramdb_version: str | None = None
    bytes: int | None = None
    files: int | None = None
    problem: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackupInfo:
        return cls(**{f: d[f] for f in cls.__dataclass_fields__ if f in d})


@dataclass
class NamespaceInfo:
    """A namespace path and how many live records sit at or below it."""

    path: tuple[str, ...]
    count: int
