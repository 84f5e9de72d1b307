"""A collection: records, their indexes and every query over them."""

from __future__ import annotations

import base64
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
from pyroaring import BitMap

from ..errors import Closed, CorruptData, EngramError, FailedPrecondition, InvalidArgument
from ..index.payload import PayloadIndex
from ..index.vector import VectorIndex, remove_snapshot
from ..storage import keys as K
from ..storage.codec import RecordRow, decode_record
from ..storage.store import Change, Mutation, Store, check_iterator
from ..types import CollectionConfig, Hit, Record, ScanPage
from . import validate as V
from .budget import MASK, Deadline, current_deadline
from .filters import And, Filter, NamespacePrefix, compile_filter, json_equal
from .graph import GraphMixin, edge_tombstones
from .hlc import HLC, version_str

if TYPE_CHECKING:
    from ..embed import Embedder
    from ..index.text import TextIndex

log = logging.getLogger("engramdb.collection")

_CAND_CACHE_ENTRIES = 256
_CAND_CACHE_BYTES = 32 << 20


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


_RECORD_FIELDS = frozenset(
    {
        "id",
        "vector",
        "text",
        "metadata",
        "namespace",
        "ttl_seconds",
        "expires_at",
        "importance",
        "created_at",
        "updated_at",
        "version",
    }
)


class Collection(GraphMixin):
    """Records of one collection of one tenant, with vector, payload and text indexes.

    Obtain it from :meth:`engramdb.Database.create_collection` or
    :meth:`~engramdb.Database.get_collection`; it is safe to share between
    threads.
    """

    def __init__(
        self,
        store: Store,
        hlc: HLC,
        tenant: str,
        tenant_id: int,
        coll_id: int,
        config: CollectionConfig,
        index_dir: Path,
        *,
        exact_threshold: int = 2048,
        text_refresh_seconds: float = 0.2,
        embedder: Embedder | None = None,
    ):
        self.store = store
        self.hlc = hlc
        self.tenant = tenant
        self.tenant_id = tenant_id
        self.id = coll_id
        self.config = config
        self.prefix = K.coll_prefix(tenant_id, coll_id)
        self.index_dir = index_dir
        self.exact_threshold = exact_threshold
        self.text_refresh_seconds = text_refresh_seconds
        self.embedder = embedder
        self._vindex: VectorIndex | None = None
        self._payload: PayloadIndex | None = None
        self._text: TextIndex | None = None
        self._load_lock = threading.Lock()
        self._index_lock = threading.RLock()
        # One snapshot (or watermark move) of this collection at a time: a
        # snapshot written by a child process runs outside the index lock.
        self._snapshot_lock = threading.Lock()
        self._applied_seq = 0
        self._dirty = 0
        self._closed = False
        # Bumped after every change the indexes apply: cached filter
        # candidates are valid only for the generation they were built in.
        self._generation = 0
        self._cand_cache: dict[str, tuple[int, Candidates]] = {}
        self._cand_cache_bytes = 0
        self.load_progress: tuple[int, int] = (0, 0)  # (done, total) while (re)building
        self._pending_scan: tuple[int, bool] | None = None  # see trim_mark
        self._index_error: str | None = None  # set when an index update failed; see problem()

    # ------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dimension(self) -> int:
        return self.config.dimension

    @property
    def metric(self) -> str:
        return self.config.metric

    def __repr__(self) -> str:
        return f"Collection({self.tenant!r}/{self.name!r}, dimension={self.dimension}, metric={self.metric!r})"

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
                self.store.subscribe(self.prefix, self._on_changes)
                vdir = self.index_dir
                p = self.config.index
                rebuild = False
                try:
                    vindex = VectorIndex.load(vdir, self.dimension, self.metric, p.m, p.ef_construction, p.ef_search)
                    payload = PayloadIndex.from_bytes(vindex.extra, self.config.indexed_fields)
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
                    self._commit_text()
                    return
                if rebuild:
                    vindex, payload = self._new_indexes()
                    if text is not None:
                        text.clear()
                    self._rebuild(vindex, payload, text, progress)
                    watermark = self.store.seq
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
                if rebuild:
                    self._dirty = max(self._dirty, 1)
                self._commit_text()

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
            if first is None or K.parse_seq(first) > covered + 1:
                raise CorruptData("index snapshot is older than the retained changelog")

    # ------------------------------------------- changelog trimming while unloaded
    @property
    def _idle_key(self) -> bytes:
        return b"w|" + self.prefix

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
            from ..index.text import TextIndex

            watermark = min(watermark, TextIndex.stored_watermark(self.index_dir / "text"))
        return watermark

    def _own_record_change(self, entry: bytes) -> bool:
        """Whether a changelog entry is a record change of this collection (what replay applies)."""
        return entry[0] == K.CHANGE_RECORD and entry[1:9] == self.prefix

    def _has_changes_between(self, after: int, upto: int) -> bool:
        """Whether the changelog holds a change of this collection in ``(after, upto]``."""
        with self.store.iterator("changes", K.seq_key(after + 1)) as it:
            while it.valid():
                if K.parse_seq(it.key()) > upto:
                    return False
                val = it.value()
                if self._own_record_change(val):
                    return True
                it.next()
            check_iterator(it)
        return False

    def _open_text(self) -> tuple[TextIndex | None, bool]:
        if not self.config.text_index:
            return None, False
        from ..index.text import TextIndex

        tdir = self.index_dir / "text"
        tdir.mkdir(parents=True, exist_ok=True)
        return TextIndex.open_or_reset(tdir, refresh_interval=self.text_refresh_seconds)

    def _new_indexes(self) -> tuple[VectorIndex, PayloadIndex]:
        p = self.config.index
        return (
            VectorIndex(self.dimension, self.metric, m=p.m, ef_construction=p.ef_construction, ef_search=p.ef_search),
            PayloadIndex(self.config.indexed_fields),
        )

    def _rebuild(
        self,
        vindex: VectorIndex,
        payload: PayloadIndex,
        text: TextIndex | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
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
            batch.append((K.record_id_of(k), row))
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
            label = label_of.get(K.record_id_of(k))
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
        last = after_seq
        pending: list[bytes] = []
        with self.store.iterator("changes", K.seq_key(after_seq + 1)) as it:
            while it.valid():
                last = K.parse_seq(it.key())
                val = it.value()
                if self._own_record_change(val):
                    pending.append(bytes(val[1:]))
                it.next()
            check_iterator(it)
        now = time.time()
        keys = list(dict.fromkeys(pending))
        assert self._vindex is not None and self._payload is not None
        # What the snapshot indexed for a changed record is unknown now (its old
        # row is overwritten): drop those labels from the payload and text
        # indexes wholesale, then index the current rows afresh.
        stale = BitMap(lb for k in keys if (lb := self._vindex.label_of.get(K.record_id_of(k))) is not None)
        self._payload.remove_labels(stale)
        if self._text is not None and stale:
            self._text.delete_many(stale)
        # Each key once, so their order does not matter: read in key order, in chunks.
        keys.sort()
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            for key, row in zip(chunk, self.store.get_records(chunk, vector=True), strict=True):
                self._index_row(K.record_id_of(key), row if row is not None and row.live(now) else None, None)
        self._dirty += len(keys)
        return last

    # ------------------------------------------------------ index maintenance
    def _on_changes(self, changes: list[Change]) -> None:
        """Notifier-thread hook: bring the indexes up to date with committed changes.

        If this raises, the store fails the writes of ``changes`` with
        ``index_unavailable`` (they are stored) and this collection reports
        itself broken (:meth:`problem`) until a restart rebuilds its indexes
        from the snapshot and the changelog.
        """
        with self._index_lock:
            if self._vindex is None:
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
            if c.mutation.kind != K.CHANGE_RECORD:
                continue
            row = c.mutation.row
            old = c.old if isinstance(c.old, RecordRow) and not c.old.deleted else None
            rid = K.record_id_of(c.mutation.key)
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
                old = self.store.get_record(K.record_key(self.prefix, rid))
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
            # The indexes missed a change (see _on_changes): a snapshot of them
            # would claim it, and a restart would not replay it. The last
            # sound snapshot and the changelog after it rebuild them instead.
            return False
        # Taken before looking at _dirty, which is 0 while a child writes: a
        # close meanwhile must wait for that snapshot, not skip its own.
        with self._snapshot_lock:
            with self._index_lock:
                vindex, payload = self._vindex, self._payload
                if vindex is None or payload is None or not self._dirty:
                    return False
                seq = self._applied_seq
                if self._text is not None:
                    self._text.commit_watermark(seq)
                # The child serialises the payload index too, from its copy.
                wait = vindex.save_forked(self.index_dir, seq, payload.to_bytes) if in_child else None
                if wait is None:
                    vindex.save(self.index_dir, seq, extra=payload.to_bytes())
                    self._dirty = 0
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

    @property
    def watermark(self) -> int:
        """Changelog sequence the last snapshot contains (0 = none)."""
        return self._vindex.watermark if self._vindex is not None else 0

    def close(self, snapshot: bool = True) -> None:
        if self._closed:
            return
        try:
            if snapshot:
                self.snapshot()
        finally:
            # A failed snapshot (e.g. a commit tripping over a file a crash left
            # behind) must not leave the text index's writer lock held; the
            # changelog still covers everything the snapshot would have saved.
            self._closed = True
            self.store.unsubscribe(self.prefix)
            if self._text is not None:
                self._text.close()

    def drop_files(self) -> None:
        self.close(snapshot=False)
        shutil.rmtree(self.index_dir, ignore_errors=True)

    # ----------------------------------------------------------------- write
    def _key(self, rid: str) -> bytes:
        return K.record_key(self.prefix, rid)

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"collection {self.name!r} was closed or deleted")

    def _build_row(self, item: Record | Mapping[str, Any], where: str, now: float) -> tuple[str, RecordRow]:
        if isinstance(item, Record):
            d: Mapping[str, Any] = item.__dict__
        elif isinstance(item, Mapping):
            d = item
            unknown = set(d) - _RECORD_FIELDS
            if unknown:
                raise InvalidArgument(f"{where} has unknown fields {sorted(unknown)}", code="invalid_record")
        else:
            raise InvalidArgument(f"{where} must be a Record or a dict", code="invalid_record")
        rid = V.record_id(d.get("id"), f"{where}.id")
        text = V.text(d.get("text"))
        vec_in = d.get("vector")
        if vec_in is None:
            if self.embedder is None or text is None:
                raise InvalidArgument(
                    f"{where} has no vector; give a vector, or text in a collection with an embedder",
                    code="missing_vector",
                )
            vec_in = self.embedder.embed([text])[0]
        vec = V.vector(vec_in, self.dimension, self.metric, f"{where}.vector")
        ttl = V.positive_seconds(d.get("ttl_seconds"), f"{where}.ttl_seconds")
        expires_at = V.epoch_seconds(d.get("expires_at"), f"{where}.expires_at")
        if ttl is not None and expires_at is not None:
            raise InvalidArgument(f"{where}: give ttl_seconds or expires_at, not both", code="invalid_ttl")
        if ttl is None and expires_at is None:
            ttl = self.config.default_ttl_seconds
        if ttl is not None:
            expires_at = now + ttl
        hlc, node = self.hlc.now()
        row = RecordRow(
            hlc=hlc,
            node=node,
            created_at=now,
            updated_at=now,
            expires_at=expires_at,
            namespace=V.namespace(d.get("namespace"), f"{where}.namespace"),
            metadata=V.metadata(d.get("metadata")),
            text=text,
            vector=vec.tobytes(),
            importance=V.finite(d.get("importance"), f"{where}.importance"),
            ttl_seconds=ttl,
        )
        return rid, row

    def upsert(self, records: Record | Mapping[str, Any] | Sequence[Record | Mapping[str, Any]]) -> list[str]:
        """Insert or replace records (whole-record replace); returns their new versions.

        The batch is validated as a whole first: if any record is invalid,
        nothing is written. Returns once the write is durable and indexed.
        """
        self._check_open()
        items = [records] if isinstance(records, (Record, Mapping)) else list(records)
        V.batch(items, "records")
        now = time.time()
        if self.embedder is not None:
            self._embed_missing(items)
        built = [self._build_row(it, f"records[{i}]", now) for i, it in enumerate(items)]
        seen: set[str] = set()
        for rid, _ in built:
            if rid in seen:
                raise InvalidArgument(f"id {rid!r} appears twice in one batch", code="duplicate_id")
            seen.add(rid)
        self.load()
        muts = [Mutation(K.CHANGE_RECORD, self.prefix, self._key(rid), row) for rid, row in built]
        self.store.apply(muts)
        return [version_str(row.version) for _, row in built]

    def _embed_missing(self, items: list[Record | Mapping[str, Any]]) -> None:
        """Embed the text of vector-less records in one provider call."""
        assert self.embedder is not None
        todo = []
        for i, it in enumerate(items):
            d = it.__dict__ if isinstance(it, Record) else it
            if isinstance(d, Mapping) and d.get("vector") is None and isinstance(d.get("text"), str):
                todo.append(i)
        if not todo:
            return
        texts = [(items[i].__dict__ if isinstance(items[i], Record) else items[i])["text"] for i in todo]  # type: ignore[index]
        vecs = self.embedder.embed(texts)
        for i, v in zip(todo, vecs, strict=True):
            it = items[i]
            if isinstance(it, Record):
                items[i] = Record(**{**it.__dict__, "vector": v})
            else:
                items[i] = {**it, "vector": v}

    def patch(
        self,
        id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        text: str | None = None,
        namespace: Sequence[str] | None = None,
        ttl_seconds: float | None = None,
        importance: float | None = None,
        vector: Sequence[float] | None = None,
    ) -> Record:
        """Merge ``metadata`` into a live record (keys set to None are removed) and
        replace the other given fields; raises NotFound if the record is absent."""
        self._check_open()
        rid = V.record_ref(id)
        md_patch = V.metadata(metadata) if metadata is not None else None
        new_text = V.text(text)
        new_ns = V.namespace(namespace) if namespace is not None else None
        ttl = V.positive_seconds(ttl_seconds, "ttl_seconds")
        imp = V.finite(importance, "importance")
        vec = V.vector(vector, self.dimension, self.metric) if vector is not None else None
        self.load()
        for _ in range(16):
            now = time.time()
            # The vector is read too when the patch keeps it: the new row is written whole.
            cur = self.store.get_record(self._key(rid), vector=vec is None)
            if cur is None or not cur.live(now):
                from ..errors import NotFound

                raise NotFound(f"record {rid!r} does not exist in collection {self.name!r}", code="record_not_found")
            md = dict(cur.metadata)
            if md_patch:
                for k, v in md_patch.items():
                    if v is None:
                        md.pop(k, None)
                    else:
                        md[k] = v
                V.metadata(md)  # the merged object must respect the size cap too
            hlc, node = self.hlc.now()
            row = RecordRow(
                hlc=hlc,
                node=node,
                created_at=cur.created_at,
                updated_at=now,
                expires_at=(now + ttl) if ttl is not None else cur.expires_at,
                namespace=new_ns if new_ns is not None else cur.namespace,
                metadata=md,
                text=new_text if new_text is not None else cur.text,
                vector=vec.tobytes() if vec is not None else cur.vector,
                importance=imp if imp is not None else cur.importance,
                ttl_seconds=ttl if ttl is not None else cur.ttl_seconds,
            )
            if self.embedder is not None and new_text is not None and vec is None:
                row.vector = V.vector(self.embedder.embed([new_text])[0], self.dimension, self.metric).tobytes()
            changes = self.store.apply(
                [Mutation(K.CHANGE_RECORD, self.prefix, self._key(rid), row, if_version=cur.version)]
            )
            if changes[0].applied:
                return self._to_record(
                    rid,
                    row,
                    frozenset({"vector", "text", "metadata", "namespace", "expires_at", "timestamps", "importance"}),
                )
        raise FailedPrecondition(f"record {rid!r} is being updated concurrently; retry the patch", code="conflict")

    def delete(self, ids: str | Sequence[str] | None = None, *, filter: Mapping[str, Any] | None = None) -> int:
        """Delete records by id and/or by filter, with their edges; returns how many existed."""
        self._check_open()
        if ids is None and filter is None:
            raise InvalidArgument("delete needs ids or a filter (use delete(filter={}) to delete everything)")
        id_list = [ids] if isinstance(ids, str) else list(ids or [])
        V.batch(id_list, "ids")
        for i, rid in enumerate(id_list):
            V.record_ref(rid, f"ids[{i}]")
        targets = dict.fromkeys(id_list)
        if filter is not None:
            flt = compile_filter(filter)
            for rid, _ in self._iter_live(flt):
                targets[rid] = None
        self.load()
        deleted = 0
        tlist = list(targets)
        for start in range(0, len(tlist), 1000):
            chunk = tlist[start : start + 1000]
            now = time.time()
            muts = []
            for rid in chunk:
                hlc, node = self.hlc.now()
                muts.append(
                    Mutation(K.CHANGE_RECORD, self.prefix, self._key(rid), RecordRow(hlc, node, True, updated_at=now))
                )
                muts.extend(self._edge_tombstones(rid, now))
            changes = self.store.apply(muts)
            for c in changes:
                if (
                    c.mutation.kind == K.CHANGE_RECORD
                    and c.applied
                    and isinstance(c.old, RecordRow)
                    and c.old.live(now)
                ):
                    deleted += 1
            # A link racing with this delete may have landed between the edge
            # lookup and the tombstone; sweep the deleted ids' edges once more.
            late = [m for rid in chunk for m in self._edge_tombstones(rid, now)]
            if late:
                self.store.apply(late)
        return deleted

    def _edge_tombstones(self, rid: str, now: float) -> list[Mutation]:
        """Tombstones for every live edge touching ``rid`` (both directions)."""
        return edge_tombstones(self.store, self.hlc, self.prefix, rid, now)

    def refresh_ttl(self, ids: str | Sequence[str]) -> int:
        """Restart the TTL clock of live records that have a TTL; returns how many."""
        self._check_open()
        id_list = [ids] if isinstance(ids, str) else list(ids)
        now = time.time()
        muts = []
        for rid in id_list:
            cur = self.store.get_record(self._key(V.record_ref(rid)), vector=True)
            if cur is None or not cur.live(now) or cur.ttl_seconds is None:
                continue
            hlc, node = self.hlc.now()
            row = RecordRow(
                hlc,
                node,
                False,
                cur.created_at,
                now,
                now + cur.ttl_seconds,
                cur.namespace,
                cur.metadata,
                cur.text,
                cur.vector,
                cur.importance,
                cur.ttl_seconds,
            )
            muts.append(Mutation(K.CHANGE_RECORD, self.prefix, self._key(rid), row, if_version=cur.version))
        if not muts:
            return 0
        self.load()
        return sum(1 for c in self.store.apply(muts) if c.applied)

    # ------------------------------------------------------------------ read
    def _to_record(self, rid: str, row: RecordRow, include: frozenset[str]) -> Record:
        """The public form of a row; with "vector" in ``include`` the row must hold it (see ``_records``)."""
        vec = None
        if "vector" in include:
            if row.vector_pending:
                raise RuntimeError(f"internal error: record {rid!r} was read without its vector")
            vec = row.vector_array()
        return Record(
            id=rid,
            vector=vec.tolist() if vec is not None else None,
            text=row.text if "text" in include else None,
            metadata=row.metadata if "metadata" in include else {},
            namespace=row.namespace if "namespace" in include else (),
            expires_at=row.expires_at if "expires_at" in include else None,
            ttl_seconds=row.ttl_seconds if "expires_at" in include else None,
            importance=row.importance if "importance" in include else None,
            created_at=row.created_at if "timestamps" in include else None,
            updated_at=row.updated_at if "timestamps" in include else None,
            version=version_str(row.version),
        )

    def _records(
        self,
        pairs: Sequence[tuple[str, RecordRow | None]],
        inc: frozenset[str],
        now: float,
        flt: Filter | None = None,
    ) -> list[Record | None]:
        """Public records of ``(id, row)`` pairs, None where the row is absent or not live.

        Rows are read without their vectors; when ``inc`` asks for them they
        are read here in one multi-get. A row that changed meanwhile is read
        again and must still match ``flt`` (the filter its caller selected it by).
        """
        rows = [row for _, row in pairs]
        if "vector" in inc:
            rows = self.store.load_vectors([self._key(rid) for rid, _ in pairs], rows)
        out: list[Record | None] = []
        for (rid, seen), row in zip(pairs, rows, strict=True):
            # A row read again (it changed meanwhile) must still match the caller's filter.
            stale = (
                row is not seen
                and flt is not None
                and row is not None
                and not flt.matches(rid, row.namespace, row.metadata)
            )
            if row is None or not row.live(now) or stale:
                out.append(None)
            else:
                out.append(self._to_record(rid, row, inc))
        return out

    _ALL = frozenset({"vector", "text", "metadata", "namespace", "expires_at", "timestamps", "importance"})

    def get(self, id: str, *, include: Iterable[str] | None = None, refresh_ttl: bool = False) -> Record | None:
        """The live record with this id, or None. ``include`` defaults to every field."""
        got = self.get_many([id], include=include, refresh_ttl=refresh_ttl)
        return got[0] if got else None

    def get_many(
        self, ids: Sequence[str], *, include: Iterable[str] | None = None, refresh_ttl: bool = False
    ) -> list[Record]:
        """Live records for these ids, in the given order; missing ids are skipped."""
        self._check_open()
        inc = self._ALL if include is None else V.include(include)
        V.batch(ids, "ids")
        keys = [self._key(V.record_ref(rid, f"ids[{i}]")) for i, rid in enumerate(ids)]
        now = time.time()
        rows = self.store.get_records(keys)
        out = [rec for rec in self._records(list(zip(ids, rows, strict=True)), inc, now) if rec is not None]
        if refresh_ttl and out:
            self.refresh_ttl([r.id for r in out])
        return out

    def _iter_live(
        self, flt: Filter | None, start_id: str | None = None, id_prefix: str = "", dl: Deadline | None = None
    ) -> Iterator[tuple[str, RecordRow]]:
        now = time.time()
        start = self._key(start_id) if start_id is not None else None
        for n, (k, v) in enumerate(self.store.iter_prefix("records", self._key(id_prefix), start=start)):
            if dl is not None and not n & MASK:
                dl.check()
            row = decode_record(v)
            if not row.live(now):
                continue
            rid = K.record_id_of(k)
            if flt is not None and not flt.matches(rid, row.namespace, row.metadata):
                continue
            yield rid, row

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """Number of live records (matching ``filter`` if given).

        Under a ``budget.query_budget`` the time spent reading records is bounded (DeadlineExceeded past it).
        """
        self._check_open()
        flt = compile_filter(filter)
        dl = current_deadline("count")
        self.load()
        vindex = self.vindex
        now = time.time()
        if flt is None:
            expired = sum(1 for t in list(vindex.expires.values()) if t <= now)
            return len(vindex) - expired
        cands = self.filter_candidates(flt, dl)
        labels = cands.labels
        if cands.exact:
            # The payload index answered the whole filter: count bits, read no record.
            return len(labels) - self._expired_among(labels, now)
        if len(labels) * 4 > len(vindex):
            return sum(1 for _ in self._iter_live(flt, dl=dl))
        # The index narrowed the candidates well: read only their rows.
        found = 0
        arr = cands.array.tolist()
        for i in range(0, len(arr), 1024):
            if dl is not None:
                dl.check()
            chunk = arr[i : i + 1024]
            ids = [name or "" for name in vindex.names_of(chunk)]
            for rid, row in zip(ids, self.rows(ids), strict=True):
                if row is not None and row.live(now) and flt.matches(rid, row.namespace, row.metadata):
                    found += 1
        return found

    def _expired_among(self, labels: BitMap, now: float) -> int:
        """How many of ``labels`` are past their TTL but not yet swept."""
        expires = self.vindex.expires
        if not expires:
            return 0
        if len(labels) < len(expires):
            return sum(1 for lb in labels if (t := expires.get(lb)) is not None and t <= now)
        return sum(1 for lb, t in list(expires.items()) if t <= now and lb in labels)

    def scan(
        self,
        *,
        cursor: str | None = None,
        limit: int = 100,
        id_prefix: str | None = None,
        namespace_prefix: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        include: Iterable[str] | None = None,
    ) -> ScanPage:
        """A page of live records in id order; pass ``next_cursor`` back for the next page.

        Under a ``budget.query_budget`` the time spent reading records is bounded (DeadlineExceeded past it).
        """
        self._check_open()
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= V.MAX_BATCH:
            raise InvalidArgument(f"limit must be an integer from 1 to {V.MAX_BATCH}", code="invalid_limit")
        inc = self._ALL if include is None else V.include(include)
        flt = compile_filter(filter) if filter else None
        if namespace_prefix:
            # Joined as nodes, so the argument does not count against the filter's size bound.
            ns_node = NamespacePrefix(V.namespace(namespace_prefix, "namespace_prefix"))
            flt = Filter(ns_node if flt is None else And((flt.node, ns_node)))
        dl = current_deadline("scan")
        start_id = None
        if cursor is not None:
            try:
                start_id = base64.b64decode(cursor.encode(), altchars=b"-_", validate=True).decode() + "\x00"
            except Exception as e:
                raise InvalidArgument("cursor is not one this collection returned", code="invalid_cursor") from e
        prefix = "" if id_prefix is None else id_prefix
        if not isinstance(prefix, str):
            raise InvalidArgument("id_prefix must be a string")
        page: list[tuple[str, RecordRow | None]] = []
        more = False
        for rid, row in self._iter_live(flt, start_id=start_id, id_prefix=prefix, dl=dl):
            if len(page) == limit:
                more = True
                break
            page.append((rid, row))
        # A record deleted, or changed to no longer match, while the page was
        # read (its vector is read after its row) is left out; the cursor still
        # moves past it.
        out = [rec for rec in self._records(page, inc, time.time(), flt) if rec is not None]
        last = page[-1][0] if page else None
        return ScanPage(out, base64.urlsafe_b64encode(last.encode()).decode() if more and last else None)

    def list_namespaces(
        self,
        prefix: Sequence[str] | None = None,
        *,
        suffix: Sequence[str] | None = None,
        max_depth: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[tuple[str, ...]]:
        """Distinct namespace paths of live records, sorted, truncated to ``max_depth``.

        ``prefix``/``suffix`` segments may be ``"*"`` to match any one segment.
        """
        self._check_open()
        if max_depth is not None and (isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1):
            raise InvalidArgument("max_depth must be a positive integer", code="invalid_argument")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= V.MAX_BATCH:
            raise InvalidArgument(f"limit must be an integer from 1 to {V.MAX_BATCH}", code="invalid_limit")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgument("offset must be a non-negative integer", code="invalid_argument")
        pre = V.namespace(prefix, "prefix")
        suf = V.namespace(suffix, "suffix")
        literal = []
        for seg in pre:
            if seg == "*":
                break
            literal.append(seg)
        base = b"n" + self.prefix
        start = base + K.encode_namespace(literal)
        now = time.time()
        seen: list[tuple[str, ...]] = []
        with self.store.iterator("meta", start) as it:
            while it.valid():
                key = it.key()
                if not key.startswith(start):
                    break
                enc, _, rid = key[len(base) :].rpartition(K.NS_ID_SEP)
                ns = K.decode_namespace(enc)
                if self._ns_matches(ns, pre, suf):
                    row = self.store.get_record(self.prefix + rid)
                    if row is None or not row.live(now):
                        # Expired but not yet swept: it must not keep the path alive.
                        it.next()
                        continue
                    shown = ns[:max_depth] if max_depth is not None else ns
                    if not seen or seen[-1] != shown:
                        seen.append(shown)
                        if len(seen) >= offset + limit:
                            break
                    # Skip every other record under the shown path at once.
                    it.seek(base + K.encode_namespace(shown) + (b"\xff" if len(shown) < len(ns) else b"\x02"))
                else:
                    it.seek(base + enc + b"\x02")
        return seen[offset : offset + limit]

    @staticmethod
    def _ns_matches(ns: tuple[str, ...], pre: tuple[str, ...], suf: tuple[str, ...]) -> bool:
        if len(ns) < len(pre) or len(ns) < len(suf):
            return False
        if any(p != "*" and p != s for p, s in zip(pre, ns, strict=False)):
            return False
        return not (suf and any(p != "*" and p != s for p, s in zip(suf, ns[len(ns) - len(suf) :], strict=True)))

    # ---------------------------------------------------------------- search
    def search(
        self,
        vector: Sequence[float] | np.ndarray | None = None,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
        include: Iterable[str] | None = ("metadata", "text"),
        exact: bool = False,
        text: str | None = None,
        mode: str | None = None,
        weights: Mapping[str, float] | None = None,
        expand: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        refresh_ttl: bool = False,
    ) -> list[Hit]:
        """Nearest records to ``vector`` (or ``text``), best first.

        ``mode`` is ``"vector"`` (default when a vector is given or the
        collection embeds text), ``"text"`` (BM25) or ``"hybrid"`` (both, fused by
        reciprocal rank). ``filter`` uses the filter language; ``exact`` forces
        brute force; ``expand`` walks the graph from the hits (see docs/graph.md).
        Scores are higher-is-better: cosine similarity, dot product, or
        ``1/(1+euclidean distance)`` for l2. Under a ``budget.query_budget``
        the query's time is bounded (DeadlineExceeded past it; graph expansion
        keeps its own ``expand.timeout_ms``).
        """
        from .search import run_search

        self._check_open()
        self.load()
        return run_search(
            self,
            vector=vector,
            k=k,
            filter=filter,
            ef=ef,
            include=include,
            exact=exact,
            text=text,
            mode=mode,
            weights=weights,
            expand=expand,
            min_score=min_score,
            refresh_ttl=refresh_ttl,
        )

    def extract(
        self,
        text: str,
        extractor: Any,
        *,
        instructions: str | None = None,
        namespace: Sequence[str] | None = None,
        dedupe_threshold: float = 0.92,
        source_id: str | None = None,
    ) -> Any:
        """Extract entities and relations from ``text`` with an LLM and store them.

        ``extractor`` is an :class:`engramdb.extract.ChatExtractor` (or anything
        with its ``extract`` method). Entities become records (deduplicated by
        normalised name and vector similarity), relations become edges, all in
        one atomic write. Needs a collection with an embedder. Returns an
        ``ExtractResult`` listing what was written.
        """
        from .extraction import extract_into

        self._check_open()
        self.load()
        return extract_into(
            self,
            text,
            extractor,
            instructions=instructions,
            namespace=namespace,
            dedupe_threshold=dedupe_threshold,
            source_id=source_id,
        )

    # Internal accessors for the search module.
    @property
    def vindex(self) -> VectorIndex:
        self.load()
        assert self._vindex is not None
        return self._vindex

    @property
    def payload(self) -> PayloadIndex:
        self.load()
        assert self._payload is not None
        return self._payload

    @property
    def text_index(self) -> TextIndex | None:
        self.load()
        return self._text

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

    def rows(self, rids: Sequence[str]) -> list[RecordRow | None]:
        """Stored rows (live or not) for ids, in order."""
        return self.store.get_records([self._key(r) for r in rids])

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
        # repr keeps True, 1 and 1.0 apart, which equality of the nodes does not.
        key = repr(flt.node)
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

    def info(self) -> dict[str, Any]:
        """Configuration and live counts, for listings and metrics."""
        return {
            "name": self.name,
            "tenant": self.tenant,
            "config": self.config.model_dump(mode="json"),
            "loaded": self.loaded,
            "count": len(self._vindex) if self._vindex is not None else None,
        }
