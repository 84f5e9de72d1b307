"""The generic servicer of ``engramdb.v1.EngramDB``: a thin adapter over the service.

Every RPC does the same four things, driven by :data:`convert.RPCS`: build the
:class:`~engramdb.service.RequestContext` from the call exactly as REST builds
it from an HTTP request (the raw ``authorization`` value, the peer address,
``x-request-id`` and ``x-engramdb-tenant``), convert the request message to the
contract's params, ``Service.execute`` them, and convert the result dict back
to a message. Auth, tenancy, limits, validation and metrics all live in the
service; an :class:`~engramdb.errors.EngramError` it raises becomes the
matching gRPC status with the error JSON as the status message.

Requests arrive as raw bytes (no deserializer is registered) and are parsed by
the service's ``execute`` only after authentication and the rate limits: a
malformed message then costs an anonymous caller a 401 or 429 like any other
request, and gets INVALID_ARGUMENT (``malformed_request``) instead of grpc's
INTERNAL with an ERROR traceback per message; such messages are logged at most
once per :data:`MALFORMED_LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn
from urllib.parse import unquote

import grpc
import orjson
from google.protobuf.message import DecodeError, Message

from engramdb import tracing
from engramdb.errors import EngramError, InvalidArgument, RateLimited
from engramdb.server.grpc.convert import RPCS, Rpc
from engramdb.service import RequestContext, Service
from engramdb.service.context import new_request_id

log = logging.getLogger("engramdb.server.grpc")
# The logger REST's access lines go to, so one query sees both transports.
access_log = logging.getLogger("engramdb.access")

SERVICE_NAME = "engramdb.v1.EngramDB"
ERROR_CODE_KEY = "engramdb-error-code"
REQUEST_ID_KEY = "x-request-id"
TENANT_KEY = "x-engramdb-tenant"  # REST: the X-EngramDB-Tenant header
# Same acceptance rule as REST for client-chosen request ids (anything else is
# replaced, so ids stay safe to log and to echo back).
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# gRPC carries the status message in a header, and peers reject headers over
# their metadata limit (8 KiB by default), so an oversized error body is cut
# down rather than turning a clear error into a transport failure.
_MAX_ERROR_BYTES = 4096
MALFORMED_LOG_INTERVAL = 60.0
# gRPC statuses that are the server's fault (OpenTelemetry's rule for server spans); the rest are the caller's.
_SERVER_FAULTS = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNIMPLEMENTED", "DEADLINE_EXCEEDED"})


class _RateLimitedWarning:
    """A warning logged at most once per interval, with the count of those suppressed meanwhile.

    Malformed messages are cheap to send, so one log line each would let a client flood the log.
    """

    def __init__(self, interval: float):
        self.interval = interval
        self._lock = threading.Lock()
        self._next = 0.0
        self._suppressed = 0

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._next = self._suppressed, 0, now + self.interval
        log.warning(
            msg + " (%d more since the last such line; logged at most every %ds)", *args, suppressed, int(self.interval)
        )


_malformed = _RateLimitedWarning(MALFORMED_LOG_INTERVAL)


def ip_from_peer(peer: str | None) -> str | None:
    """The client IP of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``); None for others."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None  # e.g. unix: sockets have no client address
    host = unquote(rest).rpartition(":")[0]  # some gRPC versions percent-encode IPv6 brackets
    return host.strip("[]") or None


def request_context(metadata: Sequence[tuple[str, str | bytes]] | None, peer: str | None) -> RequestContext:
    """The transport facts of a call, as REST's ``request_context`` collects them from HTTP.

    A repeated ``authorization`` or tenant key is noted for the service to refuse, never resolved.
    """
    authorization = tenant = request_id = duplicate = None
    for name, value in metadata or ():
        if not isinstance(value, str):
            continue  # binary (-bin) metadata carries none of these
        if name == "authorization":
            if authorization is not None:
                duplicate = "authorization"
            authorization = value
        elif name == TENANT_KEY:
            if tenant is not None:
                duplicate = duplicate or TENANT_KEY
            tenant = value
        elif name == REQUEST_ID_KEY and _REQUEST_ID_RE.match(value):
            request_id = value
    return RequestContext(
        authorization=authorization,
        client_ip=ip_from_peer(peer) or "unknown",
        request_id=request_id or new_request_id(),
        tenant=tenant,
        transport="grpc",
        duplicate_header=duplicate,
    )


def error_status(err: EngramError) -> grpc.StatusCode:
    """The gRPC status code of an error class (``EngramError.grpc_status``)."""
    return grpc.StatusCode.__members__.get(err.grpc_status, grpc.StatusCode.INTERNAL)


def error_body(err: EngramError) -> str:
    """The error JSON sent as the status message, bounded to fit in a header."""
    body = err.to_dict()
    text = orjson.dumps(body).decode()
    if len(text.encode()) > _MAX_ERROR_BYTES:
        body.pop("details", None)
        body["message"] = body["message"][: _MAX_ERROR_BYTES // 2] + "…"
        text = orjson.dumps(body).decode()
    return text


def abort_with(context: grpc.ServicerContext, err: EngramError, request_id: str) -> NoReturn:
    """End the call with the status, JSON body and trailing metadata of ``err``."""
    trailers: list[tuple[str, str]] = [(ERROR_CODE_KEY, err.code), (REQUEST_ID_KEY, request_id)]
    if isinstance(err, RateLimited):
        # The hint REST sends as Retry-After: whole seconds, at least 1.
        trailers.append(("retry-after", str(max(1, int(-(-err.retry_after // 1))))))
    context.set_trailing_metadata(trailers)
    context.abort(error_status(err), error_body(err))
    raise AssertionError("grpc.ServicerContext.abort returned")  # abort always raises


class EngramDBServicer:
    """Dispatches every RPC in :data:`convert.RPCS` to ``service.execute``."""

    def __init__(self, service: Service):
        self._service = service

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """One unary-unary handler per RPC, keyed by method name.

        No request deserializer: the handler gets the raw bytes and parses them after auth.
        """
        return {
            name: grpc.unary_unary_rpc_method_handler(
                self._handler(name, rpc),
                request_deserializer=None,
                response_serializer=rpc.response.SerializeToString,
            )
            for name, rpc in RPCS.items()
        }

    def _handler(self, name: str, rpc: Rpc) -> Callable[[bytes, grpc.ServicerContext], Message]:
        op, to_params, to_response = rpc.op, rpc.to_params, rpc.to_response
        from_string = rpc.request.FromString
        message_type = rpc.request.DESCRIPTOR.full_name
        execute = self._service.execute
        path = f"/{SERVICE_NAME}/{name}"

        def handle(request: bytes, context: grpc.ServicerContext) -> Message:
            start = time.perf_counter()
            metadata = context.invocation_metadata()
            ctx = request_context(metadata, context.peer())
            status = "OK"
            # None unless tracing is on; continues the caller's trace (traceparent metadata).
            span = tracing.start_server(path[1:], metadata, **{"rpc.system": "grpc"}) if tracing.enabled() else None

            def parse() -> dict[str, Any]:
                # Called by the service after authentication and the rate limits.
                try:
                    message = from_string(request)
                except DecodeError:
                    _malformed.warn("malformed %s message from %s (request id %s)", path, ctx.client_ip, ctx.request_id)
                    raise InvalidArgument(
                        f"the request is not a valid {message_type} protobuf message", code="malformed_request"
                    ) from None
                return to_params(message)

            try:
                response = to_response(execute(ctx, op, parse))
                context.set_trailing_metadata(((REQUEST_ID_KEY, ctx.request_id),))
                return response
            except EngramError as e:
                status = error_status(e).name
                abort_with(context, e, ctx.request_id)
            except Exception:
                # The service maps its own failures; reaching here is a bug in
                # this adapter (a converter). Log it with the traceback, never leak it.
                status = "INTERNAL"
                log.exception("grpc %s failed (request id %s)", name, ctx.request_id)
                abort_with(
                    context,
                    EngramError(f"internal error; the server log has the details (request id {ctx.request_id})"),
                    ctx.request_id,
                )
            finally:
                _log_access(ctx, path, status, time.perf_counter() - start)
                if span is not None:
                    code = grpc.StatusCode[status].value[0]
                    tracing.finish(span, failed=status in _SERVER_FAULTS, attributes={"rpc.grpc.status_code": code})

        handle.__name__ = handle.__qualname__ = f"handle_{op}"
        return handle


def _log_access(ctx: RequestContext, path: str, status: str, seconds: float) -> None:
    """One access line per call, with the fields of REST's (never metadata or bodies)."""
    access_log.info(
        "request",
        extra={
            "method": "grpc",
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": ctx.request_id,
            "tenant": ctx.acting_tenant,
            "key_id": ctx.principal.key_id if ctx.principal is not None else None,
            "client_ip": ctx.client_ip,
        },
    )
