"""The REST server's HTTP connections: a connection cap, a bounded request head and read deadlines.

uvicorn alone leaves three doors open to an unauthenticated client: a socket
that sends nothing, or a request head one byte at a time, is kept forever (its
keep-alive timer only runs *between* requests); its httptools parser accepts a
head of any size; and ``limit_concurrency`` only answers 503 once a head is
complete, so half-sent heads still hold their file descriptors. Enough of them
exhaust the process's descriptors, and then storage commits fail.

:func:`protocol_class` wraps uvicorn's own HTTP/1.1 protocol (httptools when
installed, as with ``uvicorn[standard]``, else h11) with:

- a **connection cap** (``server.max_connections``): a new connection beyond
  it closes the connection that has waited longest without a request in
  progress (a fresh socket, a half-sent head or an idle keep-alive one), so a
  flood of idle sockets cannot lock normal clients out; when every connection
  is busy with a request, the new one gets 503 ``too_many_connections``;
- a **head size limit** (``server.max_header_kb``: request line + headers),
  answered 431 ``headers_too_large``;
- a **head deadline** (``server.header_timeout_seconds``) from the first byte
  of a request (or from the connection's start): 408 ``request_timeout`` (or a
  silent close when nothing was sent at all);
- a **body progress rule**: while a body is being received, every such period
  must bring at least :data:`MIN_BODY_BYTES` (unless the server itself paused
  reading), else the connection is closed.

With h11 the head limit is h11's own buffer limit, which a head arriving
whole in one read (up to 256 KiB) can pass; httptools counts exactly.

uvicorn's own plain-text "400 Invalid HTTP request" becomes a JSON error too;
every answer written here is ``{"error": {code, kind, message}}`` with
``Connection: close``.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from engramdb.errors import EngramError, HeadersTooLarge, InvalidArgument, RequestTimeout, Unavailable

log = logging.getLogger("engramdb.rest")

# Bytes a request body must bring per header_timeout period: far below any real upload, far above a drip.
MIN_BODY_BYTES = 1024
# After an error answer, what the client still sends is read and dropped this long before closing: closing
# with unread data makes the kernel reset the connection, and the client would lose the answer.
LINGER_SECONDS = 1.0
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_header_bytes: int
    header_timeout: float
    min_body_bytes: int = MIN_BODY_BYTES


def effective_max_connections(configured: int) -> int:
    """``configured``, but at most half the process's descriptor limit (the rest is for storage and gRPC)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - platforms without the limit
        return configured
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft // 2))


def error_bytes(error: EngramError, headers: tuple[bytes, ...] = ()) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection, in the API's error format."""
    body = orjson.dumps({"error": error.to_dict()})
    status = error.http_status
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        *(h + b"\r\n" for h in headers),
        b"\r\n",
    ]
    return b"".join(head) + body


class _Limited(asyncio.Protocol):
    """The limits, mixed in before one of uvicorn's HTTP protocol classes (see :func:`protocol_class`)."""

    limits: ClassVar[ConnectionLimits]
    # Connections with no request in progress, longest waiting first: the ones a new connection may replace.
    waiting: ClassVar[OrderedDict[_Limited, None]]

    if TYPE_CHECKING:  # set by uvicorn's protocol classes
        transport: asyncio.Transport
        connections: set[Any]
        cycle: Any
        flow: Any
        client: tuple[str, int] | None

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _linger_timer: asyncio.TimerHandle | None = None
    _draining = False  # an error was answered: drop input until the close
    _head_bytes = 0  # bytes received towards the current request head
    _body_bytes = 0  # body bytes received, for the progress rule
    _body_mark = 0
    _oversized = False

    # -- what each HTTP implementation knows about its parser
    def _awaiting_head(self) -> bool:
        raise NotImplementedError

    def _body_pending(self) -> bool:
        raise NotImplementedError

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        full = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if full and not self._make_room():
            log.warning("REST connection limit (%d) reached with every connection busy", self.limits.max_connections)
            self._refuse(
                Unavailable(
                    "the server has too many open connections (server.max_connections); retry shortly",
                    code="too_many_connections",
                ),
                (b"retry-after: 1",),
            )
            return
        self.waiting[self] = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.pop(self, None)
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        if self._awaiting_head():
            self._head_bytes += len(data)
        elif self._body_timer is not None:
            self._body_bytes += len(data)
        cycle = self.cycle
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self.cycle is not cycle:  # uvicorn starts a request cycle once a head is complete
            self._head_bytes = 0
            self.waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if self._body_pending() and self._body_timer is None:
                self._body_mark = self._body_bytes
                self._body_timer = asyncio.get_running_loop().call_later(self.limits.header_timeout, self._check_body)
        elif self._awaiting_head() and self._head_bytes:
            if self._head_bytes > self.limits.max_header_bytes:
                self._oversized = True
                self._refuse(self._too_large())
            else:
                self._arm_head_timer()

    # -- uvicorn hooks
    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and self._idle():
            self.waiting[self] = None
            self.waiting.move_to_end(self)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a malformed request (or one over h11's size limit), as a JSON error."""
        if self._oversized or self._head_bytes > self.limits.max_header_bytes:
            self._refuse(self._too_large())
            return
        self._refuse(InvalidArgument("the request is not valid HTTP/1.1", code="bad_request"))

    # -- the rules
    def _too_large(self) -> HeadersTooLarge:
        kb = self.limits.max_header_bytes // 1024
        return HeadersTooLarge(f"the request line and headers exceed {kb} KB (server.max_header_kb)")

    def _idle(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _make_room(self) -> bool:
        """Close the connection that has waited longest without a request in progress; False if there is none."""
        for victim in self.waiting:
            if victim is not self:
                break
        else:
            return False
        del self.waiting[victim]
        self.connections.discard(victim)  # counted out now: its connection_lost comes on a later loop turn
        victim._cancel_timers()
        victim.transport.close()
        return True

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._awaiting_head() or not self._idle():
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        secs = f"{self.limits.header_timeout:g}"
        self._refuse(RequestTimeout(f"the request head did not arrive within {secs}s (server.header_timeout_seconds)"))

    def _check_body(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._body_pending():
            return
        if not self.flow.read_paused and self._body_bytes - self._body_mark < self.limits.min_body_bytes:
            log.info("closing a REST connection whose request body stalled (client %s)", self.client)
            if self.cycle is not None and not self.cycle.response_started:
                secs = f"{self.limits.header_timeout:g}"
                self._refuse(
                    RequestTimeout(
                        f"the request body arrived slower than {self.limits.min_body_bytes} bytes per {secs}s"
                    )
                )
            else:
                self.transport.close()
            return
        self._body_mark = self._body_bytes
        self._body_timer = asyncio.get_running_loop().call_later(self.limits.header_timeout, self._check_body)

    def _refuse(self, error: EngramError, headers: tuple[bytes, ...] = ()) -> None:
        """Answer an error, stop reading requests and close (after a short linger for the client to read it)."""
        self.waiting.pop(self, None)
        self._cancel_timers()
        if self.transport.is_closing() or self._draining:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A request task is waiting for its body: it sees a disconnect and answers nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
        self._draining = True
        self.transport.write(error_bytes(error, headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer, then EOF; its own close ends the linger
        self._linger_timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._linger_timer = None


class _HeadTooLarge(Exception):
    pass


def _httptools_protocol() -> type[_Limited] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HttpTools(_Limited, HttpToolsProtocol):  # type: ignore[misc]
        # The parser's callbacks tell where a request is: before its head, in its body, or done.
        _phase = "head"
        _counted = 0  # exact head size (request target + header names and values)

        def _awaiting_head(self) -> bool:
            return self._phase != "body"  # "done": what arrives next begins the next request

        def _body_pending(self) -> bool:
            return self._phase == "body"

        def on_message_begin(self) -> None:
            self._phase = "head"
            self._counted = 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            # A head that arrives in one read is complete before data_received can count it.
            self._counted += n
            if self._counted > self.limits.max_header_bytes:
                self._oversized = True
                raise _HeadTooLarge  # the parser stops; uvicorn answers through send_400_response

        def on_headers_complete(self) -> None:
            self._phase = "body"
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._phase = "done"
            super().on_message_complete()

    return HttpTools


def _h11_protocol() -> type[_Limited]:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11(_Limited, H11Protocol):  # type: ignore[misc]
        conn: h11.Connection

        def _awaiting_head(self) -> bool:
            return self.conn.their_state is h11.IDLE or self.conn.their_state is h11.DONE

        def _body_pending(self) -> bool:
            return self.conn.their_state is h11.SEND_BODY

    return H11


def protocol_class(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class enforcing ``limits``, with its own registry of waiting connections.

    Pass it as ``uvicorn.Config(http=...)``; with h11 also set
    ``h11_max_incomplete_event_size`` to ``limits.max_header_bytes``.
    """
    base = _httptools_protocol() or _h11_protocol()
    waiting: OrderedDict[_Limited, None] = OrderedDict()
    return type("EngramDBHttpProtocol", (base,), {"limits": limits, "waiting": waiting})
