"""The HNSW vector index of one collection (hnswlib behind a small interface).

The index owns the mapping between record ids and the integer labels that
every in-memory index (vector, payload, text) uses. It is derived data: it is
persisted as a snapshot plus the changelog sequence it contains (watermark),
and rebuilt from storage when the snapshot is missing or damaged.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import gc
import itertools
import math
import mmap
import os
import select
import signal
import struct
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hnswlib
import msgpack
import numpy as np
import xxhash
from pyroaring import BitMap

from engramdb.errors import CorruptData, EngramError

# 2: the HNSW file's checksum is XXH3-64 (hashing 150 MB with CRC-32 took
# longer than loading the index); format-1 snapshots are rebuilt.
# 3: the HNSW file holds the graph without the live vectors, which are read back
# from the "vectors" column family at load (docs/decisions.md, "One copy of each
# vector on disk"); format-2 snapshots (hnswlib's own file) still load.
SNAPSHOT_FORMAT = 3
_FULL_FORMAT = 2
# hnswlib's saveIndex header: six size_t, maxlevel (int), enterpoint (uint32), maxM, maxM0, M (size_t),
# mult (double), ef_construction (size_t); then cur_element_count level-0 records, then the upper links.
_HNSW_HEADER = struct.Struct("<6QiI3QdQ")
_GRAPH_MAGIC = b"EGRAPH\x00\x01"
_CHUNK_SLOTS = 4096  # level-0 records converted per step (bounded temporaries at any size)
# Deleted nodes allowed to pile up (as a fraction of the live count, and at
# least TOMBSTONE_MIN) before inserts reuse their slots; see VectorIndex.upsert.
TOMBSTONE_FRACTION = 0.1
TOMBSTONE_MIN = 64
# Labels live in 32-bit roaring bitmaps. Every vector change takes a new one;
# a snapshot past LABEL_COMPACT_AT is rebuilt with compact labels at load.
MAX_LABEL = 2**32 - 1
LABEL_COMPACT_AT = 2**31
_HNSW_FILE = "vector.hnsw"
# Sizes in hnswlib's allocations on 64-bit Linux (VectorIndex.memory_bytes): a pointer, an int, a
# std::mutex, a visited-list mark, one label -> slot hash map entry (node and bucket), the label-operation locks.
_PTR, _INT, _MUTEX, _VISITED, _HASH_ENTRY = 8, 4, 40, 2, 40
_LABEL_LOCKS = 65536
_META_FILE = "vector.meta"
# What VectorIndex.load reads a graph-only snapshot's vectors from: every stored (key prefix + record
# id UTF-8, float32 bytes) of the collection, and the vectors of given record ids found elsewhere (None: none).
VectorScan = Callable[[], Iterable[tuple[bytes, bytes]]]
VectorFetch = Callable[[list[str]], list[bytes | None]]
# The vectors records had before changes after a watermark (given), oldest change first:
# the first of a record is its vector as of that watermark.
VectorsReplaced = Callable[[int], Iterable[tuple[bytes, bytes]]]


class VectorIndex:
    """HNSW over float32 vectors with string ids, TTL awareness and snapshots."""

    def __init__(
        self,
        dim: int,
        metric: str,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        capacity: int = 1024,
        num_threads: int = 0,
    ):
        self.dim = dim
        self.metric = metric
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._index = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=dim)
        self._index.init_index(max_elements=capacity, M=m, ef_construction=ef_construction, allow_replace_deleted=True)
        self._index.set_ef(1)  # the per-query ef travels as the requested k (see knn)
        if num_threads > 0:
            self._index.set_num_threads(num_threads)
        self._id_of: dict[int, str] | None = {}
        # Until the first write, a loaded snapshot's ids stay packed (see _PackedIds):
        # building 100k dict entries was a tenth of a cold start.
        self._packed: _PackedIds | None = None
        # The reverse map is built on first use: a cold start that only
        # searches never needs it, and building it costs as much as loading.
        self._label_of: dict[str, int] | None = {}
        self.expires: dict[int, float] = {}  # only labels whose record has a TTL
        self.live = BitMap()
        self.next_label = 1
        self.watermark = 0
        self.extra = b""  # opaque bytes stored with the snapshot (the payload index)
        # (size, xxh3, format) of the HNSW file on disk
        self._snapshot_file: tuple[int, int, int] | None = None
        # Whether snapshots keep hnswlib's own file, live vectors included: a faster load for
        # twice the disk (docs/decisions.md, "One copy of each vector on disk").
        self.snapshot_vectors = False
        # Resizing reallocates hnswlib's arrays: searches must not run during it.
        # Ordinary adds and deletes are safe alongside searches (hnswlib locks
        # per node), so they only serialise among themselves.
        self._write_lock = threading.RLock()
        self._readers = 0
        self._readers_lock = threading.Lock()
        self._no_readers = threading.Condition(self._readers_lock)
        # Threads waiting for the readers to leave: a reader leaving notifies only
        # when there is one (Condition.notify_all costs a search a few microseconds).
        self._waiting = 0

    # ----------------------------------------------------------------- state
    def __len__(self) -> int:
        ids, packed = self._id_of, self._packed
        if ids is None and packed is not None:
            return len(packed)
        return len(self.id_of)

    @property
    def id_of(self) -> dict[int, str]:
        """Label → record id of every live vector (unpacked on first use after a load)."""
        ids = self._id_of
        if ids is None:
            with self._write_lock:
                if self._id_of is None:
                    assert self._packed is not None
                    self._id_of = self._packed.to_dict()
                    self._packed = None  # readers re-check _id_of first (see name_of)
                ids = self._id_of
        return ids

    def name_of(self, label: int) -> str | None:
        """The record id of ``label``, or None if it has no live vector (cheap on a fresh load)."""
        ids = self._id_of
        if ids is not None:
            return ids.get(label)
        packed = self._packed
        if packed is not None:
            return packed.get(label)
        # Unpacked meanwhile: the dict is the truth.
        return self.id_of.get(label)

    def names_of(self, labels: Sequence[int]) -> list[str | None]:
        """``name_of`` for many labels at once."""
        ids, packed = self._id_of, self._packed
        if ids is None and packed is not None:
            if len(labels) <= 64:  # a search's hits: usually ids looked up before (the memo)
                return [packed.get(lb) for lb in labels]
            return packed.get_many(labels)
        get = self.id_of.get
        return [get(lb) for lb in labels]

    @property
    def label_of(self) -> dict[str, int]:
        """Record id → label (the inverse of ``id_of``)."""
        lo = self._label_of
        if lo is None:
            with self._write_lock:  # writers change id_of under it
                if self._label_of is None:
                    self._label_of = {rid: label for label, rid in self.id_of.items()}
                lo = self._label_of
        return lo

    # ---------------------------------------------------------------- memory
    def memory_bytes(self) -> int:
        """Memory hnswlib holds for this index, computed from its parameters (O(1), no walk).

        hnswlib allocates per slot of ``max_elements`` (the capacity, which grows by doubling):
        the level-0 record (``dim`` float32s, ``2·M`` int32 links and their count, the 8-byte
        label), a pointer to the upper-level links, the element's level and its lock, and 2 bytes
        in the visited list of a search. Per element in use: the label → slot hash map entry and,
        on average ``1/(M-1)`` upper levels of ``M`` links each. Plus 65,536 label-operation
        locks per index. Allocator overhead and the visited lists of concurrent searches beyond
        the first are not counted.
        """
        idx = self._index
        cap = int(idx.get_max_elements())
        used = int(idx.get_current_count())
        m = max(2, self.m)
        level0 = self.dim * 4 + 2 * m * 4 + 4 + 8
        per_slot = level0 + _PTR + _INT + _MUTEX + _VISITED
        upper = (m * 4 + 4) / (m - 1)
        return int(cap * per_slot + used * (_HASH_ENTRY + upper) + _LABEL_LOCKS * _MUTEX)

    def id_maps_bytes(self, sample: int = 256) -> int:
        """Memory of the label ↔ record id maps, expiry times and the live bitmap, estimated.

        The dict tables are measured exactly (``sys.getsizeof``); the key and value objects
        from up to ``sample`` entries, scaled to the whole map, so the cost does not grow with
        the collection. The id → label map shares its strings and integers with label → id.
        """
        total = self.live.__sizeof__()
        ids, packed, rev = self._id_of, self._packed, self._label_of
        if ids is None and packed is not None:
            total += packed.nbytes()
        elif ids is not None:
            total += sys.getsizeof(ids) + _objects_bytes(ids, sample)
        if rev is not None:
            total += sys.getsizeof(rev)
        exp = self.expires
        total += sys.getsizeof(exp) + _objects_bytes(exp, sample)
        return total

    def normalize(self, vectors: np.ndarray) -> np.ndarray:
        """Cosine is inner product over unit vectors: normalise once on the way in."""
        if self.metric != "cosine":
            return vectors
        norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
        return vectors / norms

    def score(self, dist: np.ndarray) -> np.ndarray:
        """Turn hnswlib distances into scores where higher is always better, always finite.

        Vectors are finite float32, but the dot product or distance of two large
        ones can overflow float32 (to infinity, or NaN from inf - inf); such a
        score saturates at the largest float32 and NaN ranks last.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            scores = 1.0 / (1.0 + np.sqrt(np.maximum(dist, 0.0))) if self.metric == "l2" else 1.0 - dist
        if not np.isfinite(scores).all():
            top = np.finfo(scores.dtype).max
            scores = np.nan_to_num(scores, nan=-top, posinf=top, neginf=-top)
        return scores

    def score_list(self, dist: np.ndarray) -> list[float]:
        """``score(dist).tolist()``, cheaper for the few distances of one search (the same floats)."""
        if self.metric == "l2":
            return self.score(dist).tolist()
        # 1 - dist in float32 cannot overflow, so no error state is needed; a sum of
        # float32 values cannot overflow a float64, so it is finite iff every one is.
        out: list[float] = (1.0 - dist).tolist()
        if not math.isfinite(sum(out)):
            return self.score(dist).tolist()
        return out

    # ---------------------------------------------------------------- writes
    def upsert(self, ids: list[str], vectors: np.ndarray, expires: Iterable[float | None]) -> list[int]:
        """Insert or replace vectors (already normalised); returns their labels.

        A replaced vector gets a new label (the old node is marked deleted):
        hnswlib's in-place update re-selects the links of the whole old
        neighbourhood, ~5x the cost of a fresh insert, and leaves the moved
        node with few incoming links (bench/bench_library.py, docs/reliability.md).
        Deleted nodes are reused, through that same costly path, only once
        more than ``TOMBSTONE_FRACTION`` of the live count have piled up.
        """
        with self._write_lock:
            if self.next_label + len(ids) > MAX_LABEL:
                raise CorruptData(
                    f"the vector index has used up its {MAX_LABEL:,} labels; it is rebuilt with compact "
                    "labels when the database is next opened"
                )
            labels = list(range(self.next_label, self.next_label + len(ids)))
            self.next_label += len(ids)
            self._ensure_capacity(len(ids))
            tombstones = self._index.get_current_count() - len(self.live)
            reuse = tombstones > max(TOMBSTONE_MIN, int(len(self.live) * TOMBSTONE_FRACTION))
            # The new nodes go in first, invisible until their ids are mapped,
            # so a concurrent search finds either the old vector or the new one.
            self._index.add_items(vectors, np.asarray(labels, dtype=np.uint64), replace_deleted=reuse)
            for rid, label, exp in zip(ids, labels, expires, strict=True):
                self._drop(rid)
                self.label_of[rid] = label
                self.id_of[label] = rid
                self.live.add(label)
                if exp is not None:
                    self.expires[label] = exp
            return labels

    def set_expiry(self, label: int, expires_at: float | None) -> None:
        """Change a live label's expiry without touching its vector."""
        with self._write_lock:
            if expires_at is None:
                self.expires.pop(label, None)
            else:
                self.expires[label] = expires_at

    def delete(self, rid: str) -> int | None:
        """Remove a record's vector; returns the label it had."""
        with self._write_lock:
            return self._drop(rid)

    def _drop(self, rid: str) -> int | None:
        label = self.label_of.pop(rid, None)
        if label is None:
            return None
        self.id_of.pop(label, None)
        self.expires.pop(label, None)
        self.live.discard(label)
        self._index.mark_deleted(label)
        return label

    def scrub_deleted(self) -> int:
        """Overwrite the vector of every deleted node with zeros; returns how many (GDPR erase).

        hnswlib only flags a deleted node: its vector stays in memory and in
        every snapshot until an insert reuses the slot. Replacing all deleted
        slots at once (``replace_deleted`` takes each from hnswlib's set of
        deleted nodes) with zero vectors under throwaway labels, then deleting
        those again, leaves the slots reusable and holding nothing. Searches
        wait meanwhile: for a moment the zero vectors are live nodes. Each
        slot costs about one insert.
        """
        with self._write_lock:
            n = self._index.get_current_count() - len(self.live)
            if n <= 0:
                return 0
            if self.next_label + n > MAX_LABEL:
                raise CorruptData(
                    f"the vector index has used up its {MAX_LABEL:,} labels; it is rebuilt with compact "
                    "labels when the database is next opened"
                )
            labels = np.arange(self.next_label, self.next_label + n, dtype=np.uint64)
            self.next_label += n
            with self._readers_lock:
                self._wait_no_readers()
                self._index.add_items(np.zeros((n, self.dim), dtype=np.float32), labels, replace_deleted=True)
                for label in labels.tolist():
                    self._index.mark_deleted(label)
            return n

    def _ensure_capacity(self, new: int) -> None:
        need = self._index.get_current_count() + new
        cap = self._index.get_max_elements()
        if need <= cap:
            return
        target = max(need, cap * 2)
        with self._readers_lock:
            self._wait_no_readers()
            self._index.resize_index(target)

    def _wait_no_readers(self) -> None:
        """Wait (holding ``_readers_lock``) until no search is inside hnswlib."""
        self._waiting += 1
        try:
            while self._readers:
                self._no_readers.wait()
        finally:
            self._waiting -= 1

    # ----------------------------------------------------------------- reads
    def _enter(self) -> None:
        with self._readers_lock:
            self._readers += 1

    def _exit(self) -> None:
        with self._readers_lock:
            self._readers -= 1
            if not self._readers and self._waiting:
                self._no_readers.notify_all()

    def knn(
        self,
        query: np.ndarray,
        k: int,
        ef: int | None = None,
        filter_fn: Callable[[int], bool] | None = None,
        matching: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels and distances of up to ``k`` nearest live vectors (best first).

        ``matching``: at most this many labels pass ``filter_fn`` (asking
        hnswlib for more than exist makes it fail and retry smaller).
        """
        # hnswlib cannot return more than the live (or matching) nodes.
        most = len(self) if matching is None else min(len(self), matching)
        k = min(k, most)
        if k <= 0:
            return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)
        ef_eff = max(ef or self.ef_search, k)
        self._enter()
        try:
            # hnswlib's ef is index-wide state, so setting it per query would let
            # concurrent queries run at each other's ef. Its search keeps
            # max(ef, k) candidates either way: asking for ef results (ef stays
            # 1) is the same walk, with no shared state; the best k are kept.
            fetch = min(ef_eff, most)
            while True:
                try:
                    labels, dists = self._index.knn_query(query, k=fetch, filter=filter_fn, num_threads=1)
                    return labels[0][:k], dists[0][:k]
                except RuntimeError:
                    # hnswlib fails rather than return fewer than asked (a
                    # restrictive filter, or fewer reachable nodes than ef).
                    # Asking for fewer also walks with a smaller ef, so halve
                    # towards k, then below it: fewer is the right answer then.
                    if fetch == 1:
                        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)
                    fetch = max(k, fetch // 2) if fetch > k else fetch // 2
                    k = min(k, fetch)
        finally:
            self._exit()

    def vectors(self, labels: list[int]) -> np.ndarray:
        """Stored vectors of live labels (normalised for cosine)."""
        if not labels:
            return np.empty((0, self.dim), dtype=np.float32)
        self._enter()
        try:
            return np.asarray(self._index.get_items(labels, return_type="numpy"), dtype=np.float32)
        finally:
            self._exit()

    def exact(
        self, query: np.ndarray, labels: list[int], k: int, vecs: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force top-k among ``labels``: (labels, distances) like ``knn``.

        ``vecs`` (the labels' vectors, row for row) avoids hnswlib's slow
        per-item copy when the caller can read them faster elsewhere.
        """
        if not labels:
            return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)
        if vecs is None:
            vecs = self.vectors(labels)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is scored in score()
            if self.metric == "l2":
                diff = vecs - query[None, :]
                dist = np.einsum("ij,ij->i", diff, diff)
            else:
                dist = 1.0 - vecs @ query
        k = min(k, len(labels))
        part = np.argpartition(dist, k - 1)[:k] if k < len(labels) else np.arange(len(labels))
        order = part[np.argsort(dist[part], kind="stable")]
        return np.asarray(labels, dtype=np.uint64)[order], dist[order].astype(np.float32)

    # ------------------------------------------------------------- snapshots
    def save(self, directory: str | os.PathLike[str], watermark: int, extra: bytes = b"") -> None:
        """Write a crash-safe snapshot: both files under temp names, fsync, rename.

        The metadata file is renamed last and is the commit point. ``extra``
        (the payload index) is stored inside it, so it can never be newer or
        older than the vectors it describes.
        """
        with self._write_lock:
            self._snapshot_file = self._write_snapshot(Path(directory), watermark, extra)

    def _write_snapshot(self, d: Path, watermark: int, extra: bytes) -> tuple[int, int, int]:
        d.mkdir(parents=True, exist_ok=True)
        tmp_hnsw = d / (_HNSW_FILE + ".tmp")
        if self.snapshot_vectors:
            fmt = _FULL_FORMAT
            self._index.save_index(str(tmp_hnsw))
            size, digest = _file_digest(tmp_hnsw)
            with open(tmp_hnsw, "rb") as f:
                os.fsync(f.fileno())
        else:
            # hnswlib writes its whole file (vectors inline) to an anonymous scratch file;
            # what is kept is that file without the live vectors ("vectors" holds them).
            fmt = SNAPSHOT_FORMAT
            with _scratch_file(d) as (fd, path):
                self._index.save_index(path)
                size, digest = _strip_vectors(fd, tmp_hnsw, self.dim, self.live)
        os.replace(tmp_hnsw, d / _HNSW_FILE)
        self._write_meta(d, watermark, extra, size, digest, fmt)
        return size, digest, fmt

    def save_forked(
        self, directory: str | os.PathLike[str], watermark: int, extra: Callable[[], bytes] = bytes
    ) -> Callable[[float], bool] | None:
        """Start :meth:`save` in a forked copy of this process; returns a function that waits for it.

        hnswlib's ``save_index`` holds the GIL for its whole run (0.35-0.49 s
        at 100k vectors), pausing every thread of the process. The child
        writes the index as it was at the fork (copy-on-write) while this
        process goes on serving. The returned function waits up to its
        argument in seconds and returns True once the snapshot is committed
        (False if the child failed or was too slow: it is killed, nothing
        is committed that was not complete). None where fork is unavailable.
        ``extra`` is called in the child (it serialises the payload index as
        it was at the fork). The caller must not start another save of the
        same directory meanwhile, nor change what ``extra`` reads until this
        returns.
        """
        if not hasattr(os, "fork"):
            return None
        d = Path(directory)
        parent = os.getpid()
        r, w = os.pipe()
        with self._write_lock:  # no add or delete is half done in the copy
            try:
                pid = os.fork()
            except OSError:
                os.close(r)
                os.close(w)
                return None
            if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
                code = 1
                try:
                    os.close(r)
                    _child_setup(parent, w)
                    size, digest, fmt = self._write_snapshot(d, watermark, extra())
                    os.write(w, f"{size} {digest} {fmt}".encode())
                    code = 0
                finally:
                    os._exit(code)
        os.close(w)

        def wait(timeout: float) -> bool:
            got: list[bytes] = []
            try:
                poller = select.poll()  # not select(): fds above 1024 are common here
                poller.register(r, select.POLLIN)
                if poller.poll(max(0, int(timeout * 1000))):
                    got = os.read(r, 64).split()
            finally:
                os.close(r)
                # Whatever happened, the child ends here: it has reported (and is
                # exiting), or it is killed before it can commit anything more.
                if len(got) != 3:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): the pipe tells
                    code = 0
            if len(got) != 3 or code != 0:
                return False
            with self._write_lock:
                self._snapshot_file = (int(got[0]), int(got[1]), int(got[2]))
                self.watermark = watermark
            return True

        return wait

    def save_watermark(self, directory: str | os.PathLike[str], watermark: int, extra: bytes = b"") -> bool:
        """Move the snapshot's watermark forward without rewriting the HNSW file.

        Only valid when nothing changed since the snapshot (the caller knows);
        lets an idle collection stop pinning old changelog entries. False if
        this index has no snapshot of its own to move.
        """
        d = Path(directory)
        with self._write_lock:
            if self._snapshot_file is None:
                return False
            self._write_meta(d, watermark, extra, *self._snapshot_file)
            return True

    def _write_meta(self, d: Path, watermark: int, extra: bytes, size: int, digest: int, fmt: int) -> None:
        """Write the metadata file, the snapshot's commit point: temp name, fsync, rename."""
        meta = {
            "format": fmt,
            "dim": self.dim,
            "metric": self.metric,
            "m": self.m,
            "ef_construction": self.ef_construction,
            "next_label": self.next_label,
            "watermark": watermark,
            **(packed.as_meta() if (packed := self._packed) is not None else _PackedIds.pack(self.id_of)),
            "exp_labels": list(self.expires.keys()),
            "exp_at": list(self.expires.values()),
            "hnsw_size": size,
            "hnsw_xxh3": digest,
            "capacity": self._index.get_max_elements(),
            "extra": extra,
        }
        payload = msgpack.packb(meta, use_bin_type=True)
        tmp_meta = d / (_META_FILE + ".tmp")
        with open(tmp_meta, "wb") as f:
            f.write(payload + zlib.crc32(payload).to_bytes(4, "big"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_meta, d / _META_FILE)
        _fsync_dir(d)
        self.watermark = watermark

    @staticmethod
    def _read_meta(d: Path) -> dict[str, Any]:
        try:
            raw = (d / _META_FILE).read_bytes()
        except FileNotFoundError as e:
            raise CorruptData("no vector index snapshot") from e
        payload, crc = raw[:-4], raw[-4:]
        if len(raw) < 5 or zlib.crc32(payload).to_bytes(4, "big") != crc:
            raise CorruptData("vector index snapshot metadata failed its checksum")
        meta: dict[str, Any] = msgpack.unpackb(payload, raw=False)
        return meta

    @staticmethod
    def stored_watermark(directory: str | os.PathLike[str]) -> int:
        """The watermark of the snapshot in ``directory`` without loading it (CorruptData if none)."""
        return int(VectorIndex._read_meta(Path(directory))["watermark"])

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        dim: int,
        metric: str,
        m: int,
        ef_construction: int,
        ef_search: int,
        vectors: VectorScan | None = None,
        fetch: VectorFetch | None = None,
        key_prefix: bytes = b"",
        replaced: VectorsReplaced | None = None,
    ) -> VectorIndex:
        """Load a snapshot; raises CorruptData if it is missing, damaged or stale-format.

        A current snapshot holds no live vectors: ``vectors`` yields the collection's stored
        ``(key_prefix + record id UTF-8, float32 bytes)`` (the "vectors" column family), ``replaced``
        the vectors that changes after the snapshot's watermark replaced or deleted (the first of
        each record is the one its node had in the snapshot, which wins), and ``fetch`` reads those
        still lacking (rows holding their vector inline; None: gone). So every node gets back the
        vector it had when the graph was saved, and the changelog replay that follows every load
        moves it as the original process did. A live node whose vector is found nowhere makes the
        snapshot CorruptData (rebuilt from storage), as does a missing ``vectors``. Format-2
        snapshots (hnswlib's own file) load as they are.
        """
        d = Path(directory)
        meta = VectorIndex._read_meta(d)
        fmt = meta.get("format")
        if fmt not in (SNAPSHOT_FORMAT, _FULL_FORMAT) or meta["dim"] != dim or meta["metric"] != metric:
            raise CorruptData("vector index snapshot does not match the collection")
        if meta["next_label"] >= LABEL_COMPACT_AT:
            raise CorruptData("vector index snapshot has used half its labels; rebuilding with compact labels")
        if fmt == SNAPSHOT_FORMAT and (vectors is None or "name_ends" not in meta):
            raise CorruptData("vector index snapshot needs the stored vectors to load")
        hnsw_path = d / _HNSW_FILE
        graph: bytes | None = None
        try:
            if fmt == SNAPSHOT_FORMAT:
                # Small (no vectors): read once, hashed from memory.
                graph = hnsw_path.read_bytes()
                size, digest = len(graph), xxhash.xxh3_64_intdigest(graph)
            else:
                size, digest = _file_digest(hnsw_path)
        except FileNotFoundError as e:
            raise CorruptData("vector index snapshot file is missing") from e
        if size != meta["hnsw_size"] or digest != meta["hnsw_xxh3"]:
            raise CorruptData("vector index snapshot failed its checksum")
        self = cls(dim, metric, m=meta["m"], ef_construction=meta["ef_construction"], ef_search=ef_search, capacity=1)
        idx = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=dim)
        try:
            if graph is None:
                idx.load_index(str(hnsw_path), max_elements=meta["capacity"], allow_replace_deleted=True)
            else:
                assert vectors is not None
                with _scratch_file(d) as (fd, path):
                    _restore_vectors(
                        graph,
                        dim,
                        _PackedIds.unpack(meta),
                        vectors,
                        fetch,
                        fd,
                        key_prefix,
                        replaced(meta["watermark"]) if replaced is not None else (),
                    )
                    del graph  # the scratch file now holds all of it
                    idx.load_index(path, max_elements=meta["capacity"], allow_replace_deleted=True)
        except EngramError:
            # CorruptData, and the storage errors of reading the vectors back (unavailable,
            # a read that kept conflicting): those say nothing about the snapshot, and a
            # rebuild would not help. The load fails and is tried again by the next access.
            raise
        except Exception as e:
            raise CorruptData(f"vector index snapshot could not be loaded: {e}") from e
        idx.set_ef(1)
        self._index = idx
        if "name_ends" in meta:
            packed = _PackedIds.unpack(meta)
            self._id_of, self._packed = None, packed
            # array.array is pyroaring's fast path (a numpy array is iterated item by item).
            self.live = BitMap(array.array("I", packed.labels.astype(np.uint32).tobytes()))
        else:  # written before the ids were packed
            labels = meta["labels_u64"] if "labels_u64" in meta else meta["ids"]
            if isinstance(labels, bytes):
                labels = np.frombuffer(labels, dtype="<u8").tolist()
            self._id_of = dict(zip(labels, meta["names"], strict=True))
            self.live = BitMap(self._id_of.keys())
        self._label_of = None
        self.expires = dict(zip(meta["exp_labels"], meta["exp_at"], strict=True))
        self.next_label = meta["next_label"]
        self.watermark = meta["watermark"]
        self.extra = meta.get("extra", b"")
        self._snapshot_file = (size, digest, fmt)
        return self


def _objects_bytes(d: dict[Any, Any], sample: int = 256) -> int:
    """The keys' and values' own objects in ``d``, from up to ``sample`` entries scaled to ``len(d)``.

    Objects a key or value shares with others (small ints, interned strings) count each time: an estimate
    from above. A writer changing ``d`` meanwhile only costs the sample (retried, then given up as 0).
    """
    n = len(d)
    if not n:
        return 0
    for _ in range(3):
        try:
            items = list(itertools.islice(d.items(), sample))
        except RuntimeError:  # changed size during the iteration
            continue
        if not items:
            return 0
        got = sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in items)
        return int(got * n / len(items))
    return 0


class _PackedIds:
    """A snapshot's label → id map as stored: sorted labels, and the ids' UTF-8 back to back.

    Answers single lookups without building a dict (a search after a cold
    start needs ten); the engine turns it into a dict on its first write.
    """

    __slots__ = ("_seen", "blob", "ends", "labels")

    def __init__(self, labels: np.ndarray, blob: bytes, ends: np.ndarray):
        # Ids already looked up: searches keep returning the same hot labels,
        # and a dict hit is ~20x cheaper than a search of the packed arrays.
        self._seen: dict[int, str] = {}
        # Labels are below 2**32 (MAX_LABEL): viewed as int64, searchsorted takes
        # a Python int as is (against uint64 it converts the whole array per call).
        self.labels, self.blob, self.ends = labels.view("<i8"), blob, ends

    @staticmethod
    def pack(id_of: dict[int, str]) -> dict[str, bytes]:
        labels = np.fromiter(id_of.keys(), dtype="<u8", count=len(id_of))
        order = np.argsort(labels, kind="stable")
        names = list(id_of.values())
        encoded = [names[i].encode() for i in order.tolist()]
        ends = np.cumsum(np.fromiter(map(len, encoded), dtype="<u8", count=len(encoded)), dtype="<u8")
        return {"labels_u64": labels[order].tobytes(), "name_blob": b"".join(encoded), "name_ends": ends.tobytes()}

    @classmethod
    def unpack(cls, meta: dict[str, Any]) -> _PackedIds:
        labels = np.frombuffer(meta["labels_u64"], dtype="<u8")
        ends = np.frombuffer(meta["name_ends"], dtype="<u8")
        if len(ends) != len(labels) or (len(ends) and int(ends[-1]) != len(meta["name_blob"])):
            raise CorruptData("vector index snapshot metadata is inconsistent")
        return cls(labels, meta["name_blob"], ends)

    def as_meta(self) -> dict[str, bytes]:
        return {"labels_u64": self.labels.tobytes(), "name_blob": self.blob, "name_ends": self.ends.tobytes()}

    def __len__(self) -> int:
        return len(self.labels)

    def nbytes(self) -> int:
        """Memory of the packed arrays and the ids looked up so far (those sampled, see ``_objects_bytes``)."""
        seen = self._seen
        return int(self.labels.nbytes + len(self.blob) + self.ends.nbytes) + sys.getsizeof(seen) + _objects_bytes(seen)

    def get(self, label: int) -> str | None:
        name = self._seen.get(label)
        if name is not None:
            return name
        i = int(self.labels.searchsorted(label))
        if i >= len(self.labels) or int(self.labels[i]) != label:
            return None
        start = int(self.ends[i - 1]) if i else 0
        name = self._seen[label] = self.blob[start : int(self.ends[i])].decode()
        return name

    def get_many(self, labels: Sequence[int]) -> list[str | None]:
        n = len(self.labels)
        if not n:
            return [None] * len(labels)
        want = np.asarray(labels, dtype=np.int64)
        pos = np.minimum(self.labels.searchsorted(want), n - 1)
        found = (self.labels[pos] == want).tolist()
        ends = self.ends[pos].tolist()
        starts = np.where(pos > 0, self.ends[pos - 1], 0).tolist()
        blob = self.blob
        return [blob[a:b].decode() if ok else None for ok, a, b in zip(found, starts, ends, strict=True)]

    def to_dict(self) -> dict[int, str]:
        blob = self.blob
        ends = self.ends.tolist()
        starts = [0, *ends[:-1]] if ends else []
        return {
            lb: blob[a:b].decode() for lb, a, b in zip(self.labels.tolist(), starts, self.ends.tolist(), strict=True)
        }


def _child_setup(parent: int, keep: int) -> None:
    """In a snapshot child: die with the parent, drop its signal handlers and files.

    A child outliving a killed parent could commit an old snapshot after a new
    process had trimmed the changelog past it. Inherited descriptors other than
    ``keep`` are closed, so a connection the parent closes meanwhile ends now,
    not when the child exits.
    """
    # No finaliser of the parent's objects may run here.
    gc.disable()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:
        ctypes.CDLL(None).prctl(1, ctypes.c_ulong(signal.SIGKILL))  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # died before the line above
        os._exit(1)
    os.closerange(3, keep)
    os.closerange(keep + 1, max(keep + 2, os.sysconf("SC_OPEN_MAX")))


def _file_digest(path: Path) -> tuple[int, int]:
    """Size and XXH3-64 of a file, read in 1 MiB pieces.

    Not through a mapping: every mapped page counts in the resident set while it is mapped, so
    hashing a 70 MB snapshot next to the index it came from raised the process's peak by 70 MB.
    """
    h = xxhash.xxh3_64()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(buf):
            h.update(view[:got])
            size += got
    return size, h.intdigest()


def _pread(fd: int, n: int, offset: int) -> bytes:
    """Exactly ``n`` bytes of ``fd`` at ``offset`` (CorruptData if the file is shorter)."""
    parts = []
    while n > 0:
        got = os.pread(fd, min(n, 1 << 26), offset)
        if not got:
            raise CorruptData("vector index snapshot is truncated")
        parts.append(got)
        n -= len(got)
        offset += len(got)
    return parts[0] if len(parts) == 1 else b"".join(parts)


@contextlib.contextmanager
def _scratch_file(d: Path) -> Iterator[tuple[int, str]]:
    """An anonymous file that hnswlib can open by name; gone when the block ends, even after a crash.

    A file in ``d`` unlinked at once, not a memfd: its pages are page cache the kernel can write
    back and reclaim under memory pressure, where a memfd's are unreclaimable shared memory (a
    whole index's worth, next to hnswlib's own copy while it loads, counted against a container's
    memory limit). Closed and unlinked within the load or save, it is normally never written.
    """
    fd, name = tempfile.mkstemp(dir=d, prefix=".vector-", suffix=".tmp")
    os.unlink(name)
    try:
        yield fd, (f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{fd}")
    finally:
        os.close(fd)


def _layout(head: bytes, dim: int) -> tuple[int, int, int, int]:
    """``(elements, record size, label offset, vector offset)`` from an hnswlib file header, checked."""
    offset0, capacity, n, size_per, label_off, off_data = _HNSW_HEADER.unpack(head)[:6]
    if offset0 != 0 or label_off != off_data + dim * 4 or size_per != label_off + 8 or n > capacity:
        raise CorruptData("vector index snapshot has an unexpected layout")
    return n, size_per, label_off, off_data


def _strip_vectors(src: int, dst: Path, dim: int, live: BitMap) -> tuple[int, int]:
    """Write hnswlib's file in ``src`` to ``dst`` without the live vectors (fsynced); returns size and XXH3-64.

    Layout: magic, dim (u32), hnswlib's header, each level-0 record without its vector
    (links, label), the count (u64), slots (u32) and vectors of the nodes not live (deleted
    nodes stay in the graph as routing points and their vectors are stored nowhere else),
    then hnswlib's upper-level links as they were.
    """
    total = os.fstat(src).st_size
    head = _pread(src, _HNSW_HEADER.size, 0)
    n, size_per, label_off, off_data = _layout(head, dim)
    live_sorted = np.frombuffer(live.to_array(), dtype=np.uint32).astype(np.uint64)
    h = xxhash.xxh3_64()
    dead_slots: list[np.ndarray] = []
    dead_vecs: list[bytes] = []
    with open(dst, "wb") as out:

        def put(b: bytes) -> None:
            out.write(b)
            h.update(b)

        put(_GRAPH_MAGIC + struct.pack("<I", dim) + head)
        pos = _HNSW_HEADER.size
        for start in range(0, n, _CHUNK_SLOTS):
            c = min(_CHUNK_SLOTS, n - start)
            recs = np.frombuffer(_pread(src, c * size_per, pos), dtype=np.uint8).reshape(c, size_per)
            pos += c * size_per
            put(np.hstack((recs[:, :off_data], recs[:, label_off:])).tobytes())
            labels = recs[:, label_off:].copy().view("<u8").ravel()
            if len(live_sorted):
                at = np.minimum(np.searchsorted(live_sorted, labels), len(live_sorted) - 1)
                dead = live_sorted[at] != labels
            else:
                dead = np.ones(c, dtype=bool)
            if dead.any():
                dead_slots.append(np.flatnonzero(dead) + start)
                dead_vecs.append(recs[dead, off_data:label_off].tobytes())
        slots = np.concatenate(dead_slots).astype("<u4") if dead_slots else np.empty(0, dtype="<u4")
        put(struct.pack("<Q", len(slots)) + slots.tobytes())
        for b in dead_vecs:
            put(b)
        while pos < total:
            chunk = _pread(src, min(1 << 22, total - pos), pos)
            put(chunk)
            pos += len(chunk)
        out.flush()
        os.fsync(out.fileno())
        size = out.tell()
    return size, h.intdigest()


def _restore_vectors(
    graph: bytes,
    dim: int,
    ids: _PackedIds,
    vectors: VectorScan,
    fetch: VectorFetch | None,
    fd: int,
    key_prefix: bytes = b"",
    replaced: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Write into ``fd`` the hnswlib file that ``graph`` (see ``_strip_vectors``) and the stored vectors make.

    ``replaced``: (key, vector) the records had before changes after the snapshot, oldest first.
    """
    if graph[:8] != _GRAPH_MAGIC or struct.unpack_from("<I", graph, 8)[0] != dim:
        raise CorruptData("vector index snapshot has an unexpected layout")
    p = 12 + _HNSW_HEADER.size
    head = graph[12:p]
    n, size_per, label_off, off_data = _layout(head, dim)
    stride, dimb = off_data + 8, dim * 4
    level0 = np.frombuffer(graph, dtype=np.uint8, count=n * stride, offset=p).reshape(n, stride)
    p += n * stride
    (k,) = struct.unpack_from("<Q", graph, p)
    p += 8
    dead_slots = np.frombuffer(graph, dtype="<u4", count=k, offset=p).astype(np.intp)
    p += 4 * k
    dead_vecs = np.frombuffer(graph, dtype=np.uint8, count=k * dimb, offset=p).reshape(k, dimb)
    p += k * dimb
    if k and int(dead_slots.max()) >= n:
        raise CorruptData("vector index snapshot has an unexpected layout")
    # Slot of each (label-sorted) record id of the snapshot.
    labels = level0[:, off_data:].copy().view("<u8").ravel()
    order = np.argsort(labels, kind="stable")
    want = ids.labels.view("<u8")
    at = np.minimum(np.searchsorted(labels[order], want), max(n - 1, 0))
    if len(want) and (n == 0 or not np.array_equal(labels[order][at], want)):
        raise CorruptData("vector index snapshot's ids do not match its graph")
    slots = order[at]
    blob, ends = ids.blob, ids.ends.tolist()
    starts = [0, *ends[:-1]] if ends else []
    # Where each record's vector goes in the image; an entry is taken out once it is written,
    # so what is left at the end lacks one.
    first = _HNSW_HEADER.size + off_data
    offset_of = {
        key_prefix + blob[a:b]: first + s * size_per for a, b, s in zip(starts, ends, slots.tolist(), strict=True)
    }

    full = _HNSW_HEADER.size + n * size_per + (len(graph) - p)
    os.ftruncate(fd, full)
    # Faulting every page in at once is faster than one fault per page as it is written.
    mm = mmap.mmap(fd, full, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    try:
        mm[: _HNSW_HEADER.size] = head
        mm[_HNSW_HEADER.size + n * size_per :] = graph[p:]
        recs = np.frombuffer(mm, dtype=np.uint8, count=n * size_per, offset=_HNSW_HEADER.size).reshape(n, size_per)
        recs[:, :off_data] = level0[:, :off_data]
        recs[:, label_off:] = level0[:, off_data:]
        if k:
            recs[dead_slots, off_data:label_off] = dead_vecs
        del recs
        take = offset_of.pop
        # The storage iterator is opened (its view taken) before the changelog is read: a
        # change committed in between is then in the changelog with the vector it replaced,
        # never missing from both.
        scan = iter(vectors())
        head_row = next(scan, None)

        def wrong_size(rid: bytes) -> CorruptData:
            name = rid[len(key_prefix) :].decode(errors="replace")
            return CorruptData(f"the stored vector of record {name!r} has the wrong size")

        # Records changed after the snapshot come first: what "vectors" holds now is not what
        # their nodes were linked by, the first vector a change after the watermark replaced
        # is. Restoring a node exactly matters: given the newer vector, the replay's re-insert
        # lands next to it and can end up reachable only through it. A key taken already is
        # skipped: added after the snapshot, or restored from an earlier entry.
        # One slice assignment per vector (a memcpy into the mapping): cheaper than batching
        # them through NumPy, which copied each vector twice. Inline: this runs once per record.
        for rid, vec in itertools.chain(replaced, (head_row,) if head_row is not None else (), scan):
            o = take(rid, None)
            if o is not None:
                if len(vec) != dimb:
                    raise wrong_size(rid)
                mm[o : o + dimb] = vec
        if offset_of and fetch is not None:
            lacking = list(offset_of)
            found = fetch([rid[len(key_prefix) :].decode() for rid in lacking])
            for rid, raw in zip(lacking, found, strict=True):
                if raw is not None and len(raw) == dimb:
                    o = take(rid)
                    mm[o : o + dimb] = raw
        if offset_of:
            name = next(iter(offset_of))[len(key_prefix) :].decode(errors="replace")
            raise CorruptData(
                f"vector index snapshot: the vector of record {name!r} as of the snapshot is stored nowhere "
                f"({len(offset_of)} such); rebuilding from the records"
            )
    finally:
        try:
            mm.close()
        except BufferError:  # a view still held by an exception's frame: closed when it is freed
            pass


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_snapshot(directory: str | os.PathLike[str]) -> None:
    for name in (_HNSW_FILE, _META_FILE):
        try:
            os.remove(Path(directory) / name)
        except FileNotFoundError:
            pass
