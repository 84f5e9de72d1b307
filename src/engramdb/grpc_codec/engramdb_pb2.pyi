# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FieldList(_message.Message):
    __slots__ = ("fields",)
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, fields: _Optional[_Iterable[str]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = (
        "id",
        "vector",
        "text",
        "metadata_json",
        "namespace",
        "ttl_seconds",
        "expires_at",
        "importance",
        "created_at",
        "updated_at",
        "version",
    )
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    vector: bytes
    text: str
    metadata_json: str
    namespace: _containers.RepeatedScalarFieldContainer[str]
    ttl_seconds: float
    expires_at: float
    importance: float
    created_at: float
    updated_at: float
    version: str
    def __init__(
        self,
        id: _Optional[str] = ...,
        vector: _Optional[bytes] = ...,
        text: _Optional[str] = ...,
        metadata_json: _Optional[str] = ...,
        namespace: _Optional[_Iterable[str]] = ...,
        ttl_seconds: _Optional[float] = ...,
        expires_at: _Optional[float] = ...,
        importance: _Optional[float] = ...,
        created_at: _Optional[float] = ...,
        updated_at: _Optional[float] = ...,
        version: _Optional[str] = ...,
    ) -> None: ...

class Edge(_message.Message):
    __slots__ = ("src", "relation", "dst", "weight", "properties_json", "version")
    SRC_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    src: str
    relation: str
    dst: str
    weight: float
    properties_json: str
    version: str
    def __init__(
        self,
        src: _Optional[str] = ...,
        relation: _Optional[str] = ...,
        dst: _Optional[str] = ...,
        weight: _Optional[float] = ...,
        properties_json: _Optional[str] = ...,
        version: _Optional[str] = ...,
    ) -> None: ...

class EdgeKey(_message.Message):
    __slots__ = ("src", "relation", "dst")
    SRC_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    src: str
    relation: str
    dst: str
    def __init__(
        self, src: _Optional[str] = ..., relation: _Optional[str] = ..., dst: _Optional[str] = ...
    ) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "hop", "record", "path_json", "signals")
    class SignalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HOP_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    PATH_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    hop: int
    record: Record
    path_json: str
    signals: _containers.ScalarMap[str, float]
    def __init__(
        self,
        id: _Optional[str] = ...,
        score: _Optional[float] = ...,
        hop: _Optional[int] = ...,
        record: _Optional[_Union[Record, _Mapping]] = ...,
        path_json: _Optional[str] = ...,
        signals: _Optional[_Mapping[str, float]] = ...,
    ) -> None: ...

class CollectionConfig(_message.Message):
    __slots__ = (
        "name",
        "dimension",
        "metric",
        "index_json",
        "embedder_json",
        "default_ttl_seconds",
        "indexed_fields",
        "text_index",
        "shards",
        "replication_factor",
    )
    class IndexedFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_JSON_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_JSON_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    dimension: int
    metric: str
    index_json: str
    embedder_json: str
    default_ttl_seconds: float
    indexed_fields: _containers.ScalarMap[str, str]
    text_index: bool
    shards: int
    replication_factor: int
    def __init__(
        self,
        name: _Optional[str] = ...,
        dimension: _Optional[int] = ...,
        metric: _Optional[str] = ...,
        index_json: _Optional[str] = ...,
        embedder_json: _Optional[str] = ...,
        default_ttl_seconds: _Optional[float] = ...,
        indexed_fields: _Optional[_Mapping[str, str]] = ...,
        text_index: _Optional[bool] = ...,
        shards: _Optional[int] = ...,
        replication_factor: _Optional[int] = ...,
    ) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = (
        "name",
        "dimension",
        "metric",
        "index_json",
        "embedder_json",
        "default_ttl_seconds",
        "indexed_fields",
        "text_index",
        "exist_ok",
        "shards",
        "replication_factor",
    )
    class IndexedFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_JSON_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_JSON_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    EXIST_OK_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    dimension: int
    metric: str
    index_json: str
    embedder_json: str
    default_ttl_seconds: float
    indexed_fields: _containers.ScalarMap[str, str]
    text_index: bool
    exist_ok: bool
    shards: int
    replication_factor: int
    def __init__(
        self,
        name: _Optional[str] = ...,
        dimension: _Optional[int] = ...,
        metric: _Optional[str] = ...,
        index_json: _Optional[str] = ...,
        embedder_json: _Optional[str] = ...,
        default_ttl_seconds: _Optional[float] = ...,
        indexed_fields: _Optional[_Mapping[str, str]] = ...,
        text_index: _Optional[bool] = ...,
        exist_ok: _Optional[bool] = ...,
        shards: _Optional[int] = ...,
        replication_factor: _Optional[int] = ...,
    ) -> None: ...

class CollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionConfig
    def __init__(self, collection: _Optional[_Union[CollectionConfig, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionConfig]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionConfig, _Mapping]]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("coll", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    consistency: str
    def __init__(self, coll: _Optional[str] = ..., consistency: _Optional[str] = ...) -> None: ...

class GetCollectionResponse(_message.Message):
    __slots__ = ("collection", "count", "reindex_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REINDEX_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionConfig
    count: int
    reindex_json: str
    def __init__(
        self,
        collection: _Optional[_Union[CollectionConfig, _Mapping]] = ...,
        count: _Optional[int] = ...,
        reindex_json: _Optional[str] = ...,
    ) -> None: ...

class AlterCollectionRequest(_message.Message):
    __slots__ = (
        "coll",
        "indexed_fields",
        "default_ttl_seconds",
        "clear_default_ttl",
        "ef_search",
        "dimension",
        "metric",
        "index_json",
        "embedder_json",
        "text_index",
        "shards",
        "replication_factor",
    )
    class IndexedFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

    COLL_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_DEFAULT_TTL_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_JSON_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_JSON_FIELD_NUMBER: _ClassVar[int]
    TEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    coll: str
    indexed_fields: _containers.ScalarMap[str, str]
    default_ttl_seconds: float
    clear_default_ttl: bool
    ef_search: int
    dimension: int
    metric: str
    index_json: str
    embedder_json: str
    text_index: bool
    shards: int
    replication_factor: int
    def __init__(
        self,
        coll: _Optional[str] = ...,
        indexed_fields: _Optional[_Mapping[str, str]] = ...,
        default_ttl_seconds: _Optional[float] = ...,
        clear_default_ttl: _Optional[bool] = ...,
        ef_search: _Optional[int] = ...,
        dimension: _Optional[int] = ...,
        metric: _Optional[str] = ...,
        index_json: _Optional[str] = ...,
        embedder_json: _Optional[str] = ...,
        text_index: _Optional[bool] = ...,
        shards: _Optional[int] = ...,
        replication_factor: _Optional[int] = ...,
    ) -> None: ...

class AlterCollectionResponse(_message.Message):
    __slots__ = ("collection", "reindex_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    REINDEX_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionConfig
    reindex_json: str
    def __init__(
        self, collection: _Optional[_Union[CollectionConfig, _Mapping]] = ..., reindex_json: _Optional[str] = ...
    ) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("coll",)
    COLL_FIELD_NUMBER: _ClassVar[int]
    coll: str
    def __init__(self, coll: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("coll", "records", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    records: _containers.RepeatedCompositeFieldContainer[Record]
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class VersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, versions: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("coll", "ids", "include", "refresh_ttl", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TTL_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    include: FieldList
    refresh_ttl: bool
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        ids: _Optional[_Iterable[str]] = ...,
        include: _Optional[_Union[FieldList, _Mapping]] = ...,
        refresh_ttl: _Optional[bool] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class RecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    def __init__(self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...) -> None: ...

class PatchRequest(_message.Message):
    __slots__ = (
        "coll",
        "id",
        "metadata_json",
        "text",
        "namespace",
        "ttl_seconds",
        "importance",
        "vector",
        "consistency",
    )
    COLL_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    id: str
    metadata_json: str
    text: str
    namespace: StringList
    ttl_seconds: float
    importance: float
    vector: bytes
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        id: _Optional[str] = ...,
        metadata_json: _Optional[str] = ...,
        text: _Optional[str] = ...,
        namespace: _Optional[_Union[StringList, _Mapping]] = ...,
        ttl_seconds: _Optional[float] = ...,
        importance: _Optional[float] = ...,
        vector: _Optional[bytes] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: Record
    def __init__(self, record: _Optional[_Union[Record, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("coll", "ids", "filter_json", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter_json: str
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        ids: _Optional[_Iterable[str]] = ...,
        filter_json: _Optional[str] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class DeletedResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("coll", "cursor", "limit", "id_prefix", "namespace_prefix", "filter_json", "include", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    cursor: str
    limit: int
    id_prefix: str
    namespace_prefix: _containers.RepeatedScalarFieldContainer[str]
    filter_json: str
    include: FieldList
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        cursor: _Optional[str] = ...,
        limit: _Optional[int] = ...,
        id_prefix: _Optional[str] = ...,
        namespace_prefix: _Optional[_Iterable[str]] = ...,
        filter_json: _Optional[str] = ...,
        include: _Optional[_Union[FieldList, _Mapping]] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("records", "next_cursor")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Record]
    next_cursor: str
    def __init__(
        self, records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., next_cursor: _Optional[str] = ...
    ) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("coll", "filter_json", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    filter_json: str
    consistency: str
    def __init__(
        self, coll: _Optional[str] = ..., filter_json: _Optional[str] = ..., consistency: _Optional[str] = ...
    ) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class RefreshTtlRequest(_message.Message):
    __slots__ = ("coll", "ids", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    consistency: str
    def __init__(
        self, coll: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., consistency: _Optional[str] = ...
    ) -> None: ...

class RefreshTtlResponse(_message.Message):
    __slots__ = ("refreshed",)
    REFRESHED_FIELD_NUMBER: _ClassVar[int]
    refreshed: int
    def __init__(self, refreshed: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = (
        "coll",
        "vector",
        "k",
        "filter_json",
        "ef",
        "include",
        "exact",
        "text",
        "mode",
        "weights_json",
        "expand_json",
        "min_score",
        "refresh_ttl",
        "consistency",
    )
    COLL_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPAND_JSON_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TTL_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    vector: bytes
    k: int
    filter_json: str
    ef: int
    include: FieldList
    exact: bool
    text: str
    mode: str
    weights_json: str
    expand_json: str
    min_score: float
    refresh_ttl: bool
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        vector: _Optional[bytes] = ...,
        k: _Optional[int] = ...,
        filter_json: _Optional[str] = ...,
        ef: _Optional[int] = ...,
        include: _Optional[_Union[FieldList, _Mapping]] = ...,
        exact: _Optional[bool] = ...,
        text: _Optional[str] = ...,
        mode: _Optional[str] = ...,
        weights_json: _Optional[str] = ...,
        expand_json: _Optional[str] = ...,
        min_score: _Optional[float] = ...,
        refresh_ttl: _Optional[bool] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class ListNamespacesRequest(_message.Message):
    __slots__ = ("coll", "prefix", "suffix", "max_depth", "limit", "offset", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    prefix: _containers.RepeatedScalarFieldContainer[str]
    suffix: _containers.RepeatedScalarFieldContainer[str]
    max_depth: int
    limit: int
    offset: int
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        prefix: _Optional[_Iterable[str]] = ...,
        suffix: _Optional[_Iterable[str]] = ...,
        max_depth: _Optional[int] = ...,
        limit: _Optional[int] = ...,
        offset: _Optional[int] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class Namespace(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, path: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNamespacesResponse(_message.Message):
    __slots__ = ("namespaces",)
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[Namespace]
    def __init__(self, namespaces: _Optional[_Iterable[_Union[Namespace, _Mapping]]] = ...) -> None: ...

class LinkRequest(_message.Message):
    __slots__ = ("coll", "edges", "create_missing", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    CREATE_MISSING_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    edges: _containers.RepeatedCompositeFieldContainer[Edge]
    create_missing: bool
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        edges: _Optional[_Iterable[_Union[Edge, _Mapping]]] = ...,
        create_missing: _Optional[bool] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class UnlinkRequest(_message.Message):
    __slots__ = ("coll", "edges", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    edges: _containers.RepeatedCompositeFieldContainer[EdgeKey]
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        edges: _Optional[_Iterable[_Union[EdgeKey, _Mapping]]] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class EdgesRequest(_message.Message):
    __slots__ = ("coll", "id", "direction", "relation", "limit", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    id: str
    direction: str
    relation: str
    limit: int
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        id: _Optional[str] = ...,
        direction: _Optional[str] = ...,
        relation: _Optional[str] = ...,
        limit: _Optional[int] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class EdgesResponse(_message.Message):
    __slots__ = ("edges",)
    EDGES_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedCompositeFieldContainer[Edge]
    def __init__(self, edges: _Optional[_Iterable[_Union[Edge, _Mapping]]] = ...) -> None: ...

class NeighborsRequest(_message.Message):
    __slots__ = (
        "coll",
        "id",
        "hops",
        "relations",
        "direction",
        "limit",
        "fanout",
        "include",
        "timeout_ms",
        "consistency",
    )
    COLL_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    RELATIONS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FANOUT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    id: str
    hops: int
    relations: _containers.RepeatedScalarFieldContainer[str]
    direction: str
    limit: int
    fanout: int
    include: FieldList
    timeout_ms: float
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        id: _Optional[str] = ...,
        hops: _Optional[int] = ...,
        relations: _Optional[_Iterable[str]] = ...,
        direction: _Optional[str] = ...,
        limit: _Optional[int] = ...,
        fanout: _Optional[int] = ...,
        include: _Optional[_Union[FieldList, _Mapping]] = ...,
        timeout_ms: _Optional[float] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class SubgraphRequest(_message.Message):
    __slots__ = ("coll", "ids", "hops", "relations", "direction", "limit", "include", "timeout_ms", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    RELATIONS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    hops: int
    relations: _containers.RepeatedScalarFieldContainer[str]
    direction: str
    limit: int
    include: FieldList
    timeout_ms: float
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        ids: _Optional[_Iterable[str]] = ...,
        hops: _Optional[int] = ...,
        relations: _Optional[_Iterable[str]] = ...,
        direction: _Optional[str] = ...,
        limit: _Optional[int] = ...,
        include: _Optional[_Union[FieldList, _Mapping]] = ...,
        timeout_ms: _Optional[float] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class SubgraphResponse(_message.Message):
    __slots__ = ("nodes", "edges")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Record]
    edges: _containers.RepeatedCompositeFieldContainer[Edge]
    def __init__(
        self,
        nodes: _Optional[_Iterable[_Union[Record, _Mapping]]] = ...,
        edges: _Optional[_Iterable[_Union[Edge, _Mapping]]] = ...,
    ) -> None: ...

class ExtractRequest(_message.Message):
    __slots__ = ("coll", "text", "instructions", "namespace", "dedupe_threshold", "source_id", "consistency")
    COLL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    coll: str
    text: str
    instructions: str
    namespace: _containers.RepeatedScalarFieldContainer[str]
    dedupe_threshold: float
    source_id: str
    consistency: str
    def __init__(
        self,
        coll: _Optional[str] = ...,
        text: _Optional[str] = ...,
        instructions: _Optional[str] = ...,
        namespace: _Optional[_Iterable[str]] = ...,
        dedupe_threshold: _Optional[float] = ...,
        source_id: _Optional[str] = ...,
        consistency: _Optional[str] = ...,
    ) -> None: ...

class ExtractedEntity(_message.Message):
    __slots__ = ("id", "name", "type", "merged")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    type: str
    merged: bool
    def __init__(
        self,
        id: _Optional[str] = ...,
        name: _Optional[str] = ...,
        type: _Optional[str] = ...,
        merged: _Optional[bool] = ...,
    ) -> None: ...

class ExtractResponse(_message.Message):
    __slots__ = ("entities", "edges")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[ExtractedEntity]
    edges: _containers.RepeatedCompositeFieldContainer[Edge]
    def __init__(
        self,
        entities: _Optional[_Iterable[_Union[ExtractedEntity, _Mapping]]] = ...,
        edges: _Optional[_Iterable[_Union[Edge, _Mapping]]] = ...,
    ) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("role", "tenant", "collections", "expires_at", "name")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    role: str
    tenant: str
    collections: _containers.RepeatedScalarFieldContainer[str]
    expires_at: float
    name: str
    def __init__(
        self,
        role: _Optional[str] = ...,
        tenant: _Optional[str] = ...,
        collections: _Optional[_Iterable[str]] = ...,
        expires_at: _Optional[float] = ...,
        name: _Optional[str] = ...,
    ) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("id", "role", "tenant", "collections", "expires_at", "name", "revoked", "created_at", "replaced_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REPLACED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    role: str
    tenant: str
    collections: _containers.RepeatedScalarFieldContainer[str]
    expires_at: float
    name: str
    revoked: bool
    created_at: float
    replaced_by: str
    def __init__(
        self,
        id: _Optional[str] = ...,
        role: _Optional[str] = ...,
        tenant: _Optional[str] = ...,
        collections: _Optional[_Iterable[str]] = ...,
        expires_at: _Optional[float] = ...,
        name: _Optional[str] = ...,
        revoked: _Optional[bool] = ...,
        created_at: _Optional[float] = ...,
        replaced_by: _Optional[str] = ...,
    ) -> None: ...

class NewKeyResponse(_message.Message):
    __slots__ = ("key", "id", "role", "tenant", "collections", "expires_at", "name")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    key: str
    id: str
    role: str
    tenant: str
    collections: _containers.RepeatedScalarFieldContainer[str]
    expires_at: float
    name: str
    def __init__(
        self,
        key: _Optional[str] = ...,
        id: _Optional[str] = ...,
        role: _Optional[str] = ...,
        tenant: _Optional[str] = ...,
        collections: _Optional[_Iterable[str]] = ...,
        expires_at: _Optional[float] = ...,
        name: _Optional[str] = ...,
    ) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeKeyResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: bool
    def __init__(self, revoked: _Optional[bool] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("key_id", "grace_seconds")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    grace_seconds: float
    def __init__(self, key_id: _Optional[str] = ..., grace_seconds: _Optional[float] = ...) -> None: ...

class EraseTenantRequest(_message.Message):
    __slots__ = ("tenant", "confirm")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    confirm: str
    def __init__(self, tenant: _Optional[str] = ..., confirm: _Optional[str] = ...) -> None: ...

class EraseTenantResponse(_message.Message):
    __slots__ = ("tenant", "collections", "keys")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    collections: int
    keys: int
    def __init__(
        self, tenant: _Optional[str] = ..., collections: _Optional[int] = ..., keys: _Optional[int] = ...
    ) -> None: ...

class CreateBackupRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListBackupsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyBackupRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BackupInfo(_message.Message):
    __slots__ = ("name", "status", "created_at", "seq", "engramdb_version", "bytes", "files", "problem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ENGRAMDB_VERSION_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: str
    created_at: float
    seq: int
    engramdb_version: str
    bytes: int
    files: int
    problem: str
    def __init__(
        self,
        name: _Optional[str] = ...,
        status: _Optional[str] = ...,
        created_at: _Optional[float] = ...,
        seq: _Optional[int] = ...,
        engramdb_version: _Optional[str] = ...,
        bytes: _Optional[int] = ...,
        files: _Optional[int] = ...,
        problem: _Optional[str] = ...,
    ) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("backup",)
    BACKUP_FIELD_NUMBER: _ClassVar[int]
    backup: BackupInfo
    def __init__(self, backup: _Optional[_Union[BackupInfo, _Mapping]] = ...) -> None: ...

class ListBackupsResponse(_message.Message):
    __slots__ = ("backups",)
    BACKUPS_FIELD_NUMBER: _ClassVar[int]
    backups: _containers.RepeatedCompositeFieldContainer[BackupInfo]
    def __init__(self, backups: _Optional[_Iterable[_Union[BackupInfo, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ProcessStats(_message.Message):
    __slots__ = ("rss_bytes", "peak_rss_bytes")
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    rss_bytes: int
    peak_rss_bytes: int
    def __init__(self, rss_bytes: _Optional[int] = ..., peak_rss_bytes: _Optional[int] = ...) -> None: ...

class RocksDbStats(_message.Message):
    __slots__ = (
        "memtables_bytes",
        "block_cache_bytes",
        "block_cache_capacity_bytes",
        "table_readers_bytes",
        "sst_files_bytes",
        "wal_bytes",
    )
    MEMTABLES_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_CACHE_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TABLE_READERS_BYTES_FIELD_NUMBER: _ClassVar[int]
    SST_FILES_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    memtables_bytes: int
    block_cache_bytes: int
    block_cache_capacity_bytes: int
    table_readers_bytes: int
    sst_files_bytes: int
    wal_bytes: int
    def __init__(
        self,
        memtables_bytes: _Optional[int] = ...,
        block_cache_bytes: _Optional[int] = ...,
        block_cache_capacity_bytes: _Optional[int] = ...,
        table_readers_bytes: _Optional[int] = ...,
        sst_files_bytes: _Optional[int] = ...,
        wal_bytes: _Optional[int] = ...,
    ) -> None: ...

class CollectionStats(_message.Message):
    __slots__ = (
        "tenant",
        "name",
        "records",
        "vector_index_bytes",
        "id_maps_bytes",
        "payload_index_bytes",
        "text_index_bytes",
        "loaded",
    )
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ID_MAPS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEXT_INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    name: str
    records: int
    vector_index_bytes: int
    id_maps_bytes: int
    payload_index_bytes: int
    text_index_bytes: int
    loaded: bool
    def __init__(
        self,
        tenant: _Optional[str] = ...,
        name: _Optional[str] = ...,
        records: _Optional[int] = ...,
        vector_index_bytes: _Optional[int] = ...,
        id_maps_bytes: _Optional[int] = ...,
        payload_index_bytes: _Optional[int] = ...,
        text_index_bytes: _Optional[int] = ...,
        loaded: _Optional[bool] = ...,
    ) -> None: ...

class StatsTotals(_message.Message):
    __slots__ = (
        "collections",
        "loaded_collections",
        "records",
        "vector_index_bytes",
        "id_maps_bytes",
        "payload_index_bytes",
        "text_index_bytes",
        "index_bytes",
    )
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    LOADED_COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    ID_MAPS_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEXT_INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    collections: int
    loaded_collections: int
    records: int
    vector_index_bytes: int
    id_maps_bytes: int
    payload_index_bytes: int
    text_index_bytes: int
    index_bytes: int
    def __init__(
        self,
        collections: _Optional[int] = ...,
        loaded_collections: _Optional[int] = ...,
        records: _Optional[int] = ...,
        vector_index_bytes: _Optional[int] = ...,
        id_maps_bytes: _Optional[int] = ...,
        payload_index_bytes: _Optional[int] = ...,
        text_index_bytes: _Optional[int] = ...,
        index_bytes: _Optional[int] = ...,
    ) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("process", "rocksdb", "collections", "totals", "more")
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    ROCKSDB_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    process: ProcessStats
    rocksdb: RocksDbStats
    collections: _containers.RepeatedCompositeFieldContainer[CollectionStats]
    totals: StatsTotals
    more: bool
    def __init__(
        self,
        process: _Optional[_Union[ProcessStats, _Mapping]] = ...,
        rocksdb: _Optional[_Union[RocksDbStats, _Mapping]] = ...,
        collections: _Optional[_Iterable[_Union[CollectionStats, _Mapping]]] = ...,
        totals: _Optional[_Union[StatsTotals, _Mapping]] = ...,
        more: _Optional[bool] = ...,
    ) -> None: ...
