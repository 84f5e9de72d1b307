"""Running the server: validate, open, serve REST and gRPC, load, drain, close.

``run_server(settings)`` is what ``engramdb serve`` calls. Order of events:

1. Validate the whole configuration (``config.check`` plus the bootstrap key);
   any problem → print every one and refuse to start (exit status 1).
2. Open the database, build the service, start gRPC, bind REST (with TLS 1.2+
   when configured).
3. Load every collection's indexes in a background thread; ``/ready`` answers
   503 with progress until that finishes, then 200. Then the heap is frozen
   for the cyclic garbage collector (:class:`HeapFreezer`).
4. On SIGTERM/SIGINT: ``/ready`` turns 503, both servers stop accepting, in-flight
   requests get up to ``server.shutdown_timeout_seconds`` to finish, then the
   service (its extraction model's connections) and the database are closed
   (which snapshots the indexes) and the process exits 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Collection, Generator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from engramdb import tracing
from engramdb.config import Settings, TLSSettings, affected, check, dev_only_env_warnings, is_loopback_host
from engramdb.errors import EngramError
from engramdb.service.api_keys import load_bootstrap_key, load_metrics_key

if TYPE_CHECKING:
    from engramdb.service import Service

log = logging.getLogger("engramdb.server")


def preflight(settings: Settings, *, invalid: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of a server configuration; problems prevent starting.

    ``invalid``: settings the schema rejected (``config.gather``), replaced by defaults in ``settings``;
    problems about them are left out, the schema's own report already names them.
    """
    problems = list(check(settings))
    warnings: list[str] = []
    admin_key = None
    try:
        admin_key = load_bootstrap_key(settings)
    except EngramError as e:
        problems.append(e.message)
    try:
        load_metrics_key(settings)
    except EngramError as e:
        problems.append(e.message)
    srv = settings.server
    if srv.auth_required() and admin_key is None and not problems:
        warnings.append(
            "auth is required but no bootstrap admin key is set (ENGRAMDB_ADMIN_KEY or server.admin_key_file); "
            "only keys made with `engramdb keys create` will work"
        )
    if srv.auth == "disabled" and not is_loopback_host(srv.host):
        warnings.append(
            f"auth is disabled while listening on {srv.host}: anyone who can connect is an admin of tenant 'default'"
        )
    warnings.extend(dev_only_env_warnings())
    ext = settings.extraction
    if not ext.enabled and ext.customised():
        warnings.append("extraction settings are given but extraction.model is not set: extraction stays disabled")
    return [p for p in problems if not affected(p, invalid)], warnings


# TLS 1.2 suites REST accepts: forward-secret key exchange with AEAD ciphers only, as gRPC's BoringSSL offers.
# CBC suites (padding-oracle history, e.g. Lucky13) and RSA key exchange are left out; TLS 1.3's suites are all AEAD.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def tls_context(tls: TLSSettings) -> ssl.SSLContext:
    """The REST server's TLS context: TLS 1.2+, AEAD suites only, client certificates when a client CA is set."""
    assert tls.cert_file is not None and tls.key_file is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class HeapFreezer:
    """Keeps the loaded database out of the cyclic garbage collector's full passes.

    Loaded collections are tens of thousands of long-lived container objects
    (id maps, payload and text index state). CPython's full (gen 2) collection
    walks all of them: under search load it ran every 0.6-0.8 s and took 30-40
    ms of CPU each time with 20,000 rows (more with more rows), holding the GIL,
    so every request in flight waited: that was most of the p99 at 32 clients.
    ``gc.freeze()`` after the load moves what is alive into the permanent
    generation, which collections skip; per-request garbage is collected as
    before. Frozen objects that later become cyclic garbage (a dropped
    collection) are only found after ``gc.unfreeze()``, so every
    ``interval`` seconds the heap is collected whole once and frozen again: one
    full pass per interval instead of one per second.
    """

    def __init__(self, interval: float = 600.0):
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0  # full collections done (for tests)

    def freeze(self) -> None:
        """Collect everything (frozen objects included), then freeze what is alive."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.passes += 1

    def start(self) -> None:
        """Freeze now and again every ``interval`` seconds, in a daemon thread, until :meth:`stop`."""
        self.freeze()
        self._thread = threading.Thread(target=self._run, name="engramdb-gc-freeze", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.freeze()
            except Exception:  # never silently: without it the full passes come back, nothing else breaks
                log.exception(
                    "re-freezing the heap for the garbage collector failed; retrying in %.0f s", self.interval
                )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)


def load_then_freeze(service: Service, freezer: HeapFreezer) -> None:
    """The loader thread: every collection's indexes, then the heap frozen (also after a failed load)."""
    try:
        service.load_all()
    finally:
        freezer.start()


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
        from engramdb.server.grpc.server import start_grpc_server
    except ImportError as e:
        log.warning("gRPC is enabled but its module is unavailable (%s); serving REST only", e)
        return None
    return start_grpc_server(service, settings)


def _start_metrics_port(service: Service, settings: Settings) -> Any:
    """The keyless /metrics listener on a loopback address (``server.metrics_port``), or None when it is off."""
    srv = settings.server
    if not srv.metrics_port:
        return None
    from engramdb.server.metrics import MetricsPort

    port = MetricsPort(service, srv.metrics_host, srv.metrics_port).start()
    log.info("/metrics without a key on http://%s:%d/metrics (loopback only)", _bracket(port.host), port.port)
    return port


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _start_tracing(settings: Settings) -> None:
    """Export spans when ``tracing.enabled`` (``config.check`` made sure the SDK is installed)."""
    cfg = settings.tracing
    if not cfg.enabled:
        return
    from urllib.parse import urlsplit

    tracing.configure(service_name=cfg.service_name, sample_ratio=cfg.sample_ratio, endpoint=cfg.otlp_endpoint)
    where = urlsplit(cfg.otlp_endpoint)  # scheme and host only: a path or query may carry a token
    log.info(
        "tracing on: spans of %.0f%% of new traces to %s://%s (service %s)",
        cfg.sample_ratio * 100,
        where.scheme,
        where.netloc.rpartition("@")[2],
        cfg.service_name,
    )


def run_server(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status (0 after a clean shutdown)."""
    from engramdb.service.logs import configure_logging

    problems, warnings = preflight(settings)
    if problems:
        print(f"engramdb: refusing to start, {len(problems)} configuration problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    configure_logging(settings.server.log_level)
    for w in warnings:
        log.warning(w)

    from engramdb.engine.database import Database
    from engramdb.server.rest import create_app
    from engramdb.server.rest.transport import ConnectionLimits, effective_max_connections, protocol_class
    from engramdb.service import Service

    srv = settings.server
    node_id: str | None = None
    if settings.cluster.enabled:
        from engramdb.cluster.identity import hlc_node, resolve_node_id

        try:
            Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
            node_id = resolve_node_id(Path(settings.data_dir), settings.cluster.node_id)
        except (EngramError, OSError) as e:
            print(f"engramdb: refusing to start: {getattr(e, 'message', e)}", file=sys.stderr)
            return 1
        # Versions this node stamps carry its number, so two coordinators never issue the same one.
        settings = dataclasses.replace(settings, node_id=hlc_node(node_id))
    try:
        db = Database(settings.data_dir, settings)
    except Exception as e:  # a held LOCK (another server on this data dir), permissions, corruption
        print(f"engramdb: cannot open the data directory {settings.data_dir}: {e}", file=sys.stderr)
        return 1
    cluster: Any = None
    try:
        extra: dict[str, Any] = {}
        if node_id is not None:
            from engramdb.cluster.node import ClusterNode

            cluster = ClusterNode(db, settings, node_id)
            extra = {
                "data": cluster.coordinator,
                "key_rows": cluster.metadata,
                "problems": cluster.problems,
                "cluster_backup": cluster.backup,
            }
        service = Service(
            db, settings, admin_key=load_bootstrap_key(settings), metrics_key=load_metrics_key(settings), **extra
        )
    except (EngramError, OSError) as e:  # e.g. the extraction key vanished between preflight and here
        print(f"engramdb: refusing to start: {getattr(e, 'message', e)}", file=sys.stderr)
        db.close()
        return 1
    if cluster is not None:
        cluster.use_registry(service.metrics.registry)
        cluster.start()
    metrics_port: Any = None
    try:
        metrics_port = _start_metrics_port(service, settings)
    except OSError as e:
        print(
            f"engramdb: cannot listen for /metrics on {srv.metrics_host}:{srv.metrics_port} "
            f"(server.metrics_port): {e.strerror or e}",
            file=sys.stderr,
        )
        _leave(cluster)
        service.close()
        db.close()
        return 1
    _start_tracing(settings)
    grpc_handle: Any = None
    try:
        grpc_handle = _start_grpc(service, settings)
    except Exception as e:
        print(f"engramdb: cannot start gRPC: {e}", file=sys.stderr)
        if metrics_port is not None:
            metrics_port.stop()
        tracing.shutdown()
        _leave(cluster)
        service.close()
        db.close()
        return 1

    app = create_app(service)
    limits = ConnectionLimits(
        max_connections=effective_max_connections(srv.max_connections),
        max_header_bytes=srv.max_header_kb * 1024,
        header_timeout=srv.header_timeout_seconds,
    )
    if limits.max_connections < srv.max_connections:
        log.warning(
            "server.max_connections lowered to %d: half the process's file descriptor limit (raise `ulimit -n`)",
            limits.max_connections,
        )
    http_protocol = protocol_class(limits)
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
        # Connection cap, head size and read deadlines (uvicorn has none of its own for request heads).
        http=http_protocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
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
    freezer = HeapFreezer()
    loader = threading.Thread(target=load_then_freeze, args=(service, freezer), name="engramdb-load", daemon=True)
    loader.start()
    scheme = "https" if srv.tls.enabled else "http"
    log.info("EngramDB REST on %s://%s:%d, data in %s", scheme, srv.host, srv.port, db.path)
    # Which callers get in is the first thing an operator needs to know: say it, and why.
    log.log(logging.WARNING if service.auth_mode != "required" else logging.INFO, service.auth_summary())
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
        freezer.stop()
        service.close()  # after the drain: no extraction is using the model's connections any more
        if cluster is not None:
            try:
                cluster.close(grace=min(5.0, left()))
            except BaseException:
                log.exception("leaving the cluster failed")
        if metrics_port is not None:
            metrics_port.stop()
        tracing.shutdown()  # the last spans, before the process goes
        clean = False
        try:
            # Bounded, even with a storage or index thread hung or dead: a stop
            # must always finish. What a cut-short close leaves undone (a
            # snapshot) is caught up from the changelog at the next start.
            clean = db.close_within(left() + _CLOSE_SLACK_SECONDS)
            if not clean:
                log.error("the database did not close cleanly within the shutdown timeout")
        except BaseException:
            log.exception("closing the database failed")
        if not clean:
            status = status or 1
            _exit_soon(status)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("EngramDB stopped")
    return status


def _leave(cluster: Any) -> None:
    """Leave the cluster when start-up fails after joining it (others see this node down at once)."""
    if cluster is not None:
        try:
            cluster.close(grace=0.0)
        except BaseException:
            log.exception("leaving the cluster failed")


# The database close (index snapshots) gets the rest of the shutdown budget plus this.
_CLOSE_SLACK_SECONDS = 5.0
# After an unclean close, how long the interpreter may take to exit before it is cut short.
_EXIT_GRACE_SECONDS = 5.0


def _exit_soon(status: int) -> None:
    """Make sure the process ends although threads of the unclean close are stuck.

    Python's exit joins every worker thread of the REST and gRPC thread pools,
    so one request stuck on a hung index lock would keep the process alive
    forever after SIGTERM. A daemon timer ends it with ``status`` if the normal
    exit has not happened ``_EXIT_GRACE_SECONDS`` after this. Acknowledged
    writes are in RocksDB's write-ahead log already.
    """
    import os

    def cut() -> None:
        time.sleep(_EXIT_GRACE_SECONDS)
        log.critical("the process did not exit %.0f s after shutdown; exiting now", _EXIT_GRACE_SECONDS)
        logging.shutdown()
        os._exit(status)

    threading.Thread(target=cut, name="engramdb-exit-watchdog", daemon=True).start()
