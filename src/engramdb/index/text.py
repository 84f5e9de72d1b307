"""Per-collection BM25 full-text index on tantivy (``mode="text"`` and ``"hybrid"`` searches).

One :class:`TextIndex` holds the ``text`` of one collection's records, keyed by
the record's integer *label* (the same dense label the vector index uses), and
answers BM25 queries with ``(label, score)`` pairs.

Schema
    ``label``  u64, indexed (delete/replace by term, candidate pushdown), fast
               (labels of hits are read column-wise, no stored-doc fetch) and
               stored (so a raw inspection of the index still shows it).
    ``text``   analysed with :data:`TOKENIZER_NAME` (simple tokenizer, drop
               tokens longer than 40 chars, lowercase, ASCII folding, English
               Snowball stemming); not stored: the record store owns the text.

Near-real-time visibility
    tantivy allows exactly one ``IndexWriter`` per index, so every write goes
    through one writer guarded by a lock. Writes are buffered in the writer; a
    background thread commits them and reloads the searcher every
    ``refresh_interval`` seconds when something changed. A write is therefore
    visible to :meth:`TextIndex.search` at most ``refresh_interval`` + the
    commit time after it returns (≈ 0.2 s + a few ms by default; the interval
    is capped at 1 s so the bound stays ≤ 1 s for normal write rates, a very
    large unflushed batch adds its own commit time). :meth:`TextIndex.flush`
    makes everything visible synchronously.

Durability and restart
    tantivy commits are durable but carry no notion of the engine's changelog.
    :meth:`TextIndex.commit_watermark` commits and then atomically writes a
    small sidecar file recording the changelog sequence number covered by that
    commit; on open :meth:`TextIndex.watermark` returns it and the engine
    replays its changelog after it. Background commits may persist changes
    beyond the watermark; replaying them is harmless because upserts replace
    and deletes are idempotent.

Integrity
    The index is derived data (the record store is the source of truth), so
    damage is answered by a rebuild, never by serving from damaged files.
    Every open checks, before tantivy reads anything, that ``meta.json``
    parses, has our schema and names well-formed segments, that every file of
    every segment exists, and that each file's tantivy footer is intact and
    holds the CRC-32 of the file's content (:func:`check_index_files`; tantivy
    writes that footer on every segment file but tantivy-py does not expose
    its ``validate_checksum``). Damage raises :class:`CorruptData`, which
    :meth:`TextIndex.open_or_reset` answers by wiping the directory for a
    rebuild. The check reads every segment file once (a few ms for an index
    of 40,000 passages, see :func:`check_index_files`), which also warms the
    page cache for the first queries. Files a killed writer left behind,
    which no commit refers to, are removed at the same time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import operator
import os
import re
import shutil
import struct
import tempfile
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Self

import tantivy
from pyroaring import AbstractBitMap

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock for the pre-open check
    fcntl = None  # type: ignore[assignment]

from engramdb.errors import (
    DAMAGED_INDEX_ADVICE,
    Closed,
    CorruptData,
    EngramError,
    FailedPrecondition,
    InvalidArgument,
    StorageFull,
    Unavailable,
)

__all__ = ["TOKENIZER_NAME", "TextIndex", "build_analyzer", "build_schema", "check_index_files"]

log = logging.getLogger(__name__)

LABEL_FIELD = "label"
TEXT_FIELD = "text"
# Versioned on purpose: tantivy stores only the tokenizer *name* in the index,
# so changing the analysis chain must come with a new name. An index built
# with another name is then detected as incompatible and rebuilt instead of
# silently mixing two tokenisations.
TOKENIZER_NAME = "engram_en_v1"
WATERMARK_FILE = "engramdb-text-watermark.json"
_WATERMARK_FORMAT = 1
_META_FILE = "meta.json"
_MANAGED_FILE = ".managed.json"  # tantivy's list of the files it may garbage-collect
_WRITER_LOCK_FILE = ".tantivy-writer.lock"

MAX_LABEL = 2**64 - 1
MAX_REFRESH_INTERVAL = 1.0
# A writer left without writes this long (everything committed) is released and opened again by
# the next write (~1 ms): an idle one holds ~5 MB and 6-7 threads of tantivy's, per collection.
WRITER_IDLE_SECONDS = 5.0
# Longer tokens are almost always base64, hashes or URLs glued together; they
# bloat the term dictionary and are never typed as queries.
_MAX_TOKEN_CHARS = 40
# Candidate sets up to this size are pushed into tantivy as a term-set
# filter; bigger ones cost more to ship across the binding than to test
# ``label in candidates`` on an over-fetched result list.
_CANDIDATE_PUSHDOWN_MAX = 10_000
# Over-fetch for post-filtering: first page is k * factor (at least the
# minimum), each further page grows by the factor, up to the cap.
_OVERFETCH_FACTOR = 4
_OVERFETCH_MIN = 32
_OVERFETCH_MAX_PAGE = 65_536


def build_analyzer() -> tantivy.TextAnalyzer:
    """The analysis chain registered as :data:`TOKENIZER_NAME`.

    Indexing and query analysis use the same chain, so a query term always
    matches the indexed form of the same word ("Running" → "run").
    """
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(_MAX_TOKEN_CHARS))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def build_schema() -> tantivy.Schema:
    """The index schema (see the module docstring)."""
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field(LABEL_FIELD, stored=True, indexed=True, fast=True)
    builder.add_text_field(TEXT_FIELD, stored=False, tokenizer_name=TOKENIZER_NAME, index_option="position")
    return builder.build()


def _is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an error to translate (not e.g. ``KeyboardInterrupt``).

    A Rust panic surfaces as ``pyo3_runtime.PanicException``, which derives
    from ``BaseException`` and cannot be imported by name, so it is matched by
    class name; corrupt segment files trigger exactly such panics.
    """
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _wrap(exc: BaseException, action: str) -> EngramError:
    """Translate a binding/OS error into the engine's error hierarchy."""
    if isinstance(exc, EngramError):
        return exc
    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text:
        return StorageFull(f"text index: {action} failed: disk full", details={"cause": text})
    if "LockBusy" in text:
        return FailedPrecondition(
            f"text index: {action} failed: another writer holds the index lock",
            code="index_locked",
            details={"cause": text},
        )
    if "does not have any lock" in text:
        # tantivy's panic after a rollback that failed half way: the writer is
        # dead, the files are fine.
        return Unavailable(
            f"text index: {action} failed: the index writer lost its lock",
            code="index_unavailable",
            details={"cause": text},
        )
    if type(exc).__name__ == "PanicException" or "corrupt" in text.lower():
        return CorruptData(
            f"text index: {action} failed: index data is corrupt; {DAMAGED_INDEX_ADVICE}", details={"cause": text}
        )
    return EngramError(f"text index: {action} failed: {text}", details={"cause": text})


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Re-raise failures of the binding calls in the block as engine errors (:func:`_wrap`).

    :class:`EngramError` and non-failures (``KeyboardInterrupt``, …) pass
    through unchanged.
    """
    try:
        yield
    except EngramError:
        raise
    except BaseException as exc:
        if not _is_failure(exc):
            raise
        raise _wrap(exc, action) from exc


def _check_label(label: Any) -> int:
    try:
        value = operator.index(label)
    except TypeError:
        raise InvalidArgument(f"text index label must be an integer, got {type(label).__name__}") from None
    if isinstance(label, bool) or not 0 <= value <= MAX_LABEL:
        raise InvalidArgument(f"text index label must be an integer in [0, 2**64), got {label!r}")
    return value


def _check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise InvalidArgument(f"text must be a string, got {type(text).__name__}")
    return text


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory entry is; not every
    # platform lets a directory be opened for fsync, hence the suppress.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------- integrity
#
# tantivy (since 0.15; the same in the 0.27 that tantivy-py 0.27 bundles) ends
# every file it writes for a segment with a footer (tantivy
# src/directory/footer.rs):
#
#     body | footer JSON | u32 LE len(footer JSON) | u32 LE 1337
#
# where the JSON is {"version": {...}, "crc": <CRC-32 of body>}, computed with
# crc32fast, i.e. the standard CRC-32 that zlib.crc32 computes. meta.json and
# .managed.json are written atomically and carry no footer.
_FOOTER_MAGIC = 1337
_FOOTER_MAX_LEN = 50_000  # tantivy refuses longer footers as well
_FOOTER_TAIL = struct.Struct("<II")
# What tantivy deserialises from the footer's version (it ignores extra keys).
_FOOTER_VERSION_KEYS = ("major", "minor", "patch", "index_format_version")
_CRC_CHUNK = 1 << 20
# Files every segment of our schema has (postings, positions, term dictionary,
# field norms, fast fields, doc store), plus <segment>.<opstamp>.del when the
# segment has deletes.
_SEGMENT_COMPONENTS = ("idx", "pos", "term", "fieldnorm", "fast", "store")
# Any file tantivy writes for a segment, including the doc store's temporary.
_SEGMENT_FILE_RE = re.compile(r"[0-9a-f]{32}\.(?:idx|pos|term|fieldnorm|fast|store|store\.temp|[0-9]+\.del)")
# Temporaries of tantivy's atomic writes (tempfile crate: ".tmp" + 6 chars).
_TANTIVY_TEMP_RE = re.compile(r"\.tmp[0-9A-Za-z]{6}")


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _damaged(file: Path, reason: str) -> CorruptData:
    return CorruptData(
        f"text index file {file.name} is damaged: {reason}", details={"file": str(file), "reason": reason}
    )


def _read_meta(path: Path) -> dict[str, Any]:
    """Parse ``meta.json`` and check that the index has our schema.

    The binding cannot introspect a schema, so the file is read directly.
    Raises :class:`CorruptData` for an unreadable file or a different schema
    (e.g. an older tokenizer version) — both mean the index must be rebuilt.
    """
    try:
        meta = json.loads((path / _META_FILE).read_text(encoding="utf-8"))
        fields = {f["name"]: f for f in meta["schema"]}
        label, text = fields[LABEL_FIELD], fields[TEXT_FIELD]
        ok = (
            len(fields) == 2
            and label["type"] == "u64"
            and label["options"].get("indexed")
            and label["options"].get("fast")
            and text["type"] == "text"
            and text["options"]["indexing"]["tokenizer"] == TOKENIZER_NAME
        )
    except PermissionError as exc:
        raise _wrap(exc, f"read {_META_FILE}") from exc  # not damage: never a reason to wipe
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptData(f"text index at {path}: unreadable {_META_FILE}", details={"cause": str(exc)}) from exc
    if not ok:
        raise CorruptData(
            f"text index at {path} has an incompatible schema or tokenizer (expected {TOKENIZER_NAME})",
            code="index_schema_mismatch",
        )
    return meta


def _segment_files(path: Path, meta: dict[str, Any]) -> set[str]:
    """Names of the files the segments listed in ``meta`` consist of."""
    names: set[str] = set()
    try:
        for segment in meta["segments"]:
            seg = uuid.UUID(segment["segment_id"]).hex
            max_doc, deletes = segment["max_doc"], segment["deletes"]
            if not _is_uint(max_doc):
                raise ValueError(f"bad max_doc {max_doc!r}")
            names.update(f"{seg}.{ext}" for ext in _SEGMENT_COMPONENTS)
            if deletes is not None:
                opstamp, deleted = deletes["opstamp"], deletes["num_deleted_docs"]
                if not (_is_uint(opstamp) and _is_uint(deleted)):
                    raise ValueError(f"bad deletes {deletes!r}")
                names.add(f"{seg}.{opstamp}.del")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptData(
            f"text index at {path}: {_META_FILE} lists a malformed segment", details={"cause": str(exc)}
        ) from exc
    return names


def _verify_footer(file: Path, buf: memoryview) -> Any:
    """Check ``file``'s tantivy footer and the CRC-32 of its body; returns the footer's version.

    ``buf`` is scratch space for reading the body in chunks.
    """
    try:
        with open(file, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < _FOOTER_TAIL.size:
                raise _damaged(file, f"{size} bytes, too short for a footer")
            fh.seek(size - _FOOTER_TAIL.size)
            json_len, magic = _FOOTER_TAIL.unpack(fh.read(_FOOTER_TAIL.size))
            if magic != _FOOTER_MAGIC:
                raise _damaged(file, "no footer magic number (truncated or overwritten)")
            body_len = size - _FOOTER_TAIL.size - json_len
            if json_len > _FOOTER_MAX_LEN or body_len < 0:
                raise _damaged(file, f"impossible footer length {json_len}")
            fh.seek(body_len)
            try:
                footer = json.loads(fh.read(json_len))
                stored, version = footer["crc"], footer["version"]
                if not all(_is_uint(v) for v in (stored, *(version[k] for k in _FOOTER_VERSION_KEYS))):
                    raise TypeError(f"malformed footer {footer!r}")
            except (ValueError, KeyError, TypeError) as exc:
                raise _damaged(file, f"unreadable footer ({exc})") from exc
            fh.seek(0)
            crc, left = 0, body_len
            while left:
                n = fh.readinto(buf[: min(left, len(buf))])
                if not n:
                    raise _damaged(file, "shorter than its size")
                crc = zlib.crc32(buf[:n], crc)
                left -= n
    except FileNotFoundError as exc:
        raise _damaged(file, "missing") from exc
    except PermissionError as exc:
        raise _wrap(exc, f"read {file.name}") from exc  # not damage: never a reason to wipe
    except OSError as exc:  # e.g. EIO from a bad sector
        raise _damaged(file, f"unreadable ({exc})") from exc
    if crc != stored:
        raise _damaged(file, f"checksum mismatch (footer says {stored:#010x}, content has {crc:#010x})")
    return version


def check_index_files(path: str | os.PathLike[str]) -> set[str]:
    """Verify the on-disk index at ``path``; returns the names of the files it consists of.

    Checks that ``meta.json`` parses, has this module's schema and lists
    well-formed segments, that every file of every listed segment exists, and
    that each of them ends with an intact tantivy footer whose CRC-32 matches
    the file's content (tantivy's ``Index::validate_checksum``, which
    tantivy-py does not expose, plus the existence check it lacks) and whose
    version (not covered by the CRC) matches the other files of the segment. Raises
    :class:`CorruptData` for the first damage found; a permission error is not
    damage and raises a plain :class:`EngramError`.

    Cost: one sequential read of every segment file plus a CRC-32 (about
    1-1.5 GB/s of CPU). Measured on 2 cores: the 4 MB index of 42,000 short
    passages takes 3-8 ms from the page cache and 25-30 ms from disk; a 36 MB
    one 20-30 ms and 105-125 ms. Nothing may write the index meanwhile
    (:class:`TextIndex` holds the writer lock while it checks).
    """
    p = Path(path)
    names = _segment_files(p, _read_meta(p))
    buf = memoryview(bytearray(_CRC_CHUNK))
    versions: dict[str, Any] = {}
    for name in sorted(names):
        version = _verify_footer(p / name, buf)
        # The CRC does not cover the footer's own version, which tantivy reads
        # (index_format_version). A segment's files are written by one tantivy,
        # so they carry the same version. A .del file written by a newer
        # tantivy for an older segment differs too: after such an upgrade the
        # index is rebuilt once, which costs less than missing a flipped bit.
        if versions.setdefault(name.partition(".")[0], version) != version:
            raise _damaged(
                p / name, "footer version differs from its segment's other files (damaged, or another tantivy)"
            )
    return names


@contextlib.contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    """Hold tantivy's writer lock on ``path`` (the index directory) for a block.

    tantivy's ``IndexWriter`` holds an ``flock(2)`` on ``.tantivy-writer.lock``
    for its lifetime (a unit test checks the two exclude each other), so no
    writer, in this process or another, changes the files while the block
    checks or cleans them. The lock is released at the end of the block,
    before tantivy takes it for this index's own writer; a writer that slips
    in between makes that fail with ``index_locked``, as it would anyway.
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(path / _WRITER_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _wrap(exc, "lock") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise FailedPrecondition(
                "text index: open failed: another writer holds the index lock",
                code="index_locked",
                details={"cause": str(exc)},
            ) from exc
        except OSError as exc:
            raise _wrap(exc, "lock") from exc
        yield
    finally:
        os.close(fd)  # also releases the lock


def _remove_leftovers(path: Path, referenced: AbstractSet[str]) -> None:
    """Remove what a killed writer can leave behind; the writer lock must be held.

    A kill between writing a segment's files (or a new ``.del`` file) and
    publishing them in ``meta.json`` leaves files no commit refers to. tantivy
    names a ``.del`` file after its segment and the commit's opstamp, so the
    next process's first commit with deletes can try to create that very name
    and fail with ``FileAlreadyExists``; tantivy's own garbage collection runs
    only after a commit, and only for files listed in ``.managed.json``. Also
    removed: temporaries of atomic writes (tantivy's and the watermark's) and
    an unreadable ``.managed.json``, which would make tantivy refuse to open an
    intact index (deleting it is safe: the list only drives garbage
    collection, which this function does at every open).
    """
    removed: list[str] = []
    for entry in os.scandir(path):
        name = entry.name
        if (
            (_SEGMENT_FILE_RE.fullmatch(name) and name not in referenced)
            or _TANTIVY_TEMP_RE.fullmatch(name)
            or (name.startswith(WATERMARK_FILE + ".") and name.endswith(".tmp"))
        ):
            try:
                os.unlink(entry.path)
                removed.append(name)
            except OSError as exc:  # never fatal: at worst one commit fails and is retried
                log.warning("text index at %s: cannot remove leftover file %s: %s", path, name, exc)
    managed = path / _MANAGED_FILE
    try:
        listed = json.loads(managed.read_text(encoding="utf-8"))
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise ValueError("not a list of file names")
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("text index at %s: %s is unreadable (%s); removing it", path, _MANAGED_FILE, exc)
        with contextlib.suppress(OSError):
            managed.unlink()
    if removed:
        log.warning(
            "text index at %s: removed %d file(s) left behind by an interrupted commit: %s",
            path,
            len(removed),
            ", ".join(sorted(removed)[:10]),
        )


def _refresh_loop(ref: weakref.ref[TextIndex], stop: threading.Event, interval: float) -> None:
    """Background NRT refresher.

    Holds only a weak reference so an index that was dropped without
    :meth:`TextIndex.close` can still be garbage-collected (which releases the
    writer lock); the thread then exits on its next tick.
    """
    while not stop.wait(interval):
        index = ref()
        if index is None:
            return
        try:
            index._refresh_if_dirty()
        except BaseException as exc:
            if not _is_failure(exc):
                # Not an error of the index (a deliberate exit): stop, and let
                # TextIndex.problem() report the thread as gone.
                log.critical("text index refresh thread stopped by %r; searches no longer see new writes", exc)
                raise
            # Keep the thread alive, also through a Rust panic: the changes
            # stay pending and the next tick (or an explicit flush, which
            # raises) retries the commit, reopening a dead writer first.
            log.exception("text index background commit failed; will retry")
        del index


class TextIndex:
    """BM25 full-text index of one collection, keyed by integer labels.

    Thread-safety: any number of threads may search while others write.
    Writes serialise on one lock (tantivy has a single writer per index);
    searches take no lock and always see the last reloaded commit.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        refresh_interval: float = 0.2,
        *,
        writer_heap_bytes: int = 50_000_000,
        writer_threads: int = 0,
        max_query_terms: int = 256,
        writer_idle_seconds: float = WRITER_IDLE_SECONDS,
    ) -> None:
        """Open (or create) the index at ``path``; ``None`` keeps it in RAM.

        ``refresh_interval`` (0 < s ≤ 1) bounds how long a write stays
        invisible to searches. ``writer_heap_bytes`` is tantivy's indexing
        budget (flushed to a segment when full); ``writer_threads`` 0 lets
        tantivy choose. ``max_query_terms`` caps distinct query terms so a
        pasted document cannot turn into a huge boolean query. The writer is
        released after ``writer_idle_seconds`` without writes (0: kept) and
        opened again by the next write.

        Raises :class:`CorruptData` if an existing index cannot be opened (use
        :meth:`open_or_reset` to recover) and :class:`FailedPrecondition` if
        another writer holds the index lock.
        """
        if not 0 < refresh_interval <= MAX_REFRESH_INTERVAL:
            raise InvalidArgument(f"refresh_interval must be in (0, {MAX_REFRESH_INTERVAL}] seconds")
        if max_query_terms < 1:
            raise InvalidArgument("max_query_terms must be >= 1")
        self._path: Path | None = Path(path) if path is not None else None
        self._refresh_interval = float(refresh_interval)
        self._max_query_terms = max_query_terms
        self._lock = threading.Lock()  # guards the writer and the fields below
        # Signalled when a writer released for idleness has finished its merges (see _closing).
        self._retired = threading.Condition(self._lock)
        self._closing: tantivy.IndexWriter | None = None  # released for idleness, finishing its merges
        self._partial = False  # the writer holds only part of _uncommitted (a re-buffering failed)
        self._dirty = False
        self._uncommitted: list[Callable[[tantivy.IndexWriter], None]] = []
        self._closed = False
        self._watermark = 0
        self._opstamp = 0  # of the last commit; see open
        self._writer_heap_bytes = writer_heap_bytes
        self._writer_threads = writer_threads
        self._writer_idle_seconds = writer_idle_seconds
        self._last_write = time.monotonic()
        self._idle = False  # the writer was released for want of writes (not down)
        # Why the writer is down (None while it is up) and why the last commit
        # failed (None after a success): what problem() reports.
        self._writer_error: str | None = None
        self._commit_error: str | None = None
        self._next_reopen = 0.0  # monotonic time before which no reopen is tried
        self._schema = build_schema()
        # TextAnalyzer.analyze needs a mutable borrow on the Rust side, so
        # concurrent query analysis is serialised; it takes microseconds.
        self._analyzer = build_analyzer()
        self._analyzer_lock = threading.Lock()

        existed = False
        if self._path is not None:
            try:
                self._path.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as exc:
                raise CorruptData(f"text index path {self._path} is not a directory") from exc
            except OSError as exc:
                # e.g. permissions: not corruption, so never a reason to wipe.
                raise _wrap(exc, "create directory") from exc
            # Checked before tantivy reads anything: damaged segment files can
            # otherwise answer queries wrongly or make tantivy panic later.
            with _writer_lock(self._path):
                existed = (self._path / _META_FILE).exists()
                referenced: AbstractSet[str] = frozenset()
                if existed:
                    referenced = check_index_files(self._path)
                else:
                    # A watermark without an index would make the engine skip
                    # replaying changes the (new, empty) index never saw.
                    with contextlib.suppress(FileNotFoundError):
                        (self._path / WATERMARK_FILE).unlink()
                _remove_leftovers(self._path, referenced)

        try:
            self._index = tantivy.Index(self._schema, path=str(self._path) if self._path else None, reuse=True)
            self._index.register_tokenizer(TOKENIZER_NAME, self._analyzer)
            # Manual reloads: visibility is exactly "after our commit+reload",
            # not whenever tantivy's file watcher notices a new meta.json.
            self._index.config_reader(reload_policy="Manual")
        except BaseException as exc:
            if not _is_failure(exc):
                raise
            err = _wrap(exc, "open")
            if not isinstance(err, FailedPrecondition | StorageFull):
                err = CorruptData(f"text index at {self._path} cannot be opened", details={"cause": str(exc)})
            raise err from exc

        with _translated("create writer"):
            self._writer: tantivy.IndexWriter | None = self._index.writer(
                heap_size=writer_heap_bytes, num_threads=writer_threads
            )

        try:
            # Probe: opens every segment reader (tantivy reads the footers'
            # versions here, not their checksums: check_index_files did that).
            self._index.reload()
            _ = self._index.searcher().num_docs
            # tantivy-py's commit_opstamp is read once at open and not
            # updated by later commits; commit() returns the true one.
            self._opstamp = int(self._writer.commit_opstamp)
            if self._path is not None and existed:
                self._watermark = self._read_watermark(self._path, self._opstamp)
        except BaseException as exc:
            self._release_writer()
            if isinstance(exc, EngramError) or not _is_failure(exc):
                raise
            raise CorruptData(f"text index at {self._path} is unreadable", details={"cause": str(exc)}) from exc

        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_refresh_loop,
            args=(weakref.ref(self), self._stop, self._refresh_interval),
            name=f"engramdb-text-refresh[{self._path or 'ram'}]",
            daemon=True,
        )
        self._thread.start()

    # ------------------------------------------------------------------ open

    @classmethod
    def open_or_reset(
        cls, path: str | os.PathLike[str] | None, refresh_interval: float = 0.2, **kwargs: Any
    ) -> tuple[TextIndex, bool]:
        """Open the index, wiping and recreating it if it is unusable.

        Returns ``(index, rebuild_needed)``. ``rebuild_needed`` is true when
        the returned index does not hold previously persisted contents — it
        was corrupt/incompatible and got wiped, or there was no index at
        ``path`` yet (trivially true for a brand-new collection and for RAM
        indexes) — so the engine must re-feed every record's text rather than
        replay its changelog after :meth:`watermark`.

        A lock held by another writer is *not* corruption and still raises
        :class:`FailedPrecondition`: wiping a live index would destroy it.
        """
        if path is None:
            return cls(None, refresh_interval, **kwargs), True
        p = Path(path)
        existed = (p / _META_FILE).exists()
        try:
            return cls(p, refresh_interval, **kwargs), not existed
        except CorruptData as exc:
            log.warning("text index at %s is unusable (%s); wiping it for a rebuild", p, exc.message)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        return cls(p, refresh_interval, **kwargs), True

    @staticmethod
    def _read_watermark(path: Path, committed_opstamp: int) -> int:
        file = path / WATERMARK_FILE
        try:
            raw = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0  # never committed with a watermark: replay everything
        except OSError as exc:
            raise CorruptData(f"text index watermark {file} unreadable", details={"cause": str(exc)}) from exc
        try:
            data = json.loads(raw)
            seq, opstamp = int(data["watermark"]), int(data["opstamp"])
            if data.get("format") != _WATERMARK_FORMAT or seq < 0:
                raise ValueError("bad format or value")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptData(f"text index watermark {file} is corrupt", details={"cause": str(exc)}) from exc
        if opstamp > committed_opstamp:
            # The index is older than the commit the watermark describes
            # (e.g. files restored from an older copy): trusting the
            # watermark would skip changes the index does not contain.
            raise CorruptData(
                f"text index at {path} is older than its watermark (opstamp {committed_opstamp} < {opstamp})"
            )
        return seq

    # ---------------------------------------------------------------- writes

    def upsert(self, label: int, text: str) -> None:
        """Index ``text`` for ``label``, replacing any previous document.

        Blank text only removes the previous document: a record without text
        cannot match a query and would merely skew the average document
        length BM25 normalises by.
        """
        self.upsert_many(((label, text),))

    def upsert_many(self, items: Iterable[tuple[int, str]]) -> None:
        """Upsert many ``(label, text)`` pairs under one lock acquisition.

        All items are validated before any is applied, so a bad item leaves
        the index unchanged. A label repeated in ``items`` ends with its last
        text (tantivy applies deletes and adds in operation order).
        """
        batch = [(_check_label(label), _check_text(text)) for label, text in items]
        if not batch:
            return
        schema = self._schema

        def apply(writer: tantivy.IndexWriter) -> None:
            for label, text in batch:
                writer.delete_documents_by_query(tantivy.Query.term_query(schema, LABEL_FIELD, label))
                if text.strip():
                    doc = tantivy.Document()
                    doc.add_unsigned(LABEL_FIELD, label)
                    doc.add_text(TEXT_FIELD, text)
                    writer.add_document(doc)

        self._write("upsert", apply)

    def delete(self, label: int) -> None:
        """Remove the document of ``label`` (no-op if absent)."""
        self.delete_many((label,))

    def delete_many(self, labels: Iterable[int]) -> None:
        """Remove the documents of all ``labels`` under one lock acquisition."""
        checked = [_check_label(label) for label in labels]
        if not checked:
            return
        schema = self._schema

        def apply(writer: tantivy.IndexWriter) -> None:
            for label in checked:
                # The binding turns a Python int into an i64 term, which
                # never matches a u64 field, so delete_documents_by_term
                # silently deletes nothing; a u64 term query is exact.
                writer.delete_documents_by_query(tantivy.Query.term_query(schema, LABEL_FIELD, label))

        self._write("delete", apply)

    def delete_from(self, min_label: int) -> None:
        """Remove the documents of every label >= ``min_label``.

        Crash recovery: the text index commits in the background, so after a
        crash it can hold documents for labels the reloaded vector snapshot
        never assigned; replay will hand those labels to other records.
        """
        lo = _check_label(min_label)
        q = tantivy.Query.range_query(self._schema, LABEL_FIELD, tantivy.FieldType.Unsigned, lower_bound=lo)

        def apply(writer: tantivy.IndexWriter) -> None:
            writer.delete_documents_by_query(q)

        self._write("delete", apply)

    def clear(self) -> None:
        """Remove every document (visible after the next refresh/flush)."""

        def apply(writer: tantivy.IndexWriter) -> None:
            # delete_all_documents drops committed segments only; buffered
            # adds would survive it. They are superseded anyway, so roll
            # them back first.
            writer.rollback()
            writer.delete_all_documents()

        self._write("clear", apply)

    def rewrite(self, items: Iterable[tuple[int, str]]) -> None:
        """Replace every document with ``items`` in one commit, and delete the old segment files (GDPR erase).

        A deleted document's terms stay in its segment until tantivy merges
        it, which the binding cannot ask for; dropping every segment and
        indexing the live documents again leaves none. Searches see the old
        documents until the commit, then the new ones.
        """
        self.clear()
        self.upsert_many(items)
        with self._lock:
            self._commit_locked()
            writer = self._writer_or_raise()
            with _translated("garbage-collect files"):
                writer.garbage_collect_files()

    def _write(self, action: str, apply: Callable[[tantivy.IndexWriter], None]) -> None:
        """Apply one write operation under the write lock, remembering it until it is committed.

        tantivy kills its writer, with everything it buffered, when writing a
        segment fails (a full disk). The operations since the last commit are
        therefore kept and buffered again into a revived writer (see
        :meth:`_redo`); an operation that meets a dead writer is not lost
        either, it goes out with the next successful commit. The caller's
        change is durable in storage already, so this only logs.
        """
        with self._lock:
            self._check_open()
            self._uncommitted.append(apply)
            self._dirty = True
            self._last_write = time.monotonic()
            writer = self._writer
            if writer is None:
                # Idle or down (see _reopen_writer): the change goes out with the first
                # commit of a reopened writer, which buffers _uncommitted again. While a
                # released writer finishes its merges, the refresh thread opens the next
                # one afterwards: this caller (the notifier) does not wait for them.
                if self._closing is None:
                    self._reopen_writer()
                return
            try:
                with _translated(action):
                    apply(writer)
            except EngramError as e:
                log.warning("text index: %s; the change is kept for the next commit", e.message)
                self._redo(writer)

    # ------------------------------------------------------- commit / reload

    def _commit_locked(self) -> None:
        """Commit pending changes and reload the searcher; lock must be held."""
        # Nothing to commit on an idle index: no writer is opened just to find that out.
        writer = None if self._idle and not self._dirty else self._writer_or_raise()
        try:
            with _translated("commit"):
                if self._dirty and writer is not None:
                    partial = self._partial
                    try:
                        self._opstamp = int(writer.commit())
                    except BaseException as exc:
                        if _is_failure(exc):
                            self._redo(writer)
                        raise
                    if partial:
                        # The writer held only part of the pending changes: they all stay
                        # pending and are buffered again (upserts and deletes repeat
                        # harmlessly); the next commit carries the rest.
                        self._rebuffer(writer)
                    else:
                        self._uncommitted.clear()
                        self._dirty = False
                self._index.reload()
        except EngramError as e:
            self._commit_error = e.message
            raise
        self._commit_error = None

    def _redo(self, writer: tantivy.IndexWriter) -> None:
        """After a failed commit: revive the writer and buffer every uncommitted operation again.

        tantivy kills its writer when a commit fails (a full disk, say) and
        drops what it buffered; ``rollback`` starts a new one. The next commit
        then carries those operations, so no acknowledged change is missing
        from text search once the cause is gone. If the disk is still full,
        this fails too and the next attempt starts over.
        """
        try:
            writer.rollback()
        except BaseException as exc:
            if not _is_failure(exc):
                raise
            # tantivy's rollback gives up the directory lock before it builds
            # the new writer; when that fails (no file descriptors left, say)
            # the writer is dead for good and every later rollback is a Rust
            # panic. Only a new writer helps.
            log.error("text index: rolling back the writer failed (%s); opening a new writer", _wrap(exc, "rollback"))
            self._writer = None
            self._next_reopen = 0.0
            self._reopen_writer(cause=exc)
            return
        self._rebuffer(writer)

    def _rebuffer(self, writer: tantivy.IndexWriter) -> None:
        """Buffer every uncommitted operation into ``writer`` again (lock held).

        If that fails part way, the writer holds only some of them: the next commit
        that succeeds then keeps them all and buffers them once more (see
        _commit_locked), instead of forgetting the rest.
        """
        try:
            for apply in self._uncommitted:
                apply(writer)
            self._partial = False
        except BaseException as exc:
            if not _is_failure(exc):
                raise
            self._partial = True
            log.warning("text index: re-buffering uncommitted changes failed; the next commit retries", exc_info=True)

    def _reopen_writer(self, cause: BaseException | None = None) -> tantivy.IndexWriter | None:
        """A new writer in place of a dead one (lock held), or None if it cannot be had yet.

        Tried at most once a second: creating a writer is costly and the cause
        (file descriptors, memory) usually needs a moment to go away. Until it
        succeeds, writes are kept in ``_uncommitted`` and :meth:`problem`
        reports the index as down.
        """
        if self._closed or self._writer is not None:
            return self._writer
        while self._closing is not None:  # the released writer still holds the directory lock
            self._retired.wait()
        if self._closed or self._writer is not None:
            return self._writer
        if self._idle:  # released for want of writes: open at once, no back-off
            self._idle = False
            self._next_reopen = 0.0
        now = time.monotonic()
        if now < self._next_reopen:
            return None
        self._next_reopen = now + 1.0
        try:
            with _translated("open a new writer"):
                writer = self._index.writer(heap_size=self._writer_heap_bytes, num_threads=self._writer_threads)
        except EngramError as e:
            reason = e.message if cause is None else f"{_wrap(cause, 'rollback').message}; {e.message}"
            if self._writer_error is None:
                log.error("text index at %s is down: %s; retrying every second", self._path or "RAM", reason)
            self._writer_error = reason
            return None
        self._writer = writer
        if self._writer_error is not None:
            log.warning(
                "text index at %s: a new writer is open again; pending changes go out with the next commit",
                self._path or "RAM",
            )
        self._writer_error = None
        self._rebuffer(writer)
        return writer

    def _refresh_if_dirty(self) -> None:
        """One background tick: commit + reload only when something changed."""
        # Racy reads are fine: a missed change waits one tick. A dead writer
        # is reopened here too, so the index recovers without further writes.
        if not self._dirty and self._commit_error is None:
            if self._writer is not None and self._idle_for_long():
                self._retire_idle_writer()
            if self._writer is not None or self._idle:
                return
        with self._lock:
            if self._closed or (
                not self._dirty and (self._writer is not None or self._idle) and self._commit_error is None
            ):
                return
            if self._writer is None and self._reopen_writer() is None:
                return
            self._commit_locked()

    def _retire_idle_writer(self) -> None:
        """Release a writer that had no writes for ``writer_idle_seconds`` (refresh thread).

        Its merges finish outside the lock: holding it for a long merge would stall the
        notifier, which every collection shares. A write meanwhile is only buffered;
        the next writer opens once this one has let go of the directory lock.
        """
        with self._lock:
            if self._closed or self._dirty or self._commit_error is not None or not self._idle_for_long():
                return
            writer, self._writer = self._writer, None
            self._idle = True
            self._closing = writer
        try:
            if writer is not None:
                self._consume(writer)
        finally:
            with self._lock:
                self._closing = None
                self._retired.notify_all()

    @staticmethod
    def _consume(writer: tantivy.IndexWriter) -> None:
        """Finish ``writer``'s merges and drop its Rust side (threads, directory lock) now.

        Not left to reference counting: a traceback kept by a log handler can hold
        the Python object, and with it the lock, for as long as it lives.
        """
        try:
            writer.wait_merging_threads()
        except BaseException as exc:
            if not _is_failure(exc):
                raise

    def _idle_for_long(self) -> bool:
        idle = self._writer_idle_seconds
        return idle > 0 and self._writer is not None and time.monotonic() - self._last_write >= idle

    def flush(self) -> None:
        """Commit pending changes and make them visible before returning."""
        with self._lock:
            self._commit_locked()

    def commit_watermark(self, seq: int) -> None:
        """Durably commit everything written so far and record ``seq``.

        The caller must have applied every change up to changelog sequence
        ``seq`` before calling; after a restart :meth:`watermark` returns
        ``seq`` and the engine replays only later entries. The sidecar is
        written only after the tantivy commit succeeded, so a crash in
        between leaves the older watermark, which merely replays more.
        """
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_LABEL:
            raise InvalidArgument(f"watermark must be an integer in [0, 2**64), got {seq!r}")
        with self._lock:
            self._commit_locked()
            if self._path is not None:
                body = {"format": _WATERMARK_FORMAT, "watermark": seq, "opstamp": self._opstamp}
                self._write_sidecar(self._path, json.dumps(body).encode())
            self._watermark = seq

    @staticmethod
    def _write_sidecar(directory: Path, payload: bytes) -> None:
        # temp file + fsync + rename + directory fsync: a reader sees the old
        # or the new watermark, never a torn one.
        fd, tmp = tempfile.mkstemp(prefix=WATERMARK_FILE + ".", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, directory / WATERMARK_FILE)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _wrap(exc, "write watermark") from exc
        _fsync_dir(directory)

    def watermark(self) -> int:
        """Changelog sequence covered by the last :meth:`commit_watermark` (0 if none)."""
        return self._watermark

    @staticmethod
    def stored_watermark(path: str | os.PathLike[str]) -> int:
        """The watermark file's sequence without opening the index; 0 (replay everything) if absent.

        What opening reports when the file is sound; opening also checks it
        against the index's last commit and resets a mismatched index.
        """
        try:
            return max(0, int(json.loads((Path(path) / WATERMARK_FILE).read_text(encoding="utf-8"))["watermark"]))
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    # ---------------------------------------------------------------- reads

    def count(self) -> int:
        """Number of documents visible to searches (as of the last reload)."""
        self._check_open()
        return int(self._index.searcher().num_docs)

    def _query_terms(self, query: str) -> list[str]:
        with self._analyzer_lock:
            tokens = self._analyzer.analyze(query)
        # Deduplicate (keeping first-seen order) so "foo foo foo" does not
        # triple one term's weight, then cap the clause count.
        return list(dict.fromkeys(tokens))[: self._max_query_terms]

    def _build_query(self, query: str) -> tantivy.Query | None:
        """Turn user text into an OR of term queries.

        The text is never handed to tantivy's query parser, so quotes,
        colons, parentheses, ``AND``/``OR`` or ``*`` are ordinary characters
        and cannot cause a parse error; the analyzer is the same one used for
        indexing, so terms match their indexed form.
        """
        terms = self._query_terms(query)
        if not terms:
            return None
        # "freq" is enough for BM25 and skips decoding term positions.
        clauses = [tantivy.Query.term_query(self._schema, TEXT_FIELD, t, index_option="freq") for t in terms]
        if len(clauses) == 1:
            return clauses[0]
        return tantivy.Query.boolean_query([(tantivy.Occur.Should, c) for c in clauses])

    def search(
        self,
        query: str,
        k: int,
        allowed: Callable[[int], bool] | None = None,
        candidates: AbstractBitMap | AbstractSet[int] | None = None,
    ) -> list[tuple[int, float]]:
        """Top-``k`` ``(label, bm25_score)`` pairs for ``query``, best first.

        ``candidates`` (e.g. a ``pyroaring.BitMap``) restricts hits to those
        labels: small sets are pushed into tantivy as a zero-score term-set
        filter (scores are unchanged), large ones are tested per hit.
        ``allowed`` is a per-label predicate applied to an over-fetched,
        progressively widened result window until ``k`` hits pass or the
        matches are exhausted. Any query text is accepted; text without
        indexable terms returns ``[]``.
        """
        if not isinstance(query, str):
            raise InvalidArgument(f"query must be a string, got {type(query).__name__}")
        if k < 0:
            raise InvalidArgument("k must be >= 0")
        self._check_open()
        if k == 0 or (candidates is not None and len(candidates) == 0):
            return []
        text_query = self._build_query(query)
        if text_query is None:
            return []

        post_candidates: AbstractBitMap | AbstractSet[int] | None = None
        q = text_query
        if candidates is not None:
            if len(candidates) <= _CANDIDATE_PUSHDOWN_MAX:
                label_filter = tantivy.Query.term_set_query(self._schema, LABEL_FIELD, list(candidates))
                q = tantivy.Query.boolean_query(
                    [
                        (tantivy.Occur.Must, text_query),
                        # Score 0 so filtered and unfiltered BM25 scores agree.
                        (tantivy.Occur.Must, tantivy.Query.const_score_query(label_filter, 0.0)),
                    ]
                )
            else:
                post_candidates = candidates

        return self._collect(q, k, allowed, post_candidates)

    def _collect(
        self,
        q: tantivy.Query,
        k: int,
        allowed: Callable[[int], bool] | None,
        post_candidates: AbstractBitMap | AbstractSet[int] | None,
    ) -> list[tuple[int, float]]:
        # One searcher for all pages: a consistent snapshot, so paging with
        # offsets neither skips nor repeats hits across a concurrent reload.
        searcher = self._index.searcher()
        filtering = allowed is not None or post_candidates is not None
        page = max(k * _OVERFETCH_FACTOR, _OVERFETCH_MIN) if filtering else k
        offset = 0
        out: list[tuple[int, float]] = []
        seen: set[int] = set()
        while True:
            # Only binding errors are translated; allowed() below runs
            # outside this block so its exceptions reach the caller as-is.
            with _translated("search"):
                hits = searcher.search(q, limit=page, count=False, offset=offset).hits
                labels = searcher.fast_field_values(LABEL_FIELD, [addr for _, addr in hits]) if hits else []
            if not hits:
                return out
            for (score, _), label in zip(hits, labels, strict=True):
                if not isinstance(label, int) or label in seen:
                    continue  # defensive: replace semantics make duplicates impossible
                if post_candidates is not None and label not in post_candidates:
                    continue
                if allowed is not None and not allowed(label):
                    continue
                seen.add(label)
                out.append((label, float(score)))
                if len(out) == k:
                    return out
            if not filtering or len(hits) < page:
                return out  # unfiltered: one page is the answer; short page: exhausted
            offset += page
            page = min(page * _OVERFETCH_FACTOR, _OVERFETCH_MAX_PAGE)

    # ------------------------------------------------------------- lifecycle

    @property
    def path(self) -> Path | None:
        """Directory of the index, or ``None`` for a RAM index."""
        return self._path

    def disk_bytes(self) -> int:
        """Bytes of the index's files (one directory listing); 0 for a RAM index.

        tantivy memory-maps its segments, so this is what its searchers can hold in the page
        cache at most; tantivy-py reports no heap figure of its own (and the writer's indexing
        buffer, at most ``writer_heap_bytes``, is not included).
        """
        path = self._path
        if path is None:
            return 0
        total = 0
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        if entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # a background merge removed this segment file meanwhile
        except OSError:
            return 0  # the directory itself is gone (collection dropped)
        return total

    @property
    def refresh_interval(self) -> float:
        """Seconds between background commit/reload checks."""
        return self._refresh_interval

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("text index is closed")

    def _writer_or_raise(self) -> tantivy.IndexWriter:
        if self._closed:
            raise Closed("text index is closed")
        writer = self._writer if self._writer is not None else self._reopen_writer()
        if writer is None:
            raise Unavailable(
                f"text index: its writer is down ({self._writer_error}); "
                "changes are kept and go out once it reopens, or are replayed from the changelog after a restart",
                code="index_unavailable",
            )
        return writer

    def problem(self) -> str | None:
        """Why this index does not answer with current data (None: it does).

        A writer that is down and cannot be reopened, commits that fail, or a
        refresh thread that stopped: searches then miss recent writes.
        """
        if self._closed:
            return None
        if self._writer is None and self._writer_error is not None:
            return f"text index writer is down: {self._writer_error}"
        if self._commit_error is not None:
            return f"text index commits fail: {self._commit_error}"
        if not self._thread.is_alive():
            return "text index refresh thread stopped"
        return None

    def _release_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            # Finishes in-flight merges and drops the writer, which
            # releases the directory lock for the next opener.
            self._consume(writer)

    def close(self) -> None:
        """Stop the refresher, commit pending changes, release the writer.

        Idempotent. If the final commit fails the writer is still released
        and the error is raised; the lost changes are after the watermark and
        are replayed by the engine.
        """
        if self._closed:
            return
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._closed:
                return
            try:
                if self._dirty:
                    self._commit_locked()
            finally:
                self._closed = True
                self._release_writer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"TextIndex(path={str(self._path) if self._path else None!r}, {state})"
