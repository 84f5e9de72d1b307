"""Query execution: vector (planned by filter cardinality), text, hybrid, expansion."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pyroaring import BitMap

from engramdb import validation
from engramdb.engine.budget import MASK, Deadline, current_deadline
from engramdb.engine.graph import ExpandTarget, GraphIndexes, expand_seeds
from engramdb.errors import FailedPrecondition, InvalidArgument
from engramdb.filters import Filter, compile_filter
from engramdb.index import planner
from engramdb.storage.codec import RecordRow
from engramdb.types import Hit

if TYPE_CHECKING:
    from engramdb.embed import Embedder
    from engramdb.engine.indexes import Candidates
    from engramdb.engine.records import RecordReader
    from engramdb.index.text import TextIndex
    from engramdb.index.vector import VectorIndex
    from engramdb.types import CollectionConfig

RRF_K = 60  # the usual reciprocal-rank-fusion constant; damps the top ranks' dominance
_ROWS_SLICE = 4096  # rows read per multi-get while checking an inexact filter


class SearchIndexes(GraphIndexes, Protocol):
    """What a search reads of a collection's indexes (:class:`~engramdb.engine.indexes.CollectionIndexes`)."""

    @property
    def vindex(self) -> VectorIndex: ...

    @property
    def text_index(self) -> TextIndex | None: ...

    def filter_candidates(self, flt: Filter, deadline: Deadline | None = None) -> Candidates: ...

    def stored_vectors(self, labels: Sequence[int]) -> tuple[list[int], np.ndarray]: ...


class SearchTarget(ExpandTarget, Protocol):
    """What a search needs of a collection (:class:`~engramdb.engine.collection.Collection`)."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def metric(self) -> str: ...

    @property
    def config(self) -> CollectionConfig: ...

    @property
    def exact_threshold(self) -> int: ...

    @property
    def embedder(self) -> Embedder | None: ...

    @property
    def indexes(self) -> SearchIndexes: ...

    @property
    def reader(self) -> RecordReader: ...

    def refresh_ttl(self, ids: str | Sequence[str]) -> int: ...


@dataclass(frozen=True)
class Query:
    """A search request's checked parameters and its query vector (embedded from the text when needed).

    The one place these rules live, for the engine and for the cluster coordinator (which embeds
    once and sends the vector to the shards).
    """

    k: int
    include: frozenset[str]
    ef: int | None
    mode: str
    vector: np.ndarray | None

    @classmethod
    def parse(
        cls,
        embedder: Embedder | None,
        dimension: int,
        metric: str,
        *,
        vector: Sequence[float] | np.ndarray | None,
        k: Any,
        include: Iterable[str] | None,
        ef: int | None,
        text: str | None,
        mode: str | None,
    ) -> Query:
        k = validation.k(k)
        inc = _include(include)
        ef = validation.ef(ef)
        if mode is None:
            mode = "vector" if vector is not None or embedder is not None else "text"
        mode = validation.mode(mode)
        if text is not None and not isinstance(text, str):
            raise InvalidArgument("text must be a string", code="invalid_text")
        if mode in ("text", "hybrid") and not text:
            raise InvalidArgument(f"mode {mode!r} needs a non-empty text query", code="missing_text")
        q = None
        if mode in ("vector", "hybrid"):
            if vector is None:
                if embedder is None or not text:
                    raise InvalidArgument(
                        "give a query vector, or text in a collection that has an embedder", code="missing_vector"
                    )
                vector = embedder.embed_query(text)
            q = validation.vector(vector, dimension, metric, "query vector")
        return cls(k, inc, ef, mode, q)


# Checked include sets by the caller's value: nearly every query passes one of a
# few literal tuples (the default, ``[]``), so each is validated once, not per query.
_INCLUDE_CACHE: dict[tuple[str, ...], frozenset[str]] = {}
_INCLUDE_CACHE_MAX = 256


def _include(include: Iterable[str] | None) -> frozenset[str]:
    if type(include) is tuple or type(include) is list:  # others (sets, generators, str) validate every time
        key = tuple(include)
        inc = _INCLUDE_CACHE.get(key)  # unhashable elements: the same TypeError as validation's frozenset
        if inc is None:
            inc = validation.include(key)
            if len(_INCLUDE_CACHE) < _INCLUDE_CACHE_MAX:
                _INCLUDE_CACHE[key] = inc
        return inc
    return validation.include(include)


def run_search(
    coll: SearchTarget,
    *,
    vector: Sequence[float] | np.ndarray | None,
    k: Any,
    filter: Mapping[str, Any] | None,
    ef: int | None,
    include: Iterable[str] | None,
    exact: bool,
    text: str | None,
    mode: str | None,
    weights: Mapping[str, float] | None,
    expand: Mapping[str, Any] | None,
    min_score: float | None,
    refresh_ttl: bool,
) -> list[Hit]:
    query = Query.parse(
        coll.embedder, coll.dimension, coll.metric, vector=vector, k=k, include=include, ef=ef, text=text, mode=mode
    )
    k, inc, ef, mode, q = query.k, query.include, query.ef, query.mode, query.vector
    flt = compile_filter(filter)
    fetch = k if expand is None else max(k, expand_seeds(expand, k))  # validates the spec before any work
    # Started after the query text was embedded: the embedder has its own timeout.
    checker = _Checker(coll, flt, current_deadline("search"))
    ranked: dict[str, list[tuple[int, float]]] = {}
    if q is not None:
        ranked["vector"] = vector_search(coll, q, fetch if mode == "vector" else max(fetch, 50), checker, ef, exact)
    if mode in ("text", "hybrid"):
        ranked["text"] = text_search(coll, text or "", fetch if mode == "text" else max(fetch, 50), checker)
    if mode == "hybrid":
        scored = fuse(ranked, weights or {}, fetch)
    else:
        scored = [(label, score, {mode: score}) for label, score in ranked[mode][:fetch]]
    hits = checker.materialize(scored, inc)
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    if expand is not None:
        from engramdb.engine.graph import expand_hits

        with coll.graph_source() as source:
            hits = expand_hits(source, hits, expand, flt, inc)
        if min_score is not None:
            hits = [h for h in hits if h.score >= min_score]
    if refresh_ttl and hits:
        coll.refresh_ttl([h.id for h in hits])
    return hits if expand is not None else hits[:k]


class _Checker:
    """Decides whether a label may be returned: live, unexpired, matching the filter.

    Rows read from storage to verify a filter are kept, so materialising the
    hits afterwards does not read them again.
    """

    def __init__(self, coll: SearchTarget, flt: Filter | None, dl: Deadline | None = None):
        self.reader = coll.reader
        self.flt = flt
        self.dl = dl
        self._ticks = 0
        self.now = time.time()
        self.vindex = coll.indexes.vindex
        self.rows: dict[int, RecordRow | None] = {}
        self.candidates: BitMap | None = None
        self._cand_arr: np.ndarray | None = None
        self._cands: Candidates | None = None
        self.exact = True
        if flt is not None:
            self._cands = coll.indexes.filter_candidates(flt, dl)  # shared with other queries: read only
            self.candidates, self.exact = self._cands.labels, self._cands.exact

    def check_deadline(self) -> None:
        if self.dl is not None:
            self.dl.check()

    def tick(self) -> None:
        """Count one unit of per-label work; the clock is read only every few hundred."""
        self._ticks += 1
        if self.dl is not None and not self._ticks & MASK:
            self.dl.check()

    def candidate_array(self) -> np.ndarray:
        """The candidate (or all live) labels as a sorted uint32 array, built once per filter or query."""
        if self._cands is not None:
            return self._cands.array
        if self._cand_arr is None:
            self._cand_arr = np.frombuffer(self.vindex.live.to_array(), dtype=np.uint32)
        return self._cand_arr

    def keep(self, labels: Sequence[int] | np.ndarray, *, members: bool = False) -> np.ndarray:
        """Per label: may it be returned? Vectorised; reads rows only when the filter needs them.

        ``members``: the labels are known candidates (a traversal filtered by them).
        """
        lab = np.asarray(labels, dtype=np.int64)
        if lab.size == 0:
            return np.zeros(0, dtype=bool)
        dl = self.dl
        if self.candidates is not None and not members:
            arr = self.candidate_array()
            if arr.size == 0:
                return np.zeros(lab.size, dtype=bool)
            pos = np.minimum(np.searchsorted(arr, lab), arr.size - 1)
            ok = arr[pos] == lab
        else:
            ok = np.ones(lab.size, dtype=bool)
        expires = self.vindex.expires
        if expires:
            for n, i in enumerate(np.flatnonzero(ok)):
                if dl is not None and n & MASK == MASK:
                    dl.check()
                exp = expires.get(int(lab[i]))
                if exp is not None and exp <= self.now:
                    ok[i] = False
        if self.flt is None or self.exact:
            return ok
        need = [int(lb) for lb in lab[ok] if int(lb) not in self.rows]
        self._load_rows(need)
        name_of = self.vindex.name_of
        for n, i in enumerate(np.flatnonzero(ok)):
            if dl is not None and n & MASK == MASK:
                dl.check()
            lb = int(lab[i])
            row = self.rows.get(lb)
            ok[i] = (
                row is not None
                and row.live(self.now)
                and self.flt.matches(name_of(lb) or "", row.namespace, row.metadata)
            )
        return ok

    def _load_rows(self, labels: list[int]) -> None:
        # In slices, so a budget can stop a query that would read a large part of the collection.
        for start in range(0, len(labels), _ROWS_SLICE):
            if start:
                self.check_deadline()
            part = labels[start : start + _ROWS_SLICE]
            ids = [name or "" for name in self.vindex.names_of(part)]
            for lb, row in zip(part, self.reader.rows(ids), strict=True):
                self.rows[lb] = row

    def materialize(self, scored: list[tuple[int, float, dict[str, float]]], inc: frozenset[str]) -> list[Hit]:
        name_of = self.vindex.name_of
        if not inc:
            # Ids and scores only: nothing to read. A label deleted while we
            # searched has no id any more and is dropped.
            names = self.vindex.names_of([label for label, _, _ in scored])
            return [
                Hit(id=rid, score=float(score), signals=signals)
                for rid, (_, score, signals) in zip(names, scored, strict=True)
                if rid is not None
            ]
        if not self.rows and "vector" not in inc:
            # Nothing read yet (no filter needed rows): read the hits' rows and build
            # their records in one pass, as records() would from rows().
            names = self.vindex.names_of([label for label, _, _ in scored])
            named_ids = [
                (rid, score, signals) for rid, (_, score, signals) in zip(names, scored, strict=True) if rid is not None
            ]
            recs = self.reader.live_records([rid for rid, _, _ in named_ids], inc, self.now)
            return [
                Hit(id=rid, score=float(score), record=rec, signals=signals)
                for (rid, score, signals), rec in zip(named_ids, recs, strict=True)
                if rec is not None  # deleted or expired while we searched
            ]
        self._load_rows([lb for lb, _, _ in scored if lb not in self.rows])
        named = [
            (rid, score, signals, self.rows.get(label))
            for label, score, signals in scored
            if (rid := name_of(label)) is not None
        ]
        records = self.reader.records([(rid, row) for rid, _, _, row in named], inc, self.now, self.flt)
        return [
            Hit(id=rid, score=float(score), record=rec, signals=signals)
            for (rid, score, signals, _), rec in zip(named, records, strict=True)
            if rec is not None  # deleted or expired while we searched
        ]


def vector_search(
    coll: SearchTarget, q: np.ndarray, k: int, checker: _Checker, ef: int | None, exact: bool
) -> list[tuple[int, float]]:
    vindex = coll.indexes.vindex
    total = len(vindex)
    ef_base = ef or coll.config.index.ef_search
    cand_count = total if checker.candidates is None else len(checker.candidates)
    if exact:
        return _exact(coll, q, k, checker)
    if checker.candidates is None and not vindex.expires:
        labels, dists = vindex.knn(q, k, ef_base)
        return list(zip(labels.tolist(), vindex.score_list(dists), strict=True))
    p = planner.plan(k, cand_count, total, ef_base, exact_threshold=coll.exact_threshold, exact_filter=checker.exact)
    if p.strategy == "exact":
        return _exact(coll, q, k, checker)
    cands = checker.candidates
    filter_fn = cands.__contains__ if p.strategy == "traverse" and cands is not None else None
    # A traversal sees only candidates; a post-filter sees the whole index.
    limit = cand_count if filter_fn is not None else total
    fetch, ef_q = p.fetch_k, p.ef
    # A walk that saw only candidates of an exact filter, in an index without expiring labels,
    # returns nothing keep() would drop: skip it (it is a good part of a filtered query's Python).
    trusted = filter_fn is not None and checker.exact and not vindex.expires
    while True:
        checker.check_deadline()
        labels, dists = vindex.knn(q, fetch, ef_q, filter_fn=filter_fn, matching=cand_count if filter_fn else None)
        if trusted:
            res = list(zip(labels.tolist(), vindex.score_list(dists), strict=True))
        else:
            keep = checker.keep(labels, members=filter_fn is not None)
            res = list(zip(labels[keep].tolist(), vindex.score_list(dists[keep]), strict=True))
        if len(res) >= k or fetch >= limit:
            return res[:k]
        # Too few survived (rows failed an inexact filter, records expired, or
        # hnswlib found fewer than asked): widen, or finish exactly when the
        # widened search would cover much of the candidates anyway.
        if fetch * 2 > limit // 2 and cand_count <= max(coll.exact_threshold, total // 2):
            return _exact(coll, q, k, checker)
        fetch *= 2
        ef_q = max(ef_q, fetch)


def _exact(coll: SearchTarget, q: np.ndarray, k: int, checker: _Checker) -> list[tuple[int, float]]:
    """Brute force over the candidate labels (all live labels without a filter)."""
    indexes = coll.indexes
    vindex = indexes.vindex
    pool = checker.candidate_array()
    labels = pool[checker.keep(pool)].tolist()
    if not labels:
        return []
    # Fetch vectors in slices so a huge candidate set does not copy the world at once.
    best_l: list[np.ndarray] = []
    best_d: list[np.ndarray] = []
    for i in range(0, len(labels), 65_536):
        checker.check_deadline()
        part, vecs = indexes.stored_vectors(labels[i : i + 65_536])
        lb, d = vindex.exact(q, part, k, vecs)
        best_l.append(lb)
        best_d.append(d)
    all_l = np.concatenate(best_l)
    all_d = np.concatenate(best_d)
    order = np.argsort(all_d, kind="stable")[:k]
    return list(zip(all_l[order].tolist(), vindex.score(all_d[order]).tolist(), strict=True))


def text_index_disabled(name: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"collection {name!r} was created with text_index=false; text search is unavailable",
        code="text_index_disabled",
    )


def text_search(coll: SearchTarget, query: str, k: int, checker: _Checker) -> list[tuple[int, float]]:
    tindex = coll.indexes.text_index
    if tindex is None:
        raise text_index_disabled(coll.name)
    cands = checker.candidates
    if cands is not None and checker.exact and len(cands) <= coll.exact_threshold:
        got = tindex.search(query, k, candidates=cands)
        keep = checker.keep([lb for lb, _ in got])
        return [(lb, s) for (lb, s), ok in zip(got, keep.tolist(), strict=True) if ok]

    def allowed(label: int) -> bool:
        checker.tick()
        return bool(checker.keep([label])[0])

    return tindex.search(query, k, allowed=allowed)


def fuse(
    ranked: Mapping[str, list[tuple[int, float]]], weights: Mapping[str, float], k: int
) -> list[tuple[int, float, dict[str, float]]]:
    """Weighted reciprocal-rank fusion: score = Σ w_s / (RRF_K + rank_s)."""
    for name, w in weights.items():
        if name not in ("vector", "text"):
            raise InvalidArgument(f"weights may name 'vector' and 'text', not {name!r}", code="invalid_weights")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= validation.MAX_FUSION_WEIGHT:
            raise InvalidArgument(
                f"weights must be numbers from 0 to {validation.MAX_FUSION_WEIGHT}", code="invalid_weights"
            )
    fused: dict[int, float] = {}
    signals: dict[int, dict[str, float]] = {}
    for name, results in ranked.items():
        w = float(weights.get(name, 1.0))
        for rank, (label, score) in enumerate(results, start=1):
            fused[label] = fused.get(label, 0.0) + w / (RRF_K + rank)
            signals.setdefault(label, {})[name] = score
    order = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [(label, score, signals[label]) for label, score in order]
