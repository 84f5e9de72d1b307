"""Error hierarchy with stable codes.

Every error EngramDB raises is an :class:`EngramError`. ``code`` is a stable,
machine-readable string (never reworded once released), ``http_status`` and
``grpc_status`` say how the servers map it, and the message tells the user what
to change. Clients re-raise the same classes from the wire, so code written
against the embedded engine handles remote errors identically.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EngramError(Exception):
    """Base class of every EngramDB error."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    grpc_status: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            # Instance-level override keeps a finer code inside a broad class,
            # e.g. ``dimension_mismatch`` is an InvalidArgument.
            self.code = code  # type: ignore[misc]
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON body both servers send for this error."""
        # "kind" names the class, so clients rebuild the right class even for
        # finer codes they do not know (e.g. a newer server's codes).
        body: dict[str, Any] = {"code": self.code, "kind": type(self).code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidArgument(EngramError):
    """The request is malformed; fix the input and retry."""

    code = "invalid_argument"
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"


class InvalidFilter(InvalidArgument):
    """The filter expression is not valid in the filter language."""

    code = "invalid_filter"


class DimensionMismatch(InvalidArgument):
    """A vector's length differs from the collection's dimension."""

    code = "dimension_mismatch"


class NotFound(EngramError):
    """The named collection, record or key does not exist."""

    code = "not_found"
    http_status = 404
    grpc_status = "NOT_FOUND"


class AlreadyExists(EngramError):
    """The resource exists already (e.g. a collection of the same name)."""

    code = "already_exists"
    http_status = 409
    grpc_status = "ALREADY_EXISTS"


class FailedPrecondition(EngramError):
    """The operation is valid but the current state forbids it."""

    code = "failed_precondition"
    http_status = 409
    grpc_status = "FAILED_PRECONDITION"


class Unauthenticated(EngramError):
    """No valid API key was presented."""

    code = "unauthenticated"
    http_status = 401
    grpc_status = "UNAUTHENTICATED"


class PermissionDenied(EngramError):
    """The API key is valid but its role or scope does not allow this."""

    code = "permission_denied"
    http_status = 403
    grpc_status = "PERMISSION_DENIED"


class RateLimited(EngramError):
    """Too many requests; retry after ``retry_after`` seconds."""

    code = "rate_limited"
    http_status = 429
    grpc_status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.details.setdefault("retry_after", retry_after)


class StorageFull(EngramError):
    """The disk is full; nothing was written. Free space and retry."""

    code = "storage_full"
    http_status = 507
    grpc_status = "RESOURCE_EXHAUSTED"


class Unavailable(EngramError):
    """The node is starting or shutting down, or its storage or indexes cannot complete the operation."""

    code = "unavailable"
    http_status = 503
    grpc_status = "UNAVAILABLE"


class DeadlineExceeded(EngramError):
    """The operation did not finish within its time limit."""

    code = "deadline_exceeded"
    http_status = 504
    grpc_status = "DEADLINE_EXCEEDED"


class CorruptData(EngramError):
    """Stored data failed a checksum or could not be decoded."""

    code = "corrupt_data"
    http_status = 500
    grpc_status = "DATA_LOSS"


# What an operator can do about a damaged storage file (EngramDB has no repair command): the end of every
# CorruptData message about records, edges or RocksDB files.
DAMAGED_DATA_ADVICE = (
    "EngramDB cannot repair damaged storage files: stop the server and restore the latest backup with "
    "'engramdb backup restore BACKUP --data-dir DIR --force' (docs/backup.md), or put back a copy of the data "
    "directory taken while it was stopped (see 'Copies and damaged data' in docs/reliability.md)"
)
# The same for the derived indexes, which can always be rebuilt from the records.
DAMAGED_INDEX_ADVICE = (
    "stop the server (or close the database) and delete the directory 'indexes' in the data directory: "
    "the next start rebuilds every index from the records"
)


class UpstreamError(EngramError):
    """An external service (embedding or LLM endpoint) failed or answered badly."""

    code = "upstream_error"
    http_status = 502
    grpc_status = "UNAVAILABLE"


class Closed(EngramError):
    """The database or client has been closed."""

    code = "closed"
    http_status = 503
    grpc_status = "UNAVAILABLE"


# ------------------------------------------------------- raised by the REST server's HTTP layer
# Before a request reaches the service: about the HTTP message itself, not the operation. They are
# here, and in the code table below, so a client rebuilds each one as its own class.


class PayloadTooLarge(EngramError):
    """The request body is larger than ``server.max_request_mb``; send smaller batches."""

    code = "payload_too_large"
    http_status = 413
    grpc_status = "RESOURCE_EXHAUSTED"


class MethodNotAllowed(EngramError):
    """The path exists but not with this HTTP method; the ``Allow`` header lists the methods it takes."""

    code = "method_not_allowed"
    http_status = 405
    grpc_status = "UNIMPLEMENTED"


class UnsupportedMediaType(EngramError):
    """A JSON endpoint got a body that is not declared ``application/json``."""

    code = "unsupported_media_type"
    http_status = 415
    grpc_status = "INVALID_ARGUMENT"


class HostNotAllowed(EngramError):
    """The request's ``Host`` header names a host this server does not answer to (``server.allowed_hosts``)."""

    code = "host_not_allowed"
    http_status = 421
    grpc_status = "PERMISSION_DENIED"


class RequestTimeout(InvalidArgument):
    """The request head or body arrived too slowly (``server.header_timeout_seconds``)."""

    code = "request_timeout"
    http_status = 408


class HeadersTooLarge(InvalidArgument):
    """The request line and headers are larger than ``server.max_header_kb``."""

    code = "headers_too_large"
    http_status = 431


_ALL: tuple[type[EngramError], ...] = (
    EngramError,
    InvalidArgument,
    InvalidFilter,
    DimensionMismatch,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unauthenticated,
    PermissionDenied,
    RateLimited,
    StorageFull,
    Unavailable,
    DeadlineExceeded,
    CorruptData,
    UpstreamError,
    Closed,
    PayloadTooLarge,
    MethodNotAllowed,
    UnsupportedMediaType,
    HostNotAllowed,
    RequestTimeout,
    HeadersTooLarge,
)
_BY_CODE: dict[str, type[EngramError]] = {cls.code: cls for cls in _ALL}


def error_from_dict(body: dict[str, Any], http_status: int | None = None) -> EngramError:
    """Rebuild the error a server sent, so clients raise the engine's classes."""
    code = str(body.get("code", "internal"))
    message = str(body.get("message", "unknown error"))
    details = body.get("details") or {}
    cls = _BY_CODE.get(str(body.get("kind", ""))) or _BY_CODE.get(code)
    if cls is None:
        # A finer code inside a broad class: pick the class by HTTP status.
        cls = next((c for c in _ALL if c.http_status == http_status and c is not EngramError), EngramError)
    if cls is RateLimited:
        return RateLimited(message, retry_after=float(details.get("retry_after", 1.0)), code=code, details=details)
    return cls(message, code=code, details=details)


def is_failure(exc: BaseException) -> bool:
    """Whether a background thread should log ``exc`` and carry on.

    Every ``Exception``, and a Rust panic from a binding (tantivy, rocksdict):
    ``pyo3_runtime.PanicException`` derives from ``BaseException`` and cannot
    be imported, so it is matched by name. ``SystemExit``,
    ``KeyboardInterrupt`` and ``GeneratorExit`` are not failures: a thread that
    meets one stops (and says so).
    """
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"
