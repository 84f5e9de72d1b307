"""A whole cluster backed up through one node and restored into fresh processes and a fresh etcd."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import engramdb
from engramdb.cluster.local import LocalCluster

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd (Debian etcd-server) is not installed")

KEY = "cluster-backup-admin-key-0123456789abcdef"
H = {"Authorization": f"Bearer {KEY}"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engramdb.cli", *args], capture_output=True, text=True, timeout=120)


def test_backup_every_node_and_restore_the_cluster(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "live", 3, admin_key=KEY, default_shards=4)
    for node in c.nodes:
        node.env["ENGRAMDB_BACKUP__DIR"] = str(tmp_path / "backups" / node.node_id)
    c.start()
    try:
        with engramdb.connect(c.node(0).url, api_key=KEY) as db:
            coll = db.create_collection("notes", 4, indexed_fields={"i": "int"})
            coll.upsert([{"id": f"r{i}", "vector": [1.0, float(i), 2.0, 3.0], "metadata": {"i": i}} for i in range(50)])
            coll.link({"src": "r1", "relation": "next", "dst": "r2"})
            reader_key = db.create_key("reader").key
        r = httpx.post(c.node(1).url + "/v1/admin/backups", json={"name": "nightly"}, headers=H, timeout=300)
        assert r.status_code == 201, r.text
        assert r.json()["backup"]["status"] == "complete"
        # A name taken on the nodes already: refused, nothing overwritten.
        again = httpx.post(c.node(2).url + "/v1/admin/backups", json={"name": "nightly"}, headers=H, timeout=300)
        assert again.status_code >= 400
    finally:
        c.stop()
    manifest = tmp_path / "backups" / "n2" / "cluster-nightly.json"
    assert manifest.exists()

    # A fresh cluster: new processes, new data directories, a new etcd.
    new = LocalCluster(tmp_path / "new", 3, admin_key=KEY, default_shards=4)
    etcd = new.etcd
    etcd.start()
    try:
        # A damaged manifest is refused before etcd is touched.
        bad = tmp_path / "bad.json"
        bad.write_text(manifest.read_text().replace('"notes"', '"other"', 1))
        out = _cli("cluster", "restore", str(bad), "--etcd", etcd.endpoint, "--name", "dev")
        assert out.returncode == 1 and "damaged" in out.stderr
        out = _cli("cluster", "restore", str(manifest), "--etcd", etcd.endpoint, "--name", "dev")
        assert out.returncode == 0, out.stderr
        out = _cli("cluster", "restore", str(manifest), "--etcd", etcd.endpoint, "--name", "dev")
        assert out.returncode == 1 and "already has" in out.stderr  # never twice into the same etcd
    finally:
        etcd.stop()
    for node in new.nodes:  # each node's own backup into its data directory
        src = tmp_path / "backups" / node.node_id / "nightly"
        out = _cli("backup", "restore", str(src), "--data-dir", str(node.data_dir))
        assert out.returncode == 0, out.stderr
    new.start()
    try:
        with engramdb.connect(new.node(2).url, api_key=KEY) as db:
            coll = db.get_collection("notes")
            assert coll.count() == 50
            assert coll.count({"i": {"$gte": 40}}) == 10
            assert [e.dst for e in coll.edges("r1")] == ["r2"]
            assert [h.id for h in coll.search([1.0, 7.0, 2.0, 3.0], k=1, include=[])] == ["r7"]
        # API keys came back too.
        r = httpx.get(new.node(0).url + "/v1/collections", headers={"Authorization": f"Bearer {reader_key}"})
        assert r.status_code == 200
    finally:
        new.stop()
