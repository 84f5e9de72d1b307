"""Storage benchmark: durable writes and open time of EngramDB vs raw rocksdict, one run.

Measured on ``--n`` records (default 100,000) with small random unit vectors
(``--dim``, default 8, so the vector index does not dominate; ``--real`` uses the
384-d dataset rows instead) and ``{"tenant": i % 10}`` metadata:

- batch ingest, batches of 1,000, ``sync_writes`` on (rows/s);
- durable single-record upsert of existing ids, one writer (ops/s, p50/p99), each
  with a slightly moved vector so the vector index must really change (``--same-vector``:
  the stored vector again, a metadata-only write for EngramDB);
- the same with ``--threads`` (default 16) concurrent writer threads — group
  commit should turn many callers into one fsync; the number of RocksDB write
  batches the engine committed is printed (records per fsync);
- open time: a NEW process imports, opens and does the first ``get`` (timed from
  the parent, plus the in-process breakdown); for EngramDB also the first search
  (which loads the index snapshot).

The references in the same run are raw hnswlib (``add_items`` in memory, the same
M / ef_construction: the ingest target is 1.0x its rows/s; re-adding an existing label
is its in-place update), raw rocksdict with ``WriteOptions.sync = True``
and values of the same size as EngramDB's encoded record rows: one ``put`` per
op (one thread, then the same threads), a ``WriteBatch`` of 1,000 for ingest,
and ``Rdict(path)`` + ``get`` for open. Raw and engine phases are interleaved so
that both see the same machine noise. Every metric is printed with the ratio
EngramDB / rocksdict. Results: ``bench/results/storage-<timestamp>.json``.

Usage::

    python bench/bench_storage.py           # 100,000 records (about 1-3 minutes on 2 cores)
    python bench/bench_storage.py --quick   # 20,000 records, fewer ops (< 1 minute)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
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

COLLECTION = "storage"
BATCH = 1000
TARGETS = {"upsert_1": 1000.0, "upsert_many": 5000.0, "cold_first_search_s": 0.5}


# ============================================================================ data
class Workload:
    """Record ids, vectors and metadata, and raw key/value pairs of the same sizes."""

    def __init__(self, n: int, dim: int, real: bool):
        self.n = n
        if real:
            ds = common.load_dataset(n, 1, log=common.log)
            self.vectors = ds.base
            self.label = ds.label
        else:
            rng = np.random.default_rng(5)
            v = rng.normal(size=(n, dim)).astype(np.float32)
            self.vectors = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
            self.label = f"{n:,} records, random unit {dim}-d vectors"
        self.dim = int(self.vectors.shape[1])
        self.ids = [f"r{i:08d}" for i in range(n)]
        # The vectors single upserts send, by id: set per phase (see moved()).
        self.upsert_vectors: dict[int, np.ndarray] = {}
        self.meta = [{"tenant": i % 10} for i in range(n)]
        self.value_size = self._engram_row_size()
        filler = np.random.default_rng(6).bytes(self.value_size)
        self.raw_keys = [b"records/" + rid.encode() for rid in self.ids]
        self.raw_value = filler

    def record(self, i: int) -> dict[str, Any]:
        return {"id": self.ids[i], "vector": self.vectors[i], "metadata": self.meta[i]}

    def upsert_record(self, i: int) -> dict[str, Any]:
        return {"id": self.ids[i], "vector": self.upsert_vector(i), "metadata": self.meta[i]}

    def upsert_vector(self, i: int) -> np.ndarray:
        return self.upsert_vectors.get(i, self.vectors[i])

    def moved(self, ids: list[int], seed: int) -> dict[int, np.ndarray]:
        """Slightly moved unit copies of rows ``ids`` (a new seed per phase: every upsert changes the vector)."""
        rng = np.random.default_rng(seed)
        rows = self.vectors[ids] + rng.normal(0.0, 1e-3, (len(ids), self.dim)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return {i: np.ascontiguousarray(rows[j], dtype=np.float32) for j, i in enumerate(ids)}

    def _engram_row_size(self) -> int:
        """Bytes of EngramDB's encoded record row for record 0 (so raw values match)."""
        from engramdb.storage.codec import RecordRow, encode_record

        row = RecordRow(hlc=1 << 40, node=0, created_at=time.time(), updated_at=time.time(), metadata=self.meta[0])
        row.vector = self.vectors[0].tobytes()
        return len(encode_record(row))


# ========================================================================= systems
class RawHnsw:
    """Raw hnswlib in memory, EngramDB's default M / ef_construction: the index library's own limit."""

    def __init__(self, path: Path, w: Workload):
        import hnswlib

        from engramdb.types import IndexParams

        p = IndexParams()
        self.w = w
        self.index = hnswlib.Index(space="ip", dim=w.dim)
        self.index.init_index(max_elements=w.n, M=p.m, ef_construction=p.ef_construction)

    def ingest(self, start: int, stop: int) -> None:
        self.index.add_items(self.w.vectors[start:stop], np.arange(start, stop))

    def upsert(self, i: int) -> None:
        self.index.add_items(self.w.upsert_vector(i)[None, :], np.array([i]))

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class RawRocks:
    """rocksdict with sync writes: the storage engine's practical limit."""

    def __init__(self, path: Path, w: Workload):
        from rocksdict import Options, Rdict, WriteBatch, WriteOptions

        self.w = w
        self.path = path
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.db = Rdict(str(path), options=opts)
        self.wopts = WriteOptions()
        self.wopts.sync = True
        self._batch_cls = WriteBatch

    def ingest(self, start: int, stop: int) -> None:
        wb = self._batch_cls(raw_mode=True)
        for i in range(start, stop):
            wb.put(self.w.raw_keys[i], self.w.raw_value)
        self.db.write(wb, self.wopts)

    def upsert(self, i: int) -> None:
        self.db.put(self.w.raw_keys[i], self.w.raw_value, self.wopts)

    def finish(self) -> None:
        pass

    def close(self) -> None:
        self.db.close()


class RawRocksHnsw(RawRocks):
    """rocksdict sync writes plus a raw hnswlib index with EngramDB's default parameters."""

    def __init__(self, path: Path, w: Workload):
        super().__init__(path, w)
        import hnswlib

        from engramdb.types import IndexParams

        p = IndexParams()
        self.index = hnswlib.Index(space="ip", dim=w.dim)
        self.index.init_index(max_elements=w.n, M=p.m, ef_construction=p.ef_construction)

    def ingest(self, start: int, stop: int) -> None:
        super().ingest(start, stop)
        self.index.add_items(self.w.vectors[start:stop], np.arange(start, stop))

    def upsert(self, i: int) -> None:
        super().upsert(i)
        self.index.add_items(self.w.upsert_vector(i)[None, :], np.array([i]))


class Engram:
    """EngramDB embedded, ``sync_writes`` on (the default)."""

    def __init__(self, path: Path, w: Workload):
        import engramdb

        self.w = w
        self.db = engramdb.open(str(path), storage={"sync_writes": True})
        self.coll = self.db.create_collection(
            COLLECTION, dimension=w.dim, metric="cosine", indexed_fields={"tenant": "int"}
        )

    @property
    def commits(self) -> int:
        """RocksDB write batches committed by the group-commit writer so far."""
        return int(self.db.store.commits)

    def ingest(self, start: int, stop: int) -> None:
        self.coll.upsert([self.w.record(i) for i in range(start, stop)])

    def upsert(self, i: int) -> None:
        self.coll.upsert([self.w.upsert_record(i)])

    def finish(self) -> None:
        """One search: it returns once the indexes hold every write acknowledged before it (timed)."""
        self.coll.search(self.w.vectors[0], k=1, include=[])

    def close(self) -> None:
        self.db.close()


# ========================================================================== phases
# Every timed phase ends with the system's finish(): for EngramDB a search, which waits until the
# indexes hold every acknowledged write, so throughput counts the index work that acknowledging
# after the fsync moves off the caller's path.
def timed_ingest(fn: Callable[[int, int], None], n: int, finish: Callable[[], None]) -> dict[str, float]:
    t0 = time.perf_counter()
    for s in range(0, n, BATCH):
        fn(s, min(n, s + BATCH))
    finish()
    dt = time.perf_counter() - t0
    return {"rows": n, "seconds": dt, "rows_per_s": n / dt}


def timed_single(fn: Callable[[int], None], ids: list[int], finish: Callable[[], None]) -> dict[str, float]:
    samples = []
    clock = time.perf_counter
    start = clock()
    for i in ids:
        t0 = clock()
        fn(i)
        samples.append(clock() - t0)
    finish()
    return common.LatencyStats.of(samples, clock() - start).to_dict()


def timed_threads(
    fn: Callable[[int], None], ids: list[int], threads: int, finish: Callable[[], None]
) -> dict[str, float]:
    """``threads`` writers, each doing its share of ``ids`` one op at a time; all start together."""
    shares = [ids[t::threads] for t in range(threads)]
    lat: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def run(t: int) -> None:
        clock = time.perf_counter
        start.wait()
        try:
            for i in shares[t]:
                t0 = clock()
                fn(i)
                lat[t].append(clock() - t0)
        except BaseException as e:  # surface worker failures in the main thread
            errors.append(e)

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for th in workers:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in workers:
        th.join()
    finish()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return common.LatencyStats.of([x for per in lat for x in per], wall).to_dict()


# ======================================================================= open time
_OPEN_ENGRAM = """
import json, sys, time
t_start = time.time()
import engramdb
import engramdb.engine.database, engramdb.engine.collection, engramdb.config  # what open() imports lazily
t_imp = time.time()
db = engramdb.open(sys.argv[1])
t_open = time.time()
coll = db.get_collection(sys.argv[2])
rec = coll.get(sys.argv[3])
t_get = time.time()
import numpy as np
q = np.asarray(rec.vector, dtype=np.float32)
t_np = time.time()
hits = coll.search(q, k=10, include=[])
t_q = time.time()
print(json.dumps({"t_start": t_start, "import_s": t_imp - t_start, "open_s": t_open - t_imp,
                  "first_get_s": t_get - t_open, "to_first_get_s": t_get - t_start,
                  "first_search_s": t_q - t_np, "found": rec is not None and hits[0].id == sys.argv[3],
                  "rebuilt_index": coll.load_progress != (0, 0), "t_get": t_get}), flush=True)
db.close()
"""

_OPEN_RAW = """
import json, sys, time
t_start = time.time()
from rocksdict import Options, Rdict
t_imp = time.time()
opts = Options(raw_mode=True)
db = Rdict(sys.argv[1], options=opts)
t_open = time.time()
v = db.get(sys.argv[3].encode())
t_get = time.time()
print(json.dumps({"t_start": t_start, "import_s": t_imp - t_start, "open_s": t_open - t_imp,
                  "first_get_s": t_get - t_open, "to_first_get_s": t_get - t_start,
                  "found": v is not None, "t_get": t_get}), flush=True)
db.close()
"""


def open_time(script: str, argv: list[str], trials: int) -> dict[str, Any]:
    """Median over ``trials`` new processes (after one untimed warm-up) of spawn → first get."""
    env = common.src_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a real install has bytecode caches ...
    env["PYTHONPYCACHEPREFIX"] = str(common.CACHE_DIR / "pycache")  # ... kept under bench/, never in src/
    runs = []
    for trial in range(trials + 1):
        spawn = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, timeout=300, check=False
        )
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"open-time child failed: {proc.stderr.strip()[-2000:]}")
        child = json.loads(lines[0])
        child["interpreter_start_s"] = child.pop("t_start") - spawn
        child["wall_to_first_get_s"] = child.pop("t_get") - spawn
        if trial:
            runs.append(child)
    runs.sort(key=lambda r: r["wall_to_first_get_s"])
    return {"trials": trials, "all": [r["wall_to_first_get_s"] for r in runs], "median": runs[len(runs) // 2]}


# ============================================================================ main
SYSTEMS = ("hnswlib", "rocksdict", "rocksdict+hnswlib", "engramdb")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="records (default 100,000; quick 20,000)")
    ap.add_argument("--dim", type=int, default=8, help="vector dimension of the random vectors (default 8)")
    ap.add_argument("--real", action="store_true", help="use the 384-d dataset rows (interpolated above 42,887)")
    ap.add_argument("--ops", type=int, default=None, help="single upserts, 1 writer (default 1,000; quick 300)")
    ap.add_argument("--threads", type=int, default=16, help="concurrent writers (default 16)")
    ap.add_argument("--trials", type=int, default=None, help="open-time processes (default 3; quick 1)")
    ap.add_argument("--quick", action="store_true", help="small smoke run (< 1 minute)")
    ap.add_argument("--no-open", action="store_true", help="skip the open-time processes")
    ap.add_argument(
        "--same-vector", action="store_true", help="single upserts send the stored vector again (no index change)"
    )
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)
    ops = args.ops or (300 if args.quick else 1000)
    trials = args.trials or (1 if args.quick else 3)
    t_start = time.perf_counter()
    load_before = common.machine_info().get("loadavg_1_5_15")

    w = Workload(n, args.dim, args.real)
    common.log(
        f"workload: {w.label}; row value {w.value_size} bytes; {ops} single ops per phase, {args.threads} threads"
    )
    root = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    res: dict[str, dict[str, Any]] = {s: {} for s in SYSTEMS}
    try:
        hnsw = RawHnsw(root / "hnsw", w)
        raw = RawRocks(root / "raw", w)
        combo = RawRocksHnsw(root / "combo", w)
        eng = Engram(root / "engram", w)
        systems: dict[str, RawHnsw | RawRocks | RawRocksHnsw | Engram] = {"hnswlib": hnsw, "rocksdict": raw}
        systems["rocksdict+hnswlib"] = combo
        systems["engramdb"] = eng
        rng = np.random.default_rng(9)
        ids1 = rng.choice(n, min(ops, n), replace=False).tolist()
        many = min(n, ops * 4)
        ids16 = rng.choice(n, many, replace=False).tolist()
        # Each phase runs every system back to back, so they share the machine's noise.
        for name, sysm in systems.items():
            common.log(f"batch ingest: {name} ...")
            c0 = eng.commits
            res[name]["ingest"] = timed_ingest(sysm.ingest, n, sysm.finish)
            if sysm is eng:
                res[name]["ingest"]["commits"] = eng.commits - c0
        if not args.same_vector:
            w.upsert_vectors = w.moved(ids1, 13)
        for name, sysm in systems.items():
            common.log(f"single writer: {name} ...")
            c0 = eng.commits
            res[name]["single_1"] = timed_single(sysm.upsert, ids1, sysm.finish)
            if sysm is eng:
                res[name]["single_1"]["commits"] = eng.commits - c0
        if not args.same_vector:
            w.upsert_vectors = w.moved(ids16, 14)
        for name, sysm in systems.items():
            common.log(f"{args.threads} writers x {many // args.threads} ops: {name} ...")
            c0 = eng.commits
            res[name]["single_many"] = timed_threads(sysm.upsert, ids16, args.threads, sysm.finish)
            if sysm is eng:
                res[name]["single_many"]["commits"] = eng.commits - c0
        t0 = time.perf_counter()
        eng.close()
        res["engramdb"]["close_s"] = time.perf_counter() - t0
        raw.close()
        combo.close()
        if not args.no_open:
            common.log("open time (new processes) ...")
            probe = w.ids[n // 2]
            res["engramdb"]["open"] = open_time(_OPEN_ENGRAM, [str(root / "engram"), COLLECTION, probe], trials)
            res["rocksdict"]["open"] = open_time(_OPEN_RAW, [str(root / "raw"), "", "records/" + probe], trials)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(res, w, args, ops, time.perf_counter() - t_start, load_before)


def report(
    res: dict[str, dict[str, Any]], w: Workload, args: argparse.Namespace, ops: int, el: float, load: Any
) -> None:
    """Print the comparison table with ratios and targets; write the JSON result."""
    e, r, rh, hn = res["engramdb"], res["rocksdict"], res["rocksdict+hnswlib"], res["hnswlib"]
    thr = args.threads
    print(
        f"\nEngramDB storage benchmark — {w.label}, sync_writes on; references: raw rocksdict sync puts, "
        "and rocksdict sync puts + raw hnswlib add_items (same M / ef_construction) as a hand-rolled store, "
        "and raw hnswlib add_items in memory"
    )
    print(
        "single upserts: "
        + ("the stored vector again" if args.same_vector else "a slightly moved vector each (the index must change)")
    )
    print(f"machine: {common.machine_info()}; load average at start {load}\n")

    def per_commit(d: dict[str, Any], count: float) -> str:
        return f"{count / d['commits']:.1f}" if d.get("commits") else "-"

    def get(d: dict[str, Any], *path: str) -> float | None:
        cur: Any = d
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        return float(cur)

    specs: list[tuple[str, tuple[str, ...], str, float | None, bool, int]] = [
        ("batch ingest rows/s (batches of 1k)", ("ingest", "rows_per_s"), "", None, True, 0),
        ("single upsert ops/s, 1 writer", ("single_1", "qps"), ">= 1,000", TARGETS["upsert_1"], True, 0),
        ("  p50 ms", ("single_1", "p50_ms"), "", None, False, 3),
        ("  p99 ms", ("single_1", "p99_ms"), "", None, False, 3),
        (f"single upsert ops/s, {thr} writers", ("single_many", "qps"), ">= 5,000", TARGETS["upsert_many"], True, 0),
        ("  p50 ms", ("single_many", "p50_ms"), "", None, False, 3),
        ("  p99 ms", ("single_many", "p99_ms"), "", None, False, 3),
        ("open: new process -> first get, s", ("open", "median", "wall_to_first_get_s"), "", None, False, 3),
        ("  interpreter start s", ("open", "median", "interpreter_start_s"), "", None, False, 3),
        ("  import s", ("open", "median", "import_s"), "", None, False, 3),
        ("  open s", ("open", "median", "open_s"), "", None, False, 3),
        ("  first get s", ("open", "median", "first_get_s"), "", None, False, 4),
    ]
    rows = []
    summary: dict[str, Any] = {}
    for label, path, target, goal, higher, digits in specs:
        ev, rv, hv, nv = get(e, *path), get(r, *path), get(rh, *path), get(hn, *path)
        status = ""
        if goal is not None and ev is not None:
            status = "MET" if (ev >= goal if higher else ev <= goal) else "MISSED"
        rows.append(
            [
                label,
                common.fmt(ev, digits),
                common.fmt(nv, digits),
                common.fmt(rv, digits),
                common.fmt(hv, digits),
                common.fmt_ratio(common.ratio(ev, nv)),
                common.fmt_ratio(common.ratio(ev, rv)),
                common.fmt_ratio(common.ratio(ev, hv)),
                target,
                status,
            ]
        )
        key = label.strip() if not label.startswith("  ") else f"{specs_parent(specs, label)} {label.strip()}"
        summary[key] = {
            "engramdb": ev,
            "hnswlib": nv,
            "ratio_vs_hnswlib": common.ratio(ev, nv),
            "rocksdict": rv,
            "rocksdict+hnswlib": hv,
            "ratio_vs_rocksdict": common.ratio(ev, rv),
            "ratio_vs_rocksdict_hnswlib": common.ratio(ev, hv),
            "target": target,
            "status": status,
        }
    fs = get(e, "open", "median", "first_search_s")
    rows.append(
        ["EngramDB first search after open (index load) s", common.fmt(fs, 3), "-", "-", "-", "-", "-", "-", "", ""]
    )
    table = common.print_table(
        [
            "metric",
            "EngramDB",
            "hnswlib",
            "rocksdict",
            "rocks+hnswlib",
            "Engram/hnswlib",
            "Engram/rocks",
            "Engram/rocks+hnsw",
            "target",
            "status",
        ],
        rows,
    )
    print(
        f"group commit: ingest {per_commit(e['ingest'], e['ingest']['rows'])} records/commit; "
        f"1 writer {per_commit(e['single_1'], e['single_1']['count'])} records/commit; "
        f"{thr} writers {per_commit(e['single_many'], e['single_many']['count'])} records/commit "
        f"({e['single_many'].get('commits')} fsynced batches for {e['single_many']['count']} upserts)"
    )
    print(
        "note: EngramDB writes 2+ keys per record (record row + changelog entry), acknowledges after the fsync "
        "and updates the vector, payload and text indexes before any later search reads them; rocksdict writes "
        "one key; rocksdict+hnswlib also updates an HNSW index (re-adding an existing label makes hnswlib repair "
        "its neighbourhood, even for an unchanged vector); hnswlib alone is in memory, nothing durable."
    )
    if "open" in e:
        print(f"open-time trials: EngramDB {e['open']['all']}, rocksdict {r['open']['all']} (after 1 warm-up each)")
    out = common.write_results(
        "storage",
        {
            "workload": {"label": w.label, "n": w.n, "dim": w.dim, "value_bytes": w.value_size, "ops": ops},
            "args": vars(args),
            "loadavg_at_start": load,
            "elapsed_s": el,
            "targets": TARGETS,
            "summary": summary,
            "summary_table": table,
            "results": res,
        },
    )
    print(f"\ntotal {el:.0f} s; results written to {out}")


def specs_parent(specs: list[tuple[str, tuple[str, ...], str, float | None, bool, int]], label: str) -> str:
    """Name of the metric an indented sub-row (p50, p99, ...) belongs to."""
    parent = ""
    for lab, *_ in specs:
        if lab == label:
            break
        if not lab.startswith("  "):
            parent = lab
    return parent


if __name__ == "__main__":
    main()
