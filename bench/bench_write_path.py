"""Where a durable write's time goes, in one process: batch ingest against raw hnswlib, then single upserts.

Times are summed around the stages of the write path (the caller's validation and row
building, the writer's decide + encode + write + fsync, the notifier's index updates and
hnswlib's insert inside them) by wrapping those functions; every timed phase ends with a
search, which waits until the indexes hold every acknowledged write.

- ingest: raw hnswlib ``add_items`` of the rows in batches of 1,000 (index sized up front,
  EngramDB's M / ef_construction), then EngramDB ``upsert`` of the same batches; the ratio is
  EngramDB / raw.
- single: ``--ops`` upserts of existing ids, one at a time, each with a slightly moved vector.

``--src DIR`` imports ``engramdb`` from another source tree (e.g. a copy of an older revision's
``src/``), so before / after can be run alternately in the same session::

    python bench/bench_write_path.py                   # 20,000 real 384-d rows
    python bench/bench_write_path.py --dim 8           # the rows cut to 8-d (the index is cheap)
    python bench/bench_write_path.py --src /tmp/old/src
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402

import common  # noqa: E402

STAGES = {
    ("engramdb.engine.rows", None, "upsert_rows"): "caller: validate + build rows",
    ("engramdb.storage.store", "Store", "_write_batch"): "writer: decide + encode + write + fsync",
    ("engramdb.storage.store", "Store", "_notify"): "notifier: index updates",
    ("engramdb.index.vector", "VectorIndex", "upsert"): "notifier:   of which VectorIndex.upsert",
}


def instrument(acc: dict[str, float]) -> None:
    import importlib

    for (mod_name, cls_name, fn_name), label in STAGES.items():
        mod = importlib.import_module(mod_name)
        owner: Any = mod if cls_name is None else getattr(mod, cls_name)
        real = getattr(owner, fn_name)

        def timed(*a: Any, _real: Any = real, _label: str = label, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                acc[_label] += time.perf_counter() - t0

        setattr(owner, fn_name, timed)
    # collection.py imported ``rows`` as a module: the wrapper above is what it calls.


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(BENCH.parent / "src"), help="source tree to import engramdb from")
    ap.add_argument("--n", type=int, default=20_000, help="rows (default 20,000)")
    ap.add_argument("--dim", type=int, default=None, help="cut the rows to this many dimensions (renormalised)")
    ap.add_argument("--ops", type=int, default=1000, help="single upserts (default 1,000)")
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    import hnswlib

    import engramdb
    from engramdb.types import IndexParams

    acc: dict[str, float] = collections.defaultdict(float)
    instrument(acc)
    base = common.load_dataset(args.n, 1).base
    if args.dim:
        base = np.ascontiguousarray(base[:, : args.dim])
        base /= np.linalg.norm(base, axis=1, keepdims=True)
    n, dim = base.shape
    p = IndexParams()
    load = common.machine_info().get("loadavg_1_5_15")
    print(f"engramdb from {Path(engramdb.__file__).parent}; {n:,} rows, {dim}-d; load {load}")

    idx = hnswlib.Index(space="ip", dim=dim)
    idx.init_index(max_elements=n, M=p.m, ef_construction=p.ef_construction)
    t0 = time.perf_counter()
    for s in range(0, n, 1000):
        idx.add_items(base[s : s + 1000], np.arange(s, min(n, s + 1000)))
    raw_s = time.perf_counter() - t0

    recs = [{"id": f"r{i}", "vector": base[i], "metadata": {"tenant": i % 10}} for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="bench-write-path-") as d:
        db = engramdb.open(str(Path(d) / "db"))
        coll = db.create_collection("w", dimension=dim, metric="cosine", indexed_fields={"tenant": "int"})
        acc.clear()
        t0 = time.perf_counter()
        for s in range(0, n, 1000):
            coll.upsert(recs[s : s + 1000])
        coll.search(base[0], k=1, include=[])
        eng_s = time.perf_counter() - t0
        print(
            f"\ningest: raw add_items {n / raw_s:,.0f} rows/s, EngramDB {n / eng_s:,.0f} rows/s: {raw_s / eng_s:.2f}x"
        )
        print(f"  raw add_items {raw_s:.2f} s; EngramDB {eng_s:.2f} s, of which (threads overlap):")
        for label, v in sorted(acc.items()):
            print(f"    {label:42s} {v:6.2f} s")

        rng = np.random.default_rng(1)
        ids = rng.choice(n, min(args.ops, n), replace=False)
        moved = base[ids] + rng.normal(0, 1e-3, (len(ids), dim)).astype(np.float32)
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        acc.clear()
        t0 = time.perf_counter()
        for j, i in enumerate(ids.tolist()):
            coll.upsert([{"id": f"r{i}", "vector": moved[j], "metadata": {"tenant": i % 10}}])
        coll.search(base[0], k=1, include=[])
        dt = time.perf_counter() - t0
        print(f"\nsingle upserts, moved vector: {len(ids) / dt:,.0f} ops/s ({dt / len(ids) * 1e3:.3f} ms per op)")
        for label, v in sorted(acc.items()):
            print(f"    {label:42s} {v / len(ids) * 1e3:6.3f} ms per op")
        db.close()


if __name__ == "__main__":
    main()
