"""Online backup and restore (docs/backup.md): consistency under writes, refusals, the admin API, the CLI.

The engine tests run in-process on real RocksDB / hnswlib / tantivy files; the API tests start real
servers; the CLI tests run ``engramdb`` as a subprocess, as an operator would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import engramdb
from conftest import ADMIN_KEY, ROOT, ServerProcess, server_env
from engramdb.client import Client
from engramdb.config import Settings, check
from engramdb.engine import backup
from engramdb.engine.database import Database
from engramdb.errors import CorruptData, EngramError, FailedPrecondition, InvalidArgument, PermissionDenied
from engramdb.server.grpc import engramdb_pb2 as pb
from engramdb.server.grpc import engramdb_pb2_grpc as pb_grpc

DIM = 8


def _vec(i: int) -> list[float]:
    return np.random.default_rng(i).random(DIM).astype(np.float32).tolist()


def _notes(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"n{i}", "vector": _vec(i), "text": f"word{i} memo", "metadata": {"kind": str(i % 3)}} for i in range(n)
    ]


def _fill(db: Database, n: int = 300) -> None:
    c = db.create_collection("notes", DIM, indexed_fields={"kind": "keyword"})
    c.upsert(
        [
            {"id": f"n{i}", "vector": _vec(i), "text": f"word{i} memo", "metadata": {"kind": str(i % 3)}}
            for i in range(n)
        ]
    )
    c.link([{"src": "n1", "relation": "cites", "dst": "n2"}, {"src": "n2", "relation": "cites", "dst": "n3"}])
    other = db.create_collection("other", DIM, tenant="acme")
    other.upsert({"id": "x", "vector": _vec(10_000), "text": "acme secret"})


def _check_restored(path: Path, n: int = 300) -> None:
    """The restored directory answers vector, text, filter and graph queries like the original."""
    with engramdb.open(path) as db:
        c = db.get_collection("notes")
        assert c.count() == n
        assert [h.id for h in c.search(_vec(7), k=1)] == ["n7"]
        assert [h.id for h in c.search(text="word42", mode="text", k=3)] == ["n42"]
        assert {h.id for h in c.search(_vec(5), k=n, filter={"kind": "2"})} == {f"n{i}" for i in range(n) if i % 3 == 2}
        assert {r.id for r in c.neighbors("n1", hops=2)} == {"n2", "n3"}
        assert db.get_collection("other", tenant="acme").get("x").text == "acme secret"


# ------------------------------------------------------------------------------------- engine
def test_backup_under_concurrent_writes_keeps_every_acknowledged_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    settings.index.snapshot_after_changes = 50  # snapshots (and trims) all the time, during the backup too
    settings.index.snapshot_interval_seconds = 0.2
    db = Database(data, settings)
    c = db.create_collection("live", DIM, metric="l2", indexed_fields={"batch": "int"})
    acked: list[int] = []  # batch numbers, appended after upsert returned
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        b = 0
        try:
            while not stop.is_set():
                # Three records per call: one atomic write, so a backup holds all three or none.
                c.upsert(
                    [
                        {"id": f"b{b}-{j}", "vector": _vec(b * 3 + j), "text": f"tok{b}x{j}", "metadata": {"batch": b}}
                        for j in range(3)
                    ]
                )
                acked.append(b)
                b += 1
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(acked) < 200:
            time.sleep(0.01)
        db.snapshot()  # a snapshot with a watermark well before the backup point
        while len(acked) < 400:
            time.sleep(0.01)
        before = len(acked)  # every batch up to here was acknowledged before the backup started
        info = backup.create_backup(db, tmp_path / "bk")
        after_start = len(acked)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
        db.close()
    assert not errors, errors
    assert after_start > before, "writes went on during the backup"
    assert info["seq"] > 0 and info["files"] > 0
    backup.verify_backup(tmp_path / "bk")
    backup.restore_backup(tmp_path / "bk", tmp_path / "restored")
    with engramdb.open(tmp_path / "restored") as rdb:
        rc = rdb.get_collection("live")
        rebuilt: list[Any] = []
        rc.load(lambda done, total: rebuilt.append((done, total)))
        # The snapshot shipped with the backup was usable: the changelog after its watermark is in the checkpoint.
        assert rebuilt == []
        got = {r.id: r for r in rc.get_many([f"b{b}-{j}" for b in range(len(acked)) for j in range(3)])}
        for b in range(before):
            for j in range(3):
                r = got.get(f"b{b}-{j}")
                assert r is not None, f"acknowledged record b{b}-{j} is missing from the restored backup"
                assert r.text == f"tok{b}x{j}" and r.metadata == {"batch": b}
                assert np.allclose(r.vector, _vec(b * 3 + j))
        present = {int(rid[1:].split("-")[0]) for rid in got}
        for b in present:  # nothing half-written: a batch is there whole or not at all
            assert all(f"b{b}-{j}" in got for j in range(3)), f"batch {b} is partly in the backup"
        assert rc.count() == 3 * len(present)
        # Indexes agree with the records: vector, text and filter queries find records from both sides of the point.
        for b in (0, before - 1, max(present)):
            assert rc.search(_vec(b * 3 + 1), k=1)[0].id == f"b{b}-1"
            assert [h.id for h in rc.search(text=f"tok{b}x2", mode="text", k=2)] == [f"b{b}-2"]
            assert len(rc.search(_vec(0), k=10, filter={"batch": b})) == 3


def test_restore_into_a_fresh_directory_answers_queries(tmp_path: Path) -> None:
    with Database(tmp_path / "data") as db:
        _fill(db)
        info = backup.create_backup(db, tmp_path / "bk")
    listed = {b["name"]: b["status"] for b in backup.list_backups(tmp_path)}
    assert listed == {"bk": "complete", "data": "incomplete"}  # a directory without a manifest is no backup
    assert backup.verify_backup(tmp_path / "bk")["seq"] == info["seq"]
    backup.restore_backup(tmp_path / "bk", tmp_path / "fresh")
    _check_restored(tmp_path / "fresh")
    # Nothing of the backup's staging is left in the data directory.
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["db", "indexes"]


@pytest.fixture
def good_backup(tmp_path: Path) -> Path:
    with Database(tmp_path / "data") as db:
        _fill(db, 50)
        db.snapshot()  # so the backup ships index snapshots too
        backup.create_backup(db, tmp_path / "bk")
    return tmp_path / "bk"


def _manifest(bk: Path) -> dict[str, Any]:
    return json.loads((bk / backup.MANIFEST_FILE).read_text())


def _rewrite_manifest(bk: Path, **changes: Any) -> None:
    """Edit the manifest as a newer or buggy writer would: a valid checksum over the changed content."""
    m = _manifest(bk)
    m.update(changes)
    m["checksum"] = hashlib.sha256(
        json.dumps({k: v for k, v in m.items() if k != "checksum"}, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    (bk / backup.MANIFEST_FILE).write_text(json.dumps(m))


def _largest_sst(bk: Path) -> Path:
    return max((bk / "db").glob("*.sst"), key=lambda p: p.stat().st_size)


def _flip(path: Path, offset: int | None = None) -> None:
    raw = bytearray(path.read_bytes())
    i = len(raw) // 2 if offset is None else offset
    raw[i] ^= 0x01
    path.write_bytes(bytes(raw))


def _damage(bk: Path, how: str) -> None:
    if how == "flipped_byte":
        _flip(_largest_sst(bk))
    elif how == "flipped_byte_in_index":
        _flip(bk / "indexes" / "1" / "vector.hnsw")
    elif how == "truncated":
        p = _largest_sst(bk)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif how == "missing_file":
        _largest_sst(bk).unlink()
    elif how == "missing_manifest":
        (bk / backup.MANIFEST_FILE).unlink()
    elif how == "edited_manifest":
        m = _manifest(bk)
        m["seq"] += 1  # without a matching checksum
        (bk / backup.MANIFEST_FILE).write_text(json.dumps(m))
    elif how == "garbled_manifest":
        (bk / backup.MANIFEST_FILE).write_text('{"format": "engramdb-backup", "files": [')
    elif how == "newer_version":
        _rewrite_manifest(bk, engramdb_version="99.0.0")
    elif how == "newer_format":
        _rewrite_manifest(bk, format_version=backup.FORMAT_VERSION + 1)
    elif how == "wrong_seq":
        _rewrite_manifest(bk, seq=_manifest(bk)["seq"] + 5)
    elif how == "symlinked_dir":  # the files stay as listed, but behind a link that could lead anywhere
        os.rename(bk / "indexes", bk.parent / "elsewhere")
        os.symlink(bk.parent / "elsewhere", bk / "indexes")
    elif how == "symlinked_file":
        sst = _largest_sst(bk)
        os.rename(sst, bk.parent / sst.name)
        os.symlink(bk.parent / sst.name, sst)
    elif how == "deep_manifest":
        (bk / backup.MANIFEST_FILE).write_text("[" * 100_000)
    elif how == "path_escape":
        m = _manifest(bk)
        m["files"][0]["path"] = "db/../../evil"
        _rewrite_manifest(bk, files=m["files"])
    else:
        raise AssertionError(how)


DAMAGE = {
    "flipped_byte": (CorruptData, "backup_corrupt", "does not match its checksum"),
    "flipped_byte_in_index": (CorruptData, "backup_corrupt", "does not match its checksum"),
    "truncated": (CorruptData, "backup_corrupt", "(truncated?)"),
    "missing_file": (CorruptData, "backup_incomplete", "is missing"),
    "missing_manifest": (CorruptData, "backup_incomplete", "has no manifest.json"),
    "edited_manifest": (CorruptData, "backup_manifest_invalid", "checksum does not match"),
    "garbled_manifest": (CorruptData, "backup_manifest_invalid", "not JSON"),
    "deep_manifest": (CorruptData, "backup_manifest_invalid", "nested too deeply"),
    "symlinked_dir": (CorruptData, "backup_corrupt", "indexes in"),
    "symlinked_file": (CorruptData, "backup_corrupt", "symbolic link"),
    "newer_version": (FailedPrecondition, "backup_version_mismatch", "newer than this one"),
    "newer_format": (FailedPrecondition, "backup_version_mismatch", "format version"),
    "wrong_seq": (CorruptData, "backup_corrupt", "ends at changelog sequence"),
    "path_escape": (CorruptData, "backup_manifest_invalid", "file list"),
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_backups_are_refused(good_backup: Path, tmp_path: Path, how: str) -> None:
    cls, code, words = DAMAGE[how]
    _damage(good_backup, how)
    with pytest.raises(cls) as verify_err:
        backup.verify_backup(good_backup)
    assert verify_err.value.code == code and words in verify_err.value.message, verify_err.value
    target = tmp_path / "restored"
    with pytest.raises(cls) as restore_err:
        backup.restore_backup(good_backup, target)
    assert restore_err.value.code == code, restore_err.value
    # Nothing restored, nothing half-restored, no temporary directory left behind.
    assert not target.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".restored.")]


def test_a_backup_name_that_is_a_link_is_not_followed(good_backup: Path, tmp_path: Path) -> None:
    bdir = tmp_path / "backups"
    bdir.mkdir()
    os.symlink(good_backup, bdir / "linked")
    assert backup.list_backups(bdir) == []
    with pytest.raises(EngramError) as ei:
        backup.verify_backup(backup.backup_path(bdir, "linked"))
    assert ei.value.code == "backup_not_found"
    with pytest.raises(EngramError) as ei:
        backup.restore_backup(bdir / "linked", tmp_path / "restored")
    assert ei.value.code == "backup_not_found" and not (tmp_path / "restored").exists()


def test_an_unreadable_manifest_does_not_break_the_listing(
    good_backup: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bdir = tmp_path / "backups"
    bdir.mkdir()
    os.rename(good_backup, bdir / "good")
    (bdir / "deep").mkdir()
    (bdir / "deep" / backup.MANIFEST_FILE).write_text("[" * 100_000)
    listed = {b["name"]: b for b in backup.list_backups(bdir)}
    assert listed["good"]["status"] == "complete"
    assert listed["deep"]["status"] == "invalid" and "nested too deeply" in listed["deep"]["problem"]
    real = backup.read_manifest

    def broken(src: Any) -> dict[str, Any]:
        if Path(src).name == "deep":
            raise RecursionError("any unexpected failure reading one backup")
        return real(src)

    monkeypatch.setattr(backup, "read_manifest", broken)
    listed = {b["name"]: b for b in backup.list_backups(bdir)}
    assert listed["good"]["status"] == "complete" and listed["deep"]["status"] == "invalid"


def test_create_removes_partials_of_killed_backups_only(tmp_path: Path) -> None:
    import fcntl

    bdir = tmp_path / "backups"
    (bdir / ".old.partial-0123abcd" / "db").mkdir(parents=True)  # left by a killed backup: nobody holds it
    live = bdir / ".other.partial-89abcdef"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)  # another backup writing right now
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        (bdir / ".not-ours").mkdir()
        with Database(tmp_path / "data") as db:
            _fill(db, 20)
            backup.create_backup(db, bdir / "new")
        assert sorted(p.name for p in bdir.iterdir()) == [".not-ours", ".other.partial-89abcdef", "new"]
    finally:
        os.close(fd)


def test_a_running_backup_holds_its_partial_against_cleanup(tmp_path: Path) -> None:
    import fcntl

    bdir = tmp_path / "backups"
    seen: list[bool] = []

    def progress(done: int, total: int) -> None:  # called while the copy runs
        for p in bdir.glob(".b.partial-*"):
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append(False)  # a concurrent create would have removed it
            except OSError:
                seen.append(True)
            finally:
                os.close(fd)

    with Database(tmp_path / "data") as db:
        _fill(db, 20)
        backup.create_backup(db, bdir / "b", progress=progress)
    assert seen and all(seen)


def test_create_refuses_when_the_backup_disk_is_too_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    bdir = tmp_path / "backups"
    bdir.mkdir()
    real = shutil.disk_usage
    with Database(tmp_path / "data") as db:
        _fill(db, 20)
        free = real(bdir).free
        monkeypatch.setattr(backup.shutil, "disk_usage", lambda p: real(p)._replace(free=5 << 20))
        with pytest.raises(EngramError) as ei:
            backup.create_backup(db, bdir / "b1", min_free_mb=10)
        assert ei.value.code == "backup_no_space" and "server.min_free_disk_mb" in ei.value.message
        assert list(bdir.iterdir()) == []  # nothing copied, nothing left
        monkeypatch.setattr(backup.shutil, "disk_usage", lambda p: real(p)._replace(free=free))
        assert backup.create_backup(db, bdir / "b1", min_free_mb=10)["status"] == "complete"


def test_restore_never_touches_a_non_empty_data_dir_without_force(good_backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "existing"
    with Database(target) as db:
        db.create_collection("mine", 4).upsert({"id": "keep", "vector": [1.0, 0.0, 0.0, 0.0]})
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    with pytest.raises(FailedPrecondition) as e:
        backup.restore_backup(good_backup, target)
    assert e.value.code == "data_dir_not_empty"
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before
    # A corrupt backup with --force changes nothing either.
    _flip(_largest_sst(good_backup))
    with pytest.raises(CorruptData):
        backup.restore_backup(good_backup, target, force=True)
    with engramdb.open(target) as db:
        assert db.get_collection("mine").get("keep") is not None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".existing.")) == []


def test_restore_force_replaces_the_data_dir(good_backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "existing"
    with Database(target) as db:
        db.create_collection("mine", 4).upsert({"id": "gone", "vector": [1.0, 0.0, 0.0, 0.0]})
    (target / "stray.txt").write_text("an operator's file")
    backup.restore_backup(good_backup, target, force=True)
    assert not (target / "stray.txt").exists()
    _check_restored(target, 50)
    with engramdb.open(target) as db:
        assert "mine" not in [c.name for c in db.list_collections()]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".existing.")) == []


def test_restore_refuses_a_data_dir_in_use_even_with_force(good_backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    with Database(target) as db:
        with pytest.raises(FailedPrecondition) as e:
            backup.restore_backup(good_backup, target, force=True)
        assert e.value.code == "data_dir_locked"
        # The check left the database's own lock alone: it still writes.
        db.create_collection("still", 4).upsert({"id": "a", "vector": [1.0, 0.0, 0.0, 0.0]})
        assert backup.data_dir_in_use(target)


def test_backup_destination_rules(tmp_path: Path) -> None:
    with Database(tmp_path / "data") as db:
        _fill(db, 5)
        with pytest.raises(InvalidArgument) as inside:
            backup.create_backup(db, tmp_path / "data" / "bk")
        assert inside.value.code == "invalid_backup_destination"
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("x")
        with pytest.raises(EngramError) as exists:
            backup.create_backup(db, tmp_path / "full")
        assert exists.value.code == "backup_exists"
        with backup._one_at_a_time(tmp_path / "data"), pytest.raises(FailedPrecondition) as busy:
            backup.create_backup(db, tmp_path / "bk2")
        assert busy.value.code == "backup_in_progress"
        (tmp_path / "empty").mkdir()
        backup.create_backup(db, tmp_path / "empty")  # an empty directory is a fine destination
        assert backup.verify_backup(tmp_path / "empty")["files"] > 0


def test_backup_dir_must_be_outside_the_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "data")
    s.backup.dir = tmp_path / "data" / "backups"
    assert [p for p in check(s) if p.startswith("backup.dir")]
    s.backup.dir = tmp_path / "backups"
    assert not [p for p in check(s) if p.startswith("backup.dir")]


# ----------------------------------------------------------------------------------- admin API
def _write_some(url: str) -> None:
    with Client(url, ADMIN_KEY) as cl:
        c = cl.create_collection("notes", DIM, indexed_fields={"kind": "keyword"})
        c.upsert(
            [
                {"id": f"n{i}", "vector": _vec(i), "text": f"word{i} memo", "metadata": {"kind": str(i % 3)}}
                for i in range(300)
            ]
        )
        c.link([{"src": "n1", "relation": "cites", "dst": "n2"}, {"src": "n2", "relation": "cites", "dst": "n3"}])
    with Client(url, ADMIN_KEY, tenant="acme") as cl:
        cl.create_collection("other", DIM).upsert({"id": "x", "vector": _vec(10_000), "text": "acme secret"})


def test_admin_api_backups_over_rest_grpc_and_client(server_factory: Any, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    sp: ServerProcess = server_factory(env={"ENGRAMDB_BACKUP__DIR": str(backups)})
    _write_some(sp.base_url)
    with sp.client() as rest:
        r = rest.post("/v1/admin/backups", json={"name": "rest-1"})
        assert r.status_code == 201, r.text
        made = r.json()["backup"]
        assert made["name"] == "rest-1" and made["status"] == "complete" and made["seq"] > 0
        assert rest.post("/v1/admin/backups", json={"name": "rest-1"}).json()["error"]["code"] == "backup_exists"
        for bad in ("../escape", "a/b", "..", ".hidden", "/abs"):
            r = rest.post("/v1/admin/backups", json={"name": bad})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_name", (bad, r.text)
        assert not (tmp_path / "escape").exists()
        r = rest.get("/v1/admin/backups")
        assert [b["name"] for b in r.json()["backups"]] == ["rest-1"]
        r = rest.post("/v1/admin/backups/rest-1/verify")
        assert r.status_code == 200 and r.json()["backup"]["seq"] == made["seq"], r.text
        assert rest.post("/v1/admin/backups/nope/verify").json()["error"]["code"] == "backup_not_found"
        assert rest.post("/v1/admin/backups/..%2F..%2Fetc/verify").status_code in (400, 404)
        # A tenant's admin key may not back up the node: a backup holds every tenant.
        key = rest.post("/v1/admin/keys", json={"role": "admin", "tenant": "acme"}).json()["key"]
    with sp.client(key) as tenant_admin:
        for method, path, body in (
            ("POST", "/v1/admin/backups", {"name": "t"}),
            ("GET", "/v1/admin/backups", None),
            ("POST", "/v1/admin/backups/rest-1/verify", None),
        ):
            r = tenant_admin.request(method, path, json=body)
            assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied", r.text
    assert not (backups / "t").exists()

    with grpc.insecure_channel(sp.grpc_address) as ch:
        stub = pb_grpc.EngramDBStub(ch)
        md = (("authorization", f"Bearer {ADMIN_KEY}"),)
        got = stub.CreateBackup(pb.CreateBackupRequest(name="grpc-1"), metadata=md, timeout=120)
        assert got.backup.name == "grpc-1" and got.backup.seq == made["seq"]  # nothing written since
        listed = stub.ListBackups(pb.ListBackupsRequest(), metadata=md, timeout=30)
        assert [b.name for b in listed.backups] == ["grpc-1", "rest-1"]
        assert stub.VerifyBackup(pb.VerifyBackupRequest(name="grpc-1"), metadata=md, timeout=120).backup.files > 0
        with pytest.raises(grpc.RpcError) as bad:
            stub.CreateBackup(pb.CreateBackupRequest(name="../x"), metadata=md, timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as denied:
            stub.ListBackups(pb.ListBackupsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=30)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    with Client(sp.base_url, ADMIN_KEY) as cl:
        info = cl.create_backup("client-1")
        assert info.status == "complete" and info.bytes and info.bytes > 0
        assert [b.name for b in cl.list_backups()] == ["client-1", "grpc-1", "rest-1"]
        assert cl.verify_backup("client-1").seq == info.seq
        _flip(_largest_sst(backups / "client-1"))
        with pytest.raises(CorruptData) as corrupt:
            cl.verify_backup("client-1")
        assert corrupt.value.code == "backup_corrupt"
    with Client(sp.base_url, key) as cl, pytest.raises(PermissionDenied):
        cl.list_backups()

    # While the server runs, the offline commands refuse its data directory.
    cli = _cli("backup", "create", str(tmp_path / "offline"), "--data-dir", str(sp.data_dir))
    assert cli.returncode == 1 and "[data_dir_locked]" in cli.stderr, cli.stderr
    cli = _cli("backup", "restore", str(backups / "rest-1"), "--data-dir", str(sp.data_dir), "--force")
    assert cli.returncode == 1 and "[data_dir_locked]" in cli.stderr, cli.stderr
    assert sp.stop() == 0
    # A backup taken through the API restores like any other.
    backup.restore_backup(backups / "rest-1", tmp_path / "from-api")
    _check_restored(tmp_path / "from-api")


def test_admin_api_backups_need_a_configured_directory(server: ServerProcess) -> None:
    with server.client() as rest:
        r = rest.post("/v1/admin/backups", json={"name": "b"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "backup_not_configured", r.text
        assert "backup.dir" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engramdb.cli", *args],
        capture_output=True,
        text=True,
        env=server_env(admin_key=None),
        cwd=str(ROOT),
        timeout=120,
    )


def test_cli_end_to_end(tmp_path: Path) -> None:
    with Database(tmp_path / "data") as db:
        _fill(db)
    bk = tmp_path / "bk"
    made = _cli("backup", "create", str(bk), "--data-dir", str(tmp_path / "data"), "--progress")
    assert made.returncode == 0, made.stderr
    assert "backup written to" in made.stdout and "100.0%" in made.stderr  # the progress bar
    quiet = _cli("backup", "verify", str(bk), "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["status"] == "complete" and quiet.stderr == ""  # no bar when not a terminal
    listed = _cli("backup", "list", str(tmp_path), "--json")
    assert [b["name"] for b in json.loads(listed.stdout) if b["status"] == "complete"] == ["bk"]
    restored = _cli("backup", "restore", str(bk), "--data-dir", str(tmp_path / "new"))
    assert restored.returncode == 0, restored.stderr
    _check_restored(tmp_path / "new")
    again = _cli("backup", "restore", str(bk), "--data-dir", str(tmp_path / "new"))
    assert again.returncode == 1 and "[data_dir_not_empty]" in again.stderr
    forced = _cli("backup", "restore", str(bk), "--data-dir", str(tmp_path / "new"), "--force")
    assert forced.returncode == 0, forced.stderr
    _check_restored(tmp_path / "new")
    _flip(_largest_sst(bk))
    bad = _cli("backup", "verify", str(bk))
    assert bad.returncode == 1 and "[backup_corrupt]" in bad.stderr
    bad = _cli("backup", "restore", str(bk), "--data-dir", str(tmp_path / "newer"))
    assert bad.returncode == 1 and "[backup_corrupt]" in bad.stderr and not (tmp_path / "newer").exists()
    missing = _cli("backup", "create", str(tmp_path / "bk2"), "--data-dir", str(tmp_path / "nothing-here"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert os.listdir(tmp_path / "data") == ["db", "indexes"] or sorted(os.listdir(tmp_path / "data")) == [
        "db",
        "indexes",
    ]
