"""Export a collection to a file and import it again: JSONL (always) or Parquet (with ``pyarrow``).

Written against :class:`~engramdb.api.CollectionAPI` only, so the same code moves data out of and
into an embedded database (``engramdb.open``) and a server (``engramdb.connect``). The format is
documented in ``docs/export-import.md``; in short, a JSONL export is::

    {"kind": "header", "format": "engramdb-export", "version": 1, "collection": {...}, "counts": {...}}
    {"kind": "record", "id": ..., "vector": [...], "text": ..., "metadata": {...}, "namespace": [...],
     "expires_at": ..., "ttl_seconds": ..., "importance": ...}
    {"kind": "edge", "src": ..., "relation": ..., "dst": ..., "weight": ..., "properties": {...}}
    ...
    {"kind": "end", "records": N, "edges": M}

Records come in id order, each scanned page followed by the out-edges of its records, so both
sides stream in constant memory: the exporter holds one page, the importer one batch. The end line
carries the exact counts; a file without it is a truncated export and is refused before anything
is written. Imports are resumable: after every batch the server acknowledged, a checkpoint file
records where the next batch starts; upserts and links replace by id and by (src, relation, dst),
so replaying a batch that was written but not yet checkpointed changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from engramdb import validation
from engramdb._version import __version__
from engramdb.api import CollectionAPI, DatabaseAPI
from engramdb.errors import DimensionMismatch, FailedPrecondition, InvalidArgument, NotFound
from engramdb.types import Edge, Record

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ExportStats",
    "ImportStats",
    "export_items",
    "export_jsonl",
    "export_parquet",
    "import_file",
]

FORMAT = "engramdb-export"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "engramdb-import-checkpoint"

RECORD_FIELDS = ("id", "vector", "text", "metadata", "namespace", "expires_at", "ttl_seconds", "importance")
EDGE_FIELDS = ("src", "relation", "dst", "weight", "properties")
# One line holds at most a record: a vector, 1 MiB of text and 1 MiB of metadata, JSON-escaped.
MAX_LINE_BYTES = 16 << 20
# Export pages and import batches aim at a few MB each: well under the server's request cap
# (server.max_request_mb, 64 by default) and small enough to hold one of in memory.
_TARGET_BATCH_BYTES = 4 << 20
_PARQUET_MAGIC = b"PAR1"
_PARQUET_HEADER_KEY = b"engramdb.header"
_PARQUET_END_KEY = b"engramdb.end"
# A Parquet column chunk is decompressed whole by pyarrow, zstd shrinks repeated bytes ~100,000 times and a
# dictionary repeats one value for many rows: the footer's sizes and value counts are checked against these
# before anything is read, strings stay dictionary-encoded in Arrow, and rows become Python objects a small batch
# at a time after their sizes are checked. A row holds at most 1 MiB of text and 1 MiB of metadata JSON; the
# exporter closes a row group at _PARQUET_GROUP_TARGET_BYTES, so its own files always pass.
MAX_PARQUET_ROW_BYTES = 4 << 20
MAX_PARQUET_GROUP_BYTES = 128 << 20
_PARQUET_GROUP_TARGET_BYTES = 32 << 20
_PARQUET_BATCH_ROWS = 16
_PARQUET_STRING_COLUMNS = ("kind", "id", "text", "metadata", "src", "relation", "dst", "properties")

ExportProgress = Callable[[int, int], None]  # (records, edges) written so far
ImportProgress = Callable[[int, int, int, int], None]  # (position, total, records, edges)


@dataclass
class ExportStats:
    records: int = 0
    edges: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class ImportStats:
    collection: str = ""
    records: int = 0  # record lines read (including those skipped as expired)
    edges: int = 0
    skipped_expired: int = 0
    batches: int = 0
    resumed_from_line: int = 0
    created: bool = False


# ------------------------------------------------------------------ export


def page_size_for(dimension: int) -> int:
    """Records per scanned page: about 4 MB of JSON (a float is about 12 characters)."""
    return max(16, min(1000, _TARGET_BATCH_BYTES // (12 * max(1, dimension))))


def header_for(coll: CollectionAPI, records_estimate: int) -> dict[str, Any]:
    cfg = coll.config
    return {
        "kind": "header",
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "engramdb_version": __version__,
        "exported_at": time.time(),
        "collection": {
            "name": cfg.name,
            "dimension": cfg.dimension,
            "metric": cfg.metric,
            "index": asdict(cfg.index),
            "indexed_fields": dict(cfg.indexed_fields),
            "default_ttl_seconds": cfg.default_ttl_seconds,
            "text_index": cfg.text_index,
            # Only a profile name travels: an inline configuration names the exporting machine's key files.
            "embedder_profile": cfg.embedder.profile if cfg.embedder is not None else None,
        },
        # Live records when the export started; the end line has the exact counts of the file.
        "counts": {"records": records_estimate},
    }


def record_item(rec: Record) -> dict[str, Any]:
    return {
        "kind": "record",
        "id": rec.id,
        "vector": rec.vector,
        "text": rec.text,
        "metadata": rec.metadata,
        "namespace": list(rec.namespace),
        "expires_at": rec.expires_at,
        "ttl_seconds": rec.ttl_seconds,
        "importance": rec.importance,
    }


def edge_item(e: Edge) -> dict[str, Any]:
    return {
        "kind": "edge",
        "src": e.src,
        "relation": e.relation,
        "dst": e.dst,
        "weight": e.weight,
        "properties": e.properties,
    }


def export_items(
    coll: CollectionAPI,
    *,
    page_size: int | None = None,
    edge_workers: int = 1,
    stats: ExportStats | None = None,
) -> Iterator[dict[str, Any]]:
    """The export of ``coll`` as a lazy sequence of items: header, records and edges, end.

    One scanned page is held at a time. Edges are read per record (``edges(id)``, the only edge
    read the API offers); ``edge_workers`` > 1 overlaps those calls, which pays off over a network.
    Only visible edges are exported (both endpoints live), so every exported edge's endpoints are in
    the export too, unless a record is deleted while the export runs.
    """
    stats = stats if stats is not None else ExportStats()
    if coll.config.embedder is not None and coll.config.embedder.profile is None:
        stats.notes.append(
            "the collection's inline embedder configuration is not exported (it names this machine's key files); "
            "create the target collection with an embedder yourself before importing if it needs one"
        )
    yield header_for(coll, coll.count())
    size = page_size or page_size_for(coll.dimension)
    pool = ThreadPoolExecutor(edge_workers, thread_name_prefix="engramdb-export") if edge_workers > 1 else None

    def out_edges(rid: str) -> list[Edge]:
        got = coll.edges(rid, direction="out", limit=validation.MAX_GRAPH_LIMIT)
        if len(got) >= validation.MAX_GRAPH_LIMIT:
            raise FailedPrecondition(
                f"record {rid!r} has {validation.MAX_GRAPH_LIMIT} or more out-edges, more than one edges() "
                "call returns; the export would be incomplete, so it stops",
                code="export_incomplete",
            )
        return got

    try:
        cursor: str | None = None
        while True:
            page = coll.scan(cursor=cursor, limit=size)
            ids = [r.id for r in page.records]
            edge_lists = list(pool.map(out_edges, ids)) if pool is not None else [out_edges(i) for i in ids]
            for rec in page.records:
                stats.records += 1
                yield record_item(rec)
            for edges in edge_lists:
                for e in edges:
                    stats.edges += 1
                    yield edge_item(e)
            cursor = page.next_cursor
            if cursor is None:
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    yield {"kind": "end", "records": stats.records, "edges": stats.edges}


def _dumps(item: Mapping[str, Any]) -> bytes:
    return json.dumps(item, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def export_jsonl(
    coll: CollectionAPI,
    out: str | os.PathLike[str] | IO[bytes],
    *,
    page_size: int | None = None,
    edge_workers: int = 1,
    progress: ExportProgress | None = None,
) -> ExportStats:
    """Write ``coll`` as JSONL to a path (written to ``PATH.partial``, renamed when complete) or a binary stream."""
    stats = ExportStats()

    def write(f: IO[bytes]) -> None:
        for item in export_items(coll, page_size=page_size, edge_workers=edge_workers, stats=stats):
            f.write(_dumps(item))
            if progress is not None and item["kind"] != "header":
                progress(stats.records, stats.edges)

    if isinstance(out, (str, os.PathLike)):
        _write_atomically(Path(out), write)
    else:
        write(out)
    return stats


def _write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``PATH.partial`` so a file at ``path`` is always a complete export."""
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _parquet() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError as e:
        raise FailedPrecondition(
            "Parquet needs pyarrow: pip install 'engramdb[parquet]' (or use JSONL)", code="parquet_unavailable"
        ) from e
    return pq


def _parquet_schema(header: Mapping[str, Any]) -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("kind", pa.string()),
            ("id", pa.string()),
            ("vector", pa.list_(pa.float32())),
            ("text", pa.string()),
            ("metadata", pa.string()),  # JSON: metadata is schemaless
            ("namespace", pa.list_(pa.string())),
            ("expires_at", pa.float64()),
            ("ttl_seconds", pa.float64()),
            ("importance", pa.float64()),
            ("src", pa.string()),
            ("relation", pa.string()),
            ("dst", pa.string()),
            ("weight", pa.float64()),
            ("properties", pa.string()),  # JSON
        ],
        metadata={_PARQUET_HEADER_KEY: json.dumps(header, allow_nan=False).encode()},
    )


def _parquet_row(item: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(item)
    for key in ("metadata", "properties"):
        if key in row:
            row[key] = json.dumps(row[key], ensure_ascii=False, allow_nan=False)
    return row


def _parquet_row_bytes(row: Mapping[str, Any]) -> int:
    """About what ``row`` takes uncompressed in a row group (UTF-8 strings, float32 vector), for sizing groups."""
    n = 64 + 4 * len(row.get("vector") or ()) + sum(len(s) + 8 for s in row.get("namespace") or ())
    return n + sum(len(v.encode()) for k in _PARQUET_STRING_COLUMNS if isinstance(v := row.get(k), str))


def export_parquet(
    coll: CollectionAPI,
    path: str | os.PathLike[str],
    *,
    page_size: int | None = None,
    edge_workers: int = 1,
    progress: ExportProgress | None = None,
) -> ExportStats:
    """Write ``coll`` as one Parquet file: a row group per page, header and end in the file's metadata."""
    pq = _parquet()
    import pyarrow as pa

    stats = ExportStats()
    items = export_items(coll, page_size=page_size, edge_workers=edge_workers, stats=stats)
    header = next(items)
    schema = _parquet_schema(header)

    def write(f: IO[bytes]) -> None:
        writer = pq.ParquetWriter(f, schema)
        rows: list[dict[str, Any]] = []
        rows_bytes = 0
        end: dict[str, Any] | None = None
        for item in items:
            if item["kind"] == "end":
                end = item
                break
            row = _parquet_row(item)
            rows.append(row)
            rows_bytes += _parquet_row_bytes(row)
            if len(rows) >= (page_size or page_size_for(coll.dimension)) or rows_bytes >= _PARQUET_GROUP_TARGET_BYTES:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows, rows_bytes = [], 0
                if progress is not None:
                    progress(stats.records, stats.edges)
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        assert end is not None
        writer.add_key_value_metadata({_PARQUET_END_KEY: json.dumps(end).encode()})
        writer.close()
        if progress is not None:
            progress(stats.records, stats.edges)

    _write_atomically(Path(path), write)
    return stats


# ------------------------------------------------------------------ import


def _bad(where: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {message}", code="invalid_export")


def check_header(header: Any, where: str) -> dict[str, Any]:
    """The header's collection configuration, or a clear error saying what is wrong with it."""
    if not isinstance(header, dict) or header.get("kind") != "header" or header.get("format") != FORMAT:
        raise _bad(where, f"not an EngramDB export (the first line must be its header, format {FORMAT!r})")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _bad(where, f"header has no valid format version: {version!r}")
    if version > FORMAT_VERSION:
        raise _bad(
            where,
            f"export format version {version} is newer than this EngramDB reads ({FORMAT_VERSION}); "
            "upgrade engramdb on the importing machine",
        )
    cfg = header.get("collection")
    if not isinstance(cfg, dict):
        raise _bad(where, "header has no collection configuration")
    dim = cfg.get("dimension")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= validation.MAX_DIMENSION:
        raise _bad(where, f"header's collection dimension {dim!r} is not 1-{validation.MAX_DIMENSION}")
    if cfg.get("metric") not in ("cosine", "dot", "l2"):
        raise _bad(where, f"header's collection metric {cfg.get('metric')!r} is not cosine, dot or l2")
    if not isinstance(cfg.get("name"), str):
        raise _bad(where, "header's collection has no name")
    return cfg


def _open_target(
    host: DatabaseAPI, cfg: Mapping[str, Any], name: str | None, create: bool
) -> tuple[CollectionAPI, bool]:
    target = validation.name(name if name is not None else cfg["name"], "collection name")
    try:
        coll = host.get_collection(target)
    except NotFound:
        if not create:
            raise NotFound(
                f"collection {target!r} does not exist; pass --create (create=True) to create it with the "
                f"exported configuration (dimension {cfg['dimension']}, metric {cfg['metric']})",
                code="collection_not_found",
            ) from None
        profile = cfg.get("embedder_profile")
        coll = host.create_collection(
            target,
            cfg["dimension"],
            cfg["metric"],
            index=cfg.get("index") or None,
            embedder={"profile": profile} if profile else None,
            default_ttl_seconds=cfg.get("default_ttl_seconds"),
            indexed_fields=cfg.get("indexed_fields") or None,
            text_index=bool(cfg.get("text_index", True)),
        )
        return coll, True
    if coll.dimension != cfg["dimension"]:
        raise DimensionMismatch(
            f"the export holds {cfg['dimension']}-dimensional vectors but collection {target!r} has dimension "
            f"{coll.dimension}; import into another collection (--collection NEW --create)"
        )
    if coll.metric != cfg["metric"]:
        raise InvalidArgument(
            f"the export's vectors are for metric {cfg['metric']!r} but collection {target!r} uses "
            f"{coll.metric!r}; import into another collection (--collection NEW --create)",
            code="metric_mismatch",
        )
    return coll, False


@dataclass
class _Item:
    """One data line (or row) of an export, with where it ends in the input."""

    where: str  # "FILE:LINE" or "FILE row N", for error messages
    line: int
    end_pos: int  # byte offset (JSONL) or row index (Parquet) just after this item
    data: Any
    size: int


class _Source(Protocol):
    header_raw: bytes
    header: Any
    end: Any
    total: int

    def items(self, start_pos: int, start_line: int) -> Iterator[_Item]: ...


def _parse_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(where, f"not valid JSON ({e})") from None
    except RecursionError:
        raise _bad(where, "JSON is nested too deeply") from None


class _JsonlSource:
    def __init__(self, path: Path):
        self.path = path
        self.total = path.stat().st_size
        with open(path, "rb") as f:
            self.header_raw = self._read_line(f, f"{path}:1")
            self.first_pos = f.tell()
        self.header = _parse_json(self.header_raw, f"{path}:1")
        self.end = self._last_line()

    def _read_line(self, f: IO[bytes], where: str) -> bytes:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if len(raw) > MAX_LINE_BYTES:
            raise _bad(where, f"line is longer than {MAX_LINE_BYTES >> 20} MiB")
        return raw

    def _last_line(self) -> Any:
        """The end line, read from the file's tail before anything is imported: a truncated export is refused."""
        with open(self.path, "rb") as f:
            tail_start = max(0, self.total - 4096)
            f.seek(tail_start)
            tail = f.read()
        lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
        last = lines[-1] if len(lines) > 1 or tail_start == 0 else None
        try:
            end = json.loads(last) if last is not None else None
        except (ValueError, RecursionError):
            end = None
        if not isinstance(end, dict) or end.get("kind") != "end":
            raise _bad(
                str(self.path),
                "the file does not end with the export's end line: it is truncated or not a complete export "
                "(an export writes it last); export again",
            )
        return end

    def items(self, start_pos: int, start_line: int) -> Iterator[_Item]:
        pos = start_pos or self.first_pos
        line = start_line or 1
        with open(self.path, "rb") as f:
            f.seek(pos)
            while True:
                line += 1
                where = f"{self.path}:{line}"
                raw = self._read_line(f, where)
                if not raw:
                    return
                pos += len(raw)
                if not raw.strip():
                    raise _bad(where, "empty line")
                yield _Item(where, line, pos, _parse_json(raw, where), len(raw))


class _ParquetSource:
    def __init__(self, path: Path):
        pq = _parquet()
        self.path = path
        try:
            self.file = pq.ParquetFile(path, read_dictionary=list(_PARQUET_STRING_COLUMNS))
        except Exception as e:  # pyarrow raises its own ArrowInvalid for a damaged or truncated file
            raise _bad(str(path), f"not a readable Parquet file, truncated or damaged ({e}); export again") from None
        meta = self.file.schema_arrow.metadata or {}
        self.header_raw = meta.get(_PARQUET_HEADER_KEY, b"")
        self.header = _parse_json(self.header_raw, f"{path} (header)") if self.header_raw else None
        end_raw = meta.get(_PARQUET_END_KEY)
        if end_raw is None:
            # ParquetWriter puts schema metadata into the footer; the end key is added last.
            end_raw = (self.file.metadata.metadata or {}).get(_PARQUET_END_KEY)
        self.end = _parse_json(end_raw, f"{path} (end)") if end_raw else None
        if self.header is not None and not (isinstance(self.end, dict) and self.end.get("kind") == "end"):
            raise _bad(str(path), "the file has no end marker: it is not a complete export; export again")
        self.total = self.file.metadata.num_rows
        cfg = self.header.get("collection") if isinstance(self.header, dict) else None
        dim = cfg.get("dimension") if isinstance(cfg, dict) else None
        dim = dim if isinstance(dim, int) and 0 < dim <= validation.MAX_DIMENSION else validation.MAX_DIMENSION
        for g in range(self.file.num_row_groups):
            self._check_group_size(g, dim)

    def _check_group_size(self, g: int, dim: int) -> None:
        """Refuse a row group whose decoded size is out of bounds, from the footer, before reading any of it."""
        group = self.file.metadata.row_group(g)
        rows = max(1, group.num_rows)
        where = f"{self.path} row group {g}"
        hint = "this is not an EngramDB export; export again (or as JSONL)"
        size = group.total_byte_size
        for c in range(group.num_columns):
            col = group.column(c)
            size = max(size, col.total_uncompressed_size)
            # Dictionary and run-length encodings repeat values for free: the value count bounds what is decoded.
            name = col.path_in_schema.split(".", 1)[0]
            per_row = dim if name == "vector" else validation.MAX_NAMESPACE_DEPTH if name == "namespace" else 1
            if col.num_values > rows * per_row:
                raise _bad(where, f"column {name!r} holds {col.num_values} values for {group.num_rows} rows; {hint}")
        limit = min(MAX_PARQUET_GROUP_BYTES, rows * MAX_PARQUET_ROW_BYTES)
        if size > limit:
            raise _bad(
                where,
                f"a column is {size >> 20} MiB uncompressed for {group.num_rows} rows, more than the "
                f"{limit >> 20} MiB an export row group may hold ({MAX_PARQUET_ROW_BYTES >> 20} MiB a row, "
                f"{MAX_PARQUET_GROUP_BYTES >> 20} MiB a group); {hint}",
            )

    @staticmethod
    def _check_row_sizes(batch: Any, where: str) -> None:
        """Refuse a row over MAX_PARQUET_ROW_BYTES while still in Arrow (dictionary-encoded), before to_pylist."""
        import pyarrow as pa
        import pyarrow.compute as pc

        total = pa.array([0] * batch.num_rows, pa.int64())
        for name in _PARQUET_STRING_COLUMNS:
            if name not in batch.schema.names:
                continue
            col = batch.column(name)
            if pa.types.is_dictionary(col.type):
                lengths = pc.binary_length(col.dictionary).take(col.indices)
            else:
                lengths = pc.binary_length(col)
            total = pc.add(total, pc.fill_null(lengths.cast(pa.int64()), 0))
        if batch.num_rows and pc.max(total).as_py() > MAX_PARQUET_ROW_BYTES:
            raise _bad(where, f"a row holds more than {MAX_PARQUET_ROW_BYTES >> 20} MiB of text and metadata")

    def items(self, start_pos: int, start_line: int) -> Iterator[_Item]:
        row = 0
        for g in range(self.file.num_row_groups):
            n = self.file.metadata.row_group(g).num_rows
            if row + n <= start_pos:
                row += n  # acknowledged already: not even read
                continue
            for batch in self.file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[g]):
                self._check_row_sizes(batch, f"{self.path} rows {row + 1}-{row + batch.num_rows}")
                for d in _pylist(batch):
                    row += 1
                    if row <= start_pos:
                        continue
                    where = f"{self.path} row {row}"
                    yield _Item(where, row, row, self._item(d, where), 64 + 12 * len(d.get("vector") or ()))

    @staticmethod
    def _item(d: dict[str, Any], where: str) -> dict[str, Any]:
        kind = d.get("kind")
        keys = RECORD_FIELDS if kind == "record" else EDGE_FIELDS if kind == "edge" else ()
        out: dict[str, Any] = {"kind": kind, **{k: d.get(k) for k in keys}}
        for key in ("metadata", "properties"):
            if isinstance(out.get(key), str):
                out[key] = _parse_json(out[key].encode(), f"{where}.{key}")
        return out


def _pylist(batch: Any) -> list[dict[str, Any]]:
    return batch.to_pylist()  # type: ignore[no-any-return]


def _open_source(path: Path) -> _Source:
    with open(path, "rb") as f:
        magic = f.read(4)
    return _ParquetSource(path) if magic == _PARQUET_MAGIC else _JsonlSource(path)


def _checkpoint_doc(
    src: _Source, path: Path, collection: str, pos: int, line: int, stats: ImportStats
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "input": str(path.resolve()),
        "input_size": path.stat().st_size,
        "header_sha256": hashlib.sha256(src.header_raw).hexdigest(),
        "collection": collection,
        "position": pos,
        "line": line,
        "records": stats.records,
        "edges": stats.edges,
        "skipped_expired": stats.skipped_expired,
    }


def _write_checkpoint(path: Path, doc: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_checkpoint(cp: Path, src: _Source, path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(cp.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise FailedPrecondition(
            f"checkpoint {cp} cannot be read ({e}); delete it to import from the start", code="checkpoint_mismatch"
        ) from None
    ok = (
        isinstance(doc, dict)
        and doc.get("format") == CHECKPOINT_FORMAT
        and doc.get("header_sha256") == hashlib.sha256(src.header_raw).hexdigest()
        and doc.get("input_size") == path.stat().st_size
        and all(isinstance(doc.get(k), int) and doc[k] >= 0 for k in ("position", "line", "records", "edges"))
    )
    if not ok:
        raise FailedPrecondition(
            f"checkpoint {cp} belongs to another export file (or another version of {path.name}); "
            "delete it to import this file from the start",
            code="checkpoint_mismatch",
        )
    return doc


def _record_for_upsert(d: Mapping[str, Any], where: str, dimension: int, ttl: str, now: float) -> dict[str, Any] | None:
    """The upsert form of a record line, None when it has expired since the export."""
    unknown = set(d) - {"kind", *RECORD_FIELDS}
    if unknown:
        raise _bad(where, f"record has unknown fields {sorted(unknown)}")
    vec = d.get("vector")
    if not isinstance(vec, list):
        raise _bad(where, "record has no vector (a list of numbers)")
    if len(vec) != dimension:
        raise DimensionMismatch(
            f"{where}: record {d.get('id')!r} has {len(vec)} dimensions, the export header says {dimension}"
        )
    rec = {k: d.get(k) for k in ("id", "vector", "text", "metadata", "namespace", "importance")}
    expires_at, ttl_seconds = d.get("expires_at"), d.get("ttl_seconds")
    if ttl == "restart" and ttl_seconds is not None:
        rec["ttl_seconds"] = ttl_seconds  # the TTL clock starts again at import time; refresh_ttl keeps working
    elif expires_at is not None:
        if isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool) and expires_at <= now:
            return None
        rec["expires_at"] = expires_at  # the same expiry as in the source
    return rec


def _edge_for_link(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = set(d) - {"kind", *EDGE_FIELDS}
    if unknown:
        raise _bad(where, f"edge has unknown fields {sorted(unknown)}")
    return {k: d[k] for k in EDGE_FIELDS if k in d}


def _blame(e: InvalidArgument, what: str, wheres: Sequence[str]) -> InvalidArgument:
    """The engine names a batch item (``records[3]``); say which line of the file it came from."""
    import re

    m = re.search(rf"{what}\[(\d+)\]", e.message)
    i = int(m.group(1)) if m else len(wheres)
    where = wheres[i] if i < len(wheres) else f"{wheres[0]} .. {wheres[-1]}"
    return type(e)(f"{where}: {e.message}", code=e.code)


def import_file(
    host: DatabaseAPI,
    path: str | os.PathLike[str],
    *,
    collection: str | None = None,
    create: bool = False,
    resume: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    ttl: str = "keep",
    progress: ImportProgress | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ImportStats:
    """Import an export (JSONL or Parquet, told apart by content) into a collection of ``host``.

    ``collection`` names the target (default: the exported name); it must exist with the same
    dimension and metric, or ``create`` makes it with the exported configuration. Records and
    edges are written in batches of ``batch_size`` (fewer when they are large); after each
    acknowledged batch the checkpoint file (default ``PATH.checkpoint``) records where the next one
    starts, and ``resume`` continues from there. A checkpoint left by an interrupted import is
    never ignored silently: without ``resume`` the import refuses to start. ``ttl="keep"`` gives
    records the expiry time they had (expired ones are skipped); ``ttl="restart"`` gives records
    that had a TTL their TTL again from now, so ``refresh_ttl`` works on them.
    ``on_batch(n)`` is called after the n-th acknowledged batch (tests use it to simulate a crash).
    """
    if ttl not in ("keep", "restart"):
        raise InvalidArgument(f"ttl must be 'keep' or 'restart', got {ttl!r}", code="invalid_argument")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= validation.MAX_BATCH:
        raise InvalidArgument(f"batch_size must be 1-{validation.MAX_BATCH}", code="invalid_argument")
    path = Path(path)
    src = _open_source(path)
    cfg = check_header(src.header, f"{path}:1" if isinstance(src, _JsonlSource) else f"{path} (header)")
    end = src.end
    for key in ("records", "edges"):
        if isinstance(end.get(key), bool) or not isinstance(end.get(key), int) or end[key] < 0:
            raise _bad(f"{path} (end line)", f"{key} is not a count")
    cp = Path(checkpoint) if checkpoint is not None else path.with_name(path.name + ".checkpoint")
    stats = ImportStats()
    pos = line = 0
    if cp.exists():
        if not resume:
            raise FailedPrecondition(
                f"checkpoint {cp} shows an earlier import of this file did not finish; pass --resume "
                "(resume=True) to continue it, or delete the checkpoint to start over",
                code="checkpoint_exists",
            )
        doc = _read_checkpoint(cp, src, path)
        pos, line = doc["position"], doc["line"]
        stats.records, stats.edges = doc["records"], doc["edges"]
        stats.skipped_expired = int(doc.get("skipped_expired") or 0)
        stats.resumed_from_line = line
    coll, stats.created = _open_target(host, cfg, collection, create)
    stats.collection = coll.name
    dimension = int(cfg["dimension"])

    records: list[dict[str, Any]] = []
    record_wheres: list[str] = []
    edges: list[dict[str, Any]] = []
    edge_wheres: list[str] = []
    pending_bytes = 0
    seen_end = False

    def flush(end_pos: int, end_line: int) -> None:
        nonlocal records, record_wheres, edges, edge_wheres, pending_bytes, pos, line
        if records:
            try:
                coll.upsert(records)
            except InvalidArgument as e:
                raise _blame(e, "records", record_wheres) from e
        if edges:
            try:
                # Endpoints may come later in the file (or in a later batch): stored now, visible once both exist.
                coll.link(edges, create_missing=True)
            except InvalidArgument as e:
                raise _blame(e, "edges", edge_wheres) from e
        pos, line = end_pos, end_line
        stats.batches += 1
        _write_checkpoint(cp, _checkpoint_doc(src, path, coll.name, pos, line, stats))
        records, record_wheres, edges, edge_wheres, pending_bytes = [], [], [], [], 0
        if progress is not None:
            progress(pos, src.total, stats.records, stats.edges)
        if on_batch is not None:
            on_batch(stats.batches)

    last_pos, last_line = pos, line
    for item in src.items(pos, line):
        d = item.data
        if seen_end:
            raise _bad(item.where, "data after the end line")
        kind = d.get("kind") if isinstance(d, dict) else None
        now = time.time()
        if kind == "record":
            rec = _record_for_upsert(d, item.where, dimension, ttl, now)
            stats.records += 1
            if rec is None:
                stats.skipped_expired += 1
            else:
                records.append(rec)
                record_wheres.append(item.where)
        elif kind == "edge":
            edges.append(_edge_for_link(d, item.where))
            edge_wheres.append(item.where)
            stats.edges += 1
        elif kind == "end":
            seen_end = True
        else:
            raise _bad(item.where, "expected an object with kind 'record', 'edge' or 'end'")
        pending_bytes += item.size
        last_pos, last_line = item.end_pos, item.line
        if len(records) >= batch_size or len(edges) >= batch_size or pending_bytes >= _TARGET_BATCH_BYTES:
            flush(last_pos, last_line)
    if records or edges or last_pos != pos:
        flush(last_pos, last_line)
    if isinstance(src, _JsonlSource) and not seen_end:
        raise _bad(str(path), "the end line is missing: the file changed while it was imported")
    if (stats.records, stats.edges) != (end["records"], end["edges"]):
        raise _bad(
            str(path),
            f"the file holds {stats.records} records and {stats.edges} edges but its end line says "
            f"{end['records']} and {end['edges']}: it is damaged; export again",
        )
    with contextlib.suppress(FileNotFoundError):
        cp.unlink()
    return stats
