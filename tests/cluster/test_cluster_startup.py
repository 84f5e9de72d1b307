"""A node whose start-up fails after it joined the cluster leaves at once (its member key goes)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from engramdb.cluster.local import NodeProcess


def _members(endpoint: str) -> list[str]:
    import base64

    prefix = "/engramdb/dev/members/"
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    r = httpx.post(
        endpoint + "/v3/kv/range",
        json={"key": base64.b64encode(prefix.encode()).decode(), "range_end": base64.b64encode(end.encode()).decode()},
        timeout=5,
    )
    return [base64.b64decode(kv["key"]).decode().rsplit("/", 1)[1] for kv in r.json().get("kvs", [])]


def test_failed_start_leaves_the_cluster_at_once(etcd: Any, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        node = NodeProcess("n1", tmp_path / "n1")
        env = {
            **node.full_env(),
            "ENGRAMDB_CLUSTER__ENABLED": "true",
            "ENGRAMDB_CLUSTER__NAME": "dev",
            "ENGRAMDB_CLUSTER__ETCD_ENDPOINTS": etcd.endpoint,
            "ENGRAMDB_CLUSTER__LEASE_TTL_SECONDS": "30",  # long: only a clean leave removes the key in time
            "ENGRAMDB_SERVER__METRICS_PORT": str(busy.getsockname()[1]),  # taken: start-up fails after joining
        }
        out = subprocess.run(
            [sys.executable, "-m", "engramdb.cli", "serve"], env=env, capture_output=True, text=True, timeout=120
        )
    assert out.returncode == 1 and "metrics" in out.stderr
    assert _members(etcd.endpoint) == []
