"""Filtered search: EngramDB against raw hnswlib's Python filter callable, in one process.

Issue 18, item 2: filtered search at 10 %, 1 % and 0.1 % selectivity should reach recall@10 >= 0.97
and >= 3x the QPS of raw hnswlib filtering with a Python callable (``set.__contains__``, the usual way,
at the same ``ef_search`` = 64 as the engine's default).

One process ingests the shared real rows (``bench/common.py``: 3 int metadata fields ``tenant``
(10 values), ``bucket`` (100) and ``cell`` (1,000), declared as indexed ``int`` fields) into an
embedded collection and the same rows into a raw hnswlib index with the same M / ef_construction.
Each query filters on ``field == i % cardinality``; ground truth is the exact top-10 among the
matching rows. The two systems run in alternating blocks of 25 queries (raw, engine, raw, ...), so
both see the same machine noise; QPS and recall are printed per pass, then the ratio's median and
range over passes.

Two query sets, so no setting is tuned to one: the held-out ``queries_dev.npy`` (``dev``), and
``rows``: 500 base rows picked at random (seed 123) with Gaussian noise (sigma 0.03, renormalised),
queries the planner never saw.

Usage::

    python bench/bench_filtered.py                   # 42,887 rows, 300 queries per set and field, 3 passes (~3 min)
    python bench/bench_filtered.py --n 100000 --passes 2
    python bench/bench_filtered.py --db /tmp/fdb      # keep / reuse the engine's data directory
"""

from __future__ import annotations

import argparse
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

BLOCK = 25
Search = Callable[[np.ndarray, str, int], list[int]]


def open_engine(path: Path, ds: common.Dataset) -> Any:
    """The engine's collection over ``ds`` (ingested once; reused when ``path`` already holds it)."""
    import engramdb

    db = engramdb.open(str(path), storage={"sync_writes": False})
    if "bench" in [c.name for c in db.list_collections()]:
        return db, db.get_collection("bench")
    coll = common.ingest_engramdb(db, ds)
    return db, coll


def raw_index(ds: common.Dataset, params: dict[str, int]) -> Any:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=ds.dim)
    index.init_index(max_elements=ds.n, M=params["m"], ef_construction=params["ef_construction"])
    index.add_items(ds.base, np.arange(ds.n))
    index.set_ef(params["ef_search"])
    return index


def query_sets(ds: common.Dataset, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(123)
    rows = ds.base[rng.choice(ds.n, min(count, ds.n), replace=False)]
    rows = rows + rng.normal(0.0, 0.03, rows.shape).astype(np.float32)
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return {"dev": ds.queries[:count], "rows": rows}


def one_pass(
    systems: dict[str, Search], qs: np.ndarray, field: str, card: int, gt: np.ndarray
) -> dict[str, tuple[float, float]]:
    """(recall, QPS) per system over ``qs``, in alternating blocks."""
    vals = np.arange(len(qs)) % card
    found: dict[str, list[list[int]]] = {name: [] for name in systems}
    spent = dict.fromkeys(systems, 0.0)
    for start in range(0, len(qs), BLOCK):
        order = list(systems.items())
        if (start // BLOCK) % 2:
            order.reverse()
        for name, fn in order:
            t0 = time.perf_counter()
            for i in range(start, min(len(qs), start + BLOCK)):
                found[name].append(fn(qs[i], field, int(vals[i])))
            spent[name] += time.perf_counter() - t0
    return {name: (common.recall_at_k(found[name], gt), len(qs) / spent[name]) for name in systems}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="base rows (default: the 42,887 real rows)")
    ap.add_argument("--queries", type=int, default=300, help="queries per set and field (default 300)")
    ap.add_argument("--passes", type=int, default=3, help="timed passes per set and field (default 3)")
    ap.add_argument("--fields", default="tenant,bucket,cell", help="subset of tenant,bucket,cell")
    ap.add_argument("--db", type=Path, default=None, help="engine data directory to keep and reuse")
    args = ap.parse_args()

    from engramdb.types import IndexParams

    ds = common.load_dataset(args.n, queries=min(500, args.queries), log=common.log)
    params = IndexParams().model_dump()
    common.log(f"{ds.n:,} rows; building the raw index and the engine's collection ...")
    raw = raw_index(ds, params)
    tmp = None
    if args.db is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-filtered-"))
        path = tmp / "db"
    else:
        path = args.db
    db, coll = open_engine(path, ds)
    allowed = {
        f: [set(np.flatnonzero(ds.fields[f] == v).tolist()) for v in range(card)]
        for f, card in common.FILTER_FIELDS.items()
    }

    def raw_search(q: np.ndarray, field: str, value: int) -> list[int]:
        cands = allowed[field][value]
        try:
            labels, _ = raw.knn_query(q, k=min(common.K, len(cands)), filter=cands.__contains__, num_threads=1)
        except RuntimeError:  # hnswlib found fewer than k matches
            return []
        out: list[int] = labels[0].tolist()
        return out

    def engine_search(q: np.ndarray, field: str, value: int) -> list[int]:
        return [int(h.id) for h in coll.search(q, k=common.K, filter={field: value}, include=[])]

    systems: dict[str, Search] = {"hnswlib": raw_search, "engramdb": engine_search}
    engine_search(ds.queries[0], "tenant", 0)  # loads the index outside the timed loops
    rows: list[list[Any]] = []
    try:
        for set_name, qs in query_sets(ds, args.queries).items():
            for field in args.fields.split(","):
                card = common.FILTER_FIELDS[field]
                vals = np.arange(len(qs)) % card
                gt = common.ground_truth(ds.base, qs, field_values=ds.fields[field], query_values=vals)
                ratios: list[float] = []
                last: dict[str, tuple[float, float]] = {}
                for p in range(args.passes):
                    last = one_pass(systems, qs, field, card, gt)
                    ratios.append(last["engramdb"][1] / last["hnswlib"][1])
                    common.log(
                        f"{set_name} {field} pass {p + 1}: raw {last['hnswlib'][1]:,.0f} QPS recall "
                        f"{last['hnswlib'][0]:.3f} | engramdb {last['engramdb'][1]:,.0f} QPS recall "
                        f"{last['engramdb'][0]:.3f} | {ratios[-1]:.2f}x"
                    )
                rows.append(
                    [
                        set_name,
                        f"{100 / card:g} % ({field})",
                        f"{last['hnswlib'][0]:.3f}",
                        f"{last['engramdb'][0]:.3f}",
                        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
                    ]
                )
    finally:
        db.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    common.print_table(
        ["queries", "filter", "raw recall", "engramdb recall", "engramdb / raw QPS (median, range)"],
        rows,
        f"Filtered search, {ds.n:,} rows, ef_search {params['ef_search']}, k {common.K} "
        f"(targets: recall >= 0.97, >= 3x raw)",
    )
    print(f"load average: {common.machine_info().get('loadavg_1_5_15')}")


if __name__ == "__main__":
    main()
