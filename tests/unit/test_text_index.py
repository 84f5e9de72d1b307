"""Unit tests for the tantivy-backed BM25 text index (engramdb.index.text)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tantivy
from pyroaring import BitMap

from engramdb.errors import Closed, CorruptData, EngramError, FailedPrecondition, InvalidArgument
from engramdb.index import text as text_mod
from engramdb.index.text import WATERMARK_FILE, TextIndex

# The documented visibility bound for writes without flush().
NRT_BOUND_S = 1.0


@pytest.fixture
def idx() -> Iterator[TextIndex]:
    index = TextIndex(None)
    yield index
    index.close()


def labels(hits: list[tuple[int, float]]) -> list[int]:
    return [label for label, _ in hits]


# ---------------------------------------------------------------- writes


def test_upsert_visible_after_flush(idx: TextIndex) -> None:
    idx.upsert(1, "The quick brown fox jumps over the lazy dog")
    idx.upsert(2, "A completely different sentence about databases")
    idx.flush()
    assert idx.count() == 2
    assert labels(idx.search("fox", 10)) == [1]
    assert labels(idx.search("databases", 10)) == [2]


def test_upsert_replaces_previous_text(idx: TextIndex) -> None:
    idx.upsert(7, "apples and oranges")
    idx.flush()
    idx.upsert(7, "bananas only")
    idx.flush()
    assert idx.count() == 1
    assert idx.search("apples", 10) == []
    assert labels(idx.search("bananas", 10)) == [7]


def test_replace_within_one_batch_keeps_last(idx: TextIndex) -> None:
    idx.upsert_many([(3, "first version"), (4, "other doc"), (3, "second version")])
    idx.flush()
    assert idx.count() == 2
    assert idx.search("first", 10) == []
    assert labels(idx.search("second", 10)) == [3]


def test_delete(idx: TextIndex) -> None:
    idx.upsert_many([(1, "keep this record"), (2, "delete this record")])
    idx.flush()
    idx.delete(2)
    idx.delete(999)  # absent: no-op
    idx.flush()
    assert idx.count() == 1
    assert labels(idx.search("record", 10)) == [1]


def test_delete_before_commit_removes_buffered_add(idx: TextIndex) -> None:
    idx.upsert(5, "buffered document")
    idx.delete(5)
    idx.flush()
    assert idx.count() == 0


def test_large_u64_label_roundtrip(idx: TextIndex) -> None:
    big = 2**64 - 1
    idx.upsert(big, "edge of the label range")
    idx.flush()
    assert labels(idx.search("edge", 1)) == [big]
    idx.delete(big)
    idx.flush()
    assert idx.count() == 0


def test_blank_text_removes_document(idx: TextIndex) -> None:
    idx.upsert(1, "some words")
    idx.flush()
    idx.upsert(1, "   ")
    idx.flush()
    assert idx.count() == 0


def test_clear_removes_committed_and_buffered(idx: TextIndex) -> None:
    idx.upsert(1, "committed words")
    idx.flush()
    idx.upsert(2, "buffered words")
    idx.clear()
    idx.upsert(3, "after the clear words")
    idx.flush()
    assert labels(idx.search("words", 10)) == [3]


@pytest.mark.parametrize("bad", [-1, 2**64, "1", 1.5, True, None])
def test_invalid_labels_rejected(idx: TextIndex, bad: object) -> None:
    with pytest.raises(InvalidArgument):
        idx.upsert(bad, "text")  # type: ignore[arg-type]


def test_invalid_batch_applies_nothing(idx: TextIndex) -> None:
    with pytest.raises(InvalidArgument):
        idx.upsert_many([(1, "fine"), (2, b"bytes are not text")])  # type: ignore[list-item]
    idx.flush()
    assert idx.count() == 0


def test_invalid_refresh_interval() -> None:
    for value in (0, -1, 1.5):
        with pytest.raises(InvalidArgument):
            TextIndex(None, refresh_interval=value)


# ------------------------------------------------------ near-real-time


def test_nrt_visibility_without_flush() -> None:
    index = TextIndex(None, refresh_interval=0.2)
    try:
        index.upsert(42, "eventually visible without flushing")
        start = time.monotonic()
        while not index.search("eventually", 1):
            assert time.monotonic() - start < NRT_BOUND_S, "write not visible within the NRT bound"
            time.sleep(0.01)
        # Deletes follow the same path.
        index.delete(42)
        start = time.monotonic()
        while index.search("eventually", 1):
            assert time.monotonic() - start < NRT_BOUND_S, "delete not visible within the NRT bound"
            time.sleep(0.01)
    finally:
        index.close()


def test_concurrent_search_and_write(idx: TextIndex) -> None:
    idx.upsert_many((i, f"shared term doc{i}") for i in range(200))
    idx.flush()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                hits = idx.search("shared term", 10, allowed=lambda label: label % 2 == 0)
                assert all(label % 2 == 0 for label in labels(hits))
                idx.count()
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    def writer() -> None:
        try:
            for round_ in range(20):
                idx.upsert_many((i, f"shared term doc{i} round{round_}") for i in range(200, 260))
                idx.delete(round_)  # from the initial docs, which are never re-added
                if round_ % 5 == 0:
                    idx.flush()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    threads[-1].join()
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    idx.flush()
    assert idx.count() == 260 - 20


# ------------------------------------------------------------ queries


SPECIAL_QUERIES = [
    "",
    "   ",
    '"',
    '"unbalanced quote',
    "title:fox",
    "::",
    "(fox",
    "fox)",
    "()",
    "AND",
    "fox AND",
    "OR NOT AND",
    "*",
    "fo*",
    "?",
    "fox~2",
    "fox^3",
    "[a TO z]",
    "{}",
    "+fox -dog",
    "\\",
    "a/b\\c",
    "fox\x00dog",
    "🦊 fox émoji",
    "日本語のテキスト",
    "Ünïcödé naïve café",
    "x" * 10_000,
    " ".join(f"w{i}" for i in range(5_000)),
]


@pytest.mark.parametrize("query", SPECIAL_QUERIES)
def test_special_characters_never_raise(idx: TextIndex, query: str) -> None:
    idx.upsert_many([(1, "the quick brown fox"), (2, "café naïve 日本語のテキスト"), (3, "title: dog AND cat")])
    idx.flush()
    hits = idx.search(query, 5)
    assert isinstance(hits, list)
    assert all(isinstance(label, int) and isinstance(score, float) for label, score in hits)


def test_operators_are_plain_words(idx: TextIndex) -> None:
    idx.upsert_many([(1, "the quick brown fox"), (2, "title: dog AND cat")])
    idx.flush()
    # "title:fox" must not be a field query on a non-existent field.
    assert set(labels(idx.search("title:fox", 5))) == {1, 2}
    assert labels(idx.search("(fox", 5)) == [1]
    assert labels(idx.search("café", 5)) == []
    assert idx.search("", 5) == []


def test_analysis_lowercase_stemming_folding(idx: TextIndex) -> None:
    idx.upsert_many([(1, "Runners were RUNNING quickly"), (2, "un café crème"), (3, "nothing relevant")])
    idx.flush()
    assert labels(idx.search("runs", 5)) == [1]
    assert labels(idx.search("cafe", 5)) == [2]
    assert labels(idx.search("CAFÉ", 5)) == [2]


def test_bm25_ordering(idx: TextIndex) -> None:
    filler = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    idx.upsert_many(
        [
            (1, f"{filler} zyzzyva"),
            (2, f"{filler} zyzzyva zyzzyva zyzzyva"),
            (3, f"{filler} zyzzyva zyzzyva"),
        ]
        + [(100 + i, f"{filler} common words here") for i in range(50)]
    )
    idx.flush()
    hits = idx.search("zyzzyva", 10)
    assert labels(hits) == [2, 3, 1]
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    # A rare term outweighs a common one.
    assert labels(idx.search("zyzzyva alpha", 3))[0] == 2


def test_k_bounds(idx: TextIndex) -> None:
    idx.upsert_many((i, "same words") for i in range(20))
    idx.flush()
    assert len(idx.search("words", 5)) == 5
    assert len(idx.search("words", 100)) == 20
    assert idx.search("words", 0) == []
    with pytest.raises(InvalidArgument):
        idx.search("words", -1)


# ----------------------------------------------------------- filtering


def test_allowed_post_filter_widens(idx: TextIndex) -> None:
    # 1000 matches; the allowed ones score lowest (longest docs), so the first
    # over-fetched page contains none of them and the window must widen.
    idx.upsert_many((i, "needle " + "pad " * (i // 10)) for i in range(1000))
    idx.flush()
    wanted = {990, 995, 999}
    calls: list[int] = []

    def allowed(label: int) -> bool:
        calls.append(label)
        return label in wanted

    hits = idx.search("needle", 3, allowed=allowed)
    assert set(labels(hits)) == wanted
    assert len(calls) > 32  # went past the first page


def test_allowed_exhausts_index(idx: TextIndex) -> None:
    idx.upsert_many((i, "needle") for i in range(100))
    idx.flush()
    hits = idx.search("needle", 10, allowed=lambda label: label in (5, 50))
    assert sorted(labels(hits)) == [5, 50]
    assert idx.search("needle", 10, allowed=lambda label: False) == []


def test_allowed_exception_propagates(idx: TextIndex) -> None:
    idx.upsert(1, "needle")
    idx.flush()

    def boom(label: int) -> bool:
        raise KeyError(label)

    with pytest.raises(KeyError):
        idx.search("needle", 1, allowed=boom)


def test_candidates_pushdown_keeps_scores(idx: TextIndex) -> None:
    idx.upsert_many((i, "needle " * (1 + i % 5) + "hay " * 10) for i in range(100))
    idx.flush()
    full = dict(idx.search("needle", 100))
    cand = BitMap([3, 17, 42, 99])
    hits = idx.search("needle", 10, candidates=cand)
    assert set(labels(hits)) == {3, 17, 42, 99}
    for label, score in hits:
        assert score == pytest.approx(full[label])
    assert idx.search("needle", 10, candidates=BitMap()) == []
    assert labels(idx.search("needle", 10, candidates={5})) == [5]


def test_candidates_large_set_post_filter(idx: TextIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(text_mod, "_CANDIDATE_PUSHDOWN_MAX", 2)
    idx.upsert_many((i, "needle") for i in range(100))
    idx.flush()
    cand = BitMap([1, 2, 3, 4, 80])
    assert sorted(labels(idx.search("needle", 10, candidates=cand))) == [1, 2, 3, 4, 80]
    both = idx.search("needle", 10, candidates=cand, allowed=lambda label: label > 2)
    assert sorted(labels(both)) == [3, 4, 80]


def test_candidates_and_allowed_combined(idx: TextIndex) -> None:
    idx.upsert_many((i, "needle") for i in range(100))
    idx.flush()
    hits = idx.search("needle", 10, candidates=BitMap(range(10)), allowed=lambda label: label % 3 == 0)
    assert sorted(labels(hits)) == [0, 3, 6, 9]


# ------------------------------------------------- persistence, watermark


def test_persistence_and_watermark(tmp_path: Path) -> None:
    path = tmp_path / "text"
    index = TextIndex(path)
    assert index.watermark() == 0
    index.upsert_many([(1, "persisted words"), (2, "more persisted words")])
    index.commit_watermark(17)
    assert index.watermark() == 17
    index.upsert(3, "written after the watermark")
    index.close()

    reopened = TextIndex(path)
    try:
        assert reopened.watermark() == 17
        # close() committed the post-watermark write too (replay is idempotent).
        assert reopened.count() == 3
        assert sorted(labels(reopened.search("persisted", 10))) == [1, 2]
        reopened.commit_watermark(18)
    finally:
        reopened.close()
    assert json.loads((path / WATERMARK_FILE).read_text())["watermark"] == 18


def test_ram_watermark(idx: TextIndex) -> None:
    idx.commit_watermark(5)
    assert idx.watermark() == 5
    with pytest.raises(InvalidArgument):
        idx.commit_watermark(-1)


def test_stale_watermark_without_index_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "text"
    path.mkdir()
    (path / WATERMARK_FILE).write_text(json.dumps({"format": 1, "watermark": 99, "opstamp": 0}))
    index = TextIndex(path)
    try:
        assert index.watermark() == 0
    finally:
        index.close()


def test_second_writer_is_refused_not_wiped(tmp_path: Path) -> None:
    path = tmp_path / "text"
    first = TextIndex(path)
    try:
        first.upsert(1, "precious data")
        first.flush()
        with pytest.raises(FailedPrecondition):
            TextIndex(path)
        with pytest.raises(FailedPrecondition):
            TextIndex.open_or_reset(path)
        assert first.count() == 1
    finally:
        first.close()
    # Lock released by close(): reopening works and the data is intact.
    again, rebuild = TextIndex.open_or_reset(path)
    try:
        assert rebuild is False
        assert again.count() == 1
    finally:
        again.close()


def test_open_or_reset_fresh_and_existing(tmp_path: Path) -> None:
    path = tmp_path / "text"
    index, rebuild = TextIndex.open_or_reset(path)
    assert rebuild is True  # nothing persisted yet
    index.upsert(1, "hello")
    index.commit_watermark(3)
    index.close()
    index, rebuild = TextIndex.open_or_reset(path)
    try:
        assert rebuild is False
        assert index.watermark() == 3
        assert index.count() == 1
    finally:
        index.close()
    ram, rebuild = TextIndex.open_or_reset(None)
    ram.close()
    assert rebuild is True


def _make_index(path: Path) -> None:
    index = TextIndex(path)
    index.upsert_many((i, f"document number {i}") for i in range(50))
    index.commit_watermark(50)
    index.close()


def _garbage_meta(path: Path) -> None:
    (path / "meta.json").write_text("{not json")


def _truncate_segments(path: Path) -> None:
    for file in path.iterdir():
        if file.suffix in (".term", ".idx", ".fast"):
            file.write_bytes(b"xx")


def _garbage_segments(path: Path) -> None:
    # Long enough to pass the size check, so tantivy panics while reading the
    # footer (a pyo3 PanicException, which is a BaseException).
    for file in path.iterdir():
        if file.suffix in (".term", ".idx", ".fast"):
            file.write_bytes(b"garbage bytes")


def _corrupt_watermark(path: Path) -> None:
    (path / WATERMARK_FILE).write_text("garbage")


def _future_watermark(path: Path) -> None:
    # The watermark claims a commit newer than the index holds.
    (path / WATERMARK_FILE).write_text(json.dumps({"format": 1, "watermark": 50, "opstamp": 10**9}))


def _other_tokenizer(path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    for field in meta["schema"]:
        if field["name"] == "text":
            field["options"]["indexing"]["tokenizer"] = "engram_en_v0"
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage",
    [_garbage_meta, _truncate_segments, _garbage_segments, _corrupt_watermark, _future_watermark, _other_tokenizer],
)
def test_corrupt_index_is_reset(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "text"
    _make_index(path)
    damage(path)  # type: ignore[operator]
    with pytest.raises(CorruptData):
        TextIndex(path)
    index, rebuild = TextIndex.open_or_reset(path)
    try:
        assert rebuild is True
        assert index.count() == 0
        assert index.watermark() == 0
        index.upsert(1, "rebuilt document")
        index.flush()
        assert labels(index.search("rebuilt", 5)) == [1]
    finally:
        index.close()


def test_path_is_a_file_is_reset(tmp_path: Path) -> None:
    path = tmp_path / "text"
    path.write_text("not a directory")
    with pytest.raises(CorruptData):
        TextIndex(path)
    index, rebuild = TextIndex.open_or_reset(path)
    try:
        assert rebuild is True
        assert path.is_dir()
    finally:
        index.close()


# -------------------------------------------------------- integrity check


def _body_index(path: Path) -> Path:
    """An index with several segments and deletes (so .del files exist)."""
    index = TextIndex(path, refresh_interval=1.0)
    index.upsert_many((i, f"document number {i} about {'cats' if i % 2 else 'dogs'}") for i in range(60))
    index.commit_watermark(1)
    index.upsert_many((i, f"later document {i}") for i in range(60, 80))
    index.commit_watermark(2)
    index.delete_many(range(0, 80, 7))
    index.commit_watermark(3)
    index.close()
    return path


@pytest.fixture(scope="module")
def good_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _body_index(tmp_path_factory.mktemp("good") / "text")


@pytest.fixture
def index_copy(good_index: Path, tmp_path: Path) -> Path:
    path = tmp_path / "text"
    shutil.copytree(good_index, path)
    return path


def _segment_names(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if re.fullmatch(r"[0-9a-f]{32}\..+", p.name)}


def _one(path: Path, ext: str) -> Path:
    files = sorted(p for p in path.iterdir() if p.name.endswith("." + ext) and p.name[:32].isalnum())
    assert files, f"no .{ext} file in {path}"
    return files[0]


def _footer(file: Path) -> tuple[int, int]:
    """(offset of the footer JSON, its length) in a tantivy file."""
    data = file.read_bytes()
    json_len, magic = struct.unpack("<II", data[-8:])
    assert magic == 1337
    return len(data) - 8 - json_len, json_len


def _flip(file: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= mask
    file.write_bytes(bytes(data))


def _flip_body(ext: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        file = _one(path, ext)
        start, _ = _footer(file)
        _flip(file, start // 3)

    return damage


def _flip_footer_field(ext: str, key: bytes) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        file = _one(path, ext)
        data = file.read_bytes()
        _flip(file, data.rindex(key) + len(key))  # the value's first digit: 0 <-> 1, 7 <-> 6, ...

    return damage


def _cut(ext: str, keep: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        file = _one(path, ext)
        with open(file, "r+b") as fh:
            fh.truncate(keep(file.stat().st_size))

    return damage


def _zero(ext: str, frac: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        file = _one(path, ext)
        size = file.stat().st_size
        with open(file, "r+b") as fh:
            fh.seek(int(size * frac))
            fh.write(b"\0" * (size - int(size * frac)))

    return damage


def _edit_meta(edit: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        meta = json.loads((path / "meta.json").read_text())
        edit(meta)
        (path / "meta.json").write_text(json.dumps(meta))

    return damage


def _first_with_deletes(meta: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in meta["segments"] if s["deletes"])


def _set(obj: dict[str, Any], key: str, value: object) -> None:
    obj[key] = value


DAMAGE: dict[str, Callable[[Path], object]] = {
    **{f"bit-flip-{ext}": _flip_body(ext) for ext in ("idx", "pos", "term", "fieldnorm", "fast", "store", "del")},
    "bit-flip-footer-crc": _flip_footer_field("term", b'"crc":'),
    "bit-flip-footer-format-version": _flip_footer_field("idx", b'"index_format_version":'),
    "bit-flip-del-footer-version": _flip_footer_field("del", b'"minor":'),
    "bit-flip-footer-key": _flip_footer_field("store", b'"pat'),  # "patch" -> "patbh": a key tantivy needs
    "bit-flip-footer-length": lambda p: _flip(_one(p, "pos"), _one(p, "pos").stat().st_size - 8),
    "bit-flip-footer-magic": lambda p: _flip(_one(p, "fast"), _one(p, "fast").stat().st_size - 1),
    "footer-length-huge": lambda p: _one(p, "store").write_bytes(
        _one(p, "store").read_bytes()[:-8] + struct.pack("<II", 60_000, 1337)
    ),
    "footer-garbled": lambda p: _one(p, "term").write_bytes(
        _one(p, "term").read_bytes()[: _footer(_one(p, "term"))[0]]
        + b"x" * _footer(_one(p, "term"))[1]
        + _one(p, "term").read_bytes()[-8:]
    ),
    "truncated-by-1": _cut("idx", lambda n: n - 1),
    "truncated-half": _cut("store", lambda n: n // 2),
    "truncated-to-7": _cut("fieldnorm", lambda n: 7),
    "truncated-empty": _cut("del", lambda n: 0),
    "byte-appended": lambda p: _one(p, "pos").write_bytes(_one(p, "pos").read_bytes() + b"\0"),
    "zeroed-tail": _zero("term", 0.5),
    "zeroed-whole": _zero("fast", 0.0),
    "component-deleted": lambda p: _one(p, "pos").unlink(),
    "del-file-deleted": lambda p: _one(p, "del").unlink(),
    "meta-garbage": lambda p: (p / "meta.json").write_text("{not json"),
    "meta-not-an-object": lambda p: (p / "meta.json").write_text("[]"),
    "meta-segments-not-a-list": _edit_meta(lambda m: _set(m, "segments", 7)),
    "meta-bad-segment-id": _edit_meta(lambda m: _set(m["segments"][0], "segment_id", "not-a-uuid")),
    "meta-unknown-segment": _edit_meta(
        lambda m: m["segments"].append({"segment_id": str(uuid.uuid4()), "max_doc": 3, "deletes": None})
    ),
    "meta-bad-max-doc": _edit_meta(lambda m: _set(m["segments"][0], "max_doc", -1)),
    "meta-bad-deletes": _edit_meta(lambda m: _set(_first_with_deletes(m)["deletes"], "opstamp", "7")),
    "meta-other-delete-opstamp": _edit_meta(
        lambda m: _set(_first_with_deletes(m)["deletes"], "opstamp", _first_with_deletes(m)["deletes"]["opstamp"] + 1)
    ),
}


def test_checker_passes_a_good_index(good_index: Path) -> None:
    names = text_mod.check_index_files(good_index)
    assert names == _segment_names(good_index)
    assert any(n.endswith(".del") for n in names) and len({n[:32] for n in names}) >= 2
    # The footer layout the checker relies on, spelled out: body | JSON | u32 len | u32 1337,
    # with the standard CRC-32 of the body in the JSON.
    for name in names:
        data = (good_index / name).read_bytes()
        start, json_len = _footer(good_index / name)
        footer = json.loads(data[start : start + json_len])
        assert footer["crc"] == zlib.crc32(data[:start])
        assert set(footer["version"]) >= {"index_format_version"}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_checker_detects_damage_and_open_rebuilds(index_copy: Path, damage: str) -> None:
    DAMAGE[damage](index_copy)
    with pytest.raises(CorruptData):
        text_mod.check_index_files(index_copy)
    with pytest.raises(CorruptData):
        TextIndex(index_copy)
    index, rebuild = TextIndex.open_or_reset(index_copy)
    try:
        assert rebuild is True
        assert index.count() == 0
        index.upsert(1, "rebuilt document")
        index.flush()
        assert labels(index.search("rebuilt", 5)) == [1]
    finally:
        index.close()
    text_mod.check_index_files(index_copy)


def test_checker_names_the_damaged_file(index_copy: Path) -> None:
    file = _one(index_copy, "term")
    _flip_body("term")(index_copy)
    with pytest.raises(CorruptData, match="checksum mismatch") as err:
        text_mod.check_index_files(index_copy)
    assert file.name in err.value.message
    assert err.value.details["file"] == str(file)


def test_damage_is_logged_when_reset(index_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    _flip_body("idx")(index_copy)
    with caplog.at_level(logging.WARNING, logger="engramdb"):
        index, rebuild = TextIndex.open_or_reset(index_copy)
    index.close()
    assert rebuild is True
    assert any("checksum mismatch" in r.getMessage() and "rebuild" in r.getMessage() for r in caplog.records)


def test_unreadable_file_is_not_damage(index_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A permission problem is no reason to wipe the index (root ignores chmod, so it is simulated).
    def denied(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(text_mod, "open", denied, raising=False)
    with pytest.raises(EngramError) as err:
        TextIndex.open_or_reset(index_copy)
    assert not isinstance(err.value, CorruptData)
    assert _segment_names(index_copy)  # not wiped


def test_pre_open_lock_and_tantivy_writer_lock_exclude_each_other(tmp_path: Path) -> None:
    # The pre-open check relies on tantivy's writer taking an flock on the same file.
    path = tmp_path / "text"
    index = TextIndex(path)
    try:
        with pytest.raises(FailedPrecondition), text_mod._writer_lock(path):
            pass
    finally:
        index.close()
    with text_mod._writer_lock(path):
        raw = tantivy.Index(text_mod.build_schema(), path=str(path), reuse=True)
        with pytest.raises(ValueError, match="LockBusy"):
            raw.writer()


def _ops(index: TextIndex) -> None:
    index.delete_many(range(0, 10))
    index.upsert_many((i, f"replacement text {i}") for i in range(100, 110))


def test_leftovers_of_an_interrupted_commit_are_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A kill after tantivy wrote a commit's files but before it published meta.json.

    The next process's first commit then wants to create the same <segment>.<opstamp>.del
    file and used to fail once with FileAlreadyExists.
    """
    path, before = tmp_path / "text", tmp_path / "before"
    index = TextIndex(path, refresh_interval=1.0)
    index.upsert_many((i, f"hello world doc {i}") for i in range(50))
    index.commit_watermark(1)
    index.close()
    shutil.copytree(path, before)
    index = TextIndex(path, refresh_interval=1.0)
    _ops(index)
    index.commit_watermark(2)
    index.close()
    written = _segment_names(path) - _segment_names(before)
    assert any(n.endswith(".del") for n in written)
    # "Kill": the files of the last commit are there, meta.json (and the rest) are the old ones.
    for name in ("meta.json", ".managed.json", WATERMARK_FILE):
        shutil.copyfile(before / name, path / name)
    for name in _segment_names(before) - _segment_names(path):
        shutil.copyfile(before / name, path / name)
    (path / ".tmpAb12Cd").write_bytes(b"half a meta.json")
    (path / f"{WATERMARK_FILE}.x1y2.tmp").write_bytes(b"{")
    (path / "notes.txt").write_text("not ours, kept")

    with caplog.at_level(logging.WARNING, logger="engramdb"):
        index = TextIndex(path, refresh_interval=1.0)
    try:
        assert any("left behind" in r.getMessage() for r in caplog.records)
        assert not written & _segment_names(path)
        assert not (path / ".tmpAb12Cd").exists() and not (path / f"{WATERMARK_FILE}.x1y2.tmp").exists()
        assert (path / "notes.txt").exists()
        assert index.watermark() == 1 and index.count() == 50
        _ops(index)
        index.commit_watermark(2)  # the first commit succeeds
        assert index.count() == 50
        assert labels(index.search("replacement", 20)) != [] and labels(index.search("doc 3", 100)).count(3) == 0
    finally:
        index.close()
    assert text_mod.check_index_files(path) == _segment_names(path)


def test_unreadable_managed_list_is_removed_without_a_rebuild(
    index_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (index_copy / ".managed.json").write_text("{garbage")
    with caplog.at_level(logging.WARNING, logger="engramdb"):
        index, rebuild = TextIndex.open_or_reset(index_copy)
    try:
        assert rebuild is False
        assert index.count() > 0
        assert any(".managed.json" in r.getMessage() for r in caplog.records)
    finally:
        index.close()


def test_translated_maps_binding_errors_only() -> None:
    with pytest.raises(CorruptData), text_mod._translated("search"):
        raise ValueError("Data corrupted: bad block")
    with pytest.raises(KeyboardInterrupt), text_mod._translated("search"):
        raise KeyboardInterrupt
    original = InvalidArgument("kept as is")
    with pytest.raises(InvalidArgument) as err, text_mod._translated("search"):
        raise original
    assert err.value is original and err.value.__cause__ is None


# ------------------------------------------------------------ lifecycle


def test_close_commits_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "text"
    with TextIndex(path) as index:
        index.upsert(1, "committed on close")
    assert index.closed
    index.close()
    with pytest.raises(Closed):
        index.upsert(2, "too late")
    with pytest.raises(Closed):
        index.search("anything", 1)
    with pytest.raises(Closed):
        index.flush()
    with TextIndex(path) as index:
        assert labels(index.search("committed", 1)) == [1]
