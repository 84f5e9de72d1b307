"""Code comments cite only documents that are in the repository.

A reference to a design document kept outside the repository (``DESIGN.md §5.2``) tells a reader
of the code nothing; a comment stands on its own or cites a page under docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# docs/<page>.md, or an upper-case document name such as README.md (the convention of top-level documents).
_DOCS_REF = re.compile(r"\bdocs/([a-z0-9_-]+\.md)")
_TOP_REF = re.compile(r"(?<![\w/.-])([A-Z][A-Z0-9_]+\.md)\b")


def _sources() -> list[Path]:
    this = Path(__file__).resolve()  # quotes the forms it refuses
    return [p for d in ("src", "tests", "bench") for p in sorted((ROOT / d).rglob("*.py")) if p != this]


def test_cited_documents_exist() -> None:
    missing = []
    for path in _sources():
        text = path.read_text()
        for m in _DOCS_REF.finditer(text):
            if not (ROOT / "docs" / m.group(1)).is_file():
                missing.append(f"{path.relative_to(ROOT)}: docs/{m.group(1)}")
        for m in _TOP_REF.finditer(text):
            if not (ROOT / m.group(1)).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {m.group(1)}")
    assert missing == []


def test_no_section_references_to_outside_documents() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _sources()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "§" in line or re.search(r"\bdesign (doc|§)", line, re.I)
    ]
    assert offenders == []
