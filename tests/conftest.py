from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture
def db(tmp_path):
    import engramdb

    d = engramdb.open(tmp_path / "data")
    yield d
    d.close()


@pytest.fixture
def data_dir() -> Path:
    return Path(os.environ.get("ENGRAMDB_DATA", ROOT.parent / "shared" / "data"))
