"""The runbooks in docs/runbooks are true for today's code.

- The shell blocks of restore-from-backup.md marked ``# runbook-test: restore`` run, as written, on
  a real data directory: records written before the backup are back, one written after it is not,
  and the directory that was there before is kept aside.
- Every ``engramdb`` command any runbook names exists (``engramdb <command> ... --help`` works).
- Every runbook an alert names exists, and the index lists every runbook.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server_env import server_env

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
BIN = Path(sys.executable).parent
_BLOCK = re.compile(r"^( *)```sh\n(.*?)^\1```", re.S | re.M)


def blocks(page: Path, mark: str | None = None) -> list[str]:
    """The ```sh blocks of ``page`` (dedented), only those whose first line is ``# runbook-test: <mark>``."""
    out = []
    for m in _BLOCK.finditer(page.read_text()):
        indent = len(m.group(1))
        body = "\n".join(line[indent:] for line in m.group(2).splitlines())
        first = body.splitlines()[0] if body else ""
        if mark is None or re.fullmatch(rf"# runbook-test: {re.escape(mark)}\b.*", first):
            out.append(body)
    return out


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    env = server_env(extra)
    # `engramdb` as the runbooks call it: this interpreter's entry point, with this checkout's sources.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "/usr/bin:/bin")])
    return env


def has_command(*words: str) -> bool:
    r = subprocess.run([str(BIN / "engramdb"), *words, "--help"], env=cli_env({}), capture_output=True, timeout=60)
    return r.returncode == 0


def run_shell(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_restore_runbook_commands_bring_the_data_back(tmp_path: Path) -> None:
    if not has_command("backup"):
        pytest.skip("`engramdb backup` does not exist in this checkout yet (issue 17 item 1)")
    import engramdb

    page = RUNBOOKS / "restore-from-backup.md"
    variables = blocks(page, "variables")
    assert len(variables) == 1 and "DATA_DIR=" in variables[0] and "BACKUP=" in variables[0]
    steps = blocks(page, "restore")
    assert len(steps) >= 3, "the restore runbook lost its tested steps"
    assert any("backup restore" in s for s in steps) and any("backup verify" in s for s in steps)

    data_dir, backup = tmp_path / "srv" / "data", tmp_path / "backups" / "engramdb-test"
    backup.parent.mkdir()
    db = engramdb.open(data_dir)
    coll = db.create_collection("notes", dimension=2)
    coll.upsert([{"id": f"r{i}", "vector": [1.0, float(i)], "text": f"note {i}"} for i in range(50)])
    db.close()
    env = cli_env({"DATA_DIR": str(data_dir), "BACKUP": str(backup)})
    made = run_shell(f'engramdb backup create "{backup}" --data-dir "{data_dir}"', env, tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    db = engramdb.open(data_dir)  # written after the backup: gone after the restore
    db.get_collection("notes").upsert([{"id": "after-backup", "vector": [0.0, 1.0]}])
    db.close()

    for step in steps:
        r = run_shell(step, env, tmp_path)
        assert r.returncode == 0, f"{step}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"

    db = engramdb.open(data_dir)
    try:
        coll = db.get_collection("notes")
        got = coll.get_many([f"r{i}" for i in range(50)] + ["after-backup"])
        assert {r.id for r in got} == {f"r{i}" for i in range(50)}
        assert got[7].text == "note 7" or {r.id: r.text for r in got}["r7"] == "note 7"
        assert coll.count() == 50
    finally:
        db.close()
    kept = [p for p in data_dir.parent.iterdir() if p.name.startswith("data.before-restore-")]
    assert len(kept) == 1 and (kept[0] / "db").is_dir()


def test_restore_runbook_stops_on_a_damaged_backup(tmp_path: Path) -> None:
    """Step 2 is the gate: a damaged backup stops the procedure before the data is touched."""
    if not has_command("backup"):
        pytest.skip("`engramdb backup` does not exist in this checkout yet (issue 17 item 1)")
    import engramdb

    data_dir, backup = tmp_path / "data", tmp_path / "bk"
    db = engramdb.open(data_dir)
    db.create_collection("notes", dimension=2).upsert([{"id": "a", "vector": [1.0, 0.0]}])
    db.close()
    env = cli_env({"DATA_DIR": str(data_dir), "BACKUP": str(backup)})
    assert run_shell('engramdb backup create "$BACKUP" --data-dir "$DATA_DIR"', env, tmp_path).returncode == 0
    biggest = max(
        (p for p in backup.rglob("*") if p.is_file() and p.name != "manifest.json"), key=lambda p: p.stat().st_size
    )
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    biggest.write_bytes(bytes(raw))
    script = "\n".join(blocks(RUNBOOKS / "restore-from-backup.md", "restore"))
    r = run_shell(script, env, tmp_path)
    assert r.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "data"]  # nothing moved aside, nothing restored


def named_commands() -> list[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for page in sorted(RUNBOOKS.glob("*.md")):
        text = page.read_text()
        prose = _BLOCK.sub("", text)
        inline = [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]  # may wrap lines
        code = "\n".join(blocks(page)) + "\n" + "\n".join(inline)
        # `engramdb` in command position: a line's start, after `--` (kubectl exec), `&&`, `;`, `|` or `$(`.
        for m in re.finditer(r"(?:^|--\s+|&&\s*|;\s*|\|\s*|\$\()engramdb((?: [a-z]+){1,2})\b", code, re.M):
            found.add(tuple(m.group(1).split()))
    return sorted(found)


def test_runbooks_name_commands() -> None:
    cmds = named_commands()
    assert ("backup", "restore") in cmds and ("keys", "rotate") in cmds and ("config", "check") in cmds


@pytest.mark.parametrize("words", named_commands(), ids=" ".join)
def test_every_engramdb_command_in_the_runbooks_exists(words: tuple[str, ...]) -> None:
    if words[0] == "backup" and not has_command("backup"):
        pytest.skip("`engramdb backup` does not exist in this checkout yet (issue 17 item 1)")
    assert has_command(*words), f"`engramdb {' '.join(words)}` does not exist"


def test_index_lists_every_runbook_and_links_resolve() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    pages = {p.name for p in RUNBOOKS.glob("*.md")} - {"README.md"}
    assert pages == set(re.findall(r"\]\(([a-z-]+\.md)\)", index))
    for page in RUNBOOKS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+\.md)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name}: {target}"


def test_etcd_runbook_status_command_reports_members_and_a_lost_etcd(tmp_path: Path) -> None:
    """etcd-down.md's `engramdb cluster status`, run as written against a real etcd: the members it
    holds while etcd answers, and the runbook's "etcd did not answer" (exit 1) once it is gone."""
    import shutil

    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package `etcd-server`; .ci/run installs it)")
    from engramdb.cluster.control import ControlPlane, MemberInfo
    from engramdb.cluster.local import EtcdProcess

    page = RUNBOOKS / "etcd-down.md"
    (status,) = blocks(page, "status")
    assert "engramdb cluster status" in status
    assert "engramdb: etcd did not answer within 5 s" in page.read_text()
    etcd = EtcdProcess(tmp_path / "etcd-data", name="runbook")
    etcd.start()
    try:
        cp = ControlPlane(cluster="engramdb", node_id="engramdb-1", endpoints=[etcd.endpoint], lease_ttl_seconds=10)
        cp.start()
        try:
            cp.register(MemberInfo(node_id="engramdb-1", address="10.0.0.2:7880", state="up", version="x"))
            cp.wait_for(lambda v: "engramdb-1" in v.members, 30)
            env = cli_env({"ETCD_ENDPOINTS": etcd.endpoint, "CLUSTER": "engramdb"})
            up = run_shell(status, env, tmp_path)
            assert up.returncode == 0, up.stdout + up.stderr
            assert "members: 1 up" in up.stdout and "engramdb-1" in up.stdout and "10.0.0.2:7880" in up.stdout
        finally:
            cp.close()
    finally:
        etcd.kill()
    down = run_shell(status, env, tmp_path)
    assert down.returncode == 1
    assert down.stderr.startswith("engramdb: etcd did not answer within 5 s"), down.stderr
