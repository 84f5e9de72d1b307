"""Request and response models of every service operation (see docs/api-contract.md).

Each operation has a ``<Op>Body`` model (what REST takes as the JSON body and
documents in OpenAPI) and, when the REST path carries parameters, an ``<Op>``
model that adds them (``coll``, ``id``, ``key_id``); the service validates the
latter. Request models are strict (``"5"`` is not an integer, ``1`` is not a
boolean) and forbid unknown fields, so a typo is an error instead of being
silently ignored.

Value rules belong to the engine (``engramdb/validation.py``, the one authority):
the models check shape only (types, required fields, unknown fields, batch
sizes), and publish the engine's bounds in OpenAPI by importing its constants
(:func:`_bounds`), so a value out of range reaches the engine and fails with
the same code and message as the same call on an embedded database.

Response models describe the JSON the service returns; they are used for the
OpenAPI document and by clients, not to re-validate every response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from engramdb.embed.profiles import NOT_ALLOWED
from engramdb.types import (
    EMBEDDER_PROFILE_RULE,
    CollectionConfig,
    FieldType,
    IndexParams,
    is_profile_name,
    pydantic_fields,
)
from engramdb.validation import (
    CONSISTENCY_LEVELS,
    DEFAULT_STATS_COLLECTIONS,
    MAX_BATCH,
    MAX_DIMENSION,
    MAX_EDGE_WEIGHT,
    MAX_EF,
    MAX_EPOCH_SECONDS,
    MAX_EXTRACT_INSTRUCTIONS_CHARS,
    MAX_EXTRACT_TEXT_CHARS,
    MAX_FANOUT,
    MAX_GRAPH_LIMIT,
    MAX_HOPS,
    MAX_ID_BYTES,
    MAX_INDEXED_FIELDS,
    MAX_K,
    MAX_KEY_NAME_CHARS,
    MAX_RELATION_BYTES,
    MAX_REPLICATION_FACTOR,
    MAX_SHARDS,
    MAX_STATS_COLLECTIONS,
    MAX_TIMEOUT_MS,
    MAX_TTL_SECONDS,
    NAME_PATTERN,
    immutable_field,
)

IncludeField = Literal["vector", "text", "metadata", "namespace", "expires_at", "timestamps", "importance"]
Metric = Literal["cosine", "dot", "l2"]
Direction = Literal["out", "in", "both"]
Mode = Literal["vector", "text", "hybrid"]
Role = Literal["reader", "writer", "admin"]

# Shape bounds of the REST path parameters (the engine's rules apply after them): a malformed collection
# name is a collection that does not exist, so the path only needs a length that keeps it cheap.
MAX_COLL_PATH_CHARS = 1024
MAX_KEY_ID_CHARS = 64


def _bounds(description: str | None = None, **schema: Any) -> Any:
    """A field whose bounds OpenAPI publishes and the engine enforces (validation.py).

    ``schema`` holds JSON Schema keywords (``minimum``, ``maximum``, ``exclusiveMinimum``,
    ``maxLength``, ``pattern``...), taken from validation.py's constants. They are not checked
    here: a value out of range reaches the engine, which refuses it exactly as it refuses an
    embedded call, so the two paths cannot disagree on a limit, a code or a message.
    """
    return Field(description=description, json_schema_extra=schema)


Name = Annotated[str, _bounds("letters, digits, '_', '.', '-'; 1-128 characters", pattern=NAME_PATTERN, maxLength=128)]
RecordId = Annotated[str, _bounds(f"1-{MAX_ID_BYTES} bytes of UTF-8", minLength=1, maxLength=MAX_ID_BYTES)]
Include = Annotated[
    list[IncludeField] | None, Field(description="record fields to return; omitted = the operation's default")
]
Filter = Annotated[dict[str, Any] | None, Field(description="a filter expression (see docs/filters.md)")]
Namespace = Annotated[list[str] | None, Field(description="a hierarchical path such as ['user-42', 'memories']")]
MAX_EXPIRES_AT = MAX_EPOCH_SECONDS  # Unix seconds, about the year 5100
TtlSeconds = Annotated[float | None, _bounds("seconds, at most 100 years", exclusiveMinimum=0, maximum=MAX_TTL_SECONDS)]
ExpiresAt = Annotated[float | None, _bounds("Unix time in seconds", minimum=0, exclusiveMaximum=MAX_EXPIRES_AT)]
Relation = Annotated[str, _bounds(f"1-{MAX_RELATION_BYTES} bytes of UTF-8", minLength=1, maxLength=MAX_RELATION_BYTES)]
# Every data operation takes it (docs/cluster.md); validation.consistency refuses other values, on every path.
Consistency = Annotated[
    str | None,
    _bounds(
        "replicas of each shard that must answer in a cluster: one, quorum or all; omitted = the server's "
        "default. A single node is every replica",
        enum=[*CONSISTENCY_LEVELS, None],  # null (like omitting it) is the default
    ),
]


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------- path params
class _Coll(_Req):
    # No name pattern here: like the engine, a malformed name is simply a collection that does not exist (404).
    coll: Annotated[str, Field(min_length=1, max_length=MAX_COLL_PATH_CHARS)]


class _Id(_Req):
    id: RecordId


class _KeyId(_Req):
    key_id: Annotated[str, Field(min_length=1, max_length=MAX_KEY_ID_CHARS)]


# ------------------------------------------------------------------- pieces
def _strict(cls: type, doc: str) -> Any:
    """A strict request model with the fields of a configuration dataclass (one definition of each field)."""
    return create_model(
        cls.__name__ + "In", __config__=ConfigDict(extra="forbid", strict=True), __doc__=doc, **pydantic_fields(cls)
    )


if TYPE_CHECKING:
    IndexParamsIn = IndexParams
else:
    IndexParamsIn = _strict(IndexParams, "HNSW parameters (strict variant of :class:`engramdb.types.IndexParams`).")


class EmbedderRef(_Req):
    """The embedder of a collection: an embedder profile the server's operator configured (``embedders``).

    Nothing else is accepted: an endpoint, key variable, key file or model
    path chosen by an API caller would make the server send its secrets, and
    requests, wherever the caller likes.
    """

    profile: Annotated[str, Field(min_length=1, max_length=64, description=EMBEDDER_PROFILE_RULE)]

    @model_validator(mode="before")
    @classmethod
    def _profile_only(cls, data: Any) -> Any:
        if not isinstance(data, dict) or set(data) != {"profile"}:
            raise ValueError(NOT_ALLOWED)
        return data

    @field_validator("profile")
    @classmethod
    def _profile_name(cls, v: str) -> str:
        if not is_profile_name(v):
            raise ValueError(f"embedder profile names are {EMBEDDER_PROFILE_RULE}")
        return v


class RecordIn(_Req):
    """A record to upsert; ``created_at``, ``updated_at`` and ``version`` are accepted and ignored."""

    id: RecordId
    vector: list[float] | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None
    namespace: Namespace = None
    ttl_seconds: TtlSeconds = None
    expires_at: ExpiresAt = None
    importance: float | None = None
    created_at: float | None = None
    updated_at: float | None = None
    version: str | None = None


class EdgeIn(_Req):
    """An edge to create or replace; ``version`` is accepted and ignored."""

    src: RecordId
    relation: Relation
    dst: RecordId
    weight: Annotated[float | None, _bounds(minimum=-MAX_EDGE_WEIGHT, maximum=MAX_EDGE_WEIGHT)] = None
    properties: dict[str, Any] | None = None
    version: str | None = None


class EdgeRef(_Req):
    """Names an edge to remove."""

    src: RecordId
    relation: Relation
    dst: RecordId


class ExpandIn(_Req):
    """Graph expansion of search hits (see docs/graph.md); null fields take their defaults."""

    hops: int | None = None
    relations: list[str] | None = None
    direction: Direction | None = None
    fanout: int | None = None
    limit: int | None = None
    decay: float | None = None
    timeout_ms: float | None = None
    seeds: int | None = None
    use_importance: bool | None = None


Limit = Annotated[int, _bounds(minimum=1, maximum=MAX_BATCH)]
GraphLimit = Annotated[int, _bounds(minimum=1, maximum=MAX_GRAPH_LIMIT)]
TimeoutMs = Annotated[float | None, _bounds(exclusiveMinimum=0, maximum=MAX_TIMEOUT_MS)]
Hops = Annotated[int, _bounds(minimum=1, maximum=MAX_HOPS)]


# -------------------------------------------------------------- collections
class CreateCollectionBody(_Req):
    name: Name
    dimension: Annotated[int | None, _bounds(minimum=1, maximum=MAX_DIMENSION)] = None
    metric: Metric = "cosine"
    index: IndexParamsIn | None = None
    embedder: EmbedderRef | None = None
    default_ttl_seconds: TtlSeconds = None
    indexed_fields: dict[str, FieldType] = Field(default_factory=dict)
    text_index: bool = True
    exist_ok: bool = False
    shards: Annotated[
        int | None,
        _bounds(
            "a power of two; omitted = the server's default (cluster.default_shards; 1 on a single node)",
            minimum=1,
            maximum=MAX_SHARDS,
        ),
    ] = None
    replication_factor: Annotated[
        int | None,
        _bounds(
            "copies of each shard; omitted = the server's default (cluster.default_replication_factor; "
            "1 on a single node)",
            minimum=1,
            maximum=MAX_REPLICATION_FACTOR,
        ),
    ] = None


class ListCollectionsBody(_Req):
    pass


class GetCollection(_Coll):
    consistency: Consistency = None  # of its record count


class DeleteCollection(_Coll):
    pass


class AlterCollectionBody(_Req):
    """The settings to change; a field left out keeps its value (see docs/api-contract.md)."""

    indexed_fields: Annotated[
        dict[str, FieldType | None] | None,
        Field(
            max_length=MAX_INDEXED_FIELDS,
            description="fields to add or retype in the payload index; a field mapped to null stops being indexed",
        ),
    ] = None
    default_ttl_seconds: Annotated[
        float | None,
        _bounds(
            "TTL of records written from now on without their own; null: none. Stored records keep their expiry",
            exclusiveMinimum=0,
            maximum=MAX_TTL_SECONDS,
        ),
    ] = None
    ef_search: Annotated[
        int | None, _bounds("search breadth of queries without their own ef", minimum=1, maximum=MAX_EF)
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_immutable(cls, data: Any) -> Any:
        # Named so the caller learns what cannot change (and why), not just "extra inputs are not permitted".
        if isinstance(data, dict):
            for name in ("name", "dimension", "metric", "embedder", "text_index", "shards", "replication_factor"):
                if name in data:
                    raise immutable_field(name)
            index = data.get("index")
            if "index" in data:
                fixed = [k for k in ("m", "ef_construction") if isinstance(index, dict) and k in index]
                raise immutable_field(f"index.{fixed[0]}" if fixed else "index")
        return data


class AlterCollection(AlterCollectionBody, _Coll):
    pass


# ------------------------------------------------------------------ records
class UpsertBody(_Req):
    records: Annotated[list[RecordIn], Field(max_length=MAX_BATCH)]
    consistency: Consistency = None


class Upsert(UpsertBody, _Coll):
    pass


class GetBody(_Req):
    ids: Annotated[list[RecordId], Field(max_length=MAX_BATCH)]
    include: Include = None
    refresh_ttl: bool = False
    consistency: Consistency = None


class Get(GetBody, _Coll):
    pass


class GetOne(_Id, _Coll):
    include: Include = None
    consistency: Consistency = None


class PatchBody(_Req):
    metadata: Annotated[dict[str, Any] | None, Field(description="merged; keys set to null are removed")] = None
    text: str | None = None
    namespace: Namespace = None
    ttl_seconds: TtlSeconds = None
    importance: float | None = None
    vector: list[float] | None = None
    consistency: Consistency = None


class Patch(PatchBody, _Id, _Coll):
    pass


class DeleteBody(_Req):
    ids: Annotated[list[RecordId] | None, Field(max_length=MAX_BATCH)] = None
    filter: Filter = None
    consistency: Consistency = None


class Delete(DeleteBody, _Coll):
    pass


class DeleteOne(_Id, _Coll):
    consistency: Consistency = None


class ScanBody(_Req):
    cursor: str | None = None
    limit: Limit = 100
    id_prefix: str | None = None
    namespace_prefix: Namespace = None
    filter: Filter = None
    include: Include = None
    consistency: Consistency = None


class Scan(ScanBody, _Coll):
    pass


class CountBody(_Req):
    filter: Filter = None
    consistency: Consistency = None


class Count(CountBody, _Coll):
    pass


class RefreshTtlBody(_Req):
    ids: Annotated[list[RecordId], Field(max_length=MAX_BATCH)]
    consistency: Consistency = None


class RefreshTtl(RefreshTtlBody, _Coll):
    pass


# ------------------------------------------------------------------- search
class SearchBody(_Req):
    vector: list[float] | None = None
    k: Annotated[int, _bounds(minimum=1, maximum=MAX_K)] = 10
    filter: Filter = None
    ef: Annotated[int | None, _bounds(minimum=1, maximum=MAX_EF)] = None
    include: Include = None
    exact: bool = False
    text: str | None = None
    mode: Mode | None = None
    weights: dict[str, float] | None = None
    expand: ExpandIn | None = None
    min_score: float | None = None
    refresh_ttl: bool = False
    consistency: Consistency = None


class Search(SearchBody, _Coll):
    pass


class ListNamespacesBody(_Req):
    prefix: Namespace = None
    suffix: Namespace = None
    max_depth: Annotated[int | None, _bounds(minimum=1)] = None
    limit: Limit = 100
    offset: Annotated[int, _bounds(minimum=0)] = 0
    consistency: Consistency = None


class ListNamespaces(ListNamespacesBody, _Coll):
    pass


# -------------------------------------------------------------------- graph
class LinkBody(_Req):
    edges: Annotated[list[EdgeIn], Field(max_length=MAX_BATCH)]
    create_missing: bool = False
    consistency: Consistency = None


class Link(LinkBody, _Coll):
    pass


class UnlinkBody(_Req):
    edges: Annotated[list[EdgeRef], Field(max_length=MAX_BATCH)]
    consistency: Consistency = None


class Unlink(UnlinkBody, _Coll):
    pass


class EdgesBody(_Req):
    id: RecordId
    direction: Direction = "out"
    relation: Relation | None = None
    limit: GraphLimit = 1000
    consistency: Consistency = None


class Edges(EdgesBody, _Coll):
    pass


class NeighborsBody(_Req):
    id: RecordId
    hops: Hops = 1
    relations: list[str] | None = None
    direction: Direction = "out"
    limit: GraphLimit = 100
    fanout: Annotated[int | None, _bounds(minimum=1, maximum=MAX_FANOUT)] = None
    include: Include = None
    timeout_ms: TimeoutMs = None
    consistency: Consistency = None


class Neighbors(NeighborsBody, _Coll):
    pass


class SubgraphBody(_Req):
    ids: Annotated[list[RecordId], Field(max_length=MAX_BATCH)]
    hops: Annotated[int, _bounds(minimum=0, maximum=MAX_HOPS)] = 1
    relations: list[str] | None = None
    direction: Direction = "both"
    limit: GraphLimit = 500
    include: Include = None
    timeout_ms: TimeoutMs = None
    consistency: Consistency = None


class Subgraph(SubgraphBody, _Coll):
    pass


# --------------------------------------------------------------- extraction
class ExtractBody(_Req):
    text: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_EXTRACT_TEXT_CHARS,
            description=f"the text to extract entities and relations from; at most {MAX_EXTRACT_TEXT_CHARS} characters",
        ),
    ]
    instructions: Annotated[
        str | None,
        Field(
            max_length=MAX_EXTRACT_INSTRUCTIONS_CHARS,
            description="added to the model's prompt, e.g. 'only people and companies'",
        ),
    ] = None
    namespace: Annotated[
        list[str] | None, Field(description="namespace of new entity records (merged ones keep theirs if omitted)")
    ] = None
    dedupe_threshold: Annotated[
        float,
        _bounds(
            "cosine similarity from which a new entity merges into an existing one of the same type",
            exclusiveMinimum=0,
            maximum=1,
        ),
    ] = 0.92
    source_id: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=MAX_ID_BYTES,
            description="recorded in each entity's metadata.sources and each edge's properties",
        ),
    ] = None
    consistency: Consistency = None

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str) -> str:
        # Checked here rather than left to the extractor so that a blank text
        # costs no model call and fails with the same code as an empty one.
        if not v.strip():
            raise ValueError("text must contain something besides whitespace")
        return v


class Extract(ExtractBody, _Coll):
    pass


# --------------------------------------------------------------------- keys
class CreateKeyBody(_Req):
    role: Role
    tenant: Annotated[str | None, _bounds("defaults to the caller's tenant", pattern=NAME_PATTERN)] = None
    collections: list[Name] | None = None
    expires_at: Annotated[
        float | None,
        Field(description="Unix time in seconds, in the future and at most 100 years ahead; omitted = never expires"),
    ] = None
    name: Annotated[str | None, _bounds(minLength=1, maxLength=MAX_KEY_NAME_CHARS)] = None


class ListKeysBody(_Req):
    pass


class RevokeKey(_KeyId):
    pass


class RotateKeyBody(_Req):
    grace_seconds: Annotated[
        float | None,
        _bounds(
            "how long the old key keeps working, in seconds (at most 100 years); default one day",
            minimum=0,
            maximum=MAX_TTL_SECONDS,
        ),
    ] = None


class RotateKey(RotateKeyBody, _KeyId):
    pass


# -------------------------------------------------------------------- erase
class EraseTenantBody(_Req):
    # Optional in the model so that the handler answers 403 before 400, and a missing and a wrong
    # confirmation get the same code (erase_not_confirmed).
    confirm: Annotated[
        str | None, Field(description="the tenant's name again, to confirm the erase", max_length=MAX_COLL_PATH_CHARS)
    ] = None


class EraseTenant(EraseTenantBody):
    # The name rule is the engine's (validation.name), checked before anything is erased.
    tenant: Annotated[str, Field(min_length=1, max_length=MAX_COLL_PATH_CHARS)]


# ------------------------------------------------------------------ backups
# The operator's (bootstrap admin key only): a backup holds every tenant. Callers choose a name, never a path.
class CreateBackupBody(_Req):
    name: Name


class ListBackupsBody(_Req):
    pass


class VerifyBackup(_Req):
    name: Annotated[str, Field(min_length=1, max_length=MAX_COLL_PATH_CHARS)]


# Memory per component of the node answering (docs/observability.md): a tenant admin sees its own collections.
class Stats(_Req):
    limit: Annotated[
        int,
        _bounds("collections listed, the largest first", minimum=1, maximum=MAX_STATS_COLLECTIONS),
    ] = DEFAULT_STATS_COLLECTIONS


# ---------------------------------------------------------------- responses
class RecordOut(BaseModel):
    id: str
    vector: list[float] | None = None
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    namespace: list[str] = Field(default_factory=list)
    expires_at: float | None = None
    ttl_seconds: Annotated[float | None, Field(description="the record's TTL, returned with expires_at")] = None
    importance: float | None = None
    created_at: float | None = None
    updated_at: float | None = None
    version: str | None = None


class EdgeOut(BaseModel):
    src: str
    relation: str
    dst: str
    weight: float
    properties: dict[str, Any] = Field(default_factory=dict)
    version: str | None = None


class HitOut(BaseModel):
    id: str
    score: float
    record: RecordOut | None = None
    hop: int = 0
    path: list[dict[str, Any]] = Field(default_factory=list)
    signals: dict[str, float] = Field(default_factory=dict)


class CollectionResult(BaseModel):
    collection: CollectionConfig


class ReindexOut(BaseModel):
    """Progress of building the payload index of fields an alter added (filters on them stay correct meanwhile)."""

    state: Literal["building", "retrying", "failed"]
    fields: list[str]
    done: int = Field(description="stored rows scanned so far")
    total: int = Field(description="records in the collection when the pass began (an estimate)")
    error: str | None = Field(default=None, description="why the last attempt failed (retrying, failed)")


class CollectionInfoResult(BaseModel):
    collection: CollectionConfig
    count: int
    reindex: ReindexOut | None = Field(default=None, description="null when no field is being indexed")


class AlterCollectionResult(BaseModel):
    collection: CollectionConfig
    reindex: ReindexOut | None = Field(default=None, description="null when no field is being indexed")


class CollectionsResult(BaseModel):
    collections: list[CollectionConfig]


class DeletedCollectionResult(BaseModel):
    deleted: bool


class VersionsResult(BaseModel):
    versions: list[str]


class RecordsResult(BaseModel):
    records: list[RecordOut]


class RecordResult(BaseModel):
    record: RecordOut


class DeletedResult(BaseModel):
    deleted: int


class ScanResult(BaseModel):
    records: list[RecordOut]
    next_cursor: str | None


class CountResult(BaseModel):
    count: int


class RefreshedResult(BaseModel):
    refreshed: int


class HitsResult(BaseModel):
    hits: list[HitOut]


class NamespacesResult(BaseModel):
    namespaces: list[list[str]]


class EdgesResult(BaseModel):
    edges: list[EdgeOut]


class SubgraphResult(BaseModel):
    nodes: list[RecordOut]
    edges: list[EdgeOut]


class ExtractedEntityOut(BaseModel):
    id: Annotated[str, Field(description="the entity's record id (entity:<normalised name>, or the merged record's)")]
    name: str
    type: str
    merged: Annotated[bool, Field(description="true: merged into a record that existed; false: record created")]


class ExtractedEdgeOut(BaseModel):
    src: str
    relation: str
    dst: str
    weight: float
    version: str


class ExtractionResult(BaseModel):
    entities: list[ExtractedEntityOut]
    edges: list[ExtractedEdgeOut]


class KeyInfo(BaseModel):
    id: str
    tenant: str
    role: Role
    collections: list[str] | None
    expires_at: float | None
    revoked: bool
    name: str | None
    created_at: float
    replaced_by: str | None = None


class NewKeyResult(BaseModel):
    key: Annotated[str, Field(description="the secret; shown only in this response")]
    id: str
    role: Role
    tenant: str
    collections: list[str] | None
    expires_at: float | None
    name: str | None


class KeysResult(BaseModel):
    keys: list[KeyInfo]


class RevokedResult(BaseModel):
    revoked: bool


class TenantErasedResult(BaseModel):
    tenant: str
    collections: Annotated[int, Field(description="collections deleted and erased from disk")]
    keys: Annotated[int, Field(description="API keys of the tenant, revoked and stripped of their details")]


class BackupInfo(BaseModel):
    name: str
    status: Annotated[
        Literal["complete", "incomplete", "invalid"],
        Field(description="from the manifest alone; verify_backup checks every file"),
    ]
    created_at: float | None = None
    seq: Annotated[int | None, Field(description="the changelog sequence the backup is consistent at")] = None
    engramdb_version: str | None = None
    bytes: int | None = None
    files: int | None = None
    problem: str | None = None


class BackupResult(BaseModel):
    backup: BackupInfo


class BackupsResult(BaseModel):
    backups: list[BackupInfo]


class ProcessStats(BaseModel):
    rss_bytes: int
    peak_rss_bytes: int


class RocksDbStats(BaseModel):
    memtables_bytes: int
    block_cache_bytes: int
    block_cache_capacity_bytes: int
    table_readers_bytes: int
    sst_files_bytes: int
    wal_bytes: int


class CollectionStats(BaseModel):
    tenant: str
    name: str
    records: int
    vector_index_bytes: int
    id_maps_bytes: int
    payload_index_bytes: int
    text_index_bytes: int
    loaded: bool


class StatsTotals(BaseModel):
    collections: Annotated[int, Field(description="collections the caller may see, listed or not")]
    loaded_collections: int
    records: int
    vector_index_bytes: int
    id_maps_bytes: int
    payload_index_bytes: int
    text_index_bytes: int
    index_bytes: Annotated[int, Field(description="the four index figures of the listed collections, added up")]


class StatsResult(BaseModel):
    process: Annotated[ProcessStats | None, Field(description="the node's process; null for a tenant's admin key")]
    rocksdb: Annotated[RocksDbStats | None, Field(description="the node's RocksDB; null for a tenant's admin key")]
    collections: list[CollectionStats]
    totals: Annotated[StatsTotals, Field(description="of the listed collections")]
    more: Annotated[bool, Field(description="collections were left out of the list (raise limit)")]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class HealthResult(BaseModel):
    status: Literal["ok"]


class ReadyResult(BaseModel):
    status: Literal["ready", "loading", "failed", "shutting_down"]
    progress: dict[str, Any] | None = None
