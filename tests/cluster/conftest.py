"""A real etcd for the cluster tests: Debian's ``etcd`` (package ``etcd-server``, 3.4) on free loopback ports.

Fixtures:

- ``etcd`` (function): an :class:`Etcd` started with its data in ``tmp_path``, healthy before the test
  runs, killed at the end. ``etcd.endpoint`` is its client URL; ``etcd.stop()`` kills it (the tests
  of losing etcd) and ``etcd.start()`` starts it again on the same ports and data.

The tests skip when ``etcd`` is not installed, like the promtool tests: ``.ci/run`` installs it
(``apt-get install etcd-server``), so CI always runs them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ETCD = shutil.which("etcd")
START_TIMEOUT = 30.0  # seconds; a cold start on a loaded 2-core machine takes about one


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Etcd:
    """One single-member etcd process on loopback."""

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.client_port}"
        self.log_path = data_dir.parent / "etcd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "etcd is already running"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-level=warn",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}  # no stray ETCD_* settings
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.endpoint}/health", timeout=1.0)
                if r.status_code == 200 and r.json().get("health") == "true":
                    return
                last = r.text
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.05)
        raise RuntimeError(f"etcd not healthy within {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        """Kill -9: etcd gone at once, as when its machine dies."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian package `etcd-server`; .ci/run installs it)")
    server = Etcd(ETCD, tmp_path / "etcd-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
