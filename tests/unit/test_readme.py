"""The README's quickstart runs as written, twice in the same directory (a second run of a
tutorial must not fail on what the first one created)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_quickstart_runs_twice(tmp_path: Path) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    assert blocks, "README.md has no python block"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for _ in range(2):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                for block in blocks:
                    exec(compile(block, str(README), "exec"), {})
            assert out.getvalue().startswith("m1 "), out.getvalue()
    finally:
        os.chdir(cwd)
