"""RocksDB storage: column families, the one mutation function, group commit.

All record and edge writes of every origin (every API write, TTL expiry) go through
:meth:`Store.apply`, which queues them for the single writer thread. That
thread compares versions (last writer wins by HLC), maintains the derived rows
(changelog, TTL queue, namespace index, in-edges) in the same atomic
``WriteBatch`` and commits many callers' mutations with one fsync, then wakes
the callers: a caller returns once its write is durable. A second thread (the
notifier, or indexer) hands each collection's committed changes to its
:class:`ChangeListener` (the engine's indexes) meanwhile, so the fsync of the
next batch overlaps the index work of this one instead of adding to it. Reads
that use the indexes first wait until the indexes hold every change committed
before they started (:meth:`Store.committed_seq`, :meth:`Store.wait_notified`),
so a search issued after a write returned sees it. Because one thread orders
every write and one thread applies them, index updates are applied in
changelog order and version comparisons never race.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from rocksdict import (
    BlockBasedOptions,
    Cache,
    ChecksumType,
    DBCompressionType,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

from engramdb.errors import (
    DAMAGED_DATA_ADVICE,
    Closed,
    CorruptData,
    EngramError,
    FailedPrecondition,
    NotFound,
    StorageFull,
    Unavailable,
    is_failure,
)
from engramdb.storage import keyspace
from engramdb.storage.codec import (
    EdgeRow,
    RecordRow,
    decode_edge,
    decode_record,
    decode_version,
    encode_edge,
    encode_record,
    vector_digest,
)

log = logging.getLogger("engramdb.storage")

_MAX_BATCH_MUTATIONS = 20_000
_REREAD_ATTEMPTS = 16  # of a record whose row changes under load_vectors
VECTORS_WRITE_BUFFER_MB = 4  # memtable size of the "vectors" column family, at most
# How often a caller waiting for its write checks that the threads that must
# finish it are still there (a dead thread never wakes anyone).
_WAIT_CHECK_SECONDS = 1.0
# One batch of index updates taking longer than this is reported by problem():
# the indexes (and every writer waiting on them) are stuck, e.g. a deadlock.
_NOTIFY_STALL_SECONDS = 120.0
# Committed batches the indexes may lag behind by before the writer waits for
# them: two lets the fsync of one batch overlap the index update of the one
# before, and bounds how long a search waits for the indexes to catch up (two
# batches' index work). Callers arriving while the writer waits join its next
# batch, so a slow index makes group commits bigger rather than the lag longer.
_MAX_INDEX_LAG = 2


@dataclass(slots=True)
class Mutation:
    """One versioned write of a record or an edge.

    ``key`` is the records key (or the edges_out key, with ``in_key`` the
    matching edges_in key). ``if_version`` makes the write conditional on the
    stored row having exactly that version (``(0, 0)`` = absent), which is how
    read-modify-write operations and the TTL sweeper avoid lost updates.
    """

    kind: int
    prefix: bytes
    key: bytes
    row: RecordRow | EdgeRow
    in_key: bytes | None = None
    if_version: tuple[int, int] | None = None


@dataclass(slots=True)
class Change:
    """A mutation after the writer decided on it; passed to the :class:`ChangeListener` of its collection."""

    mutation: Mutation
    old: RecordRow | EdgeRow | None
    applied: bool
    seq: int = 0


class ChangeListener(Protocol):
    """What the writer hands a collection's committed changes to: the engine's indexes of it.

    The storage → index contract. Register one per collection prefix with
    :meth:`Store.subscribe`.
    """

    def apply_committed(self, changes: list[Change]) -> None:
        """Apply ``changes`` (all applied, of this listener's collection) to the indexes.

        Called in the notifier thread, after the changes are durable and
        their callers were told so, in changelog order, one batch at a time;
        reads of the indexes wait for it (:meth:`Store.wait_notified`).
        Raising is logged and the notifier goes on with other collections: the
        writes stay stored (loading the indexes replays the changelog), and the
        listener itself must refuse to answer from indexes that missed a
        change (the engine's indexes fail their reads with
        ``index_unavailable`` and report the collection unhealthy). A change
        may be delivered again after a replay already applied it, so applying
        must be idempotent.
        """
        ...


@dataclass(slots=True)
class _Item:
    mutations: list[Mutation]
    future: Future[list[Change]]
    purge: list[tuple[bytes, bytes]] = field(default_factory=list)  # (ttl key, expected raw row)
    drop: bytes | None = None  # a collection prefix that takes no more mutations (see Store.drop_prefix)


def _is_tombstone(purge_kind: int, raw: bytes) -> bool:
    """Whether a stored record (or edge) row is a deletion's tombstone (an unreadable row is not purged)."""
    try:
        if purge_kind == keyspace.TTL_PURGE_RECORD:
            return decode_record(raw).deleted
        return decode_edge(raw).deleted
    except CorruptData:
        # Failing the purge item would leave its queue entries due forever and stop every
        # later purge (and the erase passes behind them); the row stays for its readers to report.
        return False


def _fail(fut: Future[list[Change]], exc: BaseException) -> None:
    if not fut.done():
        with contextlib.suppress(Exception):  # InvalidStateError: resolved meanwhile
            fut.set_exception(exc)


def _read_error(e: Exception) -> EngramError:
    msg = str(e)
    if "Corruption" in msg or "checksum" in msg.lower():
        return CorruptData(f"stored data is damaged ({msg}). {DAMAGED_DATA_ADVICE}")
    return EngramError(f"storage read failed: {msg}")


def check_iterator(it: Any) -> None:
    """Raise if a RocksDB iterator stopped because of an error rather than at the end."""
    try:
        it.status()
        return
    except Exception as e:
        err = _read_error(e)
    # The traceback keeps this frame alive; an iterator referenced from it
    # would keep RocksDB's LOCK held after close().
    del it
    raise err


def _is_no_space(e: BaseException) -> bool:
    msg = str(e)
    return "No space left" in msg or "ENOSPC" in msg or getattr(e, "errno", None) == errno.ENOSPC


def _map_write_error(e: BaseException) -> EngramError:
    if _is_no_space(e):
        return StorageFull("the disk is full; nothing was written. Free disk space and retry the write")
    return EngramError(f"storage write failed: {e}")


class Cursor:
    """A RocksDB iterator that lets go of the database when its block ends.

    Holding the raw iterator past the block (say, in a traceback's frame)
    would keep RocksDB's LOCK and the old handle alive after a close or a
    reopen; this proxy drops every reference to it instead. Its methods are
    the raw iterator's own bound methods, so stepping costs nothing extra.
    """

    _METHODS = ("valid", "key", "value", "next", "prev", "seek", "seek_to_first", "seek_to_last", "status")
    __slots__ = _METHODS
    valid: Callable[[], bool]
    key: Callable[[], bytes]
    value: Callable[[], bytes]
    next: Callable[[], None]
    prev: Callable[[], None]
    seek: Callable[[bytes], None]
    seek_to_first: Callable[[], None]
    seek_to_last: Callable[[], None]
    status: Callable[[], None]

    def __init__(self, it: Any) -> None:
        for name in self._METHODS:
            setattr(self, name, getattr(it, name))

    def _drop(self) -> None:
        for name in self._METHODS:
            delattr(self, name)


class _Gate:
    """Many users of the RocksDB handle at once, or one thread replacing it.

    Reads, iterators and writes hold the gate shared; reopening the database
    after a disk-full error holds it exclusive, so no iterator or column
    family object outlives the handle it came from. New shared holders are
    not held back while a reopen waits (a thread that already holds the gate
    may take it again without deadlocking); they wait only for the reopen
    itself, which is short. Every read passes through here, so the shared
    side is a plain object with ``__enter__``/``__exit__`` (about a
    microsecond) rather than a generator-based context manager.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._count = 0
        self._exclusive = False
        self._shared = _SharedHold(self)

    def shared(self) -> _SharedHold:
        return self._shared

    @contextlib.contextmanager
    def exclusive(self, timeout: float) -> Iterator[bool]:
        """Yields whether the gate was won within ``timeout`` seconds."""
        with self._cond:
            won = self._cond.wait_for(lambda: not self._count and not self._exclusive, timeout)
            if won:
                self._exclusive = True
        try:
            yield won
        finally:
            if won:
                with self._cond:
                    self._exclusive = False
                    self._cond.notify_all()


class _SharedHold:
    """``with gate.shared():`` — reentrant and shared by all threads (it keeps no state of its own)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: _Gate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        g = self._gate
        with g._lock:
            while g._exclusive:
                g._cond.wait()
            g._count += 1

    def __exit__(self, *exc: object) -> None:
        g = self._gate
        with g._lock:
            g._count -= 1
            if not g._count:
                g._cond.notify_all()


# RocksDB's default number of LSM levels (L0-L6).
_LEVELS = 7
# Of RocksDB's statistics tickers, those exported (see EngineStats.tickers).
_TICKERS = frozenset(
    {
        "rocksdb.block.cache.hit",
        "rocksdb.block.cache.miss",
        "rocksdb.block.cache.data.hit",
        "rocksdb.block.cache.data.miss",
        "rocksdb.block.cache.filter.hit",
        "rocksdb.block.cache.filter.miss",
        "rocksdb.block.cache.index.hit",
        "rocksdb.block.cache.index.miss",
        "rocksdb.bloom.filter.useful",
        "rocksdb.stall.micros",
        "rocksdb.compact.read.bytes",
        "rocksdb.compact.write.bytes",
        "rocksdb.flush.write.bytes",
    }
)


@dataclass
class CfStats:
    """One column family's RocksDB gauges."""

    pending_compaction_bytes: int = 0
    memtable_bytes: int = 0
    sst_bytes: int = 0
    estimated_keys: int = 0
    table_readers_bytes: int = 0  # index and filter blocks of open SST files held outside the block cache
    files_per_level: list[int] = field(default_factory=list)
    # write stalls since open, by cause (RocksDB's cf-write-stall-stats: "memtable-limit-stops", ...)
    stalls: dict[str, int] = field(default_factory=dict)


@dataclass
class EngineStats:
    """What :meth:`Store.engine_stats` reads from RocksDB."""

    delayed_write_rate: int = 0  # bytes/s RocksDB slows writes to (0: not slowed)
    write_stopped: bool = False
    block_cache_usage: int = 0
    block_cache_pinned: int = 0
    block_cache_capacity: int = 0
    stall_seconds: float = 0.0  # cumulative write-stall time since open
    wal_bytes: int = 0
    column_families: dict[str, CfStats] = field(default_factory=dict)
    # statistics counters (only with storage.statistics): "rocksdb.block.cache.hit" -> count
    tickers: dict[str, int] = field(default_factory=dict)


_STALL_RE = re.compile(r"Cumulative stall: (\d+):(\d+):([\d.]+) H:M:S")


def _cumulative_stall(dbstats: str) -> float:
    m = _STALL_RE.search(dbstats)
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else 0.0


def _stall_counts(text: str) -> dict[str, int]:
    """``"Write Stall (count): a: 1, b: 0"`` -> ``{"a": 1, "b": 0}``."""
    _, _, body = text.partition("):")
    out = {}
    for part in body.split(","):
        name, _, value = part.strip().partition(": ")
        if name and value.strip().isdigit():
            out[name] = int(value)
    return out


def _tickers(text: str) -> dict[str, int]:
    """The ``COUNT`` tickers of ``Options.get_statistics()`` (``"rocksdb.block.cache.hit COUNT : 12"``)."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" COUNT : ")
        if sep and value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


class Store:
    """One RocksDB database per node data directory."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync_writes: bool = True,
        write_buffer_mb: int = 16,
        max_background_jobs: int = 2,
        max_wal_mb: int = 512,
        block_cache_mb: int = 128,
        tombstone_grace_seconds: float = 10 * 86400,
        statistics: bool = False,
        erase_within_seconds: float = 0.0,
        keep_tombstones_seconds: float = 0.0,
    ):
        self.path = str(path)
        self.sync_writes = sync_writes
        self.tombstone_grace_seconds = tombstone_grace_seconds
        # 0: no bound; else a delete is purged and erased from every file within it (see grace_ms).
        self.erase_within_seconds = erase_within_seconds
        self.keep_tombstones_seconds = keep_tombstones_seconds
        # Free space the disk must have before a database that hit a full
        # disk is reopened: reopening writes a new WAL and MANIFEST, and a
        # reopen that fails half way would leave no handle to read from.
        self.recovery_free_bytes = max(write_buffer_mb, 1) * 1024 * 1024 * 2
        # Every column family shares one block cache and one memtable budget:
        # left to their defaults, each of the eight would get its own 64 MiB
        # write buffers and its own cache, and the settings would mean little.
        cache = Cache(block_cache_mb * 1024 * 1024)  # LRU
        # One budget of write_buffer_mb for every memtable (it was twice that): a bulk
        # ingest filled 24 MB of memtables that stayed resident until the idle flush.
        memtables = WriteBufferManager(write_buffer_mb * 1024 * 1024, False)

        def options(compress: bool = True) -> Options:
            o = Options(raw_mode=True)
            if not compress:
                o.set_compression_type(DBCompressionType.none())
            table = BlockBasedOptions()
            table.set_block_cache(cache)
            # Every block read is checksummed; this build's CRC-32C runs in
            # software, XXH3 about 2.7x faster (exact search reads a 4 KiB block
            # per candidate vector). Files keep the type they were written with.
            table.set_checksum_type(ChecksumType.xxh3())
            # Every upsert first reads the stored version of its id; for a new
            # id a bloom filter answers "absent" without reading (and caching)
            # data blocks. ~10 bits per key.
            table.set_bloom_filter(10, False)
            o.set_block_based_table_factory(table)
            # The "vectors" column family (the one stored uncompressed) takes ~1.5 KB per
            # record: smaller memtables flush it early (10 MB less at the peak of an ingest
            # of 42,887 rows, bench/bench_memory.py).
            mb = write_buffer_mb if compress else min(write_buffer_mb, VECTORS_WRITE_BUFFER_MB)
            o.set_write_buffer_size(mb * 1024 * 1024)
            o.set_write_buffer_manager(memtables)
            return o

        opts = options()
        opts.create_if_missing(True)
        opts.create_missing_column_families(True)
        opts.set_max_background_jobs(max_background_jobs)
        opts.set_max_total_wal_size(max_wal_mb * 1024 * 1024)
        opts.set_paranoid_checks(True)
        if statistics:
            # Counters on every read and write (about 10-20 % of a cached point read): off unless asked.
            opts.enable_statistics()
        self.statistics = statistics
        self._block_cache = cache
        self._opts = opts
        self._cf_opts = options
        self._gate = _Gate()
        self._open()
        self._wopts = WriteOptions()
        self._wopts.sync = sync_writes
        self._seq = self._last_seq()
        self._listeners: dict[bytes, ChangeListener] = {}
        # Changelog sequence of each collection's latest applied record change in
        # this process, set by the writer before it acknowledges the change (so
        # before notified_seq moves past it): what a read of that collection's
        # indexes waits for (committed_seq), and what lets an idle collection's
        # snapshot be declared current without loading it.
        self.last_change_seq: dict[bytes, int] = {}
        # Prefixes of collections dropped in this process; only the writer thread reads and adds
        # to it (see drop_prefix). Collection ids are never reused, so an entry blocks no later
        # collection; it costs one 8-byte prefix per collection dropped since the process started.
        # Not persisted: after a restart no collection object can name a dropped prefix, and the
        # erase of a dropped collection drops its prefix again before it deletes the rows.
        self._dropped: set[bytes] = set()
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self.commits = 0  # number of WriteBatches written (for metrics / tests of group commit)
        # Set by a write that failed for lack of space: RocksDB then refuses
        # every write until the handle is reopened (it has no Resume() here).
        self._no_space = False
        self._recover_lock = threading.Lock()
        self._next_recovery = 0.0
        self.recoveries = 0
        # Committed batches for the notifier: (results, seq).
        self._done_q: queue.SimpleQueue[
            tuple[list[tuple[_Item, list[Change] | None, BaseException | None]], int] | None
        ] = queue.SimpleQueue()
        # Every change up to this sequence number has been handed to the indexes.
        self.notified_seq = self.open_seq = self._seq
        # Notified after every batch the notifier finishes (and when a thread dies):
        # readers waiting for notified_seq, the writer waiting for the lag to shrink.
        self._indexed = threading.Condition(threading.Lock())
        self._unindexed = 0  # batches committed and not yet handed to the indexes (under _indexed)
        # Set (once, under _fatal_lock) when the writer or the notifier thread
        # is gone: from then on no write can complete, so none is accepted.
        self._fatal: str | None = None
        self._fatal_lock = threading.Lock()
        self._notifying_since: float | None = None  # monotonic start of the batch the notifier is on
        self._abandoned = False  # close() gave up on a stuck thread: nobody waits for it any more
        self._writer = threading.Thread(
            target=self._thread_main, args=("writer", self._run), name="engramdb-writer", daemon=True
        )
        self._writer.start()
        self._notifier = threading.Thread(
            target=self._thread_main, args=("notifier", self._run_notifier), name="engramdb-notifier", daemon=True
        )
        self._notifier.start()

    def _open(self) -> None:
        # Float vectors do not compress; decompressing them would only slow
        # the multi-gets of exact search.
        cfs = {name: self._cf_opts(name != "vectors") for name in keyspace.COLUMN_FAMILIES}
        try:
            self.db = Rdict(self.path, options=self._opts, column_families=cfs)
        except Exception as e:
            msg = str(e)
            if "No space left" in msg:
                raise StorageFull(
                    f"cannot open the database at {self.path}: the disk is full. Free disk space and start again"
                ) from e
            if "LOCK" in msg and ("lock hold" in msg or "Resource temporarily unavailable" in msg or "No locks" in msg):
                raise EngramError(
                    f"the data directory {self.path} is in use by another process; stop it or use another directory",
                    code="data_dir_locked",
                ) from e
            raise CorruptData(
                f"cannot open the database at {self.path}: {msg}. If a file is damaged: {DAMAGED_DATA_ADVICE}"
            ) from e
        self.cf = {name: self.db.get_column_family(name) for name in keyspace.COLUMN_FAMILIES}
        self.handle = {name: self.db.get_column_family_handle(name) for name in keyspace.COLUMN_FAMILIES}
        # Exact search reads many candidates' vectors once each: caching those
        # blocks grew the process by the whole block cache and evicted the
        # records that are read again; the OS page cache serves them as well.
        scan = ReadOptions()
        scan.fill_cache(False)  # type: ignore[call-arg]  # rocksdict's stub omits the flag
        self.cf["vectors"].set_read_options(scan)
        # Iterators take their own options (rocksdict ignores the ones set above): loading
        # a snapshot scans every vector, which filled the cache with all of them (70 MB at
        # 42,887 rows).
        self._iter_opts: dict[str, ReadOptions] = {"vectors": scan}

    # ------------------------------------------------------------------ reads
    def get(self, cf: str, key: bytes) -> bytes | None:
        try:
            with self._gate.shared():
                v = self.cf[cf].get(key)
        except Exception as e:
            raise _read_error(e) from e
        return v if v is None else bytes(v)

    def multi_get(self, cf: str, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            with self._gate.shared():
                got: Any = self.cf[cf][keys]  # type: ignore[index]  # rocksdict's stubs omit multi-get on bytes keys
        except Exception as e:
            raise _read_error(e) from e
        return list(got)

    def get_record(self, key: bytes, *, vector: bool = False) -> RecordRow | None:
        """The stored row of a record key (live or not); ``vector`` also reads its vector."""
        raw = self.get("records", key)
        row = None if raw is None else decode_record(raw)
        if vector and row is not None and row.vector_pending:
            return self.load_vectors([key], [row])[0]
        return row

    def get_records(self, keys: Sequence[bytes], *, vector: bool = False) -> list[RecordRow | None]:
        """``get_record`` for many keys in one multi-get, in order (None where absent)."""
        rows = [None if raw is None else decode_record(raw) for raw in self.multi_get("records", list(keys))]
        return self.load_vectors(keys, rows) if vector else rows

    def load_vectors(self, keys: Sequence[bytes], rows: Sequence[RecordRow | None]) -> list[RecordRow | None]:
        """``rows`` (read from ``keys``) with their vectors read from the "vectors" column family.

        Rows are completed in place. A row overwritten between the two reads
        (they are not one snapshot) is read again, so an entry of the result
        can be a newer row, a tombstone or None. A vector missing or not
        matching its row's digest is ``CorruptData``.
        """
        out = list(rows)
        todo = [i for i, r in enumerate(out) if r is not None and r.vector_pending]
        if not todo:
            return out
        todo.sort(key=keys.__getitem__)  # a multi-get in key order is markedly faster
        for i, raw in zip(todo, self.multi_get("vectors", [keys[i] for i in todo]), strict=True):
            row = out[i]
            assert row is not None
            if raw is not None and vector_digest(raw) == row.vector_digest:
                row.vector, row.vector_digest = raw, None
            else:
                out[i] = self._reread_with_vector(keys[i], row)
        return out

    def _reread_with_vector(self, key: bytes, seen: RecordRow) -> RecordRow | None:
        for _ in range(_REREAD_ATTEMPTS):
            raw = self.get("records", key)
            row = None if raw is None else decode_record(raw)
            if row is None or not row.vector_pending:
                return row
            vec = self.get("vectors", key)
            if vec is not None and vector_digest(vec) == row.vector_digest:
                row.vector, row.vector_digest = vec, None
                return row
            if row.version == seen.version:
                # Row and vector are written in one batch: the same row twice
                # with a vector that does not match it is damage, not a race.
                raise CorruptData(
                    f"the stored vector of record {keyspace.record_id_of(key)!r} is "
                    f"{'missing' if vec is None else 'not the one its row names'}. Its other fields are intact: "
                    "read it without its vector (leave 'vector' out of include) and upsert it again with the "
                    "right vector, or delete it"
                )
            seen = row
        raise FailedPrecondition(
            f"record {keyspace.record_id_of(key)!r} changed {_REREAD_ATTEMPTS} times while it was read; retry",
            code="conflict",
        )

    def iter_prefix(
        self, cf: str, prefix: bytes, start: bytes | None = None
    ) -> Generator[tuple[bytes, bytes], None, None]:
        """Rows whose key starts with ``prefix``, from ``start`` (inclusive) on.

        Uses seek + prefix check (rocksdict's lower-bound option is unreliable)
        and always deletes the iterator so the DB can be closed.
        """
        with self.iterator(cf, start if start is not None and start > prefix else prefix) as it:
            while it.valid():
                k = it.key()
                if not k.startswith(prefix):
                    return
                yield k, it.value()
                it.next()
            # An iterator also stops being valid on a read error (e.g. a
            # damaged block): that must not look like the end of the data.
            check_iterator(it)

    @contextlib.contextmanager
    def iterator(self, cf: str, start: bytes | None = None) -> Iterator[Cursor]:
        """A :class:`Cursor` positioned at ``start`` (or the first key), usable inside the block only."""
        with self._gate.shared():
            opts = self._iter_opts.get(cf)
            cur = Cursor(self.cf[cf].iter() if opts is None else self.cf[cf].iter(opts))
            try:
                if start is None:
                    cur.seek_to_first()
                else:
                    cur.seek(start)
                yield cur
            finally:
                cur._drop()

    def last_key(self, cf: str) -> bytes | None:
        with self.iterator(cf) as it:
            it.seek_to_last()
            return it.key() if it.valid() else None

    def first_key(self, cf: str) -> bytes | None:
        with self.iterator(cf) as it:
            return it.key() if it.valid() else None

    def estimate_keys(self) -> int:
        """RocksDB's estimate of the number of keys (default column family)."""
        with self._gate.shared():
            return int(self.db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def newest_version(self) -> tuple[int, int] | None:
        """Version of the row the newest changelog entry names (seeds the clock at open)."""
        k = self.last_key("changes")
        if k is None:
            return None
        ref = self.get("changes", k)
        if not ref:
            return None
        try:
            kind, key, _ = keyspace.parse_change(ref)
        except CorruptData:
            return None
        cf = "records" if kind == keyspace.CHANGE_RECORD else "edges_out"
        raw = self.get(cf, key)
        if raw is None:
            return None
        try:
            return decode_version(raw)
        except CorruptData:
            return None

    def _last_seq(self) -> int:
        k = self.last_key("changes")
        return keyspace.parse_seq(k) if k else 0

    @property
    def seq(self) -> int:
        """The newest changelog sequence number committed."""
        return self._seq

    # ----------------------------------------------------------------- writes
    def subscribe(self, prefix: bytes, listener: ChangeListener) -> None:
        """Hand the committed changes of the collection ``prefix`` to ``listener`` from now on (replacing any)."""
        self._listeners[prefix] = listener

    def unsubscribe(self, prefix: bytes) -> None:
        self._listeners.pop(prefix, None)

    def apply(self, mutations: list[Mutation]) -> list[Change]:
        """Apply mutations durably (LWW by version); returns once they are on disk."""
        return self.wait(self.apply_async(mutations))

    def apply_async(self, mutations: list[Mutation]) -> Future[list[Change]]:
        fut: Future[list[Change]] = Future()
        self._enqueue(_Item(mutations, fut))
        return fut

    def drop_prefix(self, prefix: bytes) -> None:
        """Refuse every mutation of the collection ``prefix`` from now on (it is being dropped).

        Goes through the writer's queue: once this returns, every write queued
        before it is committed (so deleting the collection's rows afterwards
        removes them) and every later one fails with ``collection_not_found``
        and writes nothing. Without this, a write that passed its collection's
        open check before the drop would land after the rows were deleted and
        erased, and stay on disk for good.
        """
        fut: Future[list[Change]] = Future()
        self._enqueue(_Item([], fut, drop=prefix))
        self.wait(fut)

    def purge(self, items: list[tuple[bytes, bytes]]) -> None:
        """Physically remove rows named by ttl keys if they still hold ``expected`` bytes."""
        fut: Future[list[Change]] = Future()
        self._enqueue(_Item([], fut, purge=items))
        self.wait(fut)

    def _enqueue(self, item: _Item) -> None:
        # Under the lock that _die takes: an item is either queued before the
        # queue is emptied for good, or refused.
        with self._fatal_lock:
            if self._closed:
                raise Closed("the database is closed")
            if self._fatal is not None:
                raise self._unavailable()
            self._q.put(item)

    def _unavailable(self) -> Unavailable:
        return Unavailable(
            f"storage is unavailable: {self._fatal}; nothing was written. "
            "The server must be restarted (acknowledged writes are safe; the indexes catch up on restart)",
            code="storage_unavailable",
        )

    def wait(self, fut: Future[list[Change]]) -> list[Change]:
        """The result of a future of :meth:`apply_async`, failing instead of waiting on a thread that is gone."""
        while True:
            try:
                return fut.result(timeout=_WAIT_CHECK_SECONDS)
            except TimeoutError:
                if fut.done():
                    continue
            if (self._abandoned or not self._writer.is_alive()) and not fut.done():
                # The writer resolves every future it took before it exits
                # (see _thread_main), so a dead one is a last resort; a close
                # that gave up on a stuck thread is not.
                raise Unavailable(
                    "storage is unavailable: the thread that completes writes is gone; the write may or may not "
                    "have been stored. Restart the server and read the record back before retrying",
                    code="storage_unavailable",
                )

    def committed_seq(self, prefix: bytes) -> int:
        """The changelog sequence of the collection ``prefix``'s latest record change acknowledged so far (0: none).

        A read of that collection's indexes that must see every write
        acknowledged before it started waits until they hold this sequence
        (:meth:`wait_notified`).
        """
        return self.last_change_seq.get(prefix, 0)

    def wait_notified(self, seq: int, done: Callable[[], bool] | None = None, timeout: float | None = None) -> bool:
        """Wait until every change up to ``seq`` was handed to the indexes, or ``done()`` is true.

        Returns False if ``timeout`` seconds passed first. Raises
        ``Unavailable`` if that can no longer happen: the notifier thread is
        gone, or a close gave up on it. Called from the notifier itself (a
        listener reading its own indexes) it returns at once.
        """
        if self.notified_seq >= seq or (done is not None and done()):
            return True
        if threading.current_thread() is self._notifier:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._indexed:
            while self.notified_seq < seq and not (done is not None and done()):
                if self._closed and not self._abandoned and not self._notifier.is_alive():
                    raise Closed("the database is closed")
                if self._abandoned or not self._notifier.is_alive():
                    raise Unavailable(
                        f"the indexes are unavailable: {self._fatal or 'the index update thread is stuck'}; "
                        "acknowledged writes are stored and the indexes catch up from the changelog on restart",
                        code="index_unavailable",
                    )
                left = _WAIT_CHECK_SECONDS
                if deadline is not None:
                    left = min(left, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._indexed.wait(left)
        return True

    def problem(self) -> str | None:
        """Why writes cannot complete (None: they can): a vital thread is gone, or index updates stall."""
        if self._fatal is not None:
            return f"storage is unavailable: {self._fatal}"
        if not self._closed and not (self._writer.is_alive() and self._notifier.is_alive()):
            return "storage is unavailable: a storage thread is gone"
        since = self._notifying_since
        if since is not None and time.monotonic() - since > _NOTIFY_STALL_SECONDS:
            return f"index updates have been stalled for {time.monotonic() - since:.0f} s; writes wait for them"
        return None

    @property
    def fatal(self) -> str | None:
        """Why no write can complete any more (None while they can); only a restart helps."""
        return self._fatal

    def _thread_main(self, name: str, run: Callable[[], None]) -> None:
        """Run a storage thread; if it ends other than by close(), fail everything it would have finished."""
        try:
            run()
        except BaseException as e:
            log.critical("the storage %s thread died: %r; no write can complete until a restart", name, e)
            self._die(f"the {name} thread died ({type(e).__name__}: {e})")
            raise
        if not self._closed:
            self._die(f"the {name} thread stopped")

    def _die(self, reason: str) -> None:
        """Refuse every further write and fail every write that was waiting."""
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = reason
        refused = self._unavailable()
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _fail(item.future, refused)
        # Committed writes still queued for the notifier: it hands them to the
        # indexes unless it is the thread that is gone (or stuck).
        if self._abandoned or threading.current_thread() is self._notifier or not self._notifier.is_alive():
            self._fail_done_q()
        with self._indexed:  # wake readers and the writer waiting on the indexes: they re-check
            self._indexed.notify_all()

    def _fail_done_q(self) -> None:
        """Drop committed writes that no thread will hand to the indexes any more (the changelog keeps them).

        Their callers were acknowledged when they were committed; a future
        still unresolved (none is, normally) is failed rather than left hanging.
        """
        while True:
            try:
                got = self._done_q.get_nowait()
            except queue.Empty:
                return
            if got is not None:
                for item, _, exc in got[0]:
                    _fail(item.future, exc if exc is not None else self._not_indexed(self._fatal or "closing"))

    @staticmethod
    def _not_indexed(why: str) -> Unavailable:
        return Unavailable(
            f"the write is stored durably, but the indexes could not be updated ({why}); searches may miss it "
            "until the server restarts and the indexes catch up from the changelog",
            code="index_unavailable",
        )

    def write_meta(self, puts: dict[bytes, bytes], deletes: list[bytes] | tuple[bytes, ...] = ()) -> None:
        """Durable write of metadata rows (collections, tenants, keys, watermarks)."""

        def fill(wb: WriteBatch) -> None:
            h = self.handle["meta"]
            for k, v in puts.items():
                wb.put(k, v, h)
            for k in deletes:
                wb.delete(k, h)

        self._write_direct(fill)

    def write_rows(self, cf: str, puts: dict[bytes, bytes], deletes: Sequence[bytes] = ()) -> None:
        """Durable write of rows that no version check guards (erase marks, blanked changelog entries)."""
        if not puts and not deletes:
            return

        def fill(wb: WriteBatch) -> None:
            h = self.handle[cf]
            for k, v in puts.items():
                wb.put(k, v, h)
            for k in deletes:
                wb.delete(k, h)

        self._write_direct(fill)

    def delete_range(self, cf: str, start: bytes, end: bytes) -> None:
        """Remove a whole key range (collection drop, changelog trim)."""
        self._write_direct(lambda wb: wb.delete_range(start, end, self.handle[cf]))

    def _write_direct(self, fill: Callable[[WriteBatch], None]) -> None:
        """Write a batch that needs no version check, from the calling thread."""
        self._recover_if_due()
        try:
            with self._gate.shared():
                wb = WriteBatch(raw_mode=True)
                fill(wb)
                self.db.write(wb, self._wopts)
        except Exception as e:
            raise self._write_failed(e) from e

    def _write_failed(self, e: BaseException) -> EngramError:
        if _is_no_space(e):
            self._no_space = True
        return _map_write_error(e)

    def _recover_if_due(self) -> None:
        """After a disk-full error, reopen the database once space is free again.

        RocksDB keeps refusing writes after a failed WAL append until it is
        reopened; without a reopen the node would need a restart. The reopen
        waits (briefly) for every reader and iterator to let go of the handle
        and is tried at most once a second; writes keep failing with
        StorageFull until it succeeds.
        """
        if not self._no_space or time.monotonic() < self._next_recovery:
            return
        with self._recover_lock:
            if not self._no_space or time.monotonic() < self._next_recovery:
                return
            self._next_recovery = time.monotonic() + 1.0
            try:
                st = os.statvfs(self.path)
            except OSError:
                return
            if st.f_bavail * st.f_frsize < self.recovery_free_bytes:
                return
            with self._gate.exclusive(timeout=1.0) as won:
                if not won:
                    return
                self.cf.clear()
                self.handle.clear()
                try:
                    self.db.close()
                except Exception:
                    log.warning("closing the database after a disk-full error failed", exc_info=True)
                del self.db
                # If this open fails, the next attempt opens again; reads
                # fail (as unavailable) in between, writes with StorageFull.
                self._open()
                self._no_space = False
                self.recoveries += 1
            log.warning("storage recovered from a full disk: writes are accepted again")

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            # Callers arriving meanwhile join this batch: a lagging index makes commits bigger, not more.
            self._wait_index_lag()
            batch = [item]
            n = len(item.mutations)
            while n < _MAX_BATCH_MUTATIONS:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._commit(batch)
                    return
                batch.append(nxt)
                n += len(nxt.mutations)
            self._commit(batch)

    def _wait_index_lag(self) -> None:
        """Hold the next commit while the indexes lag ``_MAX_INDEX_LAG`` batches behind."""
        if self._unindexed < _MAX_INDEX_LAG:
            return
        with self._indexed:
            while self._unindexed >= _MAX_INDEX_LAG and self._fatal is None and not self._abandoned:
                if not self._notifier.is_alive():
                    return  # _commit finds the store fatal and refuses the batch
                self._indexed.wait(_WAIT_CHECK_SECONDS)

    def _current(self, overlay: dict[bytes, RecordRow | EdgeRow | None], m: Mutation) -> RecordRow | EdgeRow | None:
        if m.key in overlay:
            return overlay[m.key]
        if m.kind == keyspace.CHANGE_RECORD:
            raw = self.cf["records"].get(m.key)
            return None if raw is None else decode_record(raw)
        raw = self.cf["edges_out"].get(m.key)
        return None if raw is None else decode_edge(raw)

    def _commit(self, batch: list[_Item]) -> None:
        if self._fatal is not None:
            # Taken from the queue before _die emptied it: nothing is written for these.
            for item in batch:
                _fail(item.future, self._unavailable())
            return
        try:
            self._recover_if_due()
        except EngramError as e:
            log.warning("reopening the database after a full disk failed (%s); will retry", e.message)
        try:
            # Shared for the whole batch: its version checks read the handle
            # a reopen would replace.
            with self._gate.shared():
                results, seq = self._write_batch(batch)
        except BaseException as e:
            # A Rust panic of the binding is a failed write too; anything else
            # (SystemExit, ...) still fails these callers before it ends the thread.
            err: BaseException = e
            if is_failure(e):
                err = e if isinstance(e, EngramError) else self._write_failed(e)
            for item in batch:
                _fail(item.future, err)
            if not is_failure(e):
                raise
            return
        committed = self.last_change_seq
        for _, changes, _ in results:
            for c in changes or ():
                if c.applied and c.mutation.kind == keyspace.CHANGE_RECORD:  # what the indexes apply
                    committed[c.mutation.prefix] = c.seq
        self._seq = seq
        self.commits += 1
        # The indexes are updated by the notifier thread, in commit order,
        # while this thread acknowledges these writes and already decides and
        # fsyncs the next batch: index work and fsync overlap instead of
        # adding up. Reads of the indexes wait for them (wait_notified).
        with self._fatal_lock:
            queued = self._fatal is None
            if queued:
                with self._indexed:
                    self._unindexed += 1
                self._done_q.put((results, seq))
        for item, done, exc in results:
            if exc is not None:
                _fail(item.future, exc)
            elif not queued:
                _fail(item.future, self._not_indexed(self._fatal or "closing"))
            elif not item.future.done():
                item.future.set_result(done or [])

    def _run_notifier(self) -> None:
        while True:
            got = self._done_q.get()
            if got is None:
                return
            results, seq = got
            self._notifying_since = time.monotonic()
            try:
                # A listener's failure is contained (and reported by it); anything
                # else raised here ends this thread loudly, see _thread_main.
                self._notify(results)
            finally:
                self._notifying_since = None
            with self._indexed:
                self.notified_seq = seq
                self._unindexed -= 1
                self._indexed.notify_all()

    def _write_batch(
        self, batch: list[_Item]
    ) -> tuple[list[tuple[_Item, list[Change] | None, BaseException | None]], int]:
        """Decide every mutation of ``batch`` against the stored versions and write the result atomically."""
        wb = WriteBatch(raw_mode=True)
        h = self.handle
        grace_ms = self.grace_ms()
        erase = self.erase_within_seconds > 0
        overlay: dict[bytes, RecordRow | EdgeRow | None] = {}
        results: list[tuple[_Item, list[Change] | None, BaseException | None]] = []
        seq = self._seq
        for item in batch:
            ops: list[tuple[str, str, bytes, bytes | None]] = []  # (op, cf, key, value)
            changes: list[Change] = []
            local: dict[bytes, RecordRow | EdgeRow | None] = {}
            seq_before = seq
            if item.drop is not None:
                self._dropped.add(item.drop)
                results.append((item, [], None))
                continue
            if self._dropped and any(m.prefix in self._dropped for m in item.mutations):
                results.append(
                    (
                        item,
                        None,
                        NotFound(
                            "the collection was deleted while this write was in progress; nothing was written",
                            code="collection_not_found",
                        ),
                    )
                )
                continue
            try:
                for ttl_k, expected in item.purge:
                    _, kind, key = keyspace.parse_ttl_key(ttl_k)
                    cf = "records" if kind == keyspace.TTL_PURGE_RECORD else "edges_out"
                    cur = self.cf[cf].get(key)
                    queued = self.cf["ttl"].get(ttl_k) is not None
                    ops.append(("del", "ttl", ttl_k, None))
                    # Only a tombstone is purged: the sweeper read ``expected`` after its queue
                    # entry, and a re-upsert in between removed that entry and made the row live
                    # again (purging it lost an acknowledged write).
                    if (
                        queued
                        and cur is not None
                        and bytes(cur) == expected
                        and key not in overlay
                        and _is_tombstone(kind, bytes(cur))
                    ):
                        ops.append(("del", cf, key, None))
                        if kind == keyspace.TTL_PURGE_EDGE:
                            a, rel, b = keyspace.parse_edge_key(key)
                            ops.append(("del", "edges_in", keyspace.edge_in_key(key[:8], a, rel, b), None))
                for m in item.mutations:
                    old = local[m.key] if m.key in local else self._current(overlay, m)
                    old_v = old.version if old is not None else (0, 0)
                    new = m.row
                    if m.if_version is not None and old_v != m.if_version:
                        changes.append(Change(m, old, False))
                        continue
                    if new.version <= old_v:
                        changes.append(Change(m, old, False))
                        continue
                    seq += 1
                    local[m.key] = new
                    changes.append(Change(m, old, True, seq))
                    if m.kind == keyspace.CHANGE_RECORD:
                        assert isinstance(new, RecordRow)
                        prior = self._replaced_vector(m.key, old, new)
                        ops.append(
                            ("put", "changes", keyspace.seq_key(seq), keyspace.change_entry(m.kind, m.key, prior))
                        )
                        if isinstance(old, RecordRow) and not old.deleted and not new.deleted:
                            # Replacing a live record keeps its creation time.
                            new.created_at = old.created_at
                        ops.append(("put", "records", m.key, encode_record(new)))
                        self._record_derived(ops, m, old, new, grace_ms)
                    else:
                        assert isinstance(new, EdgeRow) and m.in_key is not None
                        ops.append(("put", "changes", keyspace.seq_key(seq), keyspace.change_entry(m.kind, m.key)))
                        val = encode_edge(new)
                        ops.append(("put", "edges_out", m.key, val))
                        ops.append(("put", "edges_in", m.in_key, val))
                        if old is not None and old.deleted:
                            ops.append(
                                (
                                    "del",
                                    "ttl",
                                    keyspace.ttl_key(
                                        int(old.updated_at * 1000) + grace_ms, keyspace.TTL_PURGE_EDGE, m.key
                                    ),
                                    None,
                                )
                            )
                        if new.deleted:
                            ops.append(
                                (
                                    "put",
                                    "ttl",
                                    keyspace.ttl_key(
                                        int(new.updated_at * 1000) + grace_ms, keyspace.TTL_PURGE_EDGE, m.key
                                    ),
                                    b"",
                                )
                            )
                            if erase:
                                ops.append(self._erase_mark(m.prefix, new.updated_at, grace_ms))
            except BaseException as e:  # a corrupt old row fails only its own caller
                results.append((item, None, e))
                seq = seq_before
                continue
            for op, cf, key, value in ops:
                if op == "put":
                    wb.put(key, value or b"", h[cf])
                else:
                    wb.delete(key, h[cf])
            overlay.update(local)
            results.append((item, changes, None))
        try:
            self.db.write(wb, self._wopts)
        except Exception as e:
            raise self._write_failed(e) from e
        return results, seq

    def _replaced_vector(self, key: bytes, old: Any, new: RecordRow) -> bytes | None:
        """The vector a record change replaces or deletes, for its changelog entry (None: it keeps it).

        An index snapshot holds the graph without the live vectors; loading it takes each node's
        vector from the "vectors" column family, except for records changed after the snapshot,
        whose vector as of the snapshot is the one the first such change replaced.
        """
        if not isinstance(old, RecordRow) or old.deleted or not old.has_vector:
            return None
        if not new.deleted and new.has_vector and new.digest() == old.digest():
            return None
        if old.vector is not None:  # read with the row (written earlier in this batch, or format 1)
            return bytes(old.vector)
        raw = self.cf["vectors"].get(key)
        return None if raw is None else bytes(raw)

    def _record_derived(
        self, ops: list[tuple[str, str, bytes, bytes | None]], m: Mutation, old: Any, new: RecordRow, grace_ms: int
    ) -> None:
        """TTL queue and namespace index rows that follow a record write."""
        rid = keyspace.record_id_of(m.key)
        if old is not None:
            if old.deleted:
                ops.append(
                    (
                        "del",
                        "ttl",
                        keyspace.ttl_key(int(old.updated_at * 1000) + grace_ms, keyspace.TTL_PURGE_RECORD, m.key),
                        None,
                    )
                )
            else:
                if old.expires_at is not None:
                    ops.append(
                        ("del", "ttl", keyspace.ttl_key(int(old.expires_at * 1000), keyspace.TTL_EXPIRE, m.key), None)
                    )
                if old.namespace:
                    ops.append(("del", "meta", keyspace.ns_key(m.prefix, old.namespace, rid), None))
        if new.deleted or new.vector is None:
            ops.append(("del", "vectors", m.key, None))
        else:
            ops.append(("put", "vectors", m.key, new.vector))
        if new.deleted:
            ops.append(
                (
                    "put",
                    "ttl",
                    keyspace.ttl_key(int(new.updated_at * 1000) + grace_ms, keyspace.TTL_PURGE_RECORD, m.key),
                    b"",
                )
            )
            if self.erase_within_seconds > 0:
                ops.append(self._erase_mark(m.prefix, new.updated_at, grace_ms))
        else:
            if new.expires_at is not None:
                ops.append(
                    ("put", "ttl", keyspace.ttl_key(int(new.expires_at * 1000), keyspace.TTL_EXPIRE, m.key), b"")
                )
            if new.namespace:
                ops.append(("put", "meta", keyspace.ns_key(m.prefix, new.namespace, rid), b""))

    def grace_ms(self) -> int:
        """How long tombstones are kept, in ms: the grace period, capped at half the erase bound.

        A tombstone's key is the record id (or the edge's ids), which may be
        personal data too, so with an erase bound it is purged within half of it
        and the erase pass (due at the same moment) removes it from the files
        in the other half. On one node nothing needs a tombstone longer: the
        clock never hands out a version older than one already written. A
        cluster replica keeps them at least ``keep_tombstones_seconds``
        (``cluster.gc_grace_seconds``) whatever the erase bound: a replica that
        missed the delete still holds the record, and without the tombstone a
        read would bring it back.
        """
        grace = self.tombstone_grace_seconds
        if self.erase_within_seconds > 0:
            grace = min(grace, self.erase_within_seconds / 2)
        return int(max(grace, self.keep_tombstones_seconds) * 1000)

    @staticmethod
    def _erase_mark(prefix: bytes, deleted_at: float, grace_ms: int) -> tuple[str, str, bytes, bytes | None]:
        # Ordered after the TTL_PURGE_* rows of the same moment: the pass finds the tombstones purged.
        return ("put", "ttl", keyspace.ttl_key(int(deleted_at * 1000) + grace_ms, keyspace.TTL_ERASE, prefix), b"")

    def _notify(self, results: list[tuple[_Item, list[Change] | None, BaseException | None]]) -> dict[bytes, str]:
        """Hand the applied changes to their collections' listeners; returns why it failed, by collection prefix."""
        failed: dict[bytes, str] = {}
        by_prefix: dict[bytes, list[Change]] = {}
        for _, changes, _ in results:
            for c in changes or ():
                if c.applied:
                    by_prefix.setdefault(c.mutation.prefix, []).append(c)
        for prefix, changes in by_prefix.items():
            listener = self._listeners.get(prefix)
            if listener is None:
                continue
            try:
                listener.apply_committed(changes)
            except BaseException as e:
                if not is_failure(e):
                    raise
                # The write is durable; a failed index update is repaired by
                # replaying the changelog when the index is next loaded. This
                # thread must go on: every write of every collection waits for it.
                log.exception("index update failed for collection prefix %s", prefix.hex())
                failed[prefix] = f"{type(e).__name__}: {e}"
        return failed

    # -------------------------------------------------------------- lifecycle
    def flush(self, min_bytes: int = 0) -> int:
        """Write every column family's memtable of at least ``min_bytes`` to disk; returns the bytes flushed.

        The data is durable either way (the write-ahead log); flushing frees
        the memtables' memory and shortens the log replay after a crash.
        """
        flushed = 0
        with self._gate.shared():
            for cf in self.cf.values():
                size = int(cf.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
                if size and size >= min_bytes:
                    cf.flush(True)
                    flushed += size
        return flushed

    def checkpoint(self, path: str | os.PathLike[str]) -> None:
        """A RocksDB checkpoint of the whole database at ``path`` (which must not exist): one consistent point.

        Every write committed before the call is in it, none is half in it (a
        ``WriteBatch`` is atomic). On the same file system the table files are
        hard links, so this takes milliseconds whatever the size; the caller
        copies them out (engine/backup.py).
        """
        from rocksdict import Checkpoint

        # Shared: a reopen after a full disk must not swap the handle under the checkpoint.
        with self._gate.shared():
            if self._closed:
                raise Closed("the database is closed")
            try:
                Checkpoint(self.db).create_checkpoint(str(path))
            except Exception as e:
                raise self._write_failed(e) from e

    def engine_stats(self) -> EngineStats:
        """RocksDB's own gauges and counters, for metrics (cheap: property reads and one directory listing)."""
        out = EngineStats()
        with self._gate.shared():
            if self._closed:
                return out
            db = self.db
            out.delayed_write_rate = int(db.property_int_value("rocksdb.actual-delayed-write-rate") or 0)
            out.write_stopped = bool(db.property_int_value("rocksdb.is-write-stopped") or 0)
            out.block_cache_usage = self._block_cache.get_usage()
            out.block_cache_pinned = self._block_cache.get_pinned_usage()
            out.block_cache_capacity = int(db.property_int_value("rocksdb.block-cache-capacity") or 0)
            out.stall_seconds = _cumulative_stall(db.property_value("rocksdb.dbstats") or "")
            for name, cf in self.cf.items():
                c = CfStats()
                c.pending_compaction_bytes = int(
                    cf.property_int_value("rocksdb.estimate-pending-compaction-bytes") or 0
                )
                c.memtable_bytes = int(cf.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
                c.sst_bytes = int(cf.property_int_value("rocksdb.live-sst-files-size") or 0)
                c.table_readers_bytes = int(cf.property_int_value("rocksdb.estimate-table-readers-mem") or 0)
                c.files_per_level = [
                    int(cf.property_int_value(f"rocksdb.num-files-at-level{n}") or 0) for n in range(_LEVELS)
                ]
                c.estimated_keys = int(cf.property_int_value("rocksdb.estimate-num-keys") or 0)
                c.stalls = _stall_counts(cf.property_value("rocksdb.cf-write-stall-stats") or "")
                out.column_families[name] = c
            if self.statistics:
                text = self._opts.get_statistics() or ""
                out.tickers = {k: v for k, v in _tickers(text).items() if k in _TICKERS}
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    try:
                        if entry.name.endswith(".log") and entry.is_file():
                            out.wal_bytes += entry.stat().st_size
                    except FileNotFoundError:
                        continue  # a WAL RocksDB recycled between the listing and this stat
        except OSError:
            pass
        return out

    def erase_files(self, ranges: Sequence[tuple[str, bytes | None, bytes | None]], timeout: float = 30.0) -> None:
        """Remove every trace of deleted rows in ``ranges`` from the files: the last step of an erase.

        ``ranges`` are ``(column family, start, end)`` (None: open end). Deleted
        or overwritten values stay in SST files until a compaction drops them,
        in the write-ahead log until the memtables holding them are flushed,
        and a deleted key may bound an SST file in the MANIFEST. So: flush
        every column family (the old logs become obsolete and RocksDB deletes
        them), compact each range down through the bottom level, then reopen
        the handle, which writes a fresh MANIFEST and deletes the old one.
        Raises ``Unavailable`` if readers hold the handle for ``timeout``
        seconds (the caller retries later).
        """
        from rocksdict import BottommostLevelCompaction, CompactOptions

        opts = CompactOptions()
        # Also rewrite the bottom level, where a range tombstone may still cover old values.
        opts.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        opts.set_exclusive_manual_compaction(False)
        try:
            self._flush_and_compact(ranges, opts)
        except Exception as e:
            raise self._write_failed(e) from e
        if not self.reopen(timeout):
            raise Unavailable(
                "erasing deleted data: the database handle could not be reopened because reads held it for "
                f"{timeout:.0f} s; the erase is retried",
                code="erase_incomplete",
            )

    def _flush_and_compact(self, ranges: Sequence[tuple[str, bytes | None, bytes | None]], opts: Any) -> None:
        # A function of its own: a column family object left in a caller's frame would keep the LOCK held on reopen.
        with self._gate.shared():
            for cf in self.cf.values():
                cf.flush(True)
            self.db.flush(True)  # the unused default family must not pin an old log
            for name, start, end in ranges:
                self.cf[name].compact_range(start, end, opts)

    def reopen(self, timeout: float) -> bool:
        """Close and open the RocksDB handle once no reader holds it (False: not within ``timeout`` seconds)."""
        with self._recover_lock, self._gate.exclusive(timeout=timeout) as won:
            if not won:
                return False
            self.cf.clear()
            self.handle.clear()
            self.db.close()
            del self.db
            self._open()
            return True

    def memtable_bytes(self) -> int:
        """Memory held by the memtables of every column family."""
        with self._gate.shared():
            return sum(int(cf.property_int_value("rocksdb.cur-size-all-mem-tables") or 0) for cf in self.cf.values())

    def close(self, timeout: float | None = None) -> bool:
        """Finish the queued writes and close the database; False if that did not happen within ``timeout``.

        A writer or notifier thread still busy after ``timeout`` seconds (hung
        on a lock, say) is left behind with the database open: closing the
        handle under it would be unsafe. Every caller still waiting is failed
        instead, and the process can exit; the writes it acknowledged are in
        the write-ahead log.
        """
        with self._fatal_lock, self._close_lock:
            if self._closed:
                return True
            self._closed = True
            self._q.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        self._writer.join(left())
        if self._writer.is_alive():
            log.error("the storage writer thread did not finish within the shutdown timeout; not closing RocksDB")
            self._abandoned = True
            self._die("the database was closed while the writer thread was stuck")
            return False
        self._done_q.put(None)
        self._notifier.join(left())
        if self._notifier.is_alive():
            log.error("the index update thread did not finish within the shutdown timeout; not closing RocksDB")
            self._abandoned = True
            self._die("the database was closed while index updates were stuck")
            return False
        # Left by a notifier that died before the writer's last batches.
        self._fail_done_q()
        # Column-family objects keep RocksDB's LOCK held until they are gone.
        self.cf.clear()
        self.handle.clear()
        self.db.close()
        return True

    @property
    def closed(self) -> bool:
        return self._closed
