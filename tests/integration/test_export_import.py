"""Export and import of a collection (docs/export-import.md).

Round trips embedded -> file -> embedded and embedded -> file -> server (through the client),
with vectors compared bit for bit, metadata, namespaces, expiry and edges; a resumed import after
a crash (a raised error after N batches, and a killed subprocess); the exporter's laziness; the
refusals of bad files; Parquet; and the Chroma/Qdrant conversion code of the docs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engramdb
from conftest import ROOT, SRC, ServerProcess, unique_name
from engramdb import cli, transfer
from engramdb.errors import DimensionMismatch, FailedPrecondition, InvalidArgument, NotFound

DOC = ROOT / "docs" / "export-import.md"
DIM = 6


class Crash(Exception):
    pass


def _fill(db: engramdb.Database, name: str = "src", n: int = 40, metric: str = "cosine") -> engramdb.Collection:
    coll = db.create_collection(name, DIM, metric, indexed_fields={"user": "keyword"})
    rng = np.random.default_rng(7)
    now = time.time()
    recs: list[dict[str, Any]] = []
    for i in range(n):
        rec: dict[str, Any] = {
            "id": f"r{i:03d}",
            "vector": rng.standard_normal(DIM).astype(np.float32).tolist(),
            "metadata": {"user": f"u{i % 3}", "n": i, "nested": {"deep": [i, "x"]}},
            "namespace": ["users", f"u{i % 3}"] if i % 2 else [],
            "text": f"memory number {i} ünïcode" if i % 4 else None,
            "importance": 0.5 if i % 5 == 0 else None,
        }
        if i % 7 == 0:
            rec["ttl_seconds"] = 3600.0
        elif i % 7 == 1:
            rec["expires_at"] = now + 86400.0
        recs.append(rec)
    recs.append({"id": "gone", "vector": [1.0] * DIM, "expires_at": now - 10})  # expired: not exported
    coll.upsert(recs)
    coll.link([{"src": f"r{i:03d}", "relation": "next", "dst": f"r{i + 1:03d}", "weight": 0.5} for i in range(n - 1)])
    coll.link([{"src": "r005", "relation": "about", "dst": "r001", "properties": {"why": "test"}}])
    coll.link([{"src": "r002", "relation": "to", "dst": "nowhere"}], create_missing=True)  # invisible: not exported
    return coll


def _snapshot(coll: Any) -> tuple[dict[str, dict[str, Any]], set[tuple[Any, ...]]]:
    """Every live record (vector as raw float32 bytes) and every visible edge of a collection."""
    records: dict[str, dict[str, Any]] = {}
    edges: set[tuple[Any, ...]] = set()
    cursor = None
    while True:
        page = coll.scan(cursor=cursor, limit=13)
        for r in page.records:
            records[r.id] = {
                "vector": np.asarray(r.vector, dtype=np.float32).tobytes(),
                "text": r.text,
                "metadata": r.metadata,
                "namespace": tuple(r.namespace),
                "expires_at": r.expires_at,
                "importance": r.importance,
            }
            got = coll.edges(r.id)
            assert len(got) == len({(e.src, e.relation, e.dst) for e in got})  # never a duplicate edge
            edges |= {(e.src, e.relation, e.dst, e.weight, json.dumps(e.properties)) for e in got}
        cursor = page.next_cursor
        if cursor is None:
            return records, edges


def _same_data(a: Any, b: Any) -> None:
    ra, ea = _snapshot(a)
    rb, eb = _snapshot(b)
    assert sorted(ra) == sorted(rb)
    for rid in ra:
        assert ra[rid] == rb[rid], rid  # vectors bit for bit, expiry to the same float
    assert ea == eb


@pytest.fixture
def source(tmp_path: Path) -> Any:
    db = engramdb.open(tmp_path / "src-db")
    coll = _fill(db)
    yield db, coll
    db.close()


def test_roundtrip_embedded_jsonl_embedded(source: Any, tmp_path: Path) -> None:
    _, coll = source
    out = tmp_path / "c.jsonl"
    stats = transfer.export_jsonl(coll, out, page_size=7)
    assert (stats.records, stats.edges) == (40, 40)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["collection"]["indexed_fields"] == {"user": "keyword"}
    assert lines[0]["counts"] == {"records": 40}
    assert lines[-1] == {"kind": "end", "records": 40, "edges": 40}
    assert "gone" not in {x.get("id") for x in lines} and "nowhere" not in {x.get("dst") for x in lines}
    assert not (tmp_path / "c.jsonl.partial").exists()

    with engramdb.open(tmp_path / "dst-db") as dst:
        got = transfer.import_file(dst, out, create=True, batch_size=5)
        assert got.created and got.records == 40 and got.edges == 40 and got.batches > 5
        target = dst.get_collection("src")
        assert target.config.indexed_fields == {"user": "keyword"} and target.metric == "cosine"
        _same_data(coll, target)
        assert target.get("r000").ttl_seconds is None  # --ttl keep restores the expiry time, not the TTL
        assert not Path(str(out) + ".checkpoint").exists()  # a finished import removes its checkpoint


def test_reimport_of_cosine_vectors_is_bit_exact(tmp_path: Path) -> None:
    """A stored (unit) cosine vector written again is stored unchanged; dividing by its norm again moved bits."""
    with engramdb.open(tmp_path / "db") as db:
        coll = db.create_collection("c", 64)
        rng = np.random.default_rng(0)
        coll.upsert([{"id": f"v{i}", "vector": rng.standard_normal(64).tolist()} for i in range(300)])
        first = {r.id: r.vector for r in coll.scan(limit=1000, include=["vector"]).records}
        coll.upsert([{"id": rid, "vector": v} for rid, v in first.items()])
        again = {r.id: r.vector for r in coll.scan(limit=1000, include=["vector"]).records}
        assert again == first


def test_ttl_restart_gives_the_ttl_again(source: Any, tmp_path: Path) -> None:
    _, coll = source
    out = tmp_path / "c.jsonl"
    transfer.export_jsonl(coll, out)
    with engramdb.open(tmp_path / "dst") as dst:
        before = time.time()
        transfer.import_file(dst, out, create=True, ttl="restart")
        r = dst.get_collection("src").get("r000")
        assert r.ttl_seconds == 3600.0 and r.expires_at >= before + 3600.0
        assert dst.get_collection("src").get("r001").expires_at == coll.get("r001").expires_at


def test_roundtrip_embedded_to_server_through_the_cli(
    source: Any, tmp_path: Path, server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = source
    out = tmp_path / "c.jsonl"
    db.close()  # the CLI opens the data directory itself, as an operator would with the server stopped
    assert cli.main(["export", "src", str(out), "--data-dir", str(tmp_path / "src-db"), "--quiet"]) == 0
    monkeypatch.setenv("EXPORT_TEST_KEY", server.admin_key or "")
    name = unique_name("imp")
    url = ["--url", server.base_url, "--api-key-env", "EXPORT_TEST_KEY", "--quiet"]
    assert cli.main(["import", str(out), "--collection", name, "--create", "--batch-size", "9", *url]) == 0
    back = tmp_path / "back.jsonl"
    assert cli.main(["export", name, str(back), *url]) == 0

    def data(p: Path) -> list[dict[str, Any]]:
        rows = [json.loads(x) for x in p.read_text().splitlines()[1:]]
        for r in rows:
            r.pop("ttl_seconds", None)  # restored as an expiry time (--ttl keep)
        return rows

    assert data(back) == data(out)  # the same records, vectors, expiry and edges, in the same order
    with engramdb.open(tmp_path / "src-db") as again, engramdb.connect(server.base_url, server.admin_key) as client:
        _same_data(again.get_collection("src"), client.get_collection(name))


def test_import_resumes_after_a_crash_without_duplicates(source: Any, tmp_path: Path) -> None:
    _, coll = source
    out = tmp_path / "c.jsonl"
    transfer.export_jsonl(coll, out, page_size=5)
    cp = Path(str(out) + ".checkpoint")

    def crash(n: int) -> None:
        if n == 3:
            raise Crash

    with engramdb.open(tmp_path / "dst") as dst:
        with pytest.raises(Crash):
            transfer.import_file(dst, out, create=True, batch_size=4, on_batch=crash)
        doc = json.loads(cp.read_text())
        assert 0 < dst.get_collection("src").count() < 40 and doc["line"] > 1
        with pytest.raises(FailedPrecondition) as ei:  # a leftover checkpoint is never ignored
            transfer.import_file(dst, out, batch_size=4)
        assert ei.value.code == "checkpoint_exists" and "--resume" in ei.value.message
        # Rewind the checkpoint by two batches: replayed batches must change nothing (upserts by id and edge key).
        lines = out.read_bytes().splitlines(keepends=True)
        doc.update(line=2, position=len(lines[0]) + len(lines[1]), records=1, edges=0, skipped_expired=0)
        cp.write_text(json.dumps(doc))
        got = transfer.import_file(dst, out, resume=True, batch_size=4)
        assert got.resumed_from_line == 2 and (got.records, got.edges) == (40, 40)
        _same_data(coll, dst.get_collection("src"))
        assert not cp.exists()


def test_killed_import_subprocess_resumes(source: Any, tmp_path: Path) -> None:
    _, coll = source
    coll.upsert([{"id": f"bulk{i:05d}", "vector": [float(i + 1)] + [0.5] * (DIM - 1)} for i in range(3000)])
    out = tmp_path / "c.jsonl"
    transfer.export_jsonl(coll, out)
    cp = Path(str(out) + ".checkpoint")
    dst_dir = tmp_path / "dst"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "engramdb.cli", "import", str(out), "--create", "--batch-size", "10"]
    proc = subprocess.Popen([*cmd, "--data-dir", str(dst_dir), "--quiet"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not cp.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert cp.exists()
    assert cli.main(["import", str(out), "--data-dir", str(dst_dir), "--quiet"]) == 1  # checkpoint_exists
    assert cli.main(["import", str(out), "--resume", "--data-dir", str(dst_dir), "--quiet"]) == 0
    with engramdb.open(dst_dir) as dst:
        _same_data(coll, dst.get_collection("src"))


class _CountingCollection:
    """A collection that counts the pages read from it."""

    def __init__(self, inner: Any):
        self.inner, self.scans = inner, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def scan(self, **kw: Any) -> Any:
        self.scans += 1
        return self.inner.scan(**kw)


def test_export_streams_one_page_at_a_time(source: Any) -> None:
    _, coll = source
    counting = _CountingCollection(coll)
    items = transfer.export_items(counting, page_size=5)  # type: ignore[arg-type]
    assert counting.scans == 0  # nothing is read before it is asked for
    assert next(items)["kind"] == "header"
    seen = [next(items) for _ in range(5)]
    assert [x["kind"] for x in seen] == ["record"] * 5 and counting.scans == 1
    rest = list(items)
    assert counting.scans == 8 and rest[-1]["kind"] == "end"  # 40 records in pages of 5


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _header(dim: int = DIM, metric: str = "cosine", **kw: Any) -> dict[str, Any]:
    return {
        "kind": "header",
        "format": "engramdb-export",
        "version": 1,
        "collection": {"name": "h", "dimension": dim, "metric": metric},
        **kw,
    }


def _rec(i: int, dim: int = DIM) -> dict[str, Any]:
    return {"kind": "record", "id": f"x{i}", "vector": [1.0 + i] + [0.0] * (dim - 1)}


def test_bad_files_are_refused_with_clear_errors(tmp_path: Path) -> None:
    with engramdb.open(tmp_path / "db") as db:
        end1 = {"kind": "end", "records": 1, "edges": 0}
        cases: list[tuple[list[Any], type[Exception], str, str]] = [
            ([{"kind": "record"}, end1], InvalidArgument, "invalid_export", "not an EngramDB export"),
            ([_header(version=9), _rec(0), end1], InvalidArgument, "invalid_export", "newer than this EngramDB"),
            ([_header(), _rec(0)], InvalidArgument, "invalid_export", "truncated"),
            ([_header(dim=0), end1], InvalidArgument, "invalid_export", "dimension 0"),
            ([_header(), _rec(0), "{not json", end1], InvalidArgument, "invalid_export", "b.jsonl:3: not valid JSON"),
            ([_header(), _rec(0), {"kind": "blob"}, end1], InvalidArgument, "invalid_export", "b.jsonl:3: expected"),
            ([_header(), {**_rec(0), "colour": 1}, end1], InvalidArgument, "invalid_export", "unknown fields"),
            ([_header(), _rec(0, dim=3), end1], DimensionMismatch, "dimension_mismatch", "b.jsonl:2: record 'x0'"),
            ([_header(), _rec(0), {"kind": "end", "records": 5, "edges": 0}], InvalidArgument, "", "damaged"),
            (
                [_header(), _rec(0), end1, _rec(1), {"kind": "end", "records": 2, "edges": 0}],
                InvalidArgument,
                "invalid_export",
                "b.jsonl:4: data after the end line",
            ),
        ]
        for lines, cls, code, text in cases:
            path = _write(tmp_path / "b.jsonl", lines)
            with pytest.raises(cls) as ei:
                transfer.import_file(db, path, create=True)
            assert (code in ("", ei.value.code)) and text in ei.value.message, (lines, ei.value)  # type: ignore[attr-defined]
            Path(str(path) + ".checkpoint").unlink(missing_ok=True)
            if text != "damaged":  # counts are checked at the end of the stream, after the data
                assert all(c.name != "h" or db.get_collection("h").count() == 0 for c in db.list_collections())
            if any(c.name == "h" for c in db.list_collections()):
                db.delete_collection("h")


def test_target_mismatch_and_missing_collection(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.jsonl", [_header(), _rec(0), {"kind": "end", "records": 1, "edges": 0}])
    with engramdb.open(tmp_path / "db") as db:
        with pytest.raises(NotFound) as nf:
            transfer.import_file(db, path)
        assert nf.value.code == "collection_not_found" and "--create" in nf.value.message
        db.create_collection("small", 3)
        with pytest.raises(DimensionMismatch) as dm:
            transfer.import_file(db, path, collection="small")
        assert f"{DIM}-dimensional" in dm.value.message and "dimension 3" in dm.value.message
        db.create_collection("l2", DIM, "l2")
        with pytest.raises(InvalidArgument) as mm:
            transfer.import_file(db, path, collection="l2")
        assert mm.value.code == "metric_mismatch"
        assert db.get_collection("small").count() == 0 and db.get_collection("l2").count() == 0


def test_a_bad_line_keeps_acknowledged_batches_and_names_the_line(tmp_path: Path) -> None:
    lines: list[Any] = [_header(), *[_rec(i) for i in range(6)]]
    lines.append({"kind": "record", "id": "bad\u0001id", "vector": [1.0] * DIM})  # refused by the engine
    lines += [_rec(i) for i in range(6, 9)]
    lines.append({"kind": "end", "records": 10, "edges": 0})
    path = _write(tmp_path / "l.jsonl", lines)
    with engramdb.open(tmp_path / "db") as db:
        with pytest.raises(InvalidArgument) as ei:
            transfer.import_file(db, path, create=True, batch_size=4)
        assert ei.value.code == "invalid_id" and re.search(r"l\.jsonl:8: records\[2\]", ei.value.message)
        assert db.get_collection("h").count() == 4  # the first batch (lines 2-5) was acknowledged, nothing after
        assert json.loads(Path(str(path) + ".checkpoint").read_text())["line"] == 5


def test_checkpoint_of_another_file_is_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [_header(), _rec(0), {"kind": "end", "records": 1, "edges": 0}])
    Path(str(a) + ".checkpoint").write_text(json.dumps({"format": "engramdb-import-checkpoint", "header_sha256": "x"}))
    with engramdb.open(tmp_path / "db") as db, pytest.raises(FailedPrecondition) as ei:
        transfer.import_file(db, a, create=True, resume=True)
    assert ei.value.code == "checkpoint_mismatch"


def test_parquet_roundtrip_and_resume(source: Any, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    _, coll = source
    out = tmp_path / "c.parquet"
    stats = transfer.export_parquet(coll, out, page_size=6)
    assert (stats.records, stats.edges) == (40, 40) and out.read_bytes()[:4] == b"PAR1"

    def crash(n: int) -> None:
        if n == 4:
            raise Crash

    with engramdb.open(tmp_path / "dst") as dst:
        with pytest.raises(Crash):
            transfer.import_file(dst, out, create=True, batch_size=5, on_batch=crash)
        got = transfer.import_file(dst, out, resume=True, batch_size=5)
        assert (got.records, got.edges) == (40, 40) and got.resumed_from_line > 0
        _same_data(coll, dst.get_collection("src"))
    truncated = tmp_path / "t.parquet"
    truncated.write_bytes(out.read_bytes()[:-100])
    with engramdb.open(tmp_path / "dst2") as dst, pytest.raises(InvalidArgument) as ei:
        transfer.import_file(dst, truncated, create=True)
    assert "export again" in ei.value.message


def _parquet_file(path: Path, rows: list[dict[str, Any]], dim: int = DIM) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = pq.ParquetWriter(path, transfer._parquet_schema(_header(dim)), compression="zstd")
    writer.write_table(pa.Table.from_pylist(rows, schema=transfer._parquet_schema(_header(dim))))
    writer.add_key_value_metadata(
        {b"engramdb.end": json.dumps({"kind": "end", "records": len(rows), "edges": 0}).encode()}
    )
    writer.close()
    return path


def test_parquet_bombs_are_refused_before_they_are_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")

    def never(batch: Any) -> Any:
        raise AssertionError("rows of a bomb were turned into Python objects")

    monkeypatch.setattr(transfer, "_pylist", never)
    big = 5 << 20  # over the 4 MiB a Parquet row may hold
    cases = [
        # distinct texts: the column chunk itself is too big for 8 rows, refused from the footer
        ([{**_rec(i), "text": chr(65 + i) * big} for i in range(8)], "MiB uncompressed for 8 rows"),
        # one text repeated by the dictionary: small chunk, refused in Arrow before to_pylist
        ([{**_rec(i), "text": "a" * big} for i in range(8)], "a row holds more than 4 MiB"),
        # run-length-encoded vector values: refused by the footer's value count
        ([{**_rec(i), "vector": [0.0] * 100_000} for i in range(8)], "holds 800000 values for 8 rows"),
    ]
    with engramdb.open(tmp_path / "db") as db:
        for rows, text in cases:
            path = _parquet_file(tmp_path / "bomb.parquet", rows)
            assert path.stat().st_size < 200_000
            with pytest.raises(InvalidArgument) as ei:
                transfer.import_file(db, path, create=True)
            assert ei.value.code == "invalid_export" and text in ei.value.message, ei.value.message
            assert all(c.name != "h" or db.get_collection("h").count() == 0 for c in db.list_collections())


def test_deeply_nested_json_is_a_clear_error(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with engramdb.open(tmp_path / "db") as db:
        for lines, text in [
            ([_header(), deep, {"kind": "end", "records": 1, "edges": 0}], "d.jsonl:2: JSON is nested too deeply"),
            ([deep, {"kind": "end", "records": 0, "edges": 0}], "d.jsonl:1: JSON is nested too deeply"),
            ([_header(), _rec(0), deep], "truncated"),
        ]:
            path = _write(tmp_path / "d.jsonl", lines)
            with pytest.raises(InvalidArgument) as ei:
                transfer.import_file(db, path, create=True)
            assert ei.value.code == "invalid_export" and text in ei.value.message, ei.value.message
        path = _write(tmp_path / "ok.jsonl", [_header(), _rec(0), {"kind": "end", "records": 1, "edges": 0}])
        Path(str(path) + ".checkpoint").write_text(deep)
        with pytest.raises(FailedPrecondition) as fp:
            transfer.import_file(db, path, create=True, resume=True)
        assert fp.value.code == "checkpoint_mismatch"


def _doc_code() -> dict[str, Any]:
    """The conversion functions of docs/export-import.md: the python blocks that define functions."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    ns: dict[str, Any] = {}
    for block in blocks:
        if block.lstrip().startswith(("import json", "QDRANT_METRIC")):
            exec(compile(block, str(DOC), "exec"), ns)
    return ns


def test_chroma_conversion_from_the_docs(tmp_path: Path) -> None:
    ns = _doc_code()
    pages = [  # shaped like chromadb's collection.get(include=["embeddings", "documents", "metadatas"])
        {
            "ids": ["a", "b"],
            "embeddings": np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32),
            "documents": ["alpha doc", None],
            "metadatas": [{"src": "web", "n": 1, "drop": None}, None],
            "include": ["embeddings", "documents", "metadatas"],
        },
        {"ids": ["c"], "embeddings": [[1.0, 0.0, 0.0]], "documents": ["gamma"], "metadatas": [{"ok": True}]},
    ]
    records = (r for page in pages for r in ns["chroma_records"](page))
    path = tmp_path / "chroma.jsonl"
    ns["write_engramdb_export"](path, "docs", 3, ns["CHROMA_METRIC"]["ip"], records)
    with engramdb.open(tmp_path / "db") as db:
        transfer.import_file(db, path, create=True)
        coll = db.get_collection("docs")
        assert coll.metric == "dot" and coll.count() == 3
        a = coll.get("a")
        assert a.text == "alpha doc" and a.metadata == {"src": "web", "n": 1}
        assert np.asarray(a.vector, dtype=np.float32).tobytes() == np.array([0.1, 0.2, 0.3], np.float32).tobytes()
        assert coll.get("b").metadata == {} and coll.get("c").metadata == {"ok": True}


def test_qdrant_conversion_from_the_docs(tmp_path: Path) -> None:
    ns = _doc_code()

    class Point:  # the shape of qdrant_client.models.Record
        def __init__(self, id: Any, vector: Any, payload: Any):
            self.id, self.vector, self.payload = id, vector, payload

    points = [  # a REST scroll's result.points, and client Records with named vectors
        {"id": 1, "vector": [0.0, 1.0], "payload": {"text": "one", "tag": "x"}},
        {"id": "8f2b6e2c-4c4e-4b8a-9a53-3f0f5d2b9c11", "vector": [1.0, 0.0], "payload": None},
    ]
    named = [Point(3, {"dense": [0.5, 0.5], "other": [9.0, 9.0]}, {"text": "three", "meta": {"k": [1, 2]}})]
    records = [*ns["qdrant_records"](points), *ns["qdrant_records"](named, vector_name="dense")]
    path = tmp_path / "q.jsonl"
    ns["write_engramdb_export"](path, "qd", 2, ns["QDRANT_METRIC"]["Euclid"], records)
    with engramdb.open(tmp_path / "db") as db:
        transfer.import_file(db, path, create=True)
        coll = db.get_collection("qd")
        assert coll.metric == "l2" and coll.count() == 3
        assert coll.get("1").text == "one" and coll.get("1").metadata == {"tag": "x"}
        assert coll.get("8f2b6e2c-4c4e-4b8a-9a53-3f0f5d2b9c11").vector == [1.0, 0.0]
        three = coll.get("3")
        assert three.vector == [0.5, 0.5] and three.metadata == {"meta": {"k": [1, 2]}} and three.text == "three"
