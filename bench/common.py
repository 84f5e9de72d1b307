"""Shared helpers of the EngramDB benchmarks: data, ground truth, timing, memory, output.

Data comes from ``$ENGRAMDB_DATA`` or ``<repo>/../shared/data`` (see its README):
``real.npy`` (42,887 L2-normalised all-MiniLM-L6-v2 embeddings) and
``queries_dev.npy`` (500 held-out query embeddings). Cosine equals inner
product on these unit vectors, so ground truth is an exact numpy top-k of
``base @ q``.

``--n`` below 42,887 takes the first ``n`` real rows. Above it, extra rows are
made by interpolating between a real row and one of its 10 exact nearest
neighbours plus small Gaussian noise (renormalised), as the data README
describes; results then say ``synthetic`` rows were added. The queries are
always the real held-out ones.

Metadata for filtered benchmarks is drawn with a fixed seed, in this order from
one generator: ``tenant = default_rng(7).integers(0, 10, n)`` (10 %
selectivity), then ``bucket`` in 0..99 (1 %) and ``cell`` in 0..999 (0.1 %).
Query ``i`` filters on value ``i % cardinality`` of the field.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import hashlib
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = BENCH_DIR / ".cache"

N_REAL = 42_887
K = 10
METADATA_SEED = 7
SYNTH_SEED = 20_240_601
SYNTH_NOISE = 0.005  # per-dimension sigma of the noise added to interpolated rows
# Filter fields: name -> cardinality (selectivity = 1 / cardinality), drawn in this order.
FILTER_FIELDS: dict[str, int] = {"tenant": 10, "bucket": 100, "cell": 1000}

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
T = TypeVar("T")


# --------------------------------------------------------------------- paths
def data_dir() -> Path:
    """The dataset folder: ``$ENGRAMDB_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("ENGRAMDB_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def src_env() -> dict[str, str]:
    """Environment for child processes that import ``engramdb`` from this checkout."""
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ---------------------------------------------------------------------- data
@dataclass
class Dataset:
    """Base vectors, query vectors and the filter metadata of every base row."""

    base: F32
    queries: F32
    n_real: int
    n_synthetic: int
    fields: dict[str, I64]

    @property
    def n(self) -> int:
        return int(self.base.shape[0])

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    @property
    def label(self) -> str:
        """Human description of the rows, naming synthetic ones."""
        if not self.n_synthetic:
            return f"{self.n:,} real rows"
        return (
            f"{self.n:,} rows = {self.n_real:,} real + {self.n_synthetic:,} synthetic "
            f"(neighbour interpolation, noise sigma {SYNTH_NOISE})"
        )

    def query_values(self, field_name: str) -> I64:
        """Per query, the value its filter on ``field_name`` asks for."""
        return np.arange(len(self.queries), dtype=np.int64) % FILTER_FIELDS[field_name]

    def describe(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_real": self.n_real,
            "n_synthetic": self.n_synthetic,
            "dim": self.dim,
            "queries": len(self.queries),
            "label": self.label,
            "data_dir": str(data_dir()),
            "filter_fields": {f: {"cardinality": c, "selectivity": 1 / c} for f, c in FILTER_FIELDS.items()},
        }


def make_metadata(n: int) -> dict[str, I64]:
    """Filter fields of ``n`` rows, from one generator seeded with 7 (tenant first)."""
    rng = np.random.default_rng(METADATA_SEED)
    return {name: rng.integers(0, card, n).astype(np.int64) for name, card in FILTER_FIELDS.items()}


def _normalise(x: F32) -> F32:
    out: F32 = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def real_knn(real: F32, k: int = 10, block: int = 2048, log: Callable[[str], None] | None = None) -> I64:
    """Exact ``k`` nearest neighbours (by inner product, self excluded) of every real row; cached on disk."""
    st = (data_dir() / "real.npy").stat()
    tag = hashlib.sha1(f"{st.st_size}-{int(st.st_mtime)}-{real.shape}-{k}".encode()).hexdigest()[:12]
    path = CACHE_DIR / f"real-knn{k}-{tag}.npy"
    if path.exists():
        cached: I64 = np.load(path)
        return cached
    if log:
        log(f"computing exact {k}-NN of {len(real):,} real rows for interpolation (cached in {path}) ...")
    out = np.empty((len(real), k), dtype=np.int64)
    for s in range(0, len(real), block):
        sims = real[s : s + block] @ real.T
        rows = np.arange(s, min(s + block, len(real)))
        sims[rows - s, rows] = -np.inf  # not its own neighbour
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
        out[s : s + len(rows)] = np.take_along_axis(part, order, axis=1)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def synthesize(real: F32, extra: int, log: Callable[[str], None] | None = None) -> F32:
    """``extra`` rows interpolated between a real row and one of its 10 nearest neighbours, plus noise."""
    knn = real_knn(real, log=log)
    rng = np.random.default_rng(SYNTH_SEED)
    src = rng.integers(0, len(real), extra)
    nb = knn[src, rng.integers(0, knn.shape[1], extra)]
    t = np.asarray(rng.uniform(0.0, 0.5, (extra, 1)), dtype=np.float32)
    rows = (1.0 - t) * real[src] + t * real[nb]
    rows += np.asarray(rng.normal(0.0, SYNTH_NOISE, rows.shape), dtype=np.float32)
    return _normalise(rows.astype(np.float32))


def load_dataset(n: int | None = None, queries: int = 500, log: Callable[[str], None] | None = None) -> Dataset:
    """Load ``n`` base rows (default: every real row) and the first ``queries`` held-out queries."""
    real: F32 = np.load(data_dir() / "real.npy").astype(np.float32, copy=False)
    qs: F32 = np.load(data_dir() / "queries_dev.npy").astype(np.float32, copy=False)
    if queries < 1 or queries > len(qs):
        raise SystemExit(f"--queries must be 1..{len(qs)}")
    n = len(real) if n is None else n
    if n < 1:
        raise SystemExit("--n must be positive")
    if n <= len(real):
        base, synth = np.ascontiguousarray(real[:n]), 0
    else:
        synth = n - len(real)
        base = np.ascontiguousarray(np.concatenate([real, synthesize(real, synth, log=log)]))
    return Dataset(base, np.ascontiguousarray(qs[:queries]), min(n, len(real)), synth, make_metadata(n))


def ingest_engramdb(db: Any, ds: Dataset, name: str = "bench") -> Any:
    """Create collection ``name`` with ``ds``'s fields declared as ``int`` and upsert every row in batches of 1,000."""
    coll = db.create_collection(name, dimension=ds.dim, metric="cosine", indexed_fields={f: "int" for f in ds.fields})
    columns = [ds.fields[f].tolist() for f in ds.fields]
    meta = [dict(zip(ds.fields, vals, strict=True)) for vals in zip(*columns, strict=True)]
    for s in range(0, ds.n, 1000):
        coll.upsert([{"id": str(i), "vector": ds.base[i], "metadata": meta[i]} for i in range(s, min(ds.n, s + 1000))])
    return coll


# -------------------------------------------------------------- ground truth
def ground_truth(
    base: F32,
    queries: F32,
    k: int = K,
    field_values: I64 | None = None,
    query_values: I64 | None = None,
    block: int = 64,
) -> I64:
    """Exact top-``k`` row indices by inner product, best first, ``-1``-padded.

    With ``field_values`` (one per base row) and ``query_values`` (one per
    query), only rows whose value equals the query's are eligible (filtered
    ground truth); queries with fewer than ``k`` eligible rows get ``-1`` pads.
    """
    out = np.full((len(queries), k), -1, dtype=np.int64)
    kk = min(k, len(base))
    for s in range(0, len(queries), block):
        sims = queries[s : s + block] @ base.T
        if field_values is not None and query_values is not None:
            sims[field_values[None, :] != query_values[s : s + block, None]] = -np.inf
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
        idx[np.take_along_axis(top, order, axis=1) == -np.inf] = -1
        out[s : s + block, :kk] = idx
    return out


def recall_at_k(found: Sequence[Sequence[int]], truth: I64, k: int = K) -> float:
    """Mean over queries of |found[:k] ∩ truth| / |truth| (queries with empty truth are skipped)."""
    scores = []
    for got, exp in zip(found, truth, strict=True):
        want = {int(x) for x in exp[:k] if x >= 0}
        if not want:
            continue
        scores.append(len(want.intersection(int(x) for x in list(got)[:k])) / len(want))
    return float(np.mean(scores)) if scores else float("nan")


# --------------------------------------------------------------------- timing
@dataclass
class LatencyStats:
    """Throughput and latency percentiles of one timed loop (one call per item)."""

    count: int
    wall_s: float
    qps: float
    mean_ms: float
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, samples: Sequence[float], wall_s: float) -> LatencyStats:
        """Stats from per-call latencies (seconds) and the loop's wall time."""
        if not samples:
            return cls(0, wall_s, float("nan"), float("nan"), float("nan"), float("nan"))
        return cls(
            count=len(samples),
            wall_s=wall_s,
            qps=len(samples) / wall_s if wall_s > 0 else float("inf"),
            mean_ms=statistics.fmean(samples) * 1e3,
            p50_ms=percentile(samples, 50) * 1e3,
            p99_ms=percentile(samples, 99) * 1e3,
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation (numpy's default)."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def time_calls(
    fn: Callable[[T], Any],
    items: Sequence[T],
    warmup: int = 20,
    max_s: float | None = None,
    min_items: int = 50,
) -> tuple[LatencyStats, list[Any]]:
    """Call ``fn`` once per item, timing each call; returns stats and the results.

    The first ``warmup`` items are run untimed first (and not returned). With
    ``max_s``, the loop stops once that much time has passed and at least
    ``min_items`` calls were made (for very slow systems); the stats and
    results then cover only the calls made (a prefix of ``items``).
    """
    for item in items[: min(warmup, len(items))]:
        fn(item)
    results: list[Any] = []
    samples: list[float] = []
    clock = time.perf_counter
    start = clock()
    for item in items:
        t0 = clock()
        r = fn(item)
        samples.append(clock() - t0)
        results.append(r)
        if max_s is not None and len(results) >= min_items and clock() - start > max_s:
            break
    return LatencyStats.of(samples, clock() - start), results


def time_calls_best(
    fn: Callable[[T], Any],
    items: Sequence[T],
    rounds: int = 1,
    budget_s: float = 5.0,
    warmup: int = 20,
    max_s: float | None = None,
) -> tuple[LatencyStats, list[Any], int]:
    """Like :func:`time_calls`, repeated up to ``rounds`` times; keeps the round with the best QPS.

    On a shared, noisy machine the fastest round is the one least disturbed by
    other processes. Stops early once the rounds so far took ``budget_s``.
    Later rounds run the same items as the first (which ``max_s`` may cut short).
    Returns the best round's stats, the first round's results, and the rounds run.
    """
    best, results = time_calls(fn, items, warmup, max_s=max_s)
    items = items[: len(results)]
    spent = best.wall_s
    done = 1
    while done < rounds and spent < budget_s:
        st, _ = time_calls(fn, items, warmup=0)
        spent += st.wall_s
        done += 1
        if st.qps > best.qps:
            best = st
    return best, results, done


def qps_at_recall(points: Iterable[tuple[float, float]], target: float) -> float | None:
    """QPS at ``target`` recall, interpolated linearly on a (recall, qps) sweep; None if never reached.

    Uses the best QPS among sweep points at or above the target and the
    interpolation between the two points that bracket it.
    """
    pts = sorted(points)
    best: float | None = None
    for r, q in pts:
        if r >= target:
            best = q if best is None else max(best, q)
    for (r0, q0), (r1, q1) in itertools.pairwise(pts):
        if r0 < target <= r1 and r1 > r0:
            interp = q0 + (q1 - q0) * (target - r0) / (r1 - r0)
            best = interp if best is None else max(best, interp)
    return best


# --------------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident set size of this process (psutil if installed, else /proc/self/status)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return _proc_status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """High-water mark of the resident set (VmHWM; 0 where /proc is unavailable)."""
    return _proc_status_kb("VmHWM") * 1024


def _proc_status_kb(key: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def settled_rss_mb() -> float:
    """RSS in MiB after a full garbage collection."""
    gc.collect()
    return rss_bytes() / 2**20


# ---------------------------------------------------------------- formatting
def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def fmt(v: Any, digits: int = 0) -> str:
    """Format a number with thousands separators (``-`` for missing)."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) and digits == 0:
        return f"{v:,}"
    return f"{v:,.{digits}f}"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """Print (and return) a plain-text table; the first column is left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    out = []
    if title:
        out.append(title)
    out.append(line(cells[0]))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells[1:])
    text = "\n".join(out)
    print(text + "\n", flush=True)
    return text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same rows as a GitHub-flavoured markdown table (for docs/benchmarks.md)."""
    out = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    out.extend("| " + " | ".join(map(str, r)) + " |" for r in rows)
    return "\n".join(out)


def log(msg: str) -> None:
    """Progress line on stderr, with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------- output
def machine_info() -> dict[str, Any]:
    """Where the numbers came from: CPU count, load, memory, versions."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        info["loadavg_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        import psutil

        info["mem_total_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    info["engramdb_git"] = git_revision()
    for mod in ("hnswlib", "rocksdict", "chromadb"):
        try:
            from importlib.metadata import version

            info[mod] = version(mod)
        except Exception:
            info[mod] = None
    return info


def git_revision() -> str | None:
    """``<short commit>`` of the checkout, with ``+dirty`` if ``src/`` has uncommitted changes."""
    import subprocess

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def write_results(name: str, payload: dict[str, Any], directory: Path | None = None) -> Path:
    """Write ``payload`` (plus machine info) to ``bench/results/<name>-<timestamp>.json``."""
    out_dir = directory or RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{name}-{stamp}.json"
    doc = {"benchmark": name, "timestamp": stamp, "machine": machine_info(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------- args
def add_common_args(parser: argparse.ArgumentParser, default_queries: int = 500) -> None:
    """``--n``, ``--queries`` and ``--quick``."""
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help=f"base rows (default: all {N_REAL:,} real rows; above that, neighbour-interpolated rows are added)",
    )
    parser.add_argument(
        "--queries", type=int, default=None, help=f"held-out queries to run (default {default_queries})"
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 2 minutes)")
