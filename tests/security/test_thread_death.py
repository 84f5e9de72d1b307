"""No background thread dies silently; a stop always finishes; ready means every index answers (issue 14, items 2, 14).

The failure of the review: with the file descriptors of the process used up
while the text index committed, tantivy's writer lost its directory lock
(``rollback`` gives it up before it builds the new writer, and that failed);
every later ``rollback`` is a Rust panic (``pyo3_runtime.PanicException``, a
``BaseException``), which killed the thread that applies committed writes to
the indexes. Every write of every collection then hung, ``/ready`` stayed 200
and SIGTERM could not stop the process.

The faults here are real: file descriptors are really exhausted (in this
process, or in a server through a test-only ``sitecustomize``), and the panics
are genuine ``PanicException`` objects raised by tantivy itself, from a writer
that really lost its lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tantivy

from engramdb.engine.database import Database
from engramdb.errors import EngramError, Unavailable
from engramdb.index.text import TOKENIZER_NAME, build_analyzer, build_schema
from engramdb.service import Service
from integration.conftest import ServerProcess, start_server

SRC = Path(__file__).resolve().parents[2] / "src"
WRITE_BOUND = 15.0  # seconds a write may take here before it counts as hung


# ------------------------------------------------------------------ helpers
@contextlib.contextmanager
def no_file_descriptors() -> Iterator[Callable[[], None]]:
    """Use up every file descriptor this process may open (as a descriptor leak or a flood of sockets would).

    Yields a function that takes again whatever descriptors were freed meanwhile.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))

    def fill() -> None:
        try:
            while True:
                fds.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE

    try:
        fill()
        # Descriptors another thread of this process frees a moment later (a client of an earlier test
        # closed by the garbage collector, a finished subprocess's pipes) would let the next open
        # succeed: take those too.
        time.sleep(0.2)
        fill()
        yield fill
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def writer_that_lost_its_lock(path: Path) -> Any:
    """A real tantivy writer in the state of the review: every ``rollback()`` is a Rust panic."""
    index = tantivy.Index(build_schema(), path=str(path), reuse=True)
    index.register_tokenizer(TOKENIZER_NAME, build_analyzer())
    writer = index.writer(heap_size=15_000_000, num_threads=1)
    # Another thread of this process can free a descriptor at any moment (a text index of an
    # earlier test releasing its idle writer): a commit that got one succeeds; try again.
    for _ in range(10):
        doc = tantivy.Document()
        doc.add_unsigned("label", 1)
        doc.add_text("text", "apple")
        writer.add_document(doc)
        with no_file_descriptors() as fill:
            fill()
            try:
                writer.commit()
            except ValueError:
                fill()  # the failed commit closed what it had opened
                try:
                    writer.rollback()  # gives up the lock, then fails to build its successor
                except ValueError:
                    return writer
    raise AssertionError("a commit or rollback with no file descriptor left kept succeeding")


def genuine_panic(dead: Any) -> BaseException:
    try:
        dead.rollback()
    except BaseException as e:
        assert type(e).__name__ == "PanicException" and not isinstance(e, Exception), type(e).__mro__
        return e
    raise AssertionError("rollback of a writer that lost its lock did not panic")


@pytest.fixture(scope="module")
def dead_writer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return writer_that_lost_its_lock(tmp_path_factory.mktemp("dead-writer"))


def bounded(fn: Callable[[], Any], timeout: float = WRITE_BOUND) -> tuple[str, Any]:
    """Run ``fn`` in a thread: ("ok", result), ("error", exception), or fail the test if it hangs."""
    out: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as e:
            out.append(("error", e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the call hung for {timeout} s"
    return out[0]


def rec(rid: str, text: str = "apple pie") -> dict[str, Any]:
    return {"id": rid, "vector": [1.0, float(len(rid)), 0.5, 0.25], "text": text}


def text_ids(coll: Any, query: str = "apple") -> set[str]:
    return {h.id for h in coll.search(text=query, mode="text", k=100)}


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# ----------------------------------------------------- in-process engine
def test_a_text_writer_that_lost_its_lock_is_reopened_and_nothing_hangs(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    try:
        a = db.create_collection("a", 4)
        b = db.create_collection("b", 4)
        a.upsert([rec("a1")])
        assert wait_for(lambda: text_ids(a) == {"a1"})
        with no_file_descriptors():
            a.upsert([rec("a2")])  # durable: RocksDB's log file is open already
            text = a.indexes.text_index
            assert text is not None
            with pytest.raises(EngramError):
                text.flush()  # the commit fails, and so does the rollback: the writer is dead
        # Unrecoverable for a moment at most: reported, never silent.
        problems = db.problems()
        assert all("text index" in p for p in problems), problems
        # Writes to this and other collections go on (and are acknowledged) ...
        assert bounded(lambda: a.upsert([rec("a3")]))[0] == "ok"
        assert bounded(lambda: b.upsert([rec("b1")]))[0] == "ok"
        # ... and the index comes back by itself with every acknowledged write.
        assert wait_for(lambda: text_ids(a) == {"a1", "a2", "a3"}), text_ids(a)
        assert wait_for(lambda: text_ids(b) == {"b1"})
        assert wait_for(lambda: not db.problems()), db.problems()
    finally:
        assert db.close_within(30)
    with Database(tmp_path / "db") as db2:
        db2.load_all()
        assert text_ids(db2.get_collection("a")) == {"a1", "a2", "a3"}


class _PanickingWriter:
    """A real writer whose next operations meet the genuine panic of a writer that lost its lock."""

    def __init__(self, real: Any, dead: Any, failures: int) -> None:
        self._real, self._dead, self.failures = real, dead, failures

    def _maybe_panic(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            self._dead.rollback()  # raises pyo3_runtime.PanicException

    def add_document(self, doc: Any) -> Any:
        self._maybe_panic()
        return self._real.add_document(doc)

    def delete_documents_by_query(self, q: Any) -> Any:
        self._maybe_panic()
        return self._real.delete_documents_by_query(q)

    def rollback(self) -> Any:
        self._dead.rollback()  # what the review saw: the rollback after a failed write panics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_rust_panic_in_the_index_thread_hangs_no_write(tmp_path: Path, dead_writer: Any) -> None:
    db = Database(tmp_path / "db")
    try:
        a = db.create_collection("a", 4)
        b = db.create_collection("b", 4)
        a.upsert([rec("a1")])
        text = a.indexes.text_index
        assert text is not None
        # The panic surfaces in the thread that applies committed writes to the indexes.
        text._writer = _PanickingWriter(text._writer, dead_writer, failures=1)
        assert bounded(lambda: a.upsert([rec("a2")]))[0] == "ok"
        assert bounded(lambda: b.upsert([rec("b1")]))[0] == "ok"
        assert bounded(lambda: a.upsert([rec("a3")]))[0] == "ok"
        # The writer was replaced (the old one freed its lock) and kept every change.
        assert wait_for(lambda: text_ids(a) == {"a1", "a2", "a3"}), text_ids(a)
        assert wait_for(lambda: not db.problems()), db.problems()
    finally:
        assert db.close_within(30)


def test_an_index_update_that_panics_fails_the_reads_clearly_and_marks_the_node(
    tmp_path: Path, dead_writer: Any
) -> None:
    db = Database(tmp_path / "db")
    try:
        a = db.create_collection("a", 4)
        b = db.create_collection("b", 4)
        a.upsert([rec("a1")])
        real_apply = a.indexes._apply

        def panicking_apply(changes: Any) -> None:
            raise genuine_panic(dead_writer)

        a.indexes._apply = panicking_apply  # type: ignore[method-assign]
        # Acknowledged once durable; the index update fails right after, in the notifier.
        assert bounded(lambda: a.upsert([rec("a2")]))[0] == "ok"
        # A search would answer without a2: it fails instead, saying why and what helps.
        for read in (lambda: a.search([1.0, 2.0, 0.5, 0.25], k=5), lambda: a.count(), lambda: text_ids(a)):
            kind, err = bounded(read)
            assert kind == "error" and isinstance(err, Unavailable) and err.code == "index_unavailable", err
            assert "missed a change" in err.message and "restart" in err.message
        a.indexes._apply = real_apply  # type: ignore[method-assign]
        # Other collections still take writes and answer searches; this one stores writes (the
        # changelog rebuilds its indexes on restart) and the node says what is wrong.
        assert bounded(lambda: b.upsert([rec("b1")]))[0] == "ok"
        assert text_ids(b) == {"b1"} or wait_for(lambda: text_ids(b) == {"b1"})
        assert bounded(lambda: a.upsert([rec("a3")]))[0] == "ok"
        assert a.get("a2") is not None  # the failed-to-index write is stored
        problems = db.problems()
        assert any("default/a" in p and "restart" in p for p in problems), problems
        assert db.fatal is None
    finally:
        assert db.close_within(30)
    with Database(tmp_path / "db") as db2:  # a restart catches the indexes up from the changelog
        db2.load_all()
        assert text_ids(db2.get_collection("a")) == {"a1", "a2", "a3"}
        assert not db2.problems()


# The notifier's end is reported loudly, through threading.excepthook too.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_index_thread_fails_every_write_fast_and_close_is_bounded(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    service = Service(db, db.settings)
    service.load_all()
    a = db.create_collection("a", 4)
    b = db.create_collection("b", 4)
    a.upsert([rec("a1")])
    b.upsert([rec("b1")])
    assert service.ready_report() == {"status": "ready"} and service.health_report() == {"status": "ok"}

    def exiting_apply(changes: Any) -> None:
        raise SystemExit("thread told to exit")  # not a failure: the thread stops, loudly

    a.indexes._apply = exiting_apply  # type: ignore[method-assign]
    # Acknowledged once durable; the notifier then stops on it, and the store refuses the rest.
    assert bounded(lambda: a.upsert([rec("a2")]))[0] == "ok"
    assert wait_for(lambda: db.fatal is not None), db.problems()
    # A search of a cannot see a2 any more: it fails rather than answer without it; b's indexes are current.
    kind, err = bounded(lambda: a.search([1.0, 2.0, 0.5, 0.25], k=5))
    assert kind == "error" and isinstance(err, Unavailable) and err.code == "index_unavailable", err
    assert bounded(lambda: b.search([1.0, 2.0, 0.5, 0.25], k=5))[0] == "ok"
    for coll, rid in ((a, "a3"), (b, "b2")):
        kind, err = bounded(lambda c=coll, r=rid: c.upsert([rec(r)]))  # type: ignore[misc]
        assert kind == "error" and isinstance(err, Unavailable) and err.code == "storage_unavailable", err
    assert db.fatal is not None and any("notifier" in p for p in db.problems()), db.problems()
    # What /ready and /health answer: not ready, and not live either (only a restart helps).
    ready = service.ready_report()
    assert ready["status"] == "unavailable" and any("notifier" in p for p in ready["problems"]), ready
    assert service.health_report()["status"] == "unavailable"
    t0 = time.monotonic()
    kind, _ = bounded(lambda: db.close_within(5), timeout=20)
    assert kind == "ok" and time.monotonic() - t0 < 10
    with Database(tmp_path / "db") as db2:
        db2.load_all()
        assert text_ids(db2.get_collection("a")) == {"a1", "a2"}  # a2 was stored before its index failed
        assert text_ids(db2.get_collection("b")) == {"b1"}


def test_a_stuck_index_thread_cannot_hold_close_or_its_waiters(tmp_path: Path) -> None:
    db = Database(tmp_path / "db")
    a = db.create_collection("a", 4)
    a.upsert([rec("a1")])
    release = threading.Event()

    def stuck_apply(changes: Any) -> None:
        release.wait(60)  # a deadlock, as far as anyone waiting can tell

    a.indexes._apply = stuck_apply  # type: ignore[method-assign]
    assert bounded(lambda: a.upsert([rec("a2")]))[0] == "ok"  # durable: acknowledged
    waiter: list[tuple[str, Any]] = []
    # A search waits for the indexes to hold a2 ...
    t = threading.Thread(target=lambda: waiter.append(bounded(lambda: a.search([1.0, 2.0, 0.5, 0.25]), 30)))
    t.daemon = True
    t.start()
    time.sleep(0.5)
    assert not waiter  # ... and keeps waiting until the close gives up on the stuck thread
    t0 = time.monotonic()
    kind, clean = bounded(lambda: db.close_within(2), timeout=20)
    assert kind == "ok" and clean is False and time.monotonic() - t0 < 10
    t.join(10)
    assert waiter and waiter[0][0] == "error" and isinstance(waiter[0][1], Unavailable), waiter
    release.set()


# ------------------------------------------------------------- real servers
# A test-only sitecustomize for the server subprocess: when the file "exhaust"
# appears in $EDB_TEST_FAULT_DIR it uses up the process's file descriptors,
# until the file "release" appears. Nothing of it is in the product.
_FAULT_SITECUSTOMIZE = textwrap.dedent(
    """
    import os, resource, threading, time

    _dir = os.environ.get("EDB_TEST_FAULT_DIR")

    def _watch():
        while not os.path.exists(os.path.join(_dir, "exhaust")):
            time.sleep(0.02)
        open(os.path.join(_dir, "exhausting"), "w").close()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
        fds = []
        # Every descriptor freed meanwhile is taken again, as a flood of connections would.
        while not os.path.exists(os.path.join(_dir, "release")):
            try:
                while True:
                    fds.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            time.sleep(0.005)
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        open(os.path.join(_dir, "released"), "w").close()

    if _dir:
        threading.Thread(target=_watch, name="test-fault-injector", daemon=True).start()
    """
)


def _search_ids(c: httpx.Client, coll: str) -> set[str]:
    r = c.post(f"/v1/collections/{coll}/search", json={"text": "apple", "mode": "text", "k": 100})
    assert r.status_code == 200, r.text
    return {h["id"] for h in r.json()["hits"]}


def _upsert(c: httpx.Client, coll: str, rid: str) -> httpx.Response:
    return c.post(f"/v1/collections/{coll}/records", json={"records": [rec(rid)]})


def test_server_survives_file_descriptor_exhaustion_during_a_text_commit(tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(_FAULT_SITECUSTOMIZE)
    env = {
        "PYTHONPATH": os.pathsep.join((str(fault), str(SRC))),
        "EDB_TEST_FAULT_DIR": str(fault),
        "ENGRAMDB_SERVER__SHUTDOWN_TIMEOUT_SECONDS": "5",
    }
    data = tmp_path / "data"
    sp = start_server(data, env=env)
    acked: list[tuple[str, str]] = []
    try:
        with sp.client() as c:
            for coll in ("a", "b"):
                assert c.post("/v1/collections", json={"name": coll, "dimension": 4}).status_code == 201
                assert _upsert(c, coll, f"{coll}0").status_code == 200
                acked.append((coll, f"{coll}0"))
            (fault / "exhaust").touch()
            assert wait_for(lambda: (fault / "exhausting").exists())
            time.sleep(0.3)
            # On the connection opened before: the write is stored, its text commit fails.
            r = _upsert(c, "a", "a1")
            assert r.status_code == 200, r.text
            acked.append(("a", "a1"))
            time.sleep(1.5)  # refresh ticks: commit and rollback fail, the writer is dead
            r = c.get("/ready")
            assert r.status_code == 503 and r.json()["status"] == "unavailable", r.text + sp.log_text()[-3000:]
            assert any("text index" in p for p in r.json()["problems"]), r.text
            assert c.get("/health").status_code == 200  # still useful: reads and writes work
            (fault / "release").touch()
            assert wait_for(lambda: (fault / "released").exists())
            for coll, rid in (("a", "a2"), ("b", "b1")):
                r = _upsert(c, coll, rid)
                assert r.status_code == 200, r.text
                acked.append((coll, rid))
            # Recovered: ready again, and text search has every acknowledged write.
            assert wait_for(lambda: c.get("/ready").status_code == 200, 15), c.get("/ready").text
            assert wait_for(lambda: _search_ids(c, "a") == {"a0", "a1", "a2"}), _search_ids(c, "a")
            assert _search_ids(c, "b") == {"b0", "b1"}
        t0 = time.monotonic()
        assert sp.stop(timeout=30) == 0
        assert time.monotonic() - t0 < 5 + 10
    finally:
        sp.stop(signal.SIGKILL)
    sp2 = start_server(data, port=sp.port, grpc_port=sp.grpc_port)
    try:
        with sp2.client() as c:
            for coll, rid in acked:
                assert c.get(f"/v1/collections/{coll}/records/{rid}").status_code == 200
            assert _search_ids(c, "a") == {rid for coll, rid in acked if coll == "a"}
            assert _search_ids(c, "b") == {rid for coll, rid in acked if coll == "b"}
    finally:
        assert sp2.stop() == 0


def test_ready_means_text_search_answers_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sp: ServerProcess = start_server(data)
    ids = {f"r{i}" for i in range(20)}
    with sp.client() as c:
        assert c.post("/v1/collections", json={"name": "t", "dimension": 4}).status_code == 201
        r = c.post("/v1/collections/t/records", json={"records": [rec(i) for i in sorted(ids)]})
        assert r.status_code == 200, r.text
    for _ in range(3):
        # kill -9: no snapshot, so the next start rebuilds or replays into the text index.
        sp.stop(signal.SIGKILL)
        sp = start_server(data, wait=None, port=sp.port, grpc_port=sp.grpc_port)
        try:
            with httpx.Client(base_url=sp.base_url, headers=sp.headers(), timeout=10) as c:
                deadline = time.monotonic() + 60
                while True:
                    assert time.monotonic() < deadline, sp.log_text()[-3000:]
                    try:
                        if c.get("/ready").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.005)
                # The first moment the node says ready, text search answers with every record.
                assert _search_ids(c, "t") == ids
        except BaseException:
            sp.stop(signal.SIGKILL)
            raise
    assert sp.stop() == 0
