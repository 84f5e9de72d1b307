"""Observability: the metric families /metrics exports, the keyless loopback metrics port,
readiness on machine resources, and OpenTelemetry traces across REST, gRPC, service and engine.

Servers run as ``engramdb serve`` subprocesses (conftest) except where spans are read from an
in-memory exporter, which needs the service in this process.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ADMIN_KEY, ServerProcess, free_port, server_env, unique_name
from engramdb import tracing
from engramdb.config import load
from engramdb.engine.database import Database
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from engramdb.server.grpc import start_grpc_server
from engramdb.server.grpc.convert import pack_vector
from engramdb.server.metrics import CONDITIONAL_METRICS, EXPORTED_METRICS
from engramdb.service import Service

sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is part of the test install")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"


def families(text: str) -> set[str]:
    """Metric family names in an exposition (``_created`` companions are not families of their own)."""
    return {f.name for f in text_string_to_metric_families(text) if not f.name.endswith("_created")}


def _populate(client: httpx.Client, name: str) -> None:
    client.post("/v1/collections", json={"name": name, "dimension": 2}).raise_for_status()
    recs = [{"id": f"r{i}", "vector": [1.0, float(i)], "text": f"word{i}"} for i in range(5)]
    client.post(f"/v1/collections/{name}/records", json={"records": recs}).raise_for_status()
    client.post(f"/v1/collections/{name}/search", json={"vector": [1, 0], "k": 2}).raise_for_status()


# ----------------------------------------------------------------- /metrics
def test_metrics_exports_every_listed_family_and_only_those(server_factory: Callable[..., ServerProcess]) -> None:
    sp = server_factory(env={"ENGRAMDB_STORAGE__STATISTICS": "true"})
    with sp.client() as c:
        _populate(c, unique_name("m"))
        r = c.get("/metrics")
    assert r.status_code == 200
    found = families(r.text)
    # Every listed family is there (the memory limit only where the cgroup has one) ...
    expected = set(EXPORTED_METRICS) - {"engramdb_memory_limit_bytes"}
    assert expected - found == set()
    # ... and every engramdb_ family there is listed, so dashboards may rely on the list.
    assert {n for n in found if n.startswith("engramdb_")} - set(EXPORTED_METRICS) == set()
    lines = r.text.splitlines()
    assert any(line.startswith('engramdb_rocksdb_sst_files{cf="records",level="0"}') for line in lines)
    assert any(line.startswith('engramdb_rocksdb_block_cache_hits_total{kind="all"}') for line in lines)
    assert any(
        line.startswith('engramdb_http_requests_total{method="POST",route="/v1/collections/{coll}/search"')
        for line in lines
    )


def test_block_cache_counters_only_with_statistics(server: ServerProcess, admin: httpx.Client) -> None:
    found = families(admin.get("/metrics").text)
    assert "engramdb_rocksdb_block_cache_usage_bytes" in found
    assert "engramdb_rocksdb_block_cache_hits" not in found
    assert {"engramdb_rocksdb_block_cache_hits", "engramdb_rocksdb_block_cache_misses"} <= CONDITIONAL_METRICS


def test_collection_labels_are_capped(server_factory: Callable[..., ServerProcess]) -> None:
    sp = server_factory(env={"ENGRAMDB_SERVER__METRICS_MAX_COLLECTIONS": "2"})
    with sp.client() as c:
        for i in range(4):
            name = f"cap{i}"
            c.post("/v1/collections", json={"name": name, "dimension": 2}).raise_for_status()
            recs = [{"id": f"r{j}", "vector": [1.0, float(j)]} for j in range(i + 1)]
            c.post(f"/v1/collections/{name}/records", json={"records": recs}).raise_for_status()
        text = c.get("/metrics").text
    records = {
        (s.labels["tenant"], s.labels["collection"]): s.value
        for f in text_string_to_metric_families(text)
        if f.name == "engramdb_collection_records"
        for s in f.samples
    }
    # The two largest keep their names; the other two are summed under _other.
    assert records == {("default", "cap3"): 4.0, ("default", "cap2"): 3.0, ("_other", "_other"): 3.0}
    assert "engramdb_collections 4.0" in text


def test_index_maintenance_timings_reach_the_histograms(tmp_path: Path) -> None:
    settings = load(data_dir=str(tmp_path / "d"))
    db = Database(settings.data_dir, settings)
    svc = Service(db, settings)
    other = Database(tmp_path / "other", load(data_dir=str(tmp_path / "other")))
    try:
        coll = db.create_collection("c", dimension=2)
        coll.upsert([{"id": "a", "vector": [1, 0]}])
        assert coll.indexes.snapshot()
        # Another database in the same process: its snapshots are not this service's.
        oc = other.create_collection("c", dimension=2)
        oc.upsert([{"id": "a", "vector": [1, 0]}])
        assert oc.indexes.snapshot()
        reg = svc.metrics.registry
        assert reg.get_sample_value("engramdb_index_snapshot_duration_seconds_count") == 1.0
        assert reg.get_sample_value("engramdb_index_rebuild_duration_seconds_count") == 1.0  # the first load
    finally:
        svc.close()
        db.close()
        other.close()
    # Reopened with changes after the snapshot: the load replays them.
    db = Database(settings.data_dir, settings)
    svc = Service(db, settings)
    try:
        db.get_collection("c").load()
        assert svc.metrics.registry.get_sample_value("engramdb_index_replay_duration_seconds_count") == 1.0
    finally:
        svc.close()
        db.close()


# --------------------------------------------------------------- metrics port
def test_metrics_port_serves_without_a_key_on_loopback_only(server_factory: Callable[..., ServerProcess]) -> None:
    mport = free_port()
    sp = server_factory(env={"ENGRAMDB_SERVER__METRICS_PORT": str(mport)})
    url = f"http://127.0.0.1:{mport}"
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and "engramdb_ready 1.0" in r.text
    assert r.headers["content-type"].startswith("text/plain")
    # The main port still wants the key.
    assert httpx.get(sp.base_url + "/metrics").status_code == 401
    # A DNS name rebound to 127.0.0.1 (the page's own Host), a foreign page's Origin, other paths: refused.
    assert httpx.get(url + "/metrics", headers={"Host": "evil.example"}).status_code == 421
    assert httpx.get(url + "/metrics", headers={"Origin": "http://evil.example"}).status_code == 421
    assert httpx.get(url + "/v1/collections").status_code == 404
    assert httpx.get(f"http://localhost:{mport}/metrics").status_code == 200


def test_metrics_port_bounds_connections_and_cuts_slow_clients(server_factory: Callable[..., ServerProcess]) -> None:
    import socket

    from engramdb.server import metrics

    mport = free_port()
    server_factory(env={"ENGRAMDB_SERVER__METRICS_PORT": str(mport)})
    cap, extra = metrics._MAX_CONNECTIONS, 4
    held: list[socket.socket] = []
    try:
        for _ in range(cap):
            held.append(socket.create_connection(("127.0.0.1", mport), timeout=10))
            held[-1].sendall(b"GET /metrics HTTP/1.1\r\n")  # a head that never ends
        time.sleep(0.5)  # the server has accepted them all
        t0 = time.monotonic()
        for _ in range(extra):  # over the cap: closed at once, no thread for them
            with socket.create_connection(("127.0.0.1", mport), timeout=10) as s:
                assert s.recv(1) == b""
        assert time.monotonic() - t0 < 3
        # A client dripping its head a byte at a time (each read well inside the per-read timeout) is cut off
        # at the head deadline, and so are the silent ones.
        drip, t0 = held[0], time.monotonic()
        drip.settimeout(1.0)
        cut = None
        while time.monotonic() - t0 < metrics._HEAD_DEADLINE + 5:
            try:
                drip.sendall(b"X")
                if drip.recv(1) == b"":
                    cut = time.monotonic() - t0
                    break
            except TimeoutError:
                continue
            except OSError:
                cut = time.monotonic() - t0
                break
        assert cut is not None and cut < metrics._HEAD_DEADLINE + 2, cut
        for s in held[1:]:
            s.settimeout(5)
            assert s.recv(1) == b""
        r = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=10)  # the port serves again
        assert r.status_code == 200 and "engramdb_ready" in r.text
    finally:
        for s in held:
            s.close()


def test_metrics_host_must_be_loopback(tmp_path: Path) -> None:
    env = server_env({"ENGRAMDB_SERVER__METRICS_HOST": "0.0.0.0", "ENGRAMDB_SERVER__METRICS_PORT": "9464"})
    for cmd in (
        ["config", "check", "--data-dir", str(tmp_path / "d")],
        ["serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port())],
    ):
        r = subprocess.run([sys.executable, "-m", "engramdb.cli", *cmd], env=env, capture_output=True, timeout=60)
        assert r.returncode == 1, r
        out = (r.stdout + r.stderr).decode()
        assert "server.metrics_host" in out and "not a loopback address" in out


# ------------------------------------------------------------------ readiness
def test_ready_is_unavailable_when_free_disk_is_below_the_minimum(server_factory: Callable[..., ServerProcess]) -> None:
    # More than any test machine has free: the check must fire without filling a disk.
    sp = server_factory(env={"ENGRAMDB_SERVER__MIN_FREE_DISK_MB": "1048576"}, wait="health")
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(sp.base_url + "/ready")
        if r.json()["status"] != "loading" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert any("server.min_free_disk_mb" in p and "MiB free" in p for p in body["problems"]), body
    # Liveness is not affected: the process is fine, the machine is short of room.
    assert httpx.get(sp.base_url + "/health").status_code == 200


# -------------------------------------------------------------------- tracing
@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[Service, InMemorySpanExporter]]:
    """A service in this process with tracing to an in-memory exporter (no auth: loopback dev mode)."""
    settings = load(data_dir=str(tmp_path / "d"), server={"grpc_port": 0})
    db = Database(settings.data_dir, settings)
    svc = Service(db, settings)
    svc.load_all()
    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter, batch=False)
    try:
        yield svc, exporter
    finally:
        tracing.shutdown()
        svc.close()
        db.close()


def _chain(spans: list[Any], leaf: str) -> list[Any]:
    """The span named ``leaf`` and its ancestors, leaf first, following parent ids."""
    by_id = {s.context.span_id: s for s in spans}
    node = next(s for s in spans if s.name == leaf)
    out = [node]
    while node.parent is not None and node.parent.span_id in by_id:
        node = by_id[node.parent.span_id]
        out.append(node)
    return out


def _assert_linked(spans: list[Any], server_name: str, op: str) -> None:
    chain = _chain(spans, f"engine.{op}")
    assert [s.name for s in chain] == [f"engine.{op}", f"service {op}", server_name]
    assert {format(s.context.trace_id, "032x") for s in chain} == {TRACE_ID}
    # The server span's parent is the caller's span from traceparent (remote, so not in this process).
    assert format(chain[-1].parent.span_id, "016x") == CALLER_SPAN and chain[-1].parent.is_remote
    assert chain[-1].kind.name == "SERVER"


def test_rest_request_with_traceparent_gives_linked_spans(traced: tuple[Service, InMemorySpanExporter]) -> None:
    from starlette.testclient import TestClient

    from engramdb.server.rest import create_app

    svc, exporter = traced
    with TestClient(create_app(svc), base_url="http://localhost") as c:
        c.post("/v1/collections", json={"name": "c", "dimension": 2}).raise_for_status()
        c.post("/v1/collections/c/records", json={"records": [{"id": "a", "vector": [1, 0]}]}).raise_for_status()
        exporter.clear()
        hdr = {"traceparent": TRACEPARENT}
        c.post("/v1/collections/c/search", json={"vector": [1, 0], "k": 1}, headers=hdr).raise_for_status()
        spans = list(exporter.get_finished_spans())
        _assert_linked(spans, "POST /v1/collections/{coll}/search", "search")
        exporter.clear()
        recs = {"records": [{"id": "b", "vector": [0, 1]}]}
        c.post("/v1/collections/c/records", json=recs, headers=hdr).raise_for_status()
        _assert_linked(list(exporter.get_finished_spans()), "POST /v1/collections/{coll}/records", "upsert")
        # A client error is recorded with its code; the span is not marked failed (it is the caller's).
        exporter.clear()
        assert c.post("/v1/collections/c/search", json={"vector": [1, 0], "k": 0}).status_code == 400
        service_span = next(s for s in exporter.get_finished_spans() if s.name == "service search")
        assert service_span.attributes["engramdb.error_code"] == "invalid_k"
        assert service_span.status.status_code.name != "ERROR"


def _span_text(spans: list[Any]) -> str:
    """Everything an exporter would send of ``spans``: names, attributes, events, status descriptions."""
    return repr(
        [
            (
                s.name,
                dict(s.attributes or {}),
                s.status.description,
                [(e.name, dict(e.attributes or {})) for e in s.events],
            )
            for s in spans
        ]
    )


def test_spans_carry_error_codes_never_caller_input(traced: tuple[Service, InMemorySpanExporter]) -> None:
    from starlette.testclient import TestClient

    from engramdb.server.rest import create_app

    svc, exporter = traced
    canary = "patient.ssn_123-45-6789"
    with TestClient(create_app(svc), base_url="http://localhost") as c:
        c.post("/v1/collections", json={"name": "c", "dimension": 2}).raise_for_status()
        c.post("/v1/collections/c/records", json={"records": [{"id": "a", "vector": [1, 0]}]}).raise_for_status()
        exporter.clear()
        for body in (
            {"vector": [1, 0], "filter": {canary: {"$regex": "x"}}},  # refused inside the engine's search span
            {"vector": [1, 0], "filter": {"$or": [{canary: {"$bogus": 1}}]}},
        ):
            r = c.post("/v1/collections/c/search", json=body, headers={"traceparent": TRACEPARENT})
            assert r.status_code == 400 and canary in r.text  # the caller is told; the trace is not
    spans = list(exporter.get_finished_spans())
    engine = [s for s in spans if s.name == "engine.search"]
    assert engine and all(s.attributes["engramdb.error_code"] == "invalid_filter" for s in engine)
    assert all(not s.events and s.status.status_code.name != "ERROR" for s in engine)
    assert canary not in _span_text(spans) and "ssn" not in _span_text(spans)


def test_a_callers_sampled_flag_does_not_force_recording(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from engramdb.server.rest import create_app

    settings = load(data_dir=str(tmp_path / "d"), server={"grpc_port": 0})
    db = Database(settings.data_dir, settings)
    svc = Service(db, settings)
    svc.load_all()
    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter, batch=False, sample_ratio=0.0)
    try:
        with TestClient(create_app(svc), base_url="http://localhost") as c:
            for _ in range(20):  # unauthenticated, and claiming its caller sampled the trace
                c.get("/v1/collections", headers={"traceparent": TRACEPARENT})
        assert exporter.get_finished_spans() == ()
    finally:
        tracing.shutdown()
        svc.close()
        db.close()


def test_grpc_call_with_traceparent_metadata_gives_linked_spans(traced: tuple[Service, InMemorySpanExporter]) -> None:
    svc, exporter = traced
    handle = start_grpc_server(svc, svc.settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as ch:
            stub = pb_grpc.EngramDBStub(ch)
            stub.CreateCollection(pb.CreateCollectionRequest(name="g", dimension=2), timeout=30)
            stub.Upsert(pb.UpsertRequest(coll="g", records=[pb.Record(id="a", vector=pack_vector([1, 0]))]), timeout=30)
            exporter.clear()
            md = (("traceparent", TRACEPARENT),)
            stub.Search(pb.SearchRequest(coll="g", vector=pack_vector([1, 0]), k=1), metadata=md, timeout=30)
    finally:
        handle.stop(0)
    _assert_linked(list(exporter.get_finished_spans()), "engramdb.v1.EngramDB/Search", "search")


def test_no_spans_and_no_span_objects_when_tracing_is_off(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from engramdb.server.rest import create_app

    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter, batch=False)
    tracing.shutdown()  # off again: what a server with tracing.enabled false is from the start
    assert not tracing.enabled()
    # The hot paths get the shared no-op: nothing is allocated per call.
    assert tracing.span("engine.search") is tracing.span("engine.upsert")
    assert tracing.start("service", "search") is None
    assert tracing.start_server("GET /x", [(b"traceparent", TRACEPARENT.encode())]) is None
    settings = load(data_dir=str(tmp_path / "d"))
    db = Database(settings.data_dir, settings)
    svc = Service(db, settings)
    try:
        with TestClient(create_app(svc), base_url="http://localhost") as c:
            _populate(c, "off")
            c.post("/v1/collections/off/search", json={"vector": [1, 0]}, headers={"traceparent": TRACEPARENT})
    finally:
        svc.close()
        db.close()
    assert exporter.get_finished_spans() == ()


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps what it receives."""

    received: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_server_exports_spans_over_otlp_when_enabled(server_factory: Callable[..., ServerProcess]) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _Collector.received = []
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
        sp = server_factory(
            env={
                "ENGRAMDB_TRACING__ENABLED": "true",
                "ENGRAMDB_TRACING__OTLP_ENDPOINT": endpoint,
                "ENGRAMDB_TRACING__SERVICE_NAME": "engramdb-test",
            }
        )
        with sp.client() as c:
            c.get("/v1/collections", headers={"traceparent": TRACEPARENT}).raise_for_status()
        assert sp.stop() == 0  # shutdown flushes the batch
    finally:
        collector.shutdown()
    spans = []
    for body in _Collector.received:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert attrs["service.name"] == "engramdb-test"
            spans += [s for ss in rs.scope_spans for s in ss.spans]
    names = {s.name for s in spans if s.trace_id.hex() == TRACE_ID}
    assert {"GET /v1/collections", "service list_collections"} <= names, names
    assert ADMIN_KEY not in b"".join(_Collector.received).decode("latin-1")
