"""Public data types shared by the engine, the servers and the clients."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Metric = Literal["cosine", "dot", "l2"]
FieldType = Literal["keyword", "int", "float", "bool"]
Direction = Literal["out", "in", "both"]
SearchMode = Literal["vector", "text", "hybrid"]

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
MAX_ID_BYTES = 512
MAX_DIMENSION = 4096
MAX_K = 10_000
INCLUDE_FIELDS = frozenset({"vector", "text", "metadata", "namespace", "expires_at", "timestamps", "importance"})


class IndexParams(BaseModel):
    """HNSW parameters of a collection's vector index."""

    model_config = ConfigDict(extra="forbid")

    m: int = Field(16, ge=2, le=128, description="HNSW graph degree")
    ef_construction: int = Field(200, ge=8, le=4096)
    ef_search: int = Field(64, ge=1, le=10_000)


class EmbedderConfig(BaseModel):
    """Server-side embedding of text for a collection."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["none", "local", "openai"] = "none"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="environment variable that holds the provider's key")
    api_key_file: str | None = None
    timeout_seconds: float = Field(30.0, gt=0, le=600)
    max_retries: int = Field(3, ge=0, le=10)
    dimension: int | None = Field(None, ge=1, le=MAX_DIMENSION)


class CollectionConfig(BaseModel):
    """How a collection is created; immutable after creation except TTL."""

    model_config = ConfigDict(extra="forbid")

    name: str
    dimension: int = Field(..., ge=1, le=MAX_DIMENSION)
    metric: Metric = "cosine"
    index: IndexParams = Field(default_factory=IndexParams)
    embedder: EmbedderConfig | None = None
    default_ttl_seconds: float | None = Field(None, gt=0, le=100 * 365 * 86400)
    indexed_fields: dict[str, FieldType] = Field(
        default_factory=dict, description="metadata fields that get a payload index (dotted paths)"
    )
    text_index: bool = Field(True, description="keep a BM25 index over record text")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(
                "collection names are 1-128 letters, digits, '_', '.', '-', starting with a letter or digit"
            )
        return v

    @field_validator("indexed_fields")
    @classmethod
    def _fields_ok(cls, v: dict[str, FieldType]) -> dict[str, FieldType]:
        for name in v:
            if not name or any(not part for part in name.split(".")):
                raise ValueError(f"indexed field {name!r} must be a non-empty dotted path")
        return v


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
class NamespaceInfo:
    """A namespace path and how many live records sit at or below it."""

    path: tuple[str, ...]
    count: int
