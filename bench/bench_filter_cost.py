"""Benchmark the cost of a large ``$or`` filter (issue 14, item 5).

Builds an embedded collection of 4,000 records (dimension 8) whose metadata
holds ``user`` (declared as a ``keyword`` field, so the payload index covers
it) and ``tag`` (not declared, so only the per-record evaluator can answer),
then times ``count``, one ``scan`` page and a filtered ``search`` under a
5,000-branch ``$or`` of equalities on each field, next to the same filter
written as one ``$in``. Each number is the best of ``REPEAT`` runs (seconds).

The 5,000-branch filter of the report is refused since the fix (``filter_too_large``, more than
``MAX_FILTER_NODES`` conditions); the script then times the largest ``$or`` still accepted (999
branches) and how quickly the 5,000-branch one is refused. Set ``ENGRAMDB_SRC`` to another
checkout's ``src`` (e.g. ``git archive HEAD src | tar -x -C /tmp/old``) to time older code.

Usage: ``python bench/bench_filter_cost.py [branches]``. Runtime: seconds after the fix, about a
minute before it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("ENGRAMDB_SRC") or str(REPO / "src"))

import engramdb  # noqa: E402 - after the sys.path tweak above

N = 4_000
REPORTED = 5_000
REPEAT = 3


def best(fn: Callable[[], Any]) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(REPEAT):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    from engramdb import filters

    limit = getattr(filters, "MAX_FILTER_NODES", None)
    branches = int(sys.argv[1]) if len(sys.argv) > 1 else (REPORTED if limit is None else min(REPORTED, limit - 1))
    print(f"engramdb from {Path(engramdb.__file__).parent}")
    t = time.perf_counter()
    try:
        filters.compile_filter({"$or": [{"tag": f"x{j}"} for j in range(REPORTED)]})
        print(f"{REPORTED}-branch $or: accepted")
    except engramdb.EngramError as e:
        print(f"{REPORTED}-branch $or: refused in {time.perf_counter() - t:.4f} s ({e.code}: {e.message})")
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as d:
        db = engramdb.open(Path(d) / "data")
        coll = db.create_collection("bench", dimension=8, indexed_fields={"user": "keyword"})
        vecs = rng.normal(size=(N, 8)).astype(np.float32)
        coll.upsert(
            [
                {"id": f"r{i:05d}", "vector": vecs[i].tolist(), "metadata": {"user": f"u{i}", "tag": f"t{i}"}}
                for i in range(N)
            ]
        )
        # Every other branch names an existing record: about half the records match, and the
        # other half are compared with every branch by a per-record evaluator. The "miss"
        # filter matches nothing, the evaluator's worst case.
        hits = [f"u{2 * j}" for j in range(branches)]
        misses = [f"x{j}" for j in range(branches)]
        q = rng.normal(size=8).astype(np.float32).tolist()
        print(f"{N} records, {branches}-branch $or of equalities; best of {REPEAT} (s)")
        for field, values in (("user", hits), ("tag", hits), ("user", misses), ("tag", misses)):
            vals = [v.replace("u", "t") for v in values] if field == "tag" else values
            or_filter = {"$or": [{field: v} for v in vals]}
            in_filter = {field: {"$in": vals}}
            label = ("indexed" if field == "user" else "not indexed") + (", miss" if values is misses else "")
            for name, flt in (("$or", or_filter), ("$in", in_filter)):
                t_count, n = best(lambda flt=flt: coll.count(flt))
                t_scan, _ = best(lambda flt=flt: coll.scan(filter=flt, limit=100))
                t_search, _ = best(lambda flt=flt: coll.search(q, k=10, filter=flt))
                print(
                    f"  {field:5s} ({label:17s}) {name}: count={t_count:.3f} (n={n}) "
                    f"scan={t_scan:.3f} search={t_search:.3f}"
                )
        db.close()


if __name__ == "__main__":
    main()
