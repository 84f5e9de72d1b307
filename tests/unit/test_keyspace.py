"""One authority for the RocksDB keyspace, and the seams around storage.

- every key prefix is declared in ``storage/keyspace.py`` and nowhere else;
- the service layer reaches stored rows only through the engine (API keys via
  ``Database.metadata``), and stays readable for rows written before that;
- the writer hands committed changes to a named ``ChangeListener``.
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

import engramdb
from engramdb.engine.metadata import Metadata
from engramdb.errors import CorruptData
from engramdb.service.api_keys import ApiKey, KeyStore
from engramdb.storage import keyspace
from engramdb.storage.codec import pack, unpack
from engramdb.storage.store import Change, ChangeListener, Mutation, Store

SRC = Path(__file__).resolve().parents[2] / "src"
KEYSPACE_FILE = SRC / "engramdb" / "storage" / "keyspace.py"
# A meta prefix: one letter and "|", or one of the short prefixes declared in the keyspace.
_PREFIX_LIKE = re.compile(rb"^[a-z#]\|?$")


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC).with_suffix("").parts): p for p in sorted((SRC / "engramdb").rglob("*.py"))}


def _bytes_literals(path: Path) -> list[tuple[int, bytes]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes)
    ]


def test_every_key_prefix_is_declared_in_the_keyspace_module() -> None:
    declared = {
        keyspace.TENANT_PREFIX,
        keyspace.COLLECTION_PREFIX,
        keyspace.COUNTER_PREFIX,
        keyspace.NAMESPACE_INDEX_PREFIX,
        keyspace.IDLE_MARK_PREFIX,
        keyspace.API_KEY_PREFIX,
        *(ns.prefix for ns in keyspace.META_NAMESPACES.values()),
    }
    assert len(declared) == 6, "two kinds of meta rows share a prefix"
    found = [
        f"{path.relative_to(SRC)}:{line}: {value!r}"
        for path in modules().values()
        if path != KEYSPACE_FILE
        for line, value in _bytes_literals(path)
        if value in declared or _PREFIX_LIKE.match(value)
    ]
    assert not found, "key prefixes belong in storage/keyspace.py:\n" + "\n".join(found)


def test_the_service_imports_nothing_from_storage() -> None:
    offenders = []
    for name, path in modules().items():
        if not name.startswith("engramdb.service"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                target, names = "", [a.name for a in node.names]
            else:
                continue
            text = " ".join([target, *names])
            if "storage" in text:
                offenders.append(f"{name}:{node.lineno}: {text}")
    assert not offenders, "the service reaches stored rows through the engine:\n" + "\n".join(offenders)


# ------------------------------------------------------------------ metadata
@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "db")
    yield s
    s.close()


def test_metadata_rows_round_trip_by_namespace(store: Store) -> None:
    meta = Metadata(store)
    assert not meta.has_rows("api_keys")
    assert meta.get("api_keys", "a") is None
    meta.put("api_keys", "b", {"n": 2})
    meta.put("api_keys", "a", {"n": 1})
    assert meta.has_rows("api_keys")
    assert meta.get("api_keys", "a") == {"n": 1}
    assert meta.scan("api_keys") == [("a", {"n": 1}), ("b", {"n": 2})]
    # Rows of other kinds in the same column family are not part of the namespace.
    store.write_meta({keyspace.tenant_key("t"): pack({"id": 1})})
    assert [k for k, _ in meta.scan("api_keys")] == ["a", "b"]
    with pytest.raises(KeyError):
        meta.get("no_such_namespace", "a")


def test_a_damaged_metadata_row_is_reported_by_its_kind(store: Store) -> None:
    store.write_meta({keyspace.meta_row_key("api_keys", "x"): b"\x00\x01\x02\x03\x04\x05"})
    with pytest.raises(CorruptData, match="api key row"):
        Metadata(store).get("api_keys", "x")


def test_api_keys_stay_where_earlier_versions_stored_them(tmp_path: Path) -> None:
    """Data directories written before the metadata interface keep their keys (``k|<key id>``)."""
    with engramdb.open(tmp_path / "data") as db:
        old = ApiKey("0123456789abcdef", "f" * 64, "t1", "reader", None, None, False, "old", 1.0)
        db.store.write_meta({b"k|" + old.id.encode(): pack(asdict(old))})  # as written before
        keys = KeyStore(db.metadata)
        assert keys.has_keys()
        assert keys.get(old.id) == old
        _, new = keys.create(tenant="t2", role="writer")
        raw = db.store.get("meta", b"k|" + new.id.encode())
        assert raw is not None and unpack(raw) == asdict(new)
        assert [k.id for k in keys.list_keys()] == [old.id, new.id]


# ------------------------------------------------------ writer -> index contract
class _Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[Change]] = []
        self.threads: set[str] = set()
        self.fail = fail

    def apply_committed(self, changes: list[Change]) -> None:
        self.threads.add(threading.current_thread().name)
        self.batches.append(changes)
        if self.fail:
            raise RuntimeError("index broke")


def _write(store: Store, prefix: bytes, rid: str, hlc: int) -> list[Change]:
    from engramdb.storage.codec import RecordRow

    row = RecordRow(hlc=hlc, node=0, created_at=1.0, updated_at=1.0, vector=b"\0\0\x80?")
    return store.apply([Mutation(keyspace.CHANGE_RECORD, prefix, keyspace.record_key(prefix, rid), row)])


def test_committed_changes_reach_the_listener_of_their_collection(store: Store) -> None:
    p1, p2 = keyspace.coll_prefix(1, 1), keyspace.coll_prefix(1, 2)
    one, two = _Recorder(), _Recorder()
    listener: ChangeListener = one  # the recorder satisfies the declared contract
    store.subscribe(p1, listener)
    store.subscribe(p2, two)
    _write(store, p1, "a", 10)
    _write(store, p1, "a", 5)  # older: not applied, not delivered
    _write(store, p2, "b", 10)
    # Acknowledged once durable; the listeners get the changes right after (reads wait for that).
    assert store.wait_notified(store.seq, timeout=10)
    assert [[c.mutation.key for c in b] for b in one.batches] == [[keyspace.record_key(p1, "a")]]
    assert all(c.applied and c.seq > 0 for b in one.batches for c in b)
    assert [[c.mutation.key for c in b] for b in two.batches] == [[keyspace.record_key(p2, "b")]]
    assert one.threads == {"engramdb-notifier"}
    store.unsubscribe(p1)
    _write(store, p1, "c", 20)
    assert store.wait_notified(store.seq, timeout=10)
    assert len(one.batches) == 1


def test_a_failing_listener_stops_neither_the_writes_nor_other_collections(store: Store) -> None:
    p1, p2 = keyspace.coll_prefix(1, 1), keyspace.coll_prefix(1, 2)
    broken, other = _Recorder(fail=True), _Recorder()
    store.subscribe(p1, broken)
    store.subscribe(p2, other)
    # Acknowledged once durable: the listener's failure is its own to report (the engine's indexes refuse reads).
    assert _write(store, p1, "a", 10)[0].applied
    assert store.get_record(keyspace.record_key(p1, "a")) is not None
    assert _write(store, p2, "b", 10)[0].applied
    assert store.wait_notified(store.seq, timeout=10)
    assert len(broken.batches) == 1 and len(other.batches) == 1
    assert store.problem() is None and store.fatal is None


def test_reads_wait_for_the_listener_and_the_writer_waits_for_a_lagging_one(store: Store) -> None:
    """A write is acknowledged before its listener ran; committed_seq / wait_notified say when it has."""
    p1 = keyspace.coll_prefix(1, 1)
    release = threading.Event()

    class Slow(_Recorder):
        def apply_committed(self, changes: list[Change]) -> None:
            release.wait(30)
            super().apply_committed(changes)

    slow = Slow()
    store.subscribe(p1, slow)
    changes = _write(store, p1, "a", 10)  # returns although the listener is blocked
    assert store.committed_seq(p1) == changes[0].seq and store.committed_seq(keyspace.coll_prefix(1, 2)) == 0
    assert not slow.batches and store.notified_seq < changes[0].seq
    assert store.wait_notified(changes[0].seq, timeout=0.2) is False
    # The writer commits at most _MAX_INDEX_LAG batches ahead of the listener; the next caller waits.
    _write(store, p1, "b", 10)
    late = threading.Thread(target=_write, args=(store, p1, "c", 10), daemon=True)
    late.start()
    late.join(0.5)
    assert late.is_alive() and store.get_record(keyspace.record_key(p1, "c")) is None
    release.set()
    late.join(10)
    assert not late.is_alive() and store.get_record(keyspace.record_key(p1, "c")) is not None
    assert store.wait_notified(store.seq, timeout=10)
    assert [c.mutation.key for b in slow.batches for c in b] == [keyspace.record_key(p1, r) for r in ("a", "b", "c")]
