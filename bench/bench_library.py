"""Library costs that decide engine design, measured on the shared data.

Two questions, each answered with both alternatives in the same run and the
ratio printed:

- ``checksum``: RocksDB block checksums, CRC-32C (RocksDB's default, in
  software in this rocksdict build) against XXH3, as a sorted 1,000-key
  multi-get of 384-d float32 vectors that bypasses the block cache, which is
  what an exact search over filter candidates does.
- ``update``: hnswlib ways to change a vector: in place (``updatePoint``, what
  ``add_items`` does for an existing label), mark the old node deleted and add
  a fresh one, and add into a deleted slot (``replace_deleted``).

Usage: ``python bench/bench_library.py [--n 40000] [--only checksum|update]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
from rocksdict import BlockBasedOptions, ChecksumType, DBCompressionType, Options, Rdict, ReadOptions

import common


def best_of(fn: Callable[[], Any], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def checksum(vectors: np.ndarray, workdir: Path, keys_per_get: int = 1000) -> list[list[Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for name in ("crc32c", "xxh3"):
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_compression_type(DBCompressionType.none())
        table = BlockBasedOptions()
        table.set_checksum_type(getattr(ChecksumType, name)())
        opts.set_block_based_table_factory(table)
        db = Rdict(str(workdir / name), opts)
        for i, v in enumerate(vectors):
            db[b"k%08d" % i] = v.tobytes()
        db.flush()
        reads = ReadOptions()
        reads.fill_cache(False)  # type: ignore[call-arg]
        db.set_read_options(reads)
        samples = [
            sorted(b"k%08d" % i for i in rng.choice(len(vectors), keys_per_get, replace=False)) for _ in range(5)
        ]
        secs = min(best_of(lambda keys=keys, db=db: db[keys], rounds=3) for keys in samples)
        db.close()
        rows.append([name, keys_per_get, secs * 1e3, secs / keys_per_get * 1e6])
    return rows


def update(vectors: np.ndarray, n: int, changes: int = 500) -> list[list[Any]]:
    base, extra = vectors[:n], vectors[n : n + 3 * changes]
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=n + 3 * changes, M=16, ef_construction=200, allow_replace_deleted=True)
    index.add_items(base)
    targets = np.random.default_rng(1).choice(n, 2 * changes, replace=False).tolist()
    rows = []

    def in_place() -> None:
        for j, label in enumerate(targets[:changes]):
            index.add_items(extra[j][None], [label], num_threads=1)

    def delete_and_add() -> None:
        for j, label in enumerate(targets[changes:]):
            index.mark_deleted(label)
            index.add_items(extra[changes + j][None], [n + j], num_threads=1)

    def into_deleted_slot() -> None:  # reuses the slots delete_and_add left behind
        for j in range(changes):
            index.add_items(extra[2 * changes + j][None], [n + changes + j], replace_deleted=True, num_threads=1)

    for label, fn in (
        ("in place (updatePoint)", in_place),
        ("mark deleted + fresh add", delete_and_add),
        ("add into a deleted slot", into_deleted_slot),
    ):
        t0 = time.perf_counter()
        fn()
        rows.append([label, changes, (time.perf_counter() - t0) / changes * 1e3])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40_000, help="rows in the HNSW graph for 'update' (default 40,000)")
    ap.add_argument("--only", choices=("checksum", "update"), help="run one part")
    args = ap.parse_args()
    ds = common.load_dataset(min(args.n + 1500, common.N_REAL), queries=1, log=common.log)
    vectors = ds.base.astype(np.float32)
    out: dict[str, Any] = {"n": args.n}
    if args.only in (None, "checksum"):
        workdir = Path(tempfile.mkdtemp(prefix="bench-library-"))
        try:
            rows = checksum(vectors, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        out["checksum"] = rows
        common.print_table(
            ["block checksum", "keys per multi-get", "ms per multi-get", "µs per key"],
            [[r[0], r[1], common.fmt(r[2], 2), common.fmt(r[3], 2)] for r in rows],
            title=f"RocksDB multi-get of {len(vectors):,} stored 384-d vectors, block cache bypassed",
        )
        print(f"XXH3 / CRC-32C time: {common.fmt_ratio(rows[1][2] / rows[0][2])}")
    if args.only in (None, "update"):
        rows = update(vectors, min(args.n, len(vectors) - 1500))
        out["update"] = rows
        common.print_table(
            ["way to change a vector", "changes", "ms per change"],
            [[r[0], r[1], common.fmt(r[2], 3)] for r in rows],
            title="hnswlib, M=16, ef_construction=200, one thread",
        )
        print(f"in place / (delete + fresh add): {common.fmt_ratio(rows[0][2] / rows[1][2])}")
    path = common.write_results("library", out)
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
