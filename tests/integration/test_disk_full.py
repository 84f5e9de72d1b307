"""Disk full: writes fail with StorageFull (507), nothing acknowledged is lost, reads keep working.

Runs on a small tmpfs the test mounts itself (skipped where mounting is not allowed).
"""

from __future__ import annotations

import os
import subprocess
import uuid

import numpy as np
import pytest

import engramdb
from engramdb import StorageFull


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_fails_cleanly_and_loses_nothing(small_fs):
    path = small_fs / "d"
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * 2_000_000)  # freed later, as an operator would
    db = engramdb.open(path, storage={"write_buffer_mb": 1, "max_wal_mb": 16})
    c = db.create_collection("x", dimension=32, text_index=False)
    rng = np.random.default_rng(0)
    acked: list[str] = []
    failure = None
    for i in range(20_000):
        try:
            c.upsert({"id": f"r{i}", "vector": rng.normal(size=32).tolist(), "text": "x" * 2000})
            acked.append(f"r{i}")
        except StorageFull as e:
            failure = e
            break
    assert failure is not None, "the 8 MiB filesystem never filled up"
    assert failure.http_status == 507 and failure.grpc_status == "RESOURCE_EXHAUSTED"
    assert "disk is full" in failure.message
    # Reads keep working and every acknowledged write is readable.
    assert len(c.get_many(acked[-100:], include=())) == min(100, len(acked))
    with pytest.raises(StorageFull):
        c.upsert({"id": "more", "vector": rng.normal(size=32).tolist()})
    try:
        db.close()
    except Exception:
        pass  # closing may fail to flush on a full disk; the WAL already holds every acknowledged write
    # Once space is freed, a restart recovers: every acknowledged write is
    # there and the failed ones are not.
    ballast.unlink()
    os.sync()
    db = engramdb.open(path)
    c = db.get_collection("x")
    got = {r.id for r in c.get_many(acked, include=())} if len(acked) <= 10_000 else set()
    assert got == set(acked)
    assert c.get("more") is None
    db.close()
