"""Prometheus metrics of the service layer (one registry per Service).

A registry per service instead of the global default keeps several services in
one process (tests, embedded tools) from clashing. Labels are bounded: ``op``
is one of the known operations and ``status`` is ``ok`` or a stable error code;
no label ever holds a key, an id or user text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engramdb.engine import timings

# Sub-millisecond point reads up to multi-second bulk writes and graph walks.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Index maintenance: a small collection's snapshot in milliseconds up to a rebuild of millions of vectors.
MAINTENANCE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class ServiceMetrics:
    """Operation latency and outcome, auth failures, rate limiting, in-flight requests."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.op_seconds = Histogram(
            "engramdb_operation_duration_seconds",
            "Time spent in service operations, by operation and outcome",
            ["op", "status"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.op_total = Counter(
            "engramdb_operations", "Service operations by operation and outcome", ["op", "status"], registry=r
        )
        self.auth_failures = Counter(
            "engramdb_auth_failures", "Rejected credentials, by reason", ["reason"], registry=r
        )
        self.rate_limited = Counter(
            "engramdb_rate_limited", "Requests refused by a rate limit, by limit", ["limit"], registry=r
        )
        self.in_flight = Gauge("engramdb_operations_in_flight", "Service operations running now", registry=r)
        # Per kind, not per collection: the label set stays fixed however many collections there are.
        self.maintenance = {
            kind: Histogram(
                f"engramdb_index_{kind}_duration_seconds",
                what,
                registry=r,
                buckets=MAINTENANCE_BUCKETS,
            )
            for kind, what in (
                ("snapshot", "Time to write one collection's index snapshot (in a forked child or in-process)"),
                ("replay", "Time to replay the changelog after a collection's snapshot while loading it"),
                ("rebuild", "Time to rebuild a collection's vector and payload indexes from its records"),
            )
        }
        self._store: object | None = None

        # labels() hashes and locks on every call; the (op, status) pairs are
        # few and fixed, so their children are kept here.
        self._children: dict[tuple[str, str], tuple[Histogram, Counter]] = {}

    def watch(self, store: object) -> None:
        """Record the index maintenance timings (:mod:`engramdb.engine.timings`) of the database on ``store``."""
        self._store = store
        timings.add_listener(self._on_timing)

    def unwatch(self) -> None:
        timings.remove_listener(self._on_timing)

    def _on_timing(self, kind: str, seconds: float, store: object) -> None:
        if store is self._store:  # another database open in this process is not ours
            self.maintenance[kind].observe(seconds)

    def observe(self, op: str, status: str, seconds: float) -> None:
        child = self._children.get((op, status))
        if child is None:
            child = self._children[(op, status)] = (
                self.op_seconds.labels(op, status),
                self.op_total.labels(op, status),
            )
        child[0].observe(seconds)
        child[1].inc()
