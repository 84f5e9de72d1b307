"""Node-to-node RPC: the internal gRPC service every node serves and the clients that call it.

A separate service on its own port (``cluster.peer_port``), never the public API: messages are
msgpack maps (:mod:`engramdb.cluster.wire`) carried as raw bytes by gRPC's generic handlers, so
there is no second schema to keep in step. With TLS configured the service requires mutual TLS:
both sides present certificates from the cluster CA (``server.tls.client_ca_file``), a caller's
certificate must name a current member (its node id in a subjectAltName or the common name), and
a caller verifies that the server's certificate names the node it meant to reach.

Every call has a deadline (``cluster.peer_timeout_seconds``, or the caller's shorter one) and goes
through the peer's **circuit breaker**: after ``breaker_failures`` consecutive transport failures
(unreachable, deadline, internal error) the peer is skipped for ``breaker_open_seconds`` — callers
get :class:`~engramdb.errors.Unavailable` at once instead of each waiting for a timeout — and then
one trial call decides whether it closes again. Application errors (a bad request, a missing
collection) come back as the same :mod:`engramdb.errors` class and code, and do not count against
the peer. Latency, errors and breaker state are metrics per peer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engramdb import errors
from engramdb.cluster import wire
from engramdb.errors import EngramError, Unavailable, is_failure

log = logging.getLogger("engramdb.cluster")

SERVICE = "engramdb.internal.Replica"
ERROR_KEY = "engramdb-error-bin"
NODE_KEY = "engramdb-node"
MAX_GRPC_MESSAGE = wire.MAX_MESSAGE_BYTES
PEER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Handler = Callable[[dict[str, Any], str], dict[str, Any]]  # (message, calling node id) -> answer


@dataclass(frozen=True)
class PeerTLS:
    """This node's certificate and key and the cluster CA; PEM bytes read once at start."""

    cert: bytes
    key: bytes
    ca: bytes

    @classmethod
    def from_files(cls, cert_file: Path, key_file: Path, ca_file: Path) -> PeerTLS:
        return cls(cert_file.read_bytes(), key_file.read_bytes(), ca_file.read_bytes())


# ------------------------------------------------------------------ errors
_STATUS = {s.name: s for s in grpc.StatusCode}


def _error_payload(e: EngramError) -> bytes:
    return wire.dumps({"type": type(e).__name__, "code": e.code, "message": e.message, "details": e.details or {}})


def _error_from(payload: bytes, peer: str) -> EngramError:
    try:
        d = wire.loads(payload)
        cls = getattr(errors, str(d.get("type")), None)
        if not (isinstance(cls, type) and issubclass(cls, EngramError)):
            cls = EngramError
        return cls(str(d.get("message", "")), code=str(d.get("code") or cls.code), details=d.get("details") or None)
    except Exception as e:
        log.warning("unreadable error from node %s: %s", peer, e)
        return Unavailable(f"node {peer} answered with an unreadable error", code="peer_error")


# ------------------------------------------------------------------ metrics
class PeerMetrics:
    """Per-peer RPC latency, errors and breaker state (labels: peer node id, method, error code)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.seconds = Histogram(
            "engramdb_peer_rpc_duration_seconds",
            "Node-to-node RPC latency, by peer and method",
            ["peer", "method"],
            registry=r,
            buckets=PEER_BUCKETS,
        )
        self.failures = Counter(
            "engramdb_peer_rpc_errors",
            "Failed node-to-node RPCs, by peer, method and code",
            ["peer", "method", "code"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "engramdb_peer_breaker_open",
            "1 while the circuit breaker to a peer is open (the peer is skipped)",
            ["peer"],
            registry=r,
        )


# ------------------------------------------------------------------ breaker
class CircuitBreaker:
    """Consecutive-failure breaker: closed -> open (skip the peer) -> half-open (one trial) -> closed."""

    def __init__(self, failures: int, open_seconds: float) -> None:
        self.threshold = failures
        self.open_seconds = open_seconds
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half_open" if time.monotonic() - self._opened_at >= self.open_seconds else "open"

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open state: only the one trial call)."""
        with self._lock:
            if self._opened_at is None:
                return True
            if time.monotonic() - self._opened_at < self.open_seconds or self._trial:
                return False
            self._trial = True
            return True

    def success(self) -> bool:
        """Record a success; True when this closed an open breaker."""
        with self._lock:
            was_open = self._opened_at is not None
            self._failures, self._opened_at, self._trial = 0, None, False
            return was_open

    def failure(self) -> bool:
        """Record a transport failure; True when this opened the breaker."""
        with self._lock:
            self._failures += 1
            if self._opened_at is not None:
                # The half-open trial failed: stay open for another period.
                self._opened_at, self._trial = time.monotonic(), False
                return False
            if self._failures >= self.threshold:
                self._opened_at = time.monotonic()
                return True
            return False


# ------------------------------------------------------------------ client
class PeerCall:
    """One call in flight; :meth:`result` returns the answer or raises an EngramError."""

    def __init__(self, peer: str, method: str) -> None:
        self.peer = peer
        self.method = method
        self._done = threading.Event()
        self._answer: dict[str, Any] | None = None
        self._error: EngramError | None = None
        self._callbacks: list[Callable[[PeerCall], None]] = []
        self._lock = threading.Lock()

    def _finish(self, answer: dict[str, Any] | None, error: EngramError | None) -> None:
        with self._lock:
            self._answer, self._error = answer, error
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, cb: Callable[[PeerCall], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(cb)
                return
        cb(self)

    def done(self) -> bool:
        return self._done.is_set()

    @property
    def error(self) -> EngramError | None:
        return self._error

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        if not self._done.wait(timeout):
            raise errors.DeadlineExceeded(f"node {self.peer} did not answer {self.method} in time", code="peer_timeout")
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer


class Peer:
    """The channel to one other node, with its breaker."""

    def __init__(
        self,
        node_id: str,
        address: str,
        *,
        self_id: str,
        tls: PeerTLS | None,
        metrics: PeerMetrics,
        timeout: float,
        breaker: CircuitBreaker,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.self_id = self_id
        self.timeout = timeout
        self.breaker = breaker
        self.metrics = metrics
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            # Reconnect quickly after a peer restarts, instead of gRPC's default backoff of up to 2 minutes.
            ("grpc.max_reconnect_backoff_ms", 2_000),
            ("grpc.min_reconnect_backoff_ms", 200),
        ]
        if tls is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
            )
            options.append(("grpc.ssl_target_name_override", node_id))
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self._methods: dict[str, Any] = {}
        metrics.breaker_open.labels(node_id).set(0)  # every known peer has a breaker state on /metrics

    def close(self) -> None:
        self.channel.close()

    def _stub(self, method: str) -> Any:
        stub = self._methods.get(method)
        if stub is None:
            stub = self.channel.unary_unary(f"/{SERVICE}/{method}")
            self._methods[method] = stub
        return stub

    def call_async(self, method: str, message: Mapping[str, Any], timeout: float | None = None) -> PeerCall:
        """Send ``message``; the returned call completes with the answer or an EngramError."""
        call = PeerCall(self.node_id, method)
        if not self.breaker.allow():
            self.metrics.failures.labels(self.node_id, method, "breaker_open").inc()
            call._finish(
                None,
                Unavailable(
                    f"node {self.node_id} is being skipped after repeated failures (circuit breaker open)",
                    code="peer_unavailable",
                ),
            )
            return call
        payload = wire.dumps(message)
        start = time.perf_counter()
        fut = self._stub(method).future(
            payload,
            timeout=timeout or self.timeout,  # a caller may give a longer deadline (a backup)
            metadata=((NODE_KEY, self.self_id),),
        )

        def done(f: Any) -> None:
            self.metrics.seconds.labels(self.node_id, method).observe(time.perf_counter() - start)
            try:
                answer = wire.loads(f.result())
            except grpc.RpcError as e:
                err = self._error(e, method)
                call._finish(None, err)
                return
            except EngramError as e:
                self._transport_failed(method, e.code)
                call._finish(None, e)
                return
            except BaseException as e:  # a callback must never raise into gRPC's thread
                self._transport_failed(method, "internal")
                call._finish(None, Unavailable(f"call to node {self.node_id} failed: {type(e).__name__}"))
                if not is_failure(e):
                    raise
                return
            if self.breaker.success():
                log.info("node %s answers again: circuit breaker closed", self.node_id)
                self.metrics.breaker_open.labels(self.node_id).set(0)
            call._finish(answer, None)

        fut.add_done_callback(done)
        return call

    def call(self, method: str, message: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return self.call_async(method, message, timeout).result()

    def _transport_failed(self, method: str, code: str) -> None:
        self.metrics.failures.labels(self.node_id, method, code).inc()
        if self.breaker.failure():
            log.warning(
                "node %s failed %d calls in a row: skipping it for %.1f s (circuit breaker open)",
                self.node_id,
                self.breaker.threshold,
                self.breaker.open_seconds,
            )
            self.metrics.breaker_open.labels(self.node_id).set(1)

    def _error(self, e: grpc.RpcError, method: str) -> EngramError:
        trailing = dict(e.trailing_metadata() or ()) if hasattr(e, "trailing_metadata") else {}
        payload = trailing.get(ERROR_KEY)
        if isinstance(payload, bytes):
            err = _error_from(payload, self.node_id)
            self.metrics.failures.labels(self.node_id, method, err.code).inc()
            if isinstance(err, (Unavailable, errors.Closed)):
                self._transport_failed(method, err.code)
            elif self.breaker.success():
                self.metrics.breaker_open.labels(self.node_id).set(0)
            return err
        status = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
        name = status.name.lower() if status is not None else "unknown"
        self._transport_failed(method, name)
        if status == grpc.StatusCode.DEADLINE_EXCEEDED:
            return errors.DeadlineExceeded(
                f"node {self.node_id} did not answer {method} within the peer deadline", code="peer_timeout"
            )
        return Unavailable(f"node {self.node_id} is unreachable ({name})", code="peer_unavailable")


class Peers:
    """The channels to every other member, kept in step with the membership view."""

    def __init__(
        self,
        self_id: str,
        *,
        tls: PeerTLS | None,
        timeout: float,
        breaker_failures: int,
        breaker_open_seconds: float,
        metrics: PeerMetrics,
    ) -> None:
        self.self_id = self_id
        self.tls = tls
        self.timeout = timeout
        self.breaker_failures = breaker_failures
        self.breaker_open_seconds = breaker_open_seconds
        self.metrics = metrics
        self._lock = threading.Lock()
        self._peers: dict[str, Peer] = {}

    def update(self, addresses: Mapping[str, str]) -> None:
        """Open channels to new members, re-open those whose address changed, close those gone."""
        stale = []
        with self._lock:
            for node_id, peer in list(self._peers.items()):
                if addresses.get(node_id) != peer.address:
                    stale.append(self._peers.pop(node_id))
            for node_id, address in addresses.items():
                if node_id != self.self_id and node_id not in self._peers:
                    self._peers[node_id] = Peer(
                        node_id,
                        address,
                        self_id=self.self_id,
                        tls=self.tls,
                        metrics=self.metrics,
                        timeout=self.timeout,
                        breaker=CircuitBreaker(self.breaker_failures, self.breaker_open_seconds),
                    )
        for p in stale:
            p.close()

    def get(self, node_id: str) -> Peer | None:
        with self._lock:
            return self._peers.get(node_id)

    def usable(self, node_id: str) -> bool:
        """Known and not skipped by its breaker right now."""
        p = self.get(node_id)
        return p is not None and p.breaker.state != "open"

    def states(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            peers = list(self._peers.values())
        return {p.node_id: {"address": p.address, "breaker": p.breaker.state} for p in peers}

    def close(self) -> None:
        with self._lock:
            peers, self._peers = list(self._peers.values()), {}
        for p in peers:
            p.close()


def wait_quorum(calls: Sequence[PeerCall], needed: int, timeout: float) -> None:
    """Wait until ``needed`` calls succeeded, or every call finished, or ``timeout`` passed.

    When ``needed`` cannot be reached any more the others are still waited for (they are in flight
    and quick unless their node is slow), so a failure reports how many replicas really acked.
    """
    cond = threading.Condition()
    deadline = time.monotonic() + timeout

    def ready() -> bool:
        ok = sum(1 for c in calls if c.done() and c.error is None)
        return ok >= needed or all(c.done() for c in calls)

    def notify(_: PeerCall) -> None:
        with cond:
            cond.notify_all()

    for c in calls:
        c.add_done_callback(notify)
    with cond:
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            cond.wait(left)


# ------------------------------------------------------------------ server
class PeerServer:
    """The internal gRPC service: dispatches each method to its handler with the caller's node id."""

    def __init__(
        self,
        host: str,
        port: int,
        handlers: Mapping[str, Handler],
        *,
        tls: PeerTLS | None,
        is_member: Callable[[str], bool],
        workers: int = 32,
    ) -> None:
        self._handlers = dict(handlers)
        self._is_member = is_member
        self._tls = tls
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engramdb-peer"),
            options=[
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
                ("grpc.so_reuseport", 0),
            ],
        )
        rpc = {name: grpc.unary_unary_rpc_method_handler(self._wrap(name)) for name in self._handlers}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, rpc),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if tls is not None:
            creds = grpc.ssl_server_credentials(
                [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
            )
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen for node-to-node calls on {address} (cluster.peer_port)")

    def start(self) -> PeerServer:
        self.server.start()
        return self

    def stop(self, grace: float) -> None:
        self.server.stop(grace).wait(grace + 1)

    def _caller(self, context: grpc.ServicerContext) -> str:
        claimed = dict(context.invocation_metadata() or ()).get(NODE_KEY, "")
        if self._tls is not None:
            auth = context.auth_context()
            names = {
                n.decode(errors="replace")
                for n in (auth.get("x509_subject_alternative_name", []) + auth.get("x509_common_name", []))
            }
            if claimed not in names or not self._is_member(claimed):
                raise errors.PermissionDenied(
                    "the caller's certificate does not name a member of this cluster", code="peer_not_allowed"
                )
        return str(claimed)

    def _wrap(self, name: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        handler = self._handlers[name]

        def run(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                caller = self._caller(context)
                return wire.dumps(handler(wire.loads(request), caller))
            except EngramError as e:
                context.set_trailing_metadata(((ERROR_KEY, _error_payload(e)),))
                context.abort(_STATUS.get(e.grpc_status, grpc.StatusCode.INTERNAL), e.message)
            except Exception as e:
                log.exception("node-to-node %s failed", name)
                err = errors.EngramError(f"internal error in {name} on node ({type(e).__name__})")
                context.set_trailing_metadata(((ERROR_KEY, _error_payload(err)),))
                context.abort(grpc.StatusCode.INTERNAL, err.message)
            raise AssertionError("context.abort raises")

        return run
