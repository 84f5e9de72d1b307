"""The one mutation function: LWW, conditional writes, derived rows, checksums."""

from __future__ import annotations

import pytest

from engramdb.engine.hlc import HLC, parse_version, version_str
from engramdb.errors import CorruptData
from engramdb.storage import keyspace
from engramdb.storage.codec import RecordRow, decode_record, encode_record
from engramdb.storage.store import Mutation, Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db", tombstone_grace_seconds=5)
    yield s
    s.close()


P = keyspace.coll_prefix(1, 1)


def rec(hlc: int, node: int = 0, **kw) -> RecordRow:
    return RecordRow(hlc=hlc, node=node, created_at=1.0, updated_at=1.0, vector=b"\0\0\x80?", **kw)


def put(store: Store, rid: str, row: RecordRow, **kw) -> bool:
    return store.apply([Mutation(keyspace.CHANGE_RECORD, P, keyspace.record_key(P, rid), row, **kw)])[0].applied


def test_last_writer_wins_regardless_of_arrival_order(store):
    assert put(store, "a", rec(10, metadata={"v": "new"}))
    assert not put(store, "a", rec(5, metadata={"v": "old"}))  # older version arrives late
    assert store.get_record(keyspace.record_key(P, "a")).metadata == {"v": "new"}
    # Equal timestamps: the node id breaks the tie, deterministically on every replica.
    assert put(store, "a", rec(10, node=2, metadata={"v": "node2"}))
    assert not put(store, "a", rec(10, node=1, metadata={"v": "node1"}))


def test_tombstone_beats_older_write_and_is_queued_for_purge(store):
    put(store, "a", rec(10))
    assert put(store, "a", RecordRow(hlc=20, node=0, deleted=True, updated_at=100.0))
    assert not put(store, "a", rec(15))  # a stale replica write cannot resurrect it
    assert store.get_record(keyspace.record_key(P, "a")).deleted
    ttl = [keyspace.parse_ttl_key(k) for k, _ in store.iter_prefix("ttl", b"")]
    assert (105_000, keyspace.TTL_PURGE_RECORD, keyspace.record_key(P, "a")) in ttl


def test_conditional_write(store):
    put(store, "a", rec(10))
    assert not put(store, "a", rec(20), if_version=(9, 0))
    assert put(store, "a", rec(20), if_version=(10, 0))
    assert put(store, "b", rec(30), if_version=(0, 0))  # (0, 0) = must be absent


def test_derived_rows_follow_the_record(store):
    put(store, "a", rec(10, namespace=("u", "m"), expires_at=50.0))
    assert list(store.iter_prefix("meta", keyspace.namespace_index_prefix(P)))
    put(store, "a", rec(11, namespace=("u", "x")))
    ns = [k for k, _ in store.iter_prefix("meta", keyspace.namespace_index_prefix(P))]
    assert ns == [keyspace.ns_key(P, ("u", "x"), "a")]
    assert not list(store.iter_prefix("ttl", b""))  # expiry removed with the old version


def test_changelog_is_ordered_and_survives_reopen(tmp_path):
    s = Store(tmp_path / "db")
    for i in range(5):
        s.apply([Mutation(keyspace.CHANGE_RECORD, P, keyspace.record_key(P, f"r{i}"), rec(i + 1))])
    assert s.seq == 5
    s.close()
    s = Store(tmp_path / "db")
    assert s.seq == 5
    s.close()


def test_checksum_detects_damage():
    raw = bytearray(encode_record(rec(1, metadata={"x": 1})))
    raw[5] ^= 0xFF
    with pytest.raises(CorruptData):
        decode_record(bytes(raw))
    with pytest.raises(CorruptData):
        decode_record(b"\x01")


def test_hlc_monotonic_and_observes_remote():
    c = HLC(node_id=3)
    a, b = c.now(), c.now()
    assert b > a
    c.observe((a[0] + 10_000_000, 9))
    assert c.now()[0] > a[0] + 10_000_000
    assert parse_version(version_str(b)) == b
