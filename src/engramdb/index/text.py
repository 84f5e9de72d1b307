"""Per-collection BM25 full-text index on tantivy (DESIGN §5.3).

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
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import operator
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Self

import tantivy
from pyroaring import AbstractBitMap

from engramdb.errors import (
    Closed,
    CorruptData,
    EngramError,
    FailedPrecondition,
    InvalidArgument,
    StorageFull,
)

__all__ = ["TOKENIZER_NAME", "TextIndex", "build_analyzer", "build_schema"]

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

MAX_LABEL = 2**64 - 1
MAX_REFRESH_INTERVAL = 1.0
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
    if type(exc).__name__ == "PanicException" or "corrupt" in text.lower():
        return CorruptData(f"text index: {action} failed: index data is corrupt", details={"cause": text})
    return EngramError(f"text index: {action} failed: {text}", details={"cause": text})


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


def _verify_meta(path: Path) -> None:
    """Check that an existing tantivy index at ``path`` has our schema.

    The binding cannot introspect a schema, so ``meta.json`` is read directly.
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
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptData(f"text index at {path}: unreadable {_META_FILE}", details={"cause": str(exc)}) from exc
    if not ok:
        raise CorruptData(
            f"text index at {path} has an incompatible schema or tokenizer (expected {TOKENIZER_NAME})",
            code="index_schema_mismatch",
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
        except Exception:
            # Keep the thread alive: the changes stay pending and the next
            # tick (or an explicit flush, which raises) retries the commit.
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
    ) -> None:
        """Open (or create) the index at ``path``; ``None`` keeps it in RAM.

        ``refresh_interval`` (0 < s ≤ 1) bounds how long a write stays
        invisible to searches. ``writer_heap_bytes`` is tantivy's indexing
        budget (flushed to a segment when full); ``writer_threads`` 0 lets
        tantivy choose. ``max_query_terms`` caps distinct query terms so a
        pasted document cannot turn into a huge boolean query.

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
        self._dirty = False
        self._closed = False
        self._watermark = 0
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
            existed = (self._path / _META_FILE).exists()
            if existed:
                _verify_meta(self._path)
            else:
                # A watermark without an index would make the engine skip
                # replaying changes the (new, empty) index never saw.
                with contextlib.suppress(FileNotFoundError):
                    (self._path / WATERMARK_FILE).unlink()

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

        try:
            self._writer: tantivy.IndexWriter | None = self._index.writer(
                heap_size=writer_heap_bytes, num_threads=writer_threads
            )
        except BaseException as exc:
            if not _is_failure(exc):
                raise
            raise _wrap(exc, "create writer") from exc

        try:
            # Probe: opens every segment reader, which validates file footers.
            self._index.reload()
            _ = self._index.searcher().num_docs
            if self._path is not None and existed:
                self._watermark = self._read_watermark(self._path, self._writer.commit_opstamp)
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
        with self._lock:
            writer = self._writer_or_raise()
            try:
                for label, text in batch:
                    writer.delete_documents_by_query(tantivy.Query.term_query(schema, LABEL_FIELD, label))
                    if text.strip():
                        doc = tantivy.Document()
                        doc.add_unsigned(LABEL_FIELD, label)
                        doc.add_text(TEXT_FIELD, text)
                        writer.add_document(doc)
            except BaseException as exc:
                # Part of the batch may be buffered; it is committed with the
                # rest later, which is consistent per item.
                self._dirty = True
                if not _is_failure(exc):
                    raise
                raise _wrap(exc, "upsert") from exc
            self._dirty = True

    def delete(self, label: int) -> None:
        """Remove the document of ``label`` (no-op if absent)."""
        self.delete_many((label,))

    def delete_many(self, labels: Iterable[int]) -> None:
        """Remove the documents of all ``labels`` under one lock acquisition."""
        checked = [_check_label(label) for label in labels]
        if not checked:
            return
        with self._lock:
            writer = self._writer_or_raise()
            try:
                for label in checked:
                    # The binding turns a Python int into an i64 term, which
                    # never matches a u64 field, so delete_documents_by_term
                    # silently deletes nothing; a u64 term query is exact.
                    writer.delete_documents_by_query(tantivy.Query.term_query(self._schema, LABEL_FIELD, label))
            except BaseException as exc:
                self._dirty = True
                if not _is_failure(exc):
                    raise
                raise _wrap(exc, "delete") from exc
            self._dirty = True

    def delete_from(self, min_label: int) -> None:
        """Remove the documents of every label >= ``min_label``.

        Crash recovery: the text index commits in the background, so after a
        crash it can hold documents for labels the reloaded vector snapshot
        never assigned; replay will hand those labels to other records.
        """
        lo = _check_label(min_label)
        with self._lock:
            writer = self._writer_or_raise()
            try:
                q = tantivy.Query.range_query(self._schema, LABEL_FIELD, tantivy.FieldType.Unsigned, lower_bound=lo)
                writer.delete_documents_by_query(q)
            except BaseException as exc:
                self._dirty = True
                if not _is_failure(exc):
                    raise
                raise _wrap(exc, "delete") from exc
            self._dirty = True

    def clear(self) -> None:
        """Remove every document (visible after the next refresh/flush)."""
        with self._lock:
            writer = self._writer_or_raise()
            try:
                # delete_all_documents drops committed segments only; buffered
                # adds would survive it. They are superseded anyway, so roll
                # them back first.
                writer.rollback()
                writer.delete_all_documents()
            except BaseException as exc:
                if not _is_failure(exc):
                    raise
                raise _wrap(exc, "clear") from exc
            self._dirty = True

    # ------------------------------------------------------- commit / reload

    def _commit_locked(self) -> None:
        """Commit pending changes and reload the searcher; lock must be held."""
        writer = self._writer_or_raise()
        try:
            if self._dirty:
                writer.commit()
                self._dirty = False
            self._index.reload()
        except BaseException as exc:
            if not _is_failure(exc):
                raise
            raise _wrap(exc, "commit") from exc

    def _refresh_if_dirty(self) -> None:
        """One background tick: commit + reload only when something changed."""
        if not self._dirty:  # racy read is fine: a missed change waits one tick
            return
        with self._lock:
            if self._closed or not self._dirty:
                return
            self._commit_locked()

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
                writer = self._writer_or_raise()
                body = {"format": _WATERMARK_FORMAT, "watermark": seq, "opstamp": writer.commit_opstamp}
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
            try:
                hits = searcher.search(q, limit=page, count=False, offset=offset).hits
                labels = searcher.fast_field_values(LABEL_FIELD, [addr for _, addr in hits]) if hits else []
            except BaseException as exc:
                # Only binding errors are translated; allowed() below runs
                # outside this block so its exceptions reach the caller as-is.
                if not _is_failure(exc):
                    raise
                raise _wrap(exc, "search") from exc
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
        if self._closed or self._writer is None:
            raise Closed("text index is closed")
        return self._writer

    def _release_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                # Finishes in-flight merges and drops the writer, which
                # releases the directory lock for the next opener.
                writer.wait_merging_threads()

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
