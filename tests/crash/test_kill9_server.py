"""kill -9 loop against the server: acknowledged writes survive, deletes stay deleted.

The embedded loop (``test_kill9.py``) kills a process that uses the engine
directly. This one kills a real ``engramdb serve`` (``python -m engramdb.cli
serve``, auth required with a bootstrap admin key, ``storage.sync_writes`` at
its default, on), so the whole acknowledged-write path of the server is
covered: HTTP and gRPC decoding, the service layer, the engine, RocksDB.

Each cycle:

1. Four writer threads in this process run upserts (single records and
   batches of 2-4, from ``writer.make_record``), patches (metadata merge and
   key removal, text, namespace, TTL, importance, vector), deletes of 1-3 ids,
   links of 1-3 edges and unlinks on two collections: threads 0 and 1 through
   the real sync client (``engramdb.connect``; REST), threads 2 and 3 through
   the generated gRPC stubs (the Python client has no gRPC transport). Each
   thread owns 40 ids per collection (shared with ``test_kill9``'s writer
   naming) and links only its own ids, so the operations on one id or edge are
   ordered. A write enters the ledger as acknowledged only after the server's
   answer arrived (and was checked: versions, the patched record, delete and
   unlink counts); a write that failed because the connection broke is *in
   flight*: either outcome is fine, but it must be all-or-nothing. The thread
   stops after it, so each thread has at most one write in flight.
2. 0.2-1.5 s (random) after the writers started, the server is SIGKILLed.
   After every third kill the server is started and SIGKILLed again 0.05-1 s
   later, usually before it is ready (a crash during recovery).
3. The server is restarted on the same data directory (new free ports; a
   start that fails because a port was taken is retried). Recovery time =
   process start to ``/ready`` answering 200; first read = process start to
   the first successful read.
4. The whole ledger is read back through the API and compared:

   * every acknowledged upsert / patch is there with exactly the acknowledged
     vector, text, metadata, namespace, TTL / expiry and importance, and with
     the version the server acknowledged (unless a later acknowledged write
     replaced it); every acknowledged delete holds (no resurrection), and no
     record that was never written appears;
   * every acknowledged link is there with its weight, properties and version,
     every acknowledged unlink and every edge of a deleted record stays gone;
   * an in-flight write is wholly applied or not at all (records and edges);
   * ``get`` (REST and gRPC) agrees with ``scan``; ``count()`` with the scan;
   * search: an exact search over everything returns exactly the live ids, no
     search returns a deleted id (also searched by the deleted record's last
     vector), a sample of records is each the exact nearest neighbour of its
     own vector and is found by HNSW search (a bounded few nodes that
     hnswlib's in-place updates leave unreachable are tolerated), filters and text
     search (a word unique to each written version) agree with the records,
     namespace-prefix scans too; ``subgraph`` and ``edges`` return exactly
     the ledger's edges.

Every loop is bounded in count and time; the server is SIGKILLed in
``finally`` whatever happens. One line of figures is printed at the end (use
``-s``); ``docs/reliability.md`` quotes them.
Soak: ``ENGRAMDB_SOAK_CYCLES=200 python -m pytest tests/crash/test_kill9_server.py -m soak -o addopts="" -s``.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from crash import server_proc
from crash.test_kill9 import _chunks, _percentile, hnsw_own_vector, matches, scan_all, unreachable_problems
from crash.writer import COLLECTIONS, FAR_TTL_SECONDS, IDS_PER_THREAD, KINDS, NAMESPACES, WORDS, make_record, record_id
from engramdb.client.sync import Client, RemoteCollection
from engramdb.errors import DeadlineExceeded, Unavailable
from engramdb.server.grpc import convert
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc
from engramdb.types import CollectionConfig, Edge, Record

SOAK_CYCLES = int(os.environ.get("ENGRAMDB_SOAK_CYCLES", "200"))
SHORT_CYCLES = 6
SHORT_BUDGET_SECONDS = 50.0  # no new cycle starts after this (the loop still does at least MIN_CYCLES)
SOAK_SECONDS_PER_CYCLE = 30.0  # the soak's time budget, per cycle asked for
MIN_CYCLES = 3
THREADS = 4
GRPC_THREADS = frozenset({2, 3})  # the others use the REST client
KILL_DELAY = (0.2, 1.5)  # seconds after the writers started
STARTUP_KILL_DELAY = (0.05, 1.0)  # seconds after the launch, every third cycle
WRITE_TIMEOUT = 30.0  # per request; a live server answers in milliseconds
THREAD_MAX_SECONDS = 60.0  # safety bound of a writer thread if the kill never came
THREAD_MAX_OPS = 100_000
JOIN_TIMEOUT = 60.0
READ_TIMEOUT = 120.0
RELATIONS = ("knows", "cites", "follows")
SEARCH_SAMPLE = 24  # live records searched by their own vector, per collection and verification
GONE_SAMPLE = 24  # deleted records searched by their last vector
TOKEN_SAMPLE = 40  # text words written since the last verification, searched
EDGE_SAMPLE = 16  # records whose edges() are read one by one
TEXT_SETTLE_SECONDS = 3.0  # text search is near-real-time (index.text_refresh_seconds, 0.2 s by default)
ADMIN_KEY = "edb_crash_admin_" + secrets.token_urlsafe(18)
SERVER_ENV = {
    "ENGRAMDB_ADMIN_KEY": ADMIN_KEY,
    "ENGRAMDB_SERVER__AUTH": "required",
    "ENGRAMDB_SERVER__LOG_LEVEL": "warning",
    # Writers and verification send thousands of requests a second from one address.
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_PER_SECOND": "1000000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_BURST": "1000000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_PER_SECOND": "1000000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_BURST": "1000000",
}
GRPC_AUTH = (("authorization", f"Bearer {ADMIN_KEY}"),)
_TRANSPORT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


class ServerDurabilityError(AssertionError):
    """An acknowledged write was lost or changed, a delete undone, or an in-flight write half applied."""


class IndexDisagreement(AssertionError):
    """Search, count, filters, text, namespaces or the graph disagree with the stored records."""


RKey = tuple[str, str]  # (collection, record id)
EKey = tuple[str, str, str, str]  # (collection, src, relation, dst)
Content = dict[str, Any]  # a record as the writer sent it (the form writer.make_record returns)


@dataclass
class RecState:
    content: Content
    version: str | None  # None: applied by an in-flight write whose answer never came and not read yet


@dataclass
class EdgeState:
    weight: float
    properties: dict[str, Any]
    version: str | None = None


@dataclass
class Op:
    """One write, with its full effect as the ledger will hold it once acknowledged."""

    op_id: str
    kind: str  # upsert | patch | delete | link | unlink
    coll: str
    transport: str  # rest | grpc
    records: dict[RKey, Content | None] = field(default_factory=dict)  # None: deleted
    edges: dict[EKey, EdgeState | None] = field(default_factory=dict)  # None: unlinked
    patch: dict[str, Any] = field(default_factory=dict)  # the patch call's arguments
    expect_count: int = 0  # delete / unlink: how many of the ids / edges exist
    cascade: list[EKey] = field(default_factory=list)  # delete: the edges the deleted records take along


@dataclass
class Model:
    """The ledger: what every record and edge must be after the acknowledged writes."""

    records: dict[RKey, RecState] = field(default_factory=dict)  # absent key: no live record
    edges: dict[EKey, EdgeState] = field(default_factory=dict)
    pending: list[Op] = field(default_factory=list)  # in flight at the last kill
    gone: dict[RKey, Content] = field(default_factory=dict)  # last content of records deleted since last check
    ever: set[RKey] = field(default_factory=set)  # every key a write was sent for
    tokens: list[tuple[str, str]] = field(default_factory=list)  # (collection, text word) since last check
    acked: dict[str, int] = field(default_factory=dict)  # acknowledged operations per kind
    acked_by_transport: dict[str, int] = field(default_factory=dict)
    acked_record_writes: int = 0
    acked_deleted_ids: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def acked_ops(self) -> int:
        return sum(self.acked.values())

    def ack(self, op: Op, answer: Any) -> str | None:
        """Record an acknowledged write; returns a problem if the answer itself is wrong."""
        with self.lock:
            problem: str | None = None
            if op.kind == "upsert":
                versions = list(answer)
                if len(versions) != len(op.records):
                    problem = f"upsert {op.op_id} answered {len(versions)} versions for {len(op.records)} records"
                    versions += [None] * len(op.records)
                for (key, content), version in zip(op.records.items(), versions, strict=False):
                    assert content is not None
                    self.records[key] = RecState(content, version)
                    self.gone.pop(key, None)
                    self.ever.add(key)
                    if content.get("text"):
                        self.tokens.append((op.coll, content["text"].split()[1]))
                self.acked_record_writes += len(op.records)
            elif op.kind == "patch":
                ((key, content),) = op.records.items()
                assert content is not None
                if not isinstance(answer, Record) or not matches(op.coll, content, answer):
                    problem = f"patch {op.op_id} of {key} answered {answer}, expected {content}"
                self.records[key] = RecState(content, answer.version if isinstance(answer, Record) else None)
                if "text" in op.patch:
                    self.tokens.append((op.coll, op.patch["text"].split()[1]))
                self.acked_record_writes += 1
            elif op.kind == "delete":
                if answer != op.expect_count:
                    problem = f"delete {op.op_id} of {list(op.records)} answered {answer}, {op.expect_count} existed"
                for key in op.records:
                    old = self.records.pop(key, None)
                    if old is not None:
                        self.gone[key] = old.content
                for ek in op.cascade:
                    self.edges.pop(ek, None)
                self.acked_deleted_ids += len(op.records)
            elif op.kind == "link":
                versions = list(answer)
                if len(versions) != len(op.edges):
                    problem = f"link {op.op_id} answered {len(versions)} versions for {len(op.edges)} edges"
                    versions += [None] * len(op.edges)
                for (ek, st), version in zip(op.edges.items(), versions, strict=False):
                    assert st is not None
                    self.edges[ek] = EdgeState(st.weight, st.properties, version)
            elif op.kind == "unlink":
                if answer != op.expect_count:
                    problem = f"unlink {op.op_id} of {list(op.edges)} answered {answer}, {op.expect_count} existed"
                for ek in op.edges:
                    self.edges.pop(ek, None)
            self.acked[op.kind] = self.acked.get(op.kind, 0) + 1
            self.acked_by_transport[op.transport] = self.acked_by_transport.get(op.transport, 0) + 1
            return problem

    def in_flight(self, op: Op) -> None:
        with self.lock:
            self.pending.append(op)
            for key, content in op.records.items():
                self.ever.add(key)
                if content is not None and content.get("text"):
                    self.tokens.append((op.coll, content["text"].split()[1]))


# ------------------------------------------------------------------ the writers
def _vector(rng: random.Random, coll: str) -> list[float]:
    vec = np.asarray([rng.uniform(-1.0, 1.0) for _ in range(int(COLLECTIONS[coll]["dimension"]))], dtype=np.float32)
    if not np.any(vec):
        vec[0] = 1.0
    return [float(x) for x in vec]  # float32 values: exact through JSON and packed gRPC vectors


def apply_patch(cur: Content, patch: dict[str, Any]) -> Content:
    """The record a patch must leave (the engine's Collection.patch rules)."""
    new = json.loads(json.dumps(cur))
    if "metadata" in patch:
        md = dict(new.get("metadata", {}))
        for k, v in patch["metadata"].items():
            if v is None:
                md.pop(k, None)
            else:
                md[k] = v
        new["metadata"] = md
    for name in ("text", "namespace", "importance", "vector"):
        if name in patch:
            new[name] = patch[name]
    if "ttl_seconds" in patch:
        new["ttl_seconds"] = patch["ttl_seconds"]
        new.pop("expires_at", None)
    return new


def plan(rng: random.Random, model: Model, thread: int, op_id: str, transport: str) -> Op:
    """The next write of ``thread``: its arguments and its effect, from the ledger's current state."""
    coll = rng.choice(sorted(COLLECTIONS))
    mine = [record_id(thread, i) for i in range(IDS_PER_THREAD)]
    mine_set = set(mine)
    with model.lock:
        live = {rid: model.records[(coll, rid)].content for rid in mine if (coll, rid) in model.records}
        my_edges = sorted(ek for ek in model.edges if ek[0] == coll and ek[1] in mine_set)
    r = rng.random()
    kind = "upsert"
    if r >= 0.45 and live:
        kind = "patch" if r < 0.60 else "delete" if r < 0.75 else "link" if r < 0.90 or not my_edges else "unlink"
    if kind == "link" and len(live) < 2:
        kind = "upsert"
    op = Op(op_id, kind, coll, transport)
    if kind == "upsert":
        n = 1 if rng.random() < 0.6 else rng.randint(2, 4)
        for j, i in enumerate(rng.sample(range(IDS_PER_THREAD), n)):
            rec = make_record(rng, coll, record_id(thread, i), f"{op_id}.{j}")
            op.records[(coll, rec["id"])] = rec
    elif kind == "patch":
        rid = rng.choice(sorted(live))
        md: dict[str, Any] = {"patched": op_id}  # a unique value: every patch is distinguishable
        if rng.random() < 0.4:
            md["kind"] = rng.choice(KINDS)
        if rng.random() < 0.3:
            md["n"] = rng.randrange(100)
        if rng.random() < 0.2:
            md["flag"] = None  # removes the key
        p: dict[str, Any] = {"metadata": md}
        if rng.random() < 0.5:
            p["text"] = f"patched zq{op_id.replace('.', 'x')}p about {rng.choice(WORDS)}"
        if rng.random() < 0.3:
            p["namespace"] = list(rng.choice(NAMESPACES))
        # A record with a TTL gets a new one: a patch without keeps expires_at but moves updated_at.
        if "ttl_seconds" in live[rid] or rng.random() < 0.15:
            p["ttl_seconds"] = FAR_TTL_SECONDS - rng.randrange(1000)
        if rng.random() < 0.3:
            p["importance"] = round(rng.random(), 4)
        if rng.random() < 0.3:
            p["vector"] = _vector(rng, coll)
        op.patch = p
        op.records[(coll, rid)] = apply_patch(live[rid], p)
    elif kind == "delete":
        ids = [record_id(thread, i) for i in rng.sample(range(IDS_PER_THREAD), rng.randint(1, 3))]
        op.records = {(coll, rid): None for rid in ids}
        op.expect_count = sum(rid in live for rid in ids)
        gone = set(ids)
        with model.lock:
            op.cascade = [ek for ek in model.edges if ek[0] == coll and (ek[1] in gone or ek[3] in gone)]
    elif kind == "link":
        ids = sorted(live)
        for j in range(rng.randint(1, 3)):
            src, dst = rng.sample(ids, 2)
            ek = (coll, src, rng.choice(RELATIONS), dst)
            op.edges[ek] = EdgeState(round(rng.uniform(0.05, 1.0), 4), {"op": op_id, "j": j})
    else:
        for ek in rng.sample(my_edges, min(len(my_edges), rng.randint(1, 2))):
            op.edges[ek] = None
        op.expect_count = len(op.edges)
    return op


class RestWriter:
    """Writes through the real sync client (REST), one attempt per write."""

    transport = "rest"

    def __init__(self, client: Client, configs: dict[str, CollectionConfig]):
        self.colls = {name: RemoteCollection(client, cfg) for name, cfg in configs.items()}

    def send(self, op: Op) -> Any:
        c = self.colls[op.coll]
        if op.kind == "upsert":
            return c.upsert(list(op.records.values()))  # type: ignore[arg-type]
        if op.kind == "patch":
            ((_, rid),) = op.records
            return c.patch(rid, **op.patch)
        if op.kind == "delete":
            return c.delete([rid for _, rid in op.records])
        if op.kind == "link":
            return c.link(
                [
                    {"src": s, "relation": rel, "dst": d, "weight": st.weight, "properties": st.properties}
                    for (_, s, rel, d), st in op.edges.items()
                    if st is not None
                ]
            )
        return c.unlink([(s, rel, d) for _, s, rel, d in op.edges])


class GrpcWriter:
    """Writes through the generated gRPC stubs (``engramdb.v1.EngramDB``)."""

    transport = "grpc"

    def __init__(self, stub: pb_grpc.EngramDBStub):
        self.stub = stub

    def send(self, op: Op) -> Any:
        kw: dict[str, Any] = {"timeout": WRITE_TIMEOUT, "metadata": GRPC_AUTH}
        if op.kind == "upsert":
            recs = [convert.record_out(rec) for rec in op.records.values() if rec is not None]
            return list(self.stub.Upsert(pb.UpsertRequest(coll=op.coll, records=recs), **kw).versions)
        if op.kind == "patch":
            ((_, rid),) = op.records
            p = op.patch
            req = pb.PatchRequest(coll=op.coll, id=rid, metadata_json=json.dumps(p["metadata"]))
            if "text" in p:
                req.text = p["text"]
            if "namespace" in p:
                req.namespace.CopyFrom(pb.StringList(values=p["namespace"]))
            for name in ("ttl_seconds", "importance"):
                if name in p:
                    setattr(req, name, p[name])
            if "vector" in p:
                req.vector = convert.pack_vector(p["vector"])
            return Record.from_dict(convert.record_to_dict(self.stub.Patch(req, **kw).record))
        if op.kind == "delete":
            return self.stub.Delete(pb.DeleteRequest(coll=op.coll, ids=[rid for _, rid in op.records]), **kw).deleted
        if op.kind == "link":
            edges = [
                convert.fill_edge(
                    pb.Edge(), {"src": s, "relation": rel, "dst": d, "weight": st.weight, "properties": st.properties}
                )
                for (_, s, rel, d), st in op.edges.items()
                if st is not None
            ]
            return list(self.stub.Link(pb.LinkRequest(coll=op.coll, edges=edges), **kw).versions)
        keys = [pb.EdgeKey(src=s, relation=rel, dst=d) for _, s, rel, d in op.edges]
        return self.stub.Unlink(pb.UnlinkRequest(coll=op.coll, edges=keys), **kw).deleted


def is_transport_error(e: BaseException) -> bool:
    """Did the call fail because the connection broke (not because the server answered an error)?"""
    if isinstance(e, grpc.RpcError) and isinstance(e, grpc.Call):
        trailers = dict(e.trailing_metadata() or ())
        return "engramdb-error-code" not in trailers and e.code() in _TRANSPORT_CODES
    return isinstance(e, (Unavailable, DeadlineExceeded)) and e.code in ("unavailable", "deadline_exceeded")


@dataclass
class CycleRun:
    stop: threading.Event = field(default_factory=threading.Event)
    killed: threading.Event = field(default_factory=threading.Event)
    problems: list[str] = field(default_factory=list)  # wrong answers and unexpected errors
    in_flight: int = 0


def writer_thread(thread: int, cycle: int, seed: int, send: Callable[[Op], Any], model: Model, run: CycleRun) -> None:
    rng = random.Random(f"server-{seed}-{cycle}-{thread}")
    transport = "grpc" if thread in GRPC_THREADS else "rest"
    deadline = time.monotonic() + THREAD_MAX_SECONDS
    try:
        for n in range(THREAD_MAX_OPS):
            if run.stop.is_set() or time.monotonic() >= deadline:
                return
            op = plan(rng, model, thread, f"{cycle}.{thread}.{n}", transport)
            try:
                answer = send(op)
            except Exception as e:
                if not is_transport_error(e):
                    run.problems.append(f"thread {thread}: {op.kind} {op.op_id} failed: {e!r}")
                    return
                # The connection broke: the write may or may not be applied. One per thread at most.
                model.in_flight(op)
                run.in_flight += 1
                if not run.killed.is_set():
                    run.problems.append(f"thread {thread}: {op.kind} {op.op_id} lost its connection before the kill")
                return
            problem = model.ack(op, answer)
            if problem:
                run.problems.append(problem)
                return
    except BaseException as e:  # a bug of the test itself: report it, never hang the loop
        run.problems.append(f"thread {thread} crashed: {e!r}")


def write_then_kill(
    srv: server_proc.ServerProc,
    configs: dict[str, CollectionConfig],
    model: Model,
    cycle: int,
    seed: int,
    rng: random.Random,
) -> CycleRun:
    """Run the writers against ``srv`` and SIGKILL it 0.2-1.5 s after they started."""
    run = CycleRun()
    client = Client(srv.base_url, ADMIN_KEY, retries=0, timeout=WRITE_TIMEOUT)
    channel = grpc.insecure_channel(srv.grpc_address)
    rest = RestWriter(client, configs)
    grpc_writer = GrpcWriter(pb_grpc.EngramDBStub(channel))
    threads = [
        threading.Thread(
            target=writer_thread,
            args=(t, cycle, seed, grpc_writer.send if t in GRPC_THREADS else rest.send, model, run),
            name=f"server-crash-writer-{t}",
            daemon=True,
        )
        for t in range(THREADS)
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(rng.uniform(*KILL_DELAY))
    finally:
        run.killed.set()
        srv.kill()
        run.stop.set()
        for t in threads:
            t.join(timeout=JOIN_TIMEOUT)
        client.close()
        channel.close()
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"cycle {cycle}: writer threads did not stop after the kill: {stuck}"
    status = srv.proc.returncode
    assert status == -signal.SIGKILL, f"cycle {cycle}: the server exited by itself ({status}):\n{srv.log_tail()}"
    assert not run.problems, f"cycle {cycle}: " + "\n".join(run.problems[:20]) + "\n" + srv.log_tail()
    return run


# ------------------------------------------------------------------ verification
@dataclass
class Stats:
    cycles: int = 0
    verifications: int = 0
    startup_kills: int = 0  # kills of a restarting server before it was ready
    lost: int = 0
    resurrected: int = 0
    lost_edges: int = 0
    resurrected_edges: int = 0
    wrong_versions: int = 0
    partial: int = 0
    in_flight_applied: int = 0
    in_flight_not_applied: int = 0
    in_flight_undecidable: int = 0
    index_problems: list[str] = field(default_factory=list)
    cold_start_seconds: float = 0.0  # launch -> /ready 200 of the first start, on an empty directory
    recovery_seconds: list[float] = field(default_factory=list)  # launch -> /ready 200 after a kill
    first_read_seconds: list[float] = field(default_factory=list)  # launch -> first successful read
    started: float = field(default_factory=time.monotonic)

    def summary(self, model: Model, label: str) -> str:
        rec = sorted(self.recovery_seconds)
        first = sorted(self.first_read_seconds)
        kinds = " ".join(f"{k}={model.acked.get(k, 0)}" for k in ("upsert", "patch", "delete", "link", "unlink"))
        by_transport = " ".join(f"{k}={v}" for k, v in sorted(model.acked_by_transport.items()))
        return (
            f"[crash/{label}] cycles={self.cycles} verifications={self.verifications} "
            f"startup_kills={self.startup_kills} acknowledged_ops={model.acked_ops} ({kinds}; {by_transport}) "
            f"acknowledged_record_writes={model.acked_record_writes} acknowledged_deletes={model.acked_deleted_ids} "
            f"lost_writes={self.lost} resurrected={self.resurrected} lost_edges={self.lost_edges} "
            f"resurrected_edges={self.resurrected_edges} wrong_versions={self.wrong_versions} "
            f"partial_writes={self.partial} in_flight_applied={self.in_flight_applied} "
            f"in_flight_not_applied={self.in_flight_not_applied} in_flight_undecidable={self.in_flight_undecidable} "
            f"index_disagreements={len(self.index_problems)} "
            f"recovery_p50={_percentile(rec, 50) * 1000:.0f}ms recovery_p99={_percentile(rec, 99) * 1000:.0f}ms "
            f"first_read_p50={_percentile(first, 50) * 1000:.0f}ms "
            f"first_read_p99={_percentile(first, 99) * 1000:.0f}ms "
            f"cold_start={self.cold_start_seconds * 1000:.0f}ms wall={time.monotonic() - self.started:.0f}s"
        )


def _edge_matches(exp: EdgeState | None, got: Edge | None) -> bool:
    if exp is None or got is None:
        return exp is None and got is None
    return got.weight == exp.weight and got.properties == exp.properties


def settle(
    model: Model,
    stats: Stats,
    live: dict[str, dict[str, Record]],
    seen_edges: dict[EKey, Edge],
    cycle: int,
) -> list[str]:
    """Compare storage with the ledger; in-flight writes are settled to what was observed."""
    problems: list[str] = []
    outcome: dict[tuple[str, tuple[Any, ...]], str] = {}  # (op id, key) -> "yes" | "no" | "?"

    # Records.
    pend_rec: dict[RKey, list[tuple[Op, Content | None]]] = {}
    for op in model.pending:
        for key, content in op.records.items():
            pend_rec.setdefault(key, []).append((op, content))
    keys = set(model.records) | set(pend_rec) | {(c, rid) for c, recs in live.items() for rid in recs}
    for key in sorted(keys):
        coll, rid = key
        got = live[coll].get(rid)
        acked = model.records.get(key)
        if matches(coll, acked.content if acked else None, got):
            if acked is not None and got is not None and acked.version is not None and got.version != acked.version:
                stats.wrong_versions += 1
                problems.append(f"{key}: version {got.version}, the server acknowledged {acked.version}")
            if acked is not None and got is not None and acked.version is None:
                acked.version = got.version
            for op, content in pend_rec.get(key, ()):
                if content is not None or acked is not None:  # else a delete of an absent record: no trace
                    outcome[(op.op_id, key)] = "no"
            continue
        hit = next(((op, c) for op, c in pend_rec.get(key, ()) if matches(coll, c, got)), None)
        if hit is not None:
            op, content = hit
            outcome[(op.op_id, key)] = "yes"
            if content is None:
                model.records.pop(key, None)
                if acked is not None:
                    model.gone[key] = acked.content
            else:
                model.records[key] = RecState(content, got.version if got else None)
                model.gone.pop(key, None)
            continue
        for op, _ in pend_rec.get(key, ()):
            outcome[(op.op_id, key)] = "?"
        if acked is not None and got is None:
            stats.lost += 1
            problems.append(f"LOST acknowledged write {key}: expected {acked.content}, the record is absent")
        elif acked is None and got is not None:
            stats.resurrected += 1
            what = "was deleted" if key in model.ever else "was never written"
            problems.append(f"RESURRECTED {key} {what} but is {got}")
        else:
            stats.lost += 1
            problems.append(f"WRONG content for {key}: expected {acked.content if acked else None}, got {got}")

    # Edges: only those between two live records are visible; deleting a record removes its edges.
    def visible(ek: EKey) -> bool:
        return ek[1] in live[ek[0]] and ek[3] in live[ek[0]]

    for ek in [ek for ek in model.edges if not visible(ek)]:
        del model.edges[ek]
    pend_edge: dict[EKey, list[tuple[Op, EdgeState | None]]] = {}
    for op in model.pending:
        for ek, st in op.edges.items():
            if visible(ek):
                pend_edge.setdefault(ek, []).append((op, st))
    for ek in sorted(set(model.edges) | set(pend_edge) | set(seen_edges)):
        got_e = seen_edges.get(ek)
        acked_e = model.edges.get(ek)
        if _edge_matches(acked_e, got_e):
            if acked_e is not None and got_e is not None and acked_e.version not in (None, got_e.version):
                stats.wrong_versions += 1
                problems.append(f"edge {ek}: version {got_e.version}, the server acknowledged {acked_e.version}")
            for op, st in pend_edge.get(ek, ()):
                if st is not None or acked_e is not None:
                    outcome[(op.op_id, ek)] = "no"
            continue
        hit_e = next(((op, st) for op, st in pend_edge.get(ek, ()) if _edge_matches(st, got_e)), None)
        if hit_e is not None:
            op, st = hit_e
            outcome[(op.op_id, ek)] = "yes"
            if st is None:
                model.edges.pop(ek, None)
            else:
                model.edges[ek] = EdgeState(st.weight, st.properties, got_e.version if got_e else None)
            continue
        for op, _ in pend_edge.get(ek, ()):
            outcome[(op.op_id, ek)] = "?"
        if acked_e is not None and got_e is None:
            stats.lost_edges += 1
            problems.append(f"LOST acknowledged edge {ek}: expected {acked_e}, absent")
        elif acked_e is None and got_e is not None:
            stats.resurrected_edges += 1
            problems.append(f"RESURRECTED edge {ek} (unlinked, deleted with a record, or never linked): {got_e}")
        else:
            stats.lost_edges += 1
            problems.append(f"WRONG edge {ek}: expected {acked_e}, got {got_e}")

    # An in-flight write is all-or-nothing; keys whose outcome cannot be seen don't count
    # (a delete of an absent record, an edge of a record that is gone now).
    for op in model.pending:
        seen = {v for (op_id, _), v in outcome.items() if op_id == op.op_id}
        if seen == {"yes"}:
            stats.in_flight_applied += 1
        elif seen == {"no"}:
            stats.in_flight_not_applied += 1
        elif not seen:
            stats.in_flight_undecidable += 1
        else:
            stats.partial += 1
            problems.append(
                f"in-flight {op.kind} {op.op_id} was applied only partly: "
                + str({str(k): v for (op_id, k), v in outcome.items() if op_id == op.op_id})
            )
    model.pending.clear()
    return [f"cycle {cycle}: {p}" for p in problems]


def _retry_text(check: Callable[[], list[str]]) -> list[str]:
    """Text search is near-real-time: repeat a failing check for up to TEXT_SETTLE_SECONDS."""
    deadline = time.monotonic() + TEXT_SETTLE_SECONDS
    for _ in range(100):
        problems = check()
        if not problems or time.monotonic() >= deadline:
            return problems
        time.sleep(0.25)
    return problems


def check_indexes(
    name: str,
    coll: RemoteCollection,
    live: dict[str, Record],
    model: Model,
    seen_edges: dict[EKey, Edge],
    rng: random.Random,
    cycle: int,
) -> list[str]:
    """count, search (exact, HNSW, filters, text), namespace scans and edges against the records."""
    problems: list[str] = []
    where = f"cycle {cycle} {name}"
    live_ids = set(live)
    count = coll.count()
    if count != len(live):
        problems.append(f"{where}: count() = {count} but a scan finds {len(live)} live records")
    every = min(len(live) + 10, 10_000)
    probe = next(iter(live.values())).vector if live else [1.0] * int(COLLECTIONS[name]["dimension"])
    for exact in (True, False):
        got = {h.id for h in coll.search(probe, k=every, exact=exact, include=None)}
        if not got <= live_ids:
            problems.append(f"{where}: search(exact={exact}) returned ids that are not live: {sorted(got - live_ids)}")
        if exact and got != live_ids:
            problems.append(f"{where}: exact search misses live records {sorted(live_ids - got)}")
    sample = rng.sample(sorted(live), min(SEARCH_SAMPLE, len(live)))
    unreachable = []
    for rid in sample:
        vec = live[rid].vector
        top = [h.id for h in coll.search(vec, k=1, exact=True, include=None)]
        if top != [rid]:
            problems.append(f"{where}: exact search for {rid!r}'s own vector returned {top}")
        ann = hnsw_own_vector(coll, rid, vec, len(live))
        if rid not in ann:
            unreachable.append(rid)
        if not set(ann) <= live_ids:
            problems.append(f"{where}: HNSW search for {rid!r}'s own vector returned ids that are not live: {ann}")
    problems += unreachable_problems(where, unreachable, len(sample))
    gone = sorted(rid for (c, rid) in model.gone if c == name and rid not in live)
    for rid in rng.sample(gone, min(GONE_SAMPLE, len(gone))):
        hits = [h.id for h in coll.search(model.gone[(name, rid)]["vector"], k=3, exact=True, include=None)]
        hits += [h.id for h in coll.search(model.gone[(name, rid)]["vector"], k=3, include=None)]
        if rid in hits:
            problems.append(f"{where}: search by the last vector of deleted {rid!r} returned it")
    # Payload index.
    filters: list[dict[str, Any]] = [{"kind": kind} for kind in KINDS]
    if "n" in COLLECTIONS[name]["indexed_fields"]:
        filters.append({"n": {"$gte": 50}})

    def selected(md: dict[str, Any], flt: dict[str, Any]) -> bool:
        if "kind" in flt:
            return bool(md.get("kind") == flt["kind"])
        return isinstance(md.get("n"), int) and not isinstance(md["n"], bool) and md["n"] >= 50

    for flt in filters:
        want = {rid for rid, rec in live.items() if selected(rec.metadata, flt)}
        got_f = {h.id for h in coll.search(probe, k=every, filter=flt, exact=True, include=None)}
        if got_f != want:
            problems.append(
                f"{where}: filter {flt} found extra {sorted(got_f - want)} and missed {sorted(want - got_f)}"
            )
    # Text index: a word written into exactly one record version.
    holders = {rec.text.split()[1]: rid for rid, rec in live.items() if rec.text}
    recent = sorted({tok for c, tok in model.tokens if c == name})
    fresh = [t for t in recent if t in holders]
    stale = [t for t in recent if t not in holders]
    fresh = rng.sample(fresh, min(TOKEN_SAMPLE, len(fresh)))
    stale = rng.sample(stale, min(TOKEN_SAMPLE, len(stale)))

    def text_check() -> list[str]:
        out = []
        for tok in fresh:
            found = [h.id for h in coll.search(text=tok, mode="text", k=10, include=None)]
            if found != [holders[tok]]:
                out.append(f"{where}: text search for {tok!r} (text of {holders[tok]!r}) returned {found}")
        for tok in stale:
            found = [h.id for h in coll.search(text=tok, mode="text", k=10, include=None)]
            if found:
                out.append(f"{where}: text search for superseded/deleted word {tok!r} returned {found}")
        return out

    problems += _retry_text(text_check)
    # Namespace index.
    for prefix in sorted({ns[:1] for ns in NAMESPACES if ns} | {ns for ns in NAMESPACES if ns}):
        want = {rid for rid, rec in live.items() if rec.namespace[: len(prefix)] == prefix}
        got_ns = set(scan_all(coll, namespace_prefix=list(prefix), include=[]))
        if got_ns != want:
            problems.append(f"{where}: scan(namespace_prefix={list(prefix)}) disagrees with the records")
    # edges() one record at a time agrees with subgraph (which settle() compared with the ledger).
    for rid in rng.sample(sorted(live), min(EDGE_SAMPLE, len(live))):
        listed = coll.edges(rid, direction="both")
        got_edges = {(name, e.src, e.relation, e.dst): (e.weight, e.properties) for e in listed}
        want_edges = {
            ek: (e.weight, e.properties) for ek, e in seen_edges.items() if ek[0] == name and rid in (ek[1], ek[3])
        }
        if got_edges != want_edges:
            problems.append(f"{where}: edges({rid!r}) = {sorted(got_edges)}, subgraph has {sorted(want_edges)}")
    return problems


def read_edges(coll: RemoteCollection, live: dict[str, Record], name: str) -> tuple[dict[EKey, Edge], list[str]]:
    """Every visible edge of the collection, through one ``subgraph`` call over all live records."""
    if not live:
        return {}, []
    sg = coll.subgraph(sorted(live), hops=0, limit=len(live), include=[], timeout_ms=60_000)
    problems = []
    nodes = {r.id for r in sg["nodes"]}
    if nodes != set(live):
        problems.append(f"{name}: subgraph nodes differ from the live records: {sorted(nodes ^ set(live))}")
    out: dict[EKey, Edge] = {}
    for e in sg["edges"]:
        ek = (name, e.src, e.relation, e.dst)
        if ek in out:
            problems.append(f"{name}: subgraph returned edge {ek} twice")
        out[ek] = e
    return out, problems


def verify(srv: server_proc.ServerProc, model: Model, stats: Stats, cycle: int) -> None:
    """Read the whole ledger back through the API; storage problems fail here, index ones at the end."""
    rng = random.Random(f"verify-{cycle}")
    with Client(srv.base_url, ADMIN_KEY, retries=3, timeout=READ_TIMEOUT) as client:
        colls = {name: client.get_collection(name) for name in sorted(COLLECTIONS)}
        stats.first_read_seconds.append(time.perf_counter() - srv.launched_at)  # the first read since the start
        stats.verifications += 1
        live = {name: scan_all(c) for name, c in colls.items()}
        storage_problems: list[str] = []
        seen_edges: dict[EKey, Edge] = {}
        with grpc.insecure_channel(srv.grpc_address) as channel:
            stub = pb_grpc.EngramDBStub(channel)
            for name, c in colls.items():
                ids = sorted({rid for coll, rid in model.records if coll == name} | set(live[name]))
                ids += sorted({rid for op in model.pending for coll, rid in op.records if coll == name} - set(ids))
                for chunk in _chunks(ids, 1000):
                    rest_got = {r.id: r for r in c.get_many(chunk)}
                    req = pb.GetRequest(coll=name, ids=chunk, include=pb.FieldList(fields=["timestamps"]))
                    grpc_got = {
                        m.id: m.version for m in stub.Get(req, timeout=READ_TIMEOUT, metadata=GRPC_AUTH).records
                    }
                    for rid in chunk:
                        a, b = rest_got.get(rid), live[name].get(rid)
                        va, vb = (a.version if a else None), (b.version if b else None)
                        if (a is None) != (b is None) or va != vb or grpc_got.get(rid) != vb:
                            storage_problems.append(
                                f"cycle {cycle} {name}: get({rid!r}) has version {va} over REST and "
                                f"{grpc_got.get(rid)} over gRPC, scan has {vb}"
                            )
                edges, edge_problems = read_edges(c, live[name], name)
                seen_edges.update(edges)
                stats.index_problems += [f"cycle {cycle} {p}" for p in edge_problems]
        storage_problems += settle(model, stats, live, seen_edges, cycle)
        for name, c in colls.items():
            stats.index_problems += check_indexes(name, c, live[name], model, seen_edges, rng, cycle)
        model.gone.clear()
        model.tokens.clear()
        if storage_problems:
            raise ServerDurabilityError(
                f"{len(storage_problems)} problem(s) after kill -9 of the server:\n"
                + "\n".join(storage_problems[:40])
                + f"\n--- server log ---\n{srv.log_tail()}"
            )


# ------------------------------------------------------------------ driver
def server_kill_loop(
    tmp_path: Path, cycles: int, *, seed: int, budget_seconds: float, capsys: pytest.CaptureFixture[str], label: str
) -> tuple[Stats, Model]:
    data = tmp_path / "data"
    logs = tmp_path / "logs"
    logs.mkdir()
    rng = random.Random(seed)
    model = Model()
    stats = Stats()
    srv: server_proc.ServerProc | None = None
    try:
        srv, stats.cold_start_seconds = server_proc.start(data, logs, env=SERVER_ENV, tag="-init")
        with Client(srv.base_url, ADMIN_KEY, retries=3, timeout=READ_TIMEOUT) as client:
            configs = {
                name: client.create_collection(name, exist_ok=True, **cfg).config
                for name, cfg in sorted(COLLECTIONS.items())
            }
        for cycle in range(cycles):
            if cycle >= MIN_CYCLES and time.monotonic() - stats.started > budget_seconds:
                break
            write_then_kill(srv, configs, model, cycle, seed, rng)
            stats.cycles += 1
            if cycle % 3 == 2:  # crash the recovery itself: kill the next start early
                early = server_proc.launch(data, logs, env=SERVER_ENV, tag=f"-{cycle}-early")
                try:
                    time.sleep(rng.uniform(*STARTUP_KILL_DELAY))
                finally:
                    status = early.kill()
                if status == -signal.SIGKILL:
                    stats.startup_kills += 1
                elif not early.port_was_taken():
                    pytest.fail(f"cycle {cycle}: the restarted server exited by itself ({status}):\n{early.log_tail()}")
            srv, ready_seconds = server_proc.start(data, logs, env=SERVER_ENV, tag=f"-{cycle}")
            stats.recovery_seconds.append(ready_seconds)
            verify(srv, model, stats, cycle)
    finally:
        if srv is not None:
            srv.kill()
        with capsys.disabled():
            print("\n" + stats.summary(model, label))
    assert stats.lost == 0 and stats.resurrected == 0
    assert stats.lost_edges == 0 and stats.resurrected_edges == 0 and stats.partial == 0
    assert stats.cycles >= MIN_CYCLES
    assert model.acked_ops > 0, "no write was acknowledged before the kills; the test proved nothing"
    assert set(model.acked_by_transport) == {"rest", "grpc"}, model.acked_by_transport
    if stats.index_problems:
        raise IndexDisagreement(
            f"{len(stats.index_problems)} disagreement(s) with storage after kill -9 of the server:\n"
            + "\n".join(stats.index_problems[:20])
        )
    return stats, model


@pytest.mark.timeout(600)
def test_server_kill9_acknowledged_writes_survive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server_kill_loop(
        tmp_path, SHORT_CYCLES, seed=11, budget_seconds=SHORT_BUDGET_SECONDS, capsys=capsys, label="server-kill9"
    )


@pytest.mark.soak
@pytest.mark.timeout(max(900, int(SOAK_CYCLES * SOAK_SECONDS_PER_CYCLE * 2)))
def test_server_kill9_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server_kill_loop(
        tmp_path,
        SOAK_CYCLES,
        seed=12,
        budget_seconds=SOAK_CYCLES * SOAK_SECONDS_PER_CYCLE,
        capsys=capsys,
        label="server-soak",
    )
