"""Writer process for the kill -9 tests (``tests/crash/test_kill9.py``).

Run as ``python tests/crash/writer.py --data DIR --ledger-fd N --cycle C --seed S``
with ``PYTHONPATH=src``. It opens the database, reports ``R`` (ready) on the
ledger pipe, then runs several writer threads until it is killed (or until
``--max-seconds`` pass, a safety bound). Every operation is announced on the
ledger with its full content *before* it is issued (``I`` lines) and confirmed
*after* ``upsert()``/``delete()`` returned (``A`` lines). The parent keeps the
pipe's contents: an operation counts as acknowledged only if its ``A`` line
arrived, and an operation with only an ``I`` line was in flight at the kill
(it may or may not have been applied).

Each thread owns its own ids (``t<thread>-<n>``), so the operations on one id
are strictly ordered by the ledger. Ids are reused across cycles, so later
processes overwrite and delete what earlier ones wrote.

The module is also imported by the tests for the workload's constants.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# name -> create_collection() keyword arguments. Two collections so that the
# shared changelog, its trimming and per-collection watermarks are exercised.
COLLECTIONS: dict[str, dict[str, Any]] = {
    "mem_l2": {"dimension": 8, "metric": "l2", "indexed_fields": {"kind": "keyword", "n": "int"}},
    "mem_cos": {"dimension": 12, "metric": "cosine", "indexed_fields": {"kind": "keyword"}},
}
KINDS = ("fact", "episode", "preference", "summary")
WORDS = ("river", "apple", "garden", "ledger", "crash", "memory", "orbit", "violet")
NAMESPACES: tuple[tuple[str, ...], ...] = (
    (),
    ("user-1",),
    ("user-1", "memories"),
    ("user-1", "memories", "2024"),
    ("user-2", "memories"),
    ("agent", "scratch"),
)
IDS_PER_THREAD = 40
FAR_TTL_SECONDS = 1e7  # ~115 days: never expires during a test
FAR_EXPIRES_IN = 1e8  # ~3 years


def record_id(thread: int, n: int) -> str:
    return f"t{thread}-{n}"


def text_token(tag: str) -> str:
    """A word unique to one written record version (letters and digits only)."""
    return "zq" + tag.replace(".", "x")


def make_record(rng: random.Random, coll: str, rid: str, tag: str) -> dict[str, Any]:
    """A random record: vector, optional text, metadata, namespace, TTL, importance."""
    dim = int(COLLECTIONS[coll]["dimension"])
    vec = np.asarray([rng.uniform(-1.0, 1.0) for _ in range(dim)], dtype=np.float32)
    if not np.any(vec):
        vec[0] = 1.0
    rec: dict[str, Any] = {"id": rid, "vector": [float(x) for x in vec]}
    if rng.random() < 0.7:  # 30% of records have no text at all
        rec["text"] = f"note {text_token(tag)} about {rng.choice(WORDS)}"
    if rng.random() < 0.9:
        rec["metadata"] = {
            "kind": rng.choice(KINDS),
            "n": rng.randrange(100),
            "score": round(rng.random(), 6),
            "flag": rng.random() < 0.5,
            "tags": rng.sample(WORDS, rng.randrange(3)),
            "nested": {"tag": tag, "depth": {"x": rng.randrange(10)}},
        }
    ns = rng.choice(NAMESPACES)
    if ns:
        rec["namespace"] = list(ns)
    r = rng.random()
    if r < 0.15:
        rec["ttl_seconds"] = FAR_TTL_SECONDS
    elif r < 0.25:
        rec["expires_at"] = time.time() + FAR_EXPIRES_IN
    if rng.random() < 0.2:
        rec["importance"] = round(rng.random(), 4)
    return rec


class Ledger:
    """JSON lines on a pipe; one lock so lines of different threads never interleave."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def emit(self, obj: dict[str, Any]) -> None:
        data = memoryview((json.dumps(obj, separators=(",", ":")) + "\n").encode())
        with self.lock:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]


def run_thread(
    thread: int,
    cycle: int,
    seed: int,
    colls: dict[str, Any],
    ledger: Ledger,
    deadline: float,
    max_ops: int,
    stop: threading.Event,
    failed: Callable[[BaseException], None],
) -> None:
    rng = random.Random(f"{seed}-{cycle}-{thread}")
    names = sorted(colls)
    try:
        for n in range(max_ops):
            if stop.is_set() or time.monotonic() >= deadline:
                return
            op = f"{cycle}.{thread}.{n}"
            coll = rng.choice(names)
            r = rng.random()
            if r < 0.8:
                count = 1 if r < 0.5 else rng.randint(2, 4)
                ids = rng.sample(range(IDS_PER_THREAD), count)
                recs = [make_record(rng, coll, record_id(thread, i), f"{op}.{j}") for j, i in enumerate(ids)]
                ledger.emit({"k": "I", "op": op, "c": coll, "u": recs})
                colls[coll].upsert(recs)
            else:
                ids_d = [record_id(thread, i) for i in rng.sample(range(IDS_PER_THREAD), rng.randint(1, 3))]
                ledger.emit({"k": "I", "op": op, "c": coll, "d": ids_d})
                colls[coll].delete(ids_d)
            ledger.emit({"k": "A", "op": op})
    except BaseException as e:
        failed(e)


def snapshot_loop(db: Any, deadline: float, stop: threading.Event, failed: Callable[[BaseException], None]) -> None:
    """Snapshot the indexes back to back, so a kill very likely lands inside one."""
    try:
        for _ in range(1_000_000):
            if stop.is_set() or time.monotonic() >= deadline:
                return
            db.snapshot()
            time.sleep(0.1)  # let the writers through: a snapshot holds the index lock
    except BaseException as e:
        failed(e)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--ledger-fd", type=int, required=True)
    ap.add_argument("--cycle", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=60.0, help="safety bound if nobody kills us")
    ap.add_argument("--max-ops", type=int, default=200_000, help="per thread")
    ap.add_argument("--snapshot-loop", action="store_true", help="snapshot indexes continuously")
    ap.add_argument("--index-settings", default="{}", help="JSON for engramdb.open(index=...)")
    ap.add_argument("--no-sync", action="store_true", help="open with storage.sync_writes=false")
    args = ap.parse_args(argv)

    import engramdb

    ledger = Ledger(args.ledger_fd)
    errors: list[BaseException] = []
    stop = threading.Event()

    def failed(e: BaseException) -> None:
        errors.append(e)
        stop.set()
        ledger.emit({"k": "X", "error": repr(e)})

    db = engramdb.open(args.data, storage={"sync_writes": not args.no_sync}, index=json.loads(args.index_settings))
    colls = {name: db.create_collection(name, exist_ok=True, **cfg) for name, cfg in COLLECTIONS.items()}
    for c in colls.values():
        c.count()  # load the indexes before reporting ready
    deadline = time.monotonic() + args.max_seconds
    ledger.emit({"k": "R", "pid": os.getpid()})
    threads = [
        threading.Thread(
            target=run_thread,
            args=(t, args.cycle, args.seed, colls, ledger, deadline, args.max_ops, stop, failed),
            name=f"crash-writer-{t}",
        )
        for t in range(args.threads)
    ]
    if args.snapshot_loop:
        threads.append(threading.Thread(target=snapshot_loop, args=(db, deadline, stop, failed), name="crash-snap"))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 30.0)
    db.close()
    if errors:
        print(f"writer failed: {errors[0]!r}", file=sys.stderr)
        return 1
    ledger.emit({"k": "E"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
