"""The value rules of every input, and their bounds: the one authority.

Every entry point (embedded, REST, gRPC, the integrations) reaches these
checks through the engine, and the service's request models publish the same
bounds in OpenAPI by importing the constants below, so a limit is written
once. Each check raises an ``InvalidArgument`` whose message names the
offending field and says what is allowed, so a batch is rejected whole before
anything is written.

This module sits on the bottom floor with ``errors``, ``types`` and
``filters``: it imports nothing else from the package, so any layer may use it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engramdb.errors import DimensionMismatch, InvalidArgument

if TYPE_CHECKING:
    import numpy as np

# numpy and orjson are imported by the checks that use them: ``engramdb.types`` re-exports the bounds
# below, and ``import engramdb`` must not pay for either (cold start, and a client needs neither).

# ----------------------------------------------------------------- bounds
# Names of collections and tenants.
NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"
NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
MAX_ID_BYTES = 512
MAX_DIMENSION = 4096
MAX_K = 10_000
MAX_EF = 10_000
INCLUDE_FIELDS = frozenset({"vector", "text", "metadata", "namespace", "expires_at", "timestamps", "importance"})
SEARCH_MODES = ("vector", "text", "hybrid")
MAX_FUSION_WEIGHT = 1000
# Graph reads (docs/graph.md): hops multiply the work, so every traversal is bounded in depth, in edges
# kept per node, in records returned and in time.
DIRECTIONS = ("out", "in", "both")
MAX_HOPS = 5
MAX_FANOUT = 1000
MAX_GRAPH_LIMIT = 10_000
MAX_TIMEOUT_MS = 60_000
MAX_KEY_NAME_CHARS = 200
# Collections one stats answer lists in detail (the largest first): each costs a few estimates.
DEFAULT_STATS_COLLECTIONS = 100
MAX_STATS_COLLECTIONS = 1000
# Bounds of an extract request. The text goes into one chat request: 100,000
# characters is about 25,000 tokens, within the context of current chat models
# with room for the answer; longer documents should be split by the caller
# (per section or paragraph), which also gives the model less to get wrong.
MAX_EXTRACT_TEXT_CHARS = 100_000
MAX_EXTRACT_INSTRUCTIONS_CHARS = 4_000

MAX_NAMESPACE_DEPTH = 32
MAX_SEGMENT_CHARS = 256
MAX_TEXT_BYTES = 1 << 20
MAX_METADATA_DEPTH = 16
MAX_BATCH = 10_000
MAX_RELATION_BYTES = 256
# Metadata (and edge properties) get a cap of their own, the size of the text cap: the whole
# object is decoded for every result and filter check, so it must stay small next to the row.
MAX_METADATA_BYTES = 1 << 20
MAX_METADATA_KEY_BYTES = 1024
# Edge weights multiply along paths (up to 5 hops, then by a seed score): a bound keeps every
# product finite (see docs/graph.md). Negative weights keep their documented meaning.
MAX_EDGE_WEIGHT = 1e6

# C0 controls, DEL and C1 controls. Such characters in an id, relation or namespace label
# cannot be written in a URL path or a log line unambiguously (a newline in an id made the
# record unreachable over REST), so they are refused where those values are created.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _check_chars(value: str, where: str, code: str) -> None:
    """Refuse control characters and lone surrogates (which UTF-8 cannot hold)."""
    bad = _CONTROL.search(value)
    if bad is not None:
        raise InvalidArgument(
            f"{where} contains the control character U+{ord(bad.group()):04X}; "
            "control characters (U+0000-U+001F, U+007F-U+009F) are not allowed",
            code=code,
        )
    _check_utf8(value, where, code)


def _check_utf8(value: str, where: str, code: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError as e:
        raise InvalidArgument(f"{where} is not valid UTF-8 (lone surrogate)", code=code) from e


def name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidArgument(f"{what} {value!r} is invalid: use {NAME_RULE}", code="invalid_name")
    return value


def record_ref(value: Any, where: str = "id") -> str:
    """An id that names a record (read, patch, delete, unlink): the storage rules only.

    Records written before control characters were refused (see :func:`record_id`)
    must stay reachable, so naming one is allowed.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"{where} must be a string, got {type(value).__name__}", code="invalid_id")
    n = len(value.encode("utf-8", "surrogatepass"))
    if n == 0 or n > MAX_ID_BYTES:
        raise InvalidArgument(f"{where} must be 1-{MAX_ID_BYTES} bytes of UTF-8, got {n} bytes", code="invalid_id")
    _check_utf8(value, where, "invalid_id")
    return value


def record_id(value: Any, where: str = "id") -> str:
    """An id being written (a record or an edge endpoint): also free of control characters."""
    record_ref(value, where)
    _check_chars(value, where, "invalid_id")
    return value


_UNIT_TOLERANCE = 1e-6  # |norm² - 1| below which a cosine vector counts as normalised already (about 4 ulps)


def vector(value: Any, dim: int, metric: str, where: str = "vector") -> np.ndarray:
    """A finite float32 vector of the collection's dimension (unit length under cosine)."""
    import numpy as np

    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{where} must be a list of numbers", code="invalid_vector") from e
    if arr.ndim != 1:
        raise InvalidArgument(f"{where} must be a flat list of numbers", code="invalid_vector")
    if arr.shape[0] != dim:
        raise DimensionMismatch(f"{where} has {arr.shape[0]} dimensions but the collection has {dim}")
    # One dot product both proves every element finite (NaN and infinity
    # propagate into it) and gives the norm; it is the hot path of every query.
    with np.errstate(over="ignore", invalid="ignore"):
        sq = float(np.dot(arr, arr))
    if not math.isfinite(sq):
        if not np.isfinite(arr).all():
            raise InvalidArgument(f"{where} contains NaN or infinity", code="invalid_vector")
        wide = arr.astype(np.float64)  # finite, but the squares overflow float32
        sq = float(np.dot(wide, wide))
    if metric == "cosine":
        if sq == 0.0:
            raise InvalidArgument(
                f"{where} is all zeros, which has no direction under the cosine metric", code="invalid_vector"
            )
        # A vector of unit length within float32 rounding (every stored one is, to about 2.4e-7) is kept bit
        # for bit: dividing it by its computed norm again moves the last bits of a third of them, so a
        # vector read back and written again (an export re-imported) would not be the same vector.
        if abs(sq - 1.0) > _UNIT_TOLERANCE:
            arr = arr / np.float32(math.sqrt(sq))
    return np.ascontiguousarray(arr, dtype=np.float32)


def namespace(value: Any, where: str = "namespace") -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidArgument(
            f"{where} must be a list of strings such as ['user-42', 'memories']", code="invalid_namespace"
        )
    if len(value) > MAX_NAMESPACE_DEPTH:
        raise InvalidArgument(f"{where} is deeper than {MAX_NAMESPACE_DEPTH} levels", code="invalid_namespace")
    out = []
    for i, seg in enumerate(value):
        if not isinstance(seg, str) or not seg or len(seg) > MAX_SEGMENT_CHARS:
            raise InvalidArgument(
                f"{where}[{i}] must be a non-empty string of at most {MAX_SEGMENT_CHARS} characters",
                code="invalid_namespace",
            )
        _check_chars(seg, f"{where}[{i}]", "invalid_namespace")
        out.append(seg)
    return tuple(out)


def _json_value(v: Any, path: str, depth: int) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidArgument(
            f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels at {path}", code="invalid_metadata"
        )
    if v is None or isinstance(v, (bool, str)):
        return
    if isinstance(v, int):
        if not -(2**63) <= v < 2**64:
            raise InvalidArgument(f"metadata integer at {path} does not fit in 64 bits", code="invalid_metadata")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidArgument(
                f"metadata at {path} is NaN or infinite, which JSON cannot hold", code="invalid_metadata"
            )
        return
    if isinstance(v, Mapping):
        for k, x in v.items():
            if not isinstance(k, str):
                raise InvalidArgument(f"metadata keys must be strings (at {path})", code="invalid_metadata")
            if (
                len(k) > MAX_METADATA_KEY_BYTES // 4
                and len(k.encode("utf-8", "surrogatepass")) > MAX_METADATA_KEY_BYTES
            ):
                raise InvalidArgument(
                    f"metadata key at {path} is longer than {MAX_METADATA_KEY_BYTES} bytes", code="invalid_metadata"
                )
            _json_value(x, f"{path}.{k}", depth + 1)
        return
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _json_value(x, f"{path}[{i}]", depth + 1)
        return
    raise InvalidArgument(
        f"metadata at {path} has type {type(v).__name__}; only JSON values are allowed", code="invalid_metadata"
    )


def metadata(value: Any, where: str = "metadata") -> dict[str, Any]:
    """A JSON object of at most ``MAX_METADATA_BYTES`` serialized (also edge properties)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"{where} must be a JSON object", code="invalid_metadata")
    _json_value(value, where, 0)
    import orjson

    try:
        # Serializing once both measures the object and proves every string valid UTF-8.
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as e:
        raise InvalidArgument(f"{where} is not valid JSON text: {e}", code="invalid_metadata") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{where} is {size} bytes as JSON, more than the {MAX_METADATA_BYTES} allowed; "
            "keep large content in text or outside the database",
            code="invalid_metadata",
        )
    return dict(value)


def text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument("text must be a string", code="invalid_text")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise InvalidArgument(f"text is longer than {MAX_TEXT_BYTES} bytes", code="invalid_text")
    _check_utf8(value, "text", "invalid_text")
    return value


MAX_TTL_SECONDS = 100 * 365 * 86400  # beyond a century a TTL is a mistake, and it must fit the u64 ms queue key
MAX_EPOCH_SECONDS = 1e11


def positive_seconds(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= MAX_TTL_SECONDS
    ):
        raise InvalidArgument(
            f"{where} must be a positive number of seconds, at most {MAX_TTL_SECONDS}", code="invalid_ttl"
        )
    return float(value)


def epoch_seconds(value: Any, where: str) -> float | None:
    """An absolute time in Unix seconds (e.g. ``expires_at``)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value < MAX_EPOCH_SECONDS
    ):
        raise InvalidArgument(
            f"{where} must be a Unix time in seconds (0 to {MAX_EPOCH_SECONDS:.0f})", code="invalid_ttl"
        )
    return float(value)


def finite(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"{where} must be a finite number", code="invalid_argument")
    return float(value)


def k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise InvalidArgument(f"k must be an integer from 1 to {MAX_K}, got {value!r}", code="invalid_k")
    return value


def ef(value: Any) -> int | None:
    """The HNSW search breadth of one query; None keeps the collection's ``ef_search``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EF):
        raise InvalidArgument(f"ef must be an integer from 1 to {MAX_EF}", code="invalid_ef")
    return value


# ------------------------------------------------------ altering a collection
# What ``alter_collection`` may change; every other configuration field is fixed at creation:
# the stored vectors and the HNSW graph were built for the dimension, metric, m and ef_construction,
# the vectors were embedded by the embedder, and the text index exists or not from the start.
ALTERABLE_FIELDS = ("indexed_fields", "default_ttl_seconds", "ef_search")
IMMUTABLE_FIELDS = (
    "name",
    "dimension",
    "metric",
    "index.m",
    "index.ef_construction",
    "embedder",
    "text_index",
    "shards",
    "replication_factor",
)
INDEXED_FIELD_TYPES = ("keyword", "int", "float", "bool")
MAX_INDEXED_FIELDS = 256
MAX_FIELD_PATH_CHARS = 256


def immutable_field(field: str) -> InvalidArgument:
    """The error for a request to change ``field``, which is fixed when the collection is created."""
    hint = " (ef_search can change: pass it as ef_search)" if field.startswith("index") else ""
    return InvalidArgument(
        f"{field} cannot be changed after the collection is created{hint}; only "
        f"{', '.join(ALTERABLE_FIELDS)} can be altered. To change {field}, create a new collection and "
        "copy the records into it (export and import)",
        code="immutable_field",
        details={"field": field},
    )


def indexed_fields_change(value: Any) -> dict[str, str | None]:
    """``alter_collection``'s ``indexed_fields``: dotted paths to a type, or None to stop indexing the path."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(
            "indexed_fields must map dotted metadata paths to keyword, int, float or bool (null removes one)",
            code="invalid_config",
        )
    if len(value) > MAX_INDEXED_FIELDS:
        raise InvalidArgument(f"indexed_fields may name at most {MAX_INDEXED_FIELDS} fields", code="invalid_config")
    out: dict[str, str | None] = {}
    for path, ftype in value.items():
        if (
            not isinstance(path, str)
            or not 0 < len(path) <= MAX_FIELD_PATH_CHARS
            or any(not p for p in path.split("."))
            or _CONTROL.search(path)
        ):
            raise InvalidArgument(
                f"indexed field {str(path)[:MAX_FIELD_PATH_CHARS]!r} must be a dotted path like 'a.b' of at most "
                f"{MAX_FIELD_PATH_CHARS} characters, without empty parts or control characters",
                code="invalid_config",
            )
        if ftype is not None and ftype not in INDEXED_FIELD_TYPES:
            raise InvalidArgument(
                f"indexed field {path!r} has type {ftype!r}; use one of {', '.join(INDEXED_FIELD_TYPES)} "
                "(or null to stop indexing it)",
                code="invalid_config",
            )
        out[path] = ftype
    return out


def default_ttl(value: Any) -> float | None:
    """A collection's ``default_ttl_seconds`` (None: records written without a TTL never expire)."""
    try:
        return positive_seconds(value, "default_ttl_seconds")
    except InvalidArgument as e:
        raise InvalidArgument(e.message + " (or null for none)", code="invalid_config") from None


def ef_search(value: Any) -> int:
    """A collection's default HNSW search breadth."""
    return int_in_range(value, "ef_search", 1, MAX_EF, "invalid_config")


# ------------------------------------------------------------- cluster knobs
# Per-request consistency and a collection's layout (docs/cluster.md). They are part of the public API on
# every deployment; a single node holds every replica of every shard, so there they are only validated.
CONSISTENCY_LEVELS = ("one", "quorum", "all")
MAX_SHARDS = 4096
# Every write goes to each replica: beyond 16 copies a write costs more than any failure it survives.
MAX_REPLICATION_FACTOR = 16


def _shown(value: Any) -> str:
    """``repr`` of a caller's value for an error message, cut short: the value may be megabytes long."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def consistency(value: Any, where: str = "consistency") -> str | None:
    """A request's consistency level; None (not given) takes the server's default."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in CONSISTENCY_LEVELS:
        raise InvalidArgument(
            f"{where} must be one of 'one', 'quorum' or 'all' (replicas that must answer in a cluster), "
            f"got {_shown(value)}",
            code="invalid_consistency",
        )
    return value


def shards(value: Any, where: str = "shards") -> int:
    """A collection's shard count: a power of two (splitting a shard doubles it), 1 to MAX_SHARDS."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SHARDS or value & (value - 1):
        raise InvalidArgument(
            f"{where} must be a power of two from 1 to {MAX_SHARDS} (1, 2, 4, 8, ...), got {_shown(value)}",
            code="invalid_shards",
        )
    return value


def replication_factor(value: Any, where: str = "replication_factor") -> int:
    """How many nodes hold a copy of each shard: 1 to MAX_REPLICATION_FACTOR."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICATION_FACTOR:
        raise InvalidArgument(
            f"{where} must be an integer from 1 to {MAX_REPLICATION_FACTOR}, got {_shown(value)}",
            code="invalid_replication_factor",
        )
    return value


def mode(value: Any) -> str:
    if value not in SEARCH_MODES:
        raise InvalidArgument(f"mode must be one of {list(SEARCH_MODES)}, got {value!r}", code="invalid_mode")
    return str(value)


def page_limit(value: Any) -> int:
    """How many records or namespaces one page returns (scan, list_namespaces)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise InvalidArgument(f"limit must be an integer from 1 to {MAX_BATCH}", code="invalid_limit")
    return value


def stats_limit(value: Any) -> int:
    """How many collections a stats answer lists (the rest only counted; ``more`` says so)."""
    return int_in_range(value, "limit", 1, MAX_STATS_COLLECTIONS, "invalid_limit")


def namespace_listing(max_depth: Any, limit: Any, offset: Any) -> None:
    """The paging arguments of ``list_namespaces`` (the engine's and a cluster coordinator's)."""
    if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
        raise InvalidArgument("max_depth must be a positive integer", code="invalid_argument")
    page_limit(limit)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidArgument("offset must be a non-negative integer", code="invalid_argument")


def int_in_range(value: Any, where: str, lo: int, hi: int, code: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgument(f"{where} must be an integer from {lo} to {hi}, got {value!r}", code=code)
    return value


def hops(value: Any, where: str = "hops", lo: int = 1) -> int:
    return int_in_range(value, where, lo, MAX_HOPS, "invalid_hops")


def graph_limit(value: Any, where: str = "limit", code: str = "invalid_limit") -> int:
    return int_in_range(value, where, 1, MAX_GRAPH_LIMIT, code)


def fanout(value: Any, where: str = "fanout", code: str = "invalid_fanout") -> int:
    return int_in_range(value, where, 1, MAX_FANOUT, code)


def direction(value: Any, where: str = "direction") -> str:
    if value not in DIRECTIONS:
        raise InvalidArgument(f"{where} must be one of {list(DIRECTIONS)}, got {value!r}", code="invalid_direction")
    return str(value)


def relations(value: Any, where: str = "relations") -> tuple[str, ...] | None:
    """None (every relation) or a de-duplicated tuple of valid relation names."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise InvalidArgument(
            f"{where} must be a non-empty list of relation names, or null for every relation",
            code="invalid_relation",
        )
    return tuple(dict.fromkeys(relation_ref(r) for r in value))


def timeout_ms(value: Any, where: str = "timeout_ms") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= MAX_TIMEOUT_MS
    ):
        raise InvalidArgument(
            f"{where} must be a number of milliseconds in (0, {MAX_TIMEOUT_MS}], got {value!r}", code="invalid_timeout"
        )
    return float(value)


def include(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    out = frozenset(value)
    unknown = out - INCLUDE_FIELDS
    if unknown:
        raise InvalidArgument(
            f"include has unknown fields {sorted(unknown)}; allowed: {sorted(INCLUDE_FIELDS)}", code="invalid_include"
        )
    return out


def batch(items: Sequence[Any], what: str) -> None:
    if len(items) > MAX_BATCH:
        raise InvalidArgument(f"at most {MAX_BATCH} {what} per call; split the batch", code="batch_too_large")


def relation_ref(value: Any, where: str = "relation") -> str:
    """A relation name that selects edges (reads, unlink): the storage rules only."""
    if not isinstance(value, str) or not value or len(value.encode("utf-8", "surrogatepass")) > MAX_RELATION_BYTES:
        raise InvalidArgument(
            f"{where} must be a non-empty string of at most {MAX_RELATION_BYTES} bytes", code="invalid_relation"
        )
    _check_utf8(value, where, "invalid_relation")
    return value


def relation(value: Any, where: str = "relation") -> str:
    """A relation name being written: also free of control characters."""
    relation_ref(value, where)
    _check_chars(value, where, "invalid_relation")
    return value


def edge_weight(value: Any, where: str = "weight") -> float:
    """An edge weight: finite, at most ``MAX_EDGE_WEIGHT`` in magnitude; None means 1.0."""
    if value is None:
        return 1.0
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not -MAX_EDGE_WEIGHT <= value <= MAX_EDGE_WEIGHT
    ):
        raise InvalidArgument(
            f"{where} must be a number from {-MAX_EDGE_WEIGHT:g} to {MAX_EDGE_WEIGHT:g}, got {value!r}",
            code="invalid_weight",
        )
    return float(value)


def bounded_score(value: float) -> float:
    """A score kept finite: products of weights and scores saturate instead of overflowing.

    Clamped to ±``sys.float_info.max``; NaN (only possible from values stored before weights
    were bounded) ranks last.
    """
    if value != value:
        return -_FLOAT_MAX
    return min(max(value, -_FLOAT_MAX), _FLOAT_MAX)


_FLOAT_MAX = 1.7976931348623157e308


# ------------------------------------------------------------------ API keys
def key_expires_at(value: Any, now: float, where: str = "expires_at") -> float | None:
    """When an API key expires: None (never) or a Unix time after ``now``, at most a century ahead."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not now < value <= now + MAX_TTL_SECONDS
    ):
        raise InvalidArgument(
            f"{where} must be a Unix time in seconds after now and at most {MAX_TTL_SECONDS} s "
            f"(100 years) ahead, got {value!r}; omit it for a key that does not expire",
            code="invalid_expiry",
        )
    return float(value)


def grace_seconds(value: Any, where: str = "grace_seconds") -> float:
    """How long a rotated key keeps working: 0 to ``MAX_TTL_SECONDS`` seconds."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_TTL_SECONDS
    ):
        raise InvalidArgument(
            f"{where} must be a number of seconds from 0 to {MAX_TTL_SECONDS}, got {value!r}", code="invalid_expiry"
        )
    return float(value)


# --------------------------------------------------------------------- JSON
_INT64_FLOAT = float(2**63)


def json_loads(data: bytes | str) -> Any:
    """Parse JSON text (a REST body, a gRPC ``*_json`` field) keeping every integer exact.

    orjson turns an integer literal beyond 64 bits into a float, which would let
    ``12345678901234567890123`` be stored as ``1.2345678901234568e22`` where the
    embedded engine refuses it (``invalid_metadata``). Such a float is integral and
    at least 2**63; when one appears, the standard parser reads the text again and
    keeps integers as integers, so validation sees what the caller sent. Raises
    ``orjson.JSONDecodeError`` (a ``ValueError``) for text that is not JSON.
    """
    import orjson

    value = orjson.loads(data)
    if _maybe_big_int(value):
        value = json.loads(data)  # orjson accepted the text, so this parser does too
    return value


def _maybe_big_int(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            if abs(v) >= _INT64_FLOAT and v.is_integer():
                return True
        elif isinstance(v, dict):
            for k, x in v.items():
                # A vector is floats whatever their size: skip it (it is most of a request).
                if (isinstance(x, (dict, list)) and k != "vector") or isinstance(x, float):
                    stack.append(x)
        elif isinstance(v, list):
            stack.extend(x for x in v if isinstance(x, (dict, list, float)))
    return False
