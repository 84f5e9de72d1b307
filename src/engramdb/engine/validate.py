"""Input validation shared by every entry point (embedded, REST, gRPC).

Each check raises an ``InvalidArgument`` whose message names the offending
field and says what is allowed, so a batch is rejected whole before anything
is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DimensionMismatch, InvalidArgument
from ..types import INCLUDE_FIELDS, MAX_ID_BYTES, MAX_K, NAME_RE

MAX_NAMESPACE_DEPTH = 32
MAX_SEGMENT_CHARS = 256
MAX_TEXT_BYTES = 1 << 20
MAX_METADATA_DEPTH = 16
MAX_BATCH = 10_000
MAX_RELATION_BYTES = 256


def name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"{what} {value!r} is invalid: use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
            code="invalid_name",
        )
    return value


def record_id(value: Any, where: str = "id") -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where} must be a string, got {type(value).__name__}", code="invalid_id")
    n = len(value.encode("utf-8", "surrogatepass"))
    if n == 0 or n > MAX_ID_BYTES:
        raise InvalidArgument(f"{where} must be 1-{MAX_ID_BYTES} bytes of UTF-8, got {n} bytes", code="invalid_id")
    try:
        value.encode()
    except UnicodeEncodeError as e:
        raise InvalidArgument(f"{where} is not valid UTF-8 (lone surrogate)", code="invalid_id") from e
    return value


def vector(value: Any, dim: int, metric: str, where: str = "vector") -> np.ndarray:
    """A finite float32 vector of the collection's dimension (unit length under cosine)."""
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
        if any(ord(c) < 0x20 for c in seg):
            raise InvalidArgument(f"{where}[{i}] must not contain control characters", code="invalid_namespace")
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
            _json_value(x, f"{path}.{k}", depth + 1)
        return
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _json_value(x, f"{path}[{i}]", depth + 1)
        return
    raise InvalidArgument(
        f"metadata at {path} has type {type(v).__name__}; only JSON values are allowed", code="invalid_metadata"
    )


def metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument("metadata must be a JSON object", code="invalid_metadata")
    _json_value(value, "metadata", 0)
    return dict(value)


def text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument("text must be a string", code="invalid_text")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise InvalidArgument(f"text is longer than {MAX_TEXT_BYTES} bytes", code="invalid_text")
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


def relation(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_RELATION_BYTES:
        raise InvalidArgument(
            f"relation must be a non-empty string of at most {MAX_RELATION_BYTES} bytes", code="invalid_relation"
        )
    return value
