"""Benchmark the knowledge graph: edge writes, traversal and graph-expansion search.

Loads the first 20,000 rows of ``real.npy`` into an embedded collection
(cosine, default HNSW parameters, ``sync_writes`` off), links every record to
its 5 nearest neighbours (exact, numpy, in chunks; relation ``similar``,
weight = cosine similarity), then measures in one run:

* link throughput (edges/s, batches of 1,000 edges through ``Collection.link``),
* ``neighbors(hops=2)`` latency p50/p99 over random start records, next to a
  reference: the same BFS over a plain Python dict adjacency in memory (the
  floor any store-backed traversal is compared with),
* ``search(k=10, expand={"hops": 2, "fanout": 5, "limit": 50})`` latency
  p50/p99 next to plain ``search(k=10)`` on the same queries (``queries_dev.npy``).

Data: ``$ENGRAMDB_DATA`` or ``<repo>/../shared/data``. Runtime ≈ 1 min on 2 cores.
Usage: ``python bench/bench_graph.py``
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Run from a checkout without installing the package.
sys.path.insert(0, str(REPO / "src"))

import engramdb  # noqa: E402 - after the sys.path tweak above

N = 20_000
NEIGHBOURS = 5
LINK_BATCH = 1_000
UPSERT_BATCH = 1_000
N_TRAVERSALS = 1_000
N_QUERIES = 500
WARMUP = 50
K = 10
EXPAND = {"hops": 2, "fanout": 5, "limit": 50}


def data_dir() -> Path:
    env = os.environ.get("ENGRAMDB_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, latencies: list[float]) -> float:
    p50, p99 = percentile(latencies, 0.50) * 1e3, percentile(latencies, 0.99) * 1e3
    print(f"  {name:<28} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   ({len(latencies)} calls)")
    return p50


def knn_graph(x: np.ndarray, k: int, chunk: int = 2_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self excluded) by inner product of unit vectors, in chunks."""
    xt = np.ascontiguousarray(x.T)  # BLAS is faster on a contiguous right operand
    idx = np.empty((len(x), k), dtype=np.int64)
    sims = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), chunk):
        s = x[start : start + chunk] @ xt
        rows = np.arange(s.shape[0])
        s[rows, rows + start] = -np.inf  # never link a record to itself
        part = np.argpartition(s, -k, axis=1)[:, -k:]
        psims = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-psims, axis=1)
        idx[start : start + chunk] = np.take_along_axis(part, order, axis=1)
        sims[start : start + chunk] = np.take_along_axis(psims, order, axis=1)
    return idx, sims


def dict_bfs(adj: dict[str, list[str]], start: str, hops: int) -> dict[str, int]:
    dist = {start: 0}
    q = deque([start])
    while q:
        u = q.popleft()
        if dist[u] == hops:
            continue
        for v in adj.get(u, ()):
            if v not in dist:
                dist[v] = dist[u] + 1
                q.append(v)
    del dist[start]
    return dist


def main() -> None:
    t_all = time.perf_counter()
    base = np.load(data_dir() / "real.npy", mmap_mode="r")
    x = np.ascontiguousarray(base[:N], dtype=np.float32)
    queries = np.load(data_dir() / "queries_dev.npy")[:N_QUERIES]
    ids = [f"r{i}" for i in range(len(x))]
    print(f"dataset: {len(x):,} x {x.shape[1]} vectors, {len(queries)} queries, {NEIGHBOURS} edges per record")

    t = time.perf_counter()
    nn, nn_sims = knn_graph(x, NEIGHBOURS)
    print(f"exact {NEIGHBOURS}-NN graph (numpy): {time.perf_counter() - t:.1f} s")
    edges = [
        {"src": ids[i], "relation": "similar", "dst": ids[int(j)], "weight": float(w)}
        for i in range(len(x))
        for j, w in zip(nn[i], nn_sims[i], strict=True)
    ]

    with tempfile.TemporaryDirectory(prefix="bench-graph-") as tmp:
        db = engramdb.open(Path(tmp) / "data", storage={"sync_writes": False})
        try:
            coll = db.create_collection("graph", dimension=x.shape[1], metric="cosine")
            t = time.perf_counter()
            for start in range(0, len(x), UPSERT_BATCH):
                coll.upsert([{"id": ids[i], "vector": x[i]} for i in range(start, min(start + UPSERT_BATCH, len(x)))])
            print(f"upsert {len(x):,} records: {time.perf_counter() - t:.1f} s")

            t = time.perf_counter()
            for start in range(0, len(edges), LINK_BATCH):
                coll.link(edges[start : start + LINK_BATCH])
            dt = time.perf_counter() - t
            print(
                f"\nlink {len(edges):,} edges in batches of {LINK_BATCH:,}: {dt:.1f} s = {len(edges) / dt:,.0f} edges/s"
            )

            # ------------------------------------------------------ traversal
            rng = random.Random(7)
            starts = [ids[rng.randrange(len(ids))] for _ in range(N_TRAVERSALS + WARMUP)]
            adj: dict[str, list[str]] = {}
            for e in edges:
                adj.setdefault(e["src"], []).append(e["dst"])
            lat_db: list[float] = []
            lat_ref: list[float] = []
            sizes = []
            mismatches = 0
            for n, s in enumerate(starts):
                t0 = time.perf_counter()
                hits = coll.neighbors(s, hops=2)
                t1 = time.perf_counter()
                ref = dict_bfs(adj, s, 2)
                t2 = time.perf_counter()
                if n >= WARMUP:
                    lat_db.append(t1 - t0)
                    lat_ref.append(t2 - t1)
                    sizes.append(len(hits))
                    mismatches += {h.id: h.hop for h in hits} != ref
            print(f"\nneighbors(hops=2), out-edges, records with metadata+text (avg {np.mean(sizes):.1f} nodes):")
            p_db = report("EngramDB neighbors", lat_db)
            p_ref = report("reference: dict BFS (memory)", lat_ref)
            print(f"  ratio EngramDB / dict p50: {p_db / p_ref:.1f}x   result mismatches vs reference: {mismatches}")

            # ------------------------------------------------------ search
            lat_plain: list[float] = []
            lat_exp: list[float] = []
            exp_sizes = []
            qs = [queries[i % len(queries)] for i in range(len(queries) + WARMUP)]
            for n, q in enumerate(qs):
                t0 = time.perf_counter()
                coll.search(q, k=K)
                t1 = time.perf_counter()
                got = coll.search(q, k=K, expand=EXPAND)
                t2 = time.perf_counter()
                if n >= WARMUP:
                    lat_plain.append(t1 - t0)
                    lat_exp.append(t2 - t1)
                    exp_sizes.append(len(got))
            print(f"\nsearch k={K} (HNSW) vs the same search with expand={EXPAND} (avg {np.mean(exp_sizes):.1f} hits):")
            p_plain = report("plain search (reference)", lat_plain)
            p_exp = report("search + graph expansion", lat_exp)
            print(f"  ratio expanded / plain p50: {p_exp / p_plain:.1f}x")
        finally:
            db.close()
    print(f"\ntotal runtime {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
