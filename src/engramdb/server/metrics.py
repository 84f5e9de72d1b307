"""Server metrics: HTTP request counters and storage/index gauges, in Prometheus text format.

Everything lives in the service's own registry (see
:mod:`engramdb.service.metrics`), so ``/metrics`` shows the per-operation
histograms of REST and gRPC together with the HTTP and storage series.
Storage gauges are computed at scrape time from the open database, never
stored twice.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engramdb.errors import EngramError
from engramdb.service import Service
from engramdb.service.metrics import LATENCY_BUCKETS

__all__ = [
    "CLUSTER_METRICS",
    "CONTENT_TYPE_LATEST",
    "EXPORTED_METRICS",
    "HttpMetrics",
    "MetricsPort",
    "install",
    "render",
]


class HttpMetrics:
    """Requests by method, route template and status; latency by method and route."""

    def __init__(self, service: Service):
        r = service.metrics.registry
        self.requests = Counter(
            "engramdb_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.seconds = Histogram(
            "engramdb_http_request_duration_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )

        # (method, route, status) -> (counter child, histogram child): ``labels()`` validates and
        # locks on every call, a dict hit does not. Bounded like the series themselves (routes are
        # templates, methods and statuses few); setdefault keeps a racing duplicate harmless.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children.setdefault(
                key, (self.requests.labels(method, route, str(status)), self.seconds.labels(method, route))
            )
        children[0].inc()
        children[1].observe(seconds)


# Every metric family /metrics exports (as the exposition names it, counters without ``_total``),
# whatever the data: dashboards and alert rules may use these and no others (tests check both ways).
# Histograms also export ``_bucket``, ``_sum`` and ``_count`` series; counters ``_total`` and ``_created``.
EXPORTED_METRICS: tuple[str, ...] = (
    # service (engramdb.service.metrics)
    "engramdb_operation_duration_seconds",
    "engramdb_operations",
    "engramdb_auth_failures",
    "engramdb_rate_limited",
    "engramdb_operations_in_flight",
    "engramdb_index_snapshot_duration_seconds",
    "engramdb_index_replay_duration_seconds",
    "engramdb_index_rebuild_duration_seconds",
    # HTTP
    "engramdb_http_requests",
    "engramdb_http_request_duration_seconds",
    # node and collections (StorageCollector)
    "engramdb_ready",
    "engramdb_uptime_seconds",
    "engramdb_disk_free_bytes",
    "engramdb_memory_limit_bytes",
    "engramdb_collections",
    "engramdb_collection_records",
    "engramdb_collection_loaded",
    "engramdb_collection_text_documents",
    "engramdb_collection_payload_index_bytes",
    # RocksDB (EngineCollector)
    "engramdb_rocksdb_pending_compaction_bytes",
    "engramdb_rocksdb_memtable_bytes",
    "engramdb_rocksdb_sst_files",
    "engramdb_rocksdb_sst_bytes",
    "engramdb_rocksdb_estimated_keys",
    "engramdb_rocksdb_write_stalls",
    "engramdb_rocksdb_stall_seconds",
    "engramdb_rocksdb_delayed_write_rate_bytes",
    "engramdb_rocksdb_write_stopped",
    "engramdb_rocksdb_wal_bytes",
    "engramdb_rocksdb_block_cache_usage_bytes",
    "engramdb_rocksdb_block_cache_pinned_bytes",
    "engramdb_rocksdb_block_cache_capacity_bytes",
    "engramdb_rocksdb_block_cache_hits",
    "engramdb_rocksdb_block_cache_misses",
    # process (prometheus_client's process and platform collectors; Linux)
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "python_info",
    "python_gc_objects_collected",
    "python_gc_objects_uncollectable",
    "python_gc_collections",
)
# Families present only when the data exists: block-cache hits/misses need storage.statistics; the memory
# limit needs a cgroup limit; process_* need Linux's /proc.
# Exported by a node in cluster mode (engramdb.cluster.peers), per peer node id.
CLUSTER_METRICS: tuple[str, ...] = (
    "engramdb_cluster_etcd_session",
    "engramdb_cluster_members",
    "engramdb_peer_rpc_duration_seconds",
    "engramdb_peer_rpc_errors",
    "engramdb_peer_breaker_open",
)
CONDITIONAL_METRICS: frozenset[str] = frozenset(
    {
        "engramdb_rocksdb_block_cache_hits",
        "engramdb_rocksdb_block_cache_misses",
        "engramdb_memory_limit_bytes",
        "python_gc_objects_collected",
        "python_gc_objects_uncollectable",
        "python_gc_collections",
    }
)
# The label both names take for collections past server.metrics_max_collections (a name never starts with "_").
OTHER = "_other"


class StorageCollector(Collector):
    """Readiness, uptime, free disk, memory limit, and per-collection sizes (bounded label sets).

    Collections get their own ``tenant``/``collection`` labels up to
    ``server.metrics_max_collections`` (the largest first); the rest are summed
    under ``tenant="_other", collection="_other"``, so a tenant creating
    thousands of collections cannot blow up the scraper's series count.
    """

    def __init__(self, service: Service):
        self.service = service
        self.started = time.time()
        self.max_labelled = service.settings.server.metrics_max_collections

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        ready = GaugeMetricFamily("engramdb_ready", "1 once every collection's indexes are loaded")
        ready.add_metric([], 1.0 if svc.readiness.ready else 0.0)
        yield ready
        up = GaugeMetricFamily("engramdb_uptime_seconds", "Seconds since the server started")
        up.add_metric([], time.time() - self.started)
        yield up
        yield from self._collections()
        readings = svc.resources.readings()
        if readings.disk_free is not None:
            free = GaugeMetricFamily("engramdb_disk_free_bytes", "Free bytes on the data directory's file system")
            free.add_metric([], float(readings.disk_free))
            yield free
        if readings.cgroup_memory_limit is not None:
            limit = GaugeMetricFamily(
                "engramdb_memory_limit_bytes", "The memory limit of the server's cgroup (memory.max), when it has one"
            )
            limit.add_metric([], float(readings.cgroup_memory_limit))
            yield limit

    def _collections(self) -> Iterator[Metric]:
        labels = ["tenant", "collection"]
        count = GaugeMetricFamily("engramdb_collections", "Collections of every tenant")
        records = GaugeMetricFamily(
            "engramdb_collection_records",
            "Records in the vector index of each loaded collection (expired but unswept ones included)",
            labels=labels,
        )
        loaded = GaugeMetricFamily(
            "engramdb_collection_loaded", "1 when the collection's indexes are in memory", labels=labels
        )
        docs = GaugeMetricFamily(
            "engramdb_collection_text_documents", "Documents in the text index of each loaded collection", labels=labels
        )
        payload = GaugeMetricFamily(
            "engramdb_collection_payload_index_bytes",
            "Memory of each loaded collection's payload (filter) index, estimated at most once a minute",
            labels=labels,
        )
        rows: list[tuple[str, str, bool, int | None, int | None, int | None]] = []
        try:
            colls = self.service.db.collections()
            for coll in colls:
                ix = coll.indexes
                # payload_bytes is cached by the indexes (the walk runs at most once a minute).
                rows.append((coll.tenant, coll.name, coll.loaded, ix.size(), ix.text_documents(), ix.payload_bytes()))
        except EngramError:
            pass  # the database closed during shutdown; report what we have
        count.add_metric([], float(len(rows)))
        yield count
        # The largest keep their labels; ties in name order, so the set is stable between scrapes.
        rows.sort(key=lambda r: (-(r[3] or 0), r[0], r[1]))
        rest = [0.0, 0.0, 0.0, 0.0]
        for i, (tenant, name, is_loaded, n, d, pb) in enumerate(rows):
            if i < self.max_labelled:
                loaded.add_metric([tenant, name], 1.0 if is_loaded else 0.0)
                for fam, value in ((records, n), (docs, d), (payload, pb)):
                    if value is not None:
                        fam.add_metric([tenant, name], float(value))
            else:
                for j, extra in enumerate((1.0 if is_loaded else 0.0, n, d, pb)):
                    rest[j] += float(extra or 0)
        if len(rows) > self.max_labelled:
            for j, fam in enumerate((loaded, records, docs, payload)):
                fam.add_metric([OTHER, OTHER], rest[j])
        yield records
        yield loaded
        yield docs
        yield payload


class EngineCollector(Collector):
    """RocksDB's gauges and counters (``Store.engine_stats``), per column family where RocksDB keeps them."""

    def __init__(self, service: Service):
        self.service = service

    def collect(self) -> Iterator[Metric]:
        try:
            st = self.service.db.store.engine_stats()
        except EngramError:
            return  # closed during shutdown
        cf = ["cf"]
        pending = GaugeMetricFamily(
            "engramdb_rocksdb_pending_compaction_bytes", "Bytes compaction estimates it still has to rewrite", labels=cf
        )
        memtable = GaugeMetricFamily("engramdb_rocksdb_memtable_bytes", "Memory of the memtables", labels=cf)
        files = GaugeMetricFamily("engramdb_rocksdb_sst_files", "SST files per LSM level", labels=["cf", "level"])
        sst = GaugeMetricFamily("engramdb_rocksdb_sst_bytes", "Bytes of the live SST files", labels=cf)
        keys = GaugeMetricFamily("engramdb_rocksdb_estimated_keys", "Keys, as RocksDB estimates them", labels=cf)
        stalls = CounterMetricFamily(
            "engramdb_rocksdb_write_stalls",
            "Writes RocksDB slowed (delay) or stopped (stop) since the server started",
            labels=["cf", "kind"],
        )
        for name, cfs in sorted(st.column_families.items()):
            pending.add_metric([name], float(cfs.pending_compaction_bytes))
            memtable.add_metric([name], float(cfs.memtable_bytes))
            sst.add_metric([name], float(cfs.sst_bytes))
            keys.add_metric([name], float(cfs.estimated_keys))
            for level, n in enumerate(cfs.files_per_level):
                files.add_metric([name, str(level)], float(n))
            stalls.add_metric([name, "delay"], float(cfs.stalls.get("total-delays", 0)))
            stalls.add_metric([name, "stop"], float(cfs.stalls.get("total-stops", 0)))
        yield from (pending, memtable, files, sst, keys, stalls)
        stall = CounterMetricFamily(
            "engramdb_rocksdb_stall_seconds", "Time writes spent stalled by RocksDB since the server started"
        )
        stall.add_metric([], st.stall_seconds)
        yield stall
        for name, help_text, value in (
            (
                "engramdb_rocksdb_delayed_write_rate_bytes",
                "The rate RocksDB slows writes to while compaction catches up (0: not slowed)",
                st.delayed_write_rate,
            ),
            ("engramdb_rocksdb_write_stopped", "1 while RocksDB stops every write", float(st.write_stopped)),
            ("engramdb_rocksdb_wal_bytes", "Bytes of the write-ahead log files", st.wal_bytes),
            ("engramdb_rocksdb_block_cache_usage_bytes", "Bytes in the block cache", st.block_cache_usage),
            ("engramdb_rocksdb_block_cache_pinned_bytes", "Bytes pinned in the block cache", st.block_cache_pinned),
            ("engramdb_rocksdb_block_cache_capacity_bytes", "Size of the block cache", st.block_cache_capacity),
        ):
            g = GaugeMetricFamily(name, help_text)
            g.add_metric([], float(value))
            yield g
        if st.tickers:  # storage.statistics only
            for name, ticker, what in (
                ("engramdb_rocksdb_block_cache_hits", "hit", "Block reads the block cache answered"),
                ("engramdb_rocksdb_block_cache_misses", "miss", "Block reads the block cache missed"),
            ):
                c = CounterMetricFamily(name, what + " (storage.statistics), by block kind", labels=["kind"])
                c.add_metric(["all"], float(st.tickers.get(f"rocksdb.block.cache.{ticker}", 0)))
                for kind in ("data", "index", "filter"):
                    c.add_metric([kind], float(st.tickers.get(f"rocksdb.block.cache.{kind}.{ticker}", 0)))
                yield c


def install(service: Service) -> HttpMetrics:
    """Register the HTTP, storage, engine and process metrics on the service's registry (once per service)."""
    existing = getattr(service, "_http_metrics", None)
    if isinstance(existing, HttpMetrics):
        return existing
    http = HttpMetrics(service)
    r = service.metrics.registry
    r.register(StorageCollector(service))
    r.register(EngineCollector(service))
    # The standard process_* and python_* families, in this registry rather than the global one.
    ProcessCollector(registry=r)
    PlatformCollector(registry=r)
    GCCollector(registry=r)
    service._http_metrics = http  # type: ignore[attr-defined]
    return http


def render(service: Service) -> bytes:
    """The Prometheus text exposition of every metric of this service."""
    return generate_latest(service.metrics.registry)


# Host names a request to the metrics port may carry: a page whose DNS name was rebound to 127.0.0.1
# sends its own name and is refused, so no web page can read the port through the operator's browser.
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_MAX_SCRAPES = 4  # concurrent requests; more get 503 (only local processes can connect at all)
# Connections at once (each a thread): more are closed at once. A connection's request head must arrive within
# _HEAD_DEADLINE seconds in all (a per-read timeout alone lets a client drip a byte at a time forever), and the
# whole connection ends after _CONNECTION_DEADLINE seconds, so no local process can hold the port's threads.
_MAX_CONNECTIONS = 16
_HEAD_DEADLINE = 5.0
_CONNECTION_DEADLINE = 30.0


class MetricsPort:
    """``/metrics`` without a key on a loopback address (``server.metrics_port``), in threads of its own.

    Only processes on this machine can connect, which is the access control;
    a request must also name a loopback host (DNS rebinding) and carry no
    foreign ``Origin``. GET and HEAD of ``/metrics`` only.
    """

    def __init__(self, service: Service, host: str, port: int):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        slots = threading.BoundedSemaphore(_MAX_SCRAPES)
        connections = threading.BoundedSemaphore(_MAX_CONNECTIONS)

        class Handler(BaseHTTPRequestHandler):
            timeout = _HEAD_DEADLINE  # per read; _cut_after bounds the total
            server_version = "engramdb"
            sys_version = ""

            def setup(self) -> None:
                super().setup()
                self._started = time.monotonic()
                self._deadline = self._cut_after(_HEAD_DEADLINE)

            def _cut_after(self, seconds: float) -> threading.Timer:
                def cut() -> None:
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)  # the handler's blocked read returns at once

                timer = threading.Timer(seconds, cut)
                timer.daemon = True
                timer.start()
                return timer

            def parse_request(self) -> bool:
                ok = super().parse_request()  # reads the headers: the head is complete here
                self._deadline.cancel()
                self._deadline = self._cut_after(max(0.0, _CONNECTION_DEADLINE - (time.monotonic() - self._started)))
                return ok

            def finish(self) -> None:
                self._deadline.cancel()
                super().finish()

            def do_GET(self) -> None:
                self._serve(body=True)

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def _serve(self, *, body: bool) -> None:
                if self.path != "/metrics":
                    self._plain(404, "only /metrics is served on this port\n", body)
                    return
                if not _loopback_request(self.headers.get("Host"), self.headers.get("Origin")):
                    self._plain(421, "this port answers requests to a loopback host name only\n", body)
                    return
                if not slots.acquire(blocking=False):
                    self._plain(503, "too many concurrent scrapes\n", body)
                    return
                try:
                    data = render(service)
                finally:
                    slots.release()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _plain(self, status: int, text: str, body: bool) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes are not worth a log line each (as /metrics on the main port)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                if not connections.acquire(blocking=False):
                    self.shutdown_request(request)  # closed before any thread starts for it
                    return
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    connections.release()
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    connections.release()

        self._server = Server((host, port), Handler)
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="engramdb-metrics-port", kwargs={"poll_interval": 0.5}, daemon=True
        )

    def start(self) -> MetricsPort:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _loopback_request(host: str | None, origin: str | None) -> bool:
    from urllib.parse import urlsplit

    if host is None:
        return False
    try:
        name = urlsplit("//" + host.strip()).hostname
    except ValueError:
        return False
    if name not in _LOOPBACK_HOSTS:
        return False
    if origin is None:
        return True
    try:
        return urlsplit(origin.strip()).hostname in _LOOPBACK_HOSTS
    except ValueError:
        return False
