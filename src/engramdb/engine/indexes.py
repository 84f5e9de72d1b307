"""The indexes of one collection: loading, change application, snapshots and watermarks.

A collection's records live in storage; its vector, payload and text indexes are derived from them
and kept here. :class:`CollectionIndexes` loads them from their last snapshot (or rebuilds them
from the records) and replays the changelog after it, applies every committed change the writer
hands it (it is the collection's :class:`~engramdb.storage.store.ChangeListener`), writes
snapshots (in a forked child when asked) and moves the changelog watermark, and answers the
reads search needs (filter candidates, stored vectors, liveness).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
from pyroaring import BitMap

from engramdb.engine import timings
from engramdb.engine.budget import Deadline
from engramdb.errors import Closed, CorruptData, EngramError, Unavailable, is_failure
from engramdb.filters import Filter, json_equal
from engramdb.index.payload import PayloadIndex
from engramdb.index.vector import VectorIndex, remove_snapshot
from engramdb.storage import keyspace
from engramdb.storage.codec import RecordRow, decode_record
from engramdb.storage.store import Change, Store, check_iterator
from engramdb.types import CollectionConfig

if TYPE_CHECKING:
    from engramdb.index.text import TextIndex

# The logger of the collection these indexes belong to: operators filter on it.
log = logging.getLogger("engramdb.collection")

_CAND_CACHE_ENTRIES = 256
_CAND_CACHE_BYTES = 32 << 20
# Payload index sizes walk every posting list: computed again at most this often per collection, and only
# after a change (payload_bytes).
PAYLOAD_BYTES_TTL = 10.0
# Records read per step of building an added field's payload index (the index lock is held for one step).
REINDEX_CHUNK = 1000
# How long a snapshot (or a close) waits for the notifier to apply the collection's acknowledged
# changes (and a close for the one being applied); past it they are left to the changelog replay.
_CLOSE_CATCH_UP_SECONDS = 30.0


def _vector_of(row: RecordRow) -> np.ndarray:
    """A row's vector for the index: it must have been read with the row, never guessed."""
    if row.vector is None:
        raise RuntimeError("internal error: a record row reached the vector index without its vector")
    return np.frombuffer(row.vector, dtype=np.float32)


class Candidates:
    """A filter's candidate labels, and whether they need no check against stored rows."""

    __slots__ = ("_array", "exact", "labels")

    def __init__(self, labels: BitMap, exact: bool):
        self.labels = labels
        self.exact = exact
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """The labels as a sorted uint32 array (built on first use; graph walks never need it)."""
        if self._array is None:
            self._array = np.frombuffer(self.labels.to_array(), dtype=np.uint32)
        return self._array


class CollectionIndexes:
    """The vector, payload and text indexes of one collection, kept in step with its records.

    Owned by :class:`~engramdb.engine.collection.Collection`; thread-safe. Loaded lazily by the
    first query (:meth:`load`); until then every accessor loads them.
    """

    def __init__(
        self,
        store: Store,
        tenant: str,
        config: CollectionConfig,
        prefix: bytes,
        index_dir: Path,
        *,
        text_refresh_seconds: float = 0.2,
        snapshot_vectors: bool = False,
    ):
        self.store = store
        self.tenant = tenant
        self.config = config
        self.prefix = prefix
        self.index_dir = index_dir
        self.text_refresh_seconds = text_refresh_seconds
        self.snapshot_vectors = snapshot_vectors  # see IndexSettings.snapshot_vectors
        self._vindex: VectorIndex | None = None
        self._payload: PayloadIndex | None = None
        self._text: TextIndex | None = None
        self._load_lock = threading.Lock()
        self._index_lock = threading.RLock()
        # One snapshot (or watermark move) of this collection at a time: a
        # snapshot written by a child process runs outside the index lock.
        self._snapshot_lock = threading.Lock()
        self._applied_seq = 0
        self._exact_from = 0  # see load and snapshot
        self._dirty = 0
        self._closed = False
        # Bumped after every change the indexes apply: cached filter
        # candidates are valid only for the generation they were built in.
        self._generation = 0
        self._cand_cache: dict[str, tuple[int, Candidates]] = {}
        self._cand_cache_bytes = 0
        # (index, generation, when, bytes) of the last payload_bytes walk
        self._payload_nbytes: tuple[PayloadIndex, int, float, int] | None = None
        self.load_progress: tuple[int, int] = (0, 0)  # (done, total) while (re)building
        self._pending_scan: tuple[int, bool] | None = None  # see trim_mark
        self._index_error: str | None = None  # set when an index update failed; see problem()
        # Building the payload index of fields an alter added (see reindex_status).
        self._reindex: dict[str, Any] | None = None
        self._reindex_thread: threading.Thread | None = None
        self._reindex_stop = threading.Event()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dimension(self) -> int:
        return self.config.dimension

    @property
    def metric(self) -> str:
        return self.config.metric

    @property
    def closed(self) -> bool:
        return self._closed

    def _key(self, rid: str) -> bytes:
        return keyspace.record_key(self.prefix, rid)

    def _row_vectors(self, rids: list[str]) -> list[bytes | None]:
        """Vectors of records not found in the "vectors" column family (rows holding theirs inline; None: none)."""
        rows = self.store.get_records([self._key(r) for r in rids], vector=True)
        return [r.vector if r is not None and not r.deleted and r.vector else None for r in rows]

    # --------------------------------------------------------------- loading
    @property
    def loaded(self) -> bool:
        return self._vindex is not None

    def load(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Load (or rebuild) the indexes and catch up with the changelog.

        Called lazily by the first query; servers call it at start-up so that
        ``/ready`` reflects progress. ``progress(done, total)`` reports a rebuild.
        """
        if self._vindex is not None:
            return
        with self._load_lock:
            if self._vindex is not None:
                return
            if self._closed:
                raise Closed(f"collection {self.name!r} is closed")
            with self._index_lock:
                self._generation += 1  # nothing cached for earlier indexes may be served
                # Subscribe first: the notifier blocks on _index_lock until the
                # catch-up below is done, and re-applying a change is harmless.
                self.store.subscribe(self.prefix, self)
                vdir = self.index_dir
                p = self.config.index
                rebuild = False
                try:
                    vindex = VectorIndex.load(
                        vdir,
                        self.dimension,
                        self.metric,
                        p.m,
                        p.ef_construction,
                        p.ef_search,
                        # The snapshot holds the graph; the vectors are read back from storage.
                        vectors=lambda: self.store.iter_prefix("vectors", self.prefix),
                        fetch=self._row_vectors,
                        replaced=self._replaced_vectors,
                        key_prefix=self.prefix,
                    )
                    vindex.snapshot_vectors = self.snapshot_vectors
                    # Its fields may differ from the config's after an alter: _sync_fields reconciles them.
                    payload = PayloadIndex.from_bytes(vindex.extra)
                    watermark = vindex.watermark
                    self._check_watermark(watermark)
                except (CorruptData, OSError, ValueError) as e:
                    if not isinstance(e, CorruptData) or str(e) != "no vector index snapshot":
                        log.warning("index snapshot of %s/%s unusable (%s); rebuilding", self.tenant, self.name, e)
                    rebuild = True
                text, text_fresh = self._open_text()
                if text_fresh and not rebuild and text is not None:
                    # The vector snapshot is sound: only the text index needs
                    # rebuilding, with the snapshot's labels; the replay below
                    # then brings both up to date.
                    log.warning("text index of %s/%s is new or was reset; rebuilding it", self.tenant, self.name)
                    self._rebuild_text(vindex, text, progress)
                    self._vindex, self._payload, self._text = vindex, payload, text
                    self._applied_seq = self._replay(watermark)
                    self._exact_from = self.store.committed_seq(self.prefix)
                    self._commit_text()
                    self._sync_fields()
                    return
                if rebuild:
                    vindex, payload = self._new_indexes()
                    if text is not None:
                        text.clear()
                    # Taken before the scan: what changes while it reads is replayed after it.
                    watermark = self.store.seq
                    self._rebuild(vindex, payload, text, progress)
                else:
                    if text is not None:
                        # The text index commits in the background, so after a
                        # crash it may hold documents of labels this snapshot
                        # never assigned (replay will reuse those numbers), or
                        # lag behind the snapshot: drop the former, and replay
                        # from the older of the two watermarks.
                        text.delete_from(vindex.next_label)
                        watermark = min(watermark, text.watermark())
                self._vindex, self._payload, self._text = vindex, payload, text
                self._applied_seq = self._replay(watermark)
                # The scan and the replay read rows as they are now, possibly newer than
                # _applied_seq; once the notifier has applied what was committed by now,
                # the indexes are exactly the state at _applied_seq again (see snapshot).
                self._exact_from = self.store.committed_seq(self.prefix)
                if rebuild:
                    self._dirty = max(self._dirty, 1)
                self._commit_text()
                self._sync_fields()

    def _commit_text(self) -> None:
        """Make what loading fed the text index searchable before ``load`` returns.

        A rebuild or a changelog replay only buffers documents in tantivy's
        writer; left to the background refresh, text search would find
        nothing for a moment after ``/ready`` said 200. A failed commit is
        retried by the refresh thread and reported by :meth:`problem`
        meanwhile; the records themselves are stored either way.
        """
        if self._text is None:
            return
        try:
            self._text.flush()
        except EngramError as e:
            log.warning("text index of %s/%s: commit after loading failed (%s)", self.tenant, self.name, e.message)

    def problem(self) -> str | None:
        """Why this collection's indexes do not answer with current data (None: they do, or are not loaded)."""
        if self._closed or self._vindex is None:
            return None
        if self._index_error is not None:
            return self._index_error
        if self._text is not None:
            return self._text.problem()
        return None

    def _check_watermark(self, watermark: int) -> None:
        """A snapshot is only usable if the changelog can bring it up to date.

        It is not when it claims changes storage does not have (the WAL tail was
        lost with sync off), or when entries after it were already trimmed,
        unless those held no change of this collection (see :meth:`trim_mark`).
        """
        if watermark > self.store.seq:
            raise CorruptData(f"index snapshot is ahead of storage (seq {watermark} > {self.store.seq})")
        if watermark < self.store.seq:
            first = self.store.first_key("changes")
            covered = max(watermark, self._idle_through(watermark))
            if first is None or keyspace.parse_seq(first) > covered + 1:
                raise CorruptData("index snapshot is older than the retained changelog")

    # ------------------------------------------- changelog trimming while unloaded
    @property
    def _idle_key(self) -> bytes:
        return keyspace.idle_mark_key(self.prefix)

    def _idle_through(self, watermark: int) -> int:
        """The sequence up to which the changelog held no change of this collection after ``watermark``."""
        raw = self.store.get("meta", self._idle_key)
        if raw is None:
            return 0
        try:
            mark = msgpack.unpackb(raw)
            return int(mark["through"]) if int(mark["snapshot"]) == watermark else 0
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return 0  # unreadable: claim nothing (at worst the snapshot is rebuilt)

    def trim_mark(self) -> int | None:
        """The changelog sequence this unloaded collection still needs entries after (None: none at all).

        Its snapshot on disk needs the entries after its watermark, but only
        those of this collection: if there are none up to now, the snapshot is
        recorded as current through now (``_idle_through``), so trimming can
        go on without loading the indexes.
        """
        through = self.store.notified_seq  # first: every change up to it is in last_change_seq
        watermark = self._disk_watermark()
        if watermark is None or watermark > self.store.seq:
            return None  # no usable snapshot: loading rebuilds from the records
        base = max(watermark, self._idle_through(watermark))
        if base >= through or self.store.last_change_seq.get(self.prefix, 0) > base:
            return base
        if base < self.store.open_seq:
            if self._pending_scan is None or self._pending_scan[0] != base:
                # Once per process and snapshot: entries from before this process.
                self._pending_scan = (base, self._has_changes_between(base, self.store.open_seq))
            if self._pending_scan[1]:
                return base
        self.store.write_meta({self._idle_key: msgpack.packb({"snapshot": watermark, "through": through})})
        return through

    def _disk_watermark(self) -> int | None:
        try:
            watermark = VectorIndex.stored_watermark(self.index_dir)
        except (CorruptData, OSError, ValueError, KeyError, TypeError):
            return None
        if self.config.text_index:
            from engramdb.index.text import TextIndex

            watermark = min(watermark, TextIndex.stored_watermark(self.index_dir / "text"))
        return watermark

    def _own_record_change(self, entry: bytes) -> bytes | None:
        """The record key of a changelog entry that changed a record of this collection (what replay
        applies); None for any other entry."""
        own = self._own_change(entry)
        return None if own is None else own[0]

    def _own_change(self, entry: bytes) -> tuple[bytes, bytes | None] | None:
        """``(record key, replaced vector or None)`` of a record change of this collection; None otherwise."""
        if not entry or entry[0] not in (keyspace.CHANGE_RECORD, keyspace.CHANGE_RECORD_PRIOR):
            return None
        try:
            _, key, prior = keyspace.parse_change(entry)
        except CorruptData as e:
            # Unreadable (RocksDB's block checksums make this all but impossible): like any
            # entry of another collection, it is left out rather than stopping every load.
            log.error("changelog: %s; skipping it", e.message)
            return None
        return (key, prior) if key[:8] == self.prefix else None

    def _replaced_vectors(self, watermark: int) -> Iterator[tuple[bytes, bytes]]:
        """``(record key, vector)`` replaced by this collection's changes after ``watermark``, oldest first.

        The first one of a record is its vector as of that watermark (see Store._replaced_vector).
        """
        with self.store.iterator("changes", keyspace.seq_key(watermark + 1)) as it:
            while it.valid():
                val = it.value()
                if val and val[0] == keyspace.CHANGE_RECORD_PRIOR:
                    own = self._own_change(val)
                    if own is not None and own[1]:
                        yield own[0], own[1]
                it.next()
            check_iterator(it)

    def _has_changes_between(self, after: int, upto: int) -> bool:
        """Whether the changelog holds a change of this collection in ``(after, upto]``."""
        with self.store.iterator("changes", keyspace.seq_key(after + 1)) as it:
            while it.valid():
                if keyspace.parse_seq(it.key()) > upto:
                    return False
                if self._own_record_change(it.value()) is not None:
                    return True
                it.next()
            check_iterator(it)
        return False

    def _open_text(self) -> tuple[TextIndex | None, bool]:
        if not self.config.text_index:
            return None, False
        from engramdb.index.text import TextIndex

        tdir = self.index_dir / "text"
        tdir.mkdir(parents=True, exist_ok=True)
        return TextIndex.open_or_reset(tdir, refresh_interval=self.text_refresh_seconds)

    def _new_indexes(self) -> tuple[VectorIndex, PayloadIndex]:
        p = self.config.index
        vindex = VectorIndex(
            self.dimension, self.metric, m=p.m, ef_construction=p.ef_construction, ef_search=p.ef_search
        )
        vindex.snapshot_vectors = self.snapshot_vectors
        return vindex, PayloadIndex(self.config.indexed_fields)

    def _rebuild(
        self,
        vindex: VectorIndex,
        payload: PayloadIndex,
        text: TextIndex | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        started = time.perf_counter()
        remove_snapshot(self.index_dir)
        now = time.time()
        total = self._estimate_rows()
        done = 0
        batch: list[tuple[str, RecordRow]] = []

        def flush() -> None:
            rows = self.store.load_vectors([self._key(rid) for rid, _ in batch], [r for _, r in batch])
            # A row changed since the scan is left to the changelog replay after this.
            kept = [(rid, r) for (rid, _), r in zip(batch, rows, strict=True) if r is not None and r.vector]
            batch.clear()
            if not kept:
                return
            vecs = np.stack([_vector_of(r) for _, r in kept])
            labels = vindex.upsert([rid for rid, _ in kept], vecs, [r.expires_at for _, r in kept])
            for label, (_, r) in zip(labels, kept, strict=True):
                payload.add(label, r.metadata)
                if text is not None and r.text:
                    text.upsert(label, r.text)

        for k, v in self.store.iter_prefix("records", self.prefix):
            row = decode_record(v)
            if not row.live(now) or not row.has_vector:
                continue
            batch.append((keyspace.record_id_of(k), row))
            done += 1
            if len(batch) >= 1000:
                flush()
                self.load_progress = (done, max(total, done))
                if progress:
                    progress(done, max(total, done))
        if batch:
            flush()
        self.load_progress = (done, done)
        if progress:
            progress(done, done)
        timings.record("rebuild", started, self.store)

    def _rebuild_text(self, vindex: VectorIndex, text: TextIndex, progress: Callable[[int, int], None] | None) -> None:
        """Fill an empty text index from the stored rows the vector snapshot has labels for."""
        text.clear()
        label_of = vindex.label_of
        now = time.time()
        total = len(vindex)
        done = 0
        batch: list[tuple[int, str]] = []
        for k, v in self.store.iter_prefix("records", self.prefix):
            row = decode_record(v)
            label = label_of.get(keyspace.record_id_of(k))
            # Rows the snapshot does not know yet are indexed by the replay.
            if label is None or not row.live(now):
                continue
            done += 1
            if row.text:
                batch.append((label, row.text))
            if len(batch) >= 1000:
                text.upsert_many(batch)
                batch.clear()
                self.load_progress = (done, max(total, done))
                if progress:
                    progress(done, max(total, done))
        text.upsert_many(batch)
        self.load_progress = (done, done)
        if progress:
            progress(done, done)
        self._dirty = max(self._dirty, 1)

    def _estimate_rows(self) -> int:
        try:
            return self.store.estimate_keys()
        except Exception:
            return 0

    def _replay(self, after_seq: int) -> int:
        """Apply every changelog entry of this collection newer than ``after_seq``."""
        started = time.perf_counter()
        last = after_seq
        pending: list[bytes] = []
        with self.store.iterator("changes", keyspace.seq_key(after_seq + 1)) as it:
            while it.valid():
                last = keyspace.parse_seq(it.key())
                key = self._own_record_change(it.value())
                if key is not None:
                    pending.append(key)
                it.next()
            check_iterator(it)
        now = time.time()
        keys = list(dict.fromkeys(pending))
        assert self._vindex is not None and self._payload is not None
        # What the snapshot indexed for a changed record is unknown now (its old
        # row is overwritten): drop those labels from the payload and text
        # indexes wholesale, then index the current rows afresh.
        stale = BitMap(lb for k in keys if (lb := self._vindex.label_of.get(keyspace.record_id_of(k))) is not None)
        self._payload.remove_labels(stale)
        if self._text is not None and stale:
            self._text.delete_many(stale)
        # Each key once, so their order does not matter: read in key order, in chunks.
        keys.sort()
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            for key, row in zip(chunk, self.store.get_records(chunk, vector=True), strict=True):
                self._index_row(keyspace.record_id_of(key), row if row is not None and row.live(now) else None, None)
        self._dirty += len(keys)
        timings.record("replay", started, self.store)
        return last

    # ------------------------------------------------- altering the configuration
    def set_config(self, config: CollectionConfig) -> None:
        """Take an altered configuration (already stored): new ``ef_search``, indexed fields added or dropped.

        Fields added are indexed in the background from the stored records
        (:meth:`reindex_status`); until that completes, filters on them are
        answered by checking each record, so they are never wrong.
        """
        with self._index_lock:
            self.config = config
            if self._vindex is not None:
                self._vindex.ef_search = config.index.ef_search
            if self._payload is not None:
                self._sync_fields()

    def _sync_fields(self) -> None:
        """Make the payload index's fields those of the config (under the index lock, indexes loaded)."""
        payload = self._payload
        assert payload is not None
        want = self.config.indexed_fields
        have = {**payload.fields, **payload.building}
        gone = [p for p, t in have.items() if want.get(p) != t]
        if gone:
            payload.drop_fields(gone)
            self._dirty += 1  # the next snapshot must not bring them back
        new = {p: t for p, t in want.items() if have.get(p) != t}
        if new:
            payload.begin_fields(new)
        self._generation += 1  # cached candidates were computed with the old fields
        if payload.building and not self._closed:
            t = self._reindex_thread
            if t is None or not t.is_alive():
                self._reindex_thread = threading.Thread(
                    target=self._reindex_main, name=f"engramdb-reindex-{self.tenant}/{self.name}", daemon=True
                )
                self._reindex_thread.start()

    def reindex_status(self) -> dict[str, Any] | None:
        """Progress of building the payload index of added fields; None when no build is pending.

        ``{"state": "building" | "retrying", "fields": [...], "done": n, "total": estimate,
        "error": why the last attempt failed (retrying only)}``. ``total`` is the
        number of stored rows, an estimate; ``done`` counts rows scanned.
        """
        st = self._reindex
        if st is None:
            payload = self._payload
            if payload is None or not payload.building:
                return None
            return {"state": "building", "fields": sorted(payload.building), "done": 0, "total": 0}
        return dict(st)

    def _reindex_main(self) -> None:
        """The builder thread: index the fields being built from the stored records, then let them answer.

        A failure (storage error, a panic in a binding) is logged, shown by
        :meth:`reindex_status` and retried; meanwhile filters on those fields
        keep being answered by checking records, so nothing is wrong, only slower.
        """
        delay = 1.0
        while not self._reindex_stop.is_set():
            try:
                with self._index_lock:
                    payload = self._payload
                    tokens = payload.building_tokens() if payload is not None and not self._closed else {}
                    if not tokens:
                        # Decided under the lock that _sync_fields takes: a field added after this finds
                        # no builder and starts one, instead of trusting this thread that is on its way out.
                        self._reindex = None
                        if self._reindex_thread is threading.current_thread():
                            self._reindex_thread = None
                        return
                # Writes acknowledged before the build are applied first: the total counts them, and
                # a chunk indexes only records the vector index already holds (the rest arrive
                # through apply_committed, which indexes the fields being built too).
                self.catch_up(_CLOSE_CATCH_UP_SECONDS)
                total = self.size() or 0
                self._reindex = {"state": "building", "fields": sorted(tokens), "done": 0, "total": total}
                if not self._backfill(total):
                    return  # closing
                with self._index_lock:
                    if payload is None or self._payload is not payload or self._closed:
                        return
                    done = payload.finish_fields(tokens)
                    self._generation += 1
                    self._dirty += 1  # a snapshot with the new fields spares the next start this build
                log.info("%s/%s: payload index of %s built", self.tenant, self.name, ", ".join(sorted(done)))
                delay = 1.0
            except BaseException as e:
                if self._closed or isinstance(e, Closed):
                    return
                if not is_failure(e):
                    self._reindex = {**(self._reindex or {}), "state": "failed", "error": f"{type(e).__name__}: {e}"}
                    log.critical("%s/%s: building the payload index stopped: %r", self.tenant, self.name, e)
                    raise
                log.exception("%s/%s: building the payload index failed; retrying", self.tenant, self.name)
                self._reindex = {**(self._reindex or {}), "state": "retrying", "error": f"{type(e).__name__}: {e}"}
                self._reindex_stop.wait(delay)
                delay = min(delay * 2, 60.0)

    def _backfill(self, total: int) -> bool:
        """Feed every stored record to the fields being built, a chunk at a time; False when closing.

        Each chunk reads the rows and indexes them under the index lock, so no
        committed change is applied meanwhile: the rows read are at least as
        new as what the indexes hold. A row committed but not yet applied is
        indexed here and then again by :meth:`apply_committed` (remove the old
        metadata, add the new: the same end state); a change applied before
        its record's chunk is read again here (adding is idempotent). Searches
        and writes wait for one chunk at most.
        """
        start = self.prefix
        done = 0
        while not self._reindex_stop.is_set():
            step = self._backfill_chunk(start)
            if step is None:
                return False
            n, last = step
            done += n
            self._reindex = {**(self._reindex or {}), "done": done, "total": max(total, done)}
            if last is None or n < REINDEX_CHUNK:
                return True
            start = last + b"\x00"
        return False

    def _backfill_chunk(self, start: bytes) -> tuple[int, bytes | None] | None:
        """Index up to REINDEX_CHUNK stored rows from ``start`` on; (rows read, last key), None when closing."""
        with self._index_lock:
            vindex, payload = self._vindex, self._payload
            if vindex is None or payload is None or self._closed:
                return None
            label_of = vindex.label_of
            n = 0
            last: bytes | None = None
            with contextlib.closing(self.store.iter_prefix("records", self.prefix, start=start)) as rows:
                for k, v in rows:
                    last = k
                    n += 1
                    row = decode_record(v)
                    if not row.deleted:
                        label = label_of.get(keyspace.record_id_of(k))
                        if label is not None:
                            payload.backfill(label, row.metadata)
                    if n >= REINDEX_CHUNK:
                        break
            return n, last

    # ------------------------------------------------------ index maintenance
    def apply_committed(self, changes: list[Change]) -> None:
        """Bring the indexes up to date with committed changes (:class:`~engramdb.storage.store.ChangeListener`).

        If this raises, the store fails the writes of ``changes`` with
        ``index_unavailable`` (they are stored) and this collection reports
        itself broken (:meth:`problem`) until a restart rebuilds its indexes
        from the snapshot and the changelog.
        """
        with self._index_lock:
            if self._vindex is None or self._closed:
                return
            try:
                self._apply(changes)
            except BaseException as e:
                self._index_error = (
                    f"the indexes of collection {self.tenant}/{self.name} missed a change "
                    f"({type(e).__name__}: {e}); restart the server to rebuild them from the changelog"
                )
                raise
            finally:
                self._generation += 1

    def _apply(self, changes: list[Change]) -> None:
        ups: list[tuple[str, RecordRow, RecordRow | None]] = []
        for c in changes:
            if c.mutation.kind != keyspace.CHANGE_RECORD:
                continue
            row = c.mutation.row
            old = c.old if isinstance(c.old, RecordRow) and not c.old.deleted else None
            rid = keyspace.record_id_of(c.mutation.key)
            assert isinstance(row, RecordRow)
            if row.deleted:
                self._flush_upserts(ups)
                self._index_row(rid, None, old)
            else:
                ups.append((rid, row, old))
        self._flush_upserts(ups)
        self._applied_seq = max(self._applied_seq, changes[-1].seq)
        self._dirty += len(changes)

    def _flush_upserts(self, ups: list[tuple[str, RecordRow, RecordRow | None]]) -> None:
        if not ups:
            return
        assert self._vindex is not None and self._payload is not None
        # Later changes of the same id in one batch supersede earlier ones.
        last: dict[str, tuple[RecordRow, RecordRow | None]] = {}
        for rid, row, old in ups:
            prev = last.get(rid)
            last[rid] = (row, prev[1] if prev else old)
        old_labels = {rid: self._vindex.label_of.get(rid) for rid in last}
        # Metadata-only changes (patch, refresh_ttl, re-upserts of the same
        # vector) skip the HNSW update, which relinks the node every time.
        moved = [
            r for r, (row, old) in last.items() if old is None or old_labels[r] is None or old.digest() != row.digest()
        ]
        labels_of: dict[str, int] = {}
        if moved:
            vecs = np.stack([_vector_of(last[r][0]) for r in moved])
            labels = self._vindex.upsert(moved, vecs, [last[r][0].expires_at for r in moved])
            labels_of = dict(zip(moved, labels, strict=True))
        for rid, (row, old) in last.items():
            was = old_labels[rid]
            label = labels_of.get(rid)
            if label is None:
                assert was is not None
                label = was
                self._vindex.set_expiry(label, row.expires_at)
            # A moved vector has a new label: what the old one indexed goes.
            relabelled = was is not None and was != label
            if relabelled or old is None or was is None or not json_equal(old.metadata, row.metadata):
                if old is not None and was is not None:
                    self._payload.remove(was, old.metadata)
                self._payload.add(label, row.metadata)
            if self._text is not None:
                if was is not None and relabelled:
                    # Even when ``old`` had no text: a change re-applied after
                    # load's replay finds ``was`` indexed from a newer row.
                    self._text.delete(was)
                if row.text:
                    if old is None or old.text != row.text or was is None or relabelled:
                        self._text.upsert(label, row.text)
                elif old is not None and old.text and not relabelled:
                    self._text.delete(label)
        ups.clear()

    def _index_row(self, rid: str, row: RecordRow | None, old: RecordRow | None) -> None:
        """Make the indexes agree with ``row`` (None = absent) for one id."""
        assert self._vindex is not None and self._payload is not None
        if row is None:
            label = self._vindex.label_of.get(rid)
            if label is None:
                return
            if old is None:
                old = self.store.get_record(keyspace.record_key(self.prefix, rid))
                old = old if old is not None and not old.deleted else None
            self._vindex.delete(rid)
            if old is not None:
                self._payload.remove(label, old.metadata)
            # Without the old metadata the payload keeps a stale bit for this
            # label; harmless, as candidates are intersected with live labels
            # and labels are never reused.
            if self._text is not None:
                self._text.delete(label)
        else:
            self._flush_upserts([(rid, row, old)])

    # ------------------------------------------------------------- snapshots
    @property
    def dirty(self) -> int:
        return self._dirty

    def snapshot(self, *, in_child: bool = False) -> bool:
        """Persist the indexes with their changelog watermark; False if nothing changed.

        ``in_child`` writes the vector index from a forked copy of the process
        (:meth:`VectorIndex.save_forked`): changes and searches go on meanwhile
        instead of waiting for hnswlib, which holds the GIL while it saves.
        If the child fails, the snapshot is written here instead.
        """
        if self._vindex is None:
            return False
        if self._index_error is not None:
            # The indexes missed a change (see apply_committed): a snapshot of them
            # would claim it, and a restart would not replay it. The last
            # sound snapshot and the changelog after it rebuild them instead.
            return False
        # Every change acknowledged so far goes into it; one the notifier has not applied
        # within the bound is left to the changelog replay at the next load.
        with contextlib.suppress(EngramError):
            self.catch_up(_CLOSE_CATCH_UP_SECONDS)
        # Taken before looking at _dirty, which is 0 while a child writes: a
        # close meanwhile must wait for that snapshot, not skip its own.
        with self._snapshot_lock:
            started = time.perf_counter()
            with self._index_lock:
                vindex, payload = self._vindex, self._payload
                if vindex is None or payload is None or not self._dirty:
                    return False
                if self._applied_seq < self._exact_from:
                    # Loading read rows newer than _applied_seq: the graph is ahead of it until
                    # the notifier catches up, and a snapshot under that watermark would give
                    # the next load's nodes the wrong vectors. The next snapshot tick retries.
                    return False
                seq = self._applied_seq
                if self._text is not None:
                    self._text.commit_watermark(seq)
                # The child serialises the payload index too, from its copy.
                wait = vindex.save_forked(self.index_dir, seq, payload.to_bytes) if in_child else None
                if wait is None:
                    vindex.save(self.index_dir, seq, extra=payload.to_bytes())
                    self._dirty = 0
                    timings.record("snapshot", started, self.store)
                    return True
                dirty, self._dirty = self._dirty, 0
            done = False
            try:
                # Generous: the child writes ~100 MB a second; a hung child is killed.
                done = wait(60 + len(vindex) * vindex.dim * 4 / 20e6)
            finally:
                if not done:  # those changes are in no snapshot yet
                    with self._index_lock:
                        self._dirty += dirty
            if done:
                timings.record("snapshot", started, self.store)
                return True
            log.warning("snapshot of collection %r in a child process failed; writing it in-process", self.name)
        return self.snapshot()

    def advance_watermark(self) -> int:
        """Let an unchanged collection's snapshot cover the changelog up to now; returns its watermark.

        A collection nobody writes to would otherwise hold its old watermark
        forever and keep every later changelog entry (of all collections)
        from being trimmed. Only metadata is rewritten, never the HNSW file.
        """
        # Read before the check below: every change up to here has reached
        # this collection's indexes, so if none is pending the snapshot is
        # exact as of this sequence number.
        through = self.store.notified_seq
        with self._snapshot_lock, self._index_lock:
            if self._vindex is None or self._payload is None:
                return 0
            if self._dirty or through <= self._vindex.watermark or self._index_error is not None:
                return self._vindex.watermark
            if self._text is not None:
                self._text.commit_watermark(through)
            if self._vindex.save_watermark(self.index_dir, through, extra=self._payload.to_bytes()):
                self._applied_seq = max(self._applied_seq, through)
            return self._vindex.watermark

    def hold_snapshot_files(self) -> contextlib.AbstractContextManager[object]:
        """Hold this collection's snapshot lock: no snapshot is written and no watermark moves meanwhile.

        A backup holds it while it links the snapshot files and takes the
        RocksDB checkpoint, so the snapshot it ships is complete and the
        changelog entries after its watermark are still in the checkpoint
        (trimming waits for every loaded collection's lock, see
        ``Database.trim_changelog``). Writes and searches go on.
        """
        return self._snapshot_lock

    def erase_deleted(self) -> None:
        """Remove what the indexes keep of deleted or replaced records, in memory and in their files (GDPR erase).

        The HNSW nodes of deleted vectors are zeroed, the text index is written
        anew from the live records (tantivy keeps a deleted document's terms
        until a merge) and a snapshot is written in this process, replacing
        the files that held the old vectors. Writes of every collection wait
        while the text is re-indexed (they wait for this collection's lock).
        """
        self.load()
        self.catch_up()  # deletes acknowledged before the erase are in the indexes, so scrubbed below
        with self._index_lock:
            vindex = self._vindex
            if vindex is None or self._closed:
                return
            vindex.scrub_deleted()
            if self._text is not None:
                self._text.rewrite(self._live_texts(vindex))
            self._dirty = max(self._dirty, 1)
            self._generation += 1
        if not self.snapshot():
            raise EngramError(
                f"erasing deleted data of {self.tenant}/{self.name}: its indexes could not be snapshotted "
                f"({self._index_error or 'no snapshot written'}); retried after a restart rebuilds them"
            )
        with self._snapshot_lock:
            # Left by a snapshot child killed half way: they may hold old vectors.
            for leftover in ("vector.hnsw.tmp", "vector.meta.tmp"):
                (self.index_dir / leftover).unlink(missing_ok=True)

    def _live_texts(self, vindex: VectorIndex) -> list[tuple[int, str]]:
        label_of = vindex.label_of
        now = time.time()
        out = []
        for k, v in self.store.iter_prefix("records", self.prefix):
            row = decode_record(v)
            label = label_of.get(keyspace.record_id_of(k))
            if label is not None and row.text and row.live(now):
                out.append((label, row.text))
        return out

    @property
    def watermark(self) -> int:
        """Changelog sequence the last snapshot contains (0 = none)."""
        return self._vindex.watermark if self._vindex is not None else 0

    def close(self, snapshot: bool = True) -> None:
        """Snapshot (unless ``snapshot`` is false), stop listening to changes and release the text index."""
        if self._closed:
            return
        # A field build stops between chunks; the next load begins it again (the config declares it).
        self._reindex_stop.set()
        builder = self._reindex_thread
        if builder is not None and builder is not threading.current_thread():
            builder.join(30.0)
        try:
            if snapshot:
                self.snapshot()
        finally:
            # A failed snapshot (e.g. a commit tripping over a file a crash left
            # behind) must not leave the text index's writer lock held; the
            # changelog still covers everything the snapshot would have saved.
            # No change is applied once closed (apply_committed checks under the
            # index lock); one being applied finishes before the text index closes.
            self._closed = True
            if self._index_lock.acquire(timeout=_CLOSE_CATCH_UP_SECONDS):
                self._index_lock.release()
            self.store.unsubscribe(self.prefix)
            if self._text is not None:
                self._text.close()

    # ------------------------------------------------------------- accessors
    # Every read of the indexes goes through vindex, payload or text_index: each loads them
    # and waits until they hold every change acknowledged so far (read-your-writes).
    @property
    def vindex(self) -> VectorIndex:
        self.load()
        if self._applied_seq < self.store.committed_seq(self.prefix) or self._index_error is not None:
            self.catch_up()
        assert self._vindex is not None
        return self._vindex

    @property
    def payload(self) -> PayloadIndex:
        self.load()
        if self._applied_seq < self.store.committed_seq(self.prefix) or self._index_error is not None:
            self.catch_up()
        assert self._payload is not None
        return self._payload

    @property
    def text_index(self) -> TextIndex | None:
        self.load()
        if self._applied_seq < self.store.committed_seq(self.prefix) or self._index_error is not None:
            self.catch_up()
        return self._text

    def catch_up(self, timeout: float | None = None) -> bool:
        """Wait until the indexes hold every change of this collection acknowledged before the call.

        Writes are acknowledged once durable; the notifier thread applies them
        to the indexes right after (overlapping the next fsync), so a read of
        the indexes first waits here for the changes acknowledged before it
        started. Raises ``index_unavailable`` if the indexes missed a change
        (they would answer without it) or can no longer catch up (the
        notifier is gone). False if ``timeout`` passed first.
        """
        target = self.store.committed_seq(self.prefix)
        # Not from a thread holding the index lock (the notifier needs it to apply the changes).
        behind = self._applied_seq < target and not self._index_lock._is_owned()  # type: ignore[attr-defined]
        if behind and not self.store.wait_notified(target, lambda: self._applied_seq >= target, timeout):
            return False
        if self._index_error is not None:
            raise Unavailable(self._index_error, code="index_unavailable")
        return True

    def stored_vectors(self, labels: Sequence[int]) -> tuple[list[int], np.ndarray]:
        """The labels whose vectors could be read, and those vectors (normalised), row for row.

        Vectors come from the ``vectors`` column family; a label deleted
        since the caller chose it is left out. A record without a stored
        vector (written before the column family existed) is read from the
        index instead.
        """
        vindex = self.vindex
        prefix = self.prefix
        keys = [prefix + (name or "").encode() for name in vindex.names_of(labels)]
        # RocksDB answers a multi-get in key order markedly faster.
        order = sorted(range(len(keys)), key=keys.__getitem__)
        raws = self.store.multi_get("vectors", [keys[i] for i in order])
        if all(r is not None for r in raws):
            out = np.empty((len(labels), self.dimension), dtype=np.float32)
            out[order] = np.frombuffer(b"".join(raws), dtype=np.float32).reshape(len(labels), self.dimension)  # type: ignore[arg-type]
            return list(labels), out
        by_label: dict[int, np.ndarray] = {}
        for i, raw in zip(order, raws, strict=True):
            lb = labels[i]
            if raw is not None:
                by_label[lb] = np.frombuffer(raw, dtype=np.float32)
            elif vindex.name_of(lb) is not None:
                try:
                    by_label[lb] = vindex.vectors([lb])[0]
                except RuntimeError:
                    pass  # deleted from the index meanwhile
        kept = [lb for lb in labels if lb in by_label]
        if not kept:
            return [], np.empty((0, self.dimension), dtype=np.float32)
        return kept, np.stack([by_label[lb] for lb in kept])

    def live_labels(self) -> BitMap:
        return self.vindex.live

    def filter_candidates(self, flt: Filter, deadline: Deadline | None = None) -> Candidates:
        """Live labels that may match ``flt`` (see ``PayloadIndex.candidates``), cached.

        Repeated filters (a tenant, a user, a session) are the common case;
        the cache answers them until the next change the indexes apply. The
        result is shared between callers and must not be modified.
        """
        vindex, payload = self.vindex, self.payload
        gen = self._generation
        key = flt.cache_key
        hit = self._cand_cache.get(key)
        if hit is not None and hit[0] == gen:
            return hit[1]
        bm, exact = payload.candidates(flt, vindex.live, deadline)
        cands = Candidates(bm, exact)
        size = len(bm) * 8  # the array, once built, and roughly the bitmap
        if size <= _CAND_CACHE_BYTES // 4:
            if len(self._cand_cache) >= _CAND_CACHE_ENTRIES or self._cand_cache_bytes + size > _CAND_CACHE_BYTES:
                self._cand_cache = {}
                self._cand_cache_bytes = 0
            self._cand_cache[key] = (gen, cands)
            self._cand_cache_bytes += size
        return cands

    def alive_fn(self) -> Callable[[str], bool]:
        """A fast liveness test for ids, from the in-memory index, at a fixed 'now'."""
        vindex = self.vindex
        now = time.time()

        def alive(rid: str) -> bool:
            label = vindex.label_of.get(rid)
            if label is None:
                return False
            exp = vindex.expires.get(label)
            return exp is None or exp > now

        return alive

    def size(self) -> int | None:
        """Labels in the vector index (expired ones not yet swept included); None while not loaded."""
        vindex = self._vindex
        return len(vindex) if vindex is not None else None

    def text_documents(self) -> int | None:
        """Documents text search sees (as of the last commit); None while not loaded. For metrics: never loads."""
        text = self._text
        if self._vindex is None or self._closed:
            return None
        if text is None:
            return 0
        try:
            return text.count()
        except EngramError:
            return None  # closed meanwhile

    def payload_bytes(self) -> int | None:
        """Memory of the payload index, roughly (:meth:`PayloadIndex.nbytes`); None while not loaded. Never loads.

        ``nbytes`` walks every posting list, so a value is reused until the index changes and
        for at least :data:`PAYLOAD_BYTES_TTL` seconds after that (``/metrics`` and ``stats``
        both read it here).
        """
        payload = self._payload
        if payload is None or self._closed:
            return None
        now, gen = time.monotonic(), self._generation
        cached = self._payload_nbytes
        if cached is not None and cached[0] is payload and (cached[1] == gen or now - cached[2] < PAYLOAD_BYTES_TTL):
            return cached[3]
        value = payload.nbytes()
        self._payload_nbytes = (payload, gen, now, value)
        return value

    def memory_stats(self) -> dict[str, Any]:
        """What the indexes hold in memory, in bytes (estimates: see docs/observability.md). Never loads.

        ``records``: labels in the vector index (0 while not loaded). Cheap at any size: the vector
        index from its parameters, the id maps from a sample, the payload index at most once per
        :data:`PAYLOAD_BYTES_TTL`, the text index from one directory listing.
        """
        vindex, text = self._vindex, self._text
        loaded = vindex is not None and not self._closed
        out: dict[str, Any] = {
            "records": 0,
            "vector_index_bytes": 0,
            "id_maps_bytes": 0,
            "payload_index_bytes": 0,
            "text_index_bytes": 0,
            "loaded": loaded,
        }
        if not loaded:
            return out
        assert vindex is not None
        out["records"] = len(vindex)
        out["vector_index_bytes"] = vindex.memory_bytes()
        out["id_maps_bytes"] = vindex.id_maps_bytes()
        out["payload_index_bytes"] = self.payload_bytes() or 0
        out["text_index_bytes"] = text.disk_bytes() if text is not None else 0
        return out
