"""Damaged files: the WAL tail, SSTables, row checksums, index snapshots, the changelog.

Every test works on a real data directory (a copy of one built once per
module) and damages real files, then reopens it:

* (a) WAL tail truncated / zeroed / bit-flipped: the database reopens to a
  prefix of the writes, with everything flushed before intact, or refuses to
  open with a CorruptData error;
* (b) SSTable bit flips: every read returns the right record or raises
  CorruptData, opening fails (if it does) with CorruptData, nothing is
  returned silently wrong or missing; a row whose own CRC fails is CorruptData;
* (c)-(e) vector snapshot (with the payload index inside it), text index
  damaged (also bit flips, truncation or zeroing inside its segment files,
  caught by their checksums at open), deleted, or replaced by an older or
  another collection's copy: the next open rebuilds them and every answer is
  right again (text answers equal those of a fresh index of the same
  records); files a killed text-index commit left behind cost no rebuild;
* (f) changelog entries that point to missing records are tolerated.

Symptoms are raised as dedicated exception classes (IndexDisagreement,
SilentCorruption, UnclearError), so that a test showing an open engine bug can
be a strict xfail that expects exactly its class (any other failure in it is
still a failure).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rocksdict import Options, Rdict

import engramdb
from engramdb import Record
from engramdb.errors import CorruptData, EngramError
from engramdb.storage import keyspace
from engramdb.storage.keyspace import COLUMN_FAMILIES

ROOT = Path(__file__).resolve().parents[2]
COLL = "c"
DIM = 8
N = 120
KINDS = ("fact", "episode", "note")
MAX_SCAN_PAGES = 100
# The vector snapshot: vector.hnsw, and vector.meta (its commit point, which also holds the
# payload index; older versions kept that in a separate payload.bin).
SNAPSHOT_FILES = ("vector.hnsw", "vector.meta", "payload.bin")


class IndexDisagreement(AssertionError):
    """An index answers differently from storage."""


class SilentCorruption(AssertionError):
    """Damaged data was returned (or silently left out) without an error."""


class UnclearError(AssertionError):
    """Damage surfaced as something other than a CorruptData error."""


# ------------------------------------------------------------------ dataset
def word(i: int, version: int) -> str:
    return f"w{i}v{version}"


def make_record(i: int, version: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(1000 * version + i)
    rec: dict[str, Any] = {
        "id": f"r{i:04d}",
        "vector": [float(x) for x in rng.uniform(-1.0, 1.0, DIM).astype(np.float32)],
        "metadata": {"kind": KINDS[(i + version) % len(KINDS)], "i": i, "version": version},
        "namespace": ["user", str(i % 3)],
    }
    if i % 4 != 3:
        rec["text"] = f"memo {word(i, version)} entry"
    return rec


@dataclass
class Dataset:
    data: Path  # a closed data directory
    index_rel: Path  # the collection's index dir, relative to data
    other_index_rel: Path  # index dir of another collection (dimension 4)
    old_snapshot: dict[str, bytes]  # an older, internally consistent index snapshot of COLL
    expected: dict[str, dict[str, Any]]  # live records
    gone_words: list[str] = field(default_factory=list)  # words of deleted or superseded versions


def build_dataset(data: Path) -> Dataset:
    expected: dict[str, dict[str, Any]] = {}
    gone: list[str] = []
    db = engramdb.open(data)
    c = db.create_collection(COLL, dimension=DIM, metric="l2", indexed_fields={"kind": "keyword"})
    other = db.create_collection("other", dimension=4, metric="l2")
    other.upsert({"id": "o1", "vector": [1.0, 2.0, 3.0, 4.0], "text": "other collection"})
    first = [make_record(i) for i in range(N // 2)]
    c.upsert(first)  # one batch
    expected.update({r["id"]: r for r in first})
    index_rel = c.index_dir.relative_to(data)
    other_rel = other.index_dir.relative_to(data)
    db.close()
    old_snapshot = {n: (data / index_rel / n).read_bytes() for n in SNAPSHOT_FILES if (data / index_rel / n).exists()}
    db = engramdb.open(data)
    c = db.get_collection(COLL)
    for i in range(N // 2, N):  # one call each
        rec = make_record(i)
        c.upsert(rec)
        expected[rec["id"]] = rec
    for i in range(0, N, 10):  # updates: new vector, text, metadata
        rec = make_record(i, 1)
        c.upsert(rec)
        if "text" in expected[rec["id"]]:
            gone.append(word(i, 0))
        expected[rec["id"]] = rec
    dead = [f"r{i:04d}" for i in range(5, N, 9)]
    c.delete(dead)
    for rid in dead:
        if "text" in expected[rid]:
            gone.append(expected[rid]["text"].split()[1])
        del expected[rid]
    # The changelog is trimmed up to the oldest watermark of all collections, so write to
    # (and load) the other collection too, or its old snapshot would pin the changelog.
    db.get_collection("other").upsert({"id": "o2", "vector": [4.0, 3.0, 2.0, 1.0]})
    db.snapshot()  # snapshot and trim the changelog, as the background task does
    db.store.flush()  # memtables -> SSTables
    db.close()
    return Dataset(data, index_rel, other_rel, old_snapshot, expected, gone)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return build_dataset(tmp_path_factory.mktemp("pristine") / "data")


def copy_of(ds: Dataset, tmp_path: Path) -> Dataset:
    data = tmp_path / "data"
    shutil.copytree(ds.data, data)
    return Dataset(data, ds.index_rel, ds.other_index_rel, ds.old_snapshot, dict(ds.expected), list(ds.gone_words))


# ------------------------------------------------------------------- checks
def scan_all(coll: Any) -> dict[str, Record]:
    out: dict[str, Record] = {}
    cursor = None
    for _ in range(MAX_SCAN_PAGES):
        page = coll.scan(cursor=cursor, limit=1000)
        out.update({r.id: r for r in page.records})
        cursor = page.next_cursor
        if cursor is None:
            return out
    raise AssertionError("scan did not finish")


def same(expected: dict[str, Any], got: Record | None) -> bool:
    return (
        got is not None
        and got.vector is not None
        and np.array_equal(np.asarray(got.vector, dtype=np.float32), np.asarray(expected["vector"], dtype=np.float32))
        and got.text == expected.get("text")
        and got.metadata == expected["metadata"]
        and got.namespace == tuple(expected["namespace"])
    )


def check_consistent(coll: Any, expected: dict[str, dict[str, Any]], gone_words: list[str], *, deep: bool) -> None:
    """Storage holds exactly ``expected``; every index agrees with it.

    Storage problems fail with AssertionError, index problems with IndexDisagreement.
    Searches use ``include=None`` so that an index entry without a record shows up.
    """
    live = scan_all(coll)
    assert set(live) == set(expected), (
        f"scan: missing {sorted(set(expected) - set(live))[:10]}, extra {sorted(set(live) - set(expected))[:10]}"
    )
    wrong = [rid for rid, rec in expected.items() if not same(rec, live[rid])]
    assert not wrong, f"scan returned wrong content for {wrong[:10]}"
    got = {r.id: r for r in coll.get_many(sorted(expected))}
    assert all(same(rec, got.get(rid)) for rid, rec in expected.items()), "get disagrees with the records"
    absent = [f"r{i:04d}" for i in range(N + 5) if f"r{i:04d}" not in expected]
    assert coll.get_many(absent) == [], "get returned a deleted record"

    problems: list[str] = []
    if coll.count() != len(expected):
        problems.append(f"count() = {coll.count()}, storage has {len(expected)}")
    probe = next(iter(expected.values()))["vector"]
    every = len(expected) + 20
    exact = {h.id for h in coll.search(probe, k=every, exact=True, include=None)}
    if exact != set(expected):
        problems.append(
            f"exact search: extra {sorted(exact - set(expected))[:10]} missing {sorted(set(expected) - exact)[:10]}"
        )
    ann = {h.id for h in coll.search(probe, k=every, include=None)}
    if not ann <= set(expected):
        problems.append(f"HNSW search returned ids without a record: {sorted(ann - set(expected))[:10]}")
    for kind in KINDS:
        want = {rid for rid, rec in expected.items() if rec["metadata"]["kind"] == kind}
        got_f = {h.id for h in coll.search(probe, k=every, filter={"kind": kind}, exact=True, include=None)}
        if got_f != want:
            problems.append(
                f"filter kind={kind}: extra {sorted(got_f - want)[:10]} missing {sorted(want - got_f)[:10]}"
            )
    if deep:
        for rid, rec in expected.items():
            top = [h.id for h in coll.search(rec["vector"], k=1, exact=True, include=None)]
            if top != [rid]:
                problems.append(f"exact search for {rid}'s vector returned {top}")
            if rid not in [h.id for h in coll.search(rec["vector"], k=5, include=None)]:
                problems.append(f"HNSW search for {rid}'s vector missed it")
        text_index = coll.indexes.text_index
        text_index.flush()
        for rid, rec in expected.items():
            if "text" in rec:
                hits = [h.id for h in coll.search(text=rec["text"].split()[1], mode="text", k=5, include=None)]
                if hits != [rid]:
                    problems.append(f"text search for {rid}'s word returned {hits}")
        for w in gone_words:
            hits = [h.id for h in coll.search(text=w, mode="text", k=5, include=None)]
            if hits:
                problems.append(f"text search for the deleted/superseded word {w} returned {hits}")
    if problems:
        raise IndexDisagreement(f"{len(problems)} index problem(s):\n" + "\n".join(problems[:30]))


def reopen_and_check(ds: Dataset, *, deep: bool = True) -> Any:
    """Open, check everything, close; then open again and check (the rebuilt snapshot is good)."""
    db = engramdb.open(ds.data)
    try:
        coll = db.get_collection(COLL)
        coll.load()
        progress = coll.load_progress
        check_consistent(coll, ds.expected, ds.gone_words, deep=deep)
    finally:
        db.close()
    db = engramdb.open(ds.data)
    try:
        coll = db.get_collection(COLL)
        check_consistent(coll, ds.expected, ds.gone_words, deep=False)
    finally:
        db.close()
    return progress


# -------------------------------------------------------------- file damage
def flip_byte(path: Path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def flip_at(path: Path, frac: float, mask: int = 0x01) -> None:
    flip_byte(path, min(path.stat().st_size - 1, int(path.stat().st_size * frac)), mask)


def truncate_to(path: Path, frac: float) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * frac))


def zero_from(path: Path, frac: float) -> None:
    size = path.stat().st_size
    start = int(size * frac)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * (size - start))


def attempt(fn: Callable[[], Any]) -> tuple[str, Any]:
    """Run ``fn`` and classify the outcome: ok / corrupt / engram:<code> / raw:<type>."""
    try:
        return "ok", fn()
    except CorruptData as e:
        return "corrupt", e
    except EngramError as e:
        return f"engram:{e.code}", e
    except Exception as e:
        return f"raw:{type(e).__name__}", e


# ---------------------------------------------------------------- (a) WAL
def wal_workload() -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    """Phase 1 (flushed to SSTables) and phase 2 (only in the WAL): one call per phase-2 op."""
    phase1 = [make_record(i) for i in range(60)]
    phase2: list[tuple[str, Any]] = []
    for i in range(60, 100):
        phase2.append(("u", make_record(i)))
        if i % 3 == 0:
            phase2.append(("u", make_record(i - 55, 2)))  # update a flushed record
        if i % 5 == 0:
            phase2.append(("d", f"r{i - 58:04d}"))  # delete a flushed record
    return phase1, phase2


def wal_child(data: str, snapshot: bool) -> None:
    """Runs in a subprocess: phase 1, flush, phase 2, (snapshot), then SIGKILL itself."""
    phase1, phase2 = wal_workload()
    db = engramdb.open(data)
    c = db.create_collection(COLL, dimension=DIM, metric="l2", indexed_fields={"kind": "keyword"})
    c.upsert(phase1)
    db.store.flush()
    for op, arg in phase2:
        if op == "u":
            c.upsert(arg)
        else:
            c.delete(arg)
    if snapshot:
        db.snapshot()
    os.kill(os.getpid(), signal.SIGKILL)


def run_wal_child(data: Path, snapshot: bool) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH")) if p)
    code = "import sys\nfrom crash.test_corruption import wal_child\nwal_child(sys.argv[1], sys.argv[2] == '1')\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(data), "1" if snapshot else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def states_after_prefixes(
    phase1: list[dict[str, Any]], phase2: list[tuple[str, Any]]
) -> list[dict[str, dict[str, Any]]]:
    state = {r["id"]: r for r in phase1}
    out = [dict(state)]
    for op, arg in phase2:
        if op == "u":
            state[arg["id"]] = arg
        else:
            state.pop(arg, None)
        out.append(dict(state))
    return out


def newest_wal(data: Path) -> Path:
    logs = [Path(p) for p in sorted(glob.glob(str(data / "db" / "*.log"))) if os.path.getsize(p) > 0]
    assert logs, "no non-empty WAL to damage"
    return logs[-1]


WAL_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: truncate_to(p, 2 / 3),
    "zeroed-tail": lambda p: zero_from(p, 2 / 3),
    "bit-flip": lambda p: flip_at(p, 2 / 3, 0x10),
}


def _wal_case(tmp_path: Path, damage: str, snapshot: bool) -> None:
    data = tmp_path / "data"
    run_wal_child(data, snapshot)
    WAL_DAMAGE[damage](newest_wal(data))
    phase1, phase2 = wal_workload()
    states = states_after_prefixes(phase1, phase2)
    outcome, db = attempt(lambda: engramdb.open(data))
    if outcome == "corrupt":
        return  # refusing to open with CorruptData is allowed
    assert outcome == "ok", f"opening after WAL damage failed unclearly: {outcome} {db!r}"
    try:
        coll = db.get_collection(COLL)
        live = scan_all(coll)
        prefix = next(
            (j for j, st in enumerate(states) if set(st) == set(live) and all(same(st[r], live[r]) for r in st)), None
        )
        assert prefix is not None, "the reopened database is not a prefix of the acknowledged writes"
        print(f"WAL {damage}: reopened to the first {prefix} of {len(phase2)} unflushed writes")
        check_consistent(coll, states[prefix], [], deep=True)
        coll.upsert(make_record(500))  # still writable, and the new write is indexed after another reopen
    finally:
        db.close()
    with engramdb.open(data) as db:
        check_consistent(db.get_collection(COLL), {**states[prefix], "r0500": make_record(500)}, [], deep=False)


@pytest.mark.parametrize("damage", sorted(WAL_DAMAGE))
def test_wal_tail_damage_reopens_to_a_prefix(tmp_path: Path, damage: str) -> None:
    # A clean close flushes the memtables and leaves the newest WAL empty, so the
    # writer is SIGKILLed instead: its last writes exist only in the WAL.
    _wal_case(tmp_path, damage, snapshot=False)


def test_wal_tail_lost_behind_an_index_snapshot(tmp_path: Path) -> None:
    # The index snapshot was written (and fsynced) after writes whose WAL tail is then
    # lost -- what a power failure does with storage.sync_writes=false.
    _wal_case(tmp_path, "truncated", snapshot=True)


# -------------------------------------------------------------- (b) SSTs
def sst_of(data: Path, cf: str) -> Path:
    """The largest SSTable of column family ``cf`` (its name is in the table's properties)."""
    ssts = [Path(p) for p in glob.glob(str(data / "db" / "*.sst"))]
    mine = [p for p in ssts if f"{cf}".encode() in p.read_bytes()]
    assert mine, f"no SSTable of column family {cf!r} among {ssts}"
    return max(mine, key=lambda p: p.stat().st_size)


def _sst_trial(
    ds: Dataset, tmp_path: Path, name: str, frac: float, *, with_scan: bool, with_reads: bool = True
) -> tuple[list[str], list[str]]:
    """Damage the records SSTable at ``frac``; returns (silent problems, unclear errors)."""
    case = copy_of(ds, tmp_path / name)
    flip_at(sst_of(case.data, "records"), frac, 0x10)
    silent: list[str] = []
    unclear: list[str] = []
    outcome, db = attempt(lambda: engramdb.open(case.data))
    if outcome != "ok":
        if outcome != "corrupt":
            unclear.append(f"{name}: open failed with {outcome}: {db}")
        return silent, unclear
    if not with_reads:
        db.close()
        return silent, unclear
    try:
        coll = db.get_collection(COLL)
        for rid, rec in case.expected.items():
            out, got = attempt(partial(coll.get, rid))
            if out == "corrupt":
                continue
            if out != "ok":
                unclear.append(f"{name}: get({rid}) raised {out}: {got}")
            elif not same(rec, got):
                silent.append(f"{name}: get({rid}) returned {got} instead of the record")
        if with_scan:
            out, live = attempt(lambda: scan_all(coll))
            if out == "ok" and set(live) != set(case.expected):
                silent.append(f"{name}: scan returned {len(live)} of {len(case.expected)} records without an error")
            elif out not in ("ok", "corrupt"):
                unclear.append(f"{name}: scan raised {out}: {live}")
    finally:
        db.close()
    if with_scan:
        # An index rebuild reads the same damaged records: it must fail or index everything.
        shutil.rmtree(case.data / case.index_rel)
        with engramdb.open(case.data) as db:
            coll = db.get_collection(COLL)
            out, err = attempt(coll.load)
            if out == "ok" and coll.count() != len(case.expected):
                silent.append(f"{name}: rebuilt index holds {coll.count()} of {len(case.expected)} records, no error")
            elif out not in ("ok", "corrupt"):
                unclear.append(f"{name}: index rebuild raised {out}: {err}")
    return silent, unclear


DATA_BLOCK_FRACS = (0.05, 0.2, 0.35, 0.5)


def test_sst_data_block_damage_get_raises_corrupt_data(pristine: Dataset, tmp_path: Path) -> None:
    silent: list[str] = []
    unclear: list[str] = []
    for frac in DATA_BLOCK_FRACS:
        s, u = _sst_trial(pristine, tmp_path, f"data-{frac}", frac, with_scan=False)
        silent += s
        unclear += u
    assert not silent, "\n".join(silent[:20])
    if unclear:
        raise UnclearError("\n".join(unclear[:20]))


def test_sst_data_block_damage_scan_and_rebuild_never_drop_records_silently(pristine: Dataset, tmp_path: Path) -> None:
    silent: list[str] = []
    for frac in DATA_BLOCK_FRACS:
        s, _ = _sst_trial(pristine, tmp_path, f"data-{frac}", frac, with_scan=True)
        silent += s
    if silent:
        raise SilentCorruption("\n".join(silent[:20]))


def test_sst_table_metadata_damage_fails_clearly(pristine: Dataset, tmp_path: Path) -> None:
    # The tail of an SSTable holds its index, properties and footer: damage there is seen at
    # open, which must then fail with CorruptData (reads are test_sst_data_block_damage_*).
    silent: list[str] = []
    unclear: list[str] = []
    for frac in (0.8, 0.85, 0.9, 0.93, 0.96, 0.99):
        s, u = _sst_trial(pristine, tmp_path, f"tail-{frac}", frac, with_scan=False, with_reads=False)
        silent += s
        unclear += u
    assert not silent, "\n".join(silent[:20])
    if unclear:
        raise UnclearError("\n".join(unclear[:20]))


def _find_key(cf: Any, suffix: bytes) -> bytes:
    """The first key of a raw column family that ends with ``suffix``."""
    it = cf.iter()
    try:
        it.seek_to_first()
        for _ in range(1_000_000):
            if not it.valid():
                break
            if it.key().endswith(suffix):
                return bytes(it.key())
            it.next()
    finally:
        del it
    raise AssertionError(f"no key ends with {suffix!r}")


def test_record_row_checksum_damage_is_corrupt_data(pristine: Dataset, tmp_path: Path) -> None:
    """A value damaged before RocksDB checksummed it (bad RAM, bad replica) fails the row's own CRC."""
    ds = copy_of(pristine, tmp_path)
    victim = sorted(ds.expected)[7]
    opts = Options(raw_mode=True)
    raw = Rdict(
        str(ds.data / "db"), options=opts, column_families={cf: Options(raw_mode=True) for cf in COLUMN_FAMILIES}
    )
    try:
        records = raw.get_column_family("records")
        key = _find_key(records, victim.encode())
        stored = records[key]
        assert stored is not None
        value = bytearray(stored)
        value[len(value) // 2] ^= 0x04
        records[key] = bytes(value)
        del records
    finally:
        raw.close()
    with engramdb.open(ds.data) as db:
        coll = db.get_collection(COLL)
        with pytest.raises(CorruptData):
            coll.get(victim)
        with pytest.raises(CorruptData):
            scan_all(coll)
        others = [rid for rid in sorted(ds.expected) if rid != victim]
        got = {r.id: r for r in coll.get_many(others)}
        assert all(same(ds.expected[rid], got.get(rid)) for rid in others)


# ------------------------------------------------- (c)-(e) index snapshots
def _text_segments(index_dir: Path, ext: str) -> list[Path]:
    return sorted((index_dir / "text").glob(f"*.{ext}"))


def _truncate_all(paths: list[Path]) -> None:
    for p in paths:
        truncate_to(p, 0.5)


def _replace_with(index_dir: Path, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        (index_dir / name).write_bytes(body)


def _copy_other_snapshot(ds: Dataset) -> Callable[[Path], None]:
    def damage(index_dir: Path) -> None:
        for name in SNAPSHOT_FILES:
            if (ds.data / ds.other_index_rel / name).exists():
                shutil.copyfile(ds.data / ds.other_index_rel / name, index_dir / name)

    return damage


INDEX_DAMAGE: dict[str, tuple[Callable[[Path], object], bool]] = {
    # name: (damage, a full rebuild is expected). The payload index is stored inside
    # vector.meta, so the meta-* cases damage it too.
    "hnsw-bit-flip": (lambda d: flip_at(d / "vector.hnsw", 0.5), True),
    "hnsw-truncated": (lambda d: truncate_to(d / "vector.hnsw", 0.5), True),
    "hnsw-zeroed": (lambda d: zero_from(d / "vector.hnsw", 0.0), True),
    "meta-bit-flip": (lambda d: flip_at(d / "vector.meta", 0.5), True),
    "meta-truncated": (lambda d: truncate_to(d / "vector.meta", 0.5), True),
    "meta-empty": (lambda d: truncate_to(d / "vector.meta", 0.0), True),
    "text-meta-garbage": (lambda d: (d / "text" / "meta.json").write_text("{not json"), True),
    "text-meta-deleted": (lambda d: (d / "text" / "meta.json").unlink(), True),
    "text-segment-deleted": (lambda d: _text_segments(d, "idx")[-1].unlink(), True),
    "text-segments-truncated": (lambda d: _truncate_all(_text_segments(d, "term")), True),
    "text-watermark-garbage": (lambda d: (d / "text" / "engramdb-text-watermark.json").write_text("{]"), True),
    "text-watermark-deleted": (lambda d: (d / "text" / "engramdb-text-watermark.json").unlink(), False),
    # (e) snapshot files deleted
    "hnsw-deleted": (lambda d: (d / "vector.hnsw").unlink(), True),
    "meta-deleted": (lambda d: (d / "vector.meta").unlink(), True),
    "text-dir-deleted": (lambda d: shutil.rmtree(d / "text"), True),
    "index-dir-deleted": (lambda d: shutil.rmtree(d), True),
}


@pytest.mark.parametrize("damage", sorted(INDEX_DAMAGE))
def test_damaged_or_missing_index_files_are_rebuilt(pristine: Dataset, tmp_path: Path, damage: str) -> None:
    ds = copy_of(pristine, tmp_path)
    fn, rebuild = INDEX_DAMAGE[damage]
    fn(ds.data / ds.index_rel)
    progress = reopen_and_check(ds)
    if rebuild:
        assert progress == (len(ds.expected), len(ds.expected)), f"expected a rebuild from storage, got {progress}"


def test_hnsw_file_of_another_snapshot_is_rebuilt(pristine: Dataset, tmp_path: Path) -> None:
    ds = copy_of(pristine, tmp_path)
    _replace_with(ds.data / ds.index_rel, {"vector.hnsw": ds.old_snapshot["vector.hnsw"]})
    assert reopen_and_check(ds) == (len(ds.expected), len(ds.expected))


def test_snapshot_of_another_collection_is_rebuilt(pristine: Dataset, tmp_path: Path) -> None:
    ds = copy_of(pristine, tmp_path)
    _copy_other_snapshot(ds)(ds.data / ds.index_rel)
    assert reopen_and_check(ds) == (len(ds.expected), len(ds.expected))


def test_older_snapshot_than_the_trimmed_changelog_is_rebuilt(pristine: Dataset, tmp_path: Path) -> None:
    # The vector and payload files of an earlier (valid) snapshot, e.g. restored from an
    # older copy: its watermark predates the changelog entries db.snapshot() trimmed since,
    # so replay cannot catch up.
    ds = copy_of(pristine, tmp_path)
    _replace_with(ds.data / ds.index_rel, ds.old_snapshot)
    reopen_and_check(ds, deep=False)


# ------------------------------------------- (c) text index segment files
# Every tantivy segment file ends with a footer holding the CRC-32 of its content; the text
# index verifies it at open, so damage anywhere in a segment file is answered by a rebuild
# from storage, never by serving (or crashing on) damaged postings.
def _each_text_file(ext: str, fn: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(index_dir: Path) -> None:
        files = _text_segments(index_dir, ext)
        assert files, f"no .{ext} file in the text index"
        for f in files:
            fn(f)

    return damage


def _cut_footer(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4)


def _append_byte(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0")


TEXT_FLIP_FRACS = [(k + 0.5) / 6 for k in range(6)]
TEXT_BIT_FLIPS: dict[str, Callable[[Path], None]] = {
    # Every position in the dictionary and postings files (body and footer), the middle of the others.
    **{
        f"{ext}@{frac:.2f}": _each_text_file(ext, partial(flip_at, frac=frac))
        for ext in ("term", "idx")
        for frac in TEXT_FLIP_FRACS
    },
    **{
        f"{ext}@0.50": _each_text_file(ext, partial(flip_at, frac=0.5))
        for ext in ("pos", "fast", "fieldnorm", "store", "del")
    },
}
TEXT_SEGMENT_DAMAGE: dict[str, Callable[[Path], None]] = {
    "idx-truncated": _each_text_file("idx", partial(truncate_to, frac=0.5)),
    "term-footer-cut": _each_text_file("term", _cut_footer),
    "del-emptied": _each_text_file("del", partial(truncate_to, frac=0.0)),
    "pos-byte-appended": _each_text_file("pos", _append_byte),
    "term-zeroed-tail": _each_text_file("term", partial(zero_from, frac=0.5)),
    "store-zeroed": _each_text_file("store", partial(zero_from, frac=0.0)),
    "fieldnorm-one-file-zeroed": lambda d: zero_from(_text_segments(d, "fieldnorm")[0], 0.0),
}


def text_queries(ds: Dataset) -> list[str]:
    words = {rec["text"].split()[1] for rec in ds.expected.values() if "text" in rec}
    return [*sorted(words | set(ds.gone_words)), "memo", "entry", "memo entry", "memo w1v1 w2v0 entry"]


def text_answers(coll: Any, queries: list[str]) -> dict[str, dict[str, float]]:
    """Every hit of every query as {id: score} (k above the collection size, so ties cannot cut)."""
    text_index = coll.indexes.text_index
    assert text_index is not None
    text_index.flush()
    return {q: {h.id: h.score for h in coll.search(text=q, mode="text", k=N + 20, include=None)} for q in queries}


@dataclass
class TextBase:
    ds: Dataset  # pristine plus committed deletes, so that the text index has .del files
    reference: dict[str, dict[str, float]]  # text answers of a fresh index of the same records


@pytest.fixture(scope="module")
def text_base(pristine: Dataset, tmp_path_factory: pytest.TempPathFactory) -> TextBase:
    # Whether the pristine text index still has tombstones depends on background commit and
    # merge timing, so delete records (one commit each) until it has.
    ds = copy_of(pristine, tmp_path_factory.mktemp("text-base"))
    for victim in ("r0001", "r0002", "r0006"):
        with engramdb.open(ds.data) as db:
            db.get_collection(COLL).delete([victim])
            db.snapshot()
        ds.gone_words.append(ds.expected.pop(victim)["text"].split()[1])
        if _text_segments(ds.data / ds.index_rel, "del"):
            break
    assert _text_segments(ds.data / ds.index_rel, "del"), "no .del file in the text index"
    fresh = copy_of(ds, tmp_path_factory.mktemp("text-reference"))
    shutil.rmtree(fresh.data / fresh.index_rel / "text")
    with engramdb.open(fresh.data) as db:
        coll = db.get_collection(COLL)
        coll.load()
        assert coll.load_progress == (len(ds.expected), len(ds.expected))
        return TextBase(ds, text_answers(coll, text_queries(ds)))


def _text_damage_is_rebuilt(
    base: TextBase, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], None]
) -> None:
    """Open after ``damage``: a warning names the damage, the text index is rebuilt from
    storage, and every text query answers exactly as on a fresh index of the same records."""
    ds, reference = copy_of(base.ds, tmp_path), base.reference
    damage(ds.data / ds.index_rel)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engramdb"), engramdb.open(ds.data) as db:
        coll = db.get_collection(COLL)
        out, err = attempt(coll.load)
        if out != "ok":
            raise UnclearError(f"load raised {out}: {err}")
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("text index file" in m and "damaged" in m for m in warnings), f"no damage warning: {warnings}"
        assert coll.load_progress == (len(ds.expected), len(ds.expected)), "expected a rebuild from storage"
        got = text_answers(coll, list(reference))
        check_consistent(coll, ds.expected, ds.gone_words, deep=False)
    wrong = [
        f"{q!r}: {sorted(got[q].items())[:5]} instead of {sorted(want.items())[:5]}"
        for q, want in reference.items()
        if got[q].keys() != want.keys() or got[q] != pytest.approx(want, rel=1e-5)
    ]
    if wrong:
        raise SilentCorruption(f"{len(wrong)} text answer(s) differ from a fresh index:\n" + "\n".join(wrong[:20]))
    # The rebuilt index is intact: the next open uses it as is.
    with engramdb.open(ds.data) as db:
        coll = db.get_collection(COLL)
        coll.load()
        assert coll.load_progress == (0, 0)
        assert text_answers(coll, list(reference)).keys() == reference.keys()


@pytest.mark.parametrize("damage", list(TEXT_BIT_FLIPS))
def test_text_segment_bit_flips_are_detected(
    text_base: TextBase, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """A single flipped bit in every segment's file of one kind (formerly known issue T1)."""
    _text_damage_is_rebuilt(text_base, tmp_path, caplog, TEXT_BIT_FLIPS[damage])


@pytest.mark.parametrize("damage", list(TEXT_SEGMENT_DAMAGE))
def test_text_segment_truncation_and_zeroing_are_rebuilt(
    text_base: TextBase, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    _text_damage_is_rebuilt(text_base, tmp_path, caplog, TEXT_SEGMENT_DAMAGE[damage])


def test_text_files_left_by_a_killed_commit_are_removed(pristine: Dataset, tmp_path: Path) -> None:
    """Orphan segment files and temporaries (as a kill mid-commit leaves them) cost no rebuild
    and do not make the next commits fail."""
    ds = copy_of(pristine, tmp_path)
    text_dir = ds.data / ds.index_rel / "text"
    seg = _text_segments(ds.data / ds.index_rel, "idx")[0].name[:32]
    orphans = [f"{seg}.999999.del", f"{'ab' * 16}.idx", f"{'ab' * 16}.store.temp", ".tmpQx81Zz"]
    for name in orphans:
        (text_dir / name).write_bytes(b"left by a killed writer")
    with engramdb.open(ds.data) as db:
        coll = db.get_collection(COLL)
        coll.load()
        assert coll.load_progress == (0, 0), "an intact text index with leftovers must not be rebuilt"
        assert not [name for name in orphans if (text_dir / name).exists()]
        check_consistent(coll, ds.expected, ds.gone_words, deep=True)
        rec, victim = make_record(800), "r0001"
        coll.upsert(rec)
        coll.delete([victim])
        db.snapshot()  # commits the text index
    ds.expected[rec["id"]] = rec
    ds.gone_words.append(ds.expected.pop(victim)["text"].split()[1])
    reopen_and_check(ds, deep=True)


# ------------------------------------------------------------ (f) changelog
def test_changelog_entries_for_missing_records_are_tolerated(pristine: Dataset, tmp_path: Path) -> None:
    ds = copy_of(pristine, tmp_path)
    raw = Rdict(
        str(ds.data / "db"),
        options=Options(raw_mode=True),
        column_families={cf: Options(raw_mode=True) for cf in COLUMN_FAMILIES},
    )
    try:
        changes = raw.get_column_family("changes")
        records = raw.get_column_family("records")
        some_key = _find_key(records, b"r0001")
        prefix = some_key[:8]
        it = changes.iter()
        it.seek_to_last()
        last = keyspace.parse_seq(it.key())
        del it
        ghosts = [
            bytes([keyspace.CHANGE_RECORD]) + keyspace.record_key(prefix, "never-written"),
            bytes([keyspace.CHANGE_RECORD]) + keyspace.record_key(prefix, "r0005"),  # deleted long ago, tombstone only
            # no such collection:
            bytes([keyspace.CHANGE_RECORD]) + keyspace.record_key(b"\x00\x00\x00\x09\x00\x00\x00\x09", "r0001"),
        ]
        for i, value in enumerate(ghosts, start=1):
            changes[keyspace.seq_key(last + i)] = value
        del changes, records
    finally:
        raw.close()
    reopen_and_check(ds)
    # New writes after the injected entries are still indexed and survive a reopen.
    rec = make_record(700)
    with engramdb.open(ds.data) as db:
        db.get_collection(COLL).upsert(rec)
    ds.expected[rec["id"]] = rec
    reopen_and_check(ds, deep=False)
