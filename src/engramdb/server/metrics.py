"""Server metrics: HTTP request counters and storage/index gauges, in Prometheus text format.

Everything lives in the service's own registry (see
:mod:`engramdb.service.metrics`), so ``/metrics`` shows the per-operation
histograms of REST and gRPC together with the HTTP and storage series.
Storage gauges are computed at scrape time from the open database, never
stored twice.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engramdb.errors import EngramError
from engramdb.service import Service
from engramdb.service.metrics import LATENCY_BUCKETS

__all__ = ["CONTENT_TYPE_LATEST", "HttpMetrics", "install", "render"]


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


class StorageCollector(Collector):
    """Per-collection record counts and load state, readiness, uptime and free disk space."""

    def __init__(self, service: Service):
        self.service = service
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        ready = GaugeMetricFamily("engramdb_ready", "1 once every collection's indexes are loaded")
        ready.add_metric([], 1.0 if svc.readiness.ready else 0.0)
        yield ready
        up = GaugeMetricFamily("engramdb_uptime_seconds", "Seconds since the server started")
        up.add_metric([], time.time() - self.started)
        yield up
        records = GaugeMetricFamily(
            "engramdb_collection_records",
            "Records in the vector index of each loaded collection (expired but unswept ones included)",
            labels=["tenant", "collection"],
        )
        loaded = GaugeMetricFamily(
            "engramdb_collection_loaded",
            "1 when the collection's indexes are in memory",
            labels=["tenant", "collection"],
        )
        try:
            for coll in svc.db.collections():
                info = coll.info()
                loaded.add_metric([coll.tenant, coll.name], 1.0 if info["loaded"] else 0.0)
                if info["count"] is not None:
                    records.add_metric([coll.tenant, coll.name], float(info["count"]))
        except EngramError:
            pass  # the database closed during shutdown; report what we have
        yield records
        yield loaded
        try:
            usage = shutil.disk_usage(svc.db.path)
        except OSError:
            return
        free = GaugeMetricFamily("engramdb_disk_free_bytes", "Free bytes on the data directory's file system")
        free.add_metric([], float(usage.free))
        yield free


def install(service: Service) -> HttpMetrics:
    """Register the HTTP and storage metrics on the service's registry (once per service)."""
    existing = getattr(service, "_http_metrics", None)
    if isinstance(existing, HttpMetrics):
        return existing
    http = HttpMetrics(service)
    service.metrics.registry.register(StorageCollector(service))
    service._http_metrics = http  # type: ignore[attr-defined]
    return http


def render(service: Service) -> bytes:
    """The Prometheus text exposition of every metric of this service."""
    return generate_latest(service.metrics.registry)
