"""Server benchmark: search over REST vs gRPC, 32 concurrent clients, one real server.

What it does, in one run:

1. starts ``engramdb serve`` as a subprocess on loopback ports, with an admin
   key, ``storage.sync_writes`` off (only the load writes) and rate limits
   raised out of the way (the defaults would cap one key at 1,000 requests/s);
2. loads ``--n`` rows of the shared dataset (``real.npy``; see bench/common.py)
   into a cosine collection over gRPC in batches of 1,000, and checks that REST
   and gRPC return the same hits for a few queries;
3. runs ``--clients`` concurrent clients (default 32) for ``--duration``
   seconds (default 15) per transport, each doing k = 10 searches with the
   held-out queries of ``queries_dev.npy`` (default ``include``: metadata and
   text), one query per call:

   - REST: an ``httpx.Client`` per client thread (keep-alive, one connection
     each), the JSON bodies pre-encoded, responses decoded with orjson;
   - gRPC: a channel per client thread (own connection), requests
     pre-serialised, responses decoded into ``SearchResponse``;

   The clients are spread over ``--procs`` processes (default 4 x 8 threads)
   so one client process's GIL is not the limit; ``--rounds`` alternates
   REST and gRPC phases and compares the best phase of each;
4. prints QPS, mean/p50/p99 latency, server and client CPU for each, the
   gRPC/REST ratios and the PERFORMANCE.md targets (REST ≥ 2,000 QPS with
   p99 ≤ 20 ms; gRPC ≥ 1.5 x REST), and writes ``bench/results/server-<ts>.json``.

The load generator runs on the same machine as the server: on 2 cores they
compete for CPU, so these numbers are a lower bound of what the server does
with its own cores (the client CPU column shows how much the clients took).

Usage::

    python bench/bench_server.py                 # 42,887 rows (load time = server ingest), 2 x 15 s of search
    python bench/bench_server.py --quick         # 5,000 rows, 2 x 5 s
    python bench/bench_server.py --n 20000 --duration 10 --clients 16 --procs 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))  # run from a checkout without installing
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import common as C  # noqa: E402
import numpy as np  # noqa: E402

# Made in the parent and passed to the client processes (spawned children re-import this module).
ADMIN_KEY = "bench-admin-" + os.urandom(12).hex()
COLLECTION = "bench"
BATCH = 1000
START_TIMEOUT_S = 120.0
WARMUP_S = 2.0
# Requests one client thread may make per phase: a safety bound on top of the time bound.
MAX_REQUESTS_PER_CLIENT = 200_000


# ------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """An ``engramdb serve`` subprocess on loopback."""

    def __init__(self, data_dir: Path, log_level: str):
        self.port, self.grpc_port = free_port(), free_port()
        self.log_path = data_dir.parent / "server.log"
        env = {k: v for k, v in C.src_env().items() if not k.startswith("ENGRAMDB_")}
        env.update(
            {
                "ENGRAMDB_ADMIN_KEY": ADMIN_KEY,
                "ENGRAMDB_SERVER__AUTH": "required",
                "ENGRAMDB_SERVER__LOG_LEVEL": log_level,
                "ENGRAMDB_STORAGE__SYNC_WRITES": "false",
                "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_PER_SECOND": "1000000",
                "ENGRAMDB_SERVER__RATE_LIMITS__PER_KEY_BURST": "1000000",
                "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_PER_SECOND": "1000000",
                "ENGRAMDB_SERVER__RATE_LIMITS__PER_IP_BURST": "1000000",
            }
        )
        cmd = [sys.executable, "-m", "engramdb.cli", "serve", "--data-dir", str(data_dir)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--grpc-port", str(self.grpc_port)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"server not ready after {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)


# -------------------------------------------------------------------- load
def load(server: Server, ds: C.Dataset) -> float:
    """Create the collection and upsert every row over gRPC; returns vectors/s."""
    import grpc

    from engramdb.server.grpc import engramdb_pb2 as pb
    from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc

    md = (("authorization", f"Bearer {ADMIN_KEY}"),)
    with grpc.insecure_channel(server.grpc_address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        stub.CreateCollection(pb.CreateCollectionRequest(name=COLLECTION, dimension=ds.dim), metadata=md, timeout=30)
        start = time.perf_counter()
        for s in range(0, ds.n, BATCH):
            rows = ds.base[s : s + BATCH]
            recs = [
                pb.Record(id=f"r{s + i}", vector=row.tobytes(), metadata_json=f'{{"i": {s + i}}}')
                for i, row in enumerate(rows)
            ]
            stub.Upsert(pb.UpsertRequest(coll=COLLECTION, records=recs), metadata=md, timeout=300)
        return ds.n / (time.perf_counter() - start)


def check_parity(server: Server, ds: C.Dataset, n_queries: int = 20) -> tuple[bool, float]:
    """Whether REST and gRPC return the same ids and scores; and gRPC recall@10 against exact numpy."""
    import grpc
    import httpx

    from engramdb.server.grpc import engramdb_pb2 as pb
    from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc

    md = (("authorization", f"Bearer {ADMIN_KEY}"),)
    qs = ds.queries[:n_queries]
    truth = C.ground_truth(ds.base, qs)
    same = True
    found: list[list[int]] = []
    with (
        grpc.insecure_channel(server.grpc_address) as ch,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http,
    ):
        stub = pb_grpc.EngramDBStub(ch)
        for q in qs:
            g = stub.Search(pb.SearchRequest(coll=COLLECTION, vector=q.tobytes(), k=C.K), metadata=md, timeout=30).hits
            r = http.post(f"/v1/collections/{COLLECTION}/search", json={"vector": q.tolist(), "k": C.K}).json()["hits"]
            same &= [(h.id, h.score) for h in g] == [(h["id"], h["score"]) for h in r]
            found.append([int(h.id[1:]) for h in g])
    return same, C.recall_at_k(found, truth)


# ----------------------------------------------------------------- clients
def _client_process(
    transport: str,
    target: str,
    key: str,
    payloads: list[bytes],
    threads: int,
    offset: int,
    start_at: float,
    duration: float,
    out: Any,
) -> None:
    """``threads`` client threads of one transport; puts (latencies, errors, first error, cpu s) on ``out``."""
    end_at = start_at + duration
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    first_error: list[str] = []

    def run(index: int) -> None:
        call, close = _make_caller(transport, target, key)
        mine: list[float] = []
        i = (offset + index) * 17  # clients start at different queries
        try:
            while time.time() < start_at:  # warm up the connection until the common start
                call(payloads[i % len(payloads)])
                i += 1
            clock = time.perf_counter
            while time.time() < end_at and len(mine) < MAX_REQUESTS_PER_CLIENT:
                t0 = clock()
                try:
                    call(payloads[i % len(payloads)])
                except Exception as e:
                    with lock:
                        errors[0] += 1
                        if not first_error:
                            first_error.append(repr(e)[:300])
                else:
                    mine.append(clock() - t0)
                i += 1
        finally:
            close()
        with lock:
            latencies.extend(mine)

    cpu0 = sum(os.times()[:2])
    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((np.asarray(latencies, dtype=np.float64).tobytes(), errors[0], first_error, sum(os.times()[:2]) - cpu0))


def _make_caller(transport: str, target: str, key: str) -> tuple[Any, Any]:
    """A blocking ``call(payload)`` that sends one search and decodes the answer, and its ``close``."""
    if transport == "rest":
        import httpx
        import orjson

        client = httpx.Client(
            base_url=target,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=30,
        )
        path = f"/v1/collections/{COLLECTION}/search"

        def rest_call(body: bytes) -> Any:
            r = client.post(path, content=body)
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            return orjson.loads(r.content)

        return rest_call, client.close

    import grpc

    from engramdb.server.grpc import engramdb_pb2 as pb

    # A local subchannel pool gives every client thread its own connection, as
    # each REST client has its own keep-alive connection.
    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    search = channel.unary_unary(
        "/engramdb.v1.EngramDB/Search",
        request_serializer=None,  # payloads are pre-serialised SearchRequests
        response_deserializer=pb.SearchResponse.FromString,
    )
    md = (("authorization", f"Bearer {key}"),)

    def grpc_call(req: bytes) -> Any:
        return search(req, metadata=md, timeout=30)

    return grpc_call, channel.close


def payloads(transport: str, queries: np.ndarray) -> list[bytes]:
    """One pre-encoded k = 10 search per query, so clients spend no time encoding."""
    if transport == "rest":
        import orjson

        return [orjson.dumps({"vector": q.tolist(), "k": C.K}) for q in queries]
    from engramdb.server.grpc import engramdb_pb2 as pb

    return [pb.SearchRequest(coll=COLLECTION, vector=q.tobytes(), k=C.K).SerializeToString() for q in queries]


def run_phase(
    server: Server, transport: str, queries: np.ndarray, clients: int, procs: int, duration: float
) -> dict[str, Any]:
    """``clients`` concurrent clients over ``procs`` processes for ``duration`` seconds."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    bodies = payloads(transport, queries)
    target = server.url if transport == "rest" else server.grpc_address
    per_proc = [clients // procs + (1 if p < clients % procs else 0) for p in range(procs)]
    # Spawned interpreters take a moment to start; the common start leaves them
    # time to import, connect and warm up before anything is measured.
    start_at = time.time() + WARMUP_S + 1.5 + 0.3 * procs
    workers = []
    offset = 0
    for n in per_proc:
        if n == 0:
            continue
        args = (transport, target, ADMIN_KEY, bodies, n, offset, start_at, duration, out)
        p = ctx.Process(target=_client_process, args=args)
        p.start()
        workers.append(p)
        offset += n
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = server.cpu_seconds()
    time.sleep(duration)
    server_cpu = server.cpu_seconds() - cpu0
    results = [out.get(timeout=duration + 120) for _ in workers]
    for p in workers:
        p.join(30)
    lat = np.concatenate([np.frombuffer(r[0], dtype=np.float64) for r in results])
    stats = C.LatencyStats.of(lat.tolist(), duration)
    errors = sum(r[1] for r in results)
    first = next((r[2][0] for r in results if r[2]), None)
    client_cpu = sum(r[3] for r in results)  # includes warm-up: an upper bound
    return {
        "transport": transport,
        "clients": clients,
        "processes": len(workers),
        **stats.to_dict(),
        "errors": errors,
        "first_error": first,
        "server_cpu_pct": 100 * server_cpu / duration,
        "client_cpu_pct": 100 * client_cpu / (duration + WARMUP_S),
    }


# -------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=C.N_REAL, help="rows to load (default: every real row)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of load per transport (max 120)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (max 256)")
    ap.add_argument("--procs", type=int, default=4, help="client processes the clients are spread over")
    ap.add_argument(
        "--rounds", type=int, default=1, help="REST/gRPC phase pairs, alternated (max 5); the best of each is compared"
    )
    ap.add_argument("--log-level", default="warning", help="server log level (info logs a line per request)")
    ap.add_argument("--quick", action="store_true", help="5,000 rows and 5 s per transport")
    args = ap.parse_args()
    if args.quick:
        args.n, args.duration = 5000, 5.0
    if not (0 < args.duration <= 120 and 0 < args.clients <= 256 and 0 < args.procs <= args.clients):
        raise SystemExit("need 0 < --duration <= 120, 0 < --clients <= 256 and 0 < --procs <= --clients")
    if not 1 <= args.rounds <= 5:
        raise SystemExit("--rounds must be 1..5")

    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    ds = C.load_dataset(args.n, queries=500, log=C.log)
    C.log(f"dataset: {ds.label}, {len(ds.queries)} held-out queries, k={C.K}")
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        server = Server(Path(tmp) / "data", args.log_level)
        try:
            server.wait_ready()
            C.log(f"server up: REST {server.url}, gRPC {server.grpc_address}; loading {ds.n:,} rows over gRPC ...")
            load_rate = load(server, ds)
            same, recall = check_parity(server, ds)
            C.log(f"loaded at {load_rate:,.0f} vec/s; REST == gRPC hits: {same}; recall@10 (20 queries): {recall:.3f}")
            phases = []
            # Alternating rounds spread slow spells of a shared machine over both transports.
            for rnd in range(args.rounds):
                for transport in ("rest", "grpc"):
                    C.log(f"{transport} (round {rnd + 1}/{args.rounds}): {args.clients} clients ...")
                    phase = run_phase(server, transport, ds.queries, args.clients, args.procs, args.duration)
                    phases.append({"round": rnd + 1, **phase})
        finally:
            status = server.stop()
    rest = max((p for p in phases if p["transport"] == "rest"), key=lambda p: p["qps"])
    grpc_ = max((p for p in phases if p["transport"] == "grpc"), key=lambda p: p["qps"])
    print()
    print(
        f"Search over the server: {ds.label}, k={C.K}, {args.clients} concurrent clients "
        f"({args.procs} client processes), {args.duration:.0f} s per phase, {args.rounds} round(s), "
        f"{os.cpu_count()} CPUs, load average before: {load_before}.\n"
        "NOTE: the load generator shares this machine's cores with the server; on 2 cores the clients\n"
        "take a large share of the CPU (client CPU column), so these numbers are a lower bound."
    )
    C.print_table(
        ["transport", "round", "QPS", "mean ms", "p50 ms", "p99 ms", "errors", "server CPU %", "client CPU %"],
        [
            [
                p["transport"],
                p["round"],
                C.fmt(p["qps"]),
                C.fmt(p["mean_ms"], 2),
                C.fmt(p["p50_ms"], 2),
                C.fmt(p["p99_ms"], 2),
                p["errors"],
                C.fmt(p["server_cpu_pct"]),
                C.fmt(p["client_cpu_pct"]),
            ]
            for p in phases
        ],
    )
    ratios = {
        "qps": C.ratio(grpc_["qps"], rest["qps"]),
        "p50": C.ratio(grpc_["p50_ms"], rest["p50_ms"]),
        "p99": C.ratio(grpc_["p99_ms"], rest["p99_ms"]),
    }
    print(
        f"gRPC / REST (best round of each): QPS {C.fmt_ratio(ratios['qps'])}, p50 {C.fmt_ratio(ratios['p50'])}, "
        f"p99 {C.fmt_ratio(ratios['p99'])}"
    )
    targets = {
        "rest_qps>=2000": rest["qps"] >= 2000,
        "rest_p99<=20ms": rest["p99_ms"] <= 20,
        "grpc>=1.5x_rest": (ratios["qps"] or 0) >= 1.5,
    }
    print("targets (PERFORMANCE.md): " + ", ".join(f"{k} {'MET' if v else 'NOT MET'}" for k, v in targets.items()))
    for p in phases:
        if p["errors"]:
            print(f"{p['transport']}: {p['errors']} errors, first: {p['first_error']}")
    path = C.write_results(
        "server",
        {
            "dataset": ds.describe(),
            "settings": {**vars(args), "server_log_level": args.log_level, "sync_writes": False},
            "load_vectors_per_s": load_rate,
            "rest_grpc_same_hits": same,
            "recall_at_10_sample": recall,
            "phases": phases,
            "grpc_over_rest": ratios,
            "targets": targets,
            "server_exit_status": status,
            "loadavg_before": load_before,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
