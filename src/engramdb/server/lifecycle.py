"""Running the server: validate, open, serve REST and gRPC, load, drain, close.

``run_server(settings)`` is what ``engramdb serve`` calls. Order of events:

1. Validate the whole configuration (``config.check`` plus the bootstrap key);
   any problem → print every one and refuse to start (exit status 1).
2. Open the database, build the service, start gRPC, bind REST (with TLS 1.2+
   when configured).
3. Load every collection's indexes in a background thread; ``/ready`` answers
   503 with progress until that finishes, then 200.
4. On SIGTERM/SIGINT: ``/ready`` turns 503, both servers stop accepting, in-flight
   requests get up to ``server.shutdown_timeout_seconds`` to finish, then the
   service (its extraction model's connections) and the database are closed
   (which snapshots the indexes) and the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Generator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from ..config import Settings, TLSSettings, check
from ..errors import EngramError
from ..service.keys import load_bootstrap_key

if TYPE_CHECKING:
    from ..service import Service

log = logging.getLogger("engramdb.server")


def preflight(settings: Settings) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of a server configuration; problems prevent starting."""
    problems = list(check(settings))
    warnings: list[str] = []
    admin_key = None
    try:
        admin_key = load_bootstrap_key(settings)
    except EngramError as e:
        problems.append(e.message)
    srv = settings.server
    if srv.auth_required() and admin_key is None and not problems:
        warnings.append(
            "auth is required but no bootstrap admin key is set (ENGRAMDB_ADMIN_KEY or server.admin_key_file); "
            "only keys made with `engramdb keys create` will work"
        )
    if srv.auth == "disabled" and not _is_loopback(srv.host):
        warnings.append(f"auth is disabled while listening on {srv.host}: anyone who can connect is an admin")
    if srv.tls.dev_insecure:
        warnings.append("server.tls.dev_insecure is on: for development only")
    ext = settings.extraction
    if not ext.enabled and ext.customised():
        warnings.append("extraction settings are given but extraction.model is not set: extraction stays disabled")
    return problems, warnings


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def tls_context(tls: TLSSettings) -> ssl.SSLContext:
    """The REST server's TLS context: TLS 1.2 or newer, client certificates when a client CA is set."""
    assert tls.cert_file is not None and tls.key_file is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Server(uvicorn.Server):
    """uvicorn's server with signal handling owned by :func:`run_server`.

    uvicorn re-raises a caught SIGTERM after serving, which would kill the
    process before the database is closed; here the handlers stay installed
    until everything is flushed, and ``on_exit`` runs on the first signal.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self.on_exit = on_exit

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first:
            log.info("signal %s received: draining", signal.Signals(sig).name)
            self.on_exit()


def _start_grpc(service: Service, settings: Settings) -> Any:
    if not settings.server.grpc_enabled:
        return None
    try:
        from .grpc.server import start_grpc_server
    except ImportError as e:
        log.warning("gRPC is enabled but its module is unavailable (%s); serving REST only", e)
        return None
    return start_grpc_server(service, settings)


def run_server(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status (0 after a clean shutdown)."""
    from ..service.logs import configure_logging

    problems, warnings = preflight(settings)
    if problems:
        print(f"engramdb: refusing to start, {len(problems)} configuration problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    configure_logging(settings.server.log_level)
    for w in warnings:
        log.warning(w)

    from ..engine.database import Database
    from ..service import Service
    from .rest import create_app

    srv = settings.server
    try:
        db = Database(settings.data_dir, settings)
    except Exception as e:  # a held LOCK (another server on this data dir), permissions, corruption
        print(f"engramdb: cannot open the data directory {settings.data_dir}: {e}", file=sys.stderr)
        return 1
    try:
        service = Service(db, settings, admin_key=load_bootstrap_key(settings))
    except EngramError as e:  # e.g. the extraction key vanished between preflight and here
        print(f"engramdb: refusing to start: {e.message}", file=sys.stderr)
        db.close()
        return 1
    grpc_handle: Any = None
    try:
        grpc_handle = _start_grpc(service, settings)
    except Exception as e:
        print(f"engramdb: cannot start gRPC: {e}", file=sys.stderr)
        service.close()
        db.close()
        return 1

    app = create_app(service)
    config = uvicorn.Config(
        app,
        host=srv.host,
        port=srv.port,
        log_config=None,  # keep the JSON logging configured above
        access_log=False,  # the app logs each request itself, without query strings
        proxy_headers=False,  # never trust X-Forwarded-For: rate limits and logs use the peer address
        server_header=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=int(-(-srv.shutdown_timeout_seconds // 1)),
        ssl_context_factory=(lambda cfg, default: tls_context(srv.tls)) if srv.tls.enabled else None,
    )
    deadline: list[float] = []
    grpc_stopper: list[threading.Thread] = []

    def on_exit() -> None:
        deadline.append(time.monotonic() + srv.shutdown_timeout_seconds)
        service.readiness.set("shutting_down")
        if grpc_handle is not None:
            # gRPC drains concurrently with HTTP, within the same timeout.
            t = threading.Thread(
                target=grpc_handle.stop, args=(srv.shutdown_timeout_seconds,), name="engramdb-grpc-stop", daemon=True
            )
            t.start()
            grpc_stopper.append(t)

    server = _Server(config, on_exit)
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    loader = threading.Thread(target=service.load_all, name="engramdb-load", daemon=True)
    loader.start()
    scheme = "https" if srv.tls.enabled else "http"
    log.info("EngramDB REST on %s://%s:%d, auth %s, data in %s", scheme, srv.host, srv.port, service.auth_mode, db.path)
    status = 0
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind
        status = int(e.code) if isinstance(e.code, int) else 1
    finally:
        if not deadline:
            on_exit()

        def left() -> float:
            return max(0.0, deadline[0] - time.monotonic())

        for t in grpc_stopper:
            t.join(left() + 1.0)
        service.begin_drain()
        if not service.wait_idle(left()):
            log.warning("shutdown timeout reached with operations still running")
        app.state.run_blocking.shutdown()  # the REST app's threads for blocking calls
        # An index rebuild cannot be cancelled (engine); closing the store under it is unsafe, so give
        # it the rest of the shutdown budget before closing anyway.
        loader.join(timeout=max(1.0, left()))
        if loader.is_alive():
            log.warning("closing while collections are still loading; the next start will rebuild them")
        service.close()  # after the drain: no extraction is using the model's connections any more
        try:
            db.close()
        except Exception:
            log.exception("closing the database failed")
            status = status or 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("EngramDB stopped")
    return status
