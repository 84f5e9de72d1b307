"""Benchmark the BM25 text index against raw tantivy on the shared passages.

Indexes the ``base`` rows of ``passages.jsonl`` (labels = row order) with
:class:`engramdb.index.text.TextIndex` and, in the same run, with raw tantivy
(same schema and analyzer, plain ``add_document`` + ``commit``), then runs
1000 queries built from the first 8 words of each ``query`` row (k = 10, one
thread) and prints docs/s, QPS, p50/p99 latency and the EngramDB/raw ratios.

The raw reference is what a tantivy user would write: ``parse_query_lenient``
on the text, ``searcher.search`` and the label fast field. Our wrapper
analyses the text itself and builds an OR of term queries (never a parse
error), so the top-10 overlap between the two is printed as a sanity check.

Data: ``$ENGRAMDB_DATA`` or ``<repo>/../shared/data``. Runtime ≈ 10 s.
Usage: ``python bench/bench_text.py``
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run from a checkout without installing the package.
sys.path.insert(0, str(REPO / "src"))

import tantivy  # noqa: E402 - after the sys.path tweak above

from engramdb.index.text import LABEL_FIELD, TEXT_FIELD, TOKENIZER_NAME, TextIndex, build_analyzer, build_schema  # noqa: E402

K = 10
N_QUERIES = 1000
QUERY_WORDS = 8
WARMUP = 50
BATCH = 1000
WRITER_HEAP = 50_000_000  # same budget as TextIndex's default


def data_dir() -> Path:
    env = os.environ.get("ENGRAMDB_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def load() -> tuple[list[str], list[str]]:
    base: list[str] = []
    queries: list[str] = []
    with open(data_dir() / "passages.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["set"] == "base":
                base.append(row["text"])
            elif row["set"] == "query":
                queries.append(" ".join(row["text"].split()[:QUERY_WORDS]))
    return base, queries[:N_QUERIES]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, latencies: list[float]) -> float:
    total = sum(latencies)
    qps = len(latencies) / total
    p50, p99 = percentile(latencies, 0.50) * 1e3, percentile(latencies, 0.99) * 1e3
    print(f"  {name:<10} QPS {qps:>9,.0f}   p50 {p50:6.3f} ms   p99 {p99:6.3f} ms")
    return qps


def main() -> None:
    base, queries = load()
    print(f"dataset: {len(base):,} base passages, {len(queries):,} queries ({QUERY_WORDS} words), k={K}")

    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        # ---------------------------------------------------------- EngramDB
        ours = TextIndex(Path(tmp) / "engramdb", writer_heap_bytes=WRITER_HEAP)
        t0 = time.perf_counter()
        for start in range(0, len(base), BATCH):
            ours.upsert_many((i, base[i]) for i in range(start, min(start + BATCH, len(base))))
        ours.flush()
        ours_ingest = len(base) / (time.perf_counter() - t0)
        assert ours.count() == len(base)

        # ------------------------------------------------------ raw tantivy
        schema = build_schema()
        raw_dir = Path(tmp) / "raw"
        raw_dir.mkdir()
        raw = tantivy.Index(schema, path=str(raw_dir))
        raw.register_tokenizer(TOKENIZER_NAME, build_analyzer())
        writer = raw.writer(heap_size=WRITER_HEAP)
        t0 = time.perf_counter()
        for i, text in enumerate(base):
            doc = tantivy.Document()
            doc.add_unsigned(LABEL_FIELD, i)
            doc.add_text(TEXT_FIELD, text)
            writer.add_document(doc)
        writer.commit()
        raw.reload()
        raw_ingest = len(base) / (time.perf_counter() - t0)

        print("indexing (incl. commit + reload):")
        print(f"  engramdb   {ours_ingest:>9,.0f} docs/s  (upsert = delete-by-label + add, batches of {BATCH})")
        print(f"  raw        {raw_ingest:>9,.0f} docs/s  (add_document only)")
        print(f"  ratio      {ours_ingest / raw_ingest:9.2f}")

        def raw_search(text: str) -> list[int]:
            query, _errors = raw.parse_query_lenient(text, [TEXT_FIELD])
            searcher = raw.searcher()
            hits = searcher.search(query, K, count=False).hits
            return [int(v) for v in searcher.fast_field_values(LABEL_FIELD, [a for _, a in hits]) if v is not None]

        def ours_search(text: str) -> list[int]:
            return [label for label, _ in ours.search(text, K)]

        for q in queries[:WARMUP]:
            ours_search(q)
            raw_search(q)

        # Interleave per query so background noise hits both sides alike.
        lat_ours: list[float] = []
        lat_raw: list[float] = []
        overlap: list[float] = []
        for q in queries:
            t0 = time.perf_counter()
            a = ours_search(q)
            t1 = time.perf_counter()
            b = raw_search(q)
            t2 = time.perf_counter()
            lat_ours.append(t1 - t0)
            lat_raw.append(t2 - t1)
            if b:
                overlap.append(len(set(a) & set(b)) / len(b))

        print(f"BM25 search ({len(queries)} queries, one thread):")
        qps_ours = report("engramdb", lat_ours)
        qps_raw = report("raw", lat_raw)
        print(f"  ratio      {qps_ours / qps_raw:9.2f}  (engramdb QPS / raw QPS)")
        print(f"  top-{K} overlap with raw: {statistics.mean(overlap):.3f}")
        ours.close()


if __name__ == "__main__":
    main()
