"""alter_collection on the embedded engine: indexed fields built online, default TTL, ef_search, refusals.

The field build is slowed or paused between chunks by wrapping
``CollectionIndexes._backfill_chunk`` (outside the index lock), so the tests
can look at the collection while the build is half done.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

import engramdb
from engramdb.engine import indexes as indexes_mod
from engramdb.engine.indexes import CollectionIndexes
from engramdb.errors import InvalidArgument, NotFound
from engramdb.filters import compile_filter
from engramdb.index.payload import PayloadIndex
from engramdb.index.vector import VectorIndex

DIM = 8
LANGS = ("en", "fr", "de", "es")


def _vec(rng: random.Random) -> list[float]:
    return [rng.random() + 0.01 for _ in range(DIM)]


def _populate(coll: Any, n: int, seed: int = 1) -> dict[str, dict[str, Any]]:
    rng = random.Random(seed)
    model = {}
    recs = []
    for i in range(n):
        md = {"lang": LANGS[i % len(LANGS)], "n": i}
        model[f"r{i:05d}"] = md
        recs.append({"id": f"r{i:05d}", "vector": _vec(rng), "metadata": md})
    coll.upsert(recs)
    return model


def _expected(model: dict[str, dict[str, Any]], lang: str) -> set[str]:
    return {rid for rid, md in model.items() if md.get("lang") == lang}


class Gate:
    """Pauses the field build after ``after`` chunks until released (or the collection closes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, after: int, chunk: int = 20):
        self.after = after
        self.calls = 0
        self.reached = threading.Event()
        self.release = threading.Event()
        monkeypatch.setattr(indexes_mod, "REINDEX_CHUNK", chunk)
        original = CollectionIndexes._backfill_chunk
        gate = self

        def chunk_then_wait(ix: CollectionIndexes, start: bytes) -> Any:
            out = original(ix, start)
            gate.calls += 1
            if gate.calls == gate.after:
                gate.reached.set()
                while not gate.release.wait(0.02):
                    if ix._reindex_stop.is_set():
                        break
            return out

        monkeypatch.setattr(CollectionIndexes, "_backfill_chunk", chunk_then_wait)


def _wait_built(coll: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while coll.reindex_status() is not None:
        assert time.monotonic() < deadline, f"build did not finish: {coll.reindex_status()}"
        time.sleep(0.01)


def _check_lang(coll: Any, model: dict[str, dict[str, Any]]) -> None:
    """count and filtered search on ``lang`` agree with the model, whatever the index's state."""
    for lang in LANGS:
        want = _expected(model, lang)
        assert coll.count({"lang": lang}) == len(want), lang
        hits = coll.search([1.0] * DIM, k=len(model) + 10, filter={"lang": lang}, include=["metadata"], exact=True)
        assert {h.id for h in hits} == want, lang
        hits = coll.search([1.0] * DIM, k=5, filter={"lang": lang}, include=["metadata"])
        assert len(hits) == min(5, len(want)) and all(h.id in want for h in hits), lang


@pytest.fixture
def coll(db: engramdb.Database) -> Any:
    return db.create_collection("c", DIM)


def test_add_field_is_correct_during_and_after_the_build(
    db: engramdb.Database, coll: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _populate(coll, 300)
    gate = Gate(monkeypatch, after=3)
    cfg = db.alter_collection("c", indexed_fields={"lang": "keyword"})
    assert cfg.indexed_fields == {"lang": "keyword"}
    assert gate.reached.wait(10)
    st = coll.reindex_status()
    assert st["state"] == "building" and st["fields"] == ["lang"] and 0 < st["done"] < 300 and st["total"] == 300
    # Half built: the field does not answer from the index yet, so records are checked.
    assert "lang" not in coll.indexes.payload.fields
    assert not coll.indexes.filter_candidates(compile_filter({"lang": "fr"})).exact
    _check_lang(coll, model)
    # Writes during the build: before and after the scan position, new records, deletes.
    rng = random.Random(7)
    for rid in ("r00001", "r00250", "r00299"):
        model[rid] = {"lang": "es", "n": -1}
        coll.upsert({"id": rid, "vector": _vec(rng), "metadata": model[rid]})
    coll.patch("r00002", metadata={"lang": "de"})
    model["r00002"]["lang"] = "de"
    coll.delete(["r00003", "r00200"])
    del model["r00003"], model["r00200"]
    for i in range(300, 340):
        model[f"r{i:05d}"] = {"lang": "fr", "n": i}
        coll.upsert({"id": f"r{i:05d}", "vector": _vec(rng), "metadata": model[f"r{i:05d}"]})
    _check_lang(coll, model)
    assert coll.reindex_status()["state"] == "building"  # still paused: the checks above ran mid-build
    gate.release.set()
    _wait_built(coll)
    assert coll.indexes.payload.fields == {"lang": "keyword"}
    assert coll.indexes.filter_candidates(compile_filter({"lang": "fr"})).exact
    _check_lang(coll, model)


def test_concurrent_upserts_during_the_build_are_all_indexed(
    db: engramdb.Database, coll: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _populate(coll, 400)
    monkeypatch.setattr(indexes_mod, "REINDEX_CHUNK", 7)
    original = CollectionIndexes._backfill_chunk

    def slow(ix: CollectionIndexes, start: bytes) -> Any:
        time.sleep(0.002)  # outside the lock: lets the writers interleave with the scan
        return original(ix, start)

    monkeypatch.setattr(CollectionIndexes, "_backfill_chunk", slow)
    backfill = PayloadIndex.backfill

    def slow_backfill(self: PayloadIndex, label: int, metadata: Any) -> None:
        # Widens the gap between reading a chunk's rows and indexing them, where a write applied
        # meanwhile would be overwritten by the older row if the chunk did not hold the index lock.
        time.sleep(0.001)
        backfill(self, label, metadata)

    monkeypatch.setattr(PayloadIndex, "backfill", slow_backfill)
    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                rid = f"r{rng.randrange(600):05d}"  # existing ids (ahead of and behind the scan) and new ones
                md = {"lang": rng.choice(LANGS), "n": seed}
                with lock:  # the model must follow the order in which writes of one id land
                    coll.upsert({"id": rid, "vector": _vec(rng), "metadata": md})
                    model[rid] = md
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        db.alter_collection("c", indexed_fields={"lang": "keyword"})
        _wait_built(coll)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert coll.indexes.payload.fields == {"lang": "keyword"}
    live = coll.indexes.vindex.live
    payload = coll.indexes.payload
    label_of = coll.indexes.vindex.label_of
    for lang in LANGS:
        bm, exact = payload.candidates(compile_filter({"lang": lang}), live)
        assert exact
        assert set(bm) == {label_of[rid] for rid in _expected(model, lang)}, lang
    _check_lang(coll, model)


def test_write_racing_a_chunk_is_not_overwritten_by_the_older_row(
    db: engramdb.Database, coll: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Deterministic version of the race above: while a chunk is being indexed (its rows already
    # read), a write changes a record further on in the same chunk.
    model = _populate(coll, 50)
    backfill = PayloadIndex.backfill
    done = threading.Event()

    def racing(self: PayloadIndex, label: int, metadata: Any) -> None:
        if metadata.get("n") == 5 and not done.is_set():
            md = {"lang": "xx", "n": 6}

            def write() -> None:
                coll.upsert({"id": "r00006", "vector": [0.5] * DIM, "metadata": md})
                done.set()

            model["r00006"] = md
            threading.Thread(target=write).start()
            # Held by the chunk, the index lock keeps the write from being applied until the chunk
            # is indexed; then the write's own update wins. Without it the write lands now and the
            # chunk then indexes the row it read before.
            done.wait(0.5)
        backfill(self, label, metadata)

    monkeypatch.setattr(PayloadIndex, "backfill", racing)
    db.alter_collection("c", indexed_fields={"lang": "keyword"})
    _wait_built(coll)
    assert done.wait(10)
    assert coll.indexes.payload.fields == {"lang": "keyword"}
    assert coll.count({"lang": "xx"}) == 1
    assert coll.count({"lang": LANGS[6 % 4]}) == len(_expected(model, LANGS[6 % 4]))
    _check_lang(coll, model)


def test_build_resumes_after_close_mid_build(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d"
    db = engramdb.open(path)
    model = _populate(db.create_collection("c", DIM), 200)
    gate = Gate(monkeypatch, after=2)
    db.alter_collection("c", indexed_fields={"lang": "keyword", "n": "int"})
    assert gate.reached.wait(10)
    db.close()  # snapshots the indexes without the half-built fields
    monkeypatch.undo()
    with engramdb.open(path) as db2:
        c2 = db2.get_collection("c")
        assert c2.config.indexed_fields == {"lang": "keyword", "n": "int"}
        _check_lang(c2, model)
        _wait_built(c2)
        assert c2.indexes.payload.fields == {"lang": "keyword", "n": "int"}
        assert c2.count({"n": {"$gte": 150}}) == 50
        _check_lang(c2, model)
    with engramdb.open(path) as db3:  # the built fields are in the snapshot now: no second build
        c3 = db3.get_collection("c")
        c3.load()
        assert c3.reindex_status() is None
        assert c3.indexes.payload.fields == {"lang": "keyword", "n": "int"}


def test_field_dropped_and_added_again_mid_build_is_rebuilt_whole(
    db: engramdb.Database, coll: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _populate(coll, 200)
    gate = Gate(monkeypatch, after=5)
    db.alter_collection("c", indexed_fields={"lang": "keyword"})
    assert gate.reached.wait(10)
    # The scan is past the first 100 records; the field begun again now has none of them.
    db.alter_collection("c", indexed_fields={"lang": None})
    db.alter_collection("c", indexed_fields={"lang": "keyword"})
    gate.release.set()
    _wait_built(coll)
    assert coll.indexes.payload.fields == {"lang": "keyword"}
    _check_lang(coll, model)


def test_field_added_while_the_builder_exits_is_built(
    db: engramdb.Database, coll: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A field added between the builder deciding "nothing left" and its thread ending still gets built."""
    model = _populate(coll, 200)
    exited, resume = threading.Event(), threading.Event()
    original = CollectionIndexes._reindex_main

    def build_then_linger(ix: CollectionIndexes) -> None:
        original(ix)
        if not exited.is_set():  # the first builder: it has decided to exit, its thread is still alive
            exited.set()
            resume.wait(10)

    monkeypatch.setattr(CollectionIndexes, "_reindex_main", build_then_linger)
    db.alter_collection("c", indexed_fields={"lang": "keyword"})
    assert exited.wait(30)
    db.alter_collection("c", indexed_fields={"n": "int"})
    resume.set()
    _wait_built(coll, timeout=10)
    assert coll.indexes.payload.fields == {"lang": "keyword", "n": "int"}
    assert coll.count({"n": {"$gte": 150}}) == 50
    _check_lang(coll, model)


def test_remove_and_retype_fields(tmp_path: Any) -> None:
    path = tmp_path / "d"
    with engramdb.open(path) as db:
        c = db.create_collection("c", DIM, indexed_fields={"lang": "keyword", "n": "int"})
        model = _populate(c, 100)
        cfg = db.alter_collection("c", indexed_fields={"lang": None})
        assert cfg.indexed_fields == {"n": "int"}
        assert c.indexes.payload.fields == {"n": "int"}
        _check_lang(c, model)  # answered by checking records now
        db.alter_collection("c", indexed_fields={"n": "keyword"})  # numbers are not keywords: still correct
        _wait_built(c)
        assert c.indexes.payload.fields == {"n": "keyword"}
        assert c.count({"n": {"$gte": 90}}) == 10
    with engramdb.open(path) as db:
        c = db.get_collection("c")
        assert c.config.indexed_fields == {"n": "keyword"}
        c.load()
        assert c.indexes.payload.fields == {"n": "keyword"}  # the snapshot does not bring "lang" back
        _check_lang(c, model)


def test_alter_before_the_collection_is_loaded(tmp_path: Any) -> None:
    path = tmp_path / "d"
    with engramdb.open(path) as db:
        model = _populate(db.create_collection("c", DIM), 50)
    with engramdb.open(path) as db:
        db.alter_collection("c", indexed_fields={"lang": "keyword"})
        c = db.get_collection("c")
        _check_lang(c, model)  # loads, then builds in the background
        _wait_built(c)
        assert c.indexes.payload.fields == {"lang": "keyword"}


def test_default_ttl_applies_to_later_writes_only(db: engramdb.Database, coll: Any) -> None:
    rng = random.Random(3)
    coll.upsert({"id": "old", "vector": _vec(rng)})
    cfg = db.alter_collection("c", default_ttl_seconds=3600)
    assert cfg.default_ttl_seconds == 3600
    now = time.time()
    coll.upsert([{"id": "new", "vector": _vec(rng)}, {"id": "own", "vector": _vec(rng), "ttl_seconds": 60}])
    assert coll.get("old").expires_at is None
    assert now + 3500 < coll.get("new").expires_at < now + 3700
    assert coll.get("own").expires_at < now + 100
    coll.patch("old", metadata={"x": 1})  # a patch keeps the record's own expiry
    assert coll.get("old").expires_at is None
    assert db.alter_collection("c", default_ttl_seconds=None).default_ttl_seconds is None
    coll.upsert({"id": "later", "vector": _vec(rng)})
    assert coll.get("later").expires_at is None
    assert coll.get("new").expires_at is not None  # kept its expiry
    # Leaving it out keeps it.
    db.alter_collection("c", default_ttl_seconds=10)
    assert db.alter_collection("c", ef_search=99).default_ttl_seconds == 10


def test_ef_search_takes_effect_for_the_next_queries(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d"
    seen: list[int] = []
    knn = VectorIndex.knn

    def spy(self: VectorIndex, q: Any, k: int, ef: int | None = None, **kw: Any) -> Any:
        seen.append(ef or -1)
        return knn(self, q, k, ef, **kw)

    monkeypatch.setattr(VectorIndex, "knn", spy)
    with engramdb.open(path) as db:
        c = db.create_collection("c", DIM)
        _populate(c, 50)
        c.search([1.0] * DIM, k=3)
        assert seen[-1] == 64
        assert db.alter_collection("c", ef_search=321).index.ef_search == 321
        c.search([1.0] * DIM, k=3)
        assert seen[-1] == 321
        c.search([1.0] * DIM, k=3, ef=20)  # a query's own ef still wins
        assert seen[-1] == 20
    with engramdb.open(path) as db:
        c = db.get_collection("c")
        assert c.config.index.ef_search == 321
        c.search([1.0] * DIM, k=3)
        assert seen[-1] == 321


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"ef_search": 0}, "invalid_config"),
        ({"ef_search": 10_001}, "invalid_config"),
        ({"ef_search": True}, "invalid_config"),
        ({"default_ttl_seconds": 0}, "invalid_config"),
        ({"default_ttl_seconds": float("nan")}, "invalid_config"),
        ({"indexed_fields": {"lang": "text"}}, "invalid_config"),
        ({"indexed_fields": {"a..b": "keyword"}}, "invalid_config"),
        ({"indexed_fields": {"x" * 257: "keyword"}}, "invalid_config"),
        ({"indexed_fields": {f"f{i}": "int" for i in range(257)}}, "invalid_config"),
        ({"indexed_fields": ["lang"]}, "invalid_config"),
        # One good change next to a bad one: nothing changes.
        ({"ef_search": 100, "indexed_fields": {"lang": "nope"}}, "invalid_config"),
        ({"default_ttl_seconds": 5, "ef_search": -1}, "invalid_config"),
    ],
)
def test_bad_values_change_nothing(tmp_path: Any, kw: dict[str, Any], code: str) -> None:
    path = tmp_path / "d"
    with engramdb.open(path) as db:
        c = db.create_collection("c", DIM, indexed_fields={"n": "int"})
        before = c.config
        with pytest.raises(InvalidArgument) as e:
            db.alter_collection("c", **kw)
        assert e.value.code == code
        assert c.config == before
        assert c.reindex_status() is None
    with engramdb.open(path) as db:
        assert db.get_collection("c").config == before


def test_too_many_fields_in_total_is_refused(db: engramdb.Database) -> None:
    db.create_collection("c", DIM, indexed_fields={f"a{i}": "int" for i in range(200)})
    with pytest.raises(InvalidArgument) as e:
        db.alter_collection("c", indexed_fields={f"b{i}": "int" for i in range(100)})
    assert e.value.code == "invalid_config"
    assert len(db.get_collection("c").config.indexed_fields) == 200


def test_immutable_settings_are_not_parameters(db: engramdb.Database, coll: Any) -> None:
    before = coll.config
    for name, value in (("dimension", 4), ("metric", "l2"), ("index", {"m": 32}), ("embedder", None)):
        with pytest.raises(TypeError):
            db.alter_collection("c", **{name: value})
    assert coll.config == before


def test_missing_collection_and_no_change(db: engramdb.Database, coll: Any) -> None:
    with pytest.raises(NotFound) as e:
        db.alter_collection("nope", ef_search=10)
    assert e.value.code == "collection_not_found"
    assert db.alter_collection("c") == coll.config  # nothing asked, nothing written


def test_failed_build_is_reported_and_retried(
    db: engramdb.Database, coll: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _populate(coll, 30)
    original = CollectionIndexes._backfill_chunk
    failures = iter([OSError("disk read failed")])

    def flaky(ix: CollectionIndexes, start: bytes) -> Any:
        err = next(failures, None)
        if err is not None:
            raise err
        return original(ix, start)

    monkeypatch.setattr(CollectionIndexes, "_backfill_chunk", flaky)
    seen: list[dict[str, Any]] = []
    orig_wait = threading.Event.wait

    def record_status(self: threading.Event, timeout: float | None = None) -> bool:
        st = coll.reindex_status()
        if st is not None and st.get("state") == "retrying":
            seen.append(st)
        return orig_wait(self, min(timeout or 0.01, 0.01))

    monkeypatch.setattr(coll.indexes._reindex_stop, "wait", record_status.__get__(coll.indexes._reindex_stop))
    db.alter_collection("c", indexed_fields={"lang": "keyword"})
    _wait_built(coll)
    assert seen and "disk read failed" in seen[0]["error"]
    assert coll.indexes.payload.fields == {"lang": "keyword"}
    _check_lang(coll, model)
