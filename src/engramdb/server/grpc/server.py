"""Starting and stopping the gRPC server (``engramdb.v1.EngramDB``).

``start_grpc_server(service, settings)`` binds ``settings.server.host`` :
``settings.server.grpc_port`` (TLS from ``settings.server.tls``, mTLS when a
client CA is set) and returns a :class:`GrpcServerHandle` whose ``stop(grace)``
stops accepting calls and lets in-flight ones finish.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from engramdb.config import Settings, TLSSettings, check
from engramdb.errors import InvalidArgument, Unavailable
from engramdb.server.grpc.servicer import SERVICE_NAME, EngramDBServicer

if TYPE_CHECKING:
    from engramdb.service import Service

log = logging.getLogger("engramdb.server.grpc")

# The GIL serialises Python work, so more threads than this only add
# contention; it still covers many concurrent slow calls (fsync, embedding).
# server.grpc_max_workers overrides it (fewer: less GIL contention for reads).
DEFAULT_MAX_WORKERS = min(64, 16 * (os.cpu_count() or 1))


@dataclass
class GrpcServerHandle:
    """A running gRPC server."""

    server: grpc.Server
    host: str
    port: int  # the bound port (useful when settings asked for port 0)
    tls: bool
    shutdown_timeout: float
    executor: ThreadPoolExecutor

    @property
    def address(self) -> str:
        """``host:port`` as a client would dial it."""
        return f"{_bracket(self.host)}:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, wait up to ``grace`` seconds for in-flight ones, then cancel the rest.

        ``grace`` defaults to ``server.shutdown_timeout_seconds``. Returns when
        the server has fully stopped.
        """
        self.server.stop(self.shutdown_timeout if grace is None else grace).wait()
        # grpc does not own the pool; release its idle threads (a call cancelled
        # at the end of the grace may still be finishing in one: don't wait).
        self.executor.shutdown(wait=False, cancel_futures=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (True) or ``timeout`` passes (False)."""
        return bool(self.server.wait_for_termination(timeout))


def _bracket(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def server_credentials(tls: TLSSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from settings, None when TLS is off; mTLS when ``client_ca_file`` is set."""
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None  # check() guarantees the pair
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def start_grpc_server(service: Service, settings: Settings, *, max_workers: int | None = None) -> GrpcServerHandle:
    """Serve ``service`` over gRPC on ``settings.server.host:grpc_port``; returns once listening.

    Raises InvalidArgument (code ``invalid_config``) for unusable TLS files,
    checked before binding so a bad certificate never yields a half-started
    server, and Unavailable when the address cannot be bound.
    """
    cfg = settings.server
    # The same checks `engramdb config check` runs, restricted to TLS: the
    # data_dir and admin key file are not this server's business.
    problems = [p for p in check(settings) if p.startswith("server.tls")]
    if problems:
        raise InvalidArgument("cannot start gRPC: " + "; ".join(problems), code="invalid_config")
    creds = server_credentials(cfg.tls)

    max_bytes = cfg.max_request_mb * 1024 * 1024
    workers = max_workers or cfg.grpc_max_workers or DEFAULT_MAX_WORKERS
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engramdb-grpc")
    server = grpc.server(
        executor,
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # gRPC enables SO_REUSEPORT by default, which lets a second server
            # silently share the port; a taken port must be an error instead.
            ("grpc.so_reuseport", 0),
        ],
    )
    handlers = EngramDBServicer(service).method_handlers()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # Registered methods skip the per-call generic lookup (grpcio >= 1.62).
    server.add_registered_method_handlers(SERVICE_NAME, handlers)

    address = f"{_bracket(cfg.host)}:{cfg.grpc_port}"
    try:
        port = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    except RuntimeError as e:  # newer grpcio raises instead of returning 0
        executor.shutdown(wait=False)
        raise Unavailable(f"cannot listen for gRPC on {address}: {e}", code="bind_failed") from e
    if port == 0:
        executor.shutdown(wait=False)
        raise Unavailable(f"cannot listen for gRPC on {address} (address in use?)", code="bind_failed")
    server.start()
    log.info("gRPC listening on %s:%d (tls=%s)", cfg.host, port, creds is not None)
    return GrpcServerHandle(server, cfg.host, port, creds is not None, cfg.shutdown_timeout_seconds, executor)
