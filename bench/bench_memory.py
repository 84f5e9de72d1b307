"""Memory and disk of EngramDB against raw hnswlib, each system in processes of its own, ratios printed.

Per round and system (the order alternates between rounds, so both see the same machine):

1. an *ingesting* process: imports the library and loads the data, takes its baseline RSS,
   resets the peak (``/proc/self/clear_refs``), ingests in batches of 1,000 (EngramDB with the
   filter fields of ``bench_search.py`` as indexed ``int`` fields, fsync on), runs 500 queries
   (ef 64; EngramDB also 500 with the default ``include``), then idles ``--idle`` seconds (longer
   than ``storage.idle_flush_seconds``, after which EngramDB flushes its memtables and trims the
   heap) and reads its RSS again (*steady*); then persists (hnswlib ``save_index``, EngramDB
   ``close``). Reported over the baseline: peak during ingest + search, RSS after the search,
   steady RSS, peak including the persist.
2. a *fresh* process that opens what was persisted: baseline after imports, open + load + first
   query (timed), 500 queries; its peak and RSS over the baseline.
3. disk: the saved hnswlib file; EngramDB's data directory (RocksDB files and snapshots apart).

For EngramDB it also prints where the memory is: ``Database.stats()`` per component,
``/proc/self/smaps_rollup`` (anonymous vs file-backed), glibc's ``mallinfo2`` (heap in use,
free but retained) and the largest shared libraries' resident pages.

Before/after in one run: ``--systems hnswlib,engramdb,engramdb@/tmp/head/src`` runs the
``engramdb`` found under that ``src`` directory as a third system (label ``engramdb@head``).

Usage: ``python bench/bench_memory.py [--n 100000] [--rounds 2] [--systems hnswlib,engramdb]``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
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

BATCH = 1000
EF = 64
PARAMS = {"m": 16, "ef_construction": 200}


def status_kb(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mb() -> float:
    import gc

    gc.collect()
    return status_kb("VmRSS") / 1024


def peak_mb() -> float:
    return status_kb("VmHWM") / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def smaps_rollup() -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) / 1024
    except OSError:
        pass
    return {
        k: round(out[k], 1) for k in ("Rss", "Anonymous", "Shared_Clean", "Private_Clean", "Private_Dirty") if k in out
    }


def libraries_mb(top: int = 6) -> dict[str, float]:
    """Resident pages of file mappings, by file (shared libraries' code and data)."""
    sizes: dict[str, float] = {}
    name = ""
    try:
        with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
            for line in f:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):
                    parts = line.split()
                    name = os.path.basename(parts[5]) if len(parts) >= 6 and parts[5].startswith("/") else ""
                elif first == "Rss:" and name:
                    sizes[name] = sizes.get(name, 0.0) + int(line.split()[1]) / 1024
    except OSError:
        return {}
    return {k: round(v, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:top]}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mallinfo() -> dict[str, float]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    m = fn()
    mb = 1 / 2**20
    return {
        "heap_mb": round(m.arena * mb, 1),
        "mmapped_mb": round(m.hblkhd * mb, 1),
        "in_use_mb": round(m.uordblks * mb, 1),
        "free_retained_mb": round(m.fordblks * mb, 1),
    }


def dir_sizes(root: Path) -> dict[str, float]:
    """Bytes under ``root`` in MB: total, snapshot files (HNSW, metadata, text) and RocksDB's."""
    out = {"total": 0.0, "vector_hnsw": 0.0, "vector_meta": 0.0, "text_index": 0.0, "rocksdb": 0.0}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            size = os.path.getsize(os.path.join(dirpath, fn)) / 2**20
            out["total"] += size
            if fn.startswith("vector.hnsw"):
                out["vector_hnsw"] += size
            elif fn.startswith("vector.meta"):
                out["vector_meta"] += size
            elif os.sep + "text" in dirpath:
                out["text_index"] += size
            else:
                out["rocksdb"] += size
    return {k: round(v, 1) for k, v in out.items()}


# ------------------------------------------------------------------ workers
def ingest_worker(args: argparse.Namespace) -> dict[str, Any]:
    ds = common.load_dataset(args.n, 500)
    wd = Path(args.workdir)
    out: dict[str, Any] = {}
    if args.system == "hnswlib":
        import hnswlib

        rss0 = rss_mb()
        reset_peak()
        index = hnswlib.Index(space="ip", dim=ds.dim)
        index.init_index(max_elements=ds.n, M=PARAMS["m"], ef_construction=PARAMS["ef_construction"])
        t0 = time.perf_counter()
        for s in range(0, ds.n, BATCH):
            index.add_items(ds.base[s : s + BATCH], np.arange(s, min(ds.n, s + BATCH)))
        out["ingest_s"] = time.perf_counter() - t0
        out["after_ingest"] = rss_mb() - rss0
        index.set_ef(EF)
        for q in ds.queries:
            index.knn_query(q, k=common.K, num_threads=1)
        out["after_search"] = rss_mb() - rss0
        out["peak_ingest_search"] = peak_mb() - rss0
        time.sleep(args.idle)
        out["steady"] = rss_mb() - rss0
        index.save_index(str(wd / "index.bin"))
        out["peak_with_persist"] = peak_mb() - rss0
        out["disk"] = {"total": round(os.path.getsize(wd / "index.bin") / 2**20, 1)}
        return out
    import engramdb

    columns = [ds.fields[f].tolist() for f in ds.fields]
    meta = [dict(zip(ds.fields, vals, strict=True)) for vals in zip(*columns, strict=True)]
    rss0 = rss_mb()
    reset_peak()
    db = engramdb.open(str(wd / "db"), storage={"sync_writes": True})
    coll = db.create_collection(
        "bench", dimension=ds.dim, metric="cosine", index=dict(PARAMS), indexed_fields={f: "int" for f in ds.fields}
    )
    t0 = time.perf_counter()
    for s in range(0, ds.n, BATCH):
        coll.upsert([{"id": str(i), "vector": ds.base[i], "metadata": meta[i]} for i in range(s, min(ds.n, s + BATCH))])
    out["ingest_s"] = time.perf_counter() - t0
    out["after_ingest"] = rss_mb() - rss0
    for q in ds.queries:
        coll.search(q, k=common.K, ef=EF, include=[])
    for q in ds.queries:
        coll.search(q, k=common.K, ef=EF)
    out["after_search"] = rss_mb() - rss0
    out["peak_ingest_search"] = peak_mb() - rss0
    out["breakdown_after_search"] = breakdown(db)
    time.sleep(args.idle)
    out["steady"] = rss_mb() - rss0
    out["breakdown_steady"] = breakdown(db)
    db.close()
    out["peak_with_persist"] = peak_mb() - rss0
    out["disk"] = dir_sizes(wd / "db")
    return out


def breakdown(db: Any) -> dict[str, Any]:
    st = db.stats() if hasattr(db, "stats") else {}
    mb = 1 / 2**20
    comp: dict[str, float] = {}
    tot = st.get("totals", {})
    for k in ("vector_index_bytes", "id_maps_bytes", "payload_index_bytes", "text_index_bytes"):
        if k in tot:
            comp[k.removesuffix("_bytes")] = round(tot[k] * mb, 1)
    for k, v in st.get("rocksdb", {}).items():
        if k in ("memtables_bytes", "block_cache_bytes", "table_readers_bytes"):
            comp["rocksdb_" + k.removesuffix("_bytes")] = round(v * mb, 1)
    return {"components_mb": comp, "smaps": smaps_rollup(), "malloc": mallinfo(), "libraries_mb": libraries_mb()}


def fresh_worker(args: argparse.Namespace) -> dict[str, Any]:
    qs = np.load(common.data_dir() / "queries_dev.npy").astype(np.float32)[:500]
    wd = Path(args.workdir)
    out: dict[str, Any] = {}
    if args.system == "hnswlib":
        import hnswlib

        rss0 = rss_mb()
        reset_peak()
        t0 = time.perf_counter()
        index = hnswlib.Index(space="ip", dim=qs.shape[1])
        index.load_index(str(wd / "index.bin"))
        index.set_ef(EF)
        index.knn_query(qs[0], k=common.K, num_threads=1)
        out["first_query_s"] = time.perf_counter() - t0
        for q in qs:
            index.knn_query(q, k=common.K, num_threads=1)
    else:
        import engramdb
        import engramdb.config
        import engramdb.engine.collection
        import engramdb.engine.database

        rss0 = rss_mb()
        reset_peak()
        t0 = time.perf_counter()
        db = engramdb.open(str(wd / "db"))
        coll = db.get_collection("bench")
        coll.search(qs[0], k=common.K, ef=EF, include=[])
        out["first_query_s"] = time.perf_counter() - t0
        out["rebuilt"] = coll.load_progress != (0, 0)
        for q in qs:
            coll.search(q, k=common.K, ef=EF, include=[])
        for q in qs:
            coll.search(q, k=common.K, ef=EF)
        out["breakdown"] = breakdown(db)
    out["after_search"] = rss_mb() - rss0
    out["peak"] = peak_mb() - rss0
    return out


# ------------------------------------------------------------- orchestrator
def run(system: str, mode: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    name, _, src = system.partition("@")
    env = dict(os.environ)
    env["PYTHONPATH"] = src or str(common.REPO / "src")
    cmd = [sys.executable, __file__, "--worker", mode, "--system", name, "--workdir", str(workdir)]
    cmd += ["--idle", str(args.idle)] + (["--n", str(args.n)] if args.n else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{system} {mode} worker failed:\n{proc.stderr[-3000:]}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


def label(system: str) -> str:
    name, _, src = system.partition("@")
    return name if not src else f"{name}@{Path(src).parent.name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--systems", default="hnswlib,engramdb")
    ap.add_argument("--idle", type=float, default=6.5, help="seconds idle before the steady reading")
    ap.add_argument("--worker", choices=["ingest", "fresh"])
    ap.add_argument("--system")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.worker:
        fn = ingest_worker if args.worker == "ingest" else fresh_worker
        print(json.dumps(fn(args)), flush=True)
        return
    systems = args.systems.split(",")
    if systems[0] != "hnswlib":
        raise SystemExit("--systems must start with hnswlib (the reference)")
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    load = [os.getloadavg()[0]]
    root = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        for r in range(args.rounds):
            order = systems if r % 2 == 0 else systems[::-1]
            for s in order:
                wd = root / f"{r}-{label(s)}"
                wd.mkdir()
                common.log(f"round {r + 1}: {label(s)} ingest ...")
                ing = run(s, "ingest", wd, args)
                common.log(f"round {r + 1}: {label(s)} fresh ...")
                fr = run(s, "fresh", wd, args)
                rows[s].append({"ingest": ing, "fresh": fr})
                load.append(os.getloadavg()[0])
                shutil.rmtree(wd, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(rows, systems, args, load)


METRICS = [
    ("ingesting: peak over baseline, ingest + search", "ingest", "peak_ingest_search", 1.5),
    ("ingesting: RSS after search", "ingest", "after_search", None),
    ("ingesting: steady RSS (after idle)", "ingest", "steady", 1.3),
    ("ingesting: peak incl. persist/close", "ingest", "peak_with_persist", None),
    ("fresh: peak over baseline (open + 1,000 queries)", "fresh", "peak", 1.5),
    ("fresh: RSS after the queries", "fresh", "after_search", 1.3),
    ("fresh: open to first result, s", "fresh", "first_query_s", None),
    ("ingest, s", "ingest", "ingest_s", None),
]


def report(
    rows: dict[str, list[dict[str, Any]]], systems: list[str], args: argparse.Namespace, load: list[float]
) -> None:
    n = args.n or common.N_REAL
    ref = rows[systems[0]]
    print(f"\nbench_memory: n={n:,}, rounds={args.rounds}, load average {min(load):.1f}-{max(load):.1f}")
    print(
        f"{'metric (MB unless stated)':52} " + " ".join(f"{label(s):>16}" for s in systems) + "  ratio (range) [target]"
    )
    metrics: list[tuple[str, str, Any, float | None]] = [(a, b, c, d) for a, b, c, d in METRICS]
    metrics.append(("disk, MB", "ingest", ("disk", "total"), 1.3))
    for title, phase, key, target in metrics:

        def val(run: dict[str, Any], phase: str = phase, key: Any = key) -> float:
            v = run[phase]
            for k in key if isinstance(key, tuple) else (key,):
                v = v[k]
            return float(v)

        cells = []
        ratios = []
        for s in systems:
            vals = [val(r) for r in rows[s]]
            cells.append(
                f"{statistics.median(vals):>9.2f}"
                + (f"±{(max(vals) - min(vals)) / 2:<6.2f}" if len(vals) > 1 else " " * 7)
            )
            if s != systems[0]:
                rs = [val(r) / val(h) for r, h in zip(rows[s], ref, strict=True) if val(h)]
                ratios.append(f"{label(s)} {statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})" if rs else "-")
        tgt = f" [<= {target}x]" if target else ""
        print(f"{title:52} " + " ".join(cells) + "  " + "; ".join(ratios) + tgt)
    for s in systems[1:]:
        last = rows[s][-1]
        print(f"\n{label(s)} disk (last round): {last['ingest']['disk']}")
        for phase, key in (
            ("ingest", "breakdown_after_search"),
            ("ingest", "breakdown_steady"),
            ("fresh", "breakdown"),
        ):
            print(f"{label(s)} {phase} {key}: {json.dumps(last[phase].get(key))}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common.RESULTS_DIR.mkdir(exist_ok=True)
    path = common.RESULTS_DIR / f"memory-{stamp}.json"
    path.write_text(json.dumps({"n": n, "systems": systems, "load": load, "rows": rows}), encoding="utf-8")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
