"""Cluster benchmark: a 3-node cluster (real etcd, real ``engramdb serve`` nodes) against one node, in one run.

What it measures, every cluster number next to a single node's from the same run:

1. **Durable single-record upsert latency** (``sync_writes`` on, one record per
   request, one client, raw keep-alive HTTP): a plain ``engramdb serve`` (no
   cluster settings) against a 3-node cluster through one coordinator, into a
   collection with ``--write-shards`` shards and replication factor 3, at
   consistency ``one``, ``quorum`` and ``all``. Targets alternate over
   ``--rounds`` so slow spells of a shared machine hit each of them; p50 / p99
   are over all rounds. Target (../shared/PERFORMANCE.md): QUORUM p50 <= 2 x single node.
2. **Search through a coordinator** (k = 10, ``include: []``, one client, the
   held-out queries one per call): the single node against collections with
   S shards (``--shards``, default 1,2,4) and RF 1 and 3 on the same 3 nodes,
   all loaded with the same ``--rows`` rows by batch upserts at consistency
   ``all``. QPS, p50 / p99 and recall@10 against exact numpy brute force:
   what the scatter-gather costs.
3. **Throughput scaling** (``--nodes``, default 1,2,3): for each N, a fresh
   N-node cluster with one collection of ``--scale-shards`` shards and RF = N
   (every node holds every shard, so a coordinator answers from its own
   replicas), ``--clients`` concurrent clients (threads, spread over
   ``--procs`` client processes) spread evenly over the N nodes for
   ``--duration`` seconds. QPS against the plain single node (same data, same
   clients; the ../shared/PERFORMANCE.md target is >= 2.5 x at 3 nodes) and against
   N = the first of ``--nodes``. On a
   machine with few cores all nodes and the clients share them, so this shows
   no scaling there: the output says how many CPUs there were.

The clients run on the same machine as the nodes and etcd; the 1-minute load
average before and after each part is printed. Compare within a run.

Usage::

    python bench/bench_cluster.py --quick          # 2,000 rows, 100 queries, 1 round (< 60 s)
    python bench/bench_cluster.py                  # 8,000 rows, 500 queries, 2 rounds, --nodes 1,2,3 (~3-4 min)
    python bench/bench_cluster.py --nodes 1,2,4,8 --clients 64 --procs 8   # on a machine with >= 16 cores
    python bench/bench_cluster.py --json /tmp/cluster.json

Needs ``etcd`` on PATH (Debian/Ubuntu: ``apt-get install etcd-server``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))  # run from a checkout without installing
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

import common  # noqa: E402
from bench_server import RawHTTPConnection, _proc_cpu_seconds  # noqa: E402
from engramdb.cluster.local import LocalCluster, NodeProcess, find_etcd  # noqa: E402

ADMIN_KEY = "edb_bench_admin_" + secrets.token_urlsafe(24)
CLUSTER_NODES = 3
LOAD_BATCH = 500
WRITE_COLLECTION = "w"
LEVELS = ("one", "quorum", "all")
# Safety bounds on top of the counts: one timed loop never runs longer than this.
MAX_LOOP_S = 60.0
MAX_REQUESTS_PER_CLIENT = 200_000
# Settings every node (single or cluster) runs with: rate limits out of the way (the defaults cap
# one key at 1,000 requests/s), quiet logs. sync_writes keeps its default (on): writes are durable.
NODE_ENV = {
    "ENGRAMDB_SERVER__AUTH": "required",
    "ENGRAMDB_SERVER__LOG_LEVEL": "warning",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_PER_SECOND": "1000000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_BURST": "1000000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_PER_SECOND": "1000000",
    "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_BURST": "1000000",
}


# ------------------------------------------------------------------ nodes
class SingleNode(NodeProcess):
    """A plain ``engramdb serve``: no cluster settings at all, the baseline."""

    def full_env(self) -> dict[str, str]:
        env = {k: v for k, v in common.src_env().items() if not k.startswith("ENGRAMDB_")}
        env.update(NODE_ENV)
        env.update(
            {
                "ENGRAMDB_ADMIN_KEY": ADMIN_KEY,
                "ENGRAMDB_DATA_DIR": str(self.data_dir),
                "ENGRAMDB_SERVER__HOST": "127.0.0.1",
                "ENGRAMDB_SERVER__PORT": str(self.rest_port),
                "ENGRAMDB_SERVER__GRPC_PORT": str(self.grpc_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env


def start_cluster(base: Path, nodes: int) -> LocalCluster:
    cluster = LocalCluster(
        base, nodes, admin_key=ADMIN_KEY, env=NODE_ENV, default_shards=4, default_replication_factor=min(3, nodes)
    )
    cluster.start()
    return cluster


class Http:
    """Blocking JSON calls for set-up (create, load): not timed."""

    def __init__(self, url: str):
        import httpx

        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=300)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = self.client.post(path, content=orjson.dumps(body), headers={"Content-Type": "application/json"})
        if r.status_code >= 300:
            raise SystemExit(f"POST {path}: HTTP {r.status_code}: {r.text[:500]}")
        return r.json()

    def close(self) -> None:
        self.client.close()


def create(url: str, name: str, dim: int, shards: int | None = None, rf: int | None = None) -> None:
    body: dict[str, Any] = {"name": name, "dimension": dim}
    if shards is not None:
        body["shards"] = shards
    if rf is not None:
        body["replication_factor"] = rf
    http = Http(url)
    try:
        http.post("/v1/collections", body)
    finally:
        http.close()


def load_rows(url: str, name: str, base: np.ndarray, clustered: bool) -> float:
    """Batch-upsert every row as ``r<i>``; returns rows/s. At ``all`` so every replica has every row."""
    http = Http(url)
    path = f"/v1/collections/{name}/records"
    t0 = time.perf_counter()
    try:
        for s in range(0, len(base), LOAD_BATCH):
            records = [{"id": f"r{s + i}", "vector": v} for i, v in enumerate(base[s : s + LOAD_BATCH].tolist())]
            body: dict[str, Any] = {"records": records}
            if clustered:
                body["consistency"] = "all"
            http.post(path, body)
    finally:
        http.close()
    return len(base) / (time.perf_counter() - t0)


def _headers(key: str = "") -> dict[str, str]:
    # Spawned client processes re-import this module (a new ADMIN_KEY): they get the parent's key passed in.
    return {"Authorization": f"Bearer {key or ADMIN_KEY}", "Content-Type": "application/json"}


def _call(conn: RawHTTPConnection, body: bytes) -> bytes:
    status, content = conn.post(body)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {content[:300]!r}")
    return content


# ----------------------------------------------------------------- part 1
def write_phase(url: str, level: str | None, vectors: np.ndarray, start: int, count: int) -> list[float]:
    """``count`` single-record upserts of new ids, one per request; per-call latencies (s)."""
    conn = RawHTTPConnection(url, f"/v1/collections/{WRITE_COLLECTION}/records", _headers())
    try:
        bodies = []
        for i in range(start, start + count):
            body: dict[str, Any] = {"records": [{"id": f"w{i}", "vector": vectors[i % len(vectors)].tolist()}]}
            if level is not None:
                body["consistency"] = level
            bodies.append(orjson.dumps(body))
        for i in range(10):  # warm the connection and the route, untimed, on ids of their own
            warm = {"records": [{"id": f"warm{i}", "vector": vectors[i].tolist()}]}
            _call(conn, orjson.dumps({**warm, "consistency": level} if level is not None else warm))
        samples: list[float] = []
        clock = time.perf_counter
        t_end = clock() + MAX_LOOP_S
        for b in bodies:
            t0 = clock()
            _call(conn, b)
            samples.append(clock() - t0)
            if clock() > t_end:
                break
        return samples
    finally:
        conn.close()


def cpu_of(procs: Sequence[NodeProcess]) -> float:
    """User + system CPU seconds of these server processes so far (Linux /proc)."""
    return sum(_proc_cpu_seconds(p.pid) for p in procs if p.pid is not None)


def stats(samples: Sequence[float], wall: float | None = None) -> dict[str, Any]:
    s = common.LatencyStats.of(list(samples), wall if wall is not None else float(sum(samples)))
    return s.to_dict()


# ----------------------------------------------------------------- part 2
def search_phase(url: str, name: str, queries: np.ndarray) -> tuple[dict[str, Any], list[list[int]]]:
    """One client, one query per call; stats and the hit row indices per query."""
    conn = RawHTTPConnection(url, f"/v1/collections/{name}/search", _headers())
    try:
        bodies = [orjson.dumps({"vector": q.tolist(), "k": common.K, "include": []}) for q in queries]
        for b in bodies[:20]:
            _call(conn, b)
        found: list[list[int]] = []
        samples: list[float] = []
        clock = time.perf_counter
        start = clock()
        for b in bodies:
            t0 = clock()
            content = _call(conn, b)
            samples.append(clock() - t0)
            found.append([int(h["id"][1:]) for h in orjson.loads(content)["hits"]])
            if clock() - start > MAX_LOOP_S:
                break
        return stats(samples, clock() - start), found
    finally:
        conn.close()


# ----------------------------------------------------------------- part 3
def _client_process(
    urls: list[str],
    path: str,
    key: str,
    bodies: list[bytes],
    offset: int,
    start_at: float,
    duration: float,
    out: Any,
) -> None:
    """One thread per entry of ``urls`` (its node); puts (latencies, errors, first error, cpu s) on ``out``."""
    end_at = start_at + duration
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    first_error: list[str] = []

    def failed(e: Exception) -> None:
        with lock:
            errors[0] += 1
            if not first_error:
                first_error.append(repr(e)[:300])

    def run(index: int, url: str) -> None:
        conn = RawHTTPConnection(url, path, _headers(key))
        mine: list[float] = []
        i = (offset + index) * 17  # clients start at different queries
        try:
            while time.time() < start_at:
                try:
                    _call(conn, bodies[i % len(bodies)])
                except Exception as e:
                    failed(e)  # counted, so a setup problem shows in the table instead of a dead thread
                    return
                i += 1
            clock = time.perf_counter
            while time.time() < end_at and len(mine) < MAX_REQUESTS_PER_CLIENT:
                t0 = clock()
                try:
                    _call(conn, bodies[i % len(bodies)])
                except Exception as e:
                    failed(e)
                    conn.close()
                    conn = RawHTTPConnection(url, path, _headers(key))
                else:
                    mine.append(clock() - t0)
                i += 1
        finally:
            conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(t, u)) for t, u in enumerate(urls)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = sum(os.times()[:2])
    for t in threads:
        t.join()
    out.put((np.asarray(latencies, dtype=np.float64).tobytes(), errors[0], first_error, sum(os.times()[:2]) - cpu0))


def concurrent_phase(
    urls: list[str], name: str, queries: np.ndarray, clients: int, procs: int, duration: float
) -> dict[str, Any]:
    """``clients`` threads over ``procs`` processes; client ``i`` talks to ``urls[i % len(urls)]``."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    bodies = [orjson.dumps({"vector": q.tolist(), "k": common.K, "include": []}) for q in queries]
    targets = [urls[i % len(urls)] for i in range(clients)]
    per_proc = [targets[p::procs] for p in range(procs)]
    start_at = time.time() + 2.5 + 0.3 * procs  # spawned interpreters import, connect and warm up first
    workers = []
    for p, mine in enumerate(per_proc):
        if not mine:
            continue
        args = (mine, f"/v1/collections/{name}/search", ADMIN_KEY, bodies, p * len(mine), start_at, duration, out)
        w = ctx.Process(target=_client_process, args=args)
        w.start()
        workers.append(w)
    time.sleep(max(0.0, start_at - time.time()))
    load_before = os.getloadavg()[0]
    time.sleep(duration)
    load_after = os.getloadavg()[0]
    results = [out.get(timeout=duration + 120) for _ in workers]
    for w in workers:
        w.join(30)
    lat = np.concatenate([np.frombuffer(r[0], dtype=np.float64) for r in results])
    client_cpu = sum(r[3] for r in results)
    return {
        **stats(lat.tolist(), duration),
        "errors": sum(r[1] for r in results),
        "first_error": next((r[2][0] for r in results if r[2]), None),
        "client_cpu_pct": 100 * client_cpu / duration,
        "loadavg1_before": load_before,
        "loadavg1_after": load_after,
    }


# -------------------------------------------------------------------- main
def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{what} takes comma-separated integers, got {text!r}") from None
    if not vals:
        raise SystemExit(f"{what} is empty")
    return vals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8000, help="rows of real.npy loaded for the searches (max 42,887)")
    ap.add_argument("--queries", type=int, default=500, help="held-out queries per search loop (max 500)")
    ap.add_argument("--writes", type=int, default=400, help="single-record upserts per write target, over all rounds")
    ap.add_argument("--rounds", type=int, default=2, help="rounds the write targets alternate over (1..5)")
    ap.add_argument("--shards", default="1,2,4", help="shard counts of the searched cluster collections")
    ap.add_argument("--write-shards", type=int, default=4, help="shards of the written cluster collection")
    ap.add_argument("--nodes", default="1,2,3", help="node counts of the scaling part ('' or 0 skips it)")
    ap.add_argument("--scale-shards", type=int, default=4, help="shards of the scaling part's collection")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (threads) of the scaling part")
    ap.add_argument("--procs", type=int, default=2, help="client processes the clients are spread over")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per scaling phase (max 120)")
    ap.add_argument(
        "--settle-ms",
        type=int,
        help="cluster.write_settle_ms of the nodes (default: the server's, 100; 0 = answer at the level's acks)",
    )
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--quick", action="store_true", help="2,000 rows, 100 queries, 150 writes, 1 round, --nodes 1,3")
    args = ap.parse_args()
    if args.settle_ms is not None:
        NODE_ENV["ENGRAMDB_CLUSTER__WRITE_SETTLE_MS"] = str(args.settle_ms)
    if args.quick:
        args.rows, args.queries, args.writes, args.rounds = 2000, 100, 150, 1
        args.shards, args.nodes, args.duration = "1,4", "1,3", 4.0
    shard_list = _ints(args.shards, "--shards")
    node_list = [n for n in _ints(args.nodes or "0", "--nodes") if n > 0]
    if not 1 <= args.rows <= common.N_REAL:
        raise SystemExit(f"--rows must be 1..{common.N_REAL}")
    if not (1 <= args.writes <= 20_000 and 1 <= args.rounds <= 5 and args.writes >= args.rounds):
        raise SystemExit("need 1 <= --writes <= 20000, 1 <= --rounds <= 5, --writes >= --rounds")
    if not (0 < args.duration <= 120 and 1 <= args.clients <= 256 and 1 <= args.procs <= args.clients):
        raise SystemExit("need 0 < --duration <= 120, 1 <= --clients <= 256, 1 <= --procs <= --clients")
    if any(n > 16 for n in node_list):
        raise SystemExit("--nodes: at most 16 nodes per cluster here")
    try:
        find_etcd()
    except RuntimeError as e:
        raise SystemExit(str(e)) from None

    t_start = time.monotonic()
    cpus = os.cpu_count() or 1
    cpu_note = f"{cpus} CPUs: etcd, {CLUSTER_NODES} nodes and the clients share them. " + (
        "With this few cores a cluster on one machine cannot beat one node: read the ratios as the "
        "cluster's overhead, not its scaling; run --nodes on a machine with >= 4 cores per node for that."
        if cpus < 4 * CLUSTER_NODES
        else "Enough cores for the scaling part to show scaling (if the clients are not the limit)."
    )
    ds = common.load_dataset(args.rows, queries=args.queries, log=common.log)
    truth = common.ground_truth(ds.base, ds.queries)
    per_round = max(1, args.writes // args.rounds)
    loads: dict[str, float] = {}
    writes: dict[str, list[float]] = {"single": [], **{lv: [] for lv in LEVELS}}
    write_cpu: dict[str, float] = dict.fromkeys(writes, 0.0)  # server CPU s (all nodes) during each target's writes
    single_concurrent: dict[str, Any] | None = None
    search: dict[str, dict[str, Any]] = {}
    scaling: list[dict[str, Any]] = []
    load_avg: dict[str, float] = {"start": os.getloadavg()[0]}

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp_s:
        tmp = Path(tmp_s)
        single = SingleNode("single", tmp / "single" / "data", log_path=tmp / "single.log")
        cluster: LocalCluster | None = None
        try:
            common.log("starting the single node and a 3-node cluster (etcd + 3 x engramdb serve) ...")
            single.start()
            single.wait_ready()
            cluster = start_cluster(tmp / "cluster", CLUSTER_NODES)
            coord = cluster.node(0).url
            # ---- set-up: the write collections and the searched collections
            create(single.url, WRITE_COLLECTION, ds.dim)
            create(coord, WRITE_COLLECTION, ds.dim, args.write_shards, CLUSTER_NODES)
            create(single.url, "s", ds.dim)
            loads["single"] = load_rows(single.url, "s", ds.base, clustered=False)
            configs = [(s, rf) for rf in (1, CLUSTER_NODES) for s in shard_list]
            for s, rf in configs:
                name = f"s{s}r{rf}"
                create(coord, name, ds.dim, s, rf)
                loads[name] = load_rows(coord, name, ds.base, clustered=True)
            common.log("loaded " + ", ".join(f"{k} {v:,.0f} rows/s" for k, v in loads.items()))
            # ---- part 1: durable single upserts, targets alternated over rounds
            load_avg["writes_before"] = os.getloadavg()[0]
            for rnd in range(args.rounds):
                start = rnd * per_round
                common.log(f"writes, round {rnd + 1}/{args.rounds}: {per_round} per target ...")
                cpu0 = cpu_of([single])
                writes["single"] += write_phase(single.url, None, ds.base, start, per_round)
                write_cpu["single"] += cpu_of([single]) - cpu0
                for lv in LEVELS:
                    cpu0 = cpu_of(cluster.nodes)
                    writes[lv] += write_phase(coord, lv, ds.base, start, per_round)
                    write_cpu[lv] += cpu_of(cluster.nodes) - cpu0
            load_avg["writes_after"] = os.getloadavg()[0]
            # ---- part 2: search through a coordinator vs one node
            common.log(f"search: {len(ds.queries)} queries, one client, per collection ...")
            load_avg["search_before"] = os.getloadavg()[0]
            # Rounds alternate the collections; each keeps its best round (the one least disturbed by
            # other processes on a shared machine), as bench/common.py's time_calls_best does.
            targets_s: list[tuple[str, str, str, dict[str, int]]] = [("single", single.url, "s", {})] + [
                (f"s{s}r{rf}", coord, f"s{s}r{rf}", {"shards": s, "rf": rf}) for s, rf in configs
            ]
            for rnd in range(args.rounds):
                for key, url, name, extra in targets_s:
                    st, found = search_phase(url, name, ds.queries)
                    if key not in search or st["qps"] > search[key]["qps"]:
                        search[key] = {
                            **extra,
                            **st,
                            "recall_at_10": common.recall_at_k(found, truth),
                            "round": rnd + 1,
                        }
            load_avg["search_after"] = os.getloadavg()[0]
            if node_list:
                cluster.stop()  # its nodes would take CPU from the single node's throughput phase
                common.log(f"throughput baseline: the single node, {args.clients} clients ...")
                single_concurrent = concurrent_phase(
                    [single.url], "s", ds.queries, args.clients, args.procs, args.duration
                )
        finally:
            single.terminate()
            if cluster is not None:
                cluster.stop()
        # ---- part 3: throughput with N nodes, RF = N, clients spread over the nodes
        for n in node_list:
            common.log(f"scaling: {n} node(s), RF {n}, {args.scale_shards} shards, {args.clients} clients ...")
            c = start_cluster(tmp / f"scale{n}", n)
            try:
                create(c.node(0).url, "x", ds.dim, args.scale_shards, n)
                rate = load_rows(c.node(0).url, "x", ds.base, clustered=True)
                _, found = search_phase(c.node(n - 1).url, "x", ds.queries[:50])
                phase = concurrent_phase([nd.url for nd in c], "x", ds.queries, args.clients, args.procs, args.duration)
                scaling.append(
                    {
                        "nodes": n,
                        "load_rows_per_s": rate,
                        "recall_at_10_sample": common.recall_at_k(found, truth[:50]),
                        **phase,
                    }
                )
            finally:
                c.stop()

    # ------------------------------------------------------------------ report
    elapsed = time.monotonic() - t_start
    print()
    print(
        f"Cluster benchmark: {ds.label}, k={common.K}, include=[], {len(ds.queries)} held-out queries; "
        f"{elapsed:.0f} s in all.\nNOTE: {cpu_note}\n"
        f"1-minute load average: start {load_avg['start']:.1f}, writes {load_avg['writes_before']:.1f}-"
        f"{load_avg['writes_after']:.1f}, search {load_avg['search_before']:.1f}-{load_avg['search_after']:.1f}."
    )
    wstats = {
        k: {**stats(v), "server_cpu_ms_per_req": 1000 * write_cpu[k] / len(v) if v else None} for k, v in writes.items()
    }
    base_w = wstats["single"]
    common.print_table(
        ["target", "requests", "p50 ms", "p99 ms", "mean ms", "server CPU ms/req", "p50 / single", "p99 / single"],
        [
            [
                "single node" if k == "single" else f"3 nodes RF 3, {k.upper()}",
                v["count"],
                common.fmt(v["p50_ms"], 2),
                common.fmt(v["p99_ms"], 2),
                common.fmt(v["mean_ms"], 2),
                common.fmt(v["server_cpu_ms_per_req"], 2),
                common.fmt_ratio(common.ratio(v["p50_ms"], base_w["p50_ms"])),
                common.fmt_ratio(common.ratio(v["p99_ms"], base_w["p99_ms"])),
            ]
            for k, v in wstats.items()
        ],
        title=f"1. Durable single-record upsert, one client ({args.rounds} round(s), "
        f"cluster collection {args.write_shards} shards; coordinator = node n1; server CPU = all nodes)",
    )
    quorum_ratio = common.ratio(wstats["quorum"]["p50_ms"], base_w["p50_ms"])
    base_s = search["single"]
    common.print_table(
        ["collection", "shards", "RF", "QPS", "p50 ms", "p99 ms", "recall@10", "QPS / single", "p50 / single"],
        [
            [
                "single node" if k == "single" else k,
                v.get("shards", "-"),
                v.get("rf", "-"),
                common.fmt(v["qps"]),
                common.fmt(v["p50_ms"], 2),
                common.fmt(v["p99_ms"], 2),
                common.fmt(v["recall_at_10"], 3),
                common.fmt_ratio(common.ratio(v["qps"], base_s["qps"])),
                common.fmt_ratio(common.ratio(v["p50_ms"], base_s["p50_ms"])),
            ]
            for k, v in search.items()
        ],
        title=f"2. Search through coordinator n1, one client (scatter-gather over one replica per shard; "
        f"best of {args.rounds} alternated round(s))",
    )
    if scaling and single_concurrent is not None:
        first = scaling[0]
        rows = [{"nodes": "single node", "rf": "-", **single_concurrent}] + [{"rf": p["nodes"], **p} for p in scaling]
        common.print_table(
            [
                "nodes",
                "RF",
                "QPS",
                "p50 ms",
                "p99 ms",
                "errors",
                "client CPU %",
                "load 1m",
                "QPS / single",
                "QPS / first cluster",
            ],
            [
                [
                    p["nodes"],
                    p["rf"],
                    common.fmt(p["qps"]),
                    common.fmt(p["p50_ms"], 2),
                    common.fmt(p["p99_ms"], 2),
                    p["errors"],
                    common.fmt(p["client_cpu_pct"]),
                    f"{p['loadavg1_before']:.1f}-{p['loadavg1_after']:.1f}",
                    common.fmt_ratio(common.ratio(p["qps"], single_concurrent["qps"])),
                    "-" if p["rf"] == "-" else common.fmt_ratio(common.ratio(p["qps"], first["qps"])),
                ]
                for p in rows
            ],
            title=f"3. Throughput: {args.clients} clients ({args.procs} processes) spread over the nodes, "
            f"{args.scale_shards} shards, RF = nodes, {args.duration:.0f} s per phase ({cpus} CPUs)",
        )
        for p in rows:
            if p["errors"]:
                print(f"{p['nodes']} node(s): {p['errors']} errors, first: {p['first_error']}")
    targets: dict[str, bool | None] = {
        "quorum_write_p50<=2x_single": None if quorum_ratio is None else quorum_ratio <= 2
    }
    at3 = next((p for p in scaling if p["nodes"] == 3), None)
    # The target compares with what a user runs without a cluster: the plain single node.
    scale3 = common.ratio(at3["qps"], single_concurrent["qps"]) if at3 and single_concurrent else None
    if scale3 is not None:
        targets["search_qps_3_nodes>=2.5x_single"] = scale3 >= 2.5
    print(
        f"QUORUM write p50 / single node: {common.fmt_ratio(quorum_ratio)} (target <= 2x); "
        + (
            f"search QPS 3 nodes / single node: {common.fmt_ratio(scale3)} (target >= 2.5x with enough cores); "
            if scale3
            else ""
        )
        + "targets: "
        + ", ".join(f"{k} {'-' if v is None else 'MET' if v else 'NOT MET'}" for k, v in targets.items())
    )
    if args.json is not None:
        doc = {
            "benchmark": "cluster",
            "timestamp": _dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
            "machine": common.machine_info(),
            "command": " ".join(["python", "bench/bench_cluster.py", *sys.argv[1:]]),
            "settings": {**vars(args), "cluster_nodes": CLUSTER_NODES, "sync_writes": True},
            "dataset": ds.describe(),
            "cpu_note": cpu_note,
            "elapsed_s": elapsed,
            "loadavg1": load_avg,
            "load_rows_per_s": loads,
            "writes": wstats,
            "quorum_p50_over_single": quorum_ratio,
            "search": search,
            "scaling_single_node": single_concurrent,
            "scaling": scaling,
            "search_qps_3_nodes_over_single": scale3,
            "targets": targets,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, default=common._json_default) + "\n", encoding="utf-8")
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
