"""``engramdb cluster status`` and ``engramdb dev cluster``, run as real commands against a real etcd and real nodes."""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engramdb.cli import _busy_ports
from engramdb.cluster import local
from engramdb.cluster.control import ControlPlane, MemberInfo
from engramdb.cluster.local import LocalCluster, NodeProcess

SRC = Path(__file__).resolve().parents[2] / "src"
DEADLINE = 30.0
needs_etcd = pytest.mark.skipif(
    shutil.which("etcd") is None, reason="etcd is not installed (Debian package `etcd-server`; .ci/run installs it)"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAMDB_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def engramdb(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engramdb.cli", *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=timeout,
    )


@pytest.fixture
def populated(etcd: Any) -> Iterator[ControlPlane]:
    """Cluster "test": member n1 up, and tenant t with collection c (2 shards, RF 2); shard 0 placed on n1 and n9."""
    cp = ControlPlane(cluster="test", node_id="n1", endpoints=[etcd.endpoint], lease_ttl_seconds=10)
    cp.start()
    cp.register(MemberInfo(node_id="n1", address="127.0.0.1:7001", state="up", version="x", started_at=1.7e9))
    cp.create_tenant("t", {"name": "t"})
    cp.create_collection("t", "c", {"name": "c", "dimension": 3, "shards": 2, "replication_factor": 2})
    cp.set_placement("t", "c", 0, {"replicas": ["n1", "n9"], "pending": ["n3"], "epoch": 1}, expected_mod_revision=0)
    cp.wait_for(lambda v: ("t", "c", 0) in v.placement and "n1" in v.members, DEADLINE)
    try:
        yield cp
    finally:
        cp.close()


def test_status_json(etcd: Any, populated: ControlPlane) -> None:
    out = engramdb("cluster", "status", "--etcd", etcd.endpoint, "--name", "test", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["cluster"] == "test" and r["etcd_endpoints"] == [etcd.endpoint] and r["revision"] > 0
    members = {m["node_id"]: m for m in r["members"]}
    assert members["n1"] == {
        "node_id": "n1",
        "state": "up",
        "address": "127.0.0.1:7001",
        "version": "x",
        "started_at": "2023-11-14T22:13:20+00:00",
        "up": True,
    }
    # Nodes that hold replicas without a member key are shown as down.
    assert members["n9"]["up"] is False and members["n3"]["up"] is False
    assert set(members) == {"n1", "n3", "n9"}  # the status command never registers itself
    assert r["tenants"] == ["t"]
    (coll,) = r["collections"]
    assert (coll["tenant"], coll["name"], coll["shards"], coll["replication_factor"]) == ("t", "c", 2, 2)
    assert coll["placement"] == [
        {"shard": 0, "replicas": ["n1", "n9"], "pending": ["n3"], "epoch": 1, "down": ["n9", "n3"]}
    ]
    assert coll["unplaced_shards"] == [1]
    # The member key of a status command would outlive it by the lease TTL: there is none.
    assert not [m for m in populated.view.members if m.startswith("status-")]


def test_status_text(etcd: Any, populated: ControlPlane, tmp_path: Path) -> None:
    # Endpoints and name from a configuration file this time.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cluster:\n  name: test\n  etcd_endpoints: [{etcd.endpoint}]\n")
    out = engramdb("cluster", "status", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "cluster 'test'" in text and "members: 1 up, 2 down" in text
    assert "127.0.0.1:7001" in text and "2023-11-14T22:13:20+00:00" in text
    assert "t/c: 2 shards, replication factor 2" in text
    assert "shard 0: replicas n1 n9 (down), pending n3 (down), epoch 1" in text
    assert "shards without placement: 1" in text


def test_status_of_an_empty_cluster(etcd: Any) -> None:
    out = engramdb("cluster", "status", "--etcd", etcd.endpoint, "--name", "nothing-here", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert (r["members"], r["tenants"], r["collections"]) == ([], [], [])


def test_status_with_etcd_unreachable() -> None:
    port = local.free_port()  # nothing listens there
    started = time.monotonic()
    out = engramdb("cluster", "status", "--etcd", f"http://127.0.0.1:{port}")
    assert out.returncode == 1
    assert out.stderr.startswith("engramdb: etcd did not answer within 5 s: etcd is unreachable")
    assert f"127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - started < 30


def test_status_with_invalid_endpoint() -> None:
    out = engramdb("cluster", "status", "--etcd", "etcd.example.com")
    assert out.returncode == 1 and "cluster.etcd_endpoints" in out.stderr and "not an etcd client URL" in out.stderr


# -------------------------------------------------------------------------------------- dev cluster
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "--nodes must be from 1 to 16, got 0"),
        (["--nodes", "17"], "--nodes must be from 1 to 16, got 17"),
        (["--base-port", "2"], "--base-port 2 leaves no room"),
        (["--base-port", "65520"], "--base-port 65520 leaves no room"),
    ],
)
def test_dev_cluster_argument_errors(args: list[str], message: str, tmp_path: Path) -> None:
    out = engramdb("dev", "cluster", "--dir", str(tmp_path / "d"), *args)
    assert out.returncode == 1 and message in out.stderr, out.stderr
    assert not (tmp_path / "d").exists()


def test_dev_cluster_without_etcd(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    out = engramdb("dev", "cluster", "--dir", str(tmp_path / "d"), env=_env(PATH=str(empty)))
    assert out.returncode == 1
    assert "etcd is not installed" in out.stderr and "apt-get install etcd-server" in out.stderr
    assert not (tmp_path / "d").exists()


@needs_etcd
def test_dev_cluster_with_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        out = engramdb("dev", "cluster", "--dir", str(tmp_path / "d"), "--base-port", str(taken))
    assert out.returncode == 1, out.stderr
    assert f"port(s) {taken} on 127.0.0.1 are in use" in out.stderr and "--base-port" in out.stderr
    assert not (tmp_path / "d").exists()


def _free_base(nodes: int) -> int:
    for _ in range(200):
        base = random.randrange(20000, 60000, 10)
        if not _busy_ports([base - 2, base - 1, *range(base, base + 10 * nodes)]):
            return base
    raise RuntimeError("no free port range")


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return q


@needs_etcd
@pytest.mark.slow
def test_dev_cluster_end_to_end(tmp_path: Path) -> None:
    """Three nodes start, each answers /ready and is a member of cluster 'dev'; Ctrl-C stops all of it."""
    base = _free_base(3)
    d = tmp_path / "cluster-data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engramdb.cli",
            "dev",
            "cluster",
            "--nodes",
            "3",
            "--dir",
            str(d),
            "--base-port",
            f"{base}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    seen: list[str] = []
    try:
        lines = _lines(proc)
        deadline = time.monotonic() + 180
        while not any(line.startswith("ready:") for line in seen):
            try:
                seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                logs = "".join(_tail(d / f"n{i}.log") for i in (1, 2, 3))
                raise AssertionError(f"no ready line: {''.join(seen)}\n{logs}") from None
        assert "ready: cluster 'dev' with 3 nodes; Ctrl-C stops it\n" in seen
        for i in range(3):
            r = httpx.get(f"http://127.0.0.1:{base + 10 * i}/ready", timeout=10)
            assert r.status_code == 200, r.text
        assert {p.name for p in d.iterdir()} >= {"etcd", "etcd.log", "n1", "n2", "n3", "n1.log", "n2.log", "n3.log"}
        # Every node is a member of the cluster, in etcd.
        status = engramdb("cluster", "status", "--etcd", f"http://127.0.0.1:{base - 2}", "--name", "dev", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert sorted(m["node_id"] for m in report["members"] if m["up"]) == ["n1", "n2", "n3"], report
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Nodes and etcd are gone with it.
    assert _busy_ports([base - 2, base, base + 10, base + 20]) == []


def _tail(p: Path) -> str:
    try:
        return f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:]
    except OSError:
        return ""


# ------------------------------------------------------------------------------------ the launcher
def test_local_cluster_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(local, "find_etcd", lambda: "/usr/bin/etcd")
    monkeypatch.setenv("ENGRAMDB_STORAGE__SYNC_WRITES", "false")  # a developer's shell: not passed on
    monkeypatch.setenv("ENGRAMDB_INDEX__SNAPSHOT_IN_CHILD", "false")  # passed on
    monkeypatch.setenv("ENGRAMDB_ADMIN_KEY", "from-the-shell")
    c = LocalCluster(
        tmp_path,
        2,
        admin_key="k" * 32,
        env={"ENGRAMDB_CLUSTER__NAME": "ignored", "ENGRAMDB_SERVER__MAX_REQUEST_MB": "8"},
        base_port=30000,
        lease_ttl_seconds=3,
        default_shards=2,
        default_replication_factor=2,
    )
    assert c.etcd.endpoint == "http://127.0.0.1:29998" and c.etcd.peer_port == 29999
    n2 = c.node(1)
    assert (n2.node_id, n2.rest_port, n2.grpc_port, n2.peer_port) == ("n2", 30010, 30011, 30012)
    assert (n2.url, n2.grpc_target, n2.data_dir, n2.log_path) == (
        "http://127.0.0.1:30010",
        "127.0.0.1:30011",
        tmp_path / "n2",
        tmp_path / "n2.log",
    )
    env = n2.full_env()
    assert "ENGRAMDB_STORAGE__SYNC_WRITES" not in env
    assert env["ENGRAMDB_INDEX__SNAPSHOT_IN_CHILD"] == "false"
    assert env["ENGRAMDB_ADMIN_KEY"] == "k" * 32
    assert env["ENGRAMDB_SERVER__MAX_REQUEST_MB"] == "8"
    assert env["ENGRAMDB_CLUSTER__NAME"] == "dev"  # the cluster's own settings win
    assert env["ENGRAMDB_CLUSTER__ENABLED"] == "true"
    assert env["ENGRAMDB_CLUSTER__ETCD_ENDPOINTS"] == "http://127.0.0.1:29998"
    assert env["ENGRAMDB_CLUSTER__NODE_ID"] == "n2" and env["ENGRAMDB_CLUSTER__PEER_PORT"] == "30012"
    assert env["ENGRAMDB_CLUSTER__LEASE_TTL_SECONDS"] == "3"
    assert env["ENGRAMDB_CLUSTER__DEFAULT_SHARDS"] == "2" and env["ENGRAMDB_CLUSTER__DEFAULT_REPLICATION_FACTOR"] == "2"
    assert (env["ENGRAMDB_DATA_DIR"], env["ENGRAMDB_SERVER__HOST"]) == (str(tmp_path / "n2"), "127.0.0.1")
    assert env["ENGRAMDB_SERVER__PORT"] == "30010" and env["ENGRAMDB_SERVER__GRPC_PORT"] == "30011"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(SRC)
    # Without an admin key the nodes get none (development mode), whatever the shell holds.
    assert "ENGRAMDB_ADMIN_KEY" not in LocalCluster(tmp_path, 1).node(0).full_env()
    # The environment is a valid configuration.
    from engramdb import config

    for name, value in env.items():
        if name.startswith("ENGRAMDB_") and name != "ENGRAMDB_ADMIN_KEY":
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("ENGRAMDB_STORAGE__SYNC_WRITES")
    s = config.load(None)
    assert s.cluster.enabled and s.cluster.node_id == "n2" and s.cluster.peer_port == 30012


def test_etcd_process_environment_has_no_etcd_settings(
    etcd: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # etcd reads ETCD_* variables as flags; one in the caller's shell must not reach it.
    monkeypatch.setenv("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:1")
    e = local.EtcdProcess(tmp_path / "etcd2")
    e.start()
    try:
        assert httpx.get(e.endpoint + "/health", timeout=5).json()["health"] == "true"
    finally:
        e.stop()
    assert not e.alive


def test_node_process_kill_and_restart(local_cluster_factory: Any) -> None:
    cluster = local_cluster_factory(1, default_replication_factor=1)
    n: NodeProcess = cluster.node(0)
    assert n.alive and httpx.get(n.url + "/ready", timeout=10).status_code == 200
    first = n.pid
    n.kill()
    assert not n.alive and n.proc is not None and n.proc.returncode == -signal.SIGKILL
    n.restart()
    n.wait_ready(120)
    assert n.alive and n.pid != first
    assert n.terminate(60) == 0
    assert "EngramDB stopped" in n.log_tail()
    cluster.stop()
    assert not cluster.etcd.alive
