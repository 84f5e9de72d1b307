"""An idle collection does not pin the changelog, and still reopens from its snapshot."""

from __future__ import annotations

import numpy as np

import engramdb
from engramdb.storage import keyspace


def test_idle_collection_does_not_block_trimming(tmp_path):
    rng = np.random.default_rng(5)
    db = engramdb.open(tmp_path / "d")
    idle = db.create_collection("idle", dimension=4)
    busy = db.create_collection("busy", dimension=4)
    idle.upsert([{"id": f"i{n}", "vector": rng.normal(size=4).tolist(), "text": f"idle {n}"} for n in range(20)])
    db.snapshot()
    for n in range(30):
        busy.upsert({"id": f"b{n}", "vector": rng.normal(size=4).tolist()})
    db.snapshot()
    first = db.store.first_key("changes")
    assert first is not None and keyspace.parse_seq(first) > idle.indexes.watermark - 1
    assert idle.indexes.watermark == busy.indexes.watermark == db.store.seq
    query = idle.get("i3", include=["vector"]).vector
    db.close()

    db = engramdb.open(tmp_path / "d")
    idle = db.get_collection("idle")
    idle.load()
    assert idle.load_progress == (0, 0), "the idle collection was rebuilt instead of loaded from its snapshot"
    assert idle.search(query, k=1)[0].id == "i3"
    assert [h.id for h in idle.search(text="3", mode="text", k=1)] == ["i3"]
    assert idle.count() == 20
    db.close()


def _first_seq(db) -> int:
    first = db.store.first_key("changes")
    return db.store.seq + 1 if first is None else keyspace.parse_seq(first)


def _vec(rng) -> list[float]:
    return rng.normal(size=4).tolist()


def test_never_loaded_collection_does_not_pin_the_changelog(tmp_path):
    """After a restart, a collection nobody touches is never loaded; writes elsewhere must still be
    trimmed, and the idle collection must then open from its snapshot, not rebuild."""
    rng = np.random.default_rng(6)
    with engramdb.open(tmp_path / "d") as db:
        idle = db.create_collection("idle", dimension=4)
        busy = db.create_collection("busy", dimension=4)
        idle.upsert([{"id": f"i{n}", "vector": _vec(rng), "text": f"idle {n}"} for n in range(20)])
        busy.upsert({"id": "b", "vector": _vec(rng)})
        query = idle.get("i3", include=["vector"]).vector
    with engramdb.open(tmp_path / "d") as db:
        busy = db.get_collection("busy")
        for n in range(30):
            busy.upsert({"id": f"b{n}", "vector": _vec(rng)})
        assert not db.get_collection("idle").loaded
        db.snapshot()  # snapshots the loaded collections, then trims
        assert not db.get_collection("idle").loaded, "trimming must not load the idle collection"
        assert _first_seq(db) > db.store.seq - 1, "the idle collection kept the changelog from being trimmed"
    with engramdb.open(tmp_path / "d") as db:
        idle = db.get_collection("idle")
        idle.load()
        assert idle.load_progress == (0, 0), "the idle collection was rebuilt instead of loaded from its snapshot"
        assert idle.search(query, k=1)[0].id == "i3"
        assert [h.id for h in idle.search(text="3", mode="text", k=1)] == ["i3"]


def test_unloaded_collection_with_unindexed_changes_keeps_them(tmp_path):
    """Changes of an unloaded collection after its snapshot (left by a process that stopped before
    snapshotting it, or made now without loading it: TTL expiry) must stay in the changelog until
    it is loaded and replays them."""
    import time

    rng = np.random.default_rng(7)
    with engramdb.open(tmp_path / "d") as db:
        a = db.create_collection("a", dimension=4)
        b = db.create_collection("b", dimension=4)
        a.upsert({"id": "a0", "vector": _vec(rng)})
        b.upsert([{"id": "b0", "vector": _vec(rng)}, {"id": "gone", "vector": [0.0, 0.0, 0.0, 9.0]}])
    with engramdb.open(tmp_path / "d") as db:
        b = db.get_collection("b")
        b.upsert({"id": "b1", "vector": [1.0, 2.0, 3.0, 4.0]})
        b.patch("gone", ttl_seconds=1)  # expires before the next process sweeps
        b.close(snapshot=False)  # as if the process died before b's next snapshot
    time.sleep(1.1)
    for round_ in range(2):
        with engramdb.open(tmp_path / "d") as db:
            a = db.get_collection("a")
            for n in range(20):
                a.upsert({"id": f"a{round_}-{n}", "vector": _vec(rng)})
            if round_ == 1:
                assert db.sweep() >= 1  # expires b's record "gone" without loading b
            db.snapshot()
            assert not db.get_collection("b").loaded
    with engramdb.open(tmp_path / "d") as db:
        b = db.get_collection("b")
        b.load()
        assert b.load_progress == (0, 0), "b's snapshot should still be usable (its changes were kept)"
        assert b.search([1.0, 2.0, 3.0, 4.0], k=1, include=[])[0].id == "b1"
        assert "gone" not in [h.id for h in b.search([0.0, 0.0, 0.0, 9.0], k=3, include=[])]
        assert b.count() == 2


def test_change_to_an_unloaded_collection_in_this_process_is_kept(tmp_path):
    """A TTL expiry changes a collection without loading it; its snapshot is then behind by that
    change, which must stay in the changelog (earlier entries may go)."""
    import time

    rng = np.random.default_rng(8)
    with engramdb.open(tmp_path / "d") as db:
        a = db.create_collection("a", dimension=4)
        c = db.create_collection("c", dimension=4)
        a.upsert({"id": "a0", "vector": _vec(rng)})
        c.upsert([{"id": "keep", "vector": _vec(rng)}, {"id": "gone", "vector": _vec(rng), "ttl_seconds": 1}])
    time.sleep(1.1)
    with engramdb.open(tmp_path / "d") as db:
        a = db.get_collection("a")
        a.upsert({"id": "a1", "vector": _vec(rng)})
        db.snapshot()  # c is clean: trimming may pass its snapshot
        assert db.sweep() >= 1  # expires c's "gone" without loading c
        c = db.get_collection("c")
        assert not c.loaded
        expired_at = db.store.last_change_seq[c.prefix]
        for n in range(10):
            a.upsert({"id": f"a2-{n}", "vector": _vec(rng)})
        db.snapshot()
        assert not c.loaded
        assert _first_seq(db) <= expired_at, "the expiry of a record in unloaded c was trimmed away"
        assert _first_seq(db) > 1, "nothing was trimmed at all"
    with engramdb.open(tmp_path / "d") as db:
        c = db.get_collection("c")
        c.load()
        assert c.load_progress == (0, 0)
        assert c.count() == 1
        assert [h.id for h in c.search(_vec(rng), k=5, include=[])] == ["keep"]


def test_edges_of_an_unloaded_collection_do_not_hold_trimming_and_the_newest_entry_stays(tmp_path):
    """Replay applies record changes only, so edge changes of an unloaded collection must not pin the
    changelog; and trimming never removes the newest entry, which carries the sequence counter."""
    rng = np.random.default_rng(9)
    with engramdb.open(tmp_path / "d") as db:
        a = db.create_collection("a", dimension=4)
        c = db.create_collection("c", dimension=4)
        c.upsert([{"id": f"r{i}", "vector": _vec(rng)} for i in range(3)])
        a.upsert({"id": "a0", "vector": _vec(rng)})
    with engramdb.open(tmp_path / "d") as db:
        c = db.get_collection("c")
        c.link({"src": "r0", "relation": "knows", "dst": "r1"}, create_missing=True)  # does not load c
        edge_seq = db.store.seq
        assert not c.loaded
        a = db.get_collection("a")
        for n in range(20):
            a.upsert({"id": f"a{n}", "vector": _vec(rng)})
        db.snapshot()
        assert _first_seq(db) > edge_seq, "an edge change of unloaded c kept the changelog from being trimmed"
        last = db.store.seq
        assert _first_seq(db) == last, "trimming removed the newest changelog entry"
    with engramdb.open(tmp_path / "d") as db:
        assert db.store.seq == last
        c = db.get_collection("c")
        c.load()
        assert c.load_progress == (0, 0)
        assert [e.dst for e in c.edges("r0")] == ["r1"]
