"""Every setting is documented, and every ``ENGRAMDB_*`` name the project uses is one ``config check`` knows.

Both walk the ``Settings`` dataclasses (``engramdb.config.setting_names``), so a setting added without
documentation, or a new non-setting variable (a key, a test knob) not listed in
``engramdb.config.NON_SETTING_ENV``, fails here rather than in an operator's ``config check``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from engramdb.config import ENV_PREFIX, NON_SETTING_ENV, REMOVED_SETTINGS, env_problems, setting_names

ROOT = Path(__file__).resolve().parents[2]
SERVER_MD = ROOT / "docs" / "server.md"

_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".benchmarks", ".hypothesis"}
_SUFFIXES = {".py", ".md", ".rst", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".json"}
# Files that use wrong names on purpose (to test the check itself), and history.
_SKIP_FILES = {ROOT / "tests" / "unit" / "test_config.py", Path(__file__).resolve(), ROOT / "CHANGELOG.md"}
# A name tests/unit/test_embed.py gives to `api_key_env` and keeps unset: the variable must not exist.
_DELIBERATE = {"ENGRAMDB_TEST_UNSET_KEY"}


def _documented(name: str, text: str) -> bool:
    # `*` is any key of a mapping setting: `embedders.*.base_url` is documented as `embedders.<name>.base_url`.
    pattern = re.escape(f"`{name}`").replace(re.escape("*"), r"[^`.\s]+")
    return re.search(pattern, text) is not None


def test_every_setting_is_documented_in_server_md() -> None:
    text = SERVER_MD.read_text()
    leaves = [name for name, section in setting_names() if not section]
    assert len(leaves) > 40  # the walk found the settings at all
    missing = [name for name in leaves if not _documented(name, text)]
    assert not missing, f"document these settings in docs/server.md, by their dotted name in backquotes: {missing}"


def test_removed_settings_are_gone_from_the_schema_and_the_docs_tables() -> None:
    names = {name for name, _ in setting_names()}
    assert not names & set(REMOVED_SETTINGS)
    rows = [line for line in SERVER_MD.read_text().splitlines() if line.startswith("| `")]
    for removed in REMOVED_SETTINGS:
        assert not [r for r in rows if r.startswith(f"| `{removed}`")], removed


def _project_files() -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith("_cache")]
        for f in filenames:
            p = Path(dirpath) / f
            if (p.suffix in _SUFFIXES or f in ("Makefile", "Dockerfile")) and p not in _SKIP_FILES:
                out.append(p)
    return out


def test_every_engramdb_env_name_in_the_project_is_known() -> None:
    """Code, tests, benchmarks and docs use only setting names and the listed non-setting names."""
    patterns = [n.split(".") for n, _ in setting_names()]

    def starts_a_name(prefix: str) -> bool:
        segments = prefix[len(ENV_PREFIX) :].rstrip("_").lower().split("__")
        return any(n.startswith(prefix) for n in NON_SETTING_ENV) or any(
            len(p) >= len(segments) and all(a in ("*", b) for a, b in zip(p, segments, strict=False)) for p in patterns
        )

    unknown: dict[str, set[str]] = {}
    files = _project_files()
    assert any(p.name == "config.py" for p in files)
    for p in files:
        try:
            text = p.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for name in set(re.findall(r"\bENGRAMDB_[A-Z0-9_]*", text)):
            if name.endswith("_"):
                # A prefix in prose or code ("ENGRAMDB_EXTRACTION__*", "ENGRAMDB_EMBEDDERS__<NAME>__...").
                ok = name == ENV_PREFIX or starts_a_name(name)
            else:
                ok = name in _DELIBERATE or not env_problems({name: "x"})
            if not ok:
                unknown.setdefault(name, set()).add(str(p.relative_to(ROOT)))
    assert not unknown, (
        "ENGRAMDB_* names that are neither settings nor in engramdb.config.NON_SETTING_ENV "
        f"(config check would reject them): {unknown}"
    )


def test_the_checks_above_can_fail() -> None:
    assert not _documented("storage.no_such_setting", SERVER_MD.read_text())
    assert env_problems({"ENGRAMDB_STORAGE__NO_SUCH_SETTING": "x"})
    assert not env_problems({"ENGRAMDB_EMBEDDERS__ANY_NAME__BASE_URL": "x", "ENGRAMDB_ADMIN_KEY": "x"})
