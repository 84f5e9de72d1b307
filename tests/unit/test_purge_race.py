"""The tombstone purge never removes a row that became live again (found in review).

The TTL sweeper reads a purge entry from the queue, then the row's bytes, then asks the writer to
remove the row if it still holds those bytes. A re-upsert between the first two reads removes
the queue entry and makes the row live; the writer must leave that row (and its edge) alone.
"""

from __future__ import annotations

from pathlib import Path

import engramdb
from engramdb.storage import keyspace

STORAGE = {"sync_writes": False, "ttl_sweep_interval_seconds": 3600, "tombstone_grace_seconds": 0}


def _purge_keys(db, kind: int) -> list[bytes]:
    return [k for k, _ in db.store.iter_prefix("ttl", b"") if keyspace.parse_ttl_key(k)[1] == kind]


def test_a_record_upserted_again_after_the_sweeper_read_its_purge_entry_survives(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "d", storage=STORAGE) as db:
        c = db.create_collection("c", dimension=2, metric="l2")
        c.upsert({"id": "r", "vector": [1, 0], "text": "first"})
        c.delete("r")
        [tk] = _purge_keys(db, keyspace.TTL_PURGE_RECORD)  # what the sweeper read from the queue
        c.upsert({"id": "r", "vector": [0, 1], "text": "again"})  # acknowledged
        key = keyspace.parse_ttl_key(tk)[2]
        live = db.store.get("records", key)  # the sweeper reads the row now: live bytes
        db.store.purge([(tk, bytes(live))])
        assert db.store.get("records", key) is not None
        assert c.get("r").text == "again"
        assert [h.id for h in c.search([0, 1], k=1, include=[])] == ["r"]


def test_a_tombstone_is_still_purged(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "d", storage=STORAGE) as db:
        c = db.create_collection("c", dimension=2, metric="l2")
        c.upsert({"id": "r", "vector": [1, 0]})
        c.delete("r")
        [tk] = _purge_keys(db, keyspace.TTL_PURGE_RECORD)
        key = keyspace.parse_ttl_key(tk)[2]
        db.store.purge([(tk, bytes(db.store.get("records", key)))])
        assert db.store.get("records", key) is None and not _purge_keys(db, keyspace.TTL_PURGE_RECORD)


def test_an_edge_linked_again_after_the_sweeper_read_its_purge_entry_survives(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "d", storage=STORAGE) as db:
        c = db.create_collection("c", dimension=2, metric="l2")
        c.upsert([{"id": "a", "vector": [1, 0]}, {"id": "b", "vector": [0, 1]}])
        c.link({"src": "a", "relation": "knows", "dst": "b"})
        c.unlink({"src": "a", "relation": "knows", "dst": "b"})
        [tk] = _purge_keys(db, keyspace.TTL_PURGE_EDGE)
        c.link({"src": "a", "relation": "knows", "dst": "b"})
        key = keyspace.parse_ttl_key(tk)[2]
        db.store.purge([(tk, bytes(db.store.get("edges_out", key)))])
        assert [e.dst for e in c.edges("a")] == ["b"]


def test_an_unreadable_row_does_not_stop_the_purge(tmp_path: Path) -> None:
    """Found in review: decoding the row to see that it is a tombstone must not fail the whole purge
    item (its queue entries would stay due, and every later sweep and erase pass would fail)."""
    with engramdb.open(tmp_path / "d", storage=STORAGE) as db:
        c = db.create_collection("c", dimension=2, metric="l2")
        c.upsert([{"id": "r", "vector": [1, 0]}, {"id": "s", "vector": [0, 1]}])
        c.delete(["r", "s"])
        tk_r, tk_s = sorted(_purge_keys(db, keyspace.TTL_PURGE_RECORD))
        key_r = keyspace.parse_ttl_key(tk_r)[2]
        key_s = keyspace.parse_ttl_key(tk_s)[2]
        db.store.cf["records"][key_r] = b"\x00damaged"
        db.store.purge([(tk_r, b"\x00damaged"), (tk_s, bytes(db.store.get("records", key_s)))])
        assert db.store.get("records", key_s) is None  # the readable tombstone went
        assert db.store.get("records", key_r) == b"\x00damaged"  # the damaged row stays for its readers
        assert not _purge_keys(db, keyspace.TTL_PURGE_RECORD)  # and nothing stays due
