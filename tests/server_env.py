"""The environment of a test server subprocess: this checkout's sources, no stray settings."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# The suite's bootstrap admin key, made once per test run here: conftest modules can be imported
# twice (tests/security re-exports tests/integration's fixtures), and each copy must agree on it.
TEST_ADMIN_KEY = "edb_test_admin_" + secrets.token_urlsafe(24)


def server_env(extra: dict[str, str] | None = None, admin_key: str | None = None) -> dict[str, str]:
    """``os.environ`` without any ``ENGRAMDB_*`` variable, with ``src/`` first on ``PYTHONPATH``.

    ``admin_key`` becomes ``ENGRAMDB_ADMIN_KEY``; ``extra`` is applied last.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAMDB_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if admin_key is not None:
        env["ENGRAMDB_ADMIN_KEY"] = admin_key
    env.update(extra or {})
    return env
