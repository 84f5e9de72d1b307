"""The version is written once, in src/engramdb/_version.py; everything else reads it."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import engramdb
from engramdb import _version

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_reads_the_version_module() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"], "pyproject.toml must not repeat the version"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "engramdb._version.__version__"}


def test_one_module_assigns_the_version() -> None:
    writers = []
    for path in sorted((ROOT / "src" / "engramdb").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            if any(isinstance(t, ast.Name) and t.id == "__version__" for t in targets):
                writers.append(path.relative_to(ROOT).as_posix())
    assert writers == ["src/engramdb/_version.py"]
    assert engramdb.__version__ == _version.__version__
