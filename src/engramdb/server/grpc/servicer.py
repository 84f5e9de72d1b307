"""The generic servicer of ``engramdb.v1.EngramDB``: a thin adapter over the service.

Every RPC does the same four things, driven by :data:`convert.RPCS`: build the
request context from the call (API key from ``authorization`` metadata, client
IP from the peer), convert the request message to the contract's params,
``Service.execute`` it, and convert the result dict back to a message. Auth,
tenancy, limits, validation and metrics all live in the service; an
:class:`~engramdb.errors.EngramError` it raises becomes the matching gRPC
status with the error JSON as the status message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import unquote

import grpc
import orjson
from google.protobuf.message import Message

from ...errors import EngramError, RateLimited
from .convert import RPCS, Rpc

if TYPE_CHECKING:
    from ...service import Service

log = logging.getLogger("engramdb.server.grpc")

SERVICE_NAME = "engramdb.v1.EngramDB"
ERROR_CODE_KEY = "engramdb-error-code"
# gRPC carries the status message in a header, and peers reject headers over
# their metadata limit (8 KiB by default), so an oversized error body is cut
# down rather than turning a clear error into a transport failure.
_MAX_ERROR_BYTES = 4096


def api_key_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The key of ``authorization: Bearer <key>``, or None when absent or not a bearer token."""
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def ip_from_peer(peer: str | None) -> str | None:
    """The client IP of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``); None for others."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None  # e.g. unix: sockets have no client address
    host = unquote(rest).rpartition(":")[0]  # some gRPC versions percent-encode IPv6 brackets
    return host.strip("[]") or None


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


def abort_with(context: grpc.ServicerContext, err: EngramError) -> NoReturn:
    """End the call with the status, JSON body and trailing metadata of ``err``."""
    trailers: list[tuple[str, str]] = [(ERROR_CODE_KEY, err.code)]
    if isinstance(err, RateLimited):
        # Same hint REST gives in Retry-After (whole seconds, at least 1).
        trailers.append(("retry-after", str(max(1, round(err.retry_after + 0.499)))))
    context.set_trailing_metadata(trailers)
    context.abort(error_status(err), error_body(err))
    raise AssertionError("grpc.ServicerContext.abort returned")  # abort always raises


class EngramDBServicer:
    """Dispatches every RPC in :data:`convert.RPCS` to ``service.execute``."""

    def __init__(self, service: Service, make_context: Callable[[str | None, str | None], Any]):
        """``make_context(api_key, client_ip)`` builds the service's request context."""
        self._service = service
        self._make_context = make_context

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """One unary-unary handler per RPC, keyed by method name."""
        return {
            name: grpc.unary_unary_rpc_method_handler(
                self._handler(rpc),
                request_deserializer=rpc.request.FromString,
                response_serializer=rpc.response.SerializeToString,
            )
            for name, rpc in RPCS.items()
        }

    def _handler(self, rpc: Rpc) -> Callable[[Message, grpc.ServicerContext], Message]:
        op, to_params, to_response = rpc.op, rpc.to_params, rpc.to_response
        execute = self._service.execute

        def handle(request: Message, context: grpc.ServicerContext) -> Message:
            try:
                ctx = self._make_context(api_key_from_metadata(context.invocation_metadata()), ip_from_peer(context.peer()))
                return to_response(execute(ctx, op, to_params(request)))
            except EngramError as e:
                abort_with(context, e)
            except Exception:
                # The service maps its own failures; reaching here is a bug in
                # this adapter. Log it with the traceback, never leak it.
                log.exception("grpc %s failed", op)
                abort_with(context, EngramError("internal error"))

        handle.__name__ = handle.__qualname__ = f"handle_{op}"
        return handle
