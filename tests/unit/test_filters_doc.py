"""docs/filters.md is tied to the filter language's code: operators, bounds and a runnable example."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from engramdb import filters

DOC = Path(__file__).resolve().parents[2] / "docs" / "filters.md"


def _text() -> str:
    return DOC.read_text()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.parametrize("name", sorted(filters.FIELD_OPS | filters.LOGICAL_OPS | filters.SPECIAL_KEYS))
def test_every_operator_and_special_key_is_documented(name: str) -> None:
    assert f"`{name}`" in _text()


def _bounds() -> dict[str, int]:
    return {n: v for n, v in vars(filters).items() if n.startswith("MAX_") and isinstance(v, int)}


def test_the_bounds_table_matches_the_constants() -> None:
    assert len(_bounds()) >= 7
    for name, value in _bounds().items():
        assert f"| {value:,} | `{name}` |" in _text(), f"docs/filters.md: the row of {name} must say {value:,}"


def test_the_python_example_runs(tmp_path: Path) -> None:
    (block,) = python_blocks(_text())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for _ in range(2):  # idempotent: the example may be run again on its own data
            exec(compile(block, str(DOC), "exec"), {})
    finally:
        os.chdir(cwd)
