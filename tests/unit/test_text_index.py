"""Unit tests for the tantivy-backed BM25 text index (engramdb.index.text)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroaring import BitMap

from engramdb.errors import Closed, CorruptData, FailedPrecondition, InvalidArgument
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
