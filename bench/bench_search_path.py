"""Per-query overhead of EngramDB's embedded search path against raw hnswlib, on the same graph.

One process ingests the shared real rows (``bench/common.py``; 3 int metadata
fields, like ``bench_search.py``), picks the smallest ``ef`` of a sweep at which
raw ``knn_query`` on **the engine's own hnswlib index** reaches the target
recall, then times, in interleaved passes over all queries (raw, ids-only,
default include, then the reverse order, ...):

- raw hnswlib ``knn_query(q, k=10)`` at that ``ef``;
- ``coll.search(q, k=10, ef=ef, include=[])`` (ids and scores);
- ``coll.search(q, k=10, ef=ef)`` (the default include: metadata + text).

Same graph, same ``ef``, same machine noise: the ratios are the engine's
overhead and nothing else (``bench_search.py`` compares separate processes and
two HNSW builds). Per pass it prints QPS, and at the end the ratios' median and
range over passes. ``--profile`` adds cProfile of both engine paths and a
stage breakdown (validation, filter compile, knn, label -> id, row multi-get,
decode, Record/Hit construction) timed with ``perf_counter``.

Usage::

    python bench/bench_search_path.py                  # 42,887 rows, 500 queries, 6 timed passes (~1 min)
    python bench/bench_search_path.py --profile        # plus cProfile and the stage breakdown
    python bench/bench_search_path.py --reopen         # measure in a process that opened the store (packed id map)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))  # run from a checkout without installing
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402

import common  # noqa: E402


def build(path: Path, ds: common.Dataset) -> Any:
    """Ingest the rows (batches of 1,000, fsync on); returns the open database."""
    import engramdb

    db = engramdb.open(str(path), storage={"sync_writes": True})
    common.ingest_engramdb(db, ds)
    return db


def raw_recall(coll: Any, qs: np.ndarray, gt: np.ndarray, ef: int) -> float:
    """Recall of raw ``knn_query`` on the engine's graph (its labels mapped to row numbers through the engine's ids)."""
    vindex = coll.indexes.vindex
    raw = vindex._index
    raw.set_ef(ef)
    try:
        found = [
            [int(vindex.name_of(lb) or -1) for lb in raw.knn_query(q, k=common.K, num_threads=1)[0][0]] for q in qs
        ]
    finally:
        raw.set_ef(1)
    return common.recall_at_k(found, gt)


def pick_ef(coll: Any, qs: np.ndarray, gt: np.ndarray, target: float, efs: list[int]) -> tuple[int, float]:
    rec = 0.0
    for ef in efs:
        rec = raw_recall(coll, qs, gt, ef)
        if rec >= target:
            return ef, rec
    return efs[-1], rec


def stage_breakdown(coll: Any, qs: np.ndarray, ef: int, reps: int) -> dict[str, float]:
    """Mean µs per query of each stage of the default-include path, called one by one (diagnostic)."""
    from engramdb.engine.budget import current_deadline
    from engramdb.engine.search import Query, _Checker
    from engramdb.filters import compile_filter
    from engramdb.types import Hit

    vindex = coll.indexes.vindex
    reader = coll.reader
    inc_default = frozenset(("metadata", "text"))
    t: dict[str, float] = {}
    clock = time.perf_counter

    def add(name: str, dt: float) -> None:
        t[name] = t.get(name, 0.0) + dt

    n = 0
    for _ in range(reps):
        for q in qs:
            n += 1
            t0 = clock()
            query = Query.parse(
                coll.embedder,
                coll.dimension,
                coll.metric,
                vector=q,
                k=10,
                include=("metadata", "text"),
                ef=ef,
                text=None,
                mode=None,
            )
            t1 = clock()
            flt = compile_filter(None)
            checker = _Checker(coll, flt, current_deadline("search"))
            t2 = clock()
            labels, dists = vindex.knn(query.vector, 10, ef)
            t3 = clock()
            sl = getattr(vindex, "score_list", None)
            scored = list(zip(labels.tolist(), sl(dists) if sl else vindex.score(dists).tolist(), strict=True))
            t4 = clock()
            ids = vindex.names_of([lb for lb, _ in scored])
            t5 = clock()
            if hasattr(reader, "live_records"):  # the path since issue 18: read, decode and build in one pass
                reader.live_records([r for r in ids if r is not None], inc_default, checker.now)
                add("6-8 rows: multi-get + decode + Record (live_records)", clock() - t5)
                t8 = clock()
                [Hit(id=r or "", score=s, signals={}) for r, (_, s) in zip(ids, scored, strict=True)]
                add("9 Hit construction", clock() - t8)
                add("1 Query.parse (validation)", t1 - t0)
                add("2 filter compile + checker", t2 - t1)
                add("3 vindex.knn (hnswlib)", t3 - t2)
                add("4 score + zip", t4 - t3)
                add("5 label -> id", t5 - t4)
                continue
            raws = reader.store.multi_get("records", [reader._key(r or "") for r in ids])
            t6 = clock()
            from engramdb.storage.codec import decode_record

            rows = [None if r is None else decode_record(r) for r in raws]
            t7 = clock()
            recs = reader.records(list(zip([r or "" for r in ids], rows, strict=True)), inc_default, checker.now)
            t8 = clock()
            [Hit(id=r.id, score=s, record=r, signals={}) for r, (_, s) in zip(recs, scored, strict=True) if r]
            t9 = clock()
            add("1 Query.parse (validation)", t1 - t0)
            add("2 filter compile + checker", t2 - t1)
            add("3 vindex.knn (hnswlib)", t3 - t2)
            add("4 score + zip", t4 - t3)
            add("5 label -> id", t5 - t4)
            add("6 row multi-get", t6 - t5)
            add("7 row decode (CRC + msgpack)", t7 - t6)
            add("8 Record construction", t8 - t7)
            add("9 Hit construction", t9 - t8)
    return {k: v / n * 1e6 for k, v in sorted(t.items())}


def profile(fn: Callable[[], None], top: int) -> str:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="base rows (default: all 42,887 real rows)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--passes", type=int, default=6, help="timed passes per path (after 2 warm-up passes)")
    ap.add_argument("--recall", type=float, default=0.95, help="pick the smallest ef reaching this recall")
    ap.add_argument("--efs", default="10,12,14,16,20,24,28,32,40,48,64")
    ap.add_argument("--ef", type=int, default=None, help="use this ef instead of picking one")
    ap.add_argument("--reopen", action="store_true", help="measure after reopening the store (as --db always does)")
    ap.add_argument("--profile", action="store_true", help="cProfile and stage breakdown of the engine paths")
    ap.add_argument("--db", default=None, help="reuse (or build) the store in this directory")
    args = ap.parse_args()

    import engramdb

    ds = common.load_dataset(args.n, args.queries)
    qs = ds.queries
    gt = common.ground_truth(ds.base, qs)
    tmp = None
    if args.db:
        path = Path(args.db)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench-path-"))
        path = tmp / "db"
    try:
        t0 = time.perf_counter()
        db = None
        if not path.exists():
            db = build(path, ds)
            common.log(f"built {ds.n:,} rows in {time.perf_counter() - t0:.1f} s")
            if args.reopen:
                db.close()
                db = None
        if db is None:  # a process that opened existing data (packed id map until the first write)
            db = engramdb.open(str(path), storage={"sync_writes": True})
        coll = db.get_collection("bench")
        coll.search(qs[0], k=10)  # loads the index
        raw = coll.indexes.vindex._index  # diagnostic: the engine's own graph
        if args.ef:
            ef = args.ef
            rec = raw_recall(coll, qs, gt, ef)
        else:
            ef, rec = pick_ef(coll, qs, gt, args.recall, [int(x) for x in args.efs.split(",")])
        eng = [[int(h.id) for h in coll.search(q, k=10, ef=ef, include=[])] for q in qs]
        dflt = [[int(h.id) for h in coll.search(q, k=10, ef=ef)] for q in qs]
        print(
            f"rows {ds.n:,}, queries {len(qs)}, ef {ef}: recall raw {rec:.4f}, engine ids-only "
            f"{common.recall_at_k(eng, gt):.4f}, default include {common.recall_at_k(dflt, gt):.4f}"
        )
        clock = time.perf_counter

        def raw_pass() -> float:
            raw.set_ef(ef)
            t0 = clock()
            for q in qs:
                raw.knn_query(q, k=10, num_threads=1)
            dt = clock() - t0
            raw.set_ef(1)  # the engine's resting value
            return dt

        def ids_pass() -> float:
            t0 = clock()
            for q in qs:
                coll.search(q, k=10, ef=ef, include=[])
            return clock() - t0

        def default_pass() -> float:
            t0 = clock()
            for q in qs:
                coll.search(q, k=10, ef=ef)
            return clock() - t0

        fns = {"raw": raw_pass, "ids": ids_pass, "default": default_pass}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for p in range(args.passes + 2):
            order = list(fns) if p % 2 == 0 else list(reversed(fns))
            got = {name: fns[name]() for name in order}
            if p >= 2:
                for name, dt in got.items():
                    times[name].append(dt)
                print(
                    f"pass {p - 1}: QPS raw {len(qs) / got['raw']:,.0f}, ids-only {len(qs) / got['ids']:,.0f} "
                    f"({got['raw'] / got['ids']:.2f}x), default {len(qs) / got['default']:,.0f} "
                    f"({got['raw'] / got['default']:.2f}x)"
                )
        for name, label, target in (("ids", "ids-only", 0.9), ("default", "default include", 0.8)):
            ratios = [r / e for r, e in zip(times["raw"], times[name], strict=True)]
            us = [(e - r) / len(qs) * 1e6 for r, e in zip(times["raw"], times[name], strict=True)]
            print(
                f"{label}: QPS / raw median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-"
                f"{max(ratios):.2f}x over {len(ratios)} passes; target {target}x); overhead "
                f"{statistics.median(us):.0f} us/query (range {min(us):.0f}-{max(us):.0f})"
            )
        print(f"raw knn_query: {statistics.median(times['raw']) / len(qs) * 1e6:.0f} us/query (median pass)")
        if args.profile:
            print("\nstage breakdown, default include (mean us/query, stages called one by one):")
            for k, v in stage_breakdown(coll, qs, ef, 3).items():
                print(f"  {k:32s} {v:7.1f}")
            for name, fn in (("ids-only", ids_pass), ("default include", default_pass)):
                print(f"\ncProfile, {name}, {len(qs)} queries x 3:")
                print(profile(lambda fn=fn: [fn() for _ in range(3)] and None, 25))
        db.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
