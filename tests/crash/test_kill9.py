"""kill -9 loop: no acknowledged write is lost, nothing deleted comes back, indexes agree with storage.

A writer subprocess (``tests/crash/writer.py``) runs several threads of
upserts (single and small batches, with text, metadata, namespaces, far TTLs)
and deletes against two collections, announcing every operation on a ledger
pipe before issuing it and confirming it after the call returned. The test
SIGKILLs the writer 0.2-1.5 s after it reported ready, then reopens the data
directory in this process and compares it with the ledger:

* the database opens after every kill;
* every acknowledged upsert is present with exactly the acknowledged content
  (vector, text, metadata, namespace, TTL, importance) unless a later
  acknowledged write or delete superseded it; every acknowledged delete stays
  deleted; an operation in flight at the kill is either wholly applied or not
  at all; nothing that was never written appears;
* ``count()`` equals the number of live records a scan returns, and ``get``
  agrees with the scan;
* the vector index agrees with storage: it holds every live record under a
  live label with exactly the stored vector, every live record is the exact
  nearest neighbour of its own vector, an exact search over everything
  returns exactly the live ids, no search returns a deleted id, and HNSW
  search finds each record by its own vector (at the default ef, else at an
  ef covering the collection; the few nodes hnswlib's in-place updates leave
  unreachable are counted, and more than 2 % fail); the payload index (filters), the
  text index (BM25 on a word unique to each written version) and the
  namespace index agree with storage too.

Every third kill is not followed by a verification: the next writer opens the
crashed directory itself, so recovery from a crash that happened during
recovery-then-writing is covered as well. The ``snapshot`` variant sets low
snapshot thresholds and snapshots the indexes back to back in the writer, so
kills land inside snapshot writes (torn snapshot files); the ``nosync``
variant runs with ``storage.sync_writes=false``.

Storage problems (lost, wrong or resurrected records, partly applied
operations, a failure to open, ``get``/``scan`` disagreements) fail a loop at
the verification that finds them. Index problems are collected over the whole
loop and reported at its end, so that one index bug does not hide storage
results of later cycles.

Figures (cycles, acknowledged writes, lost writes, reopen time p50/p99) are
printed at the end of each run; ``docs/reliability.md`` quotes them.
Soak: ``ENGRAMDB_SOAK_CYCLES=200 python -m pytest tests/crash -m soak -o addopts=""``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engramdb
from crash.writer import COLLECTIONS, KINDS, NAMESPACES
from engramdb import Record

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("writer.py")
READY_TIMEOUT = 120.0  # seconds for the writer to open the database (bounds a hang at open)
EXIT_TIMEOUT = 60.0
KILL_DELAY = (0.2, 1.5)
SOAK_CYCLES = int(os.environ.get("ENGRAMDB_SOAK_CYCLES", "200"))
SNAPSHOT_INDEX_SETTINGS = {"snapshot_after_changes": 50, "snapshot_interval_seconds": 0.5}
MAX_SCAN_PAGES = 1000
TOKEN_SAMPLE = 200  # written-then-superseded text tokens checked per verification


class LostWrite(AssertionError):
    """An acknowledged write is not in the database."""


class IndexDisagreement(AssertionError):
    """An index (vector, payload, text, namespace) or ``count()`` disagrees with storage."""


Key = tuple[str, str]  # (collection, record id)
Content = dict[str, Any]  # a record exactly as the writer sent it


# ---------------------------------------------------------------- the writer
class LedgerReader(threading.Thread):
    """Drains the writer's ledger pipe; the parent's copy is the ledger."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="ledger-reader", daemon=True)
        self.fd = fd
        self.buf = bytearray()
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            for _ in range(100_000_000):  # bounded: EOF comes when the writer dies
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    return
                self.buf += chunk
                if not self.ready.is_set() and b"\n" in self.buf:
                    self.ready.set()
        finally:
            os.close(self.fd)
            self.ready.set()

    def lines(self) -> list[dict[str, Any]]:
        """Complete lines only: a line cut by the kill was never fully written."""
        body = bytes(self.buf)
        complete = body[: body.rfind(b"\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line]


@dataclass
class WriterRun:
    cycle: int
    lines: list[dict[str, Any]]
    stderr: str
    returncode: int | None


def run_writer_and_kill(
    data: Path,
    cycle: int,
    seed: int,
    rng: random.Random,
    *,
    snapshot_loop: bool,
    index_settings: dict[str, Any],
    sync_writes: bool,
) -> WriterRun:
    """Start a writer, wait until it is ready, SIGKILL it after a random delay."""
    r, w = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        str(WRITER),
        "--data",
        str(data),
        "--ledger-fd",
        str(w),
        "--cycle",
        str(cycle),
        "--seed",
        str(seed),
        "--index-settings",
        json.dumps(index_settings),
    ]
    if snapshot_loop:
        cmd.append("--snapshot-loop")
    if not sync_writes:
        cmd.append("--no-sync")
    err_path = data.parent / f"writer-{cycle}.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, env=env, pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    os.close(w)
    reader = LedgerReader(r)
    reader.start()
    try:
        ready = reader.ready.wait(READY_TIMEOUT)
        if ready and proc.poll() is None:
            try:
                proc.wait(timeout=rng.uniform(*KILL_DELAY))
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=EXIT_TIMEOUT)
        reader.join(timeout=EXIT_TIMEOUT)
    assert not reader.is_alive(), "the ledger pipe did not reach EOF after the writer died"
    run = WriterRun(cycle, reader.lines(), err_path.read_text(errors="replace"), proc.returncode)
    if not ready:
        pytest.fail(f"cycle {cycle}: the writer did not become ready in {READY_TIMEOUT}s:\n{run.stderr}")
    errors = [line["error"] for line in run.lines if line["k"] == "X"]
    assert not errors, f"cycle {cycle}: a writer thread failed: {errors[0]}\n{run.stderr}"
    assert run.lines and run.lines[0]["k"] == "R", f"cycle {cycle}: the writer did not open the database:\n{run.stderr}"
    assert run.returncode == -signal.SIGKILL, (
        f"cycle {cycle}: writer exited on its own ({run.returncode}):\n{run.stderr}"
    )
    return run


# ------------------------------------------------------------------- model
@dataclass
class Pending:
    op: str
    content: Content | None  # None = delete


@dataclass
class Model:
    """What the ledger says each record must (or may) be."""

    # State confirmed by the last verification, updated by acknowledged operations since.
    acked: dict[Key, Content | None] = field(default_factory=dict)
    # Operations issued but not acknowledged since the key's last acknowledged one.
    pending: dict[Key, list[Pending]] = field(default_factory=dict)
    # Keys of each unacknowledged operation (for the all-or-nothing check).
    unacked_ops: dict[str, list[Key]] = field(default_factory=dict)
    tokens: list[tuple[str, str]] = field(default_factory=list)  # (collection, word) written since last verify
    acked_ops: int = 0
    acked_upserts: int = 0  # records written by acknowledged upserts
    acked_deletes: int = 0  # ids removed by acknowledged deletes
    unacked: int = 0

    def apply(self, run: WriterRun) -> None:
        acked = {line["op"] for line in run.lines if line["k"] == "A"}
        for line in run.lines:
            if line["k"] != "I":
                continue
            coll = line["c"]
            effects: list[tuple[Key, Content | None]] = [((coll, rec["id"]), rec) for rec in line.get("u", ())]
            effects += [((coll, rid), None) for rid in line.get("d", ())]
            for rec in line.get("u", ()):
                if rec.get("text"):
                    self.tokens.append((coll, rec["text"].split()[1]))
            if line["op"] in acked:
                self.acked_ops += 1
                self.acked_upserts += len(line.get("u", ()))
                self.acked_deletes += len(line.get("d", ()))
                for key, content in effects:
                    self.acked[key] = content
                    self.pending.pop(key, None)
            else:
                self.unacked += 1
                self.unacked_ops[line["op"]] = [key for key, _ in effects]
                for key, content in effects:
                    self.pending.setdefault(key, []).append(Pending(line["op"], content))

    def all_keys(self) -> set[Key]:
        return set(self.acked) | set(self.pending)


def _vector_equal(coll: str, expected: list[float], got: list[float] | None) -> bool:
    if got is None:
        return False
    exp = np.asarray(expected, dtype=np.float32)
    obs = np.asarray(got, dtype=np.float32)
    if COLLECTIONS[coll]["metric"] == "cosine":
        # Cosine collections store the unit vector; compare with float32 rounding slack.
        unit = exp.astype(np.float64) / np.linalg.norm(exp.astype(np.float64))
        return obs.shape == unit.shape and bool(np.allclose(obs, unit, rtol=0.0, atol=1e-6))
    return bool(np.array_equal(obs, exp))


def matches(coll: str, expected: Content | None, got: Record | None) -> bool:
    """Is the stored record exactly what the writer sent (None = absent)?"""
    if expected is None or got is None:
        return expected is None and got is None
    if not _vector_equal(coll, expected["vector"], got.vector):
        return False
    if got.text != expected.get("text") or got.metadata != expected.get("metadata", {}):
        return False
    if got.namespace != tuple(expected.get("namespace", ())) or got.importance != expected.get("importance"):
        return False
    if "ttl_seconds" in expected:
        return (
            got.ttl_seconds == expected["ttl_seconds"]
            and got.updated_at is not None
            and got.expires_at == got.updated_at + expected["ttl_seconds"]
        )
    if "expires_at" in expected:
        return got.expires_at == expected["expires_at"] and got.ttl_seconds is None
    return got.expires_at is None and got.ttl_seconds is None


# ------------------------------------------------------------ verification
@dataclass
class Stats:
    cycles: int = 0
    verifications: int = 0
    lost: int = 0
    resurrected: int = 0
    in_flight_applied: int = 0
    in_flight_dropped: int = 0
    torn_snapshots: int = 0
    index_problems: list[str] = field(default_factory=list)  # indexes or count() vs storage
    unreachable: int = 0  # live records the HNSW walk cannot reach although the index holds them
    reopen_seconds: list[float] = field(default_factory=list)

    def summary(self, model: Model, label: str) -> str:
        t = sorted(self.reopen_seconds)
        p50 = _percentile(t, 50)
        p99 = _percentile(t, 99)
        return (
            f"[crash/{label}] cycles={self.cycles} verifications={self.verifications} "
            f"acknowledged_ops={model.acked_ops} acknowledged_record_writes={model.acked_upserts} "
            f"acknowledged_deletes={model.acked_deletes} lost_writes={self.lost} resurrected={self.resurrected} "
            f"in_flight_applied={self.in_flight_applied} in_flight_not_applied={self.in_flight_dropped} "
            f"kills_mid_snapshot={self.torn_snapshots} index_disagreements={len(self.index_problems)} "
            f"hnsw_unreachable={self.unreachable} "
            f"reopen_p50={p50 * 1000:.0f}ms reopen_p99={p99 * 1000:.0f}ms"
        )


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(pct / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def scan_all(coll: Any, **kw: Any) -> dict[str, Record]:
    out: dict[str, Record] = {}
    cursor = None
    for _ in range(MAX_SCAN_PAGES):
        page = coll.scan(cursor=cursor, limit=1000, **kw)
        for rec in page.records:
            assert rec.id not in out, f"scan returned {rec.id!r} twice"
            out[rec.id] = rec
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise AssertionError(f"scan did not finish within {MAX_SCAN_PAGES} pages")


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def check_storage(model: Model, stats: Stats, live: dict[str, dict[str, Record]], cycle: int) -> list[str]:
    """Compare every record with the ledger; settle in-flight operations to what was observed."""
    problems: list[str] = []
    keys = model.all_keys() | {(c, rid) for c, recs in live.items() for rid in recs}
    settled: dict[Key, str | None] = {}  # key -> op that explains it (None = its acknowledged state)
    before = dict(model.acked)
    for key in sorted(keys):
        coll, rid = key
        got = live[coll].get(rid)
        expected = model.acked.get(key)
        if matches(coll, expected, got):
            settled[key] = None
            continue
        hit = next((p for p in model.pending.get(key, ()) if matches(coll, p.content, got)), None)
        if hit is not None:
            settled[key] = hit.op
            model.acked[key] = hit.content
            continue
        if expected is not None and got is None:
            stats.lost += 1
            problems.append(f"cycle {cycle}: LOST acknowledged write {key}: expected {expected}, record is absent")
        elif expected is None and got is not None:
            stats.resurrected += 1
            problems.append(f"cycle {cycle}: {key} must be absent (deleted or never written) but is {got}")
        else:
            stats.lost += 1
            problems.append(f"cycle {cycle}: WRONG content for {key}: expected {expected}, got {got}")
        settled[key] = "?"
    # An operation in flight at the kill is all-or-nothing (one WriteBatch per call).
    for op, op_keys in model.unacked_ops.items():
        outcome = {settled.get(k) == op for k in op_keys if _distinguishable(model, before, op, k)}
        if len(outcome) > 1:
            problems.append(f"cycle {cycle}: in-flight operation {op} was applied only partly: {op_keys}")
        elif outcome == {True}:
            stats.in_flight_applied += 1
        elif outcome == {False}:
            stats.in_flight_dropped += 1
    model.pending.clear()
    model.unacked_ops.clear()
    return problems


def _distinguishable(model: Model, before: dict[Key, Content | None], op: str, key: Key) -> bool:
    """Can the observed state of ``key`` tell whether ``op`` was applied to it?

    Not if another unacknowledged operation also touched the key, if a later
    acknowledged one superseded it, or if it deleted an absent record.
    """
    pend = model.pending.get(key, [])
    if len(pend) != 1 or pend[0].op != op:
        return False
    return not (pend[0].content is None and before.get(key) is None)


def hnsw_own_vector(coll: Any, rid: str, vector: list[float], n_live: int) -> list[str]:
    """Ids an HNSW search for ``rid``'s own vector returns: at the default ef, else at one covering the collection."""
    ann = [h.id for h in coll.search(vector, k=10, include=None)]
    if rid not in ann:
        ann = [h.id for h in coll.search(vector, k=10, ef=min(10_000, max(64, n_live)), include=None)]
    return ann


def unreachable_problems(where: str, unreachable: list[str], checked: int) -> list[str]:
    """Records held by the index (checked apart) that no HNSW walk reaches: recall, up to a bound.

    hnswlib's in-place vector update (also how it reuses a deleted slot) can
    leave a node without incoming links. On these workloads (random jumps of
    8- and 12-d vectors) pure hnswlib shows 1-2 such nodes in about 3 % of
    checks of ~120 live records (docs/reliability.md); many more would mean a
    broken graph.
    """
    if len(unreachable) <= max(2, checked // 50):
        return []
    return [f"{where}: HNSW search cannot reach {len(unreachable)} of {checked} records: {sorted(unreachable)[:20]}"]


def check_indexes(name: str, coll: Any, live: dict[str, Record], model: Model, cycle: int, stats: Stats) -> list[str]:
    """The vector, payload, text and namespace indexes must agree with storage.

    Returns the disagreements found (empty when the indexes agree).
    """
    problems: list[str] = []
    where = f"cycle {cycle} {name}"
    live_ids = set(live)
    count = coll.count()
    if count != len(live):
        problems.append(f"{where}: count() = {count} but a scan finds {len(live)} live records")
    every = min(len(live) + 10, 10_000)
    probe = next(iter(live.values())).vector if live else [1.0] * int(COLLECTIONS[name]["dimension"])
    for exact in (True, False):
        got = {h.id for h in coll.search(probe, k=every, exact=exact)}
        if not got <= live_ids:
            problems.append(
                f"{where}: search(exact={exact}) returned ids absent from storage: {sorted(got - live_ids)}"
            )
        if exact and got != live_ids:
            problems.append(f"{where}: exact search misses live records {sorted(live_ids - got)}")
    vindex = coll.indexes.vindex
    unreachable = []
    for rid, rec in live.items():
        label = vindex.label_of.get(rid)
        if label is None:
            problems.append(f"{where}: live record {rid!r} has no vector index label")
        else:
            want = vindex.normalize(np.asarray([rec.vector], dtype=np.float32))[0]
            held = vindex.vectors([label])[0]
            if not np.allclose(held, want, atol=1e-5):
                problems.append(f"{where}: the vector index holds another vector for {rid!r} than storage")
        top = coll.search(rec.vector, k=1, exact=True, include=None)
        if not top or top[0].id != rid:
            problems.append(f"{where}: exact search for {rid!r}'s own vector returned {[h.id for h in top]}")
        ann = hnsw_own_vector(coll, rid, rec.vector, len(live))
        if rid not in ann:
            unreachable.append(rid)
        if len(set(ann)) != len(ann):
            problems.append(f"{where}: HNSW search for {rid!r}'s own vector returned an id twice: {ann}")
        if not set(ann) <= live_ids:
            problems.append(f"{where}: HNSW search returned ids absent from storage: {sorted(set(ann) - live_ids)}")
    stats.unreachable += len(unreachable)
    problems += unreachable_problems(where, unreachable, len(live))
    # Payload index: filters give the same answer as the stored metadata.
    filters: list[tuple[dict[str, Any], Any]] = [
        ({"kind": kind}, lambda md, kind=kind: md.get("kind") == kind) for kind in KINDS
    ]
    if "n" in COLLECTIONS[name]["indexed_fields"]:
        filters.append(({"n": {"$gte": 50}}, lambda md: isinstance(md.get("n"), int) and md["n"] >= 50))
    for flt, pred in filters:
        want = {rid for rid, rec in live.items() if pred(rec.metadata)}
        got_exact = {h.id for h in coll.search(probe, k=every, filter=flt, exact=True)}
        if got_exact != want:
            problems.append(
                f"{where}: exact search with filter {flt} returned {len(got_exact)} ids, storage has {len(want)}: "
                f"extra {sorted(got_exact - want)} missing {sorted(want - got_exact)}"
            )
        for h in coll.search(probe, k=10, filter=flt):
            if h.id not in want:
                problems.append(f"{where}: search with filter {flt} returned {h.id!r} whose metadata does not match")
    # Text index: a word written in exactly one record version finds exactly the records holding it now.
    text_index = coll.indexes.text_index
    if text_index is not None:
        text_index.flush()  # make buffered (replayed) text visible now, rather than after the refresh interval
        tokens = {rec.text.split()[1]: rid for rid, rec in live.items() if rec.text}
        for token, rid in tokens.items():
            found = [h.id for h in coll.search(text=token, mode="text", k=10)]
            if found != [rid]:
                problems.append(f"{where}: text search for {token!r} (text of {rid!r}) returned {found}")
        old = [t for c, t in model.tokens if c == name and t not in tokens]
        for token in random.Random(cycle).sample(old, min(TOKEN_SAMPLE, len(old))):
            found = [h.id for h in coll.search(text=token, mode="text", k=10)]
            bad = [rid for rid in found if token not in (live[rid].text or "").split()]
            if bad:
                problems.append(
                    f"{where}: text search for superseded word {token!r} returned {bad}, "
                    f"whose text is {[live[r].text if r in live else None for r in bad]}"
                )
    # Namespace index (rows in the same WriteBatch as the record).
    for prefix in {ns[:1] for ns in NAMESPACES if ns} | {ns for ns in NAMESPACES if ns}:
        want = {rid for rid, rec in live.items() if rec.namespace[: len(prefix)] == prefix}
        got_ns = set(scan_all(coll, namespace_prefix=list(prefix), include=[]))
        if got_ns != want:
            problems.append(f"{where}: scan(namespace_prefix={list(prefix)}) disagrees with the records")
    return problems


def verify(
    data: Path, model: Model, stats: Stats, cycle: int, index_settings: dict[str, Any], sync_writes: bool
) -> None:
    if list((data / "indexes").glob("*/*.tmp")):
        stats.torn_snapshots += 1
    t0 = time.perf_counter()
    db = engramdb.open(data, storage={"sync_writes": sync_writes}, index=index_settings)
    try:
        colls = {name: db.get_collection(name) for name in COLLECTIONS}
        for c in colls.values():
            c.load()
        stats.reopen_seconds.append(time.perf_counter() - t0)
        stats.verifications += 1
        live = {name: scan_all(c) for name, c in colls.items()}
        for name, c in colls.items():
            ids = sorted({rid for coll, rid in model.all_keys() if coll == name} | set(live[name]))
            for chunk in _chunks(ids, 1000):
                got = {r.id: r for r in c.get_many(chunk)}
                for rid in chunk:
                    a, b = got.get(rid), live[name].get(rid)
                    if (a is None) != (b is None) or (a is not None and b is not None and a.version != b.version):
                        pytest.fail(f"cycle {cycle} {name}: get({rid!r}) = {a} but scan has {b}")
        problems = check_storage(model, stats, live, cycle)
        for name, c in colls.items():
            stats.index_problems += check_indexes(name, c, live[name], model, cycle, stats)
        model.tokens.clear()
        assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    finally:
        db.close()


# ------------------------------------------------------------------ driver
def kill_loop(
    tmp_path: Path,
    cycles: int,
    *,
    seed: int,
    snapshot: bool,
    capsys: pytest.CaptureFixture[str],
    label: str,
    sync_writes: bool = True,
) -> tuple[Stats, Model]:
    data = tmp_path / "data"
    index_settings = SNAPSHOT_INDEX_SETTINGS if snapshot else {}
    rng = random.Random(seed)
    model = Model()
    stats = Stats()
    try:
        for cycle in range(cycles):
            run = run_writer_and_kill(
                data, cycle, seed, rng, snapshot_loop=snapshot, index_settings=index_settings, sync_writes=sync_writes
            )
            model.apply(run)
            stats.cycles += 1
            # Every third kill is followed directly by the next writer (crash during recovery + writing).
            if cycle % 3 != 1 or cycle == cycles - 1:
                verify(data, model, stats, cycle, index_settings, sync_writes)
    finally:
        with capsys.disabled():
            print("\n" + stats.summary(model, label))
    assert stats.lost == 0 and stats.resurrected == 0
    assert model.acked_ops > 0, "no write was acknowledged before the kills; the test proved nothing"
    if stats.index_problems:
        raise IndexDisagreement(
            f"{len(stats.index_problems)} index disagreement(s) with storage after kill -9:\n"
            + "\n".join(stats.index_problems[:20])
        )
    return stats, model


def test_kill9_acknowledged_writes_survive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kill_loop(tmp_path, 8, seed=1, snapshot=False, capsys=capsys, label="kill9")


def test_kill9_during_index_snapshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kill_loop(tmp_path, 5, seed=2, snapshot=True, capsys=capsys, label="kill9-snapshot")


def test_kill9_without_sync_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # storage.sync_writes=false: the WAL is written (not fsynced) before the ack, so a
    # process crash still loses nothing acknowledged (an OS crash or power failure could).
    kill_loop(tmp_path, 4, seed=5, snapshot=False, capsys=capsys, label="kill9-nosync", sync_writes=False)


@pytest.mark.soak
@pytest.mark.timeout(max(600, SOAK_CYCLES * 60))
@pytest.mark.parametrize("snapshot", [False, True], ids=["plain", "snapshot"])
def test_kill9_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str], snapshot: bool) -> None:
    label = "soak-snapshot" if snapshot else "soak"
    kill_loop(tmp_path, SOAK_CYCLES, seed=3 if snapshot else 4, snapshot=snapshot, capsys=capsys, label=label)


# --------------------------------------------- regressions for the bugs found
def run_then_kill(data: Path, body: str) -> None:
    """Run ``body`` in a fresh interpreter (the data dir is ``DATA``), then SIGKILL it."""
    script = (
        "import os, signal, sys\nimport engramdb\nDATA = sys.argv[1]\n"
        + textwrap.dedent(body)
        + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(data)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_replay_after_kill_drops_the_old_payload_entry_of_an_update(tmp_path: Path) -> None:
    """Regression (found by the kill loop): replay kept the snapshot's postings of an updated record."""
    data = tmp_path / "data"
    with engramdb.open(data) as db:
        c = db.create_collection("c", dimension=2, metric="l2", indexed_fields={"kind": "keyword"}, text_index=False)
        c.upsert({"id": "a", "vector": [1.0, 0.0], "metadata": {"kind": "old"}})
    # clean close: the index snapshot has a with kind=old
    run_then_kill(
        data,
        """
        db = engramdb.open(DATA)
        db.get_collection("c").upsert({"id": "a", "vector": [1.0, 0.0], "metadata": {"kind": "new"}})
        """,
    )
    with engramdb.open(data) as db:
        c = db.get_collection("c")
        rec = c.get("a")
        assert rec is not None and rec.metadata == {"kind": "new"}  # storage is right
        hits = [h.id for h in c.search([1.0, 0.0], k=10, filter={"kind": "old"})]
        if hits:
            raise IndexDisagreement(f"filter kind=old returned {hits}, but a's kind is 'new'")


def test_replay_after_kill_leaves_no_text_of_another_label(tmp_path: Path) -> None:
    """Regression (found by the kill loop): text committed in the background under the crashed
    process's labels stayed attached to the records replay gave those labels to."""
    data = tmp_path / "data"
    with engramdb.open(data) as db:
        db.create_collection("c", dimension=2, metric="l2").upsert({"id": "a", "vector": [1.0, 0.0], "text": "alpha"})
    run_then_kill(
        data,
        """
        db = engramdb.open(DATA)
        c = db.get_collection("c")
        c.upsert({"id": "d", "vector": [0.0, 1.0], "text": "delta"})  # label 2
        c.delete("d")
        c.upsert({"id": "p", "vector": [1.0, 1.0], "text": "bravo"})  # label 3
        c.upsert({"id": "q", "vector": [2.0, 1.0]})  # label 4, no text
        c.indexes.text_index.flush()  # what the background refresher does within text_refresh_seconds
        """,
    )
    with engramdb.open(data) as db:
        c = db.get_collection("c")
        assert {r.id: r.text for r in c.scan().records} == {"a": "alpha", "p": "bravo", "q": None}
        text_index = c.indexes.text_index
        assert text_index is not None
        text_index.flush()
        hits = [h.id for h in c.search(text="bravo", mode="text", k=10)]
        if hits != ["p"]:
            raise IndexDisagreement(f"text search for 'bravo' returned {hits}; only p has that text")


def test_kill_in_the_middle_of_an_index_snapshot(tmp_path: Path) -> None:
    """Regression (found by the kill loop): the payload index was written before, and apart from,
    the vector snapshot, so a kill in between left a payload index newer than the vectors."""
    data = tmp_path / "data"
    with engramdb.open(data) as db:
        c = db.create_collection("c", dimension=2, metric="l2", indexed_fields={"kind": "keyword"}, text_index=False)
        c.upsert({"id": "a", "vector": [1.0, 0.0], "metadata": {"kind": "a"}})
    run_then_kill(
        data,
        """
        from engramdb.index import vector
        db = engramdb.open(DATA)
        c = db.get_collection("c")
        c.upsert({"id": "d", "vector": [0.0, 1.0], "metadata": {"kind": "d"}})
        c.delete("d")
        c.upsert({"id": "p", "vector": [1.0, 1.0], "metadata": {"kind": "p"}})
        c.upsert({"id": "q", "vector": [2.0, 1.0], "metadata": {"kind": "q"}})
        # Die inside the snapshot: after the text index committed its watermark, before the
        # vector snapshot (formerly: after payload.bin was replaced) is written.
        vector.VectorIndex.save = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        db.snapshot()
        """,
    )
    with engramdb.open(data) as db:
        c = db.get_collection("c")
        wrong = {}
        for kind in "apq":
            hits = [h.id for h in c.search([1.0, 0.0], k=10, filter={"kind": kind})]
            if hits != [kind]:
                wrong[kind] = hits
        if wrong:
            raise IndexDisagreement(f"filters returned records of another kind after a torn snapshot: {wrong}")


def test_vector_update_next_to_a_deleted_slot_then_reopen(tmp_path: Path) -> None:
    """Regression (found by the kill loop, fixed in VectorIndex.upsert): hnswlib's replace_deleted
    gave an updated label a second node while the graph had a deleted slot."""
    data = tmp_path / "data"
    problems = []
    with engramdb.open(data) as db:
        c = db.create_collection("c", dimension=2, metric="l2", text_index=False)
        c.upsert(
            [{"id": "x", "vector": [10.0, 10.0]}, {"id": "b", "vector": [0.0, 1.0]}, {"id": "a", "vector": [1.0, 0.0]}]
        )
        c.delete("x")  # leaves a deleted slot in the HNSW graph
        c.upsert({"id": "a", "vector": [5.0, 5.0]})
        stale = [(h.id, h.score) for h in c.search([1.0, 0.0], k=2) if h.id == "a" and h.score > 0.5]
        if stale:
            problems.append(f"search by a's superseded vector [1, 0] finds a as an exact match: {stale}")
    with engramdb.open(data) as db:
        c = db.get_collection("c")
        top = [(h.id, round(h.score, 3)) for h in c.search([5.0, 5.0], k=1, exact=True)]
        if top != [("a", 1.0)]:
            problems.append(f"after reopen, exact search for a's vector [5, 5] returned {top}")
        ann = [h.id for h in c.search([5.0, 5.0], k=2)]
        if len(set(ann)) != len(ann):
            problems.append(f"after reopen, HNSW search returned an id twice: {ann}")
    assert not problems, "; ".join(problems)


def test_acknowledged_write_after_restart_with_the_clock_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (found with this suite): the clock was not seeded from stored versions at open, so
    after a restart with the wall clock behind, upserts were acknowledged but lost last-writer-wins."""
    from engramdb.engine import hlc

    data = tmp_path / "data"
    with engramdb.open(data) as db:
        db.create_collection("c", dimension=2, metric="l2").upsert({"id": "a", "vector": [1.0, 0.0], "text": "first"})
    # The node restarts with its clock a minute behind (NTP step, VM snapshot restore).
    behind = types.SimpleNamespace(time=lambda: time.time() - 60.0)
    monkeypatch.setattr(hlc, "time", behind)
    with engramdb.open(data) as db:
        c = db.get_collection("c")
        c.upsert({"id": "a", "vector": [0.0, 1.0], "text": "second"})  # acknowledged
        rec = c.get("a")
        assert rec is not None
        if rec.text != "second":
            raise LostWrite(f"the acknowledged upsert of 'a' was discarded; get returns {rec.text!r}")
