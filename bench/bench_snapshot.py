"""How long an index snapshot stalls the rest of the process, written in-process or by a forked child.

One collection of the shared data (embedded, fsync on). For each way of
writing the snapshot (``in-process``: hnswlib's ``save_index`` on this
process's index, holding the GIL; ``child``: the same call in a forked
copy, ``CollectionIndexes.snapshot(in_child=True)``), while it runs:

- a ticker thread sleeps 1 ms in a loop; its longest gap is how long no
  Python thread of the process could run (a server's requests included);
- a writer thread upserts one record at a time; its slowest call is the
  longest write stall.

The reference is raw hnswlib's ``save_index`` of the same graph, timed alone.
Results: ``bench/results/snapshot-<timestamp>.json``.

Usage: ``python bench/bench_snapshot.py [--n 100000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import common


def stalls(coll: Any, ds: common.Dataset, in_child: bool, start: int) -> dict[str, float]:
    """One snapshot with the ticker and the writer running; returns its wall time and the two stalls."""
    stop = threading.Event()
    gaps: list[float] = []
    writes: list[float] = []

    def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    def writer() -> None:
        i = start
        while not stop.is_set():
            t0 = time.perf_counter()
            coll.upsert({"id": f"w{i}", "vector": ds.base[i % ds.n]})
            writes.append(time.perf_counter() - t0)
            i += 1

    threads = [threading.Thread(target=ticker), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # both running at their pace before the snapshot starts
    gaps.clear()
    writes.clear()
    coll.upsert({"id": "dirty", "vector": ds.base[0]})  # something to snapshot
    t0 = time.perf_counter()
    assert coll.indexes.snapshot(in_child=in_child)
    wall = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    return {
        "snapshot_s": wall,
        "longest_tick_gap_ms": max(gaps) * 1e3,
        "slowest_write_ms": max(writes) * 1e3,
        "writes": len(writes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="rows (default: every real row; 100000 adds interpolated ones)")
    ap.add_argument("--rounds", type=int, default=3, help="snapshots per way (the median is printed)")
    args = ap.parse_args()
    ds = common.load_dataset(args.n, queries=1, log=common.log)
    import engramdb

    workdir = Path(tempfile.mkdtemp(prefix="bench-snapshot-"))
    out: dict[str, Any] = {"n": ds.n, "rounds": args.rounds}
    try:
        # Snapshots only when this script asks for them.
        db = engramdb.open(workdir / "db", index={"snapshot_interval_seconds": 1e9, "snapshot_after_changes": 10**9})
        coll = db.create_collection("bench", dimension=ds.dim, metric="cosine")
        common.log(f"ingesting {ds.n:,} rows ...")
        for s in range(0, ds.n, 1000):
            coll.upsert([{"id": str(i), "vector": ds.base[i]} for i in range(s, min(ds.n, s + 1000))])
        raw = coll.indexes.vindex._index  # diagnostic only: the reference is hnswlib saving this very graph
        ref = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            raw.save_index(str(workdir / "raw.bin"))
            ref.append(time.perf_counter() - t0)
        out["raw_save_index_s"] = float(np.median(ref))
        rows = []
        for k, (name, in_child) in enumerate((("in-process", False), ("child", True))):
            runs = [stalls(coll, ds, in_child, start=(k * args.rounds + r) * 100_000) for r in range(args.rounds)]
            med = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
            out[name] = {"median": med, "runs": runs}
            rows.append(
                [
                    name,
                    common.fmt(med["snapshot_s"], 3),
                    common.fmt(med["longest_tick_gap_ms"], 1),
                    common.fmt(med["slowest_write_ms"], 1),
                    common.fmt(med["writes"]),
                ]
            )
        db.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    common.print_table(
        ["snapshot written", "snapshot s", "longest 1 ms tick gap, ms", "slowest upsert, ms", "upserts meanwhile"],
        rows,
        title=f"Snapshot of {ds.n:,} x {ds.dim}-d (median of {args.rounds}); raw hnswlib save_index "
        f"{out['raw_save_index_s']:.3f} s",
    )
    ip, ch = out["in-process"]["median"], out["child"]["median"]
    gap = common.ratio(ch["longest_tick_gap_ms"], ip["longest_tick_gap_ms"])
    write = common.ratio(ch["slowest_write_ms"], ip["slowest_write_ms"])
    vs_raw = common.ratio(ip["longest_tick_gap_ms"] / 1e3, out["raw_save_index_s"])
    print(
        f"child / in-process: longest tick gap {common.fmt_ratio(gap)}, slowest upsert {common.fmt_ratio(write)}; "
        f"in-process tick gap / raw save_index {common.fmt_ratio(vs_raw)}"
    )
    print(f"results written to {common.write_results('snapshot', out)}")


if __name__ == "__main__":
    main()
